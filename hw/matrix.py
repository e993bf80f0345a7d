"""The matrix unit: an N x N array of multiply-accumulate cells (N = `cfg.mac_dim`).

`MatrixUnit` adds one outer product per cycle to its accumulators and reads them back a row at a
time. What it computes is `d1tile.sim.matrix.MatrixUnitRef`; its timing is described (and
predicted for testbenches) by the timing functions of `d1tile.sim.matrix`.

The array is generic; what depends on the data type is a *cell* (`MacCell`: the multiply, the
product's shape, the accumulate) looked up in `MAC_CELLS`, and an entry of the data-type table
`d1tile.sim.matrix.DTYPES` (widths, pipeline depth). A BF16 x BF16 -> FP32 unit is one more
table entry and one more cell.

The payload layouts (`operand_layout`, `row_layout`) are derived from the table here and only
here; testbenches pack and unpack through them (`pack_operands`, `unpack_row`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..formats import MatrixDType
from ..params import TileConfig
from ..sim.matrix import READOUT_LATENCY, DTypeSpec, dtype_spec, validate_operand


__all__ = ["MacCell", "Int8MacCell", "MAC_CELLS", "MatrixUnit",
           "operand_layout", "row_layout", "pack_operands", "unpack_row"]


# -- payload layouts ---------------------------------------------------------------------------

def _element(bits: int, is_signed: bool):
    return signed(bits) if is_signed else unsigned(bits)


def operand_layout(cfg: TileConfig, dtype=MatrixDType.INT8) -> data.StructLayout:
    """Payload of the `operands` stream: `a` (column vector, N elements), `b` (row vector, N
    elements), element 0 in the low bits, then `clear` (1 bit)."""
    spec = dtype_spec(dtype)
    element = _element(spec.operand_bits, spec.operand_signed)
    return data.StructLayout({
        "a": data.ArrayLayout(element, cfg.mac_dim),
        "b": data.ArrayLayout(element, cfg.mac_dim),
        "clear": 1,
    })


def row_layout(cfg: TileConfig, dtype=MatrixDType.INT8) -> data.ArrayLayout:
    """Payload of `rd_data`: one accumulator row, N elements, element 0 in the low bits. For INT8
    this is exactly an SRAM word of N int32 lanes (`d1tile.formats.word_from_lanes`)."""
    spec = dtype_spec(dtype)
    return data.ArrayLayout(_element(spec.acc_bits, spec.acc_signed), cfg.mac_dim)


def pack_operands(cfg: TileConfig, a, b, clear: bool, dtype=MatrixDType.INT8) -> int:
    """The integer value of an `operands` payload. Raises ValueError on operands of the wrong
    length or outside the type's range (the layout itself would silently truncate them)."""
    spec = dtype_spec(dtype)
    a = validate_operand(spec, "a", a, cfg.mac_dim)
    b = validate_operand(spec, "b", b, cfg.mac_dim)
    const = operand_layout(cfg, dtype).const(
        {"a": [int(x) for x in a], "b": [int(x) for x in b], "clear": int(bool(clear))})
    return const.as_value().value


def unpack_row(cfg: TileConfig, raw: int, dtype=MatrixDType.INT8) -> list[int]:
    """The N accumulator values of a `rd_data` payload integer."""
    return list(data.Const(row_layout(cfg, dtype), int(raw)))


# -- cells ---------------------------------------------------------------------------------------

class MacCell:
    """The data-type dependent part of one multiply-accumulate cell.

    A cell is a recipe, not a module: the array calls it once per (i, j) position.

    * `product_shape`: shape of a product as it enters the accumulate stage.
    * `multiply(a, b)`: the combinational product of two operand elements.
    * `product(m, a, b, name)`: the product after `spec.product_stages` registers. The default
      registers `multiply` that many times (and leaves retiming to synthesis); a cell whose
      multiply needs explicit internal stages (a floating-point one) overrides it, keeping the
      same number of stages.
    * `accumulate(base, product)`: the next accumulator value, combinational, one cycle; `base`
      is the accumulator or zero (on `clear`). The array truncates it to the accumulator shape.
    """

    product_shape = None

    def __init__(self, spec: DTypeSpec):
        self.spec = spec

    def multiply(self, a: Value, b: Value) -> Value:
        raise NotImplementedError

    def accumulate(self, base: Value, product: Value) -> Value:
        raise NotImplementedError

    def product(self, m: Module, a: Value, b: Value, name: str) -> Value:
        value = self.multiply(a, b)
        for stage in range(1, self.spec.product_stages + 1):
            reg = Signal(self.product_shape, name=f"{name}_s{stage}")
            m.d.sync += reg.eq(value)
            value = reg
        return value


class Int8MacCell(MacCell):
    """int8 x int8 -> int16 product (exact), accumulated into a wrapping int32."""

    product_shape = signed(16)

    def multiply(self, a, b):
        return a * b

    def accumulate(self, base, product):
        # The sum is 33 bits wide; assigning it to the 32-bit accumulator drops the carry, which
        # is the int32 wrap of the reference.
        return base + product


MAC_CELLS: dict[MatrixDType, type[MacCell]] = {
    MatrixDType.INT8: Int8MacCell,
}


# -- the unit ------------------------------------------------------------------------------------

