"""The vector unit: lane-parallel integer and FP32 operations over SRAM words.

What it computes, bit for bit, is `d1tile.sim.vector.vector_op` applied to the ops of
`d1tile.vector_ops.VECTOR_OPS` (the table: codes, element types, which ops are binary,
reductions, stochastic); the floating-point arithmetic is the numeric contract of
`d1tile.numerics`, built from the gates of `d1tile.hw.fp`. This module is its RTL; docs/vector.md
is the long form of the contract.

Every lane has one copy of each shared block, and the op code routes operands through them
(`_ROUTES`, one entry per op of the table):

* ONE signed 32 x 32 multiplier: MUL (low 32 bits), REQUANT (a * scale) and the 24 x 24-bit
  significand product of every FP multiply (FMUL, FSCALE, FAXPY's a * q, the * q of the
  int -> FP32 and FP32 -> int conversions), rounded by `fp.fp_mul_product`;
* ONE FP adder (`fp.fp_add`): FADD, FSUB (b's sign flipped), FAXPY (the rounded product + b)
  and FSUM (accumulator + a);
* ONE FP max (`fp.fp32_max`): FMAX, FRELU (against +0) and FMAXR (accumulator, a);
* one int -> FP32 converter (int32 lanes or int8 elements), one FP32 -> int32 converter (int8
  results saturate its output further: clamping twice is clamping once to the smaller range),
  the BF16 conversions, a 32-bit xorshift generator state and a 32-bit reduction accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from d1tile.dtypes import ELEMENTS
from d1tile.numerics import F32_SIGN, RNG_INCREMENT, rng_seed_states
from d1tile.params import TileConfig
from d1tile.vector_ops import (INT8_MAX, INT8_MIN, SEED_BITS, VECTOR_LATENCY, VECTOR_OPS,
                               vector_cmd_format, vector_result_format)

from . import fp


__all__ = ["VectorUnit", "xorshift32"]


@dataclass(frozen=True)
class _Route:
    """How one op uses a lane's shared datapath.

    result : the lane value that is the op's result (`_lane` builds them; its width must be the
        op's destination element width).
    mul : the multiplier's operands: "a*b" / "a*scale" (integers), or the FP product "fa*fb",
        "fa*q" (a is FP32), "fi*q" (a is an integer, converted to FP32 first).
    add : the FP adder's operands: "a+b", "a-b", "p+b" (p: the rounded product), "acc+a".
    max : the FP max's operands: "a,b", "a,0", "acc,a".
    """
    result: str
    mul: str | None = None
    add: str | None = None
    max: str | None = None


_ROUTES = {
    "ADD": _Route("iadd"),
    "MUL": _Route("imul", mul="a*b"),
    "MAX": _Route("imax"),
    "RELU": _Route("irelu"),
    "REQUANT": _Route("requant", mul="a*scale"),
    "FADD": _Route("fadd", add="a+b"),
    "FSUB": _Route("fadd", add="a-b"),
    "FMUL": _Route("fmul", mul="fa*fb"),
    "FMAX": _Route("fmax", max="a,b"),
    "FMASK": _Route("fmask"),
    "FAXPY": _Route("fadd", mul="fa*q", add="p+b"),
    "FRELU": _Route("fmax", max="a,0"),
    "FSCALE": _Route("fmul", mul="fa*q"),
    "FSUM": _Route("fadd", add="acc+a"),
    "FMAXR": _Route("fmax", max="acc,a"),
    "CVT_F32_BF16": _Route("bf16_rne"),
    "CVT_F32_BF16_SR": _Route("bf16_sr"),
    "CVT_BF16_F32": _Route("widen"),
    "CVT_I32_F32": _Route("fmul", mul="fi*q"),
    "CVT_F32_I32": _Route("ftoi32", mul="fa*q"),
    "CVT_I8_F32": _Route("fmul", mul="fi*q"),
    "CVT_F32_I8": _Route("ftoi8", mul="fa*q"),
}
"""Op name -> its route; `_routes()` checks it against `VECTOR_OPS` (one entry per op)."""

_RESULT_BITS = {"iadd": 32, "imul": 32, "imax": 32, "irelu": 32, "requant": 8, "fadd": 32,
                "fmul": 32, "fmax": 32, "fmask": 32, "bf16_rne": 16, "bf16_sr": 16,
                "widen": 32, "ftoi32": 32, "ftoi8": 8}


def _routes() -> dict:
    """code -> (VectorOp, _Route), checked: every op of the table has a route whose result has
    the width of the op's destination elements, and the int -> FP32 route reads an integer
    source."""
    names = {op.name for op in VECTOR_OPS.values()}
    if names != set(_ROUTES):
        raise ValueError(f"vector unit routes {sorted(_ROUTES)} do not match the ops of "
                         f"VECTOR_OPS {sorted(names)}")
    out = {}
    for code, op in sorted(VECTOR_OPS.items()):
        route = _ROUTES[op.name]
        if _RESULT_BITS[route.result] != ELEMENTS[op.dst].bits:
            raise ValueError(f"{op.name}: route result {route.result} is "
                             f"{_RESULT_BITS[route.result]} bits, the op writes "
                             f"{ELEMENTS[op.dst].name}")
        if route.mul == "fi*q" and ELEMENTS[op.src].is_float:
            raise ValueError(f"{op.name}: the int -> FP32 route needs an integer source")
        out[code] = (op, route)
    return out


def xorshift32(s):
    """One xorshift32 (13, 17, 5) step of a 32-bit value (`d1tile.numerics.xorshift32`)."""
    s = s ^ (s << 13)[:32]
    s = s ^ (s >> 17)
    return s ^ (s << 5)[:32]


class VectorUnit(wiring.Component):
    """Executes one vector command per cycle on `cfg.lanes` 32-bit lanes in parallel.

    Ports
    -----
    cmd : In(stream of `vector_cmd_format(cfg).layout`)
        `op` (a `VECTOR_OPS` code), operand words `a` and `b`, SETQ's `scale`, `shift`, `relu`,
        SETR's FP32 scalar `q`, the element's `slot` (its index mod 4: which group of the
        source and destination words) and `first` / `last` (a reduction starts from its
        identity at `first` and emits its result at `last`).
    result : Out(stream of `vector_result_format(cfg).layout`)
        The word to write (`data`) and its byte enables (`mask`), in command order: one result
        per command, except that a reduction's elements before its `last` give none.
    seed : In(32), reseed : In(1)
        `reseed` high in a cycle loads the generator lane states with
        `numerics.rng_seed_states(seed, N)` at the end of that cycle. Priority: a reseed
        applies BEFORE a stochastic command accepted in the same cycle (that command rounds
        with the first values of the new sequence, exactly as if the reseed had come a cycle
        earlier). The vector engine reseeds only in its `start` cycle, when no command is
        accepted, so the case does not arise there.

    State: the reduction accumulator (N x 32 bits, zero after reset: only a reduction command
    without `first` ever reads it) and the generator's N lane states (after reset
    `rng_seed_states(0, N)`); a stochastic command (CVT_F32_BF16_SR) advances every lane once
    with xorshift32 and rounds with the new state's low 16 bits (`numerics.rng_next`). Other
    commands leave both as they are.

    Latency and throughput: the result is registered, so a command accepted in cycle t is
    offered on `result` from cycle t + 1 (`VECTOR_LATENCY`). One command per cycle is accepted
    while results are taken: `cmd.ready = ~result.valid | result.ready`, so back-pressure on
    `result` stalls `cmd` in the same cycle and nothing is buffered beyond the one result
    register. A result stays valid and unchanged until taken.

    Bad input: op codes absent from `VECTOR_OPS` yield a result with data 0 and mask 0 (a write
    of nothing); the sequencer rejects them before they get here.
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self._routes = _routes()
        super().__init__({
            "cmd": In(stream.Signature(vector_cmd_format(cfg).layout)),
            "result": Out(stream.Signature(vector_result_format(cfg).layout)),
            "seed": In(SEED_BITS),
            "reseed": In(1),
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
        routes = self._routes
        fire = self.cmd.valid & self.cmd.ready

        def codes(predicate):
            return [code for code, (op, route) in routes.items() if predicate(op, route)]

        def when(name, predicate) -> Signal:
            """A decode signal: the command's op is one of the ops `predicate` selects."""
            selected = codes(predicate)
            decoded = Signal(name=f"is_{name}")
            m.d.comb += decoded.eq(cmd.op.matches(*selected) if selected else 0)
            return decoded

        dec = {name: when(name, predicate) for name, predicate in (
            ("int_mul", lambda op, r: r.mul in ("a*b", "a*scale")),
            ("mul_b", lambda op, r: r.mul == "a*b"),
            ("mul_scale", lambda op, r: r.mul == "a*scale"),
            ("from_int", lambda op, r: r.mul == "fi*q"),
            ("from_int8", lambda op, r: r.mul == "fi*q" and ELEMENTS[op.src].bits == 8),
            ("mul_q", lambda op, r: r.mul in ("fa*q", "fi*q")),
            ("add_p", lambda op, r: r.add == "p+b"),
            ("add_acc", lambda op, r: r.add == "acc+a"),
            ("add_neg", lambda op, r: r.add == "a-b"),
            ("max_acc", lambda op, r: r.max == "acc,a"),
            ("max_zero", lambda op, r: r.max == "a,0"),
            ("reduce", lambda op, r: op.reduce),
            ("stochastic", lambda op, r: op.stochastic),
        )}
        # A reduction's starting value: its identity at `first`, else the accumulator.
        identity = Signal(32)
        with m.Switch(cmd.op):
            for code in codes(lambda op, r: op.reduce):
                with m.Case(code):
                    m.d.comb += identity.eq(VECTOR_OPS[code].identity)

        # The REQUANT rounding term 1 << (shift - 1), or 0 for shift 0: shift a one in above
        # bit 0 and drop bit 0. Shared by all lanes.
        rounding = Signal(64)
        m.d.comb += rounding.eq((Const(1, 65) << cmd.shift)[1:])
        low = Signal(signed(9))
        m.d.comb += low.eq(Mux(cmd.relu, 0, INT8_MIN))

        # Source groups: element i of a 16-bit (8-bit) source is in half slot % 2 (quarter
        # slot % 4) of word a.
        a16 = Signal(16 * n)
        a8 = Signal(8 * n)
        m.d.comb += [a16.eq(cmd.a.word_select(cmd.slot[0], 16 * n)),
                     a8.eq(cmd.a.word_select(cmd.slot, 8 * n))]

        # The generator: a reseed in this cycle applies before this cycle's command.
        seeded = [Signal(32, name=f"seeded{i}") for i in range(n)]
        state = [Signal(32, name=f"rng{i}", init=s)
                 for i, s in enumerate(rng_seed_states(0, n))]
        current = [Signal(32, name=f"rng{i}_cur") for i in range(n)]
        advanced = [Signal(32, name=f"rng{i}_next") for i in range(n)]
        for i in range(n):
            offset = (i + 1) * RNG_INCREMENT % (1 << 32)
            total = Signal(32, name=f"seeded{i}_sum")
            m.d.comb += [
                total.eq(self.seed + offset),
                # xorshift32 stays at 0 forever: a zero state is replaced, as in the model.
                seeded[i].eq(Mux(total == 0, RNG_INCREMENT, total)),
                current[i].eq(Mux(self.reseed, seeded[i], state[i])),
                advanced[i].eq(xorshift32(current[i])),
            ]
            with m.If(fire & dec["stochastic"]):
                m.d.sync += state[i].eq(advanced[i])
            with m.Elif(self.reseed):
                m.d.sync += state[i].eq(seeded[i])

        acc = [Signal(32, name=f"acc{i}") for i in range(n)]
        lanes = [self._lane(m, i, cmd, dec, identity, rounding, low, a16, a8, acc[i],
                            advanced[i][:16]) for i in range(n)]

        # Each op's result lanes, placed in group slot % groups(dst) of the word under that
        # group's byte mask.
        out = Signal(vector_result_format(self._cfg).layout)
        with m.Switch(cmd.op):
            for code, (op, route) in routes.items():
                with m.Case(code):
                    dst = ELEMENTS[op.dst]
                    group_bits = n * dst.bits
                    packed = Cat(*(lane[route.result] for lane in lanes))
                    slot = cmd.slot[:dst.groups.bit_length() - 1]
                    if dst.groups == 1:
                        m.d.comb += [out.data.eq(packed), out.mask.eq(-1)]
                    else:
                        m.d.comb += [out.data.word_select(slot, group_bits).eq(packed),
                                     out.mask.word_select(slot, group_bits // 8).eq(-1)]
                    if op.reduce:
                        # The fold: the op's lane result is the new accumulator (and, at
                        # `last`, the result word).
                        with m.If(fire):
                            m.d.sync += [acc[i].eq(lanes[i][route.result]) for i in range(n)]
            # Undefined op codes: data 0, mask 0 (the Signal's default).

        # A reduction gives its one result with its last element, nothing before.
        emits = ~dec["reduce"] | cmd.last
        m.d.comb += self.cmd.ready.eq(~self.result.valid | self.result.ready)
        with m.If(self.cmd.ready):
            m.d.sync += self.result.valid.eq(self.cmd.valid & emits)
            with m.If(self.cmd.valid):
                m.d.sync += self.result.payload.eq(out)
        return m

    @staticmethod
    def _lane(m, i, cmd, dec, identity, rounding, low, a16, a8, acc, rand16) -> dict:
        """Lane i's datapath: every result `_ROUTES` names, as {name: value}."""
        def sig(shape, name, value):
            s = Signal(shape, name=f"l{i}_{name}")
            m.d.comb += s.eq(value)
            return s

        a = cmd.a.word_select(i, 32)
        b = cmd.b.word_select(i, 32)
        a_int, b_int = a.as_signed(), b.as_signed()
        base = sig(32, "base", Mux(cmd.first, identity, acc))

        # int -> FP32: an int32 lane or a sign-extended int8 element.
        int_in = sig(signed(32), "int_in", Mux(dec["from_int8"], a8.word_select(i, 8).as_signed(),
                                                a_int))
        from_int = fp.fp32_from_int(m, int_in, f"l{i}_itof")

        # The multiplier: integers as they are, or the significands of two FP32 operands
        # (zero-extended, so the low 48 bits are their exact product).
        fx = fp.unpack_fp32(m, sig(32, "fx", Mux(dec["from_int"], from_int, a)), f"l{i}_fx")
        fy = fp.unpack_fp32(m, sig(32, "fy", Mux(dec["mul_q"], cmd.q, b)), f"l{i}_fy")
        mul_x = sig(signed(32), "mul_x", Mux(dec["int_mul"], a_int, fx.sig))
        mul_y = sig(signed(32), "mul_y", Mux(dec["mul_b"], b_int,
                                             Mux(dec["mul_scale"], cmd.scale, fy.sig)))
        product = sig(signed(64), "product", mul_x * mul_y)
        fmul = fp.fp_mul_product(m, fx, fy, product[:48], f"l{i}_fmul")

        # REQUANT: |product| < 2**47 and rounding <= 2**62, so the sum cannot overflow.
        scaled = sig(signed(64), "scaled", (product + rounding) >> cmd.shift)
        requant = Signal(8, name=f"l{i}_requant")
        with m.If(scaled > INT8_MAX):
            m.d.comb += requant.eq(INT8_MAX)
        with m.Elif(scaled < low):
            m.d.comb += requant.eq(low)
        with m.Else():
            m.d.comb += requant.eq(scaled)

        # The FP adder.
        add_x = sig(32, "add_x", Mux(dec["add_p"], fmul, Mux(dec["add_acc"], base, a)))
        add_y = sig(32, "add_y", Mux(dec["add_acc"], a, b ^ Mux(dec["add_neg"], F32_SIGN, 0)))
        fadd = fp.fp_add(m, fp.unpack_fp32(m, add_x, f"l{i}_ax"),
                         fp.unpack_fp32(m, add_y, f"l{i}_ay"), f"l{i}_fadd")

        # The FP max.
        max_x = sig(32, "max_x", Mux(dec["max_acc"], base, a))
        max_y = sig(32, "max_y", Mux(dec["max_acc"], a, Mux(dec["max_zero"], 0, b)))
        fmax = fp.fp32_max(m, max_x, max_y, f"l{i}_fmax")

        # FP32 -> integer: one int32 converter; int8 results clamp its output once more.
        ftoi32 = fp.int_from_fp32(m, fmul, -(1 << 31), (1 << 31) - 1, f"l{i}_ftoi")
        ftoi8 = sig(8, "ftoi8", Mux(ftoi32 > INT8_MAX, INT8_MAX,
                                    Mux(ftoi32 < INT8_MIN, INT8_MIN, ftoi32)))

        return {
            "iadd": sig(32, "iadd", a_int + b_int),
            "imul": sig(32, "imul", product[:32]),
            "imax": sig(32, "imax", Mux(a_int > b_int, a, b)),
            "irelu": sig(32, "irelu", Mux(a_int < 0, 0, a)),
            "requant": requant,
            "fadd": fadd,
            "fmul": fmul,
            "fmax": fmax,
            "fmask": sig(32, "fmask", Mux(fp.fp32_gt_zero(b), fp.fp32_canonical(
                m, a, f"l{i}_fmask_a"), 0)),
            "bf16_rne": fp.bf16_from_fp32_rne(m, a, f"l{i}_rne"),
            "bf16_sr": fp.bf16_from_fp32_sr(m, a, rand16, f"l{i}_sr"),
            "widen": fp.fp32_from_bf16(m, a16.word_select(i, 16), f"l{i}_widen"),
            "ftoi32": sig(32, "ftoi32", ftoi32),
            "ftoi8": ftoi8,
        }
