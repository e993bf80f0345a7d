"""Cycle-exact model of the tile (`d1tile.hw.tile.Tile`): R x C `NodeModel`s, their routers in a
`MeshModel` whose east edge is the host port, driven through a run by the `HostDriver`.

`TileModel(cfg).run(tile_program)` returns the same `RunResult` as the Verilator tile
(`d1tile.hw.tile_run.run_rtl`): the cycle each DONE arrived, every read-back word and every
node's counters. Cycle 0 is the first cycle after reset.

A cycle: every node evaluates its outputs (and arbitrates its SRAM), the mesh moves flits
(DMA-in's readiness for the flit its router offers is combinational from that cycle's SRAM
grant), then every node takes its clock edge.

Speed without approximation: three fast paths, each exact by construction (the conditions are
checked, not assumed; `d1tile.sim.node` and `d1tile.sim.streams` list them):

* a node that rests (`NodeModel.rest`: asleep, blocked on its router's LOCAL input, or coasting
  through a MATMUL alone) is not stepped until its wake cycle or until its router wakes it;
* when every node rests, the mesh holds no flit and the host has nothing to send, nothing can
  happen before the earliest wake cycle: the run jumps there;
* when all that moves is steady streams of body flits (loading, read-back, long SENDs), the
  streams advance many cycles at once (`d1tile.sim.streams`).

The host driver accounts skipped cycles in one call (`HostDriver.end_cycles`), bounded so that
no hang can be detected inside them. The results, cycle numbers included, are those of stepping
every node in every cycle (`TileModel(cfg, fast=False)`), which the tests check.

Issue trace: `TileModel(cfg, trace=True)` records, per node, every instruction the node issues
as `(pc, cycle)`, in issue order (`issue_trace`, (x, y) -> list, that of the last `run`). `cycle`
is the cycle in which the instruction issued, in the time base of `RunResult.cycles` and
`NodeReport.done_cycle` (the run loop's cycle index). It is exact in both modes: an instruction
issues only in `NodeModel.tick`, which only `step` calls, and while `step` ticks the nodes
`TileModel.cycle` is still the cycle being stepped (the fast paths skip only cycles in which the
skipped nodes issue nothing). A compiler uses it to break a run's cycles down per layer.
"""

from __future__ import annotations

from d1tile.formats import NODE_STATUS, Port
from d1tile.params import TileConfig
from d1tile import isa
from d1tile.sim import streams
from d1tile.sim.host import DEFAULT_HANG_CYCLES, HostDriver, RunResult
from d1tile.isa import FaultCode, Opcode
from d1tile.sim.node import NodeModel
from d1tile.sim.router import MeshModel
from d1tile.sim.sequencer import SeqEvent, SeqState


__all__ = ["TileModel", "describe_node", "hang_report"]

_LOCAL = int(Port.LOCAL)
_ISSUE = SeqEvent.ISSUE
_MAX_BACKOFF = 8


