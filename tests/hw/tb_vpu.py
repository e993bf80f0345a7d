"""cocotb bench of the vector engine (`d1tile.hw.vpu.VectorEngine`) on its node SRAM: Verilog top
`vpu_top` (tests/test_vpu.py::VpuTestTop), in lockstep with `VectorEngineModel` + `SRAMModel`.

Every cycle (vpu_lockstep.VpuLockstep): the bench drives the command interface (playing the
sequencer: a VEC, FVEC or FCVT started in the first idle cycle after a random gap, with random
SETQ values, SETR q and, for some, a reseed with a random seed; random garbage on `instr`, SETQ,
q, seed and reseed when `start` is low) and the contention ports (node read ports 0, 1 and write
ports 0, 1, higher priority than the engine's; random requests held until granted, aimed at the
banks the engine is using), then compares in ReadOnly the engine's read requests (en, addr) on
ports 2 and 3, its write request (en, addr, data, mask) on write port 2, every port's grant,
`idle`, `busy`, and the contention read data, and clocks the models.

End results: every test writes the whole SRAM first (random int32 and FP32 corner-case words)
and reads it all back at the end through the contention ports; the words must equal the
functional result (`execute_vec` applied in Python with its own `VectorUnitState`, independent
of the cycle model), and the generator states of the model and of that mirror must agree.
Timing expectations come from `d1tile.sim.vpu.vec_cycles`.

Environment: `D1TILE_CONFIG` (bench_config.py).
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile import numerics
from d1tile.hw.testbench import TB
from d1tile.sim.vpu import vec_cycles, vec_fields, vec_ideal_cycles
from d1tile.vector_ops import VECTOR_OPS, vector_op_of
from vpu_lockstep import (VpuLockstep, describe_vec, input_names, max_elements, op_name,
                          output_names, vector_word)


BINARY = sorted(code for code, op in VECTOR_OPS.items() if op.binary)


class VpuBench:
    """TB + lockstep harness + the DUT's handles."""

    def __init__(self, dut, label: str):
        self.tb = TB(dut)
        # Each test draws from its own stream derived from the run's seed.
        self.tb.rng.seed(f"{self.tb.seed}/{label}")
        self.cfg = bench_config()
        self.ls = VpuLockstep(self.cfg, self.tb.rng, log=self.tb.log.info)
        self.ins = {name: getattr(dut, name) for name in input_names()}
        self.outs = [(name, getattr(dut, name)) for name in output_names()]
        for handle in self.ins.values():
            handle.value = 0
        self.clk = dut.clk

    @classmethod
    async def create(cls, dut, label: str) -> "VpuBench":
        bench = cls(dut, label)
        await bench.tb.start()
        await bench.ls.fill(bench.step)
        return bench

    async def step(self):
        await RisingEdge(self.clk)
        for name, value in self.ls.inputs().items():
            self.ins[name].value = value
        await ReadOnly()
        self.ls.check({name: int(handle.value) for name, handle in self.outs})

    async def run(self, max_cycles: int = 200_000):
        await self.ls.run(self.step, max_cycles)

    async def finish(self):
        await self.ls.readback(self.step)
        self.ls.final_check()
        self.tb.log.info("%d cycles, %d instructions, %d elements; read stalls per port %s, "
                         "write stalls %s", self.ls.cycle, len(self.ls.runs),
                         self.ls.model.elements, self.ls.sram.read_stalls,
                         self.ls.sram.write_stalls)

    def area(self) -> int:
        return self.cfg.bank_words - self.ls.scratch


