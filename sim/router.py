"""The mesh router: routing function, unloaded latency, and a cycle-exact model of one router and
of a mesh of them.

This module imports no Amaranth: it is the reference for `d1tile.hw.router` and the seed of the
tile's pure-Python cycle model. `RouterModel` and `MeshModel` reproduce the RTL cycle by cycle
(same input FIFOs, same allocation, same round robin, same wormhole locks, same link
back-pressure), so a testbench can step them in lockstep with Verilator and compare every
handshake.

The router, in one paragraph (docs/architecture.md, "Mesh router", has the long form)
-------------------------------------------------------------------------------------
Five ports (`Port`: LOCAL, NORTH, EAST, SOUTH, WEST), each with an input FIFO of
`cfg.router_fifo_depth` flits. An input is ready when its FIFO is not full (a function of FIFO
state only, never of this cycle's traffic). A flit accepted at the end of cycle t is at the FIFO
head from cycle t+1. Each cycle, every output port o picks one input (the *grant*):

* if o is locked (a packet is passing through it), the grant is the lock's owner;
* otherwise the requesters are the inputs that are not the owner of any locked output and whose
  FIFO head is a HEAD flit that `route_xy` sends to o; the grant is the first requester in the
  order `rr[o]+1, rr[o]+2, ... rr[o]+5` (mod 5), i.e. the port after the pointer comes first and
  the pointer's own port last.

`out_o.valid` is "the granted input's FIFO is not empty", and its payload is that FIFO's head;
the grant never looks at `out_o.ready`. When `out_o.ready` is high the flit transfers and the
input FIFO pops. Then: a tail flit unlocks o; a head flit that is not a tail locks o to the
granted input; a head flit moves `rr[o]` to the granted input. Every pointer starts at
`RR_RESET` (WEST), so after reset the priority is LOCAL, NORTH, EAST, SOUTH, WEST.

Multicast (`route_mask`): a head may *fork* into LOCAL and one link. The links are allocated
first; LOCAL's requesters are then the heads routed to LOCAL and the forking heads that won
their link. A fork's outputs carry the flit together: each is valid only when the other is
granted to the same input and ready (`valid()`, `local_out()`), the head locks both (each keeps
the other as its `partner`), the tail unlocks both, and `transfer()` moves the pair at once.
"""

from __future__ import annotations

import random
from collections import deque
from functools import cache

from d1tile.contracts import OPPOSITE, PORTS, RR_RESET, STEP, check_node
from d1tile.formats import BitFormat, Field, Multicast, Port, flit_format
from d1tile.params import TileConfig


__all__ = [
    "PORTS", "OPPOSITE", "STEP", "RR_RESET",
    "route_xy", "route_mask", "hops", "unloaded_latency", "rr_grant", "check_node",
    "RouterModel", "MeshModel",
    "trace_format", "make_packet", "describe_flit", "PacketScoreboard", "ScoreboardError",
]

def route_xy(x: int, y: int, dst_x: int, dst_y: int) -> Port:
    """Dimension-ordered (XY) routing: the output port that router (x, y) sends a packet for
    (dst_x, dst_y) to. X first (EAST/WEST until the column matches), then Y (SOUTH/NORTH),
    then LOCAL. Any integers are accepted; a destination outside the mesh simply routes towards
    (and over) the edge, which the mesh reports as a misroute."""
    if dst_x > x:
        return Port.EAST
    if dst_x < x:
        return Port.WEST
    if dst_y > y:
        return Port.SOUTH
    if dst_y < y:
        return Port.NORTH
    return Port.LOCAL


