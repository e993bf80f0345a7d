"""cocotb bench of the `Sequencer` (Verilog top `sequencer`), in lockstep with `SequencerModel`.

The four engines (MATRIX, VECTOR, DMA, READOUT) are stubs in the bench (`EngineStub`): an engine
started in cycle t is busy (its `idle` input low) from cycle t + 1 for a number of cycles the test
chooses (a random policy or a fixed one), and DMA-out may also turn busy on its own (as it does for
READ replies that the sequencer did not start). The bench drives every input right after the rising
edge (engines' `idle`, `start_req`, `bump`/`bump_id`, `imem_w`), and in `ReadOnly` compares every
output with the model's for the same cycle: each engine's `start` and, with it, `instr` (and
`scale`/`shift`/`relu`/`fscale`/`seed`/`reseed`, `status`/`pc`/`info`), the strobes `running`,
`issued`, `stall_*`, and the registers `pc`, `state`, `fault_code`, `fault_pc`, `fault_value` and
all 32 `counters`. Then it steps the model and the stubs with the same inputs. The first difference
fails the test with the cycle, the signal, the expected and the observed value and the model's
state.

Independently of the model, a scoreboard checks what every run must satisfy: a `start` only
reaches an idle engine; a new instruction never overlaps (`isa.overlaps`) the instruction a busy
engine is running; the engines receive the program's MATMUL/MREAD/VEC/SEND words in program
order, then one DONE; WAITs only complete against counters that cover them, and the final
counters equal bumps minus WAIT values. Directed tests check documented cycle timings.

The DUT's imem keeps its contents from one cocotb test to the next, and so does the model's
copy (`_SHARED`); after a failed test the next one rewrites the whole imem with zeros.

Environment: `D1TILE_CONFIG` (bench_config.py).
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.dtypes import MATRIX_TYPES, ElemType
from d1tile.hw.testbench import TB
from d1tile.isa import (CONVERSIONS, COORD_BITS, FVEC_BASE, INSTR_BITS, LOOP_DEPTH, SEND_MAX_WORDS,
                        SEND_X_BITS, SYNC_COUNTERS, UNIT_OF, FaultCode,
                        FVecOp, LoopControl, Opcode, SetrReg, Unit, VecOp, decode, encode,
                        hazard_ranges, overlaps, validate)
from d1tile.vector_ops import VECTOR_OPS
from d1tile.sim.sequencer import (ENGINES, HALT_WORD, STROBE_OF, STROBES, SeqEvent, SeqState,
                                  SequencerModel, unstalled_done_cycle)


_SHARED = {"imem": None, "clean": False}
NAMES = [unit.name.lower() for unit in ENGINES]
MATRIX, VECTOR, DMA, READOUT = (ENGINES.index(u) for u in
                                 (Unit.MATRIX, Unit.VECTOR, Unit.DMA, Unit.READOUT))
NOP = encode(Opcode.NOP)
HALT = HALT_WORD


class LockstepError(AssertionError):
    """The DUT and the model (or the scoreboard's rules) disagree."""


class EngineStub:
    """An engine's `idle` as the sequencer sees it: busy for `length` cycles after a start."""

    def __init__(self):
        self.left = 0          # busy cycles still to come
        self.instr = None      # word it runs (None: busy on its own, or nothing)

    @property
    def idle(self) -> bool:
        return self.left == 0

    def start(self, instr: int, length: int):
        assert length >= 1
        self.left, self.instr = length, instr

    def tick(self):
        if self.left:
            self.left -= 1


class SeqBench:
    """TB + stubs + model + lockstep; `step()` runs one cycle."""

    def __init__(self, tb: TB):
        self.tb = tb
        self.dut = dut = tb.dut
        self.cfg = cfg = bench_config()
        self.rng = tb.rng
        self.model = SequencerModel(cfg)
        self.stubs = [EngineStub() for _ in ENGINES]
        # busy(engine, instr) -> cycles the stub stays busy after a start (>= 1).
        self.busy = lambda engine, instr: self.rng.randint(1, 6)
        self.dma_self_busy = 0.0    # chance per idle cycle that DMA-out turns busy by itself
        self.bump_prob = 0.0        # chance per cycle of a random bump ...
        self.bump_ids = range(4)    # ... of one of these counters
        self.start_h = [getattr(dut, f"{n}__start") for n in NAMES]
        self.instr_h = [getattr(dut, f"{n}__instr") for n in NAMES]
        self.idle_h = [getattr(dut, f"{n}__idle") for n in NAMES]
        self.strobe_h = {name: getattr(dut, name) for name in STROBES}
        self.reg_h = {name: getattr(dut, name) for name in
                      ("pc", "state", "fault_code", "fault_pc", "fault_value", "running")}
        self.counters_h = dut.counters
        for h in self.idle_h:
            h.value = 1
        for name in ("start_req", "bump", "bump_id", "imem_w__en", "imem_w__addr",
                     "imem_w__data"):
            getattr(dut, name).value = 0
        # Scoreboard.
        self.trace: list[tuple[int, int, int]] = []   # (cycle, engine, instr) of every start
        self.events: list[tuple[int, SeqEvent]] = []  # (cycle, event) of every cycle
        self.bumps = [0] * SYNC_COUNTERS
        self.waited = [0] * SYNC_COUNTERS
        self.cycles = 0

    @classmethod
    async def create(cls, dut) -> "SeqBench":
        tb = TB(dut)
        await tb.start()
        bench = cls(tb)
        if _SHARED["imem"] is not None and _SHARED["clean"]:
            bench.model.load_imem(_SHARED["imem"])
        elif _SHARED["imem"] is not None:
            tb.log.info("previous test failed: clearing the imem to resynchronise")
            for addr in range(bench.cfg.imem_words):
                await bench.step(imem_write=(addr, 0))
        _SHARED["imem"] = bench.model.imem
        _SHARED["clean"] = False
        return bench

    def finish(self):
        _SHARED["clean"] = True

    # -- one cycle ---------------------------------------------------------------------------

    def fail(self, cycle, what, expected, got, idle=None):
        raise LockstepError(
            f"cycle {cycle}: {what}: expected {expected}, DUT has {got} (seed {self.tb.seed}); "
            f"model: {self.model.describe(idle)}")

    async def step(self, start_req=False, imem_write=None, bump=None):
        """One cycle: drive the inputs, check every output, step model, stubs and scoreboard.
        `bump` is a counter id (or None: a random bump per `bump_prob`). Returns the model's
        decision."""
        dut, model, rng = self.dut, self.model, self.rng
        await RisingEdge(dut.clk)
        if bump is None and self.bump_prob and rng.random() < self.bump_prob:
            bump = rng.choice(self.bump_ids)
        idle = [stub.idle for stub in self.stubs]
        for h, i in zip(self.idle_h, idle):
            h.value = int(i)
        dut.start_req.value = int(start_req)
        dut.bump.value = int(bump is not None)
        dut.bump_id.value = rng.randrange(SYNC_COUNTERS) if bump is None else bump
        dut.imem_w__en.value = int(imem_write is not None)
        if imem_write is None:   # idle bus: random address and data, to show they are ignored
            dut.imem_w__addr.value = rng.randrange(1 << 16)
            dut.imem_w__data.value = rng.getrandbits(64)
        else:
            dut.imem_w__addr.value, dut.imem_w__data.value = imem_write
        await ReadOnly()
        cycle = self.tb.cycle
        decision = model.decide(idle)
        self._check(cycle, idle, decision)
        # Scoreboard (the bench's own rules, not the model's).
        if decision.engine >= 0:
            self._scoreboard_start(cycle, idle, decision.engine, decision.instr)
        if decision.event == SeqEvent.ISSUE and model.state == SeqState.RUN:
            instr = decode(model.imem[model.pc])
            if instr.op == Opcode.WAIT:
                c = instr.counter
                if model.counters[c] < instr.value:
                    self.fail(cycle, f"WAIT {c}, {instr.value} issued", f">= {instr.value}",
                              model.counters[c])
                self.waited[c] += instr.value
        self.events.append((cycle, decision.event))
        model.tick(idle, bump is not None, 0 if bump is None else bump, start_req, imem_write)
        if bump is not None:
            self.bumps[bump] += 1
        for e, stub in enumerate(self.stubs):
            stub.tick()
            if decision.engine == e:
                stub.start(decision.instr, self.busy(e, decision.instr))
            elif e == DMA and stub.idle and self.dma_self_busy and \
                    rng.random() < self.dma_self_busy:
                stub.start(None, rng.randint(1, 4))
        self.cycles += 1
        return decision

    def _check(self, cycle, idle, decision):
        model = self.model
        for e, name in enumerate(NAMES):
            got = int(self.start_h[e].value)
            expected = int(decision.engine == e)
            if got != expected:
                self.fail(cycle, f"{name}.start", expected, got, idle)
            if expected:
                got = int(self.instr_h[e].value)
                if e == DMA:    # the effective word: a shaped transfer's shape above bit 64
                    got |= int(self.dut.dma__shape.value) << INSTR_BITS
                if got != decision.instr:
                    self.fail(cycle, f"{name}.instr", f"{decision.instr:#x}", f"{got:#x}", idle)
        if decision.engine == VECTOR:
            for field in ("scale", "shift", "relu", "fscale", "seed", "reseed"):
                got = int(getattr(self.dut, f"vector__{field}").value)
                if got != int(getattr(model, field)):
                    self.fail(cycle, f"vector.{field}", int(getattr(model, field)), got, idle)
        if decision.engine == DMA:
            for field, expected in (("status", model.status), ("pc", model.pc & 0xFFFF),
                                    ("info", model.info)):
                got = int(getattr(self.dut, f"dma__{field}").value)
                if got != expected:
                    self.fail(cycle, f"dma.{field}", expected, got, idle)
        strobe = STROBE_OF.get(decision.event)
        for name, h in self.strobe_h.items():
            got = int(h.value)
            if got != int(name == strobe):
                self.fail(cycle, name, int(name == strobe), got, idle)
        for name, expected in (("pc", model.pc & 0xFFFF), ("state", model.state),
                               ("fault_code", model.fault_code), ("fault_pc", model.fault_pc),
                               ("fault_value", model.fault_value),
                               ("running", int(model.running))):
            got = int(self.reg_h[name].value)
            if got != expected:
                self.fail(cycle, name, int(expected), got, idle)
        raw = int(self.counters_h.value)
        got = [(raw >> (16 * c)) & 0xFFFF for c in range(SYNC_COUNTERS)]
        if got != model.counters:
            self.fail(cycle, "counters", model.counters, got, idle)

    def _scoreboard_start(self, cycle, idle, engine, instr):
        if not idle[engine]:
            self.fail(cycle, f"{NAMES[engine]}.start while busy", "no start", "start")
        new = hazard_ranges(decode(instr))
        for e, stub in enumerate(self.stubs):
            if e != engine and not stub.idle and stub.instr is not None:
                running = hazard_ranges(decode(stub.instr))
                if overlaps(new, running):
                    self.fail(cycle, f"{NAMES[engine]}.start of {decode(instr)}",
                              f"no overlap with {NAMES[e]} running {decode(stub.instr)}",
                              f"overlap {new} / {running}")
        self.trace.append((cycle, engine, instr))

    # -- higher-level helpers ------------------------------------------------------------------

    async def write_imem(self, words, base=0, gap_prob=0.0):
        """Write `words` to imem[base...] through the port, one per cycle (random gaps)."""
        for k, word in enumerate(words):
            while gap_prob and self.rng.random() < gap_prob:
                await self.step()
            await self.step(imem_write=(base + k, word))

    async def run(self, max_cycles=20_000, start=True, each_cycle=None) -> int:
        """Pulse `start_req` (when `start`), then step until DONE has been issued and the state
        is STOPPED. Returns the cycle of the start pulse. `each_cycle(bench)` may return the
        keyword arguments of the next step."""
        first = None
        if start:
            await self.step(start_req=True)
            first = self.tb.cycle
        for _ in range(max_cycles):
            kwargs = each_cycle(self) if each_cycle else None
            decision = await self.step(**(kwargs or {}))
            if decision.event == SeqEvent.DONE:
                return first
        raise AssertionError(f"no DONE after {max_cycles} cycles (seed {self.tb.seed}): "
                             f"{self.model.describe([s.idle for s in self.stubs])}")

    async def settle(self):
        """Step until every stub is idle (so that the next run starts clean)."""
        for _ in range(1000):
            if all(s.idle for s in self.stubs):
                return
            await self.step()
        raise AssertionError("stubs still busy after 1000 cycles")

    def starts_of(self, since=0):
        return [(e, w) for c, e, w in self.trace if c >= since]

    def event_count(self, event, since=0):
        return sum(1 for c, e in self.events if e == event and c >= since)

    def check_program_order(self, program, since):
        """The engines received the program's unit instructions in order (loops unrolled,
        address fields stepped: `expand`), then DONE."""
        expected = []
        engine = {Unit.MATRIX: MATRIX, Unit.VECTOR: VECTOR, Unit.DMA: DMA,
                  Unit.READOUT: READOUT}
        issued, fault = expand(self.cfg, program)
        assert fault is None, f"program faults: {fault}"
        for word in issued:
            instr = decode(word)
            if UNIT_OF[instr.op] in engine:
                expected.append((engine[UNIT_OF[instr.op]], word))
        expected.append((DMA, HALT))
        got = self.starts_of(since)
        if got != expected:
            first = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b),
                         min(len(got), len(expected)))
            raise AssertionError(
                f"engine commands differ from program order at command {first}: "
                f"expected {expected[first:first + 3]}, got {got[first:first + 3]} "
                f"(seed {self.tb.seed})")