@cocotb.test()
async def directed_timing(dut):
    """Every op of the table (VEC, FVEC, FCVT), bfix on and off, several n, back to back with no
    gap and no contention, a, b and dst in different banks: each instruction is idle again
    exactly vec_cycles(n) cycles after its start (one element per cycle after a fixed start-up,
    reductions and conversions alike). Then the binary ops with a and b in one bank:
    vec_cycles(n, shared_bank=True)."""
    bench = await VpuBench.create(dut, "directed")
    cfg, ls = bench.cfg, bench.ls
    assert cfg.sram_banks >= 3, f"this test needs 3 banks, {cfg.name} has {cfg.sram_banks}"
    expected = []
    for code, spec in sorted(VECTOR_OPS.items()):
        sizes = sorted({n for n in (1, 2, 3, 4, 5, 8, 17, 64, 127, 255)
                        if n <= min(bench.area(), max_elements(code))})
        for bfix in (0, 1):
            for n in sizes:
                a = ls.data_words(0).start
                b = ls.data_words(1).start
                dst = ls.data_words(2).stop - spec.dest_words(n)
                ls.queue_random(vector_word(code, dst, a, b, n, bfix))
                expected.append(vec_cycles(n))
    # a and b in one bank: the bank's one read per cycle makes it two cycles per element.
    half = bench.area() // 2
    for code in BINARY:
        for n in (1, 2, 5, 17, 64):
            if n <= half:
                ls.queue_random(vector_word(code, ls.data_words(2).start, 0, half, n))
                expected.append(vec_cycles(n, shared_bank=True))
    await bench.run()
    table = {}
    for run, want in zip(ls.runs, expected, strict=True):
        f = vec_fields(run["instr"])
        took = run["idle"] - run["start"]
        shared = f["binary"] and f["b"] == half and f["a"] == 0
        table[(f["n"], "shared bank" if shared else "")] = took
        assert took == want, (
            f"{describe_vec(run['instr'])} started in cycle {run['start']}: idle again after "
            f"{took} cycles, expected vec_cycles = {want}")
    bench.tb.log.info("cycles start -> idle by n (ideal n): %s",
                      {k: (t, vec_ideal_cycles(k[0])) for k, t in sorted(table.items())})
    await bench.finish()


