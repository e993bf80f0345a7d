"""Cycle-exact model of the node sequencer (`d1tile.hw.sequencer.Sequencer`).

This module imports no Amaranth. `SequencerModel` keeps the RTL's registers (state, pc, fault
registers, SETQ registers, the `SYNC_COUNTERS` (32) sync counters, the hazard ranges recorded per
engine and the instruction memory) and applies the RTL's per-cycle rules, so that a testbench or the
node model can step it in lockstep with Verilator.

The sequencer, cycle by cycle
-----------------------------
The engines are `ENGINES` = (MATRIX, VECTOR, DMA, READOUT); each has an `idle` input, a
registered signal of the engine (MATRIX and READOUT are the matrix engine's MATMUL and MREAD
halves). In every cycle the sequencer makes one `Decision` from its state, the instruction
`imem[pc]` (read combinationally) and the four idle flags:

* IDLE, STOPPED: nothing (`NONE`).
* RUN, with `i = decode(imem[pc])`, in this order:
  0. pc == imem_words (the program ran past the end of the imem without a HALT): `FAULT` with
     code PC and value = pc, as `d1tile.sim.interp` reports it.
  1. `validate(cfg, i)` is a fault: `FAULT`. At the edge: fault_code/fault_pc/fault_value are
     recorded, state -> HALTING, pc stays. Nothing issues, no stall strobe. fault_pc and
     fault_value are 16 bits: with imem_words = 65536 a PC fault reads as pc 0, value 0.
  2. NOP, SETQ, SETR: `ISSUE`; SETQ loads scale/shift/relu at the edge, SETR q (`fscale`) or
     the seed (and sets `reseed`); pc += 1.
  3. WAIT c, v: counter[c] >= v (register value, not counting this cycle's bump): `ISSUE`,
     counter[c] -= v at the edge, pc += 1; else `STALL_WAIT`.
     LOOP, STEP and SHAPE: `ISSUE`, applied by `isa.LoopControl` (SHAPE loads the DMA shape
     register, which a shaped SEND or MCAST then carries in its effective word, bits 64..).
  4. MATMUL (MATRIX), MREAD (READOUT), VEC/FVEC/FCVT (VECTOR), SEND (DMA) on engine U: U not
     idle: `STALL_UNIT`;
     else if `overlaps(hazard_ranges(i), ranges[U'])` for an engine U' != U that is not
     idle: `STALL_HAZARD`; else `ISSUE`: U's `start` is high this cycle with `instr` = the
     word, ranges[U] := hazard_ranges(i) at the edge, pc += 1.
  5. HALT: all engines idle: `ISSUE` (counted as an issued instruction), state ->
     HALTING, pc stays at the HALT; else `STALL_HALT`.
* HALTING: all engines idle: `DONE`: DMA `start` with `instr` = `HALT_WORD`, and the
  DMA command's `status`/`pc`/`info` = fault_code/pc/fault_value (always driven from those
  registers); ranges[DMA] := empty; state -> STOPPED. Else `NONE`.

Other edge effects, every cycle, independent of the decision:

* `reseed` is cleared at the edge of a cycle in which the vector engine's `start` is high: the
  engine takes the pending seed with that instruction (the vector command's `reseed` is the
  register, so the instruction after a SETR SEED sees it high).
* `start_req` in IDLE or STOPPED: state -> RUN, pc -> 0, fault registers -> 0 (counters, SETQ
  registers and imem are kept). Ignored in RUN and HALTING. So instruction 0 can issue in the
  cycle after the `start_req` pulse.
* `bump` with `bump_id` = c: counter[c] += 1. Combined with a WAIT's subtraction of the same
  counter in the same cycle: counter[c] := (counter[c] - v + 1) mod 2**16. Counters wrap at
  2**16 (a bump of 65535 gives 0); they are zero after reset and not cleared by START.
* imem write (addr, word): imem[addr] := word if addr < imem_words, else ignored. A write to
  imem[pc] is seen by the decision of the next cycle.

Strobes (`Decision.event` -> the RTL's one-bit outputs): `issued` = ISSUE, `stall_unit`,
`stall_hazard`, `stall_wait`, `stall_halt` = the stall events; `running` = state RUN or
HALTING. FAULT, DONE and NONE raise none of them.

Timing: with all engines idle and no stalls, one instruction issues per cycle; a program of k
instructions followed by HALT, started by a `start_req` in cycle t, issues instruction i in
cycle t + 1 + i, the HALT in t + 1 + k, and starts DONE in t + 2 + k (`unstalled_done_cycle`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

from d1tile.contracts import ENGINES, HALT_WORD, SeqEvent, SeqState
from d1tile.isa import (INSTR_BITS, SYNC_COUNTER_BITS, SYNC_COUNTERS, UNIT_OF, FaultCode,
                        LoopControl, Opcode, SHAPED_OPS, Ranges, SetrReg, Unit, decode, hazard_ranges,
                        overlaps, validate)
from d1tile.params import TileConfig


__all__ = [
    "ENGINES", "SeqState", "SeqEvent", "Decision", "HALT_WORD", "STROBES", "STROBE_OF",
    "SequencerModel",
    "unstalled_done_cycle",
]

_ENGINE_INDEX = {unit: k for k, unit in enumerate(ENGINES)}
_VECTOR = _ENGINE_INDEX[Unit.VECTOR]

_EMPTY = Ranges()


STROBES = ("issued", "stall_unit", "stall_hazard", "stall_wait", "stall_halt")
"""The RTL's event strobes; `STROBE_OF[event]` names the one an event raises (or None)."""