class MatrixUnit(wiring.Component):
    """An N x N multiply-accumulate array with row readout (N = `cfg.mac_dim`).

    Ports
    -----
    operands : In(stream of `operand_layout`): one outer product per beat,
        `acc[i][j] = (0 if clear else acc[i][j]) + a[i] * b[j]`. `ready` is always 1: the array
        never stalls, a beat is taken in every cycle its `valid` is high.
    busy : Out(1): high while an accepted beat has not reached the accumulators yet (cycles
        t+1 .. t + acc_latency - 1 for a beat accepted in cycle t).
    rd_req : In(stream of range(N)): a row index to read. Accepted when
        `~busy & (~rd_data.valid | rd_data.ready)`, so a readout sees every beat accepted before
        it and never overwrites an unread row.
    rd_data : Out(stream of `row_layout`): the requested accumulator row, valid the cycle after
        the request was accepted (latency `READOUT_LATENCY` = 1), held until taken.

    Latency and throughput: a beat accepted in cycle t is in the accumulators from cycle
    t + `acc_latency` (2 for INT8: products are registered, then accumulated); one beat per
    cycle. One row per cycle on `rd_data` when its consumer is always ready.

    Hazards: a beat and a readout request accepted in the same cycle: the readout sees the
    accumulators *before* that beat. A beat sent during a readout sequence (between row
    requests) holds `busy` high, which stalls the following requests for acc_latency - 1 cycles;
    when it reaches the accumulators the later rows include it (or, with `clear`, lose the old
    values). Ordering operand beats and readouts is the sequencer's job: to read a finished
    product, send no beat until the last row request has been accepted (the same cycle is fine).

    The accumulators are zero after reset. Every row index of range(N) is valid (N is a power of
    two). `dtype` must have an entry in `d1tile.sim.matrix.DTYPES` and in `MAC_CELLS`, else
    ValueError; `cfg` must be a TileConfig, else TypeError.
    """

    def __init__(self, cfg: TileConfig, dtype=MatrixDType.INT8):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        spec = dtype_spec(dtype)  # ValueError for unknown types
        dtype = MatrixDType(dtype)
        if dtype not in MAC_CELLS:
            raise ValueError(f"dtype {dtype.name} has no MAC cell in the RTL; implemented: "
                             f"{', '.join(d.name for d in MAC_CELLS)}")
        if spec.pipeline_depth < 1:
            raise ValueError(f"dtype {dtype.name}: pipeline_depth={spec.pipeline_depth} must be "
                             "at least 1 (the accumulate stage)")
        self._cfg = cfg
        self._dtype = dtype
        self._spec = spec
        super().__init__({
            "operands": In(stream.Signature(operand_layout(cfg, dtype))),
            "busy": Out(1),
            "rd_req": In(stream.Signature(range(cfg.mac_dim))),
            "rd_data": Out(stream.Signature(row_layout(cfg, dtype))),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def dtype(self) -> MatrixDType:
        return self._dtype

    @property
    def spec(self) -> DTypeSpec:
        return self._spec

    @property
    def n(self) -> int:
        return self._cfg.mac_dim

    @property
    def acc_latency(self) -> int:
        return self._spec.pipeline_depth

    @property
    def readout_latency(self) -> int:
        return READOUT_LATENCY

    def elaborate(self, platform):
        m = Module()
        n = self.n
        spec = self._spec
        cell = MAC_CELLS[self._dtype](spec)
        ops = self.operands

        m.d.comb += ops.ready.eq(1)

        # `valid` and `clear` travel beside the products through the product stages; the
        # products themselves are registered unconditionally (no enable: less logic, and the
        # valid bit says whether a stage holds a beat).
        valid, clear = ops.valid, ops.p.clear
        stage_valid = []
        for stage in range(1, spec.product_stages + 1):
            v = Signal(name=f"stage{stage}_valid")
            c = Signal(name=f"stage{stage}_clear")
            m.d.sync += [v.eq(valid), c.eq(clear)]
            stage_valid.append(v)
            valid, clear = v, c
        m.d.comb += self.busy.eq(Cat(*stage_valid).any() if stage_valid else 0)

        acc_shape = _element(spec.acc_bits, spec.acc_signed)
        acc = [[Signal(acc_shape, name=f"acc_{i}_{j}") for j in range(n)] for i in range(n)]
        for i in range(n):
            for j in range(n):
                product = cell.product(m, ops.p.a[i], ops.p.b[j], name=f"prod_{i}_{j}")
                # Zero bits are 0 in every accumulator type (integer or IEEE float).
                base = Mux(clear, 0, acc[i][j])
                with m.If(valid):
                    m.d.sync += acc[i][j].eq(cell.accumulate(base, product))

        # Readout: one output register. While `busy` is low no accumulator changes in this
        # cycle (with product stages) or only changes with a beat of this same cycle, so the row
        # registered here holds every beat accepted before the request.
        rd_req, rd_data = self.rd_req, self.rd_data
        m.d.comb += rd_req.ready.eq(~self.busy & (~rd_data.valid | rd_data.ready))
        with m.If(rd_data.ready):
            m.d.sync += rd_data.valid.eq(0)
        with m.If(rd_req.valid & rd_req.ready):
            m.d.sync += rd_data.valid.eq(1)
            with m.Switch(rd_req.payload):
                for i in range(n):
                    with m.Case(i):
                        m.d.sync += [rd_data.payload[j].eq(acc[i][j]) for j in range(n)]
        return m