def route_mask(x: int, y: int, dst_x: int, dst_y: int, mc: int = 0, last: int = 0,
               came_from: int = Port.LOCAL) -> tuple[Port, ...]:
    """The outputs a head flit that entered router (x, y) through input `came_from` takes: one
    for a unicast (`route_xy`); for a multicast (`Multicast`), which delivers eastwards (ROW)
    or southwards (COLUMN) only, from its first receiver to `last`:

    * ROW, in the row it travels in (dst_y is not looked at): at x == dst_x, or at
      dst_x < x <= last when it came in moving east (through WEST), LOCAL and, unless
      x == last, EAST; otherwise it travels towards dst_x (west of it: EAST; east of it: WEST,
      delivering nothing on the way).
    * COLUMN: to column dst_x first as a unicast (X); in it, the same along Y: LOCAL (+ SOUTH)
      at dst_y or, coming in moving south (through NORTH), at dst_y < y <= last; otherwise
      towards dst_y.

    So a multicast goes to its first receiver by XY (turning back once, west then east or north
    then south, when it starts beyond it), and then holds an ejection port only while it moves
    east (or south): every wait it adds points east or south, and XY's deadlock freedom holds
    (docs/architecture.md has the argument). `last` before the first receiver, and `mc` = 3,
    route as unicasts."""
    if mc == Multicast.ROW and last >= dst_x:
        if x == dst_x or (came_from == Port.WEST and dst_x < x <= last):
            return (Port.LOCAL,) if x == last else (Port.LOCAL, Port.EAST)
        return (Port.EAST if dst_x > x else Port.WEST,)
    if mc == Multicast.COLUMN and last >= dst_y and x == dst_x:
        if y == dst_y or (came_from == Port.NORTH and dst_y < y <= last):
            return (Port.LOCAL,) if y == last else (Port.LOCAL, Port.SOUTH)
        return (Port.SOUTH if dst_y > y else Port.NORTH,)
    return (route_xy(x, y, dst_x, dst_y),)


def hops(src: tuple[int, int], dst: tuple[int, int]) -> int:
    """Router-to-router links an XY-routed packet crosses from node `src` to node `dst` (both
    (x, y)): the Manhattan distance."""
    return abs(dst[0] - src[0]) + abs(dst[1] - src[1])


def unloaded_latency(hops: int) -> int:
    """Cycles from a head flit's acceptance on the source's `in_local` to its first valid cycle on
    the destination's `out_local`, on an otherwise idle mesh: a head flit accepted at the end of
    cycle t is valid on `out_local` in cycle t + hops + 1 (one cycle per router: a flit sits in
    one input FIFO per router and leaves it in the cycle after it arrived). The following flits
    of a packet injected back to back follow one per cycle (flit k in cycle t + hops + 1 + k)
    when ejection is always ready."""
    if hops < 0:
        raise ValueError(f"hops={hops} must not be negative")
    return hops + 1


@cache
def rr_grant() -> tuple[tuple[int, ...], ...]:
    """`rr_grant()[pointer][request_mask]`: the round-robin winner (a port index) among the
    inputs set in the 5-bit `request_mask`, searching from `pointer + 1`; -1 if none requests."""
    table = []
    for pointer in PORTS:
        row = []
        for mask in range(1 << len(PORTS)):
            winner = -1
            for k in range(1, len(PORTS) + 1):
                port = (pointer + k) % len(PORTS)
                if mask >> port & 1:
                    winner = port
                    break
            row.append(winner)
        table.append(tuple(row))
    return tuple(table)


# -- cycle-exact model -------------------------------------------------------------------------

_N = len(PORTS)
_LOCAL, _NORTH, _EAST, _SOUTH, _WEST = (int(p) for p in PORTS)


