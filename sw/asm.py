"""Assembler and program builder for node programs.

Programs can be built in Python::

    p = Program(cfg)
    p.matmul(a=0, b=64, kw=16, clear=True)
    p.mread(dst=128)
    p.send(src=128, n=8, to=(1, 0), dst=0, counter=0)
    p.halt()
    words = p.words

or written as text and assembled (`assemble(cfg, text)`), one instruction a line; arguments are
positional in the order of `d1tile.isa.FORMATS` or `name=value`; `;` and `#` start comments;
vector ops, element types and SETR registers are written by name (`VEC ADD, 10, 0, 5, 4`,
`FVEC FAXPY, ...`, `MATMUL 0, 64, 16, clear=1, type=BF16`, `FCVT FP32, BF16, sr=1, ...`,
`SETR SCALE, 0.01`: a number with a decimal point or exponent is an FP32 value); `.word 0x...`
emits a raw word::

    MATMUL 0, 64, 16, clear=1, bank=0
    MREAD dst=128, row0=0, nrows=8, bank=0
    SEND src=128, n=8, x=1, y=0, dst=0, counter=0
    WAIT 0, 1
    HALT

Every instruction is checked when it is added: a field that does not fit its encoding, and
(unless `check=False`) an instruction the node would fault on (`isa.validate`), raise
`AsmError` naming the line or index, the instruction and the reason. `check=False` exists so
that tests can build faulting programs on purpose.
"""

from __future__ import annotations

import re

import numpy as np

from d1tile import isa
from d1tile.dtypes import ElemType
from d1tile.formats import FormatError
from d1tile.isa import FaultCode, FVecOp, Opcode, SetrReg, VecOp
from d1tile.params import TileConfig


__all__ = ["AsmError", "Program", "assemble", "disassemble", "f32_bits"]


class AsmError(ValueError):
    """An instruction cannot be encoded, or would fault; the message says which and why."""


_FAULT_REASONS = {
    FaultCode.UNDEFINED: "undefined opcode",
    FaultCode.ADDRESS: "SRAM range beyond the node's {words} words (at address {value})",
    FaultCode.NODE: "destination node outside the {rows}x{cols} grid",
    FaultCode.FIELD: "field out of range (value {value})",
    FaultCode.TYPE: "element type or conversion the node does not have (value {value})",
}

# Fields written by name in text, and how: field -> (enum, printed when disassembling).
_NAMED = {"vop": VecOp, "fop": FVecOp, "type": ElemType, "stype": ElemType, "dtype": ElemType,
          "reg": SetrReg}


def f32_bits(value: float) -> int:
    """The FP32 bits of a Python float (rounded to nearest even), e.g. for SETR SCALE."""
    return int(np.array(value, dtype=np.float32).view(np.uint32))


