"""cocotb benches of the router (`Router`, Verilog top `router`: tests `router_*`) and of a mesh
of routers (`RouterMesh`, top `router_mesh`: tests `mesh_*`), in lockstep with the cycle-exact
models `RouterModel` and `MeshModel`.

Lockstep: every cycle, in `ReadOnly`, a checker reads what the testbench presents to the DUT
(each input's valid/payload, each output's ready), compares every signal the DUT drives (each
input's ready, each output's valid and, when valid, payload; the mesh's `misroute`) with the
model's values for the same cycle, then steps the model with the same inputs. So each flit's
acceptance and delivery cycle is checked, not only the order. The first difference fails the test
with the cycle, the signal, the expected and the observed value.

Independently of the model, a `PacketScoreboard` checks that every packet arrives whole, once,
at the right port, in order per (source, sink) pair, never interleaved with another packet;
timing checks use the documented `unloaded_latency`. Multicasts (`Multicast` ROW / COLUMN) are
expected once at every port (router) or node (mesh) `route_mask` / `receivers` names; in the
mesh, a multicast that turns back takes another path than the unicasts to the same node
(`path_key`), so each (source, path) is its own stream for the order check.

Drivers and sinks (d1tile.hw.testbench) insert random idle cycles and random back-pressure from
the TB's seeded rng. Environment: `D1TILE_CONFIG` (bench_config.py); `D1TILE_ROUTER_AT` = "x,y"
of the single router in its mesh configuration.
"""

from __future__ import annotations

import os

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from bench_config import bench_config
from d1tile.formats import Multicast, Port, flit_format
from d1tile.hw.testbench import TB, StreamDriver, StreamSink
from d1tile.sim.router import (
    PORTS, RR_RESET, MeshModel, PacketScoreboard, RouterModel, describe_flit, hops, make_packet,
    path_key, receivers, route_mask, route_xy, rr_grant, unloaded_latency,
)


class LockstepError(AssertionError):
    """The DUT and the cycle model disagree."""


def _name(port: Port) -> str:
    return port.name.lower()


def _flit_of(handles) -> int | None:
    valid, _, payload = handles
    return payload.value.to_unsigned() if int(valid.value) else None


def _stream(dut, prefix):
    return (getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready"),
            getattr(dut, f"{prefix}__payload"))


class Lockstep:
    """Base of the two checkers: runs `_cycle()` in ReadOnly of every cycle and keeps the first
    mismatch (raised from the checker task and again by `check()`)."""

    def __init__(self, tb: TB, cfg):
        self.tb, self.cfg = tb, cfg
        self.error: str | None = None
        self.cycles = 0
        cocotb.start_soon(self._run())

    async def _run(self):
        clk = self.tb.dut.clk
        while True:
            await RisingEdge(clk)
            await ReadOnly()
            if self.error is None:
                self._cycle(self.tb.cycle)
                self.cycles += 1

    def mismatch(self, cycle, what, expected, got):
        if self.error is None:
            self.error = (f"cycle {cycle}: {what}: model expects {expected}, DUT has {got} "
                          f"(seed {self.tb.seed})")
            raise LockstepError(self.error)

    def check(self):
        if self.error is not None:
            raise LockstepError(self.error)

    def flit(self, flit):
        return describe_flit(self.cfg, flit)


class RouterLockstep(Lockstep):
    """Single router against `RouterModel`. `transfers[o]` lists (cycle, flit, input) for every
    flit output o sent, with the input the model granted."""

    def __init__(self, tb, cfg, model: RouterModel):
        self.model = model
        self.ins = [_stream(tb.dut, f"in_{_name(p)}") for p in PORTS]
        self.outs = [_stream(tb.dut, f"out_{_name(p)}") for p in PORTS]
        self.transfers = [[] for _ in PORTS]
        super().__init__(tb, cfg)

    def _cycle(self, cycle):
        model = self.model
        model.evaluate()
        offers = [_flit_of(h) for h in self.ins]
        out_ready = [bool(int(h[1].value)) for h in self.outs]
        for p in PORTS:
            got = bool(int(self.ins[p][1].value))
            if got != model.ready[p]:
                self.mismatch(cycle, f"in_{_name(p)}.ready", model.ready[p], got)
            got = _flit_of(self.outs[p])
            expected = model.out[p] if model.valid(p, out_ready) else None
            if got != expected:
                self.mismatch(cycle, f"out_{_name(p)}", self.flit(expected), self.flit(got))
        grants = list(model.grant)
        _, sent = model.step(offers, out_ready)
        for o in PORTS:
            if sent[o] is not None:
                self.transfers[o].append((cycle, sent[o], Port(grants[o])))


