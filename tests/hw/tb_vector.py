"""cocotb bench of the vector unit (`d1tile.hw.vector.VectorUnit`, top `vector_unit`).

Every result is checked against the reference model (`d1tile.sim.vector.vector_execute`) run on
a `VectorUnitState` mirror of the unit's accumulator and generator: the bench computes the
expected results when it queues the commands (the unit executes them in that order), and a
scoreboard pairs the k-th result with the k-th expected one (a reduction's elements before its
`last` give none). Reseeds are queue items too: the driver pulses `reseed` (with `seed`) in the
first cycle the next command is at the head of the queue, often the very cycle that command is
accepted (the unit's priority rule: the reseed applies first), or on its own. A watcher checks
the stream rules every cycle: `cmd.ready == ~result.valid | result.ready`, and a result that was
offered and not taken stays valid and unchanged. Timing expectations come from `VECTOR_LATENCY`
and `vector_ideal_cycles` in the reference model.
"""

from __future__ import annotations

import collections

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile import numerics as nx
from d1tile.dtypes import ELEMENTS
from d1tile.formats import bytes_from_word, lanes_from_word, word_from_lanes
from d1tile.hw.testbench import TB, StreamSink
from d1tile.isa import VecOp
from d1tile.sim.vector import (INT32_MAX, INT32_MIN, VECTOR_LATENCY, VectorUnitState,
                               requantize_lane, vector_cmd_format, vector_execute,
                               vector_ideal_cycles, vector_result_format)
from d1tile.vector_ops import VECTOR_OPS, vector_op_of


CFG = bench_config()
N = CFG.lanes
CMD = vector_cmd_format(CFG)
RES = vector_result_format(CFG)

EXTREMES = (INT32_MIN, INT32_MAX, -1, 0, 1)
SCALES = (0, 1, 65535)
SHIFTS = (0, 1, 31, 47, 63)
UNDEFINED = sorted(set(range(1 << CMD.field("op").width)) - set(VECTOR_OPS))

FP_SPECIAL = nx.SPECIAL_FP32

FP_OPS = sorted(code for code, op in VECTOR_OPS.items()
                if ELEMENTS[op.src].is_float and ELEMENTS[op.dst].is_float and not op.reduce
                and op.src == op.dst)
REDUCTIONS = sorted(code for code, op in VECTOR_OPS.items() if op.reduce)
CONVERSIONS = sorted(code for code, op in VECTOR_OPS.items() if op.src != op.dst
                     and op.name != "REQUANT")
INT_OPS = sorted(code for code, op in VECTOR_OPS.items()
                 if not ELEMENTS[op.src].is_float and op.src == op.dst) + [VecOp.REQUANT]
SR = vector_op_of("CVT_F32_BF16_SR").code


def op_name(op: int) -> str:
    spec = VECTOR_OPS.get(op)
    return spec.name if spec else f"undefined op {op}"


def describe_mismatch(cmd: int, expected: int, got: int) -> str:
    """What differs between two results, element by element of the destination type."""
    fields = CMD.unpack(cmd)
    exp, res = RES.unpack(expected), RES.unpack(got)
    spec = VECTOR_OPS.get(fields["op"])
    lines = [f"{op_name(fields['op'])} scale={fields['scale']} shift={fields['shift']} "
             f"slot={fields['slot']} relu={fields['relu']} q={fields['q']:#010x} "
             f"first={fields['first']} last={fields['last']}"]
    if exp["mask"] != res["mask"]:
        lines.append(f"mask: expected {exp['mask']:#x}, got {res['mask']:#x}")
    if spec is None:
        return "; ".join(lines)
    src, dst = ELEMENTS[spec.src], ELEMENTS[spec.dst]
    a = src.group(CFG, fields["a"], fields["slot"] % src.groups)
    b = lanes_from_word(fields["b"], N)
    el, gl = dst.unpack(CFG, exp["data"]), dst.unpack(CFG, res["data"])
    for j in range(len(el)):
        if el[j] != gl[j]:
            i = j % N
            lines.append(f"element {j} (lane {i}: a={int(a[i]) & 0xFFFF_FFFF:#x}, "
                         f"b={int(b[i]) & 0xFFFF_FFFF:#x}): expected {int(el[j]):#x}, "
                         f"got {int(gl[j]):#x}")
    return "; ".join(lines[:12])