class RouterModel:
    """One router, cycle-exact with `d1tile.hw.router.Router(cfg, x, y)`.

    State: `fifos` (a deque of flit integers per input port, head at index 0), and per output
    port `locked`, `owner` and `rr` (see the module docstring for the rules).

    Each cycle: `evaluate()` computes, from the state alone, `ready[i]` (input i accepts a flit
    this cycle) and `out[o]` (the flit presented on output o, or None) with `grant[o]`; then
    `transfer(o)` for each output whose flit is taken and `push(i, flit)` for each input that
    accepts one end the cycle. `step()` does the whole cycle for a stand-alone router.
    `evaluate()` is cached until the state changes, so calling it twice costs nothing.
    """

    __slots__ = ("cfg", "x", "y", "depth", "fifos", "locked", "owner", "rr", "ready", "out",
                 "grant", "fork", "partner", "links", "count", "flits_in", "flits_out",
                 "_stale", "_head", "_tail", "_x_shift", "_y_shift", "_coord_mask",
                 "_mc_shift", "_last_shift")

    def __init__(self, cfg: TileConfig, x: int, y: int):
        check_node(cfg, x, y)
        fmt = flit_format(cfg)
        self.cfg, self.x, self.y = cfg, x, y
        self.depth = cfg.router_fifo_depth
        self._head = 1 << fmt.offsets["head"]
        self._tail = 1 << fmt.offsets["tail"]
        self._x_shift = fmt.offsets["dst_x"]
        self._y_shift = fmt.offsets["dst_y"]
        self._mc_shift = fmt.offsets["mc"]
        self._last_shift = fmt.offsets["last"]
        self._coord_mask = (1 << cfg.coord_bits) - 1
        self.fifos = tuple(deque() for _ in PORTS)
        self.locked = [False] * _N
        self.owner = [0] * _N
        self.rr = [int(RR_RESET)] * _N
        self.ready = [True] * _N
        self.out = [None] * _N
        self.grant = [-1] * _N
        # A multicast forks into LOCAL and one link: fork[o] is the other output of the packet
        # output o carries this cycle (-1: none), partner[o] the same for a locked output.
        self.fork = [-1] * _N
        self.partner = [-1] * _N
        self.links = None       # per output: (neighbour router, its input) or None (MeshModel)
        self.count = 0          # flits buffered in all five FIFOs
        self.flits_in = [0] * _N    # flits accepted per input port (performance counters)
        self.flits_out = [0] * _N   # flits sent per output port
        self._stale = True

    def route(self, flit: int) -> Port:
        """The output `route_xy` picks for a flit at this router (ignoring `mc`)."""
        mask = self._coord_mask
        return route_xy(self.x, self.y, (flit >> self._x_shift) & mask, (flit >> self._y_shift) & mask)

    def routes(self, flit: int, came_from: int) -> tuple[Port, ...]:
        """The outputs `route_mask` picks for a head flit at input `came_from`."""
        mask = self._coord_mask
        return route_mask(self.x, self.y, (flit >> self._x_shift) & mask,
                          (flit >> self._y_shift) & mask, (flit >> self._mc_shift) & 3,
                          (flit >> self._last_shift) & mask, came_from)

    def link_ready(self, o: int) -> bool:
        """Whether what output `o` (not LOCAL) feeds takes a flit this cycle: the neighbour's
        input FIFO is not full; the host and the mesh edge always take one."""
        link = self.links[o] if self.links is not None else None
        if link is None or link[0] == "host":
            return True
        neighbour, port = link
        return len(neighbour.fifos[port]) < neighbour.depth

    def local_out(self) -> int | None:
        """The flit on the LOCAL output this cycle (valid high): `out[LOCAL]`, unless it is a
        multicast's copy whose other output, a link, is not ready (the two move together)."""
        flit = self.out[_LOCAL]
        if flit is not None and self.fork[_LOCAL] >= 0 and not self.link_ready(self.fork[_LOCAL]):
            return None
        return flit

    def valid(self, o: int, out_ready) -> bool:
        """`out_o.valid` given every output's `ready` (`out_ready`, by port): a multicast's
        output is valid only when its other output is ready."""
        if self.out[o] is None:
            return False
        f = self.fork[o]
        return f < 0 or bool(out_ready[f])

    def evaluate(self) -> None:
        """Compute this cycle's `ready`, `grant` and `out` from the state."""
        if not self._stale:
            return
        self._stale = False
        out, ready, grant = self.out, self.ready, self.grant
        if not self.count:
            for p in range(_N):
                out[p] = None
                ready[p] = True
                grant[p] = -1 if not self.locked[p] else self.owner[p]
                self.fork[p] = self.partner[p]
            return
        fifos, locked, owner, depth = self.fifos, self.locked, self.owner, self.depth
        head, mask, x, y = self._head, self._coord_mask, self.x, self.y
        x_shift, y_shift = self._x_shift, self._y_shift
        busy = 0
        for o in range(_N):
            if locked[o]:
                busy |= 1 << owner[o]
        requests = [0] * _N
        forks = None            # input -> the link a multicast head forks to (beside LOCAL)
        mc_shift = self._mc_shift
        for i in range(_N):
            fifo = fifos[i]
            ready[i] = len(fifo) < depth
            if fifo and not busy >> i & 1:
                flit = fifo[0]
                if flit & head:
                    if not (flit >> mc_shift) & 3:
                        # route_xy, inlined: this is the model's innermost loop.
                        dst_x = (flit >> x_shift) & mask
                        if dst_x > x:
                            o = _EAST
                        elif dst_x < x:
                            o = _WEST
                        else:
                            dst_y = (flit >> y_shift) & mask
                            o = _SOUTH if dst_y > y else _NORTH if dst_y < y else _LOCAL
                    else:
                        ports = self.routes(flit, i)
                        o = int(ports[-1])
                        if len(ports) == 2:
                            forks = forks or {}
                            forks[i] = o
                    requests[o] |= 1 << i
        table = rr_grant()
        rr = self.rr
        fork = self.fork
        # The links first: a forking head competes for its link; LOCAL, when not locked, is
        # then open to it only if it won the link (so its two grants always agree).
        for o in (_NORTH, _EAST, _SOUTH, _WEST, _LOCAL):
            if locked[o]:
                g = owner[o]
                fifo = fifos[g]
                out[o] = fifo[0] if fifo else None
                fork[o] = self.partner[o]
            else:
                if o == _LOCAL and forks:
                    for i, link in forks.items():
                        if grant[link] == i:
                            requests[_LOCAL] |= 1 << i
                g = table[rr[o]][requests[o]]
                out[o] = fifos[g][0] if g >= 0 else None
                fork[o] = -1
                if forks and g in forks:
                    fork[o] = _LOCAL if o != _LOCAL else forks[g]
            grant[o] = g
        if forks:
            # A forking head moves only with both grants: a link granted to one whose LOCAL
            # went to another input carries nothing this cycle.
            for o in (_NORTH, _EAST, _SOUTH, _WEST):
                g = grant[o]
                if not locked[o] and g in forks and grant[_LOCAL] != g:
                    out[o] = None
                    fork[o] = -1

    def transfer(self, o: int) -> int:
        """Output `o`'s flit is taken this cycle (`out[o]` must not be None), and with it, for a
        multicast, the copy on its other output `fork[o]` (call this once for the pair): pop the
        granted input and update the locks and the round-robin pointers. Returns the flit."""
        g = self.grant[o]
        flit = self.fifos[g].popleft()
        self.count -= 1
        self._stale = True
        f = self.fork[o]
        for p in ((o,) if f < 0 else (o, f)):
            self.flits_out[p] += 1
            if flit & self._tail:
                self.locked[p] = False
                self.partner[p] = -1
            elif flit & self._head:
                self.locked[p] = True
                self.owner[p] = g
                self.partner[p] = -1 if f < 0 else (f if p == o else o)
            if flit & self._head:
                self.rr[p] = g
        return flit

    def push(self, i: int, flit: int) -> None:
        """Input `i` accepts `flit` this cycle (`ready[i]` must be true)."""
        self.fifos[i].append(flit)
        self.count += 1
        self.flits_in[i] += 1
        self._stale = True

    def pass_through(self, i: int, o: int, m: int, contents) -> None:
        """m cycles in which output `o`, locked to input `i`, sent one body flit per cycle and
        input `i` took one: the FIFO now holds `contents` (as many flits as before). Locks and
        round-robin pointers do not move for body flits (`d1tile.sim.streams` checks that the
        flits are such)."""
        fifo = self.fifos[i]
        if len(contents) != len(fifo) or not self.locked[o] or self.owner[o] != i:
            raise ValueError(f"router ({self.x},{self.y}): no stream from input {i} to output {o}")
        fifo.clear()
        fifo.extend(contents)
        self.flits_in[i] += m
        self.flits_out[o] += m
        self._stale = True

    def step(self, offers, out_ready) -> tuple[list[bool], list[int | None]]:
        """One cycle of a stand-alone router.

        offers[i]: the flit offered on input i (None: valid low); out_ready[o]: `out_o.ready`.
        Both are sequences indexed by `Port`. Returns (accepted[i], sent[o]): which offers were
        taken, and the flit each output transferred (None if none).
        """
        self.evaluate()
        accepted = [offers[i] is not None and self.ready[i] for i in range(_N)]
        sent = [self.out[o] if self.valid(o, out_ready) and out_ready[o] else None
                for o in range(_N)]
        for o in range(_N):
            if sent[o] is not None and not (self.fork[o] >= 0 and self.fork[o] < o):
                self.transfer(o)
        for i in range(_N):
            if accepted[i]:
                self.push(i, offers[i])
        self.evaluate()
        return accepted, sent

    def describe(self) -> str:
        """The state in one line (for deadlock reports)."""
        fifos = " ".join(f"{p.name[0]}:{len(self.fifos[p])}" for p in PORTS)
        locks = " ".join(f"{p.name[0]}<-{Port(self.owner[p]).name[0]}"
                         for p in PORTS if self.locked[p])
        return f"router ({self.x},{self.y}) fifos [{fifos}] locks [{locks or '-'}]"


