"""The node's instruction set: the one definition of its encoding, validity rules and hazard
ranges. The RTL decoder (`d1tile.hw.sequencer`), the cycle model, the functional interpreter
(`d1tile.sim.interp`) and the assembler (`d1tile.sw.asm`) are derived from this module or are
checked against it.

Instructions are 64-bit words; bits 3..0 are the opcode, the fields follow from bit 4 upwards in
the order listed in `FORMATS`. Programs are straight-line (the compiler unrolls); there are no
registers besides the requantisation parameters that `SETQ` sets.

| opcode | instruction | unit | effect |
| --- | --- | --- | --- |
| 0 | `NOP` | sequencer | nothing |
| 1 | `HALT` | sequencer | wait until every unit is idle, report DONE to the host, stop |
| 2 | `MATMUL a, b, kw, clear` | matrix | 4*kw outer products from words a.. (A^T) and b.. (B) |
| 3 | `MREAD dst, row0, nrows` | matrix | accumulator rows row0.. to words dst.. |
| 4 | `VEC op, dst, a, b, n, bfix` | vector | n vector-unit commands, word by word |
| 5 | `SETQ scale, shift, relu` | sequencer | set the REQUANT parameters of later VECs |
| 6 | `SEND src, n, x, y, dst, counter` | DMA | push words src.. to node (x, y) words dst.., then bump its counter |
| 7 | `WAIT counter, value` | sequencer | block until counter >= value, then subtract value |
| 8-15 | undefined | | fault UNDEFINED |

Validity (checked when the instruction reaches issue; an invalid instruction faults the node,
which stops and reports the fault, the pc and the offending value to the host):

* MATMUL: kw >= 1 (else FIELD, value kw); a + kw and b + kw <= sram_words (else ADDRESS, value
  a or b).
* MREAD: nrows >= 1 and row0 + nrows <= mac_dim (else FIELD, value row0 + nrows);
  dst + nrows <= sram_words (else ADDRESS, value dst).
* VEC: op is a `VecOp` (else FIELD, value op); n >= 1 (else FIELD, value n); a + n, the b range
  of binary ops (ADD, MUL, MAX: b + (1 if bfix else n)) and the destination range
  (dst + ceil(n / 4) for REQUANT, dst + n otherwise) <= sram_words (else ADDRESS, value a, b or
  dst, checked in that order); the destination overlaps a source range only if it starts at or
  below that source, and a fixed b lies outside the destination (else FIELD, value dst: the
  engine reads ahead of its writes, so a later element must not read an earlier one's result).
* SEND: x < cols and y < rows (else NODE, value x | y << 4); src + n and dst + n <= sram_words
  (else ADDRESS, value src or dst). n = 0 sends no data, only the counter bump (a signal).

REQUANT writes source word i into byte slot i % 4 of destination word dst + i // 4, so n
accumulator rows become ceil(n / 4) int8 operand words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from d1tile.formats import BitFormat, Field, VecOp
from d1tile.params import TileConfig


__all__ = [
    "Opcode", "Unit", "FaultCode", "FORMATS", "INSTR_BITS", "ADDR_BITS",
    "Instruction", "encode", "decode", "validate", "Ranges", "hazard_ranges", "overlaps",
    "requant_words", "BINARY_VECOPS",
]

INSTR_BITS = 64
ADDR_BITS = 16          # SRAM word address fields; TileConfig keeps sram_words <= 2**16
COUNTERS = 16           # synchronisation counters per node
COUNTER_BITS = 16


class Opcode(enum.IntEnum):
    NOP = 0
    HALT = 1
    MATMUL = 2
    MREAD = 3
    VEC = 4
    SETQ = 5
    SEND = 6
    WAIT = 7


class Unit(enum.IntEnum):
    """Who executes an instruction. Each of MATRIX, VECTOR and DMA runs one instruction at a
    time, beside the others; SEQUENCER instructions complete in the cycle they issue."""
    SEQUENCER = 0
    MATRIX = 1
    VECTOR = 2
    DMA = 3


UNIT_OF = {
    Opcode.NOP: Unit.SEQUENCER, Opcode.HALT: Unit.SEQUENCER, Opcode.SETQ: Unit.SEQUENCER,
    Opcode.WAIT: Unit.SEQUENCER, Opcode.MATMUL: Unit.MATRIX, Opcode.MREAD: Unit.MATRIX,
    Opcode.VEC: Unit.VECTOR, Opcode.SEND: Unit.DMA,
}


class FaultCode(enum.IntEnum):
    NONE = 0
    UNDEFINED = 1   # opcode 8..15
    ADDRESS = 2     # an SRAM range beyond sram_words
    NODE = 3        # SEND to a node outside the grid
    FIELD = 4       # a field out of its range (kw = 0, rows beyond the array, bad vector op)
    PC = 5          # the pc ran past the end of the instruction memory (no HALT)


def _fmt(name, *fields) -> BitFormat:
    return BitFormat(name, [Field("op", 4), *fields])


A = ADDR_BITS
FORMATS: dict[Opcode, BitFormat] = {
    Opcode.NOP: _fmt("NOP"),
    Opcode.HALT: _fmt("HALT"),
    Opcode.MATMUL: _fmt("MATMUL", Field("a", A), Field("b", A), Field("kw", 16), Field("clear", 1)),
    Opcode.MREAD: _fmt("MREAD", Field("dst", A), Field("row0", 8), Field("nrows", 8)),
    Opcode.VEC: _fmt("VEC", Field("vop", 3), Field("bfix", 1), Field("dst", A), Field("a", A),
                     Field("b", A), Field("n", 8)),
    Opcode.SETQ: _fmt("SETQ", Field("scale", 16), Field("shift", 6), Field("relu", 1)),
    Opcode.SEND: _fmt("SEND", Field("src", A), Field("n", 12), Field("x", 4), Field("y", 4),
                      Field("dst", A), Field("counter", 4)),
    Opcode.WAIT: _fmt("WAIT", Field("counter", 4), Field("value", COUNTER_BITS)),
}
assert all(f.width <= INSTR_BITS for f in FORMATS.values())

BINARY_VECOPS = frozenset({VecOp.ADD, VecOp.MUL, VecOp.MAX})


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: `op` is an `Opcode`, or None for an undefined opcode (`raw` keeps
    the word); `fields` maps field names (without `op`) to values."""
    op: Opcode | None
    fields: dict
    raw: int

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self):
        if self.op is None:
            return f".word {self.raw:#018x}"
        args = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.op.name} {args}".strip()


