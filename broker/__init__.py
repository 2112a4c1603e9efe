"""Broker side of pblink-mqtt.

- `broker.embedded`: the embedded amqtt broker (`EmbeddedBroker`, `python -m broker.embedded`).
- `broker.plugins`: amqtt plugins (per-device topic confinement, open auth, queue limit).
- `broker.credentials`: add/remove users in Mosquitto and amqtt password files.
- `broker/mosquitto/`: Mosquitto config, ACL and (empty) password file, used by docker-compose.yml.
"""

from pathlib import Path

MOSQUITTO_DIR = Path(__file__).resolve().parent / "mosquitto"
MOSQUITTO_CONF = MOSQUITTO_DIR / "mosquitto.conf"
MOSQUITTO_ACL = MOSQUITTO_DIR / "acl"
MOSQUITTO_PASSWD = MOSQUITTO_DIR / "passwd"
