"""The node sequencer: instruction memory, fetch/decode/issue, hazards, WAIT and the sync
counters, HALT and faults.

This module also defines `EngineCommand`, the command bus from the sequencer to the matrix
engine's two halves (`d1tile.hw.mxu`: MATMUL and MREAD), the vector engine (`d1tile.hw.vpu`)
and DMA-out (`d1tile.hw.dma`).

The cycle-exact reference of the sequencer is `d1tile.sim.sequencer.SequencerModel`.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import isa
from ..contracts import ENGINES, HALT_WORD, SeqState
from ..isa import (ACC_BANKS, ACC_RANGE_BASE, ADDR_BITS, ADDRESS_SLOTS, FORMATS, INSTR_BITS,
                   LOOP_DEPTH, SHAPE_BITS, SHAPE_FORMAT, SHAPED_OPS, SYNC_COUNTER_BITS, SYNC_COUNTERS, UNIT_OF, FaultCode, Opcode,
                   SetrReg, Unit)
from ..params import TileConfig
from ..vector_ops import FSCALE_BITS, SCALE_BITS, SEED_BITS, SHIFT_BITS
from .decode import IsaLogic, ShapedView


__all__ = ["EngineCommand", "ImemWritePort", "Sequencer", "SYNC_COUNTERS_LAYOUT"]

IMEM_ADDR_BITS = 16   # imem addresses on the write bus and in the DONE report
SYNC_COUNTERS_LAYOUT = data.ArrayLayout(SYNC_COUNTER_BITS, SYNC_COUNTERS)
"""The WAIT counters as the sequencer exports them (and the node and tile pass them on)."""
FAULT_BITS = 4        # the DONE packet's status field


class EngineCommand(wiring.PureInterface):
    """The command bus from the sequencer to one engine, as seen by the sequencer (initiator)."""

    class Signature(wiring.Signature):
        """Command bus, from the sequencer's side.

        Parameters
        ----------
        quant : bool
            Add the SETQ and SETR registers (the vector engine's bus).
        done : bool
            Add the DONE report fields (DMA-out's bus).

        Members
        -------
        start : Out(1)
            Pulse: the engine is to run `instr`. Only ever high in a cycle where `idle` is high.
            The engine latches the command at the end of the `start` cycle and shows `idle` low
            from the next cycle until it has finished.
        instr : Out(64)
            The raw instruction word (decode with `FORMATS[op].layout`); valid with `start`.
            For DMA-out, a HALT word asks for the DONE packet.
        idle : In(1)
            The engine can accept a command (a registered signal: `start` depends on it
            combinationally).
        scale : Out(16), shift : Out(6), relu : Out(1), fscale : Out(32), seed : Out(32),
        reseed : Out(1)   (only with `quant=True`)
            The SETQ registers and SETR's (q and the generator seed), valid with `start`;
            `reseed` is high with a `start` when a SETR SEED came after the previous start:
            the engine reseeds its generator from `seed` before the instruction runs.
        status : Out(4), pc : Out(16), info : Out(16)   (only with `done=True`)
            For DONE: the `FaultCode` (0 = none), the pc of the HALT or of the faulting
            instruction, and the fault value. Valid with `start`.
        shape : Out(SHAPE_BITS)   (only with `done=True`)
            The DMA shape (`d1tile.isa.SHAPE_FORMAT`) of a shaped SEND or MCAST, zero for any
            other word: `instr | shape << 64` is the effective word (`isa.LoopControl.effective`).
            Valid with `start`.
        """

        def __init__(self, *, quant: bool = False, done: bool = False):
            for name, value in (("quant", quant), ("done", done)):
                if not isinstance(value, bool):
                    raise TypeError(f"{name} must be a bool, not {value!r}")
            self._quant = quant
            self._done = done
            members = {
                "start": Out(1),
                "instr": Out(INSTR_BITS),
                "idle": In(1),
            }
            if quant:
                members.update(scale=Out(SCALE_BITS), shift=Out(SHIFT_BITS), relu=Out(1),
                               fscale=Out(FSCALE_BITS), seed=Out(SEED_BITS), reseed=Out(1))
            if done:
                members.update(status=Out(4), pc=Out(16), info=Out(16), shape=Out(SHAPE_BITS))
            super().__init__(members)

        @property
        def quant(self) -> bool:
            return self._quant

        @property
        def done(self) -> bool:
            return self._done

        def create(self, *, path=None, src_loc_at=0):
            return EngineCommand(self, path=path, src_loc_at=1 + src_loc_at)

        def __eq__(self, other):
            return (type(self) is type(other) and self._quant == other._quant
                    and self._done == other._done)

        def __hash__(self):
            return hash((type(self), self._quant, self._done))

        def __repr__(self):
            return f"EngineCommand.Signature(quant={self._quant}, done={self._done})"


class ImemWritePort(wiring.PureInterface):
    """The instruction-memory write bus, as seen by its driver (DMA-in, for IMEM packets)."""

    class Signature(wiring.Signature):
        """Members: `addr` Out(16), `data` Out(64), `en` Out(1). A write with `en` high takes
        effect at the end of the cycle; addresses >= `cfg.imem_words` are ignored (DMA-in
        checks and counts them). Always accepted (no `ready`)."""

        def __init__(self):
            super().__init__({
                "addr": Out(IMEM_ADDR_BITS),
                "data": Out(INSTR_BITS),
                "en": Out(1),
            })

        def create(self, *, path=None, src_loc_at=0):
            return ImemWritePort(self, path=path, src_loc_at=1 + src_loc_at)

        def __eq__(self, other):
            return type(self) is type(other)

        def __hash__(self):
            return hash(type(self))

        def __repr__(self):
            return "ImemWritePort.Signature()"


# Hazard ranges [lo, hi) of an instruction (`d1tile.isa.Ranges`): SRAM words below 2**16 and
# the accumulator banks' pseudo-addresses from ACC_RANGE_BASE = 2**16 up.
_RANGE_BITS = (ACC_RANGE_BASE + ACC_BANKS).bit_length()
_RANGE = data.StructLayout({"lo": _RANGE_BITS, "hi": _RANGE_BITS})
_RANGES = data.StructLayout({"read0": _RANGE, "read1": _RANGE, "write": _RANGE})




def _meet(p, q):
    """Two half-open ranges share a word (`d1tile.isa._meet`)."""
    return (p.lo < p.hi) & (q.lo < q.hi) & (p.lo < q.hi) & (q.lo < p.hi)


def _overlaps(new, running):
    """`d1tile.isa.overlaps`: new writes what running reads or writes, or reads what it
    writes."""
    return (_meet(new.write, running.read0) | _meet(new.write, running.read1)
            | _meet(new.write, running.write) | _meet(new.read0, running.write)
            | _meet(new.read1, running.write))


class Sequencer(wiring.Component):
    """The node sequencer: instruction memory, fetch/decode/issue with hazard tracking, WAIT on
    the sync counters, HALT and faults.

    The per-cycle rules, and the reference they are checked against, are those of
    `d1tile.sim.sequencer.SequencerModel` (its module docstring is the long form).

    Ports
    -----
    imem_w : In(ImemWritePort.Signature())
        Instruction memory writes (from DMA-in). Addresses >= `cfg.imem_words` are ignored.
    start_req : In(1)
        Pulse (from DMA-in, START packet): in IDLE or STOPPED, go to RUN at pc 0 and clear the
        fault registers; ignored in RUN and HALTING (including the DONE cycle).
    bump : In(1), bump_id : In(range(SYNC_COUNTERS))
        Add 1 to sync counter `bump_id` at the end of the cycle (wrapping at 2**16).
    matrix : Out(EngineCommand.Signature())
        MATMUL to the matrix engine.
    readout : Out(EngineCommand.Signature())
        MREAD to the matrix engine's readout half.
    vector : Out(EngineCommand.Signature(quant=True))
        VEC, FVEC and FCVT to the vector engine; `scale`/`shift`/`relu` are the SETQ registers,
        `fscale`/`seed` SETR's (always driven), `reseed` the pending-seed flag (cleared by the
        vector engine's next start).
    dma : Out(EngineCommand.Signature(done=True))
        SEND to DMA-out, and the DONE command (`instr` = `HALT_WORD`) at the end of a run;
        `status`/`pc`/`info` are always driven from fault_code / pc / fault_value.
    running : Out(1)
        State is RUN or HALTING (feeds the `cycles` counter).
    issued, stall_unit, stall_hazard, stall_wait, stall_halt : Out(1)
        Per-cycle event strobes: an instruction issued (HALT included), or the instruction at
        pc could not issue for the named cause. At most one is high.
    pc : Out(16), state : Out(SeqState), fault_code : Out(4), fault_pc : Out(16),
    fault_value : Out(16), counters : Out(ArrayLayout(16, 16))
        Debug and hang-report state (registers).

    Timing
    ------
    Every output is a function of registers, except the engines' `start`/`instr` and the
    strobes, which also depend combinationally on `imem[pc]` (a combinational memory read) and
    on the engines' `idle` inputs (engine registers). One instruction per cycle when nothing
    stalls; `start_req` in cycle t lets instruction 0 issue in cycle t + 1.

    Bad input: an invalid instruction (`d1tile.isa.validate`) faults the node (state
    HALTING, then DONE with the fault code, pc and value) in the first cycle it is at pc; so
    does running past the last imem word (fault PC, value = pc = imem_words; with
    imem_words = 65536 the 16-bit pc, fault_pc and value read 0).
    """

    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "imem_w": In(ImemWritePort.Signature()),
            "start_req": In(1),
            "bump": In(1),
            "bump_id": In(range(SYNC_COUNTERS)),
            "matrix": Out(EngineCommand.Signature()),
            "readout": Out(EngineCommand.Signature()),
            "vector": Out(EngineCommand.Signature(quant=True)),
            "dma": Out(EngineCommand.Signature(done=True)),
            "running": Out(1),
            "issued": Out(1),
            "stall_unit": Out(1),
            "stall_hazard": Out(1),
            "stall_wait": Out(1),
            "stall_halt": Out(1),
            "pc": Out(IMEM_ADDR_BITS),
            "state": Out(SeqState),
            "fault_code": Out(FAULT_BITS),
            "fault_pc": Out(IMEM_ADDR_BITS),
            "fault_value": Out(16),
            "counters": Out(SYNC_COUNTERS_LAYOUT),
        })

    @property
    def cfg(self) -> TileConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        words = cfg.sram_words
        pc_bits = (cfg.imem_words - 1).bit_length()

        # -- registers -----------------------------------------------------------------------
        state = Signal(SeqState)
        # One bit more than an imem address: pc == imem_words is the PC fault (ran off the end).
        pc = Signal(range(cfg.imem_words + 1))
        fault_code = Signal(FAULT_BITS)
        fault_pc = Signal(IMEM_ADDR_BITS)
        fault_value = Signal(16)
        scale = Signal(SCALE_BITS)
        shift = Signal(SHIFT_BITS)
        relu = Signal(1)
        fscale = Signal(FSCALE_BITS)        # SETR q
        seed = Signal(SEED_BITS)            # SETR seed
        reseed = Signal()                   # a SETR seed since the vector engine's last start
        counters = Signal(SYNC_COUNTERS_LAYOUT)
        # The loop stack (`isa.LoopControl`): `depth` loops open, level l's body is
        # imem[l_start[l]..l_end[l]], run l_count[l] times, now in iteration l_iter[l]; and the
        # pending STEP offsets of the next instruction's address fields.
        depth = Signal(range(LOOP_DEPTH + 1))
        l_start = [Signal(range(cfg.imem_words + 1), name=f"loop_start_{l}")
                   for l in range(LOOP_DEPTH)]
        l_end = [Signal(range(cfg.imem_words), name=f"loop_end_{l}") for l in range(LOOP_DEPTH)]
        l_count = [Signal(16, name=f"loop_count_{l}") for l in range(LOOP_DEPTH)]
        l_iter = [Signal(16, name=f"loop_iter_{l}") for l in range(LOOP_DEPTH)]
        offsets = [Signal(ADDR_BITS, name=f"step_offset_{k}") for k in range(3)]
        shape = Signal(SHAPE_BITS)          # the DMA shape register (SHAPE)
        # ranges[e]: what engine e's current instruction reads and writes, recorded at its start.
        ranges = [Signal(_RANGES, name=f"ranges_{unit.name.lower()}") for unit in ENGINES]

        # -- instruction memory: written by DMA-in, read combinationally at pc ---------------
        # The read port is asynchronous (comb), so transparency does not apply: a write at the
        # end of cycle t is seen by the read from cycle t + 1.
        m.submodules.imem = imem = Memory(shape=INSTR_BITS, depth=cfg.imem_words, init=[])
        fetch = imem.read_port(domain="comb")
        store = imem.write_port()
        m.d.comb += [
            fetch.addr.eq(pc[:pc_bits]),
            store.addr.eq(self.imem_w.addr[:pc_bits]),
            store.data.eq(self.imem_w.data),
            store.en.eq(self.imem_w.en & (self.imem_w.addr[pc_bits:] == 0)),
        ]

        # -- the word at pc, stepped by the pending STEP offsets (`isa.stepped`) ---------------
        raw = fetch.data
        word = Signal(INSTR_BITS)
        m.d.comb += word.eq(raw)
        with m.Switch(raw[:4]):
            for code, slots in ADDRESS_SLOTS.items():
                with m.Case(code):
                    for name, offset in zip(slots, offsets):
                        lsb = FORMATS[code].offsets[name]
                        m.d.comb += word[lsb:lsb + ADDR_BITS].eq(
                            raw[lsb:lsb + ADDR_BITS] + offset)

        # -- decode: one view of the word per format ------------------------------------------
        op = word[:4]
        f = {code: FORMATS[code].layout(word[:FORMATS[code].width]) for code in Opcode}
        # A shaped SEND or MCAST is checked and ranged with the shape register's fields.
        eff_shape = Signal(SHAPE_BITS)
        for code in SHAPED_OPS:
            with m.If((op == code) & f[code].shaped):
                m.d.comb += eff_shape.eq(shape)
        shape_view = SHAPE_FORMAT.layout(eff_shape)
        for code in SHAPED_OPS:
            f[code] = ShapedView(f[code], shape_view)

        # The innermost open loop, and the iteration of the loop a STEP names.
        top = Signal(range(LOOP_DEPTH))
        m.d.comb += top.eq(depth - 1)
        top_start, top_end = Array(l_start)[top], Array(l_end)[top]
        top_count, top_iter = Array(l_count)[top], Array(l_iter)[top]
        step = f[Opcode.STEP]
        step_iter = Array(l_iter)[(depth - 1 - step.level)[:len(top)]]
        loop = f[Opcode.LOOP]
        loop_end = pc + loop.body
        # The loop faults, after `isa.checks` (`isa.LoopControl.fault`).
        loop_faults = {
            Opcode.LOOP: [(depth == LOOP_DEPTH, FaultCode.LOOP, LOOP_DEPTH),
                          ((loop_end >= cfg.imem_words) | ((depth != 0) & (loop_end >= top_end)),
                           FaultCode.LOOP, loop.body)],
            Opcode.STEP: [(step.level >= depth, FaultCode.LOOP, step.level)],
        }

        # Validity and hazard ranges of the word at pc: the ISA's own rules (`isa.checks`,
        # `isa.ranges_of`, in their order), built into logic by the HDL backend.
        fault = Signal(FAULT_BITS)
        value = Signal(16)
        new = Signal(_RANGES)
        engine_of = Signal(range(len(ENGINES) + 1))   # index in ENGINES; len(ENGINES) = none

        hdl = IsaLogic(m)
        m.d.comb += engine_of.eq(len(ENGINES))
        with m.Switch(op):
            for code in Opcode:
                with m.Case(code):
                    x = f[code]
                    if UNIT_OF[code] in ENGINES:
                        m.d.comb += engine_of.eq(ENGINES.index(UNIT_OF[code]))
                        for rng, (lo, hi) in zip((new.read0, new.read1, new.write),
                                                 isa.ranges_of(code, x, hdl)):
                            m.d.comb += [rng.lo.eq(lo), rng.hi.eq(hi)]
                    rules = isa.checks(code, cfg, x, hdl) + loop_faults.get(code, [])
                    for k, (failed, raised, offending) in enumerate(rules):
                        with (m.If(failed) if k == 0 else m.Elif(failed)):
                            m.d.comb += [fault.eq(raised), value.eq(offending)]
            with m.Default():
                m.d.comb += [fault.eq(FaultCode.UNDEFINED), value.eq(op)]
        # Past the end of the imem (the word read is imem[0], and is ignored).
        with m.If(pc == cfg.imem_words):
            m.d.comb += [fault.eq(FaultCode.PC), value.eq(pc)]

        # -- the cycle's decision --------------------------------------------------------------
        idle = [getattr(self, unit.name.lower()).idle for unit in ENGINES]
        all_idle = Cat(*idle).all()
        # An engine that is busy with ranges meeting the new instruction's. The issuing engine
        # itself is idle whenever this matters (else the stall is STALL_UNIT).
        hazard = Cat(*(~idle[e] & _overlaps(new, ranges[e]) for e in range(len(ENGINES)))).any()
        unit_idle = Array(idle + [Const(1)])[engine_of]
        wait = f[Opcode.WAIT]
        wait_ready = counters[wait.counter] >= wait.value

        issue = Signal()            # the instruction at pc issues (pc += 1 unless HALT)
        start = Signal(len(ENGINES))
        fault_now = Signal()
        done = Signal()             # HALTING -> STOPPED, DONE command to DMA-out
        with m.Switch(state):
            with m.Case(SeqState.RUN):
                with m.If(fault != FaultCode.NONE):
                    m.d.comb += fault_now.eq(1)
                with m.Else():
                    with m.Switch(op):
                        with m.Case(Opcode.NOP, Opcode.SETQ, Opcode.SETR, Opcode.LOOP,
                                    Opcode.STEP, Opcode.SHAPE):
                            m.d.comb += issue.eq(1)
                        with m.Case(Opcode.WAIT):
                            m.d.comb += [issue.eq(wait_ready), self.stall_wait.eq(~wait_ready)]
                        with m.Case(Opcode.HALT):
                            m.d.comb += [issue.eq(all_idle), self.stall_halt.eq(~all_idle)]
                        with m.Default():   # MATMUL, MREAD, the vector family, SEND
                            with m.If(~unit_idle):
                                m.d.comb += self.stall_unit.eq(1)
                            with m.Elif(hazard):
                                m.d.comb += self.stall_hazard.eq(1)
                            with m.Else():
                                m.d.comb += [issue.eq(1), start.bit_select(engine_of, 1).eq(1)]
            with m.Case(SeqState.HALTING):
                m.d.comb += done.eq(all_idle)

        # -- outputs -----------------------------------------------------------------------------
        start_of = {unit: start[k] for k, unit in enumerate(ENGINES)}
        m.d.comb += [
            self.matrix.start.eq(start_of[Unit.MATRIX]),
            self.matrix.instr.eq(word),
            self.readout.start.eq(start_of[Unit.READOUT]),
            self.readout.instr.eq(word),
            self.vector.start.eq(start_of[Unit.VECTOR]),
            self.vector.instr.eq(word),
            self.vector.scale.eq(scale),
            self.vector.shift.eq(shift),
            self.vector.relu.eq(relu),
            self.vector.fscale.eq(fscale),
            self.vector.seed.eq(seed),
            self.vector.reseed.eq(reseed),
            self.dma.start.eq(start_of[Unit.DMA] | done),
            self.dma.instr.eq(Mux(done, HALT_WORD, word)),
            self.dma.status.eq(fault_code),
            self.dma.pc.eq(pc),
            self.dma.info.eq(fault_value),
            self.dma.shape.eq(Mux(done, 0, eff_shape)),
            self.running.eq((state == SeqState.RUN) | (state == SeqState.HALTING)),
            self.issued.eq(issue),
            self.pc.eq(pc),
            self.state.eq(state),
            self.fault_code.eq(fault_code),
            self.fault_pc.eq(fault_pc),
            self.fault_value.eq(fault_value),
            self.counters.eq(counters),
        ]

        # -- the clock edge ----------------------------------------------------------------------
        with m.If(issue):
            with m.If(op == Opcode.HALT):
                m.d.sync += state.eq(SeqState.HALTING)
            with m.Else():
                # The next pc (`isa.LoopControl.issue`): a LOOP opens its loop (or skips a
                # count-0 body); the last instruction of the innermost body goes back to its
                # start or closes the loop; else pc + 1 (at most imem_words: that faults next
                # cycle). A LOOP is never at the end of the innermost body (it faults there).
                m.d.sync += pc.eq(pc + 1)
                with m.If(op == Opcode.STEP):
                    strides = (step.s0, step.s1, step.s2)
                    m.d.sync += [o.eq(o + s * step_iter) for o, s in zip(offsets, strides)]
                with m.Else():
                    m.d.sync += [o.eq(0) for o in offsets]
                with m.If(op == Opcode.LOOP):
                    with m.If(loop.count == 0):
                        m.d.sync += pc.eq(pc + 1 + loop.body)
                    with m.Else():
                        m.d.sync += depth.eq(depth + 1)
                        for l in range(LOOP_DEPTH):
                            with m.If(depth == l):
                                m.d.sync += [l_start[l].eq(pc + 1), l_end[l].eq(loop_end),
                                             l_count[l].eq(loop.count), l_iter[l].eq(0)]
                with m.Elif((depth != 0) & (pc == top_end)):
                    with m.If(top_iter + 1 < top_count):
                        m.d.sync += pc.eq(top_start)
                        for l in range(LOOP_DEPTH):
                            with m.If(top == l):
                                m.d.sync += l_iter[l].eq(l_iter[l] + 1)
                    with m.Else():
                        m.d.sync += depth.eq(depth - 1)
            with m.If(op == Opcode.SHAPE):
                m.d.sync += shape.eq(word[4:4 + SHAPE_BITS])
            with m.If(op == Opcode.SETQ):
                x = f[Opcode.SETQ]
                m.d.sync += [scale.eq(x.scale), shift.eq(x.shift), relu.eq(x.relu)]
            with m.If(op == Opcode.SETR):
                x = f[Opcode.SETR]
                with m.If(x.reg == SetrReg.SCALE):
                    m.d.sync += fscale.eq(x.value)
                with m.Else():      # SEED (other regs fault before they issue)
                    m.d.sync += [seed.eq(x.value), reseed.eq(1)]
        # The vector engine takes the pending seed with its next start (a SETR issues alone
        # in its cycle, so the two never meet).
        with m.If(start[ENGINES.index(UNIT_OF[Opcode.VEC])]):
            m.d.sync += reseed.eq(0)
        for e in range(len(ENGINES)):
            with m.If(start[e]):
                m.d.sync += ranges[e].eq(new)
        with m.If(fault_now):
            m.d.sync += [state.eq(SeqState.HALTING), fault_code.eq(fault),
                         fault_pc.eq(pc), fault_value.eq(value)]
        with m.If(done):
            m.d.sync += [state.eq(SeqState.STOPPED), ranges[ENGINES.index(Unit.DMA)].eq(0)]
        with m.If(self.start_req & ((state == SeqState.IDLE) | (state == SeqState.STOPPED))):
            m.d.sync += [state.eq(SeqState.RUN), pc.eq(0), fault_code.eq(0), fault_pc.eq(0),
                         fault_value.eq(0), depth.eq(0), shape.eq(0),
                         *(o.eq(0) for o in offsets)]

        # Sync counters: this cycle's bump and a WAIT's subtraction combine (mod 2**16).
        wait_issue = issue & (op == Opcode.WAIT)
        for c in range(SYNC_COUNTERS):
            plus = self.bump & (self.bump_id == c)
            minus = Mux(wait_issue & (wait.counter == c), wait.value, 0)
            m.d.sync += counters[c].eq(counters[c] + plus - minus)

        return m
