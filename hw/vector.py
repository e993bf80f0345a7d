"""The vector unit: lane-parallel int32 operations over SRAM words.

What it computes, bit for bit, is defined by `d1tile.sim.vector` (ADD, MUL, MAX, RELU and
REQUANT over `cfg.lanes` int32 lanes, with a byte mask); this module is its RTL.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from d1tile.formats import VecOp
from d1tile.params import TileConfig
from d1tile.sim.vector import (INT8_MAX, INT8_MIN, VECTOR_LATENCY, vector_cmd_format,
                               vector_result_format)


__all__ = ["VectorUnit"]


class VectorUnit(wiring.Component):
    """Executes one vector command per cycle on `cfg.lanes` int32 lanes in parallel.

    Ports
    -----
    cmd : In(stream of `vector_cmd_format(cfg).layout`)
        `op`, operand words `a` and `b`, and the REQUANT parameters `scale`, `shift`, `slot`,
        `relu`.
    result : Out(stream of `vector_result_format(cfg).layout`)
        The word to write (`data`) and its byte enables (`mask`), one result per command, in
        command order.

    Latency and throughput: the result is registered, so a command accepted in cycle t is
    offered on `result` from cycle t + 1 (`VECTOR_LATENCY`). One command per cycle is accepted
    while results are taken: `cmd.ready = ~result.valid | result.ready`, so back-pressure on
    `result` stalls `cmd` in the same cycle and nothing is buffered beyond the one result
    register. A result stays valid and unchanged until taken.

    Bad input: op codes outside `VecOp` (5..7) yield a result with data 0 and mask 0 (a write of
    nothing); the sequencer rejects them before they get here.
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(vector_cmd_format(cfg).layout)),
            "result": Out(stream.Signature(vector_result_format(cfg).layout)),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def lanes(self) -> int:
        return self._cfg.lanes

    @property
    def latency(self) -> int:
        return VECTOR_LATENCY

    def elaborate(self, platform):
        m = Module()
        n = self._cfg.lanes
        cmd = self.cmd.payload
        lanes = data.ArrayLayout(signed(32), n)
        a = lanes(cmd.a)
        b = lanes(cmd.b)
        is_mul = cmd.op == VecOp.MUL

        # The REQUANT rounding term 1 << (shift - 1), or 0 for shift 0: shift a one in above
        # bit 0 and drop bit 0. Shared by all lanes.
        rounding = Signal(64)
        m.d.comb += rounding.eq((Const(1, 65) << cmd.shift)[1:])
        low = Mux(cmd.relu, 0, INT8_MIN)

        word = Signal(lanes)          # ADD/MUL/MAX/RELU result lanes
        packed = Signal(8 * n)        # REQUANT: the N int8 results, before placing them in a slot
        for i in range(n):
            # One multiplier per lane serves both MUL (low 32 bits of a * b) and REQUANT (the
            # exact a * scale, scale < 2**16 fits the signed 32-bit operand), rather than two.
            product = Signal(signed(64), name=f"product{i}")
            m.d.comb += product.eq(a[i] * Mux(is_mul, b[i], cmd.scale))
            # |product| < 2**47 and rounding <= 2**62 for REQUANT, so the sum cannot overflow.
            scaled = Signal(signed(64), name=f"scaled{i}")
            m.d.comb += scaled.eq((product + rounding) >> cmd.shift)
            q = packed.word_select(i, 8)
            with m.If(scaled > INT8_MAX):
                m.d.comb += q.eq(INT8_MAX)
            with m.Elif(scaled < low):
                m.d.comb += q.eq(low)
            with m.Else():
                m.d.comb += q.eq(scaled)

            with m.Switch(cmd.op):
                with m.Case(VecOp.ADD):
                    m.d.comb += word[i].eq(a[i] + b[i])
                with m.Case(VecOp.MUL):
                    m.d.comb += word[i].eq(product)
                with m.Case(VecOp.MAX):
                    m.d.comb += word[i].eq(Mux(a[i] > b[i], a[i], b[i]))
                with m.Case(VecOp.RELU):
                    m.d.comb += word[i].eq(Mux(a[i] < 0, 0, a[i]))

        out = Signal(vector_result_format(self._cfg).layout)
        with m.Switch(cmd.op):
            with m.Case(VecOp.ADD, VecOp.MUL, VecOp.MAX, VecOp.RELU):
                m.d.comb += [out.data.eq(word), out.mask.eq(-1)]
            with m.Case(VecOp.REQUANT):
                # Everything outside the slot stays 0 (the Signal's default).
                m.d.comb += [out.data.word_select(cmd.slot, 8 * n).eq(packed),
                             out.mask.word_select(cmd.slot, n).eq(-1)]
            # Other op codes: data 0, mask 0.

        m.d.comb += self.cmd.ready.eq(~self.result.valid | self.result.ready)
        with m.If(self.cmd.ready):
            m.d.sync += self.result.valid.eq(self.cmd.valid)
            with m.If(self.cmd.valid):
                m.d.sync += self.result.payload.eq(out)
        return m
