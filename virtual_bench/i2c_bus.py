"""Part of `Bench`: the I2C bus between the ESP8266's controller and the Pyboard's
I2CTarget memory or pyb.I2C slave, with its clock and the corruption fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from virtual_bench.board_link import BenchOSError, BoardConn, Slave, SlaveOp, Target
from virtual_bench.parts import BenchParts
from virtual_bench.wiring import (
    EIO,
    ENODEV,
    ESP,
    ETIMEDOUT,
    I2C_CONTROLLER_PINS,
    I2C_TARGET_BUSES,
    IRQ_END_READ,
    IRQ_END_WRITE,
    PYBOARD,
)

log = logging.getLogger("virtual_bench.harness")  # one logger for the whole bench


class I2CBus(BenchParts):
    """I2C requests (`i2c`, `tgt`, `tgt_off`, `tgt_irq`, `mw`, `slave`, `srecv`, `ssend`,
    `scan`, `xfer`): bus time, target memory, slave pairing, bit flips."""

    def _op_i2c(self, conn: BoardConn, scl: str, sda: str, freq: int, timeout_us: int) -> None:
        conn.controller = (scl, sda, freq, timeout_us)

    def _op_tgt(self, conn: BoardConn, bus: str, addr: int, mem_hex: str) -> None:
        conn.targets[addr] = Target(bus, bytearray.fromhex(mem_hex))

    def _op_tgt_off(self, conn: BoardConn, addr: int) -> None:
        conn.targets.pop(addr, None)

    def _op_tgt_irq(self, conn: BoardConn, addr: int, trigger: int) -> None:
        target = conn.targets.get(addr)
        if target is not None:
            target.trigger = trigger

    def _cpu_mem_write(self, conn: BoardConn, addr: int, off: int, data: bytes) -> None:
        target = conn.targets.get(addr)
        if target is None:
            return
        n = len(target.mem)
        for i, b in enumerate(data):
            target.mem[(off + i) % n] = b

    def _op_slave(self, conn: BoardConn, bus: str, addr: int) -> None:
        conn.slaves[addr] = Slave(bus)

    def _op_slave_off(self, conn: BoardConn, addr: int) -> None:
        slave = conn.slaves.pop(addr, None)
        if slave is not None:
            for op in slave.ops:
                op.done.cancel()

    async def _slave_op(self, conn: BoardConn, addr: int, op: SlaveOp, timeout_ms: int) -> bytes:
        slave = conn.slaves.get(addr)
        if slave is None:
            raise BenchOSError(EIO, "pyb.I2C not initialised")
        slave.ops.append(op)
        slave.posted.set()
        try:
            return await asyncio.wait_for(asyncio.shield(op.done), timeout_ms / 1000)
        except TimeoutError:
            if op in slave.ops:
                slave.ops.remove(op)
            if op.done.done() and not op.done.cancelled():
                return op.done.result()
            raise BenchOSError(ETIMEDOUT, "pyb.I2C timeout") from None

    async def _op_srecv(self, conn: BoardConn, addr: int, n: int, timeout_ms: int) -> str:
        op = SlaveOp("recv", n, b"", asyncio.get_running_loop().create_future())
        return (await self._slave_op(conn, addr, op, timeout_ms)).hex()

    async def _op_ssend(self, conn: BoardConn, addr: int, data_hex: str, timeout_ms: int) -> None:
        data = bytes.fromhex(data_hex)
        op = SlaveOp("send", len(data), data, asyncio.get_running_loop().create_future())
        await self._slave_op(conn, addr, op, timeout_ms)

    def _op_scan(self, conn: BoardConn, scl: str, sda: str) -> list[int]:
        peer = self.conns.get(PYBOARD)
        if (scl, sda) != I2C_CONTROLLER_PINS or conn.name != ESP or peer is None:
            return []
        found = [a for a, t in peer.targets.items() if t.bus in I2C_TARGET_BUSES]
        found += [a for a, s in peer.slaves.items() if s.bus in I2C_TARGET_BUSES]
        return sorted(set(found))

    def _corrupt(self, data: bytes) -> bytes:
        if not data:
            return data
        hit = False
        if self._corrupt_count > 0:
            self._corrupt_count -= 1
            hit = True
        elif self._corrupt_p > 0:
            if self._corrupt_until is not None and time.monotonic() > self._corrupt_until:
                self._corrupt_p = 0.0
            elif self._rng.random() < self._corrupt_p:
                hit = True
        if not hit:
            return data
        self.stats["i2c_corrupted"] += 1
        buf = bytearray(data)
        i = self._rng.randrange(len(buf))
        buf[i] ^= 1 << self._rng.randrange(8)
        return bytes(buf)

    async def _bus_time(self, conn: BoardConn, nbytes: int) -> None:
        """Occupy the bus for nbytes x 9 clock periods; block the controller that long."""
        clock = self.i2c_clock_hz or (conn.controller[2] if conn.controller else 100_000)
        now = time.monotonic()
        start = max(now, self.bus_free_at)
        self.bus_free_at = start + nbytes * 9 / clock
        self.stats["i2c_bus_bytes"] += nbytes
        delay = self.bus_free_at - now
        if delay >= 0.001:  # shorter waits are carried by bus_free_at into the next transaction
            await asyncio.sleep(delay)

    async def _op_xfer(self, conn: BoardConn, scl: str, sda: str, addr: int, memaddr: int | None,
                       addrsize: int, whex: str, nread: int) -> str:
        wdata = bytes.fromhex(whex)
        if memaddr is None and wdata and not nread:
            memaddr, wdata = wdata[0], wdata[1:]  # writeto(): the first byte addresses memory
        write = memaddr is not None and (bool(wdata) or not nread)
        # bus bytes: address byte, memory address, data; a read after a memory address
        # repeats the address byte after a repeated start
        nbytes = 1 + (addrsize // 8 if memaddr is not None else 0) + len(wdata)
        if nread:
            nbytes += (1 if memaddr is not None else 0) + nread
        peer = self.conns.get(PYBOARD)
        wired = conn.name == ESP and (scl, sda) == I2C_CONTROLLER_PINS
        target = peer.targets.get(addr) if (wired and peer is not None) else None
        slave = peer.slaves.get(addr) if (wired and peer is not None) else None
        if target is not None and target.bus not in I2C_TARGET_BUSES:
            target = None
        if slave is not None and slave.bus not in I2C_TARGET_BUSES:
            slave = None
        if target is None and slave is None:
            await self._bus_time(conn, 1)
            self.stats["i2c_errors"] += 1
            raise BenchOSError(ENODEV, "no I2C target answers")
        assert peer is not None
        if slave is not None:
            return (await self._slave_xfer(conn, peer, addr, slave, memaddr, wdata, nread,
                                           nbytes)).hex()
        assert target is not None
        await self._bus_time(conn, nbytes)
        if not peer.alive:
            self.stats["i2c_errors"] += 1
            raise BenchOSError(ENODEV, "no I2C target answers")
        size = len(target.mem)
        if memaddr is not None:
            target.ptr = memaddr % size
        if write:
            data = self._corrupt(wdata)
            self.sniffer.transfer(True, memaddr, data)
            self.stats["i2c_to_pyboard_transactions"] += 1
            self.stats["i2c_to_pyboard_bytes"] += len(data)
            start = target.ptr
            for i, b in enumerate(data):
                target.mem[(start + i) % size] = b
            first = data[: size - start]
            peer.send(["m", addr, start, first.hex()])
            if len(data) > len(first):
                peer.send(["m", addr, 0, data[len(first):].hex()])
            target.ptr = (start + len(data)) % size
            if target.trigger & IRQ_END_WRITE:
                peer.send(["t", addr, IRQ_END_WRITE])
            return ""
        out = bytes(target.mem[(target.ptr + i) % size] for i in range(nread))
        target.ptr = (target.ptr + nread) % size
        self.stats["i2c_to_esp_transactions"] += 1
        self.stats["i2c_to_esp_bytes"] += nread
        if target.trigger & IRQ_END_READ:
            peer.send(["t", addr, IRQ_END_READ])
        out = self._corrupt(out)
        self.sniffer.transfer(False, memaddr, out)
        return out.hex()

    async def _slave_xfer(self, conn: BoardConn, peer: BoardConn, addr: int, slave: Slave,
                          memaddr: int | None, wdata: bytes, nread: int, nbytes: int) -> bytes:
        """Pair a controller transaction with the slave's blocking recv()/send() calls.
        The slave holds the clock (stretching) until its call is posted, up to the
        controller's timeout (at least `slave_stretch_s`, for process scheduling)."""
        phases: list[tuple[str, bytes | int]] = []
        head = bytes([memaddr]) if memaddr is not None else b""
        if head or wdata:
            phases.append(("recv", head + wdata))
        if nread:
            phases.append(("send", nread))
        timeout = max((conn.controller[3] if conn.controller else 50_000) / 1e6,
                      self.slave_stretch_s)
        result = b""
        await self._bus_time(conn, nbytes)
        for kind, payload in phases:
            deadline = time.monotonic() + timeout
            while not slave.ops:
                slave.posted.clear()
                left = deadline - time.monotonic()
                if left <= 0 or not peer.alive:
                    self.stats["i2c_errors"] += 1
                    raise BenchOSError(ETIMEDOUT, "the I2C slave held the clock too long")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(slave.posted.wait(), left)
            op = slave.ops[0]
            if op.kind != kind:
                self.stats["i2c_errors"] += 1
                raise BenchOSError(EIO, f"slave is in {op.kind}(), controller does {kind}")
            slave.ops.popleft()
            if kind == "recv":
                assert isinstance(payload, bytes)
                data = self._corrupt(payload)
                if len(data) != op.n:
                    self.stats["i2c_mismatch"] += 1
                    log.warning("%s: controller wrote %d bytes to recv(%d)", self.name,
                                len(data), op.n)
                self.stats["i2c_to_pyboard_transactions"] += 1
                self.stats["i2c_to_pyboard_bytes"] += len(data)
                if data:
                    self.sniffer.transfer(True, data[0], data[1:])
                if not op.done.done():
                    op.done.set_result(data[: op.n])
            else:
                assert isinstance(payload, int)
                if op.n != payload:
                    self.stats["i2c_mismatch"] += 1
                    log.warning("%s: controller read %d bytes from send(%d)", self.name,
                                payload, op.n)
                result = (op.data + b"\xff" * payload)[:payload]
                self.stats["i2c_to_esp_transactions"] += 1
                self.stats["i2c_to_esp_bytes"] += payload
                if not op.done.done():
                    op.done.set_result(b"")
                result = self._corrupt(result)
                self.sniffer.transfer(False, memaddr, result)
        return result

    slave_stretch_s = 0.25