class MeshModel:
    """A `cfg.rows` x `cfg.cols` mesh of `RouterModel`s, cycle-exact with
    `d1tile.hw.router.RouterMesh(cfg)`.

    Node (x, y)'s router feeds (x+1, y).in_west from out_east, and so on. At the mesh edge an
    input never receives a flit, and an output is always ready and drops what it sends: a flit
    leaving the mesh is a routing error, recorded in `misroutes` as (cycle, node, port, flit)
    and reflected in `misroute` from the next cycle on (like the RTL's sticky flag).

    `step(offers, eject_ready)` runs one cycle. `offers` maps a node to the flit offered on its
    `inject` port (missing or None: valid low); `eject_ready` maps a node to its `eject.ready`
    (missing: ready). It returns (accepted, ejected): the set of nodes whose offer was taken,
    and the flit each node's `eject` port transferred. `inject_ready(node)` and
    `eject_flit(node)` show this cycle's handshake signals before stepping.

    With `host_edge=True` (the tile), the EAST ports of the last column are the host port
    instead of an edge: `step(..., host_offers={row: flit})` offers flits on them (accepted
    ones are listed in `host_accepted` after the step) and the flits they send are returned in
    `host_ejected` ({row: flit}); the host is always ready.
    """

    def __init__(self, cfg: TileConfig, *, host_edge: bool = False):
        if not isinstance(cfg, TileConfig):
            raise TypeError(f"cfg must be a TileConfig, not {cfg!r}")
        self.cfg = cfg
        self.cycle = 0
        self.misroutes: list[tuple[int, tuple[int, int], Port, int]] = []
        self.routers = {(x, y): RouterModel(cfg, x, y)
                        for y in range(cfg.rows) for x in range(cfg.cols)}
        self._order = list(self.routers.values())
        # Per router, per port: (neighbour router, its input port) or None (edge / LOCAL).
        self._links = {}
        for (x, y), router in self.routers.items():
            links = [None] * _N
            for port, (dx, dy) in STEP.items():
                neighbour = self.routers.get((x + dx, y + dy))
                if neighbour is not None:
                    links[port] = (neighbour, int(OPPOSITE[port]))
            self._links[router] = tuple(links)
        if host_edge:
            for y in range(cfg.rows):
                links = list(self._links[self.routers[(cfg.cols - 1, y)]])
                links[Port.EAST] = ("host", y)
                self._links[self.routers[(cfg.cols - 1, y)]] = tuple(links)
        self._plan = [((x, y), router, self._links[router]) for (x, y), router in self.routers.items()]
        for router, links in self._links.items():
            router.links = links
        self.host_accepted: set = set()
        self.host_ejected: dict = {}
        self.moved = 0          # flits that moved in the last step (any port of any router)

    @property
    def misroute(self) -> bool:
        return bool(self.misroutes)

    def link(self, node: tuple[int, int], port: int):
        """Where output `port` of router `node` leads: (neighbour router, its input port),
        ("host", row) for the host port, or None (LOCAL, or an edge)."""
        return self._links[self.routers[node]][port]

    @property
    def in_flight(self) -> int:
        """Flits buffered in the mesh."""
        return sum(router.count for router in self._order)

    def inject_ready(self, node: tuple[int, int]) -> bool:
        router = self.routers[node]
        router.evaluate()
        return router.ready[_LOCAL]

    def eject_flit(self, node: tuple[int, int]) -> int | None:
        router = self.routers[node]
        router.evaluate()
        return router.local_out()

    def step(self, offers: dict, eject_ready: dict, host_offers: dict | None = None
             ) -> tuple[set, dict]:
        for router in self._order:
            if router._stale:
                router.evaluate()
        # Every ready below is the start-of-cycle value that evaluate() stored, so the order in
        # which routers pop and push during this cycle does not matter (as in the RTL).
        routers = self.routers
        accepted = set()
        host_ejected = self.host_ejected = {}
        host_accepted = self.host_accepted = set()
        moved = 0
        for node, flit in offers.items():
            if flit is not None and routers[node].ready[_LOCAL]:
                accepted.add(node)
        ejected = {}
        for node, router, links in self._plan:
            if not router.count:
                continue
            out, fork = router.out, router.fork
            for o in range(_N):
                flit = out[o]
                if flit is None:
                    continue
                if o == _LOCAL:
                    if fork[o] < 0 and eject_ready.get(node, True):
                        ejected[node] = router.transfer(o)
                        moved += 1
                    continue
                link = links[o]
                if fork[o] >= 0:
                    # A multicast's copy goes to LOCAL and this link in the same cycle, or not
                    # at all (the link's `ready` is its start-of-cycle value, as below).
                    if not eject_ready.get(node, True) or (
                            link is not None and link[0] != "host"
                            and not link[0].ready[link[1]]):
                        continue
                    ejected[node] = flit = router.transfer(o)
                    moved += 2
                    if link is None:
                        self.misroutes.append((self.cycle, node, Port(o), flit))
                    elif link[0] == "host":
                        host_ejected[link[1]] = flit
                    else:
                        link[0].push(link[1], flit)
                    continue
                if link is None:
                    self.misroutes.append((self.cycle, node, Port(o), router.transfer(o)))
                    moved += 1
                elif link[0] == "host":
                    host_ejected[link[1]] = router.transfer(o)
                    moved += 1
                elif link[0].ready[link[1]]:
                    link[0].push(link[1], router.transfer(o))
                    moved += 1
        for node in accepted:
            routers[node].push(_LOCAL, offers[node])
        if host_offers:
            edge = self.cfg.cols - 1
            for row, flit in host_offers.items():
                if flit is not None and routers[(edge, row)].ready[_EAST]:
                    routers[(edge, row)].push(_EAST, flit)
                    host_accepted.add(row)
                    moved += 1
        self.moved = moved + len(accepted)
        self.cycle += 1
        return accepted, ejected

    def describe(self) -> str:
        """Every non-idle router's state, one per line (for deadlock reports)."""
        lines = [r.describe() for r in self._order if r.count or any(r.locked)]
        return "\n".join(lines) or "mesh idle"