class CommandDriver:
    """Drives `cmd` from a queue of (command or None, seed or None) items, and `reseed`/`seed`:
    an item's seed is pulsed on `reseed` in the first cycle the item is at the head (the
    command may be accepted in that same cycle); an item without a command is a reseed alone.
    `seed` carries random garbage while `reseed` is low. `sent` lists (cycle, command) of every
    accepted command."""

    def __init__(self, tb: TB, valid_prob: float):
        self.tb = tb
        dut = tb.dut
        self.valid, self.ready, self.payload = dut.cmd__valid, dut.cmd__ready, dut.cmd__payload
        self.seed, self.reseed = dut.seed, dut.reseed
        self.valid_prob = valid_prob
        self.queue: collections.deque = collections.deque()
        self.sent: list[tuple[int, int]] = []
        self.reseeds_with_command = 0
        self.valid.value = 0
        self.reseed.value = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        clk = self.tb.dut.clk
        rng = self.tb.rng
        while True:
            await RisingEdge(clk)
            self.reseed.value = 0
            self.seed.value = rng.getrandbits(32)
            offer = False
            if self.queue:
                cmd, seed = self.queue[0]
                if seed is not None:
                    self.reseed.value = 1
                    self.seed.value = seed
                    self.queue[0] = (cmd, None)
                    if cmd is None:
                        self.queue.popleft()
                offer = cmd is not None and rng.random() < self.valid_prob
                if offer:
                    self.payload.value = cmd
                    self.reseeds_with_command += seed is not None
            self.valid.value = int(offer)
            await ReadOnly()
            if offer and int(self.ready.value):
                self.sent.append((self.tb.cycle, self.queue.popleft()[0]))


class VectorTB(TB):
    """The unit with a command driver, a result sink, the expected results (computed at queue
    time with a `VectorUnitState` mirror), a scoreboard and a stream-rule watcher."""

    def __init__(self, dut, label: str):
        super().__init__(dut)
        # Each test draws from its own stream derived from the run's seed, so parametrised
        # variants do not repeat each other and one seed still replays everything.
        self.rng.seed(f"{self.seed}/{label}")
        self.errors: list[str] = []
        self.op_count = collections.Counter()
        self.state = VectorUnitState(CFG)          # the unit after reset
        self.commands = 0
        self.expected: list[tuple[int, int, int]] = []   # (command index, command, result)

    async def start_streams(self, valid_prob: float, ready_prob: float):
        # Streams start after reset: a beat offered during reset would be "accepted" and lost.
        await self.start()
        self.driver = CommandDriver(self, valid_prob)
        self.sink = StreamSink(self, "result", ready_prob, callback=self._score)
        cocotb.start_soon(self._watch())

    def send(self, cmd: int, reseed: int | None = None):
        """Queue a command (after a reseed with `reseed`, unless None)."""
        if reseed is not None:
            self.state.reseed(reseed)
        self.op_count[op_name(CMD.get(cmd, "op"))] += 1
        result = vector_execute(CFG, cmd, self.state)
        if result is not None:
            self.expected.append((self.commands, cmd, result))
        self.commands += 1
        self.driver.queue.append((cmd, reseed))

    def reseed_alone(self, seed: int):
        """A reseed pulse with no command."""
        self.state.reseed(seed)
        self.driver.queue.append((None, seed))

    def _score(self, cycle: int, got: int):
        k = len(self.sink.received) - 1
        if k >= len(self.expected):
            self.errors.append(f"cycle {cycle}: result {k} with no expected result")
            return
        index, cmd, expected = self.expected[k]
        if got != expected:
            self.errors.append(f"cycle {cycle}: result {k} (command {index}) differs: "
                               f"{describe_mismatch(cmd, expected, got)}")
        if index < len(self.driver.sent):
            sent_cycle = self.driver.sent[index][0]
            if cycle < sent_cycle + VECTOR_LATENCY:
                self.errors.append(f"cycle {cycle}: result {k} taken {cycle - sent_cycle} "
                                   f"cycle(s) after its command, expected at least "
                                   f"{VECTOR_LATENCY}")
        else:
            self.errors.append(f"cycle {cycle}: result {k} before its command {index} was "
                               f"accepted")

    async def _watch(self):
        held = None
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            valid, ready = int(dut.result__valid.value), int(dut.result__ready.value)
            cmd_ready = int(dut.cmd__ready.value)
            payload = dut.result__payload.value.to_unsigned()
            if cmd_ready != int(not valid or ready):
                self.errors.append(f"cycle {self.cycle}: cmd.ready={cmd_ready} with "
                                   f"result.valid={valid}, result.ready={ready}; expected "
                                   f"{int(not valid or ready)}")
            if held is not None and (not valid or payload != held):
                self.errors.append(f"cycle {self.cycle}: a stalled result changed: expected "
                                   f"valid=1 payload={held:#x}, got valid={valid} "
                                   f"payload={payload:#x}")
            held = payload if valid and not ready else None

    async def finish(self, max_cycles: int | None = None):
        """Wait until every expected result has arrived (or `max_cycles` pass), then assert no
        error and that the queue drained."""
        n = len(self.expected)
        max_cycles = max_cycles or 40 * self.commands + 100
        waited = 0
        while (len(self.sink.received) < n or self.driver.queue) and waited < max_cycles:
            await self.cycles(1)
            waited += 1
        await self.cycles(2)  # a few more cycles so that a spurious extra result is seen
        got = len(self.sink.received)
        assert got == n, (f"{got} results after {waited} cycles, expected {n} (from "
                          f"{self.commands} commands)")
        assert not self.errors, (f"{len(self.errors)} error(s), first ones:\n"
                                 + "\n".join(self.errors[:10]))
        self.log.info("ops checked: %s", dict(self.op_count))

    def results_of(self, name: str) -> list[int]:
        """The expected result words of op `name` (for coverage checks)."""
        return [RES.unpack(r)["data"] for _, c, r in self.expected
                if CMD.get(c, "op") == vector_op_of(name).code]


