# Check link_core against the byte-exact vectors in core_vectors.json.
#
# Runs under CPython and the MicroPython unix port:
#   MICROPYPATH=<repo>:<repo>/tests/vectors micropython tests/vectors/run_vectors.py [vectors.json]
#   PYTHONPATH=<repo> python tests/vectors/run_vectors.py [vectors.json]
# Prints one line per failure and "ALL <n> VECTORS PASSED" (exit 0) or
# "<k> OF <n> VECTORS FAILED" (exit 1).

import json
import sys

from link_core import control, endpoint, frames, i2c_link, i2c_tools, lines, messages, names, topics

_count = 0
_failed = 0


def unhex(s):
    return bytes([int(s[i : i + 2], 16) for i in range(0, len(s), 2)])


def tohex(b):
    return "".join(["%02x" % x for x in bytes(b)])  # noqa: UP031


def check(name, ok, detail=""):
    global _count, _failed
    _count += 1
    if not ok:
        _failed += 1
        print("FAIL " + name + " " + str(detail))


def raises(fn, *args):
    try:
        fn(*args)
    except ValueError:
        return True
    return False


def run(v):
    for t in v["crc16"]:
        got = i2c_tools.crc16(unhex(t["data_hex"]))
        check("crc16 " + t["data_hex"][:16], got == t["crc"], got)

    for t in v["i2c_frames"]:
        name = "i2c frame " + t["name"]
        payload = unhex(t["payload_hex"])
        got = i2c_tools.encode_block(t["flags"], t["seq"], t["ack"], payload)
        check(name + " encode", tohex(got) == t["frame_hex"], tohex(got))
        buf = bytearray(i2c_link.BLOCK_MAX)
        n = i2c_tools.encode_block(t["flags"], t["seq"], t["ack"], payload, buf)
        check(name + " encode into", tohex(buf[:n]) == t["frame_hex"], n)
        f = i2c_tools.decode_block(memoryview(unhex(t["frame_hex"])))
        ok = f is not None and f.seq == t["seq"] and f.ack == t["ack"] and f.payload == payload
        ok = ok and f.flags == i2c_tools.VERSION | t["flags"]
        check(name + " decode", ok, f)

    for t in v["i2c_corrupt"]:
        data = unhex(t["frame_hex"])
        check("corrupt " + t["name"], i2c_tools.decode_block(data) is None)
        ep = i2c_link.LinkEndpoint(i2c_link.RESPONDER)
        check("corrupt endpoint " + t["name"],
              ep.on_block(data) is False and i2c_tools.counters(ep)["blocks_bad"] == 1)

    for t in v["i2c_trailing"]:
        f = i2c_tools.decode_block(bytearray(unhex(t["buf_hex"])))
        check("trailing bytes", f is not None and tohex(f.payload) == t["payload_hex"], f)

    for t in v["transcripts"]:
        name = "transcript " + t["name"]
        ini = i2c_link.LinkEndpoint(i2c_link.INITIATOR)
        res = i2c_link.LinkEndpoint(i2c_link.RESPONDER)
        if t["sync_message_hex"]:
            ini.sync_message = unhex(t["sync_message_hex"])
        for m in t["initiator_queue_hex"]:
            ini.queue_message(unhex(m))
        for m in t["responder_queue_hex"]:
            res.queue_message(unhex(m))
        mem = bytearray(i2c_tools.MEM_SIZE)
        view = memoryview(mem)
        i = 0
        for fi_hex, fr_hex in t["exchanges"]:
            fi = ini.build_block()
            check(name + " initiator block " + str(i), tohex(fi) == fi_hex, tohex(fi))
            res.on_block(fi)
            n = res.build_block(view[i2c_link.MEM_RESPONDER :])
            fr = view[i2c_link.MEM_RESPONDER : i2c_link.MEM_RESPONDER + n]
            check(name + " responder block " + str(i), tohex(fr) == fr_hex, tohex(fr))
            ini.on_block(view[i2c_link.MEM_RESPONDER :])
            i += 1
        got = []
        while res.rx_pending:
            got.append(tohex(res.pop_message()))
        check(name + " responder received", got == t["responder_received_hex"], got)
        got = []
        while ini.rx_pending:
            got.append(tohex(ini.pop_message()))
        check(name + " initiator received", got == t["initiator_received_hex"], got)

    for t in v["e2e_encode"]:
        fn = t["fn"]
        a = t["args"]
        if fn == "qos":
            got = frames.encode_qos(a[0], a[1], a[2], a[3])
        elif fn == "unreliable":
            got = frames.encode_unreliable(a[0], a[1])
        elif fn == "ack":
            got = frames.encode_ack(a[0], a[1])
        elif fn == "heartbeat":
            got = frames.HEARTBEAT
        else:
            got = frames.new_session(unhex(a[0])).encode()
        check("e2e encode " + t["text"][:30], tohex(got) == t["hex"], got)

    for t in v["e2e_decode"]:
        got = None
        try:
            got = list(frames.decode(unhex(t["hex"])))
        except ValueError as e:
            got = e
        check("e2e decode " + t["hex"][:30], got == t["tuple"], got)

    for h in v["e2e_decode_errors"]:
        check("e2e decode error " + h[:40], raises(frames.decode, unhex(h)))

    for c in v["conn_ids_ok"]:
        check("conn_id ok " + c[:20], names.check_conn_id(c) == c)
    for c in v["conn_ids_bad"]:
        check("conn_id bad " + repr(c)[:20], raises(names.check_conn_id, c))

    for t in v["lines_ok"]:
        check("line ok " + t["hex"][:20], lines.check_line(unhex(t["hex"])) == t["text"])
        text = unhex(t["hex"]).decode()
        check("line ok str " + t["hex"][:20], lines.check_line(text) == t["text"])
    for h in v["lines_bad_hex"]:
        check("line bad " + h[:20], raises(lines.check_line, unhex(h)))

    for t in v["config"]:
        got = messages.encode_config(t["list"])
        check("config encode " + t["list"][0], tohex(got) == t["hex"], got)
        check("config decode " + t["list"][0], control.decode_config(got) == t["full"])
        check("config text " + t["list"][0], got.decode() == t["text"])
    for c in v["config_bad"]:
        check("config bad " + repr(c)[:40], raises(messages.encode_config, c))
    for h in v["config_bad_messages_hex"]:
        check("config bad message " + h[:20], raises(control.decode_config, unhex(h)))

    for t in v["report"]:
        got = control.encode_report(t["list"])
        check("report encode", tohex(got) == t["hex"], got)
        check("report decode", messages.decode_report(got) == t["list"])
    for h in v["report_bad_messages_hex"]:
        check("report bad " + h[:20], raises(messages.decode_report, unhex(h)))

    sc = v["sender_script"]
    s = endpoint.Sender(sc["session"], sc["window"], sc["timeout_ms"])
    s.next_id = sc["next_id"]
    i = 0
    for st in sc["steps"]:
        op = st[0]
        name = "sender step " + str(i) + " " + op
        if op == "send":
            got = s.send(st[1], st[2]).decode()
            check(name, got == st[3], got)
        elif op == "ack":
            got = s.on_ack(st[1], st[2])
            check(name, got == st[3], got)
        elif op == "due":
            got = [f.decode() for f in s.due(st[1], st[2])]
            check(name, got == st[3], got)
        elif op == "resend_all":
            got = [f.decode() for f in s.resend_all(st[1])]
            check(name, got == st[2], got)
        elif op == "next_deadline":
            check(name, s.next_deadline() == st[1], s.next_deadline())
        elif op == "can_send":
            check(name, s.can_send() == st[1])
        elif op == "idle":
            check(name, s.idle() == st[1])
        i += 1

    for key in ("receiver_script", "receiver_script_evict"):
        sc = v[key]
        r = endpoint.Receiver(sc["window"])
        i = 0
        for text, ack, want in sc["steps"]:
            a, got = r.on_frame(frames.decode(text.encode()))
            if a is not None:
                a = a.decode()
            check(key + " step " + str(i) + " " + text, a == ack and got == want, (a, got))
            i += 1
        check(key + " snapshot", r.snapshot() == sc["snapshot"], r.snapshot())
        if "counters" in sc:
            got = [r.delivered, r.duplicates, r.dropped, r.adopted]
            check(key + " counters", got == sc["counters"], got)
        r2 = endpoint.Receiver(sc["window"])
        r2.restore(json.loads(json.dumps(sc["snapshot"])))
        check(key + " restore", r2.snapshot() == sc["snapshot"], r2.snapshot())

    for t in v["topics"]:
        tp = names.Topics(t["root"], t["conn_id"])
        ok = tp.up == t["up"] and tp.down == t["down"] and tp.status == t["status"]
        check("topics " + t["conn_id"], ok)
    for t in v["parse_topic"]:
        got = topics.parse_topic(t["root"], t["topic"])
        if got is not None:
            got = list(got)
        check("parse_topic " + t["topic"], got == t["result"], got)


def main():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
        path = here + "/core_vectors.json"
    with open(path) as f:
        v = json.load(f)
    run(v)
    if _failed:
        print(str(_failed) + " OF " + str(_count) + " VECTORS FAILED")
        sys.exit(1)
    print("ALL " + str(_count) + " VECTORS PASSED")


main()