# -- traffic and checking (testbenches, traffic generators) --------------------------------------

@cache
def trace_format(cfg: TileConfig) -> BitFormat:
    """A flit payload that says where it came from: `src` (a stream id: the node index
    y * cols + x in a mesh, the input port for a single router), `seq` (packet number of that
    source), `index` (flit number in the packet), then random `filler` up to the word width."""
    return BitFormat("flit_trace", [
        Field("src", 8), Field("seq", 16), Field("index", 8), Field("filler", cfg.word_bits - 32),
    ])


def make_packet(cfg: TileConfig, dst: tuple[int, int], src: int, seq: int, length: int,
                rng: random.Random, mc: int = Multicast.NONE, last: int = 0) -> list[int]:
    """A packet of `length` flits for node `dst` = (x, y) (with `mc` and `last`: a multicast
    whose first receiver is `dst`), payloads in `trace_format`."""
    if length < 1:
        raise ValueError(f"length={length} must be at least 1")
    fmt, trace = flit_format(cfg), trace_format(cfg)
    filler_bits = trace.field("filler").width
    return [fmt.pack(head=k == 0, tail=k == length - 1, dst_x=dst[0], dst_y=dst[1], mc=int(mc),
                     last=last, payload=trace.pack(src=src, seq=seq & 0xFFFF, index=k,
                                                   filler=rng.getrandbits(filler_bits)))
            for k in range(length)]