# -- instruction generators -----------------------------------------------------------------------

def expand(cfg, program, limit=100_000):
    """The instructions a run of `program` issues, in order, up to its HALT (excluded), loops
    unrolled and STEPs applied by `isa.LoopControl` (the rules, not the model), and the fault
    that ends it ((code, pc, value)) or None."""
    loops = LoopControl(cfg)
    pc, issued = 0, []
    while len(issued) < limit:
        if pc >= len(program):
            return issued, (FaultCode.PC, pc, pc)
        instr = decode(loops.effective(program[pc]))
        code, value = validate(cfg, instr)
        if code == FaultCode.NONE:
            code, value = loops.fault(instr, pc)
        if code != FaultCode.NONE:
            return issued, (code, pc, value)
        if instr.op == Opcode.HALT:
            return issued, None
        issued.append(instr.raw)
        pc = loops.issue(instr, pc)
    raise AssertionError(f"program issues more than {limit} instructions")


def random_program(cfg, rng, length, window=40, counters=range(4), wait_max=2, loops=True,
                   expansion=3):
    """A random valid program of about `length` instructions and a HALT: `random_instr`s, and
    with `loops`, LOOPs nested up to `LOOP_DEPTH` deep (counts 0, 1 and more) whose bodies hold
    STEPs of every level open (small strides, so that stepped addresses stay valid: a program
    whose run would fault is drawn again), each issuing at most `expansion` x `length`
    instructions."""

    def block(depth, budget):
        words = []
        while len(words) < budget:
            r = rng.random()
            if loops and depth < LOOP_DEPTH and r < 0.1 and budget - len(words) >= 3:
                body = block(depth + 1, rng.randint(1, min(8, budget - len(words) - 2)))
                count = rng.choice([0, 1, 2, rng.randint(2, 5)])
                words += [encode(Opcode.LOOP, count=count, body=len(body))] + body
                if depth:       # an inner loop ends strictly before its outer loop's end
                    words.append(random_instr(cfg, rng, window, counters, wait_max))
            elif loops and depth and r < 0.3:
                mask = 0xFFFF
                words.append(encode(Opcode.STEP, level=rng.randrange(depth),
                                    **{f"s{k}": rng.choice([0, 1, 2, 5, mask]) for k in range(3)}))
            else:
                words.append(random_instr(cfg, rng, window, counters, wait_max))
        return words

    for _ in range(200):
        program = block(0, length) + [HALT]
        try:
            issued, fault = expand(cfg, program, limit=expansion * length)
        except AssertionError:
            continue
        if fault is None:
            return program
    raise AssertionError("no valid random loop program in 200 draws")