class Program:
    """A straight-line node program under construction (a list of 64-bit words)."""

    def __init__(self, cfg: TileConfig, *, check: bool = True, max_words: int | None = None):
        """`max_words`: the longest program accepted (default: the instruction memory; a
        compiler pass may build a longer one and shorten it, `d1tile.sw.reroll`)."""
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self.cfg = cfg
        self.check = check
        self.max_words = cfg.imem_words if max_words is None else max_words
        self.words: list[int] = []
        self._open_loops: list[int] = []     # pcs of the LOOPs of open `loop()` blocks
        self._loop_ends: set[int] = set()    # last instructions of closed loop bodies
        self._shape = 0                      # the last SHAPE's fields (`isa.SHAPE_FORMAT`)

    def __len__(self):
        return len(self.words)

    def emit(self, op: Opcode, where: str | None = None, **fields) -> int:
        """Encode and append one instruction; returns its index (its pc)."""
        where = where or f"instruction {len(self.words)}"
        try:
            word = isa.encode(op, **fields)
        except (FormatError, ValueError) as exc:
            raise AsmError(f"{where}: {Opcode(op).name}: {exc}") from None
        if self.check:
            # a shaped SEND or MCAST is checked with the last SHAPE emitted before it
            checked = word | (self._shape << isa.INSTR_BITS if fields.get("shaped") else 0)
            code, value = isa.validate(self.cfg, isa.decode(checked))
            if code != FaultCode.NONE:
                reason = _FAULT_REASONS[code].format(
                    words=self.cfg.sram_words, value=value, rows=self.cfg.rows, cols=self.cfg.cols)
                raise AsmError(f"{where}: {isa.decode(checked)}: {reason}")
        if op == Opcode.SHAPE:
            self._shape = word >> 4
        if len(self.words) >= self.max_words:
            if self.max_words == self.cfg.imem_words:
                raise AsmError(f"{where}: program longer than the {self.cfg.imem_words}-word "
                               "instruction memory")
            raise AsmError(f"{where}: program longer than {self.max_words} instructions")
        self.words.append(word)
        return len(self.words) - 1

    # -- one method per instruction ------------------------------------------------------------

    def nop(self):
        return self.emit(Opcode.NOP)

    def halt(self):
        return self.emit(Opcode.HALT)

    def matmul(self, a: int, b: int, kw: int, clear: bool = False, dtype=ElemType.INT8,
               bank: int = 0):
        """acc[bank] (+)= A @ B over V*kw k-steps (V = 4 for INT8, 2 for BF16 operands): A^T
        words a.., B words b.. (see architecture.md). `dtype` an ElemType or its name."""
        dtype = ElemType[dtype.upper()] if isinstance(dtype, str) else ElemType(dtype)
        return self.emit(Opcode.MATMUL, a=a, b=b, kw=kw, clear=int(clear), type=int(dtype),
                         bank=bank)

    def mread(self, dst: int, row0: int = 0, nrows: int | None = None, bank: int = 0,
              transpose: bool = False):
        """Rows row0.. of accumulator bank `bank` to SRAM words dst.. (all rows by default);
        `transpose`: its columns row0.. instead (word r lane i = acc[i][row0 + r])."""
        nrows = self.cfg.mac_dim - row0 if nrows is None else nrows
        return self.emit(Opcode.MREAD, dst=dst, row0=row0, nrows=nrows, bank=bank,
                         tr=int(transpose))

    def vec(self, op, dst: int, a: int, b: int = 0, n: int = 1, bfix: bool = False):
        """n vector-unit operations word by word; `op` a VecOp or its name."""
        vop = VecOp[op.upper()] if isinstance(op, str) else VecOp(op)
        return self.emit(Opcode.VEC, vop=int(vop), dst=dst, a=a, b=b, n=n, bfix=int(bfix))

    def fvec(self, op, dst: int, a: int, b: int = 0, n: int = 1, bfix: bool = False):
        """n FP32 vector-unit operations (or one reduction of n words); `op` an FVecOp or its
        name."""
        fop = FVecOp[op.upper()] if isinstance(op, str) else FVecOp(op)
        return self.emit(Opcode.FVEC, fop=int(fop), dst=dst, a=a, b=b, n=n, bfix=int(bfix))

    def fcvt(self, stype, dtype, dst: int, a: int, n: int = 1, stochastic: bool = False):
        """n conversions from element type `stype` to `dtype` (ElemTypes or names)."""
        types = [ElemType[t.upper()] if isinstance(t, str) else ElemType(t) for t in (stype, dtype)]
        return self.emit(Opcode.FCVT, stype=int(types[0]), dtype=int(types[1]),
                         sr=int(stochastic), dst=dst, a=a, n=n)

    def setq(self, scale: int, shift: int, relu: bool = False):
        return self.emit(Opcode.SETQ, scale=scale, shift=shift, relu=int(relu))

    def setr(self, reg, value: int):
        """SETR: `reg` a SetrReg or its name; `value` the raw 32 bits."""
        reg = SetrReg[reg.upper()] if isinstance(reg, str) else SetrReg(reg)
        return self.emit(Opcode.SETR, reg=int(reg), value=value)

    def fscale(self, q: float):
        """SETR SCALE with the FP32 value of `q` (the scalar of FAXPY, FSCALE, conversions)."""
        return self.setr(SetrReg.SCALE, f32_bits(q))

    def seed(self, seed: int):
        """SETR SEED: reseed the stochastic-rounding generator before the next vector op."""
        return self.setr(SetrReg.SEED, seed)

    def send(self, src: int, n: int, to: tuple[int, int], dst: int, counter: int = 0,
             shaped: bool = False):
        """Push words src..src+n-1 to node `to` = (x, y), words dst.., then bump its counter.
        `shaped`: the rows of the DMA shape register instead (`shape`)."""
        x, y = to
        return self.emit(Opcode.SEND, src=src, n=n, x=x, y=y, dst=dst, counter=counter,
                         shaped=int(shaped))

    def shape(self, rows: int = 1, sstride: int = 0, dstride: int = 0, zero: bool = False,
              span: tuple[int, int] | None = None):
        """SHAPE: later shaped SENDs and MCASTs move `rows` rows of n words, row r from
        src + r * sstride (zeros with `zero`) to dst + r * dstride (`d1tile.isa`); with
        `span` = (first, last), a shaped MCAST goes to the rectangle of its own range times
        first..last along the other dimension (rows for a row MCAST, columns for a column one)."""
        if not 1 <= rows <= 1 << isa.FORMATS[Opcode.SHAPE].field("extra").width:
            raise AsmError(f"instruction {len(self.words)}: SHAPE: rows={rows} is not 1..4096")
        first, last = span if span is not None else (0, 0)
        return self.emit(Opcode.SHAPE, extra=rows - 1, sstride=sstride, dstride=dstride,
                         zero=int(zero), span=int(span is not None), span_first=first,
                         span_last=last)

    def mcast(self, src: int, n: int, dst: int, *, row: tuple[int, int] | None = None,
              column: tuple[int, int] | None = None, counter: int = 0, shaped: bool = False):
        """MCAST: push words src..src+n-1 to words dst.. of the nodes `row` = (first, last) of
        this node's row, or `column` = (first, last) of its column, each counter bumped."""
        if (row is None) == (column is None):
            raise AsmError(f"instruction {len(self.words)}: MCAST: give row=(first, last) or "
                           "column=(first, last)")
        first, last = row if row is not None else column
        return self.emit(Opcode.MCAST, src=src, n=n, col=int(column is not None), first=first,
                         last=last, dst=dst, counter=counter, shaped=int(shaped))

    def wait(self, counter: int, value: int = 1):
        return self.emit(Opcode.WAIT, counter=counter, value=value)

    def loop(self, count: int, body: int | None = None):
        """LOOP: run the next `body` instructions `count` times. Without `body`, a context
        manager: the instructions emitted inside the `with` block are the body::

            with p.loop(16):
                p.step(s0=4)            # the MATMUL's a advances 4 words per iteration
                p.matmul(0, 64, 4)
        """
        if body is not None:
            return self.emit(Opcode.LOOP, count=count, body=body)
        return _LoopBlock(self, count)

    def step(self, s0: int = 0, s1: int = 0, s2: int = 0, level: int = 0):
        """STEP: the next instruction's address fields (`isa.ADDRESS_SLOTS`: MATMUL a, b;
        MREAD dst; VEC/FVEC dst, a, b; FCVT dst, a; SEND src, dst) advance by s_k x the
        iteration of loop `level` (0 = innermost). Negative strides are taken modulo 2**16."""
        mask = (1 << isa.ADDR_BITS) - 1
        strides = {}
        for name, s in (("s0", s0), ("s1", s1), ("s2", s2)):
            if not -(1 << isa.ADDR_BITS) < s < 1 << isa.ADDR_BITS:
                raise AsmError(f"instruction {len(self.words)}: STEP: {name}={s} is not a "
                               f"{isa.ADDR_BITS}-bit stride")
            strides[name] = s & mask
        return self.emit(Opcode.STEP, level=level, **strides)

    def word(self, raw: int):
        """Append a raw 64-bit word, unchecked (for tests of corrupt programs)."""
        if not 0 <= raw < 1 << isa.INSTR_BITS:
            raise AsmError(f"instruction {len(self.words)}: .word {raw:#x} is not a 64-bit word")
        self.words.append(raw)
        return len(self.words) - 1

    def listing(self) -> str:
        return disassemble(self.words)