def path_key(src: tuple[int, int], dst: tuple[int, int], mc: int, last: int):
    """Which path a packet from `src` takes to its receivers: None for the XY path (every
    unicast, and a multicast whose first receiver is at or after the source in its direction,
    east or south), else the point where a multicast that starts before its source turns back.
    Packets from one source to one receiver arrive in the order sent when their paths are the
    same (`PacketScoreboard`, `d1tile.sim.noc`)."""
    if mc == Multicast.ROW and last >= dst[0] and dst[0] < src[0]:
        return ("row", dst[0])
    if mc == Multicast.COLUMN and last >= dst[1] and dst[0] == src[0] and dst[1] < src[1]:
        return ("column", dst[1])
    return None


def receivers(src: tuple[int, int], dst: tuple[int, int], mc: int, last: int
              ) -> list[tuple[int, int]]:
    """The nodes a packet from node `src` reaches (`route_mask`), in delivery order: `dst` for
    a unicast; for a ROW multicast the nodes of src's row from dst_x to last, for a COLUMN
    multicast the nodes of column dst_x from dst_y to last."""
    if mc == Multicast.ROW and last >= dst[0]:
        return [(x, src[1]) for x in range(dst[0], last + 1)]
    if mc == Multicast.COLUMN and last >= dst[1]:
        return [(dst[0], y) for y in range(dst[1], last + 1)]
    return [dst]


