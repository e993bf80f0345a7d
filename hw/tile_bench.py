"""cocotb bench that runs a `TileProgram` on the Verilator `Tile` through the `HostDriver` (the
same driver the cycle model uses) and writes the `RunResult` as JSON.

Environment: `D1TILE_TILE_RUNS` (JSON: a list of {program (path to a `TileImage` JSON), out,
hang_cycles, max_cycles}); the programs run one after another, each after a reset. Part of the
package so that it runs from an installed wheel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb.clock import Clock

from d1tile.hw.testbench import CLOCK_PERIOD_NS, TB
from d1tile.isa import SYNC_COUNTERS
from d1tile.sim.host import HostDriver, TileImage
from d1tile.sim.tile import hang_report


@cocotb.test()
async def tile_runs(dut):
    TB(dut)   # logs the seed
    Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
    for index, spec in enumerate(json.loads(os.environ["D1TILE_TILE_RUNS"])):
        await run_one(dut, spec, clear=index > 0)


def clear_memories(dut, cfg):
    """Zero every SRAM bank and instruction memory, so that each run starts from a tile as
    fresh as the one after power-up (reset clears registers, not memories); the cycle model
    starts every run from zeroed memories too."""
    for y in range(cfg.rows):
        for x in range(cfg.cols):
            node = getattr(dut, f"node_{x}_{y}")
            for bank in range(cfg.sram_banks):
                words = getattr(node.sram, f"bank{bank}")
                for i in range(cfg.bank_words):
                    words[i].value = 0
            imem = node.seq.imem
            for i in range(cfg.imem_words):
                imem[i].value = 0


async def reset(dut, cycles: int = 2):
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def run_one(dut, spec, clear: bool):
    await RisingEdge(dut.clk)      # leave the previous run's ReadOnly phase
    tp = TileImage.from_json(Path(spec["program"]).read_text())
    if clear:
        clear_memories(dut, tp.cfg)
    cfg = tp.cfg
    driver = HostDriver(cfg, tp, hang_cycles=spec["hang_cycles"])
    links = []
    for y in range(cfg.rows):
        host_in = [getattr(dut, f"host_in_{y}__{m}") for m in ("valid", "ready", "payload")]
        host_out = [getattr(dut, f"host_out_{y}__{m}") for m in ("valid", "ready", "payload")]
        host_in[0].value = 0
        host_out[1].value = 1       # the host always takes what the tile sends it
        links.append((host_in, host_out))
    activity = dut.activity
    await reset(dut)
    cycle = 0
    offers = [None] * cfg.rows
    while not driver.finished and not driver.hung and cycle < spec["max_cycles"]:
        await RisingEdge(dut.clk)
        for row, (host_in, _) in enumerate(links):
            flit = driver.offer(row)
            if flit != offers[row]:
                host_in[0].value = int(flit is not None)
                if flit is not None:
                    host_in[2].value = flit
                offers[row] = flit
        await ReadOnly()
        for row, (host_in, host_out) in enumerate(links):
            if offers[row] is not None and int(host_in[1].value):
                driver.accepted(row)
            if int(host_out[0].value):
                driver.eject(row, host_out[2].value.to_unsigned(), cycle)
        driver.end_cycle(cycle, bool(int(activity.value)))
        cycle += 1
    report = None
    if driver.hung:
        # The status of the cycle after the last one, as the model reports it.
        await RisingEdge(dut.clk)
        await ReadOnly()
        statuses = {}
        for node in tp.nodes:
            x, y = node
            status = getattr(dut, f"status_{x}_{y}").value.to_unsigned()
            raw = getattr(dut, f"sync_counters_{x}_{y}").value.to_unsigned()
            statuses[node] = (status, [(raw >> (16 * i)) & 0xFFFF for i in range(SYNC_COUNTERS)])
        report = hang_report(cfg, tp, statuses)
    result = driver.result(report, misroute=bool(int(dut.misroute.value)))
    Path(spec["out"]).write_text(json.dumps(result.comparable()))
