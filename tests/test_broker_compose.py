"""docker-compose.yml: valid for Debian's docker-compose, and consistent with broker/mosquitto/."""

from __future__ import annotations

import re
import subprocess

from conftest import ROOT, TEST_TIMEOUT, require_tool

from broker import MOSQUITTO_CONF, MOSQUITTO_DIR


def test_compose_file_validates_offline() -> None:
    tool = require_tool("docker-compose")
    proc = subprocess.run([tool, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TEST_TIMEOUT)
    assert proc.returncode == 0, proc.stderr


def test_compose_broker_service_matches_the_mosquitto_config() -> None:
    tool = require_tool("docker-compose")
    proc = subprocess.run([tool, "-f", "docker-compose.yml", "config"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TEST_TIMEOUT, check=True)
    resolved = proc.stdout
    assert "image: eclipse-mosquitto:2" in resolved
    assert f"{MOSQUITTO_DIR}:/mosquitto/config:ro" in resolved
    assert "mosquitto-data:/mosquitto/data" in resolved
    assert "mosquitto-log:/mosquitto/log" in resolved
    assert re.search(r"published: 1883\s+target: 1883", resolved)
    # Every file the config names under /mosquitto/config is shipped in broker/mosquitto/.
    conf = MOSQUITTO_CONF.read_text()
    active = [line for line in conf.splitlines() if line and not line.startswith("#")]
    named = re.findall(r"/mosquitto/config/(\S+)", "\n".join(active))
    assert sorted(named) == ["acl", "passwd"]
    for name in named:
        assert (MOSQUITTO_DIR / name).is_file(), name
    assert "persistence_location /mosquitto/data/" in active
    assert "log_dest file /mosquitto/log/mosquitto.log" in active