def describe_flit(cfg: TileConfig, flit: int | None) -> str:
    if flit is None:
        return "nothing"
    fields = flit_format(cfg).unpack(flit)
    trace = trace_format(cfg).unpack(fields["payload"])
    kind = ("H" if fields["head"] else "") + ("T" if fields["tail"] else "") or "B"
    return (f"{kind} dst=({fields['dst_x']},{fields['dst_y']}) src={trace['src']} "
            f"seq={trace['seq']} index={trace['index']} ({flit:#x})")


class ScoreboardError(AssertionError):
    """A delivered flit differs from what the scoreboard expected."""


class PacketScoreboard:
    """Checks delivery of `trace_format` packets at named sinks.

    `expect(src, sink, flits)` registers a packet in sending order; `receive(sink, flit, cycle)`
    checks each delivered flit. It raises `ScoreboardError` when a flit arrives at a sink that
    has no such packet pending (wrong sink, duplicate), out of order for its (src, sink) pair,
    interleaved with another packet at the sink, or different from what was sent. `done` is true
    when every packet arrived whole.
    """

    def __init__(self, cfg: TileConfig):
        self.cfg = cfg
        self._flit = flit_format(cfg)
        self._trace = trace_format(cfg)
        self.pending: dict[tuple, deque[list[int]]] = {}
        self.open: dict = {}            # sink -> (packet, next flit index)
        self.sent_packets = 0
        self.delivered_packets = 0
        self.delivered_flits = 0

    def expect(self, src: int, sink, flits: list[int]) -> None:
        self.pending.setdefault((src, sink), deque()).append(list(flits))
        self.sent_packets += 1

    def source_of(self, flit: int) -> int:
        return self._trace.get(self._flit.get(flit, "payload"), "src")

    def receive(self, sink, flit: int, cycle: int | None = None) -> None:
        where = f"cycle {cycle}, sink {sink}" if cycle is not None else f"sink {sink}"
        if sink in self.open:
            packet, k = self.open[sink]
            if flit != packet[k]:
                raise ScoreboardError(
                    f"{where}: expected flit {k} of the open packet "
                    f"({describe_flit(self.cfg, packet[k])}), got {describe_flit(self.cfg, flit)}")
        else:
            src = self.source_of(flit)
            queue = self.pending.get((src, sink))
            if not queue:
                raise ScoreboardError(
                    f"{where}: got {describe_flit(self.cfg, flit)} but no packet from src {src} "
                    f"to this sink is pending (misdelivered or duplicated)")
            packet, k = queue.popleft(), 0
            if flit != packet[0]:
                raise ScoreboardError(
                    f"{where}: expected the head of the next packet from src {src} "
                    f"({describe_flit(self.cfg, packet[0])}), got {describe_flit(self.cfg, flit)}"
                    " (order or integrity broken)")
        self.delivered_flits += 1
        if k + 1 == len(packet):
            self.open.pop(sink, None)
            self.delivered_packets += 1
        else:
            self.open[sink] = (packet, k + 1)

    @property
    def done(self) -> bool:
        return not self.open and all(not q for q in self.pending.values())

    def describe_pending(self, limit: int = 10) -> str:
        lines = [f"sink {sink}: packet {describe_flit(self.cfg, packet[0])} stopped after "
                 f"{k} of {len(packet)} flits" for sink, (packet, k) in self.open.items()]
        for (src, sink), queue in self.pending.items():
            for packet in queue:
                lines.append(f"src {src} -> sink {sink}: {len(packet)}-flit packet "
                             f"{describe_flit(self.cfg, packet[0])} not delivered")
        more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
        return "\n".join(lines[:limit]) + more