class MeshLockstep(Lockstep):
    """Mesh against `MeshModel`: every node's inject ready, eject valid/payload, and misroute."""

    def __init__(self, tb, cfg, model: MeshModel):
        self.model = model
        self.nodes = [(x, y) for y in range(cfg.rows) for x in range(cfg.cols)]
        self.inject = {n: _stream(tb.dut, f"inject_{n[0]}_{n[1]}") for n in self.nodes}
        self.eject = {n: _stream(tb.dut, f"eject_{n[0]}_{n[1]}") for n in self.nodes}
        self.misroute = tb.dut.misroute
        super().__init__(tb, cfg)

    def _cycle(self, cycle):
        model = self.model
        offers, eject_ready = {}, {}
        for node in self.nodes:
            flit = _flit_of(self.inject[node])
            if flit is not None:
                offers[node] = flit
            eject_ready[node] = bool(int(self.eject[node][1].value))
            got = bool(int(self.inject[node][1].value))
            if got != model.inject_ready(node):
                self.mismatch(cycle, f"inject_{node[0]}_{node[1]}.ready", model.inject_ready(node), got)
            got = _flit_of(self.eject[node])
            expected = model.eject_flit(node)
            if got != expected:
                self.mismatch(cycle, f"eject_{node[0]}_{node[1]}", self.flit(expected), self.flit(got))
        got = bool(int(self.misroute.value))
        if got != model.misroute:
            self.mismatch(cycle, "misroute", f"{model.misroute} {model.misroutes[:1]}", got)
        model.step(offers, eject_ready)


async def wait_until(tb: TB, lockstep: Lockstep, done, bound: int, report):
    """Wait (checking the lockstep every cycle) until `done()`; fail with `report()` after
    `bound` cycles."""
    for _ in range(bound):
        if done():
            return
        await tb.cycles(1)
        lockstep.check()
    if not done():
        raise AssertionError(f"not drained after {bound} cycles (seed {tb.seed}); stuck:\n{report()}")


# -- single router ---------------------------------------------------------------------------

def router_position() -> tuple[int, int]:
    x, y = (int(v) for v in os.environ.get("D1TILE_ROUTER_AT", "1,1").split(","))
    return x, y


def dst_for(cfg, x, y, port: Port, rng) -> tuple[int, int]:
    """A random destination that router (x, y) sends to `port`, anywhere in the coordinate range
    (including the host column and unused codes, which the router routes like any other)."""
    top = (1 << cfg.coord_bits) - 1
    if port == Port.LOCAL:
        return x, y
    if port == Port.EAST:
        return rng.randint(x + 1, top), rng.randint(0, top)
    if port == Port.WEST:
        return rng.randint(0, x - 1), rng.randint(0, top)
    if port == Port.SOUTH:
        return x, rng.randint(y + 1, top)
    return x, rng.randint(0, y - 1)


class RouterBench:
    """A started single-router bench: TB, model, lockstep, one driver per input and one sink per
    output (feeding the scoreboard, sink = output port, unless `scoreboard` is False).

    `valid_prob`/`ready_prob`: a probability for every port, or "random" for one drawn per port
    from the TB's rng in 0.3..1.0."""

    def __init__(self, tb, valid_prob=1.0, ready_prob=1.0, scoreboard=True):
        self.tb = tb
        self.cfg = cfg = bench_config()
        self.x, self.y = router_position()
        self.model = RouterModel(cfg, self.x, self.y)
        self.lockstep = RouterLockstep(tb, cfg, self.model)
        self.board = PacketScoreboard(cfg)
        rates = {name: [tb.rng.uniform(0.3, 1.0) if prob == "random" else prob for _ in PORTS]
                 for name, prob in (("valid", valid_prob), ("ready", ready_prob))}
        tb.log.info("valid rates %s, ready rates %s", rates["valid"], rates["ready"])
        self.drivers = [StreamDriver(tb, f"in_{_name(p)}", rates["valid"][p]) for p in PORTS]
        self.sinks = [StreamSink(tb, f"out_{_name(p)}", rates["ready"][p],
                                 callback=(lambda c, f, p=p: self.board.receive(p, f, c))
                                 if scoreboard else None)
                      for p in PORTS]
        self.seq = [0] * len(PORTS)

    @classmethod
    async def start(cls, dut, **kwargs):
        tb = TB(dut)
        await tb.start()
        return cls(tb, **kwargs)

    def send(self, src: Port, dst, length: int, mc: int = 0, last: int = 0) -> list[int]:
        """Queue a packet on input `src` for node `dst` (a multicast with `mc`, `last`);
        returns its flits."""
        flits = make_packet(self.cfg, dst, int(src), self.seq[src], length, self.tb.rng, mc, last)
        self.seq[src] += 1
        for out in route_mask(self.x, self.y, *dst, mc, last, src):
            self.board.expect(int(src), out, flits)
        for flit in flits:
            self.drivers[src].send(flit)
        return flits

    async def drain(self, bound=None):
        queued = sum(len(d.queue) for d in self.drivers)
        bound = bound or 200 + 40 * queued
        await wait_until(self.tb, self.lockstep,
                         lambda: self.board.done and all(d.idle for d in self.drivers), bound,
                         lambda: self.board.describe_pending() + "\n" + self.model.describe())
        # A few idle cycles so that the lockstep also sees the router settle.
        await self.tb.cycles(3)
        self.lockstep.check()
        assert self.board.delivered_packets == self.board.sent_packets