# -- stimulus ----------------------------------------------------------------------------------

def random_lane(rng) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(EXTREMES)
    if r < 0.6:
        return rng.randint(-300, 300)
    return rng.randint(INT32_MIN, INT32_MAX)


def random_word(rng) -> int:
    return word_from_lanes(random_lane(rng) for _ in range(N))


def fp_word(lanes) -> int:
    return sum((int(x) & 0xFFFF_FFFF) << (32 * i) for i, x in enumerate(lanes))


def rand32(rng) -> int:
    return nx.random_fp32(rng)


def partner(rng, a: int, kind: int) -> int:
    """A b lane for a: random, near -a (cancellation), half an ulp of a (ties), or with an
    exponent that puts a * b at the flush threshold or at overflow."""
    if kind == 0:
        return rand32(rng)
    if kind == 1:
        return ((a ^ 0x8000_0000) + rng.randint(-2, 2)) & 0xFFFF_FFFF
    if kind == 2:
        e = max(1, ((a >> 23) & 0xFF) - 24 + rng.randint(-1, 1))
        return rng.getrandbits(1) << 31 | min(e, 254) << 23 | rng.choice((0, 0, 1, 0x7FFFFF))
    ea = (a >> 23) & 0xFF
    eb = max(1, min(254, rng.choice((254 - ea, 381 - ea)) + rng.randint(-1, 1)))
    return rng.getrandbits(1) << 31 | eb << 23 | rng.getrandbits(23)


def fp_pair(rng) -> tuple[int, int]:
    a = [rand32(rng) for _ in range(N)]
    kind = rng.randrange(4)
    return fp_word(a), fp_word(partner(rng, x, kind) for x in a)


def random_q(rng) -> int:
    r = rng.random()
    if r < 0.3:
        return rng.choice((0x3F80_0000, 0x4000_0000, 0x3E80_0000, 0xBF80_0000, 0x3F00_0000))
    return rand32(rng)


