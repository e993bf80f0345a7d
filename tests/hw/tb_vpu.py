"""cocotb bench of the vector engine (`d1tile.hw.vpu.VectorEngine`) on its node SRAM: Verilog top
`vpu_top` (tests/test_vpu.py::VpuTestTop), in lockstep with `VectorEngineModel` + `SRAMModel`.

Every cycle (vpu_lockstep.VpuLockstep): the bench drives the command interface (playing the
sequencer: a VEC started in the first idle cycle after a random gap, random garbage on `instr`
and the SETQ inputs when `start` is low) and the contention ports (node read ports 0, 1 and write
ports 0, 1, higher priority than the engine's; random requests held until granted, aimed at the
banks the engine is using), then compares in ReadOnly the engine's read requests (en, addr) on
ports 2 and 3, its write request (en, addr, data, mask) on write port 2, every port's grant,
`idle`, `busy`, and the contention read data, and clocks the models.

End results: every test writes the whole SRAM first (random words) and reads it all back at the
end through the contention ports; the words must equal the functional result (`execute_vec`
applied in Python, independent of the cycle model). Timing expectations come from
`d1tile.sim.vpu.vec_cycles`.

Environment: `D1TILE_CONFIG` (bench_config.py).
"""

from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.formats import VecOp
from d1tile.hw.testbench import TB
from d1tile.sim.isa import BINARY_VECOPS
from d1tile.sim.vpu import vec_cycles, vec_fields, vec_ideal_cycles
from vpu_lockstep import VpuLockstep, describe_vec, input_names, output_names, vec_word


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
        self.tb.log.info("%d cycles, %d VECs, %d elements; read stalls per port %s, write "
                         "stalls %s", self.ls.cycle, len(self.ls.runs), self.ls.model.elements,
                         self.ls.sram.read_stalls, self.ls.sram.write_stalls)

    def area(self) -> int:
        return self.cfg.bank_words - self.ls.scratch


@cocotb.test()
async def directed_timing(dut):
    """Every op, bfix on and off, several n, back to back with no gap and no contention, a, b
    and dst in different banks: each VEC is idle again exactly vec_cycles(n) cycles after its
    start (one element per cycle after a fixed start-up). Then the binary ops with a and b in
    one bank: vec_cycles(n, shared_bank=True)."""
    bench = await VpuBench.create(dut, "directed")
    cfg, ls = bench.cfg, bench.ls
    assert cfg.sram_banks >= 3, f"this test needs 3 banks, {cfg.name} has {cfg.sram_banks}"
    sizes = sorted({n for n in (1, 2, 3, 4, 5, 8, 17, 64, 255) if n <= bench.area()})
    expected = []
    for op in VecOp:
        for bfix in (0, 1):
            for n in sizes:
                out = (n + 3) // 4 if op == VecOp.REQUANT else n
                a = ls.data_words(0).start
                b = ls.data_words(1).start
                dst = ls.data_words(2).stop - out
                ls.queue_vec(vec_word(op, dst, a, b, n, bfix), ls.random_quant())
                expected.append(vec_cycles(n))
    # a and b in one bank: the bank's one read per cycle makes it two cycles per element.
    for op in sorted(BINARY_VECOPS):
        for n in sizes:
            half = bench.area() // 2
            if n <= half:
                dst = ls.data_words(2).start
                ls.queue_vec(vec_word(op, dst, 0, half, n), ls.random_quant())
                expected.append(vec_cycles(n, shared_bank=True))
    await bench.run()
    table = {}
    for run, want in zip(ls.runs, expected, strict=True):
        f = vec_fields(run["instr"])
        took = run["idle"] - run["start"]
        shared = f["vop"] in BINARY_VECOPS and f["b"] == bench.area() // 2
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
    bank into the next, a == b, and a destination in the operands' bank: exact results, the
    cycles as the model says."""
    bench = await VpuBench.create(dut, "banks")
    cfg, ls = bench.cfg, bench.ls
    bw = cfg.bank_words
    n = min(40, bw)
    edge = bw if cfg.sram_banks > 1 else 0
    cases = [
        vec_word(VecOp.ADD, 2 * bw % cfg.sram_words + 1, 0, n + 2, n),       # a, b same bank
        vec_word(VecOp.MUL, edge + bw // 2, edge - n // 2, edge - n // 2, n),  # a == b, crossing
        vec_word(VecOp.MAX, 3 * bw % cfg.sram_words, edge - 3, edge + 5, 12),  # crossing both
        vec_word(VecOp.REQUANT, edge - 2, edge - n - 2, 0, n),                 # dst crosses
        vec_word(VecOp.RELU, n, 0, 0, n),                                      # dst same bank
    ]
    for instr in cases:
        f = vec_fields(instr)
        assert f["a"] + f["n"] <= cfg.sram_words and f["b"] + f["n"] <= cfg.sram_words
        ls.queue_vec(instr, ls.random_quant(), ls.rng.randrange(3))
    # No contention writes: the ranges above ignore the scratch areas.
    await bench.run()
    for run in ls.runs:
        bench.tb.log.info("%s: %d cycles (vec_cycles %d)", describe_vec(run["instr"]),
                          run["idle"] - run["start"], vec_cycles(vec_fields(run["instr"])["n"]))
    await bench.finish()


@cocotb.test()
async def in_place(dut):
    """dst == a (every op), dst == b without bfix, REQUANT onto its own source: the element
    order of execute_vec, with contention on the reads."""
    bench = await VpuBench.create(dut, "in-place")
    ls = bench.ls
    ls.contention = (0.5, 0.3)
    rng = ls.rng
    for op in VecOp:
        n = rng.randint(1, min(30, bench.area() // 2))
        bank = rng.randrange(bench.cfg.sram_banks)
        a = ls.data_words(bank).start
        b = ls.data_words((bank + 1) % bench.cfg.sram_banks).stop - n
        ls.queue_vec(vec_word(op, a, a, b, n), ls.random_quant(), rng.randrange(4))
        if op in BINARY_VECOPS:
            ls.queue_vec(vec_word(op, b, a, b, n), ls.random_quant(), rng.randrange(4))
    await bench.run()
    await bench.finish()


@cocotb.test()
@cocotb.parametrize((("p_read", "p_write", "gap"), [(0.25, 0.25, 4), (0.8, 0.7, 1),
                                                    (0.5, 0.0, 0)]))
async def random_contention(dut, p_read: float, p_write: float, gap: int):
    """Random VECs (every op, bfix, sizes up to the bank's data area, operands sharing a bank a
    third of the time) with random contention at higher priority on every port, and a few
    `start` pulses while busy (outside the contract; ignored)."""
    bench = await VpuBench.create(dut, f"random-{p_read}-{p_write}-{gap}")
    ls = bench.ls
    ls.contention = (p_read, p_write)
    ls.start_while_busy = 0.02
    count = 40
    ops = list(VecOp) + [None] * (count - len(VecOp))   # every op at least once
    ls.rng.shuffle(ops)
    for op in ops:
        ls.queue_vec(ls.random_vec(max_n=64, op=op), ls.random_quant(), ls.rng.randint(0, gap))
    await bench.run()
    ops = {VecOp(vec_fields(r["instr"])["vop"]).name for r in ls.runs}
    assert len(ls.runs) == count and ops == {op.name for op in VecOp}, (
        f"stimulus ran {len(ls.runs)} VECs with ops {sorted(ops)}")
    if p_read:
        assert sum(ls.sram.read_stalls[2:]) > 0, "no engine read was ever refused"
    if p_write:
        assert ls.sram.write_stalls[2] > 0, "no engine write was ever refused"
    await bench.finish()