class TileModel:
    """The tile, cycle-exact (module docstring). `fast=False` turns the fast paths off (every
    node stepped in every cycle): slower, with the same results, which the tests check.

    `trace=True` records the issue trace (module docstring): after `run`, `issue_trace` is a dict
    (x, y) -> [(pc, cycle), ...], one entry per issued instruction in issue order. Without it,
    `issue_trace` is None.

    `timeline=True` (which implies `trace=True` and `fast=False`: every node is stepped in
    every cycle) records, per node, every change of its sequencer event and its engines' busy
    flags: after `run`, `timeline` is (x, y) -> [(cycle, state), ...] (`NodeModel.timeline`;
    `d1tile.sim.trace` turns it into a Chrome / Perfetto trace), up to each node's DONE
    (`timeline_ends()`: the cycle after it; `timeline_counters()`: its counters then)."""

    def __init__(self, cfg: TileConfig, *, fast: bool = True, trace: bool = False,
                 timeline: bool = False):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self.cfg = cfg
        self.want_timeline = timeline
        trace = trace or timeline
        fast = fast and not timeline
        self.timeline: dict | None = None
        self.fast = fast
        self.mesh = MeshModel(cfg, host_edge=True)
        self.nodes = {(x, y): NodeModel(cfg, x, y)
                      for y in range(cfg.rows) for x in range(cfg.cols)}
        self.cycle = 0
        self._plan = [(node, model, self.mesh.routers[node]) for node, model in self.nodes.items()]
        self._all_resting = False
        self.trace = trace
        self.issue_trace: dict | None = None
        if trace:
            self._new_trace()

    def _new_trace(self) -> None:
        """Fresh, empty issue-trace lists, shared by `issue_trace` and the nodes that fill them."""
        self.issue_trace = {}
        for node, model in self.nodes.items():
            model.issue_trace = self.issue_trace[node] = []
            model.trace_clock = self
        if self.want_timeline:
            self.timeline = {}
            for node, model in self.nodes.items():
                model.timeline = self.timeline[node] = []
                model.packets_out, model.packets_in, model._head_in = [], [], None
                model._timeline_state = None
                model.timeline_end = model.timeline_counters = None

    def timeline_ends(self) -> dict:
        """(x, y) -> the cycle after the node's DONE (the run's end for a node that has none)."""
        return {node: model.timeline_end if model.timeline_end is not None else self.cycle
                for node, model in self.nodes.items()}

    def packets(self) -> dict:
        """(x, y) -> (packets out, packets in) of the node up to its DONE (`NodeModel`'s
        `packets_out`, `packets_in`; needs `timeline=True`): what the trace's flow arrows are
        drawn from (`d1tile.sim.trace.packet_flows`)."""
        return {node: (model.packets_out or [], model.packets_in or [])
                for node, model in self.nodes.items()}

    def timeline_counters(self) -> dict:
        """(x, y) -> {counter: value} at the node's DONE (what the timeline's spans add up to)."""
        from d1tile.formats import COUNTER_NAMES
        return {node: dict(zip(COUNTER_NAMES, model.timeline_counters or model.counters))
                for node, model in self.nodes.items()}

    def step(self, host_offers: dict) -> tuple[set, dict, bool]:
        """One cycle. `host_offers`: row -> flit the host presents. Returns the rows whose flit
        was taken, the flits the host received (row -> flit) and whether anything happened."""
        t = self.cycle
        offers, ready, counters = {}, {}, {}
        stepped = []
        activity = False
        for node, model, router in self._plan:
            if model.resting:
                if t < model.wake and not ((router.count or model.blocked)
                                           and model.woken_by(router)):
                    if not activity and model.active_at(t):
                        activity = True
                    continue
                model.resume(t)
            offer = model.outputs()
            if offer is not None:
                offers[node] = offer
            if model.wants_counters:
                counters[node] = model.counter_values(router)
            if router.count:
                router.evaluate()
                flit = router.local_out()
                if flit is not None:
                    ready[node] = model.eject_ready(flit)
            if not activity and (model.grants or model.decision.event == _ISSUE):
                activity = True
            stepped.append((node, model))
        accepted, ejected = self.mesh.step(offers, ready, host_offers)
        activity = activity or self.mesh.moved > 0
        t += 1
        resting = len(self._plan) - len(stepped)
        for node, model in stepped:
            model.tick(node in accepted, ejected.get(node), counters.get(node))
            if self.fast and model.rest(t, self.mesh.routers[node]):
                resting += 1
        self.cycle = t      # only now: the issue trace reads the stepped cycle during the ticks
        self._all_resting = resting == len(self._plan)
        return self.mesh.host_accepted, self.mesh.host_ejected, activity

    def skippable(self) -> int:
        """Cycles that can pass now without any node, router or host link doing anything but
        what the resting nodes account for themselves: up to the earliest wake cycle when every
        node rests and the mesh is empty (the host must have nothing to send), else 0."""
        if not self._all_resting or self.mesh.in_flight:
            return 0
        return min(model.wake for model in self.nodes.values()) - self.cycle

    def skip(self, n: int) -> int | None:
        """Let `n` cycles (at most `skippable()`) pass at once; returns the last of them with any
        activity (a resting node's SRAM grant), or None."""
        if not 0 <= n <= self.skippable():
            raise ValueError(f"cannot skip {n} cycles at cycle {self.cycle} "
                             f"(skippable: {self.skippable()})")
        first, end = self.cycle, self.cycle + n
        last = None
        for model in self.nodes.values():
            active = model.last_activity(first, end)
            if active is not None and (last is None or active > last):
                last = active
        self.mesh.cycle += n
        self.cycle = end
        return last

    def settle(self) -> None:
        """Bring every resting node to the current cycle (its registers and counters as if it
        had been stepped); the run ends with this."""
        for model in self.nodes.values():
            model.resume(self.cycle)
        self._all_resting = False

    def statuses(self) -> dict:
        """Every node's `NODE_STATUS` word and sync counters in the current cycle (for hang
        reports: it evaluates the cycle's outputs, so the run cannot go on afterwards)."""
        self.settle()
        return {node: (model.status(self.mesh.routers[node]), list(model.seq.counters))
                for node, model in self.nodes.items()}

    def run(self, tile_program, *, hang_cycles: int = DEFAULT_HANG_CYCLES,
            max_cycles: int = 50_000_000, on_stream=None) -> RunResult:
        """Run a program from load to read-back. `on_stream(node, addr, words, cycle)` is called
        for every packet a node streams to the host as it arrives (progress, for instance)."""
        if tile_program.cfg != self.cfg:
            raise ValueError("the program was built for another configuration")
        driver = HostDriver(self.cfg, tile_program, hang_cycles=hang_cycles)
        driver.on_stream = on_stream
        if self.trace:
            self._new_trace()
        rows = range(self.cfg.rows)
        cycle = self.cycle
        next_try, backoff = cycle, 1     # when to look for steady streams next
        while not driver.finished and not driver.hung and cycle < max_cycles:
            offers = {row: driver.offer(row) for row in rows}
            if self._all_resting and not any(flit is not None for flit in offers.values()):
                n = min(self.skippable(), driver.skippable(), max_cycles - cycle)
                if n > 0:
                    last = self.skip(n)
                    driver.end_cycles(cycle, n, last)
                    cycle += n
                    continue
            if self.fast and cycle >= next_try:
                found = streams.find_window(self, driver,
                                            min(driver.skippable(), max_cycles - cycle))
                if found is not None:
                    m, steady = found
                    streams.advance(self, driver, m, steady)
                    cycle += m
                    backoff = 1
                    continue
                # Looking costs about as much as a cycle: look less often while it fails.
                backoff = min(2 * backoff, _MAX_BACKOFF)
                next_try = cycle + backoff
            host_accepted, host_ejected, activity = self.step(offers)
            for row in host_accepted:
                driver.accepted(row)
            for row, flit in host_ejected.items():
                driver.eject(row, flit, cycle)
            driver.end_cycle(cycle, activity)
            cycle += 1
        report = None
        if driver.hung:
            report = hang_report(self.cfg, tile_program, self.statuses())
        else:
            self.settle()
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