def conversion_word(rng, code: int) -> int:
    """An a word aimed at conversion `code`'s corner cases."""
    spec = VECTOR_OPS[code]
    if spec.src.name == "BF16":
        halves = [rng.choice((0x7F80, 0xFF80, 0x7FC0, 0xFF81, 0x0001, 0x8000, 0x0000, 0x3F80,
                              0x807F, 0x0080)) if rng.random() < 0.4 else rng.getrandbits(16)
                  for _ in range(2 * N)]
        return ELEMENTS[spec.src].pack(CFG, halves)
    if spec.src.name == "INT8":
        return ELEMENTS[spec.src].pack(CFG, [rng.choice((-128, 127, -1, 0, 1))
                                             if rng.random() < 0.4 else rng.randint(-128, 127)
                                             for _ in range(4 * N)])
    if spec.src.name == "INT32":
        return word_from_lanes(rng.choice(((1 << 24) + 1, (1 << 24) + 3, -(1 << 24) - 1,
                                           INT32_MAX, INT32_MIN, 0, -1, (1 << 25) + 2))
                               if rng.random() < 0.4 else random_lane(rng) for _ in range(N))
    lanes = []
    for _ in range(N):
        r = rng.random()
        if r < 0.3:      # integer ties x.5, and the saturation bounds
            lanes.append(int(nx.f32_bits(rng.randint(-300, 300) + 0.5)))
        elif r < 0.45:   # exact BF16 ties and near-ties
            lanes.append(rand32(rng) & 0xFFFF_0000 | rng.choice((0x8000, 0x7FFF, 0x8001)))
        else:
            lanes.append(rand32(rng))
    return fp_word(lanes)


