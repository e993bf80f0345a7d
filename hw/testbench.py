"""cocotb 2.x support shared by every testbench: clock and reset, a cycle counter, and stream
drivers and sinks with random back-pressure.

Timing discipline (used by every class here): inputs are driven right after a rising edge, and
handshakes are sampled in the `ReadOnly` phase of the same cycle, just before the next edge, so
"valid and ready seen in ReadOnly during cycle t" is exactly "the beat transfers at the end of
cycle t". Cycle t is the t-th rising edge after reset was released.

Amaranth flattens a stream port `foo` into `foo__valid`, `foo__ready` and `foo__payload`.
"""

from __future__ import annotations

import os
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


__all__ = ["TB", "StreamDriver", "StreamSink", "signal_int"]

CLOCK_PERIOD_NS = 10


def signal_int(handle, signed_width: int | None = None) -> int:
    """The integer value of a signal; sign-extended when `signed_width` is given."""
    value = int(handle.value)
    if signed_width is not None and value >> (signed_width - 1):
        value -= 1 << signed_width
    return value


class TB:
    """Clock, reset, cycle counter and a seeded random generator for one testbench.

    The seed is cocotb's (`COCOTB_RANDOM_SEED`, set by `d1tile.hw.verilator.run_cocotb` from
    `D1TILE_SEED`) and is logged at start so that every failure can be replayed.
    """

    def __init__(self, dut):
        self.dut = dut
        # The run's base seed (cocotb derives per-test seeds from it for `random`; we keep the
        # base so that the printed value replays the run).
        self.seed = int(os.environ.get("COCOTB_RANDOM_SEED", cocotb.RANDOM_SEED))
        self.rng = random.Random(self.seed)
        self.cycle = 0
        self.log = dut._log
        self.log.info("d1tile testbench seed %d (replay with D1TILE_SEED=%d)", self.seed, self.seed)

    async def start(self, reset_cycles: int = 2):
        """Start the clock, hold reset for `reset_cycles`, then count cycles from 0."""
        self.dut.rst.value = 1
        Clock(self.dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
        for _ in range(reset_cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        cocotb.start_soon(self._count())

    async def _count(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def cycles(self, n: int = 1):
        for _ in range(n):
            await RisingEdge(self.dut.clk)


class StreamDriver:
    """Drives an Amaranth stream input `prefix` from a queue of payload integers.

    `valid_prob` < 1 inserts random idle cycles (the rng is the TB's, so runs are replayable).
    `sent` lists `(cycle, payload)` for every beat the DUT accepted.
    """

    def __init__(self, tb: TB, prefix: str, valid_prob: float = 1.0):
        self.tb = tb
        self.valid = getattr(tb.dut, f"{prefix}__valid")
        self.ready = getattr(tb.dut, f"{prefix}__ready")
        self.payload = getattr(tb.dut, f"{prefix}__payload")
        self.valid_prob = valid_prob
        self.queue: deque[int] = deque()
        self.sent: list[tuple[int, int]] = []
        self.valid.value = 0
        cocotb.start_soon(self._run())

    def send(self, payload: int):
        self.queue.append(payload)

    @property
    def idle(self) -> bool:
        return not self.queue

    async def drain(self):
        while self.queue:
            await RisingEdge(self.tb.dut.clk)

    async def _run(self):
        clk = self.tb.dut.clk
        while True:
            await RisingEdge(clk)
            offer = bool(self.queue) and self.tb.rng.random() < self.valid_prob
            self.valid.value = int(offer)
            if offer:
                self.payload.value = self.queue[0]
            await ReadOnly()
            if offer and int(self.ready.value):
                self.sent.append((self.tb.cycle, self.queue.popleft()))


class StreamSink:
    """Accepts an Amaranth stream output `prefix` with random back-pressure.

    `ready_prob` is the chance of ready being high in a cycle. `received` lists
    `(cycle, payload)` for every beat taken; `callback(cycle, payload)` is called for each.
    """

    def __init__(self, tb: TB, prefix: str, ready_prob: float = 1.0, callback=None):
        self.tb = tb
        self.valid = getattr(tb.dut, f"{prefix}__valid")
        self.ready = getattr(tb.dut, f"{prefix}__ready")
        self.payload = getattr(tb.dut, f"{prefix}__payload")
        self.ready_prob = ready_prob
        self.callback = callback
        self.received: list[tuple[int, int]] = []
        self.ready.value = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        clk = self.tb.dut.clk
        while True:
            await RisingEdge(clk)
            take = self.tb.rng.random() < self.ready_prob
            self.ready.value = int(take)
            await ReadOnly()
            if take and int(self.valid.value):
                beat = (self.tb.cycle, self.payload.value.to_unsigned())
                self.received.append(beat)
                if self.callback is not None:
                    self.callback(*beat)