@cocotb.test()
async def router_directed_routing(dut):
    """Each input to each output, one packet at a time on an idle router: right port, and the
    head appears `unloaded_latency(0)` cycles after acceptance, the body one flit per cycle."""
    bench = await RouterBench.start(dut)
    rng = bench.tb.rng
    for src in PORTS:
        for out in PORTS:
            dst = dst_for(bench.cfg, bench.x, bench.y, out, rng)
            length = 1 + (src + out) % 3
            flits = bench.send(src, dst, length)
            start = len(bench.drivers[src].sent)
            got_before = len(bench.sinks[out].received)
            await bench.drain()
            accepted = bench.drivers[src].sent[start][0]
            received = bench.sinks[out].received[got_before:]
            assert [f for _, f in received] == flits, \
                f"{src.name}->{out.name}: expected {len(flits)} flits on out_{_name(out)}, got {received}"
            expected_cycles = [accepted + unloaded_latency(0) + k for k in range(length)]
            assert [c for c, _ in received] == expected_cycles, \
                f"{src.name}->{out.name}: delivery cycles {[c for c, _ in received]}, " \
                f"expected {expected_cycles}"


@cocotb.test()
async def router_arbitration(dut):
    """LOCAL, NORTH, SOUTH and WEST all stream one-flit packets to EAST: they leave in
    round-robin order, starting after the reset pointer, whatever the back-pressure."""
    await check_round_robin(dut, 1)


@cocotb.test()
async def router_arbitration_packets(dut):
    """As `router_arbitration`, with 3-flit packets: whole packets take turns."""
    await check_round_robin(dut, 3)


async def check_round_robin(dut, length):
    bench = await RouterBench.start(dut, ready_prob=0.6)
    competitors = [Port.LOCAL, Port.NORTH, Port.SOUTH, Port.WEST]
    per_input = 6
    for _ in range(per_input):
        for src in competitors:
            bench.send(src, dst_for(bench.cfg, bench.x, bench.y, Port.EAST, bench.tb.rng), length)
    await bench.drain()
    # Expected order from the documented rule: first requester after the pointer; the pointer
    # moves to each winner. Every competitor requests until its last packet.
    mask = sum(1 << p for p in competitors)
    expected, pointer = [], int(RR_RESET)
    for _ in range(per_input * len(competitors)):
        pointer = rr_grant()[pointer][mask]
        expected.append(Port(pointer))
    heads = [src for _, flit, src in bench.lockstep.transfers[Port.EAST]
             if flit_format(bench.cfg).get(flit, "head")]
    assert heads == expected, f"packet order on out_east {[p.name for p in heads]}, " \
                              f"expected round robin {[p.name for p in expected]}"