def encode(op: Opcode, **fields) -> int:
    """The 64-bit word of an instruction; a field that does not fit raises FormatError."""
    return FORMATS[Opcode(op)].pack(op=int(op), **fields)


def decode(word: int) -> Instruction:
    word = int(word)
    if word < 0 or word >> INSTR_BITS:
        raise ValueError(f"instruction word {word:#x} is wider than {INSTR_BITS} bits")
    code = word & 0xF
    try:
        op = Opcode(code)
    except ValueError:
        return Instruction(None, {}, word)
    values = FORMATS[op].unpack(word & ((1 << FORMATS[op].width) - 1))
    del values["op"]
    return Instruction(op, values, word)


def requant_words(n: int) -> int:
    """Destination words of a REQUANT over n source words."""
    return (n + 3) // 4


def validate(cfg: TileConfig, instr: Instruction) -> tuple[FaultCode, int]:
    """(FaultCode.NONE, 0), or the fault this instruction raises and the offending value."""
    words = cfg.sram_words
    op, f = instr.op, instr.fields
    if op is None:
        return FaultCode.UNDEFINED, instr.raw & 0xF
    if op == Opcode.MATMUL:
        if f["kw"] < 1:
            return FaultCode.FIELD, f["kw"]
        for name in ("a", "b"):
            if f[name] + f["kw"] > words:
                return FaultCode.ADDRESS, f[name]
    elif op == Opcode.MREAD:
        if f["nrows"] < 1 or f["row0"] + f["nrows"] > cfg.mac_dim:
            return FaultCode.FIELD, f["row0"] + f["nrows"]
        if f["dst"] + f["nrows"] > words:
            return FaultCode.ADDRESS, f["dst"]
    elif op == Opcode.VEC:
        if f["vop"] not in VecOp.__members__.values():
            return FaultCode.FIELD, f["vop"]
        if f["n"] < 1:
            return FaultCode.FIELD, f["n"]
        if f["a"] + f["n"] > words:
            return FaultCode.ADDRESS, f["a"]
        if f["vop"] in BINARY_VECOPS and f["b"] + (1 if f["bfix"] else f["n"]) > words:
            return FaultCode.ADDRESS, f["b"]
        out = requant_words(f["n"]) if f["vop"] == VecOp.REQUANT else f["n"]
        if f["dst"] + out > words:
            return FaultCode.ADDRESS, f["dst"]
        # The vector engine reads ahead of its writes, so a later element must never read a
        # word an earlier element wrote: the destination may overlap a source only if it starts
        # at or below it, and a fixed b must lie outside the destination.
        write = (f["dst"], f["dst"] + out)
        binary = f["vop"] in BINARY_VECOPS
        if ((_meet(write, (f["a"], f["a"] + f["n"])) and f["dst"] > f["a"])
                or (binary and not f["bfix"] and _meet(write, (f["b"], f["b"] + f["n"]))
                    and f["dst"] > f["b"])
                or (binary and f["bfix"] and f["dst"] <= f["b"] < f["dst"] + out)):
            return FaultCode.FIELD, f["dst"]
    elif op == Opcode.SEND:
        if f["x"] >= cfg.cols or f["y"] >= cfg.rows:
            return FaultCode.NODE, f["x"] | f["y"] << 4
        for name in ("src", "dst"):
            if f[name] + f["n"] > words:
                return FaultCode.ADDRESS, f[name]
    return FaultCode.NONE, 0