def _span(rng, words, length, window):
    """A start address for `length` words: inside a small window most of the time (so that
    ranges meet often), anywhere otherwise."""
    top = words - length
    if rng.random() < 0.8:
        return rng.randint(0, min(top, window))
    return rng.randint(0, top)


def random_instr(cfg, rng, window=40, counters=range(4), wait_max=2):
    """A random valid instruction word (never HALT)."""
    words = cfg.sram_words
    kind = rng.choices(["NOP", "SETQ", "SETR", "WAIT", "MATMUL", "MREAD", "VEC", "FVEC", "FCVT",
                        "SEND", "SHAPE"], [1, 1, 1, 1, 3, 2, 2, 2, 2, 3, 1])[0]
    if kind == "NOP":
        return encode(Opcode.NOP)
    if kind == "SETQ":
        return encode(Opcode.SETQ, scale=rng.getrandbits(16), shift=rng.getrandbits(6),
                      relu=rng.getrandbits(1))
    if kind == "SETR":
        return encode(Opcode.SETR, reg=rng.choice(list(SetrReg)), value=rng.getrandbits(32))
    if kind == "WAIT":
        return encode(Opcode.WAIT, counter=rng.choice(counters), value=rng.randint(0, wait_max))
    if kind == "MATMUL":
        kw = rng.randint(1, 12)
        return encode(Opcode.MATMUL, a=_span(rng, words, kw, window),
                      b=_span(rng, words, kw, window), kw=kw, clear=rng.getrandbits(1),
                      type=rng.choice(list(MATRIX_TYPES)), bank=rng.getrandbits(1))
    if kind == "MREAD":
        row0 = rng.randrange(cfg.mac_dim)
        nrows = rng.randint(1, cfg.mac_dim - row0)
        return encode(Opcode.MREAD, dst=_span(rng, words, nrows, window), row0=row0, nrows=nrows,
                      bank=rng.getrandbits(1))
    while kind == "VEC":
        vop = rng.choice(list(VecOp))
        n = rng.randint(1, 12)
        bfix = rng.getrandbits(1)
        out = (n + 3) // 4 if vop == VecOp.REQUANT else n
        word = encode(Opcode.VEC, vop=vop, bfix=bfix, dst=_span(rng, words, out, window),
                      a=_span(rng, words, n, window),
                      b=_span(rng, words, 1 if bfix else n, window), n=n)
        # Valid means also: the destination does not run ahead of a source it overlaps.
        if validate(cfg, decode(word))[0] == FaultCode.NONE:
            return word
    while kind in ("FVEC", "FCVT"):
        n = rng.randint(1, 12)
        if kind == "FVEC":
            fop = rng.choice(list(FVecOp))
            spec = VECTOR_OPS[FVEC_BASE + fop]
            bfix = rng.getrandbits(1)
            fields = dict(fop=fop, bfix=bfix, b=_span(rng, words, 1 if bfix else n, window))
        else:
            (stype, dtype, sr), code = rng.choice(list(CONVERSIONS.items()))
            spec = VECTOR_OPS[code]
            fields = dict(stype=stype, dtype=dtype, sr=sr)
        word = encode(getattr(Opcode, kind), dst=_span(rng, words, spec.dest_words(n), window),
                      a=_span(rng, words, spec.source_words(n), window), n=n, **fields)
        if validate(cfg, decode(word))[0] == FaultCode.NONE:
            return word
    if kind == "SHAPE":     # at most 4 rows 4 apart: every shaped SEND below stays valid
        return encode(Opcode.SHAPE, extra=rng.randint(0, 3), sstride=rng.randint(0, 4),
                      dstride=rng.randint(0, 4), zero=int(rng.random() < 0.2))
    n = rng.choice([0, rng.randint(1, 12)])
    shaped = rng.random() < 0.4
    hull = n + 12 * shaped
    return encode(Opcode.SEND, src=_span(rng, words, hull, window), n=n,
                  x=rng.randrange(cfg.cols), y=rng.randrange(cfg.rows),
                  dst=_span(rng, words, hull, window), counter=rng.randrange(SYNC_COUNTERS),
                  shaped=int(shaped))


# -- tests ------------------------------------------------------------------------------------------

@cocotb.test()
async def seq_unstalled_timing(dut):
    """NOP/SETQ/WAIT 0 and unit instructions to always-idle-again engines with disjoint ranges:
    one instruction per cycle, DONE at `unstalled_done_cycle`; idle before START, after DONE."""
    bench = await SeqBench.create(dut)
    cfg, rng = bench.cfg, bench.rng
    for _ in range(3):
        await bench.step()
        assert bench.events[-1][1] == SeqEvent.NONE and int(dut.state.value) == SeqState.IDLE
    # Three engines round robin, each busy exactly 2 cycles: every third instruction goes to the
    # same engine, which is idle again by then; ranges are disjoint per engine.
    bench.busy = lambda engine, instr: 2
    quarter = cfg.sram_words // 4
    program = []
    for k in range(30):
        program += [
            encode(Opcode.MATMUL, a=0, b=4, kw=4, clear=k & 1),
            encode(Opcode.VEC, vop=VecOp.ADD, bfix=0, dst=quarter, a=quarter + 8,
                   b=quarter + 16, n=4),
            encode(Opcode.SEND, src=2 * quarter, n=3, x=0, y=0, dst=0, counter=1),
            rng.choice([NOP, encode(Opcode.WAIT, counter=rng.randrange(SYNC_COUNTERS), value=0),
                        encode(Opcode.SETQ, scale=rng.getrandbits(16), shift=3, relu=1)]),
        ]
    program += [NOP, NOP, HALT]    # the last SEND's DMA-out is idle again when HALT is at pc
    await bench.write_imem(program)
    start = await bench.run()
    done = bench.trace[-1][0]
    expected = unstalled_done_cycle(start, len(program) - 1)
    assert done == expected, f"DONE in cycle {done}, expected {expected} (start {start})"
    assert bench.event_count(SeqEvent.ISSUE, start) == len(program)
    bench.check_program_order(program, start)
    for _ in range(3):
        await bench.step(start_req=False)
    assert int(dut.state.value) == SeqState.STOPPED and not int(dut.running.value)
    bench.finish()


