"""The matrix unit: an N x N array of multiply-accumulate cells (N = `cfg.mac_dim`), int8 x int8
-> int32 and bf16 x bf16 -> fp32, chosen per beat.

`MatrixUnit` adds one outer product per cycle to its accumulators and reads them back a row at a
time. What it computes is `d1tile.sim.matrix.MatrixUnitRef` (the types' arithmetic is their
entries in `d1tile.dtypes.MATRIX_TYPES`; BF16's is `d1tile.numerics.bf16_mac`); its timing is
described (and predicted for testbenches) by the timing functions of `d1tile.sim.matrix`.

Each cell has one multiplier for both types: a signed 9 x 9 product that is the int8 product for
INT8 beats (operands sign-extended) and the product of the two 8-bit significands (1.mmmmmmm)
for BF16 beats. The product is registered (the product stage); in the accumulate stage an INT8
beat adds it to the accumulator as an int32 (wrapping), a BF16 beat adds the exact product to
the accumulator read as FP32, with one rounding (`d1tile.hw.fp.fp_add`, the fused
multiply-add of the numeric contract). The accumulators are 32-bit registers whatever the type.

The payload layouts (`operand_layout`, `row_layout`) are defined here and only here; testbenches
pack and unpack through them (`pack_operands`, `unpack_row`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..contracts import READOUT_LATENCY
from ..dtypes import MATRIX_TYPES, TYPE_BITS, ElemType, matrix_type
from ..isa import ACC_BANKS
from ..params import TileConfig
from .fp import Unpacked, fp_add, unpack_bf16, unpack_fp32


__all__ = ["MatrixUnit", "OPERAND_BITS", "operand_layout", "row_layout", "row_request_layout",
           "pack_operands", "unpack_row"]

OPERAND_BITS = max(t.operand_bits for t in MATRIX_TYPES.values())
"""Bits per operand element on the `operands` stream: the widest type's (BF16: 16). An INT8
beat uses the low 8 bits of each element (two's complement); the rest is ignored."""

def _pipeline_depth() -> int:
    """The unit's beat-to-accumulator latency: the same for every type (`d1tile.dtypes`)."""
    depths = {t.pipeline_depth for t in MATRIX_TYPES.values()}
    if len(depths) != 1:
        raise ValueError(f"the matrix types disagree on pipeline_depth ({sorted(depths)}); the "
                         "unit has one pipeline")
    return depths.pop()


# -- payload layouts ---------------------------------------------------------------------------

def operand_layout(cfg: TileConfig) -> data.StructLayout:
    """Payload of the `operands` stream: `a` (column vector, N elements), `b` (row vector, N
    elements), element 0 in the low bits, `OPERAND_BITS` raw bits each; then `clear` (1 bit),
    `type` (the beat's `ElemType`, 2 bits) and `bank` (the accumulator bank it adds into)."""
    element = unsigned(OPERAND_BITS)
    return data.StructLayout({
        "a": data.ArrayLayout(element, cfg.mac_dim),
        "b": data.ArrayLayout(element, cfg.mac_dim),
        "clear": 1,
        "type": TYPE_BITS,
        "bank": range(ACC_BANKS),
    })


def row_request_layout(cfg: TileConfig) -> data.StructLayout:
    """Payload of `rd_req`: the row (low bits, so a plain row index asks for bank 0), the
    accumulator bank, and `col`: read column `row` instead (lane i = acc[i][row]: MREAD's
    transposed readout)."""
    return data.StructLayout({"row": range(cfg.mac_dim), "bank": range(ACC_BANKS), "col": 1})


def row_layout(cfg: TileConfig) -> data.ArrayLayout:
    """Payload of `rd_data`: one accumulator row, N 32-bit lanes of raw bits (int32 or FP32),
    element 0 in the low bits: exactly an SRAM word (`d1tile.formats.word_from_lanes`)."""
    return data.ArrayLayout(unsigned(32), cfg.mac_dim)


def pack_operands(cfg: TileConfig, a, b, clear: bool, dtype=ElemType.INT8, bank: int = 0) -> int:
    """The integer value of an `operands` payload: INT8 values or BF16 bit patterns. Raises
    ValueError on operands of the wrong length or outside the type's range (the layout itself
    would silently truncate them)."""
    spec = matrix_type(dtype)
    a = spec.check_operand("a", a, cfg.mac_dim)
    b = spec.check_operand("b", b, cfg.mac_dim)
    mask = (1 << OPERAND_BITS) - 1
    const = operand_layout(cfg).const(
        {"a": [int(x) & mask for x in a], "b": [int(x) & mask for x in b],
         "clear": int(bool(clear)), "type": int(spec.operand), "bank": int(bank)})
    return const.as_value().value


def unpack_row(cfg: TileConfig, raw: int, dtype=ElemType.INT8) -> list[int]:
    """The N accumulator values of a `rd_data` payload integer, as type `dtype`'s results:
    int32 values (INT8) or FP32 bit patterns (BF16)."""
    lanes = list(data.Const(row_layout(cfg), int(raw)))
    if matrix_type(dtype).acc == ElemType.INT32:
        return [v - (1 << 32) if v >> 31 else v for v in lanes]
    return lanes


# -- the unit ------------------------------------------------------------------------------------

class MatrixUnit(wiring.Component):
    """An N x N multiply-accumulate array with row readout (N = `cfg.mac_dim`).

    Ports
    -----
    operands : In(stream of `operand_layout`): one outer product per beat, of the beat's type,
        into the beat's bank k,
        `acc[k][i][j] = (clear_bits if clear else acc[k][i][j]) + a[i] * b[j]` (`d1tile.dtypes`:
        int32 wrapping for INT8, FP32 with one rounding for BF16; `clear_bits` 0 and -0.0).
        `ready` is always 1: the array never stalls, a beat is taken in every cycle its `valid`
        is high. A beat of a type the unit lacks (INT32, FP32) leaves the accumulators as they
        are (the sequencer faults such MATMULs before they get here).
    busy : Out(1): high while an accepted beat has not reached the accumulators yet (cycles
        t+1 .. t + acc_latency - 1 for a beat accepted in cycle t).
    bank_busy : Out(ACC_BANKS): bit k is `busy` for the beats into bank k alone.
    rd_req : In(stream of `row_request_layout`): a row of a bank to read. Accepted when
        `~bank_busy[bank] & (~rd_data.valid | rd_data.ready)`, so a readout sees every beat
        into its bank accepted before it and never overwrites an unread row; beats into the
        other bank do not hold it up (one bank is read out while the other accumulates).
    rd_data : Out(stream of `row_layout`): the requested accumulator row (raw 32-bit lanes),
        valid the cycle after the request was accepted (latency `READOUT_LATENCY` = 1), held
        until taken.

    Latency and throughput: a beat accepted in cycle t is in the accumulators from cycle
    t + `acc_latency` (2, for both types: products are registered, then accumulated); one beat
    per cycle, N^2 MACs per beat for either type. One row per cycle on `rd_data` when its
    consumer is always ready.

    Hazards: a beat and a readout request of its bank accepted in the same cycle: the readout sees
    the accumulators *before* that beat. A beat into the bank being read out, sent during a readout
    sequence (between row requests), holds `bank_busy` high, which stalls the following requests for
    acc_latency - 1 cycles; when it reaches the accumulators the later rows include it (or, with
    `clear`, lose the old values). Ordering operand beats and readouts is the sequencer's job: to
    read a finished product, send no beat until the last row request has been accepted (the same
    cycle is fine).

    The accumulators are zero after reset. Every row index of range(N) is valid (N is a power of
    two). `cfg` must be a TileConfig, else TypeError.

    `types`: the element types the unit computes, all of `MATRIX_TYPES` by default (the node's
    unit). A subset builds a unit without the others' datapath (an INT8-only unit has no FP
    decode and adder, a BF16-only one no integer adder), whose beats of a missing type leave the
    accumulators as they are: for costing the types apart (`d1tile.hw.cost.matrix_unit_cost`),
    not used in the node.
    """

    def __init__(self, cfg: TileConfig, types=None):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        types = tuple(MATRIX_TYPES) if types is None else tuple(types)
        unknown = [t for t in types if t not in MATRIX_TYPES]
        if not types or unknown:
            raise ValueError(f"types={types!r}: give a non-empty subset of the matrix types "
                             f"{[t.name for t in MATRIX_TYPES]}")
        depth = _pipeline_depth()
        if depth < 1:
            raise ValueError(f"pipeline_depth={depth} must be at least 1 (the accumulate stage)")
        self._cfg = cfg
        self._depth = depth
        self._types = types
        super().__init__({
            "operands": In(stream.Signature(operand_layout(cfg))),
            "busy": Out(1),
            "bank_busy": Out(ACC_BANKS),
            "rd_req": In(stream.Signature(row_request_layout(cfg))),
            "rd_data": Out(stream.Signature(row_layout(cfg))),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def n(self) -> int:
        return self._cfg.mac_dim

    @property
    def types(self) -> tuple:
        """The element types the unit computes (all of `MATRIX_TYPES` but in cost builds)."""
        return self._types

    @property
    def acc_latency(self) -> int:
        return self._depth

    @property
    def readout_latency(self) -> int:
        return READOUT_LATENCY

    def elaborate(self, platform):
        m = Module()
        n = self.n
        ops = self.operands
        stages = self._depth - 1

        m.d.comb += ops.ready.eq(1)

        # `valid`, `clear`, `type` and `bank` travel beside the products through the product
        # stages; the products themselves are registered unconditionally (no enable: less logic,
        # and the valid bit says whether a stage holds a beat).
        valid, clear, kind, bank = ops.valid, ops.p.clear, ops.p.type, ops.p.bank
        stage_valid, stage_bank = [], []
        for stage in range(1, stages + 1):
            v = Signal(name=f"stage{stage}_valid")
            c = Signal(name=f"stage{stage}_clear")
            t = Signal(TYPE_BITS, name=f"stage{stage}_type")
            k = Signal(range(ACC_BANKS), name=f"stage{stage}_bank")
            m.d.sync += [v.eq(valid), c.eq(clear), t.eq(kind), k.eq(bank)]
            stage_valid.append(v)
            stage_bank.append(k)
            valid, clear, kind, bank = v, c, t, k
        m.d.comb += self.busy.eq(Cat(*stage_valid).any() if stage_valid else 0)
        for b in range(ACC_BANKS):
            m.d.comb += self.bank_busy[b].eq(
                Cat(*(v & (k == b) for v, k in zip(stage_valid, stage_bank))).any()
                if stage_valid else 0)
        has_int = ElemType.INT8 in self._types
        has_bf16 = ElemType.BF16 in self._types
        bf16 = kind == ElemType.BF16
        known = Cat(*(kind == t for t in self._types)).any()

        # The operands' BF16 fields, decoded once per element (shared by a row or a column).
        in_bf16 = ops.p.type == ElemType.BF16
        a_fp = [unpack_bf16(m, ops.p.a[i], f"a{i}") if has_bf16 else None for i in range(n)]
        b_fp = [unpack_bf16(m, ops.p.b[j], f"b{j}") if has_bf16 else None for j in range(n)]

        def factor(element, unpacked, name):
            # int8: sign-extended; bf16: the 8-bit significand 1.mmmmmmm, zero-extended.
            f = Signal(signed(9), name=name)
            significand = Cat(unpacked.sig[16:24], Const(0, 1)).as_signed() if has_bf16 else 0
            integer = element[:8].as_signed()
            m.d.comb += f.eq(Mux(in_bf16, significand, integer) if has_int and has_bf16
                             else integer if has_int else significand)
            return f

        a_factor = [factor(ops.p.a[i], a_fp[i], f"a{i}_factor") for i in range(n)]
        b_factor = [factor(ops.p.b[j], b_fp[j], f"b{j}_factor") for j in range(n)]

        acc = [[[Signal(32, name=f"acc{k}_{i}_{j}") for j in range(n)] for i in range(n)]
               for k in range(ACC_BANKS)]
        for i in range(n):
            for j in range(n):
                name = f"cell_{i}_{j}"
                # Product stage input: the shared multiplier and, for BF16, the product's sign,
                # exponent and specials (the significand follows from the 16-bit product).
                fields = {"p": (signed(18), a_factor[i] * b_factor[j])}
                if has_bf16:
                    fields.update({
                        "sign": (1, a_fp[i].sign ^ b_fp[j].sign),
                        "exp": (signed(12), a_fp[i].exp + b_fp[j].exp),
                        "zero": (1, a_fp[i].zero | b_fp[j].zero),
                        "inf": (1, a_fp[i].inf | b_fp[j].inf),
                        "nan": (1, a_fp[i].nan | b_fp[j].nan | (a_fp[i].inf & b_fp[j].zero)
                                | (a_fp[i].zero & b_fp[j].inf)),
                    })
                values = {}
                for key, (shape, value) in fields.items():
                    for stage in range(1, stages + 1):
                        reg = Signal(shape, name=f"{name}_{key}_s{stage}")
                        m.d.sync += reg.eq(value)
                        value = reg
                    values[key] = value
                # Accumulate stage: from the beat's bank of the accumulator, or from the type's
                # clear value. One adder per cell serves both banks.
                current = Signal(32, name=f"{name}_current")
                m.d.comb += current.eq(acc[0][i][j])
                for k in range(1, ACC_BANKS):
                    with m.If(bank == k):
                        m.d.comb += current.eq(acc[k][i][j])
                clear_bits = {t: Const(MATRIX_TYPES[t].clear_bits, 32) for t in self._types}
                base = Signal(32, name=f"{name}_base")
                m.d.comb += base.eq(Mux(clear, Mux(bf16, clear_bits[ElemType.BF16],
                                                   clear_bits[ElemType.INT8])
                                        if has_int and has_bf16 else clear_bits[self._types[0]],
                                        current))
                if has_bf16:
                    p16 = values["p"][:16]
                    top = p16[15]
                    product = Unpacked(
                        sign=values["sign"], exp=values["exp"] + top,
                        sig=Mux(top, p16 << 8, p16 << 9)[:24], zero=values["zero"],
                        inf=values["inf"], nan=values["nan"])
                    fp_sum = fp_add(m, unpack_fp32(m, base, f"{name}_acc"), product,
                                    f"{name}_add")
                # The 33-bit int sum, truncated to 32 bits: the int32 wrap of the reference.
                int_sum = base + values["p"].as_signed() if has_int else None
                total = (Mux(bf16, fp_sum, int_sum) if has_int and has_bf16
                         else int_sum if has_int else fp_sum)
                for k in range(ACC_BANKS):
                    with m.If(valid & known & (bank == k)):
                        m.d.sync += acc[k][i][j].eq(total)

        # Readout: one output register. While the requested bank's `bank_busy` is low none of
        # its accumulators changes in this cycle (with product stages) or only with a beat of
        # this same cycle, so the row registered here holds every beat into the bank accepted
        # before the request.
        rd_req, rd_data = self.rd_req, self.rd_data
        m.d.comb += rd_req.ready.eq(~self.bank_busy.bit_select(rd_req.p.bank, 1)
                                    & (~rd_data.valid | rd_data.ready))
        with m.If(rd_data.ready):
            m.d.sync += rd_data.valid.eq(0)
        with m.If(rd_req.valid & rd_req.ready):
            m.d.sync += rd_data.valid.eq(1)
            row_bits = (n - 1).bit_length()
            bank_bits = (ACC_BANKS - 1).bit_length()
            with m.Switch(Cat(rd_req.p.row, rd_req.p.bank, rd_req.p.col)):
                for col in range(2):
                    for k in range(ACC_BANKS):
                        for i in range(n):
                            with m.Case(i | (k << row_bits) | (col << (row_bits + bank_bits))):
                                m.d.sync += [rd_data.payload[j].eq(acc[k][j][i] if col
                                                                   else acc[k][i][j])
                                             for j in range(n)]
        return m
