"""cocotb bench of the vector unit (`d1tile.hw.vector.VectorUnit`, top `vector_unit`).

Every result is checked against the reference model (`d1tile.sim.vector.vector_execute`) by a
scoreboard that pairs the k-th result with the k-th accepted command. A watcher checks the
stream rules every cycle: `cmd.ready == ~result.valid | result.ready`, and a result that was
offered and not taken stays valid and unchanged. Timing expectations come from
`VECTOR_LATENCY` and `vector_ideal_cycles` in the reference model.
"""

from __future__ import annotations

import collections

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.formats import VecOp, bytes_from_word, lanes_from_word, word_from_lanes
from d1tile.hw.testbench import TB, StreamDriver, StreamSink
from d1tile.sim.vector import (INT32_MAX, INT32_MIN, VECTOR_LATENCY, requantize_lane,
                               vector_cmd_format, vector_execute, vector_ideal_cycles,
                               vector_result_format)


CFG = bench_config()
N = CFG.lanes
CMD = vector_cmd_format(CFG)
RES = vector_result_format(CFG)

EXTREMES = (INT32_MIN, INT32_MAX, -1, 0, 1)
SCALES = (0, 1, 65535)
SHIFTS = (0, 1, 31, 47, 63)


def op_name(op: int) -> str:
    try:
        return VecOp(op).name
    except ValueError:
        return f"undefined op {op}"


def describe_mismatch(cmd: int, expected: int, got: int) -> str:
    """What differs between two results, lane by lane (or byte by byte for REQUANT)."""
    fields = CMD.unpack(cmd)
    exp, res = RES.unpack(expected), RES.unpack(got)
    lines = [f"{op_name(fields['op'])} scale={fields['scale']} shift={fields['shift']} "
             f"slot={fields['slot']} relu={fields['relu']}"]
    if exp["mask"] != res["mask"]:
        lines.append(f"mask: expected {exp['mask']:#x}, got {res['mask']:#x}")
    a = lanes_from_word(fields["a"], N)
    b = lanes_from_word(fields["b"], N)
    if fields["op"] == VecOp.REQUANT:
        eb, gb = bytes_from_word(exp["data"], 4 * N), bytes_from_word(res["data"], 4 * N)
        for j in range(4 * N):
            if eb[j] != gb[j]:
                lines.append(f"byte {j} (a={a[j % N]}): expected {eb[j]}, got {gb[j]}")
    else:
        el, gl = lanes_from_word(exp["data"], N), lanes_from_word(res["data"], N)
        for i in range(N):
            if el[i] != gl[i]:
                lines.append(f"lane {i} (a={a[i]}, b={b[i]}): expected {el[i]}, got {gl[i]}")
    return "; ".join(lines)


class VectorTB(TB):
    """The unit with a command driver, a result sink, a scoreboard and a stream-rule watcher."""

    def __init__(self, dut, label: str):
        super().__init__(dut)
        # Each test draws from its own stream derived from the run's seed, so parametrised
        # variants do not repeat each other and one seed still replays everything.
        self.rng.seed(f"{self.seed}/{label}")
        self.errors: list[str] = []
        self.op_count = collections.Counter()

    async def start_streams(self, valid_prob: float, ready_prob: float):
        # Streams start after reset: a beat offered during reset would be "accepted" and lost.
        await self.start()
        self.driver = StreamDriver(self, "cmd", valid_prob)
        self.sink = StreamSink(self, "result", ready_prob, callback=self._score)
        cocotb.start_soon(self._watch())

    def send(self, cmd: int):
        self.op_count[op_name(CMD.get(cmd, "op"))] += 1
        self.driver.send(cmd)

    def _score(self, cycle: int, got: int):
        k = len(self.sink.received) - 1
        if k >= len(self.driver.sent):
            self.errors.append(f"cycle {cycle}: result {k} with no accepted command")
            return
        sent_cycle, cmd = self.driver.sent[k]
        expected = vector_execute(CFG, cmd)
        if got != expected:
            self.errors.append(f"cycle {cycle}: result {k} (command accepted in cycle "
                               f"{sent_cycle}) differs: {describe_mismatch(cmd, expected, got)}")
        if cycle < sent_cycle + VECTOR_LATENCY:
            self.errors.append(f"cycle {cycle}: result {k} taken {cycle - sent_cycle} cycle(s) "
                               f"after its command, expected at least {VECTOR_LATENCY}")

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

    async def finish(self, n: int, max_cycles: int):
        """Wait until `n` results have arrived (or `max_cycles` pass), then assert no error."""
        waited = 0
        while len(self.sink.received) < n and waited < max_cycles:
            await self.cycles(1)
            waited += 1
        await self.cycles(2)  # a few more cycles so that a spurious extra result is seen
        got = len(self.sink.received)
        assert got == n, f"{got} results after {waited} cycles, expected {n} (one per command)"
        assert not self.errors, (f"{len(self.errors)} error(s), first ones:\n"
                                 + "\n".join(self.errors[:10]))
        self.log.info("ops checked: %s", dict(self.op_count))


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


def random_requant(rng) -> dict:
    """REQUANT parameters and operand; half of them aimed at the int8 range and at ties, where
    rounding and clamping decide the result, the rest drawn from the extremes."""
    slot, relu = rng.randrange(4), rng.randrange(2)
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
    return dict(op=VecOp.REQUANT, a=a, b=random_word(rng), scale=scale, shift=shift, slot=slot,
                relu=relu)


def random_cmd(rng) -> int:
    r = rng.random()
    if r < 0.35:
        fields = random_requant(rng)
    else:
        # The other ops, and some undefined codes (5..7). Fields an op ignores are random too:
        # the unit must really ignore them.
        op = rng.choice((VecOp.ADD, VecOp.MUL, VecOp.MAX, VecOp.RELU)) if r < 0.9 \
            else rng.randint(5, 7)
        fields = dict(op=op, a=random_word(rng), b=random_word(rng),
                      scale=rng.randrange(1 << 16), shift=rng.randrange(64),
                      slot=rng.randrange(4), relu=rng.randrange(2))
    return CMD.pack(**fields)


# -- tests -------------------------------------------------------------------------------------

@cocotb.test()
@cocotb.parametrize((("valid_prob", "ready_prob"), [(1.0, 0.5), (0.5, 1.0), (0.7, 0.6)]))
async def random_commands(dut, valid_prob: float, ready_prob: float):
    """Random commands of every op with random idle cycles and back-pressure, scoreboarded."""
    tb = VectorTB(dut, f"random-{valid_prob}-{ready_prob}")
    await tb.start_streams(valid_prob, ready_prob)
    n = 1500
    for _ in range(n):
        tb.send(random_cmd(tb.rng))
    await tb.finish(n, max_cycles=40 * n)
    missing = {op.name for op in VecOp} - set(tb.op_count)
    assert not missing, f"stimulus never issued {sorted(missing)} (seed {tb.seed})"


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
            cmd = CMD.pack(op=VecOp.REQUANT, a=word_from_lanes([a] * N), b=random_word(tb.rng),
                           scale=scale, shift=shift, slot=slot, relu=relu)
            tb.send(cmd)
            literal.append((a, scale, shift, relu, slot, q))
    await tb.finish(len(literal), max_cycles=40 * len(literal))
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
    exactly VECTOR_LATENCY cycles later, n commands in vector_ideal_cycles(n) cycles."""
    tb = VectorTB(dut, "throughput")
    await tb.start_streams(1.0, 1.0)
    n = 64
    for _ in range(n):
        tb.send(random_cmd(tb.rng))
    await tb.finish(n, max_cycles=4 * n)
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