@cocotb.test()
async def seq_faults_directed(dut):
    """Every fault kind and the boundaries next to them, at pc 0 and later pcs; the reported
    (code, pc, value) is checked against `isa.validate`, and the DONE command carries them."""
    bench = await SeqBench.create(dut)
    cfg = bench.cfg
    w, rows, cols, n = cfg.sram_words, cfg.rows, cfg.cols, cfg.mac_dim
    F, A, N, U = FaultCode.FIELD, FaultCode.ADDRESS, FaultCode.NODE, FaultCode.UNDEFINED
    T = FaultCode.TYPE
    ok = FaultCode.NONE
    MM, MR, VE, SE = Opcode.MATMUL, Opcode.MREAD, Opcode.VEC, Opcode.SEND
    FV, FC, SR = Opcode.FVEC, Opcode.FCVT, Opcode.SETR
    BF, FP, I8, I32 = ElemType.BF16, ElemType.FP32, ElemType.INT8, ElemType.INT32
    cases = [(op | (0x1234_5678_9ABC_DEF0 if op & 1 else 0), U) for op in range(15, 16)] + [
        (encode(Opcode.LOOP, count=3, body=0), F), (encode(Opcode.LOOP, count=0, body=0), F),
        (encode(MM, a=0, b=0, kw=1, type=BF), ok), (encode(MM, a=0, b=0, kw=0, type=FP), T),
        (encode(MM, a=w, b=w, kw=1, type=I32), T), (encode(MM, a=0, b=0, kw=0, type=BF), F),
        (encode(FV, fop=10, dst=0, a=0, b=0, n=1), F), (encode(FV, fop=15, dst=0, a=0, n=1), F),
        (encode(FV, fop=FVecOp.FADD, dst=0, a=0, b=0, n=0), F),
        (encode(FV, fop=FVecOp.FMUL, dst=0, a=0, b=w - 3, n=4), A),
        (encode(FV, fop=FVecOp.FSCALE, dst=0, a=0, b=w - 3, n=4), ok),
        (encode(FV, fop=FVecOp.FSUM, dst=w - 1, a=0, n=127), ok),
        (encode(FV, fop=FVecOp.FMAXR, dst=w, a=0, n=1), A),
        (encode(FV, fop=FVecOp.FAXPY, dst=4, a=0, b=0, n=8), F),
        (encode(FC, stype=FP, dtype=BF, dst=w - 4, a=0, n=8), ok),
        (encode(FC, stype=FP, dtype=BF, dst=w - 4, a=0, n=9), A),
        (encode(FC, stype=BF, dtype=FP, dst=0, a=w - 4, n=8), ok),
        (encode(FC, stype=I8, dtype=FP, dst=0, a=w - 2, n=9), A),
        (encode(FC, stype=BF, dtype=FP, dst=0, a=0, n=8), F),
        (encode(FC, stype=FP, dtype=I8, dst=0, a=0, n=8), ok),
        (encode(FC, stype=FP, dtype=FP, dst=0, a=0, n=1), T),
        (encode(FC, stype=FP, dtype=I32, sr=1, dst=0, a=0, n=1), T),
        (encode(FC, stype=FP, dtype=BF, sr=1, dst=0, a=0, n=0), F),
        (encode(SR, reg=SetrReg.SEED, value=2**32 - 1), ok), (encode(SR, reg=2), F),
        (encode(SR, reg=3), F),
        (encode(MM, a=0, b=0, kw=0), F), (encode(MM, a=w - 4, b=0, kw=5), A),
        (encode(MM, a=0, b=w - 4, kw=5), A), (encode(MM, a=w, b=w, kw=1), A),
        (encode(MM, a=w - 5, b=w - 5, kw=5), ok), (encode(MM, a=0, b=0, kw=0xFFFF), A),
        (encode(MR, dst=0, row0=0, nrows=0), F), (encode(MR, dst=0, row0=1, nrows=n), F),
        (encode(MR, dst=0, row0=n, nrows=0), F), (encode(MR, dst=0, row0=255, nrows=255), F),
        (encode(MR, dst=w - n + 1, row0=0, nrows=n), A), (encode(MR, dst=w - n, row0=0, nrows=n), ok),
        (encode(MR, dst=w - 1, row0=n - 1, nrows=1), ok),
        *[(encode(VE, vop=v, dst=0, a=0, b=0, n=1), F) for v in (5, 6, 7)],
        (encode(VE, vop=VecOp.ADD, dst=0, a=0, b=0, n=0), F),
        (encode(VE, vop=VecOp.ADD, dst=0, a=w - 3, b=0, n=4), A),
        (encode(VE, vop=VecOp.MUL, dst=0, a=0, b=w - 3, n=4), A),
        (encode(VE, vop=VecOp.MAX, bfix=1, dst=0, a=0, b=w - 1, n=4), ok),
        (encode(VE, vop=VecOp.MAX, bfix=1, dst=0, a=0, b=w, n=4), A),
        (encode(VE, vop=VecOp.RELU, dst=0, a=0, b=0xFFFF, n=4), ok),
        (encode(VE, vop=VecOp.REQUANT, dst=0, a=0, b=0xFFFF, n=4), ok),
        (encode(VE, vop=VecOp.ADD, dst=w - 3, a=0, b=0, n=4), A),
        (encode(VE, vop=VecOp.REQUANT, dst=w - 2, a=0, b=0, n=8), ok),
        (encode(VE, vop=VecOp.REQUANT, dst=w - 2, a=0, b=0, n=9), A),
        (encode(VE, vop=VecOp.ADD, dst=w, a=w, b=w, n=1), A),
        (encode(VE, vop=VecOp.MUL, dst=w, a=0, b=w, n=1), A),
        (encode(SE, src=0, n=1, x=cols + 1, y=0, dst=0), N), (encode(SE, src=0, n=1, x=0, y=rows, dst=0), N),
        (encode(SE, src=0, n=1, x=cols, y=rows - 1, dst=0), ok),      # x = cols: to the host
        (encode(SE, src=0, n=1, x=cols, y=rows, dst=0), N),
        (encode(SE, src=0, n=1, x=(1 << SEND_X_BITS) - 1, y=(1 << COORD_BITS) - 1, dst=0), N), (encode(SE, src=w, n=0, x=0, y=0, dst=w), ok),
        (encode(SE, src=w + 1, n=0, x=0, y=0, dst=0), A), (encode(SE, src=0, n=0, x=0, y=0, dst=w + 1), A),
        (encode(SE, src=w - 2, n=3, x=0, y=0, dst=0), A), (encode(SE, src=0, n=3, x=0, y=0, dst=w - 2), A),
        (encode(SE, src=w - 3, n=3, x=cols - 1, y=rows - 1, dst=w - 3), ok),
        (encode(SE, src=0, n=SEND_MAX_WORDS, x=cols + 1, y=0, dst=0), N),
        (encode(SE, src=max(0, w + 1 - SEND_MAX_WORDS), n=SEND_MAX_WORDS, x=cols, y=0, dst=0), A),
    ]
    pre = [NOP, encode(Opcode.SETQ, scale=3, shift=1, relu=0)]
    for k, (word, code) in enumerate(cases):
        expected_code, expected_value = validate(cfg, decode(word))
        assert expected_code == code, f"case {k} {decode(word)}: isa.validate says {expected_code}"
        lead = pre[:k % 3]      # the instruction at pc 0, 1 or 2
        await bench.write_imem(lead + [word, HALT])
        start = await bench.run()
        got = (int(dut.fault_code.value), int(dut.fault_pc.value), int(dut.fault_value.value))
        pc = len(lead) + (1 if code == ok else 0)
        expected = (int(code), len(lead) if code != ok else 0, expected_value)
        assert got == expected, \
            f"{decode(word)} at pc {len(lead)}: (code, pc, value) {got}, expected {expected}"
        assert int(dut.pc.value) == pc, f"{decode(word)}: pc {int(dut.pc.value)}, expected {pc}"
        # The fault is raised in the first cycle the word is at pc, and DONE follows when the
        # engines are idle (here: at once).
        if code != ok:
            fault_cycle = next(c for c, e in bench.events if e == SeqEvent.FAULT and c > start)
            assert fault_cycle == start + 1 + len(lead), f"{decode(word)}: fault in {fault_cycle}"
        await bench.settle()
    bench.finish()


