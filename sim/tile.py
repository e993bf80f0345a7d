"""Cycle-exact model of the tile (`d1tile.hw.tile.Tile`): R x C `NodeModel`s, their routers in a
`MeshModel` whose east edge is the host port, driven through a run by the `HostDriver`.

`TileModel(cfg).run(tile_program)` returns the same `RunResult` as the Verilator tile
(`d1tile.hw.tile_run.run_rtl`): the cycle each DONE arrived, every read-back word and every
node's counters. Cycle 0 is the first cycle after reset.

A cycle: every node evaluates its outputs (and arbitrates its SRAM), the mesh moves flits
(DMA-in's readiness for the flit its router offers is combinational from that cycle's SRAM
grant), then every node takes its clock edge.
"""

from __future__ import annotations

from d1tile.formats import NODE_STATUS, Port
from d1tile.params import TileConfig
from d1tile.sim import isa
from d1tile.sim.host import DEFAULT_HANG_CYCLES, HostDriver, RunResult
from d1tile.sim.isa import FaultCode, Opcode
from d1tile.sim.node import NodeModel
from d1tile.sim.router import MeshModel
from d1tile.sim.sequencer import SeqEvent, SeqState


__all__ = ["TileModel", "describe_node", "hang_report"]

_LOCAL = int(Port.LOCAL)


class TileModel:
    def __init__(self, cfg: TileConfig):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self.cfg = cfg
        self.mesh = MeshModel(cfg, host_edge=True)
        self.nodes = {(x, y): NodeModel(cfg, x, y)
                      for y in range(cfg.rows) for x in range(cfg.cols)}
        self.cycle = 0

    def step(self, host_offers: dict) -> tuple[set, dict, bool]:
        """One cycle. `host_offers`: row -> flit the host presents. Returns the rows whose flit
        was taken, the flits the host received (row -> flit) and whether anything happened."""
        mesh, nodes = self.mesh, self.nodes
        offers, ready, counters = {}, {}, {}
        activity = False
        for node, model in nodes.items():
            offer = model.outputs()
            if offer is not None:
                offers[node] = offer
            router = mesh.routers[node]
            counters[node] = model.counter_values(router)
            flit = mesh.eject_flit(node)
            ready[node] = model.eject_ready(flit) if flit is not None else True
            activity = activity or model.grants or model.decision.event == SeqEvent.ISSUE
        accepted, ejected = mesh.step(offers, ready, host_offers)
        activity = activity or mesh.moved > 0
        for node, model in nodes.items():
            flit_taken = ejected.get(node)
            model.tick(node in accepted, flit_taken, counters[node])
        self.cycle += 1
        return mesh.host_accepted, mesh.host_ejected, activity

    def statuses(self) -> dict:
        """Every node's `NODE_STATUS` word and sync counters in the current cycle (for hang
        reports: it evaluates the cycle's outputs, so the run cannot go on afterwards)."""
        return {node: (model.status(self.mesh.routers[node]), list(model.seq.counters))
                for node, model in self.nodes.items()}

    def run(self, tile_program, *, hang_cycles: int = DEFAULT_HANG_CYCLES,
            max_cycles: int = 50_000_000) -> RunResult:
        if tile_program.cfg != self.cfg:
            raise ValueError("the program was built for another configuration")
        driver = HostDriver(self.cfg, tile_program, hang_cycles=hang_cycles)
        rows = range(self.cfg.rows)
        cycle = 0
        while not driver.finished and not driver.hung and cycle < max_cycles:
            host_accepted, host_ejected, activity = self.step(
                {row: driver.offer(row) for row in rows})
            for row in host_accepted:
                driver.accepted(row)
            for row, flit in host_ejected.items():
                driver.eject(row, flit, cycle)
            driver.end_cycle(cycle, activity)
            cycle += 1
        report = None
        if driver.hung:
            report = hang_report(self.cfg, tile_program, self.statuses())
        return driver.result(report, misroute=self.mesh.misroute)


def describe_node(cfg: TileConfig, node, status: int, counters: list, program: list) -> str:
    """One line saying what a node is doing, from its `NODE_STATUS` word and sync counters."""
    s = NODE_STATUS.unpack(status)
    state = SeqState(s["state"])
    text = f"node {node}: {state.name}"
    if s["fault"]:
        text += f" (fault {FaultCode(s['fault']).name})"
    if state in (SeqState.RUN, SeqState.HALTING):
        pc = s["pc"]
        word = program[pc] if pc < len(program) else 0
        instr = isa.decode(word)
        text += f", pc {pc}: {instr}"
        event = SeqEvent(s["event"])
        if event == SeqEvent.STALL_WAIT and instr.op == Opcode.WAIT:
            c = instr.counter
            text += f", waits on counter {c} ({counters[c]} < {instr.value})"
        elif event == SeqEvent.STALL_UNIT:
            text += f", waits for its unit ({isa.UNIT_OF[instr.op].name}) to finish"
        elif event == SeqEvent.STALL_HAZARD:
            text += ", waits on an SRAM hazard with a running unit"
        elif event == SeqEvent.STALL_HALT:
            text += ", waits for the units to finish before halting"
    busy = [name for name in ("matrix", "vector", "dma_out", "dma_in") if s[f"busy_{name}"]]
    if busy:
        text += f"; busy: {', '.join(busy)}"
    if s["out_blocked"]:
        text += "; DMA-out blocked: the router's LOCAL input does not take its flit"
    if s["in_blocked"]:
        text += "; DMA-in does not take the flit its router's LOCAL output offers"
    return text


def hang_report(cfg: TileConfig, tile_program, statuses: dict) -> str:
    """The nodes that are not stopped, what each waits on."""
    lines = []
    for node in tile_program.nodes:
        status, counters = statuses[node]
        if NODE_STATUS.get(status, "state") != SeqState.STOPPED:
            lines.append(describe_node(cfg, node, status, counters, tile_program.words_of(node)))
    return "\n".join(lines) or "every node has stopped (packets still expected by the host)"