@cocotb.test()
async def router_long_packet(dut):
    """Long packets stream at one flit per cycle through two disjoint input/output pairs at once:
    flit k of a packet whose head was accepted in cycle t leaves in cycle t + 1 + k."""
    bench = await RouterBench.start(dut)
    length = 4 * bench.cfg.router_fifo_depth + 3
    pairs = [(Port.WEST, Port.EAST), (Port.LOCAL, Port.SOUTH), (Port.NORTH, Port.LOCAL)]
    packets = {src: bench.send(src, dst_for(bench.cfg, bench.x, bench.y, out, bench.tb.rng), length)
               for src, out in pairs}
    await bench.drain()
    for src, out in pairs:
        sent = bench.drivers[src].sent
        assert [c for c, _ in sent] == list(range(sent[0][0], sent[0][0] + length)), \
            f"in_{_name(src)} did not accept one flit per cycle: {[c for c, _ in sent]}"
        received = bench.sinks[out].received
        expected = [sent[0][0] + unloaded_latency(0) + k for k in range(length)]
        assert [c for c, _ in received] == expected, \
            f"out_{_name(out)} delivery cycles {[c for c, _ in received]}, expected {expected}"
        assert [f for _, f in received] == packets[src]


@cocotb.test()
async def router_wormhole(dut):
    """All five inputs send multi-flit packets to one output, with random gaps and back-pressure:
    every packet leaves whole (the scoreboard rejects interleaving), in order per input."""
    bench = await RouterBench.start(dut, valid_prob=0.7, ready_prob=0.5)
    rng = bench.tb.rng
    for _ in range(6):
        for src in PORTS:
            bench.send(src, dst_for(bench.cfg, bench.x, bench.y, Port.EAST, rng), rng.randint(2, 6))
    await bench.drain()
    # Independent of the scoreboard: between a head and its tail, out_east carries one input.
    fmt = flit_format(bench.cfg)
    owner = None
    for cycle, flit, src in bench.lockstep.transfers[Port.EAST]:
        if fmt.get(flit, "head"):
            assert owner is None, f"cycle {cycle}: head from {src.name} inside a packet of {owner}"
            owner = src
        assert src == owner, f"cycle {cycle}: flit from {src.name} inside a packet of {owner}"
        if fmt.get(flit, "tail"):
            owner = None


@cocotb.test()
async def router_random_traffic(dut):
    """Random packets (1..5 flits) from every input to random destinations over the whole
    coordinate range, random valid gaps and random ready on every output."""
    bench = await RouterBench.start(dut, valid_prob="random", ready_prob="random")
    rng = bench.tb.rng
    top = (1 << bench.cfg.coord_bits) - 1
    for _ in range(150):
        for src in PORTS:
            # a third multicasts, every `mc` code and `last` (forks, travel, malformed ones)
            mc, last = (rng.randrange(4), rng.randint(0, top)) if rng.random() < 0.35 else (0, 0)
            bench.send(src, (rng.randint(0, top), rng.randint(0, top)), rng.randint(1, 5),
                       mc, last)
    await bench.drain()
    bench.tb.log.info("random traffic: %d packets, %d flits, %d cycles in lockstep",
                      bench.board.delivered_packets, bench.board.delivered_flits,
                      bench.lockstep.cycles)


@cocotb.test()
async def router_multicast(dut):
    """Multicasts fork into LOCAL and one link, the two copies in the same cycle: at the
    first receiver and when coming in moving east (south) inside the run; only LOCAL at the
    last receiver; travel without a copy towards a first receiver behind. A fork waits, holding
    nothing, while either of its outputs is busy or not ready: here LOCAL streams a long
    unicast first, then the fork goes."""
    bench = await RouterBench.start(dut, ready_prob=0.7)
    cfg, x, y = bench.cfg, bench.x, bench.y
    row, col = Multicast.ROW, Multicast.COLUMN
    cases = [  # (input, dst, mc, last, outputs)
        (Port.LOCAL, (x, y), row, x + 1, {Port.LOCAL, Port.EAST}),
        (Port.WEST, (x - 1, y), row, x + 1, {Port.LOCAL, Port.EAST}),
        (Port.WEST, (x - 1, y), row, x, {Port.LOCAL}),
        (Port.EAST, (x - 1, y), row, x + 1, {Port.WEST}),          # travels back to x - 1
        (Port.LOCAL, (x + 1, y), row, x + 1, {Port.EAST}),
        (Port.NORTH, (x, y - 1), col, y + 1, {Port.LOCAL, Port.SOUTH}),
        (Port.SOUTH, (x, y - 1), col, y + 1, {Port.NORTH}),
        (Port.WEST, (x, y), col, y + 1, {Port.LOCAL, Port.SOUTH}),  # turns into its column
        (Port.WEST, (x + 1, 0), col, y, {Port.EAST}),               # another column
    ]
    for src, dst, mc, last, outputs in cases:
        assert set(route_mask(x, y, *dst, mc, last, src)) == outputs, (src, dst, mc, last)
        flits = bench.send(src, dst, 3, mc, last)
        before = {o: len(bench.sinks[o].received) for o in PORTS}
        await bench.drain()
        for o in PORTS:
            got = [f for _, f in bench.sinks[o].received[before[o]:]]
            assert got == (flits if o in outputs else []), f"{src.name} {dst} {mc.name}: out_{_name(o)}"
        cycles = [[c for c, _ in bench.sinks[o].received[before[o]:]] for o in outputs]
        assert all(c == cycles[0] for c in cycles), f"copies left in different cycles: {cycles}"
    # LOCAL busy with a long unicast from NORTH while a fork from WEST waits for it.
    long = bench.send(Port.NORTH, (x, y), 4 * cfg.router_fifo_depth)
    fork = bench.send(Port.WEST, (x - 1, y), 2, row, x + 1)
    await bench.drain()
    local = [f for _, f in bench.sinks[Port.LOCAL].received[-len(long) - len(fork):]]
    assert local in (long + fork, fork + long), "packets interleaved on out_local"


