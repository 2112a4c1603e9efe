"""Part of `Bench`: pins, the wires between the boards and the ESP8266's reset line."""

from __future__ import annotations

from virtual_bench.board_link import BoardConn, PinState
from virtual_bench.parts import BenchParts
from virtual_bench.wiring import (
    ESP,
    HARD_RESET,
    IRQ_FALLING,
    IRQ_RISING,
    OPEN_DRAIN,
    OUT,
    PULL_DOWN,
    PULL_UP,
    WIRE_IDLE,
    WIRES,
)


class Wires(BenchParts):
    """Pin requests (`pin`, `pw`, `pr`, `irq`), wire levels and edges, the reset line."""

    def _pin(self, conn: BoardConn, pin: str) -> PinState:
        state = conn.pins.get(pin)
        if state is None:
            state = conn.pins[pin] = PinState()
        return state

    def _op_pin(self, conn: BoardConn, pin: str, mode: int | None, pull: int | None,
                value: int | None) -> list[int]:
        state = self._pin(conn, pin)
        if mode is not None:
            state.mode = mode
        if pull is not None:
            state.pull = pull
        if value is not None:
            state.out = 1 if value else 0
        self._settle()
        return [state.mode, state.pull]

    def _op_pw(self, conn: BoardConn, pin: str, value: int) -> None:
        self._pin(conn, pin).out = 1 if value else 0
        self._settle()

    def _op_pr(self, conn: BoardConn, pin: str) -> int:
        state = conn.pins.get(pin)
        if state is not None and state.mode in (OUT, OPEN_DRAIN) and not (
                state.mode == OPEN_DRAIN and state.out):
            if not self._wire_of(conn.name, pin):
                return state.out
        wire = self._wire_of(conn.name, pin)
        if wire is not None:
            return self.levels[wire]
        if state is not None and state.mode == OPEN_DRAIN and state.out:
            return 0 if state.pull == PULL_DOWN else 1
        return 1 if state is not None and state.pull == PULL_UP else 0

    def _op_irq(self, conn: BoardConn, pin: str, trigger: int) -> None:
        if trigger:
            conn.irqs[pin] = trigger
        else:
            conn.irqs.pop(pin, None)

    def _wire_of(self, board: str, pin: str) -> str | None:
        for name, (drv, rdr) in WIRES.items():
            if (board, pin) in (drv, rdr):
                return name
        return None

    def _wire_level(self, name: str) -> int:
        (dboard, dpin), (rboard, rpin) = WIRES[name]
        driver = self.conns.get(dboard)
        if driver is not None:
            state = driver.pins.get(dpin)
            if state is not None and state.mode in (OUT, OPEN_DRAIN):
                if state.mode == OUT or state.out == 0:
                    return state.out
        reader = self.conns.get(rboard)
        if reader is not None:
            state = reader.pins.get(rpin)
            if state is not None and state.pull == PULL_UP:
                return 1
            if state is not None and state.pull == PULL_DOWN:
                return 0
        return WIRE_IDLE[name]

    def _settle(self) -> None:
        """Bring every wire to its level; deliver edges (and reset the ESP8266)."""
        if self._settling:
            self._resettle = True
            return
        self._settling = True
        try:
            for _ in range(16):
                self._resettle = False
                for name, (_drv, (rboard, rpin)) in WIRES.items():
                    level = self._wire_level(name)
                    if level == self.levels[name]:
                        continue
                    self.levels[name] = level
                    self._resettle = True
                    if name == "rst":
                        self._reset_line(level)
                        continue
                    if level:
                        self.stats[f"{name}_edges"] += 1
                        if name == "ack":
                            self.sniffer.exchange_done()
                    reader = self.conns.get(rboard)
                    if reader is not None and reader.irqs.get(rpin, 0) & (
                            IRQ_RISING if level else IRQ_FALLING):
                        reader.send(["e", rpin, level])
                if not self._resettle:
                    break
        finally:
            self._settling = False

    def _reset_line(self, level: int) -> None:
        if level == 0:
            self.stats["reset_pulses"] += 1
            self._esp_held = True
            self._event("reset", "esp8266 held in reset")
            if self.procs.get(ESP) is not None:
                self._kill_board(ESP, HARD_RESET)
        else:
            self._esp_held = False
            self._event("reset", "esp8266 released")
            if not self._closing:
                self._spawn(self._start_board(ESP))

    # -------------------------------------------------------------- I2C bus