@cocotb.test()
async def seq_faults_random(dut):
    """Random words over all 16 opcodes with fields near their limits: the DUT's fault
    registers equal `isa.validate` for each (and the lockstep checks every cycle)."""
    bench = await SeqBench.create(dut)
    cfg, rng = bench.cfg, bench.rng
    bench.busy = lambda engine, instr: 1
    w = cfg.sram_words

    def near(limit, bits):
        return min((1 << bits) - 1, max(0, limit + rng.randint(-3, 3))) if rng.random() < 0.6 \
            else rng.getrandbits(bits)

    seen = {}
    await bench.write_imem([HALT], base=1)
    for _ in range(150 if cfg.name == "tiny" else 100):
        # Biased towards the instructions with validity rules.
        roll = rng.random()
        op = (rng.choice([2, 3, 4, 6, 6, 8, 9, 10, 11, 13]) if roll < 0.6 else 15 if roll < 0.65
              else rng.randrange(16))
        program = None
        if op == Opcode.MATMUL:
            kw = rng.choice([0, rng.randint(1, 8), near(w, 16)])
            word = encode(Opcode.MATMUL, a=near(w - kw, 16), b=near(w - kw, 16), kw=kw,
                          clear=rng.getrandbits(1), type=rng.getrandbits(2))
        elif op == Opcode.FVEC:
            nn = near(4, 7)
            word = encode(Opcode.FVEC, fop=near(9, 4), bfix=rng.getrandbits(1),
                          dst=near(w - nn, 16), a=near(w - nn, 16), b=near(w - nn, 16), n=nn)
        elif op == Opcode.FCVT:
            nn = near(4, 8)
            word = encode(Opcode.FCVT, stype=rng.getrandbits(2), dtype=rng.getrandbits(2),
                          sr=rng.getrandbits(1), dst=near(w - nn // 2, 16), a=near(w - nn, 16),
                          n=nn)
        elif op == Opcode.SETR:
            word = encode(Opcode.SETR, reg=rng.getrandbits(2), value=rng.getrandbits(32))
        elif op == Opcode.MREAD:
            word = encode(Opcode.MREAD, dst=near(w - cfg.mac_dim, 16),
                          row0=near(0, 8) if rng.random() < 0.7 else near(cfg.mac_dim, 8),
                          nrows=near(cfg.mac_dim // 2, 8))
        elif op == Opcode.VEC:
            nn = near(4, 8)
            word = encode(Opcode.VEC, vop=rng.getrandbits(3), bfix=rng.getrandbits(1),
                          dst=near(w - nn // 4, 16), a=near(w - nn, 16), b=near(w - nn, 16), n=nn)
        elif op in (Opcode.SEND, Opcode.MCAST):
            # half of them shaped, after a SHAPE whose rows end near the SRAM's end
            nn = near(2, 11)
            shaped = rng.random() < 0.5
            extra = rng.randint(0, 3) if shaped else 0
            sstride, dstride = near(8, 16), near(8, 16)
            src, dst = near(w - nn - extra * sstride, 16), near(w - nn - extra * dstride, 16)
            col = rng.getrandbits(1)
            if op == Opcode.SEND:
                word = encode(Opcode.SEND, src=src, n=nn, x=near(cfg.cols, SEND_X_BITS),
                              y=near(cfg.rows, COORD_BITS), dst=dst, counter=rng.getrandbits(4),
                              shaped=int(shaped))
            else:
                word = encode(Opcode.MCAST, src=src, n=nn, col=col,
                              first=near(0, COORD_BITS),
                              last=near(cfg.rows if col else cfg.cols, COORD_BITS),
                              dst=dst, counter=rng.getrandbits(4), shaped=int(shaped))
            if shaped:      # a span (rectangle) now and then: ranges near the other dimension
                program = [encode(Opcode.SHAPE, extra=extra, sstride=sstride, dstride=dstride,
                                  zero=int(rng.random() < 0.3), span=int(rng.random() < 0.3),
                                  span_first=near(0, COORD_BITS),
                                  span_last=near(cfg.cols if col else cfg.rows, COORD_BITS)),
                           word, HALT]
        elif op == Opcode.HALT or op == Opcode.WAIT:
            word = encode(Opcode.NOP)    # WAIT could block forever: the random run needs none
        elif op == Opcode.LOOP:          # a count of 1 or more: the body starts at the HALT
            word = encode(Opcode.LOOP, count=rng.randint(1, 0xFFFF),
                          body=near(cfg.imem_words - 1, 16) if rng.random() < 0.7
                          else rng.choice([0, 1]))
        else:                            # STEP: no loop is open, so it faults LOOP
            word = op | rng.getrandbits(60) << 4
        # The fault of the word at pc 0 with the HALT after it (loop faults included), or of
        # a shaped transfer after its SHAPE.
        program = program or [word, HALT]
        _, fault = expand(cfg, program)
        code, value = fault[0::2] if fault else (FaultCode.NONE, 0)
        seen[code] = seen.get(code, 0) + 1
        await bench.write_imem(program)
        await bench.run()
        got = (int(dut.fault_code.value), int(dut.fault_value.value))
        assert got == (code, value), f"{decode(word)}: (code, value) {got}, expected {(code, value)}"
    bench.tb.log.info("fault kinds seen: %s", {FaultCode(k).name: v for k, v in seen.items()})
    missing = set(FaultCode) - {FaultCode.PC} - set(seen)   # PC: see seq_start_and_imem
    assert not missing, f"fault kinds never drawn: {missing} (drawn: {seen})"
    bench.finish()


@cocotb.test()
async def seq_loops(dut):
    """LOOP and STEP: the back edge costs no cycle (k body instructions x c iterations issue
    in k x c cycles); count 0 skips the body, count 1 runs it once; nested loops with STEPs
    of both levels give the engines the stepped words in order (a stride of 0xFFFF steps
    down); START closes every loop and clears pending offsets; every loop fault (too deep,
    badly nested, past the imem, STEP of a loop that is not open, a stepped address out of
    range) is raised at the pc and with the value `expand` (the rules) gives."""
    bench = await SeqBench.create(dut)
    cfg = bench.cfg
    w = cfg.sram_words
    bench.busy = lambda engine, instr: 1
    setq = encode(Opcode.SETQ, scale=7, shift=2, relu=1)
    loop = lambda count, body: encode(Opcode.LOOP, count=count, body=body)
    step = lambda level=0, s0=0, s1=0, s2=0: encode(Opcode.STEP, s0=s0, s1=s1, s2=s2,
                                                    level=level)
    mm = lambda a, b=0: encode(Opcode.MATMUL, a=a, b=b, kw=1, clear=1)
    send = encode(Opcode.SEND, src=0, n=1, x=0, y=0, dst=0, counter=0)
    # Timing: LOOP 5 x [NOP, SETQ, NOP], NOP, HALT: 1 + 15 + 1 instructions, then the HALT.
    program = [loop(5, 3), NOP, setq, NOP, NOP, HALT]
    await bench.write_imem(program)
    start = await bench.run()
    assert bench.trace[-1][0] == unstalled_done_cycle(start, 17), \
        f"DONE {bench.trace[-1][0] - start} cycles after start, expected {2 + 17}"
    assert bench.event_count(SeqEvent.ISSUE, start) == 18
    # Count 0 skips, count 1 runs once; the SENDs reach DMA-out in that order.
    program = [loop(0, 2), mm(1), mm(2), loop(1, 1), mm(3), send, HALT]
    await bench.write_imem(program)
    start = await bench.run()
    assert [word for _, word in bench.starts_of(start)] == [mm(3), send, HALT]
    bench.check_program_order(program, start)
    # Nested: 3 x (2 x [STEP inner 1, STEP outer 100 / -1, MATMUL]), NOP.
    program = [loop(3, 5), loop(2, 3), step(0, s0=1), step(1, s0=100, s1=0xFFFF), mm(10, 20),
               NOP, HALT]
    await bench.write_imem(program)
    start = await bench.run()
    got = [(decode(word).a, decode(word).b) for e, word in bench.starts_of(start) if e == MATRIX]
    assert got == [(10 + j + 100 * i, 20 - i) for i in range(3) for j in range(2)], got
    bench.check_program_order(program, start)
    # START resets: a run that faults inside two loops with an offset pending (the stepped
    # MATMUL's a = w in the second iteration); the next run's MATMUL at pc 0 is not stepped,
    # and its STEP at pc 1 finds no open loop.
    await bench.write_imem([loop(1, 5), loop(2, 3), step(0, s0=w - 1), step(0, s0=1), mm(0),
                            NOP, HALT])
    await bench.run()
    assert (int(dut.fault_code.value), int(dut.fault_value.value)) == (FaultCode.ADDRESS, w)
    await bench.settle()
    await bench.write_imem([mm(0), step(0, s0=1), HALT])
    start = await bench.run()
    assert bench.starts_of(start)[0] == (MATRIX, mm(0))
    assert (int(dut.fault_code.value), int(dut.fault_pc.value), int(dut.fault_value.value)) \
        == (FaultCode.LOOP, 1, 0)
    await bench.settle()
    # The loop faults.
    deep = [loop(2, 12 - 2 * k) for k in range(LOOP_DEPTH + 1)] + [NOP] * 8 + [HALT]
    cases = [
        (deep, (FaultCode.LOOP, LOOP_DEPTH, LOOP_DEPTH)),
        ([loop(2, 2), loop(1, 1), NOP, HALT], (FaultCode.LOOP, 1, 1)),       # ends together
        ([loop(2, 2), loop(1, 2), NOP, NOP, HALT], (FaultCode.LOOP, 1, 2)),  # ends outside
        ([NOP, loop(1, cfg.imem_words - 1), HALT], (FaultCode.LOOP, 1, cfg.imem_words - 1)),
        # a body ending at the last imem word is fine; skipping it runs off the end
        ([loop(0, cfg.imem_words - 1), HALT],
         (FaultCode.PC, cfg.imem_words, cfg.imem_words)),
        ([loop(2, 2), step(1), NOP, HALT], (FaultCode.LOOP, 1, 1)),
        ([loop(3, 2), step(0, s0=w // 2), mm(0), HALT], (FaultCode.ADDRESS, 2, w)),
        ([loop(2, 2), step(0, s1=0xFFFF), mm(0, 0), HALT], (FaultCode.ADDRESS, 2, 0xFFFF)),
    ]
    for program, fault in cases:
        assert expand(cfg, program)[1] == fault, (program, expand(cfg, program))
        await bench.write_imem(program)
        await bench.run()
        got = (int(dut.fault_code.value), int(dut.fault_pc.value), int(dut.fault_value.value))
        assert got == (fault or (FaultCode.NONE, 0, 0)), \
            f"{[str(decode(x)) for x in program[:3]]}: (code, pc, value) {got}, expected {fault}"
        await bench.settle()
    bench.finish()


# (first, second, hazard?) on different engines; the first runs BUSY cycles.
BUSY = 7


def _hazard_cases(cfg):
    mm = lambda a, b, kw, bank=0: encode(Opcode.MATMUL, a=a, b=b, kw=kw, clear=0, bank=bank)
    mr = lambda dst, nrows, bank=0: encode(Opcode.MREAD, dst=dst, row0=0, nrows=nrows,
                                           bank=bank)
    vec = lambda vop, dst, a, b, n, bfix=0: encode(Opcode.VEC, vop=vop, bfix=bfix, dst=dst, a=a,
                                                   b=b, n=n)
    send = lambda src, n: encode(Opcode.SEND, src=src, n=n, x=0, y=0, dst=0, counter=0)
    fv = lambda fop, dst, a, b, n, bfix=0: encode(Opcode.FVEC, fop=fop, bfix=bfix, dst=dst, a=a,
                                                  b=b, n=n)
    fc = lambda stype, dtype, dst, a, n: encode(Opcode.FCVT, stype=stype, dtype=dtype, dst=dst,
                                                a=a, n=n)
    nr = min(4, cfg.mac_dim)
    return [
        # RAW: the new instruction reads what the running one writes.
        (mr(10, nr), send(10 + nr - 1, 2), True),
        (vec(VecOp.ADD, 20, 0, 40, 4), mm(100, 23, 2), True),
        (mr(30, nr), vec(VecOp.MUL, 60, 50, 30, 3, bfix=1), True),
        (vec(VecOp.REQUANT, 30, 60, 0, 5), send(31, 1), True),
        # WAR: the new instruction writes what the running one reads.
        (send(10, 4), vec(VecOp.RELU, 13, 50, 0, 1), True),
        (mm(5, 50, 3), vec(VecOp.ADD, 51, 80, 90, 1), True),
        (vec(VecOp.MAX, 70, 60, 40, 4, bfix=1), mr(40, 1), True),
        # WAW.
        (vec(VecOp.ADD, 20, 60, 70, 4), mr(23, nr), True),
        (mr(20, nr), vec(VecOp.REQUANT, 20 + nr - 1, 60, 0, 1), True),
        # No hazard: reads only, adjacent ranges, empty ranges, unused b.
        (mm(0, 8, 4), send(0, 4), False),
        (mr(10, nr), vec(VecOp.ADD, 60, 10 + nr, 10 - 2, 2), False),
        (mr(10, nr), send(10, 0), False),
        (mr(10, nr), vec(VecOp.RELU, 60, 70, 10, 4), False),
        (mr(10, nr), vec(VecOp.REQUANT, 80, 70, 10, 4), False),
        (mr(10, nr), vec(VecOp.ADD, 60, 70, 10 + nr, 8, bfix=1), False),
        (vec(VecOp.REQUANT, 30, 60, 0, 5), send(32, 2), False),
        (send(10, 4), mm(10, 11, 3), False),
        (send(10, 0), vec(VecOp.ADD, 10, 0, 20, 1), False),
        # the FP32 and conversion instructions' ranges (packing, reductions' single word)
        (mm(5, 50, 3), fc(ElemType.FP32, ElemType.BF16, 50, 80, 4), True),
        (mm(5, 50, 3), fc(ElemType.FP32, ElemType.BF16, 53, 80, 4), False),
        (mr(20, nr), fc(ElemType.BF16, ElemType.FP32, 60, 20 + nr - 1, 2), True),
        (mr(20, nr), fc(ElemType.BF16, ElemType.FP32, 60, 20 + nr, 4), False),
        (fv(FVecOp.FSUM, 40, 60, 0, 8), mr(40, 1), True),
        (fv(FVecOp.FSUM, 40, 60, 0, 8), mr(41, 1), False),
        (send(10, 4), fv(FVecOp.FAXPY, 13, 50, 70, 1), True),
        (mr(30, nr), fv(FVecOp.FMUL, 60, 50, 30, 3, bfix=1), True),
        # the accumulator banks: a MATMUL writes its bank, an MREAD reads its bank
        (mm(0, 8, 4, bank=0), mr(40, nr, bank=0), True),
        (mm(0, 8, 4, bank=1), mr(40, nr, bank=0), False),
        (mr(40, nr, bank=1), mm(0, 8, 4, bank=1), True),
        (mr(40, nr, bank=1), mm(0, 8, 4, bank=0), False),
        (mr(40, nr, bank=1), mm(40, 8, 4, bank=0), True),    # and the SRAM ranges still count
    ]


@cocotb.test()
async def seq_hazards(dut):
    """RAW, WAR and WAW across engines stall (cause hazard) for exactly as long as the first
    instruction's engine is busy; disjoint, adjacent and empty ranges do not stall; the same
    engine stalls with cause unit; an engine that is idle again holds no ranges."""
    bench = await SeqBench.create(dut)
    cfg = bench.cfg
    bench.busy = lambda engine, instr: BUSY
    engine_of = {Opcode.MATMUL: MATRIX, Opcode.MREAD: READOUT, Opcode.VEC: VECTOR,
                 Opcode.FVEC: VECTOR, Opcode.FCVT: VECTOR, Opcode.SEND: DMA}
    for first, second, hazard in _hazard_cases(cfg):
        a, b = decode(first), decode(second)
        assert engine_of[a.op] != engine_of[b.op]
        assert overlaps(hazard_ranges(b), hazard_ranges(a)) == hazard, f"{a} / {b}: case table"
        await bench.write_imem([first, second, HALT])
        start = await bench.run()
        (c1, e1, w1), (c2, e2, w2) = bench.trace[-3], bench.trace[-2]
        assert (w1, w2) == (first, second), "commands out of order"
        assert c1 == start + 1, f"{a}: issued in {c1}, expected {start + 1}"
        # The first engine is busy in c1 + 1 .. c1 + BUSY, idle again in c1 + BUSY + 1.
        expected = c1 + BUSY + 1 if hazard else c1 + 1
        assert c2 == expected, f"{b} after {a}: issued in {c2}, expected {expected} " \
                               f"(hazard {hazard})"
        stalls = bench.event_count(SeqEvent.STALL_HAZARD, start)
        assert stalls == (BUSY if hazard else 0), f"{b} after {a}: {stalls} hazard stalls"
        await bench.settle()
    # Same engine: unit stall, not hazard, even with overlapping ranges.
    same = [encode(Opcode.MATMUL, a=10, b=10, kw=1, clear=0, bank=0),
            encode(Opcode.MATMUL, a=10, b=10, kw=1, clear=0, bank=1), HALT]
    await bench.write_imem(same)
    start = await bench.run()
    assert bench.event_count(SeqEvent.STALL_UNIT, start) == BUSY
    assert bench.event_count(SeqEvent.STALL_HAZARD, start) == 0
    # Ranges of an engine that finished do not count: MREAD busy 1 cycle, then a gap of NOPs,
    # then a SEND of the same words issues at once.
    bench.busy = lambda engine, instr: 1
    program = [encode(Opcode.MREAD, dst=10, row0=0, nrows=1), NOP, NOP,
               encode(Opcode.SEND, src=10, n=1, x=0, y=0, dst=0, counter=0), HALT]
    await bench.write_imem(program)
    start = await bench.run()
    assert bench.event_count(SeqEvent.STALL_HAZARD, start) == 0
    assert bench.trace[-2][0] == start + 4
    bench.finish()


@cocotb.test()
async def seq_wait_and_bumps(dut):
    """WAIT stalls until its counter reaches the value (bumps count from the next cycle), then
    subtracts; a bump of the same counter in the cycle of the WAIT's issue adds to it; WAIT 0
    issues at once; bumps of other counters do not release it; START keeps the counters."""
    bench = await SeqBench.create(dut)
    program = [encode(Opcode.WAIT, counter=3, value=2), encode(Opcode.WAIT, counter=5, value=1),
               encode(Opcode.WAIT, counter=7, value=0), HALT]
    await bench.write_imem(program)
    start = None
    script = {2: 4, 4: 3, 6: 3, 7: 5, 9: 5}   # cycle after start -> bumped counter

    def bumps(b):
        return {"bump": script.get(b.tb.cycle + 1 - start)}

    await bench.step(start_req=True)
    start = bench.tb.cycle
    await bench.run(start=False, each_cycle=bumps)
    issues = [c - start for c, e in bench.events if e == SeqEvent.ISSUE and c > start]
    # WAIT 3,2: counter 3 reaches 2 at the end of cycle 6, issues in 7 (with the bump of 5 in
    # the same cycle, unrelated); WAIT 5,1: counter 5 is 1 from cycle 8: issues in 8; WAIT 7,0 in
    # 9 (bump of 5 in 9 leaves counter 5 at 1); HALT in 10.
    assert issues == [7, 8, 9, 10], f"issue cycles after start: {issues}"
    assert bench.model.counters[3] == 0 and bench.model.counters[4] == 1
    assert bench.model.counters[5] == 1, bench.model.counters
    # Same-cycle bump and WAIT on one counter: counter 5 is 1; WAIT 5,1 issues while 5 is
    # bumped: it ends at 1.
    await bench.write_imem([encode(Opcode.WAIT, counter=5, value=1), HALT])
    await bench.step(start_req=True)
    await bench.step(bump=5)
    assert bench.events[-1][1] == SeqEvent.ISSUE
    await bench.run(start=False)
    assert int(dut.counters.value) >> (5 * 16) & 0xFFFF == 1
    assert bench.model.counters == [b - w for b, w in zip(bench.bumps, bench.waited)]
    bench.finish()


@cocotb.test()
async def seq_halt_waits(dut):
    """HALT stalls (cause halt) while any engine is busy, then HALTING; DONE waits for DMA-out
    too (busy on its own); a fault while engines are busy waits for them before DONE."""
    bench = await SeqBench.create(dut)
    lengths = {MATRIX: 9, VECTOR: 5, DMA: 3, READOUT: 4}
    bench.busy = lambda engine, instr: lengths[engine]
    program = [encode(Opcode.MATMUL, a=0, b=8, kw=2, clear=1),
               encode(Opcode.VEC, vop=VecOp.RELU, bfix=0, dst=40, a=50, b=0, n=2), HALT]
    await bench.write_imem(program)
    start = await bench.run()
    # MATMUL in s+1 (busy to s+10), VEC in s+2, HALT stalls s+3 .. s+10, issues s+11, DONE s+12.
    assert bench.event_count(SeqEvent.STALL_HALT, start) == 8
    assert bench.trace[-1][0] == start + 12, f"DONE in {bench.trace[-1][0] - start} after start"
    await bench.settle()
    # DMA-out busy on its own in HALTING: DONE waits for it.
    await bench.write_imem([HALT])
    await bench.step(start_req=True)
    start = bench.tb.cycle
    await bench.step()                      # HALT issues in s+1 -> HALTING
    bench.stubs[DMA].start(None, 4)         # DMA-out busy from s+2 to s+5
    await bench.run(start=False)
    assert bench.trace[-1][0] == start + 6, f"DONE in {bench.trace[-1][0] - start} after start"
    await bench.settle()
    # Fault while the matrix engine is busy: fault at once, DONE when it is idle.
    bad = encode(Opcode.MATMUL, a=0, b=0, kw=0)
    await bench.write_imem([encode(Opcode.MATMUL, a=0, b=8, kw=2, clear=1), bad, HALT])
    start = await bench.run()
    fault = next(c for c, e in bench.events if e == SeqEvent.FAULT and c > start)
    assert fault == start + 2 and bench.trace[-1][0] == start + 1 + 9 + 1
    assert (int(dut.fault_code.value), int(dut.fault_pc.value)) == (FaultCode.FIELD, 1)
    bench.finish()


@cocotb.test()
async def seq_start_and_imem(dut):
    """START is ignored in RUN and HALTING (also in the DONE cycle) and restarts from STOPPED
    (fault registers cleared); imem writes while running take effect the next cycle; writes at
    or above imem_words are ignored; running past the last imem word faults (PC)."""
    bench = await SeqBench.create(dut)
    cfg = bench.cfg
    bench.busy = lambda engine, instr: 3
    program = [encode(Opcode.MATMUL, a=0, b=8, kw=2, clear=1),
               encode(Opcode.MATMUL, a=0, b=8, kw=2, clear=0), NOP, NOP, HALT]
    await bench.write_imem(program)
    start = await bench.run(each_cycle=lambda b: {"start_req": True})   # START every cycle
    assert bench.event_count(SeqEvent.ISSUE, start) == len(program)
    # Restart from STOPPED after a fault clears the fault registers.
    await bench.write_imem([encode(Opcode.MATMUL, a=0, b=0, kw=0)], base=2)
    await bench.run()
    assert int(dut.fault_code.value) == FaultCode.FIELD
    await bench.write_imem([NOP], base=2)
    await bench.step(start_req=True)
    await bench.step()
    assert (int(dut.fault_code.value), int(dut.fault_pc.value), int(dut.pc.value)) == (0, 0, 0)
    await bench.run(start=False)
    # Writes beyond the imem are ignored: imem[k] keeps its NOP.
    for addr in (cfg.imem_words, cfg.imem_words + 2, 0xFFFF):
        await bench.step(imem_write=(addr, encode(Opcode.MATMUL, a=0, b=0, kw=0)))
    await bench.run()
    assert int(dut.fault_code.value) == 0
    # Self-modification: while the WAIT at pc 1 stalls, imem[1] becomes NOP: it issues in the
    # next cycle.
    await bench.write_imem([NOP, encode(Opcode.WAIT, counter=9, value=1), HALT])
    await bench.step(start_req=True)
    await bench.step()
    await bench.step()
    assert bench.events[-1][1] == SeqEvent.STALL_WAIT
    await bench.step(imem_write=(1, NOP))
    assert bench.events[-1][1] == SeqEvent.STALL_WAIT
    await bench.step()
    assert bench.events[-1][1] == SeqEvent.ISSUE
    await bench.run(start=False)
    # Running off the end: the last imem word issues, then the PC fault (value and pc =
    # imem_words), as the functional interpreter reports it.
    await bench.write_imem([NOP] * cfg.imem_words)
    start = await bench.run()
    expected = (FaultCode.PC, cfg.imem_words, cfg.imem_words, cfg.imem_words)
    got = (int(dut.fault_code.value), int(dut.fault_pc.value), int(dut.fault_value.value),
           int(dut.pc.value))
    assert got == expected, f"after the last imem word: (code, fault_pc, value, pc) {got}"
    fault = next(c for c, e in bench.events if e == SeqEvent.FAULT and c > start)
    assert fault == start + 1 + cfg.imem_words and bench.trace[-1][0] == fault + 1
    bench.finish()


@cocotb.test()
async def seq_random_programs(dut):
    """Random valid programs (all instructions, ranges crowded into a small window so that
    hazards are frequent), random engine busy lengths, DMA-out busy on its own, random bumps
    (rare to frequent, so that WAITs stall or not), START pulses and out-of-range imem writes
    during the run; each program run twice. Every stall cause must occur."""
    bench = await SeqBench.create(dut)
    cfg, rng = bench.cfg, bench.rng
    bench.dma_self_busy = 0.05
    totals = {e: 0 for e in SeqEvent}
    for k in range(10):
        window = rng.choice([16, 40, 200])
        max_busy = rng.choice([1, 4, 12])
        bench.busy = lambda engine, instr, m=max_busy: rng.randint(1, m)
        # Rates cycle so that the rare-bump programs use counters no earlier program bumped
        # (a surplus left by a frequent-bump program would keep every WAIT from stalling).
        bench.bump_prob = (0.3, 0.05, 0.01)[k % 3]
        bench.bump_ids = range(4 * (k % 4), 4 * (k % 4) + 4)
        length = rng.randint(60, 200)
        program = random_program(cfg, rng, length, window, counters=bench.bump_ids, wait_max=3,
                                 loops=k % 5 != 0)
        await bench.write_imem(program, gap_prob=0.1)
        for repeat in range(2):

            def noise(b):
                r = rng.random()
                if r < 0.02:
                    return {"start_req": True}
                if r < 0.04:
                    return {"imem_write": (cfg.imem_words + rng.randrange(64), rng.getrandbits(64))}
                return None

            start = await bench.run(each_cycle=noise)
            bench.check_program_order(program, start)
            assert int(dut.fault_code.value) == 0
            counts = {e: bench.event_count(e, start) for e in SeqEvent}
            for e, count in counts.items():
                totals[e] += count
            bench.tb.log.info("program %d run %d: %d instructions, window %d, busy <= %d, "
                              "bumps %.2f: %s", k, repeat, len(program), window, max_busy,
                              bench.bump_prob, {e.name: c for e, c in counts.items()})
            await bench.settle()
    assert bench.model.counters == [(b - w) & 0xFFFF for b, w in zip(bench.bumps, bench.waited)]
    missing = [e.name for e in SeqEvent if e != SeqEvent.FAULT and not totals[e]]
    assert not missing, f"random programs never produced {missing} (seed {bench.tb.seed})"
    bench.tb.log.info("random programs: %d cycles in lockstep, events %s", bench.cycles,
                      {e.name: c for e, c in totals.items()})
    bench.finish()