class _LoopBlock:
    """`Program.loop(count)` as a context manager: emits the LOOP with a placeholder body,
    and patches in the body's length when the block ends (an empty body raises AsmError)."""

    def __init__(self, program: Program, count: int):
        self.program = program
        if len(program._open_loops) >= isa.LOOP_DEPTH:
            raise AsmError(f"instruction {len(program)}: LOOP nested deeper than the "
                           f"{isa.LOOP_DEPTH} loops the sequencer holds")
        self.pc = program.emit(Opcode.LOOP, count=count, body=1)

    def __enter__(self):
        self.program._open_loops.append(self.pc)
        return self

    def __exit__(self, kind, value, tb):
        p = self.program
        p._open_loops.pop()
        if kind is not None:
            return False
        body = len(p.words) - self.pc - 1
        if body == 0:
            raise AsmError(f"instruction {self.pc}: LOOP with an empty body")
        if len(p.words) - 1 in p._loop_ends:
            raise AsmError(f"instruction {self.pc}: the LOOP's body ends with the last "
                           "instruction of an inner loop; add an instruction after the inner loop")
        p._loop_ends.add(len(p.words) - 1)
        p.words[self.pc] = isa.encode(Opcode.LOOP, count=isa.decode(p.words[self.pc]).count,
                                      body=body)
        return False


