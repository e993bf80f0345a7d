"""Random mesh traffic and its accounting, for `d1tile noc-stress`.

`NocTraffic` is one deterministic traffic source and checker, used unchanged by both backends
(the `MeshModel` and the Verilator `RouterMesh`), so with the same seed both see the same offers
and must report the same statistics.

Traffic: every node generates packets of 1..4 flits (uniform) for uniformly random destinations
(itself included) until `packets` packets exist in total; with `multicast` = f, a fraction f of
them are multicasts (`Multicast` ROW or COLUMN, one of each half the time) from the source along
its own row or column, to a random run of its nodes (`d1tile.sim.router.receivers`; the source
may be before, inside or after the run). `rate` is the offered load in flits per
node per cycle: each cycle a node generates a packet with probability rate / 2.5 (the mean
length). Generated packets wait in an unbounded source queue and are offered to the node's
inject port one flit per cycle; ejection ports are always ready.

Accounting, per copy (source, sequence number, receiving node; a unicast has one copy, a
multicast one per receiver): delivered once, whole and in order at its node; `lost` = injected
but never delivered, `duplicated` = delivered more than once,
`reordered` = delivered before a packet the same source had injected earlier for the same
destination on the same path (`d1tile.sim.router.path_key`: a multicast that turns back towards
a first receiver before its source takes another path than a unicast would), `broken` = flits
of another packet interleaved, `misdelivered` = arrived at the
wrong node. Latency = cycle the tail flit is ejected - cycle the head flit was injected.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from d1tile.params import TileConfig
from d1tile.sim.router import make_packet, path_key, receivers, trace_format
from d1tile.formats import Multicast, flit_format


__all__ = ["NocTraffic", "NocStats", "MEAN_LENGTH"]

MEAN_LENGTH = 2.5
DEADLOCK_CYCLES = 1000


@dataclass
class NocStats:
    injected: int = 0
    multicasts: int = 0
    copies: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    broken: int = 0
    misdelivered: int = 0
    cycles: int = 0
    deadlock: str | None = None
    latency_min: int = 0
    latency_mean: float = 0.0
    latency_p99: int = 0
    latency_max: int = 0
    flits: int = 0
    planned: int = 0                 # the packets asked for
    stopped: str | None = None       # why the run ended before every packet was delivered

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.broken
                    or self.misdelivered or self.deadlock or self.stopped)

    def summary(self) -> str:
        lines = [
            f"cycles {self.cycles}, packets injected {self.injected} of {self.planned} "
            f"({self.multicasts} multicast, "
            f"{self.copies} copies), delivered {self.delivered}, lost {self.lost}, duplicated {self.duplicated}, reordered {self.reordered}, "
            f"broken {self.broken}, misdelivered {self.misdelivered}",
            f"latency (cycles, head injected to tail ejected): min {self.latency_min}, "
            f"mean {self.latency_mean:.2f}, p99 {self.latency_p99}, max {self.latency_max}",
            f"throughput {self.flits / max(self.cycles, 1):.3f} flits/cycle delivered",
        ]
        if self.deadlock:
            lines.append(f"DEADLOCK: {self.deadlock}")
        if self.stopped:
            lines.append(f"STOPPED: {self.stopped}")
        return "\n".join(lines)


class NocTraffic:
    """Per cycle: `offers()` (node -> flit), then `step(cycle, accepted, ejected)` with the set
    of nodes whose offer was taken and the flits each node ejected. `done` when every packet is
    generated and delivered (or a deadlock was declared); `stats()` at the end."""

    def __init__(self, cfg: TileConfig, *, packets: int, rate: float, seed: int,
                 multicast: float = 0.0):
        if not 0 < rate <= 1:
            raise ValueError(f"rate={rate} must be in (0, 1] flits per node per cycle")
        if not 0 <= multicast <= 1:
            raise ValueError(f"multicast={multicast} must be a fraction in [0, 1]")
        self.multicast = multicast
        if not 1 <= packets <= 65535 * cfg.nodes:
            raise ValueError(f"packets={packets} must be 1..{65535 * cfg.nodes}")
        if cfg.nodes > 256:
            raise ValueError("noc-stress tags packets with an 8-bit node index (at most 256 nodes)")
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.total = packets
        self.p_packet = rate / MEAN_LENGTH
        self.nodes = [(x, y) for y in range(cfg.rows) for x in range(cfg.cols)]
        self.queues = {node: deque() for node in self.nodes}
        self.generated = 0
        self.seq = {node: 0 for node in self.nodes}
        self.info = {}            # (src, seq) -> [receiving nodes, length, head_inject_cycle, path]
        self.delivered = {}       # (src, seq, node) -> times delivered
        self.last_seq = {}        # (src, dst, path) -> last delivered seq
        self.assembling = {node: [] for node in self.nodes}
        self.latencies = []
        self.counts = NocStats()
        self.quiet = 0
        self.flit_fmt = flit_format(cfg)
        self.trace = trace_format(cfg)
        self._offers = {}

    def _generate(self):
        for index, node in enumerate(self.nodes):
            if self.generated < self.total and self.rng.random() < self.p_packet:
                dst = self.rng.choice(self.nodes)
                length = self.rng.randint(1, 4)
                seq = self.seq[node]
                self.seq[node] += 1
                mc, last = Multicast.NONE, 0
                if self.multicast and self.rng.random() < self.multicast:
                    mc, dst, last = self._multicast(node)
                self.queues[node].extend(make_packet(self.cfg, dst, index, seq, length, self.rng,
                                                     mc, last))
                self.info[(index, seq)] = [set(receivers(node, dst, mc, last)), length, None,
                                           path_key(node, dst, mc, last)]
                self.generated += 1
                self.counts.multicasts += mc != Multicast.NONE

    def _multicast(self, node):
        """(mc, first receiver, last) of a random multicast from `node` along its row or
        column."""
        rng, (x, y) = self.rng, node
        mc = rng.choice([Multicast.ROW, Multicast.COLUMN])
        size = self.cfg.cols if mc == Multicast.ROW else self.cfg.rows
        first = rng.randrange(size)
        last = rng.randint(first, size - 1)
        dst = (first, y) if mc == Multicast.ROW else (x, first)
        return mc, dst, last

    def offers(self) -> dict:
        self._generate()
        self._offers = {node: q[0] for node, q in self.queues.items() if q}
        return self._offers

    def step(self, cycle: int, accepted, ejected: dict) -> None:
        moved = bool(accepted) or bool(ejected)
        for node in accepted:
            flit = self.queues[node].popleft()
            if self.flit_fmt.get(flit, "head"):
                trace = self.trace.unpack(self.flit_fmt.get(flit, "payload"))
                info = self.info[(trace["src"], trace["seq"])]
                info[2] = cycle
                self.counts.injected += 1
                self.counts.copies += len(info[0])
        for node, flit in ejected.items():
            self.counts.flits += 1
            self._receive(node, flit, cycle)
        self.counts.cycles = cycle + 1
        self.quiet = 0 if moved else self.quiet + 1
        in_flight = any(self.queues.values()) or self.counts.copies > self._finished()
        if self.quiet >= DEADLOCK_CYCLES and in_flight:
            stuck = [f"{key}->{node}" for key, info in self.info.items() if info[2] is not None
                     for node in sorted(info[0]) if (*key, node) not in self.delivered][:8]
            self.counts.deadlock = (f"no flit moved for {self.quiet} cycles with packets in "
                                    f"flight (e.g. (src, seq)->dst: {', '.join(stuck)})")

    def _finished(self) -> int:
        return len(self.delivered)

    def _receive(self, node, flit, cycle):
        trace = self.trace.unpack(self.flit_fmt.get(flit, "payload"))
        parts = self.assembling[node]
        if parts and (parts[0]["src"], parts[0]["seq"]) != (trace["src"], trace["seq"]):
            self.counts.broken += 1
            parts.clear()
        parts.append(trace)
        if not self.flit_fmt.get(flit, "tail"):
            return
        key = (trace["src"], trace["seq"])
        packet = list(parts)
        parts.clear()
        dsts, length, injected, path = self.info.get(key, ((), None, None, None))
        if [p["index"] for p in packet] != list(range(length or 0)):
            self.counts.broken += 1
            return
        if node not in dsts:
            self.counts.misdelivered += 1
            return
        copy = (*key, node)
        if copy in self.delivered:
            self.counts.duplicated += 1
            self.delivered[copy] += 1
            return
        self.delivered[copy] = 1
        pair = (trace["src"], node, path)
        if self.last_seq.get(pair, -1) > trace["seq"]:
            self.counts.reordered += 1
        self.last_seq[pair] = max(self.last_seq.get(pair, -1), trace["seq"])
        self.latencies.append(cycle - injected)

    @property
    def done(self) -> bool:
        return (self.counts.deadlock is not None or
                (self.generated == self.total and not any(self.queues.values())
                 and self.counts.copies == self._finished()))

    def expected_cycles(self) -> int:
        """About how many cycles generating every packet takes at this rate."""
        return round(self.total / (self.cfg.nodes * self.p_packet))

    def stats(self) -> NocStats:
        s = self.counts
        s.planned = self.total
        s.delivered = len(self.delivered)
        undelivered = sum(1 for key, info in self.info.items() if info[2] is not None
                          for node in info[0] if (*key, node) not in self.delivered)
        if self.done:
            s.lost = undelivered
        else:       # the cycle cap came first: what is in flight is not lost (yet)
            s.stopped = (f"the cycle cap ({s.cycles:,} cycles) came first: {s.injected} of "
                         f"{self.total} packets injected ({self.total - s.injected} never "
                         f"were, {undelivered} copies still in flight; at this rate generating "
                         f"them all takes about {self.expected_cycles():,} cycles)")
        if self.latencies:
            ordered = sorted(self.latencies)
            s.latency_min, s.latency_max = ordered[0], ordered[-1]
            s.latency_mean = sum(ordered) / len(ordered)
            s.latency_p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return s


PROGRESS_CYCLES = 4096
"""How often `run_model` calls its `progress` callback."""


def run_model(cfg: TileConfig, *, packets: int, rate: float, seed: int,
              multicast: float = 0.0, max_cycles: int = 10_000_000, progress=None) -> NocStats:
    """noc-stress on the cycle model (`MeshModel`). `progress(generated, delivered, cycle)`,
    if given, is called every `PROGRESS_CYCLES` cycles and at the end: the packets generated
    so far (of `packets`) and the packet copies delivered."""
    from d1tile.sim.router import MeshModel
    mesh = MeshModel(cfg)
    traffic = NocTraffic(cfg, packets=packets, rate=rate, seed=seed, multicast=multicast)
    cycle = 0
    while not traffic.done and cycle < max_cycles:
        accepted, ejected = mesh.step(traffic.offers(), {})
        traffic.step(cycle, accepted, ejected)
        cycle += 1
        if progress is not None and cycle % PROGRESS_CYCLES == 0:
            progress(traffic.generated, len(traffic.delivered), cycle)
    if progress is not None:
        progress(traffic.generated, len(traffic.delivered), cycle)
    if mesh.misroutes:
        traffic.counts.misdelivered += len(mesh.misroutes)
    return traffic.stats()