STROBE_OF = {
    SeqEvent.ISSUE: "issued", SeqEvent.STALL_UNIT: "stall_unit",
    SeqEvent.STALL_HAZARD: "stall_hazard", SeqEvent.STALL_WAIT: "stall_wait",
    SeqEvent.STALL_HALT: "stall_halt",
}


class Decision(NamedTuple):
    """One cycle's decision. `engine` is the index in `ENGINES` whose `start` is high this
    cycle (-1: none) and `instr` the word it carries (0 when no start)."""
    event: SeqEvent
    engine: int = -1
    instr: int = 0


_NONE = Decision(SeqEvent.NONE)
_FAULT = Decision(SeqEvent.FAULT)
_ISSUE = Decision(SeqEvent.ISSUE)
_DONE = Decision(SeqEvent.DONE, _ENGINE_INDEX[Unit.DMA], HALT_WORD)
_STALLS = {event: Decision(event) for event in (SeqEvent.STALL_UNIT, SeqEvent.STALL_HAZARD,
                                                SeqEvent.STALL_WAIT, SeqEvent.STALL_HALT)}

# What the model keeps per imem word, computed once per write: (kind, *details, instr).
_K_FAULT, _K_SEQ, _K_SETQ, _K_WAIT, _K_UNIT, _K_HALT, _K_SETR, _K_LOOP = range(8)
_PAST_END = (_K_FAULT, FaultCode.PC)   # pc == imem_words: the value is the pc

_FIELD_MASK = 0xFFFF   # fault_pc and fault_value are 16-bit registers (and DONE fields)


def unstalled_done_cycle(start_cycle: int, instructions: int) -> int:
    """The cycle DONE starts for `instructions` instructions followed by HALT when nothing
    stalls, the `start_req` pulse being in `start_cycle` (see the module docstring)."""
    return start_cycle + 2 + instructions


@lru_cache(maxsize=8192)
def _info_of(cfg: TileConfig, word: int) -> tuple:
    """What the model keeps of an imem word (see `_K_FAULT` ..). It depends on the word and
    the configuration alone, so the nodes of a tile, which often run the same instructions,
    share one decoding and validation of each (the tuples are never modified)."""
    instr = decode(word)
    code, value = validate(cfg, instr)
    op = instr.op
    if code != FaultCode.NONE:
        return (_K_FAULT, code, value, instr)
    if op == Opcode.NOP:
        return (_K_SEQ, instr)
    if op == Opcode.SETQ:
        return (_K_SETQ, instr.scale, instr.shift, instr.relu, instr)
    if op == Opcode.SETR:
        return (_K_SETR, instr.reg, instr.value, instr)
    if op == Opcode.WAIT:
        return (_K_WAIT, instr.counter, instr.value, instr)
    if op == Opcode.HALT:
        return (_K_HALT, instr)
    if op in (Opcode.LOOP, Opcode.STEP, Opcode.SHAPE):
        return (_K_LOOP, instr)
    engine = _ENGINE_INDEX[UNIT_OF[op]]
    return (_K_UNIT, engine, hazard_ranges(instr),
            Decision(SeqEvent.ISSUE, engine, instr.raw), instr)


