# A Pyboard-like workload for link_core under a small MicroPython heap.
#
# Lines go through an e2e Sender, the I2C link (Initiator -> Responder, through
# a 256-byte memory like the Pyboard's I2CTarget) and an e2e Receiver; acks
# come straight back. Prints "WORKLOAD OK <lines> <bytes retained>".

import gc

from link_core import clock, endpoint, frames, i2c_link, i2c_tools, messages

gc.collect()
base = gc.mem_alloc()
ini = i2c_link.LinkEndpoint(i2c_link.INITIATOR)
res = i2c_link.LinkEndpoint(i2c_link.RESPONDER)
ini.sync_message = messages.encode_config(["pyb1", 1883, "h", 1500, 60, "s", "p"])
sender = endpoint.Sender(frames.new_session(b"\x01\x02\x03\x04"))
receiver = endpoint.Receiver()
policy = i2c_tools.PollPolicy()
mem = bytearray(i2c_tools.MEM_SIZE)
view = memoryview(mem)
resp = view[i2c_link.MEM_RESPONDER :]
got = 0
t = 0
i = 0
while got < 200:
    t = clock.ticks_add(t, policy.delay_ms(t, ini.busy))
    if sender.can_send() and ini.can_queue():
        ini.queue_message(sender.send("line " + str(i) + " " + "x" * (i * 7 % 300), t))
        i += 1
    for f in sender.due(t):
        if ini.can_queue():
            ini.queue_message(f)
    n = ini.build_block(view)
    res.on_block(view[:n])
    res.build_block(resp)
    ini.on_block(resp)
    m = res.pop_message()
    if m is not None and messages.is_frame(m):
        ack, lines = receiver.on_frame(frames.decode(m))
        got += len(lines)
        if ack is not None:
            k = frames.decode(ack)
            sender.on_ack(k[1], k[2])
gc.collect()
print("WORKLOAD OK", got, gc.mem_alloc() - base)