def int_fields(rng) -> dict:
    """An integer op, REQUANT half of the time aimed at the int8 range and at ties."""
    if rng.random() < 0.5:
        op = rng.choice((VecOp.ADD, VecOp.MUL, VecOp.MAX, VecOp.RELU))
        return dict(op=op, a=random_word(rng), b=random_word(rng), scale=rng.randrange(1 << 16),
                    shift=rng.randrange(64))
    if rng.random() < 0.5:
        scale = rng.choice((1, 1, rng.randint(1, 255)))
        shift = rng.randint(0, 20)
        lanes = []
        for _ in range(N):
            target = rng.randint(-140, 140)
            frac = rng.choice((0, 1 << shift >> 1, rng.randrange(1 << shift)))
            lanes.append(max(INT32_MIN, min(INT32_MAX, ((target << shift) + frac) // scale)))
        a = word_from_lanes(lanes)
    else:
        scale = rng.choice((*SCALES, rng.randrange(1 << 16)))
        shift = rng.choice((*SHIFTS, rng.randrange(64)))
        a = random_word(rng)
    return dict(op=VecOp.REQUANT, a=a, b=random_word(rng), scale=scale, shift=shift)


def command(rng, **fields) -> int:
    """A packed command; the fields not given are random (the unit must ignore those its op
    does not read)."""
    base = dict(op=0, a=rng.getrandbits(CFG.word_bits), b=rng.getrandbits(CFG.word_bits),
                scale=rng.randrange(1 << 16), shift=rng.randrange(64), slot=rng.randrange(4),
                relu=rng.randrange(2), q=random_q(rng), first=rng.randrange(2),
                last=rng.randrange(2))
    base.update(fields)
    return CMD.pack(**base)


def queue_reduction(tb: VectorTB, rng, length: int, code: int | None = None,
                    interleave: float = 0.0) -> list[int]:
    """A reduction of `length` elements (first ... last), some other commands between its
    elements with probability `interleave` each; returns its a words."""
    code = rng.choice(REDUCTIONS) if code is None else code
    words = []
    for k in range(length):
        a, _ = fp_pair(rng)
        if k and rng.random() < 0.3:       # the negation of the previous word: cancellation
            a = fp_word(((int(x) & 0xFFFF_FFFF ^ 0x8000_0000) + rng.randint(-1, 1)) & 0xFFFF_FFFF
                        for x in lanes_from_word(words[-1], N))
        words.append(a)
        tb.send(command(rng, op=code, a=a, first=int(k == 0), last=int(k == length - 1)))
        if k < length - 1 and rng.random() < interleave:
            tb.send(random_cmd(rng, reduce=False))
    return words


def random_cmd(rng, reduce: bool = True) -> int:
    """One random command of any kind but a reduction element: integer ops, FP32 ops,
    conversions, undefined codes."""
    r = rng.random()
    if r < 0.3:
        return command(rng, **int_fields(rng))
    if r < 0.7:
        a, b = fp_pair(rng)
        return command(rng, op=rng.choice(FP_OPS), a=a, b=b)
    if r < 0.95:
        code = rng.choice(CONVERSIONS)
        return command(rng, op=code, a=conversion_word(rng, code),
                       q=rng.choice((0x3F80_0000, random_q(rng))))
    if reduce and r < 0.97:
        return command(rng, op=rng.choice(REDUCTIONS), a=fp_pair(rng)[0])   # random first/last
    return command(rng, op=rng.choice(UNDEFINED))


# -- tests -------------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize((("valid_prob", "ready_prob"), [(1.0, 0.5), (0.5, 1.0), (0.7, 0.6)]))
async def random_commands(dut, valid_prob: float, ready_prob: float):
    """Random commands of every op (undefined codes too, reduction sequences, stochastic
    conversions between reseeds) with random idle cycles and back-pressure, scoreboarded."""
    tb = VectorTB(dut, f"random-{valid_prob}-{ready_prob}")
    await tb.start_streams(valid_prob, ready_prob)
    rng = tb.rng
    # The first command after reset may continue the accumulator's reset value.
    tb.send(command(rng, op=REDUCTIONS[0], a=fp_pair(rng)[0], first=0, last=1))
    while tb.commands < 3000:
        r = rng.random()
        if r < 0.1:
            queue_reduction(tb, rng, rng.randint(1, 8), interleave=0.2)
        elif r < 0.18:
            tb.send(command(rng, op=SR, a=conversion_word(rng, SR)),
                    reseed=rng.getrandbits(32) if rng.random() < 0.3 else None)
        elif r < 0.2:
            tb.reseed_alone(rng.getrandbits(32))
        else:
            tb.send(random_cmd(rng))
    await tb.finish()
    missing = {op.name for op in VECTOR_OPS.values()} - set(tb.op_count)
    assert not missing, f"stimulus never issued {sorted(missing)} (seed {tb.seed})"
    results = np.array([[int(x) & 0xFFFF_FFFF for x in lanes_from_word(d, N)]
                        for d in tb.results_of("FADD") + tb.results_of("FMUL")])
    exps = (results >> 23) & 0xFF
    assert (results == nx.F32_NAN).any() and (exps == 0xFF).any() and (exps == 0).any(), \
        "FP results never reached NaN, infinity and zero"


def special_words(values: list[int]) -> list[int]:
    """`values` laid out N lanes per word (the last word padded with +0)."""
    padded = list(values) + [0] * (-len(values) % N)
    return [fp_word(padded[k:k + N]) for k in range(0, len(padded), N)]


@cocotb.test()
async def fp_specials(dut):
    """Every pair of FP_SPECIAL values through every binary FP32 op; every value through the
    unary ops and conversions with every special q; FAXPY over specials for a, q and b; all
    against the reference, with back-pressure. Checks that the results covered the canonical
    NaN, both infinities, both zeros and flushed results."""
    tb = VectorTB(dut, "specials")
    await tb.start_streams(0.9, 0.8)
    rng = tb.rng
    pairs = [(x, y) for x in FP_SPECIAL for y in FP_SPECIAL]
    a_words = special_words([x for x, _ in pairs])
    b_words = special_words([y for _, y in pairs])
    singles = special_words(FP_SPECIAL)
    for code in FP_OPS:
        if "q" in VECTOR_OPS[code].reads:
            continue
        for a, b in zip(a_words, b_words) if VECTOR_OPS[code].binary else zip(singles, singles):
            tb.send(command(rng, op=code, a=a, b=b))
    for q in FP_SPECIAL:
        for code in [c for c in FP_OPS if "q" in VECTOR_OPS[c].reads] + CONVERSIONS:
            words = singles if VECTOR_OPS[code].src.name == "FP32" \
                else [conversion_word(rng, code)]
            for k, a in enumerate(words):
                b = b_words[(k + FP_SPECIAL.index(q)) % len(b_words)]
                tb.send(command(rng, op=code, a=a, b=b, q=q, slot=rng.randrange(4)))
    for code in REDUCTIONS:
        for k, a in enumerate(singles):
            tb.send(command(rng, op=code, a=a, first=int(k == 0), last=int(k == len(singles) - 1)))
    await tb.finish()
    values = np.array([[int(x) & 0xFFFF_FFFF for x in lanes_from_word(d, N)]
                       for name in ("FADD", "FSUB", "FMUL", "FAXPY", "FSCALE")
                       for d in tb.results_of(name)]).ravel()
    for bits, what in ((nx.F32_NAN, "the canonical NaN"), (0x7F80_0000, "+Inf"),
                       (0xFF80_0000, "-Inf"), (0, "+0"), (0x8000_0000, "-0")):
        assert (values == bits).any(), f"no result was {what}"
    assert not ((values & 0x7F80_0000 == 0) & (values & 0x007F_FFFF != 0)).any(), \
        "a result was subnormal"


@cocotb.test()
@cocotb.parametrize((("valid_prob", "ready_prob"), [(1.0, 1.0), (0.6, 0.5)]))
async def reductions(dut, valid_prob: float, ready_prob: float):
    """FSUM and FMAXR sequences of 1..16 elements (some with other commands between their
    elements, which must leave the accumulator alone), cancellations between neighbours: one
    result each, at `last`, equal to numerics.fp32_sum / fp32_max_reduce of the words."""
    tb = VectorTB(dut, f"reductions-{valid_prob}-{ready_prob}")
    await tb.start_streams(valid_prob, ready_prob)
    rng = tb.rng
    literal = []
    for k in range(60):
        code = REDUCTIONS[k % len(REDUCTIONS)]
        words = queue_reduction(tb, rng, rng.randint(1, 16), code,
                                interleave=0.3 if k % 3 == 0 else 0.0)
        rows = np.array([[int(x) & 0xFFFF_FFFF for x in lanes_from_word(w, N)] for w in words])
        ref = nx.fp32_sum if VECTOR_OPS[code].name == "FSUM" else nx.fp32_max_reduce
        literal.append(fp_word(ref(rows)))
    await tb.finish()
    got = [RES.unpack(r)["data"] for _, c, r in tb.expected
           if VECTOR_OPS.get(CMD.get(c, "op")) and VECTOR_OPS[CMD.get(c, "op")].reduce]
    assert got == literal, "vector_execute's reductions differ from numerics' folds"


@cocotb.test()
@cocotb.parametrize((("valid_prob", "ready_prob"), [(1.0, 1.0), (0.7, 0.5)]))
async def stochastic_rounding(dut, valid_prob: float, ready_prob: float):
    """CVT_F32_BF16_SR streams (every slot) with reseeds: with the command in the same cycle
    (reseed first), alone, a seed whose lane 0 sum is 0, none for long runs; other commands
    between them leave the generator alone. Checked against numerics' generator run here."""
    tb = VectorTB(dut, f"stochastic-{valid_prob}-{ready_prob}")
    await tb.start_streams(valid_prob, ready_prob)
    rng = tb.rng
    states = nx.rng_seed_states(0, N)
    literal = []
    for k in range(400):
        seed = None
        r = rng.random()
        if k == 7:
            seed = (-nx.RNG_INCREMENT) % (1 << 32)
        elif r < 0.1:
            seed = rng.getrandbits(32)
        elif r < 0.13:
            seed = rng.getrandbits(32)
            tb.reseed_alone(seed)
            states = nx.rng_seed_states(seed, N)
            seed = None
        if seed is not None:
            states = nx.rng_seed_states(seed, N)
        a = conversion_word(rng, SR)
        slot = rng.randrange(4)
        tb.send(command(rng, op=SR, a=a, slot=slot), reseed=seed)
        states, rand = nx.rng_next(states)
        half = nx.bf16_from_f32_sr([int(x) & 0xFFFF_FFFF for x in lanes_from_word(a, N)], rand)
        literal.append(ELEMENTS[VECTOR_OPS[SR].dst].pack(CFG, half) << (16 * N * (slot % 2)))
        if rng.random() < 0.1:          # leaves the generator alone
            a, b = fp_pair(rng)
            tb.send(command(rng, op=rng.choice(FP_OPS), a=a, b=b))
    await tb.finish()
    assert tb.results_of("CVT_F32_BF16_SR") == literal
    assert tb.state.rng == states
    if valid_prob == 1.0:
        assert tb.driver.reseeds_with_command > 0, "no reseed came with its command's cycle"


# (a lane, scale, shift, relu, expected int8): ties round towards +infinity, then clamp.
ROUNDING_CASES = [
    (1, 1, 1, 0, 1), (-1, 1, 1, 0, 0), (3, 1, 1, 0, 2), (-3, 1, 1, 0, -1),
    (5, 1, 2, 0, 1), (6, 1, 2, 0, 2), (-6, 1, 2, 0, -1), (-5, 1, 2, 0, -1), (-7, 1, 2, 0, -2),
    (300, 3, 3, 0, 113), (-300, 3, 3, 0, -112),
    (255, 1, 1, 0, 127), (-257, 1, 1, 0, -128), (-259, 1, 1, 0, -128),
    (-5, 1, 0, 1, 0), (100, 1, 0, 1, 100), (-257, 1, 1, 1, 0),
    (INT32_MIN, 1, 31, 0, -1), (1 << 30, 1, 31, 0, 1), (-(1 << 30), 1, 31, 0, 0),
    (INT32_MIN, 65535, 46, 0, -2), (INT32_MIN, 65535, 47, 0, -1), (INT32_MAX, 65535, 63, 0, 0),
    (INT32_MAX, 0, 0, 0, 0), (INT32_MIN, 0, 5, 0, 0),
    (INT32_MAX, 65535, 0, 0, 127), (INT32_MIN, 65535, 0, 0, -128), (INT32_MIN, 65535, 0, 1, 0),
]


@cocotb.test()
async def directed_rounding(dut):
    """REQUANT ties, negative ties and clamps: each case in every lane and slot, against a
    literal table and the model, with back-pressure."""
    tb = VectorTB(dut, "rounding")
    await tb.start_streams(0.8, 0.7)
    literal = []
    for a, scale, shift, relu, q in ROUNDING_CASES:
        model = requantize_lane(a, scale, shift, relu)
        assert model == q, f"model gives {model} for {(a, scale, shift, relu)}, table says {q}"
        for slot in range(4):
            tb.send(command(tb.rng, op=VecOp.REQUANT, a=word_from_lanes([a] * N), scale=scale,
                            shift=shift, slot=slot, relu=relu))
            literal.append((a, scale, shift, relu, slot, q))
    await tb.finish()
    for (cycle, got), (a, scale, shift, relu, slot, q) in zip(tb.sink.received, literal):
        result = RES.unpack(got)
        expected_bytes = [0] * (4 * N)
        expected_bytes[slot * N:(slot + 1) * N] = [q] * N
        got_bytes = [int(x) for x in bytes_from_word(result["data"], 4 * N)]
        assert got_bytes == expected_bytes, (
            f"cycle {cycle}: REQUANT a={a} scale={scale} shift={shift} relu={relu} slot={slot}: "
            f"expected bytes {expected_bytes}, got {got_bytes}")
        assert result["mask"] == ((1 << N) - 1) << (slot * N), (
            f"cycle {cycle}: slot {slot} mask expected {((1 << N) - 1) << (slot * N):#x}, "
            f"got {result['mask']:#x}")


@cocotb.test()
async def full_throughput(dut):
    """With no idle cycles and no back-pressure: one command accepted per cycle, each result
    exactly VECTOR_LATENCY cycles later, n commands in vector_ideal_cycles(n) cycles; then a
    reduction of n elements: its one result VECTOR_LATENCY cycles after its last element."""
    tb = VectorTB(dut, "throughput")
    await tb.start_streams(1.0, 1.0)
    n = 64
    for _ in range(n):
        tb.send(random_cmd(tb.rng, reduce=False))
    await tb.finish()
    sent = [cycle for cycle, _ in tb.driver.sent]
    taken = [cycle for cycle, _ in tb.sink.received]
    for k in range(n):
        assert sent[k] == sent[0] + k, \
            f"command {k} accepted in cycle {sent[k]}, expected {sent[0] + k} (one per cycle)"
        assert taken[k] == sent[k] + VECTOR_LATENCY, (
            f"result {k} taken in cycle {taken[k]}, expected {sent[k] + VECTOR_LATENCY} "
            f"(command cycle {sent[k]} + latency {VECTOR_LATENCY})")
    span = taken[-1] - sent[0] + 1
    ideal = vector_ideal_cycles(n)
    assert span == ideal, f"{n} commands took {span} cycles, expected vector_ideal_cycles = {ideal}"
    queue_reduction(tb, tb.rng, n)
    await tb.finish()
    sent = [cycle for cycle, _ in tb.driver.sent[n:]]
    assert sent == list(range(sent[0], sent[0] + n)), "reduction elements not one per cycle"
    assert tb.sink.received[-1][0] == sent[-1] + VECTOR_LATENCY