@dataclass(frozen=True)
class Ranges:
    """The SRAM word ranges [lo, hi) an instruction reads and writes while its unit runs it.
    Empty ranges have lo == hi."""
    read0: tuple[int, int] = (0, 0)
    read1: tuple[int, int] = (0, 0)
    write: tuple[int, int] = (0, 0)


def hazard_ranges(instr: Instruction) -> Ranges:
    """The ranges the sequencer tracks for a valid unit instruction (see `overlaps`)."""
    op, f = instr.op, instr.fields
    if op == Opcode.MATMUL:
        return Ranges((f["a"], f["a"] + f["kw"]), (f["b"], f["b"] + f["kw"]))
    if op == Opcode.MREAD:
        return Ranges(write=(f["dst"], f["dst"] + f["nrows"]))
    if op == Opcode.VEC:
        n = f["n"]
        b = ((f["b"], f["b"] + (1 if f["bfix"] else n)) if f["vop"] in BINARY_VECOPS
             else (0, 0))
        out = requant_words(n) if f["vop"] == VecOp.REQUANT else n
        return Ranges((f["a"], f["a"] + n), b, (f["dst"], f["dst"] + out))
    if op == Opcode.SEND:
        return Ranges((f["src"], f["src"] + f["n"]))
    return Ranges()


def _meet(p: tuple[int, int], q: tuple[int, int]) -> bool:
    """Two half-open ranges share a word (an empty range meets nothing)."""
    return p[0] < p[1] and q[0] < q[1] and p[0] < q[1] and q[0] < p[1]


def overlaps(new: Ranges, running: Ranges) -> bool:
    """True when `new` may not issue while `running` is in progress on another unit:
    new writes what running reads or writes, or new reads what running writes."""
    return (_meet(new.write, running.read0) or _meet(new.write, running.read1)
            or _meet(new.write, running.write) or _meet(new.read0, running.write)
            or _meet(new.read1, running.write))