class SequencerModel:
    """The sequencer's registers and per-cycle rules (module docstring).

    Two-phase use, per cycle:

    1. `decide(units_idle)` -> `Decision`: the outputs of this cycle (which engine's `start` is
       high and its `instr`, and the event strobe), from the state and the engines' idle flags
       (`units_idle`: one bool per engine, in `ENGINES` order). The other outputs are properties of
       the state: `state`, `running`, `pc`, `fault_code`, `fault_pc`, `fault_value`, `counters`,
       `scale`, `shift`, `relu`, `fscale`, `seed`, `reseed` (the vector command's SETQ and SETR
       fields), and for the DMA command `status` (= fault_code), `pc`, `info` (= fault_value).
    2. `tick(units_idle, bump=False, bump_id=0, start_req=False, imem_write=None)`: the clock
       edge. `imem_write` is None or `(addr, word)`; an address >= imem_words is ignored.
       Returns the cycle's `Decision`.

    `load_imem(words, base=0)` writes the instruction memory directly (between cycles), as a
    series of imem writes would.
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        self.imem = [0] * cfg.imem_words
        self._info: list = [None] * cfg.imem_words   # decoded imem[addr], computed lazily
        self.state = SeqState.IDLE
        self.pc = 0
        self.fault_code = FaultCode.NONE
        self.fault_pc = 0
        self.fault_value = 0
        self.scale = self.shift = self.relu = 0
        self.fscale = self.seed = 0
        self.reseed = False
        self.counters = [0] * SYNC_COUNTERS
        self.ranges = [_EMPTY] * len(ENGINES)
        self.loops = LoopControl(cfg)        # the loop stack and the pending STEP offsets
        self._stepped: dict = {}             # stepped word -> its info (as _info)
        self._memo_idle = None
        self._memo = _NONE

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    @property
    def running(self) -> bool:
        return self.state == SeqState.RUN or self.state == SeqState.HALTING

    # The DMA command's DONE fields, as the RTL drives them (always, valid with start).
    @property
    def status(self) -> int:
        return self.fault_code

    @property
    def info(self) -> int:
        return self.fault_value

    # -- instruction memory ----------------------------------------------------------------

    def load_imem(self, words: Sequence[int], base: int = 0) -> None:
        """Write `words` to imem[base...]; addresses beyond the imem raise ValueError (unlike
        the imem port, which ignores them: a direct load that does not fit is a caller bug)."""
        words = list(words)
        if base < 0 or base + len(words) > self._cfg.imem_words:
            raise ValueError(f"{len(words)} words at {base} do not fit the "
                             f"{self._cfg.imem_words}-word imem")
        for k, word in enumerate(words):
            self._write(base + k, word)
        self._memo_idle = None

    def _write(self, addr: int, word: int) -> None:
        word = int(word)
        if word < 0 or word >> INSTR_BITS:
            raise ValueError(f"imem word {word:#x} is wider than {INSTR_BITS} bits")
        self.imem[addr] = word
        self._info[addr] = None

    def _decoded(self, addr: int) -> tuple:
        """What the instruction at `addr` stands for now: its word stepped by the pending STEP
        offsets (`LoopControl.effective`), validated and decoded; the loop faults (which depend
        on the loop stack) are checked by `_loop_fault`."""
        loops = self.loops
        if any(loops.offsets) or (loops.shape and self.imem[addr] & 0xF in SHAPED_OPS):
            word = loops.effective(self.imem[addr])
            info = self._stepped.get(word)
            if info is None:
                info = self._stepped[word] = self._info_of(word)
            return info
        info = self._info[addr]
        if info is None:
            info = self._info[addr] = self._info_of(self.imem[addr])
        return info

    def _info_of(self, word: int) -> tuple:
        return _info_of(self._cfg, word)

    def _loop_fault(self, info) -> tuple[FaultCode, int]:
        return self.loops.fault(info[-1], self.pc)

    # -- outputs of the cycle --------------------------------------------------------------

    def decide(self, units_idle: Sequence[bool]) -> Decision:
        """This cycle's decision (module docstring) for the engines' idle flags."""
        if units_idle == self._memo_idle:
            return self._memo       # the state has not changed since (tick clears the memo)
        idle = tuple(bool(x) for x in units_idle)
        if idle == self._memo_idle:
            return self._memo
        if len(idle) != len(ENGINES):
            raise ValueError(f"units_idle must have {len(ENGINES)} flags (ENGINES order), "
                             f"not {len(idle)}")
        state = self.state
        if state == SeqState.RUN:
            if self.pc == self._cfg.imem_words:
                info = _PAST_END
            else:
                info = self._decoded(self.pc)
            kind = info[0]
            if kind == _K_FAULT:
                decision = _FAULT
            elif kind == _K_SEQ or kind == _K_SETQ or kind == _K_SETR:
                decision = _ISSUE
            elif kind == _K_LOOP:
                decision = _FAULT if self._loop_fault(info)[0] else _ISSUE
            elif kind == _K_WAIT:
                decision = (_ISSUE if self.counters[info[1]] >= info[2]
                            else _STALLS[SeqEvent.STALL_WAIT])
            elif kind == _K_UNIT:
                engine, ranges = info[1], info[2]
                if not idle[engine]:
                    decision = _STALLS[SeqEvent.STALL_UNIT]
                elif any(not idle[e] and e != engine and overlaps(ranges, self.ranges[e])
                         for e in range(len(ENGINES))):
                    decision = _STALLS[SeqEvent.STALL_HAZARD]
                else:
                    decision = info[3]
            else:   # HALT
                decision = _ISSUE if all(idle) else _STALLS[SeqEvent.STALL_HALT]
        elif state == SeqState.HALTING:
            decision = _DONE if all(idle) else _NONE
        else:
            decision = _NONE
        self._memo_idle, self._memo = idle, decision
        return decision

    def starts(self, units_idle: Sequence[bool]) -> list[int | None]:
        """Per engine (`ENGINES` order): the instruction word its `start` carries this cycle, or
        None when its `start` is low."""
        decision = self.decide(units_idle)
        out = [None] * len(ENGINES)
        if decision.engine >= 0:
            out[decision.engine] = decision.instr
        return out

    # -- the clock edge --------------------------------------------------------------------

    def tick(self, units_idle: Sequence[bool], bump: bool = False, bump_id: int = 0,
             start_req: bool = False, imem_write: tuple[int, int] | None = None) -> Decision:
        """Advance one cycle with this cycle's inputs (class docstring); returns the decision
        taken in it."""
        decision = self.decide(units_idle)
        event = decision.event
        state = self.state          # the register before this edge (START looks at it)
        counters = self.counters
        mask = (1 << SYNC_COUNTER_BITS) - 1
        if event == SeqEvent.ISSUE:
            info = self._decoded(self.pc)
            kind = info[0]
            if kind == _K_HALT:
                self.state = SeqState.HALTING
            else:
                if kind == _K_SETQ:
                    self.scale, self.shift, self.relu = info[1], info[2], info[3]
                elif kind == _K_SETR:
                    if info[1] == SetrReg.SCALE:
                        self.fscale = info[2]
                    else:
                        self.seed, self.reseed = info[2], True
                elif kind == _K_WAIT:
                    counters[info[1]] = (counters[info[1]] - info[2]) & mask
                elif kind == _K_UNIT:
                    self.ranges[info[1]] = info[2]
                    if info[1] == _VECTOR:
                        self.reseed = False
                self.pc = self.loops.issue(info[-1], self.pc)
        elif event == SeqEvent.FAULT:
            if self.pc == self._cfg.imem_words:
                self.fault_code, self.fault_value = FaultCode.PC, self.pc & _FIELD_MASK
            else:
                info = self._decoded(self.pc)
                if info[0] == _K_FAULT:
                    self.fault_code, self.fault_value = info[1], info[2]
                else:
                    self.fault_code, self.fault_value = self._loop_fault(info)
            self.fault_pc = self.pc & _FIELD_MASK
            self.state = SeqState.HALTING
        elif event == SeqEvent.DONE:
            self.ranges[decision.engine] = _EMPTY
            self.state = SeqState.STOPPED
        if bump:
            if not 0 <= bump_id < SYNC_COUNTERS:
                raise ValueError(f"bump_id={bump_id} is not a counter (0..{SYNC_COUNTERS - 1})")
            counters[bump_id] = (counters[bump_id] + 1) & mask
        if start_req and (state == SeqState.IDLE or state == SeqState.STOPPED):
            # The decision of an IDLE/STOPPED cycle is NONE, so nothing above changed the state.
            self.state = SeqState.RUN
            self.pc = 0
            self.fault_code, self.fault_pc, self.fault_value = FaultCode.NONE, 0, 0
            self.loops.reset()
        if imem_write is not None:
            addr, word = imem_write
            if 0 <= addr < self._cfg.imem_words:
                self._write(addr, word)
        self._memo_idle = None
        return decision

    # -- reports ---------------------------------------------------------------------------

    def describe(self, units_idle: Sequence[bool] | None = None) -> str:
        """A one-line account of the state, for hang and failure reports: what the instruction
        at pc waits for."""
        text = f"{self.state.name} pc={self.pc}"
        if self.fault_code != FaultCode.NONE:
            text += (f" fault {self.fault_code.name} at pc {self.fault_pc} "
                     f"value {self.fault_value}")
        if self.state == SeqState.RUN and self.pc == self._cfg.imem_words:
            text += ": past the end of the imem (PC fault)"
        elif self.state == SeqState.RUN:
            instr = decode(self.loops.effective(self.imem[self.pc]))
            text += f": {instr}"
            if self.loops.depth:
                text += " (in loop" + ", ".join(
                    f" {start}..{end} iteration {i + 1}/{count}"
                    for start, end, count, i in reversed(self.loops.loops)) + ")"
            info = self._decoded(self.pc)
            if info[0] == _K_WAIT:
                c, v = info[1], info[2]
                relation = ">=" if self.counters[c] >= v else "<"
                text += f" (counter {c}: {self.counters[c]} {relation} {v})"
            if units_idle is not None:
                busy = [ENGINES[e].name for e, i in enumerate(units_idle) if not i]
                text += f"; busy engines: {', '.join(busy) or 'none'}"
                text += f"; decision {self.decide(units_idle).event.name}"
        return text
