# The bridge's tuning keys: the JSON object that is the 12th entry of the 'C'
# config message (docs/PROTOCOL.md 2, docs/FIRMWARE.md "Tuning"). Every key
# is optional; {} means the defaults below.

# name: (default, lowest, highest)
KEYS = {
    "keepalive_ms": (1000, 100, 60000),  # 'K' to the Pyboard every this often
    "wifi_connect_ms": (10000, 500, 120000),  # wait for one WiFi attempt
    "wifi_stable_ms": (3000, 0, 60000),  # WiFi up this long before the broker
    "reconnect_min_ms": (1000, 50, 600000),  # first retry delay (WiFi, broker)
    "reconnect_max_ms": (30000, 50, 3600000),  # the delay doubles up to this
    "mqtt_keepalive_s": (60, 0, 65535),  # MQTT keepalive; 0: no PINGREQ
    "mqtt_response_ms": (10000, 100, 120000),  # CONNACK/SUBACK/PUBACK/PINGRESP wait
    "mqtt_retries": (2, 0, 10),  # DUP resends of a QoS 1 publish per connection
}


def defaults() -> dict:
    d = {}
    for k in KEYS:
        d[k] = KEYS[k][0]
    return d


def parse(obj) -> tuple:
    """(tuning dict with every key, list of complaints) from the config's object.

    Unknown keys are ignored (a newer Pyboard may send more); a value that
    is not an int in range raises ValueError naming the key."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ValueError("tuning %r is not a JSON object" % (obj,))
    t = defaults()
    unknown = []
    for k in obj:
        v = obj[k]
        if k not in KEYS:
            unknown.append(k)
            continue
        lo = KEYS[k][1]
        hi = KEYS[k][2]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > hi:
            raise ValueError("tuning %s %r is not an int in %d..%d" % (k, v, lo, hi))
        t[k] = v
    if t["reconnect_max_ms"] < t["reconnect_min_ms"]:
        raise ValueError("tuning reconnect_max_ms is below reconnect_min_ms")
    return t, unknown