@cocotb.test()
async def router_bad_input(dut):
    """The documented behaviour on broken packets, in lockstep with the model: a HEAD flit that
    arrives before the previous packet's tail follows the open packet; a body flit with no open
    packet is never granted and blocks its input."""
    bench = await RouterBench.start(dut, scoreboard=False)
    cfg, x, y = bench.cfg, bench.x, bench.y
    fmt = flit_format(cfg)
    east, south = dst_for(cfg, x, y, Port.EAST, bench.tb.rng), dst_for(cfg, x, y, Port.SOUTH, bench.tb.rng)
    # WEST: a head without tail to EAST, then a one-flit packet meant for SOUTH.
    stray = [fmt.pack(head=1, tail=0, dst_x=east[0], dst_y=east[1], payload=1),
             fmt.pack(head=1, tail=1, dst_x=south[0], dst_y=south[1], payload=2)]
    # NORTH: an orphan body flit, then a good packet that it blocks.
    orphan = [fmt.pack(head=0, tail=0, dst_x=x, dst_y=y, payload=3),
              fmt.pack(head=1, tail=1, dst_x=x, dst_y=y, payload=4)]
    for flit in stray:
        bench.drivers[Port.WEST].send(flit)
    for flit in orphan:
        bench.drivers[Port.NORTH].send(flit)
    await bench.tb.cycles(10 + cfg.router_fifo_depth)
    bench.lockstep.check()
    east_flits = [f for _, f in bench.sinks[Port.EAST].received]
    assert east_flits == stray, f"out_east carried {[hex(f) for f in east_flits]}, " \
                                f"expected both WEST flits {[hex(f) for f in stray]}"
    assert not bench.sinks[Port.SOUTH].received and not bench.sinks[Port.LOCAL].received
    assert len(bench.drivers[Port.NORTH].sent) == 2 and bench.drivers[Port.NORTH].idle


# -- mesh ------------------------------------------------------------------------------------

class MeshBench:
    """A started mesh bench: TB, model, lockstep, a driver per inject port (always offering when
    it has a flit queued) and a sink per eject port."""

    def __init__(self, tb, ready_prob=1.0):
        self.tb = tb
        self.cfg = cfg = bench_config()
        self.model = MeshModel(cfg)
        self.lockstep = MeshLockstep(tb, cfg, self.model)
        self.board = PacketScoreboard(cfg)
        self.nodes = self.lockstep.nodes
        self.drivers = {n: StreamDriver(tb, f"inject_{n[0]}_{n[1]}") for n in self.nodes}
        # `ready_prob`: one probability for every eject port, or "random": one per port in
        # 0.3..1.0 from the TB's rng.
        self.ready_prob = {n: tb.rng.uniform(0.3, 1.0) if ready_prob == "random" else ready_prob
                           for n in self.nodes}
        self.sinks = {n: StreamSink(tb, f"eject_{n[0]}_{n[1]}", self.ready_prob[n],
                                    callback=lambda c, f, n=n: self.board.receive(n, f, c))
                      for n in self.nodes}
        self.seq = {n: 0 for n in self.nodes}
        self.streams = {}

    @classmethod
    async def start(cls, dut, **kwargs):
        tb = TB(dut)
        await tb.start()
        return cls(tb, **kwargs)

    def node_id(self, node):
        return node[1] * self.cfg.cols + node[0]

    def send(self, src, dst, length, mc=0, last=0):
        # One stream (trace `src`) per source and path: a multicast that turns back may pass
        # or be passed by the source's unicasts to the same node.
        stream = self.streams.setdefault((src, path_key(src, dst, mc, last)), len(self.streams))
        flits = make_packet(self.cfg, dst, stream, self.seq[src], length, self.tb.rng, mc, last)
        self.seq[src] += 1
        for node in receivers(src, dst, mc, last):
            self.board.expect(stream, node, flits)
        for flit in flits:
            self.drivers[src].send(flit)
        return flits

    def report(self):
        queues = ", ".join(f"{n}: {len(d.queue)}" for n, d in self.drivers.items() if d.queue)
        return (f"{self.board.describe_pending()}\nflits still queued at sources: {queues or '-'}\n"
                f"model state:\n{self.model.describe()}")

    async def drain(self, bound):
        await wait_until(self.tb, self.lockstep,
                         lambda: self.board.done and all(d.idle for d in self.drivers.values()),
                         bound, self.report)
        await self.tb.cycles(3)
        self.lockstep.check()
        assert not int(self.tb.dut.misroute.value), "misroute went high"
        assert self.board.delivered_packets == self.board.sent_packets