@cocotb.test()
async def shared_banks_and_bank_crossing(dut):
    """a and b in the same bank (the b port loses every tie to a), ranges that cross from one
    bank into the next, a == b, and destinations in the operands' bank, for integer, FP32,
    reduction and packing / unpacking ops: exact results, the cycles as the model says."""
    bench = await VpuBench.create(dut, "banks")
    cfg, ls = bench.cfg, bench.ls
    bw = cfg.bank_words
    n = min(40, bw)
    edge = bw if cfg.sram_banks > 1 else 0
    code = lambda name: vector_op_of(name).code   # noqa: E731
    cases = [
        vector_word(code("ADD"), 2 * bw % cfg.sram_words + 1, 0, n + 2, n),    # a, b same bank
        vector_word(code("FAXPY"), 2 * bw % cfg.sram_words + 1, 0, n + 2, n),
        vector_word(code("MUL"), edge + bw // 2, edge - n // 2, edge - n // 2, n),  # a == b
        vector_word(code("FSUB"), edge + bw // 2, edge - n // 2, edge - n // 2, n),  # x - x
        vector_word(code("FMAX"), 3 * bw % cfg.sram_words, edge - 3, edge + 5, 12),  # crossing
        vector_word(code("REQUANT"), edge - 2, edge - n - 2, 0, n),             # dst crosses
        vector_word(code("CVT_F32_BF16_SR"), edge - 2, edge - n - 2, 0, n),
        vector_word(code("CVT_I8_F32"), edge - n // 2, edge - 2, 0, 13),        # a crosses
        vector_word(code("FSUM"), edge - 1, edge - n // 2, 0, n),               # a crosses
        vector_word(code("RELU"), n, 0, 0, n),                                  # dst same bank
        vector_word(code("FRELU"), n, 0, 0, n),
    ]
    for instr in cases:
        f = vec_fields(instr)
        assert f["a"] + f["n"] <= cfg.sram_words and f["b"] + f["n"] <= cfg.sram_words
        ls.queue_random(instr, ls.rng.randrange(3))
    # No contention writes: the ranges above ignore the scratch areas.
    await bench.run()
    for run in ls.runs:
        bench.tb.log.info("%s: %d cycles (vec_cycles %d)", describe_vec(run["instr"]),
                          run["idle"] - run["start"], vec_cycles(vec_fields(run["instr"])["n"]))
    await bench.finish()


@cocotb.test()
async def in_place(dut):
    """dst == a for every op that reads one source word per element (packing ops included:
    their destination runs behind their source), dst == b for the binary ops without bfix, and
    reductions whose destination is one of their sources: the element order of execute_vec,
    with contention on the reads."""
    bench = await VpuBench.create(dut, "in-place")
    ls = bench.ls
    ls.contention = (0.5, 0.3)
    rng = ls.rng
    for code, spec in sorted(VECTOR_OPS.items()):
        n = rng.randint(1, min(30, bench.area() // 2))
        bank = rng.randrange(bench.cfg.sram_banks)
        a = ls.data_words(bank).start
        b = ls.data_words((bank + 1) % bench.cfg.sram_banks).stop - n
        if spec.reduce:
            ls.queue_random(vector_word(code, a + rng.randrange(n), a, b, n), rng.randrange(4))
        elif spec.read_shift == 0:
            ls.queue_random(vector_word(code, a, a, b, n), rng.randrange(4))
        if spec.binary:
            ls.queue_random(vector_word(code, b, a, b, n), rng.randrange(4))
    await bench.run()
    await bench.finish()


@cocotb.test()
async def stochastic_rounding_and_reseeds(dut):
    """Stochastic conversions in runs with and without reseeds (the generator carries on from
    instruction to instruction otherwise), between other ops, a reseed whose lane 0 sum is 0,
    and reseeds on instructions that use no randomness; the generator's lane states must equal
    execute_vec's mirror at the end."""
    bench = await VpuBench.create(dut, "stochastic")
    ls = bench.ls
    rng = ls.rng
    ls.contention = (0.3, 0.2)
    sr = vector_op_of("CVT_F32_BF16_SR").code
    zero_lane0 = (-numerics.RNG_INCREMENT) % (1 << 32)
    for k in range(24):
        code = sr if k % 3 != 2 else ls.random_code()
        reseed = zero_lane0 if k == 4 else rng.choice((None, None, rng.getrandbits(32), 0))
        ls.queue_vec(ls.random_vec(max_n=40, op=code), ls.random_quant(), rng.randrange(3),
                     rng.getrandbits(32), reseed)
    await bench.run()
    await bench.finish()


@cocotb.test()
@cocotb.parametrize((("p_read", "p_write", "gap"), [(0.25, 0.25, 4), (0.8, 0.7, 1),
                                                    (0.5, 0.0, 0)]))
async def random_contention(dut, p_read: float, p_write: float, gap: int):
    """Random instructions (every op of the table, some undefined codes, bfix, sizes up to the
    bank's data area, operands sharing a bank a third of the time, random q and reseeds) with
    random contention at higher priority on every port, and a few `start` pulses while busy
    (outside the contract; ignored, their reseed too)."""
    bench = await VpuBench.create(dut, f"random-{p_read}-{p_write}-{gap}")
    ls = bench.ls
    ls.contention = (p_read, p_write)
    ls.start_while_busy = 0.02
    count = 60
    ops = sorted(VECTOR_OPS) + [None] * (count - len(VECTOR_OPS))   # every op at least once
    ls.rng.shuffle(ops)
    for op in ops:
        ls.queue_random(ls.random_vec(max_n=64, op=op), ls.rng.randint(0, gap))
    await bench.run()
    ran = {op_name(vec_fields(r["instr"])["code"]) for r in ls.runs}
    assert len(ls.runs) == count and ran >= {op.name for op in VECTOR_OPS.values()}, (
        f"stimulus ran {len(ls.runs)} instructions with ops {sorted(ran)}")
    if p_read:
        assert sum(ls.sram.read_stalls[2:]) > 0, "no engine read was ever refused"
    if p_write:
        assert ls.sram.write_stalls[2] > 0, "no engine write was ever refused"
    await bench.finish()