_LINE = re.compile(r"^\s*([.A-Za-z]+)\s*(.*)$")


def _parse_value(text: str, field: str, where: str) -> int:
    text = text.strip()
    named = _NAMED.get(field)
    if named is not None and text.upper() in named.__members__:
        return int(named[text.upper()])
    try:
        return int(text, 0)
    except ValueError:
        pass
    if field == "value":
        try:
            return f32_bits(float(text))
        except ValueError:
            pass
    known = f"; names: {', '.join(named.__members__)}" if named is not None else ""
    raise AsmError(f"{where}: {field}={text!r} is not a number{known}") from None


def assemble(cfg: TileConfig, text: str, *, check: bool = True) -> Program:
    """Assemble program text (see the module docstring) into a `Program`."""
    program = Program(cfg, check=check)
    for number, line in enumerate(text.splitlines(), 1):
        line = re.split(r"[;#]", line, maxsplit=1)[0].strip()
        if not line:
            continue
        where = f"line {number}"
        match = _LINE.match(line)
        mnemonic = match.group(1).upper() if match else ""
        args = [a for a in (match.group(2).split(",") if match else []) if a.strip()]
        if mnemonic == ".WORD":
            if len(args) != 1:
                raise AsmError(f"{where}: .word takes one value")
            program.word(_parse_value(args[0], "word", where))
            continue
        if mnemonic not in Opcode.__members__:
            raise AsmError(f"{where}: unknown instruction {mnemonic or line!r}; known: "
                           f"{', '.join(Opcode.__members__)}")
        op = Opcode[mnemonic]
        names = [f.name for f in isa.FORMATS[op].fields if f.name != "op"]
        fields: dict[str, int] = {}
        for position, arg in enumerate(args):
            if "=" in arg:
                name, value = (part.strip() for part in arg.split("=", 1))
            elif position < len(names):
                name, value = names[position], arg
            else:
                raise AsmError(f"{where}: {mnemonic} takes at most {len(names)} arguments "
                               f"({', '.join(names)})")
            if name not in names:
                raise AsmError(f"{where}: {mnemonic} has no field {name!r} "
                               f"(fields: {', '.join(names) or 'none'})")
            if name in fields:
                raise AsmError(f"{where}: field {name!r} given twice")
            fields[name] = _parse_value(value, name, where)
        if op == Opcode.MREAD and "nrows" not in fields:
            fields["nrows"] = cfg.mac_dim - fields.get("row0", 0)
        program.emit(op, where=where, **fields)
    return program


def disassemble(words) -> str:
    """One line per word, in the syntax `assemble` reads back."""
    lines = []
    for pc, word in enumerate(words):
        instr = isa.decode(word)
        if instr.op is None:
            text = f".word {word:#018x}"
        else:
            args = []
            for name, value in instr.fields.items():
                named = _NAMED.get(name)
                if named is not None and value in named.__members__.values():
                    args.append(f"{name}={named(value).name}")
                else:
                    args.append(f"{name}={value}")
            text = f"{instr.op.name} {', '.join(args)}".rstrip()
        lines.append(f"{text:60} ; {pc}")
    return "\n".join(lines)