@cocotb.test()
async def mesh_random_traffic(dut):
    """All-to-all random traffic at full injection (every source offers whenever it has a
    flit), packets of 1..4 flits, a third of them multicasts to random runs of the source's row
    or column, random ejection back-pressure; lockstep with MeshModel."""
    bench = await MeshBench.start(dut, ready_prob="random")
    rng = bench.tb.rng
    nodes = bench.nodes
    cfg = bench.cfg
    flits = 0
    for _ in range(100):
        for src in nodes:
            length = rng.randint(1, 4)
            if rng.random() < 0.3:      # a multicast along the source's row or column
                if rng.random() < 0.5:
                    first = rng.randrange(cfg.cols)
                    dst, mc, last = (first, src[1]), Multicast.ROW, rng.randint(first, cfg.cols - 1)
                else:
                    first = rng.randrange(cfg.rows)
                    dst, mc, last = (src[0], first), Multicast.COLUMN, rng.randint(first, cfg.rows - 1)
                bench.send(src, dst, length, mc, last)
                flits += length * len(receivers(src, dst, mc, last))
            else:
                bench.send(src, rng.choice(nodes), length)
                flits += length
    # Bound: every flit crosses the slowest ejection port alone, with generous slack; XY routing
    # is deadlock-free, so missing it means something is stuck.
    bound = int(flits / min(bench.ready_prob.values())) + 500
    await bench.drain(bound)
    bench.tb.log.info("mesh random traffic: %d packets, %d flits, %d cycles in lockstep",
                      bench.board.delivered_packets, bench.board.delivered_flits,
                      bench.lockstep.cycles)


@cocotb.test()
async def mesh_unloaded_latency(dut):
    """One packet at a time between (src, dst) pairs on an idle mesh: the head reaches the
    destination's eject port `unloaded_latency(hops(src, dst))` cycles after its acceptance,
    the rest of the packet one flit per cycle after it."""
    bench = await MeshBench.start(dut)
    cfg = bench.cfg
    far = (cfg.cols - 1, cfg.rows - 1)
    pairs = [((0, 0), far), (far, (0, 0)), ((0, cfg.rows - 1), (cfg.cols - 1, 0)),
             ((cfg.cols - 1, 0), (0, cfg.rows - 1)), ((cfg.cols // 2, cfg.rows // 2),) * 2,
             ((0, 0), (cfg.cols - 1, 0)), ((0, 0), (0, cfg.rows - 1)), (far, (0, far[1]))]
    for src, dst in pairs:
        length = 3
        flits = bench.send(src, dst, length)
        start, got = len(bench.drivers[src].sent), len(bench.sinks[dst].received)
        await bench.drain(100)
        accepted = bench.drivers[src].sent[start][0]
        received = bench.sinks[dst].received[got:]
        assert [f for _, f in received] == flits
        expected = [accepted + unloaded_latency(hops(src, dst)) + k for k in range(length)]
        assert [c for c, _ in received] == expected, \
            f"{src}->{dst} ({hops(src, dst)} hops): delivery cycles {[c for c, _ in received]}, " \
            f"expected {expected}"
