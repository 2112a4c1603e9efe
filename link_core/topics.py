"""Topic filters and parsing for the server side (PROTOCOL.md 4.1).

``wildcard(root, leaf)`` is the subscription filter ``<root>/+/<leaf>``;
``parse_topic(root, topic)`` splits a received topic. The device's own topics
are ``link_core.names.Topics``. Apart from ``link_core.names`` so that the
ESP8266 bridge, which only publishes and subscribes its own topics, does not
hold these functions in RAM (docs/FIRMWARE.md "Memory budget").
"""

from link_core.names import DOWN, REPORT, STATUS, UP, _show, check_conn_id, check_root

LEAVES = (UP, DOWN, STATUS, REPORT)  # the leaves of a device's topics


def wildcard(root, leaf):
    """Subscription filter ``<root>/+/<leaf>`` (e.g. for the server library)."""
    if leaf not in LEAVES:
        raise ValueError("leaf " + _show(leaf) + " is not one of 'up', 'down', 'status', 'report'")
    return check_root(root) + "/+/" + leaf


def parse_topic(root, topic):
    """Split ``<root>/<conn_id>/<leaf>`` into ``(conn_id, leaf)``.

    ``topic`` is ``str`` or UTF-8 bytes. Returns ``None`` if the topic is not
    under ``root``, the conn_id is invalid or the leaf is not one of ``up``,
    ``down``, ``status``, ``report``. Never raises for a bad topic.
    """
    if not isinstance(topic, str):
        try:
            topic = bytes(topic).decode("utf-8")
        except (UnicodeError, TypeError, ValueError):
            return None
    prefix = root + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :]
    i = rest.find("/")
    if i <= 0:
        return None
    conn_id = rest[:i]
    leaf = rest[i + 1 :]
    if leaf not in LEAVES:
        return None
    try:
        check_conn_id(conn_id)
    except ValueError:
        return None
    return conn_id, leaf
