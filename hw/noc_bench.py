"""cocotb bench of `d1tile noc-stress --backend rtl`: drives a Verilator `RouterMesh` with the
same `NocTraffic` the model backend uses, and writes the statistics as JSON.

Environment: `D1TILE_CONFIG` (the TileConfig as JSON) and `D1TILE_NOC` (JSON: packets, rate,
seed, multicast, out, max_cycles). Part of the package so that it runs from an installed wheel.
"""

from __future__ import annotations

import dataclasses
import json
import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from d1tile.hw.testbench import TB
from d1tile.params import TileConfig
from d1tile.sim.noc import NocTraffic


@cocotb.test()
async def noc_stress(dut):
    cfg = TileConfig.from_json(os.environ["D1TILE_CONFIG"])
    spec = json.loads(os.environ["D1TILE_NOC"])
    traffic = NocTraffic(cfg, packets=spec["packets"], rate=spec["rate"], seed=spec["seed"],
                         multicast=spec.get("multicast", 0.0))
    tb = TB(dut)
    ports = {}
    for y in range(cfg.rows):
        for x in range(cfg.cols):
            inject = [getattr(dut, f"inject_{x}_{y}__{m}") for m in ("valid", "ready", "payload")]
            eject = [getattr(dut, f"eject_{x}_{y}__{m}") for m in ("valid", "ready", "payload")]
            inject[0].value = 0
            eject[1].value = 1      # the consumption assumption: nodes always take their flits
            ports[(x, y)] = (inject, eject)
    await tb.start()
    cycle = 0
    while not traffic.done and cycle < spec["max_cycles"]:
        await RisingEdge(dut.clk)
        offers = traffic.offers()
        for node, (inject, _) in ports.items():
            flit = offers.get(node)
            inject[0].value = int(flit is not None)
            if flit is not None:
                inject[2].value = flit
        await ReadOnly()
        accepted = {node for node, (inject, _) in ports.items()
                    if node in offers and int(inject[1].value)}
        ejected = {node: eject[2].value.to_unsigned() for node, (_, eject) in ports.items()
                   if int(eject[0].value)}
        traffic.step(cycle, accepted, ejected)
        cycle += 1
    stats = traffic.stats()
    if int(dut.misroute.value):
        stats.misdelivered += 1
    with open(spec["out"], "w") as f:
        json.dump(dataclasses.asdict(stats), f)
