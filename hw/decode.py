"""The instruction set's rules as logic: the Amaranth backend of `d1tile.isa`'s rule functions.

`d1tile.isa.checks`, `ranges_of`, `vector_fields` and `vector_shape` are written once over an
`ops` backend; with `d1tile.isa.PY` they compute on integers (`isa.validate`,
`isa.hazard_ranges`), with `IsaLogic(m)` the same text builds the decoder logic of the
sequencer (`d1tile.hw.sequencer`) and of the vector engine (`d1tile.hw.vpu`) into module `m`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value


from d1tile.isa import SHAPE_FIELDS

__all__ = ["IsaLogic", "ShapedView"]


class ShapedView:
    """A SEND or MCAST view with the shape register's fields beside its own (the HDL form of
    an effective word, `d1tile.isa.decode`), for the rules that take the shape
    (`isa.dma_extent`, the checks)."""

    def __init__(self, fields, shape):
        self._fields, self._shape = fields, shape

    def __getattr__(self, name):
        if name in SHAPE_FIELDS:
            return getattr(self._shape, name)
        return getattr(self._fields, name)


class IsaLogic:
    """The Amaranth backend of the ISA's rules. Every mux and lookup becomes a named signal of
    module `m`, so that a value several rules use is built once."""

    def __init__(self, m: Module, prefix: str = "isa"):
        self._m = m
        self._prefix = prefix
        self._count = 0

    def _named(self, value, what: str) -> Signal:
        value = Value.cast(value)
        self._count += 1
        sig = Signal(value.shape(), name=f"{self._prefix}_{what}{self._count}")
        self._m.d.comb += sig.eq(value)
        return sig

    def mux(self, cond, if_true, if_false):
        return self._named(Mux(cond, if_true, if_false), "mux")

    def lookup(self, table: dict, key, default):
        """table[key] for a small table of integers (default when the key is absent)."""
        out = Const(default)
        for k, v in sorted(table.items()):
            out = Mux(key == k, v, out)
        return self._named(out, "lookup")

    @staticmethod
    def any(conds):
        return Cat(*conds).any() if conds else Const(0)

    @staticmethod
    def not_(cond):
        return Value.cast(cond) == 0
