"""Steady flit streams, advanced many cycles at once (the cycle model's fast path for traffic).

Most cycles of a run's loading and read-back, and of every long SEND, move one packet's body
along a fixed path at one flit per cycle: from a *source* (a row's host queue, or a DMA-out
sending SRAM words) through routers whose outputs are locked to the packet, into a *sink* (the
host, or a DMA-in). When every part of the tile that moves is such a stream in its steady state
and everything else is provably still, the next m cycles are fixed: every stream's flits shift m
places along its path, its source gives m more and its sink takes m. `find_window` recognises
such a state and how long it lasts; `advance` applies the m cycles. The result is the one of
stepping them one by one (the checks below are what makes it so, none is assumed).

A stream is steady when:

* every FIFO on its path holds 1 .. depth-1 flits, all body flits (neither head nor tail), and
  the router output it feeds is locked to it: so in every cycle each of them gives one flit (its
  output is locked to it, the input it feeds is ready: it holds fewer than depth flits) and
  takes one (it is ready itself). Body flits move no lock and no round-robin pointer;
* its source is the host, with body flits at the front of the row's queue; or a DMA-out in its
  steady state (`NodeModel.stream_end`): one word queued, one arriving, one read per cycle
  (read port 0 has the first priority, so it is never refused), its tail still ahead;
* its sink is the host (always ready), or a DMA-in inside a WRITE (write port 0 has the first
  priority, so the write slot frees every cycle), IMEM or discarded packet;
* a node is one end of one stream at most and does nothing else.

Everything else is still when every other node rests (`NodeModel.rest`) and wakes after the
window, no other router output holds a flit that could move (it has none, or the input it feeds
is full and itself still: full FIFOs are never on a stream), and a host row that is not a
source offers nothing its full EAST input could take.

The window ends before any packet's tail (or next head) would move, before a sink's address
would leave its memory, before the first wake cycle of a resting node, and within the host's
hang-detection horizon (`HostDriver.skippable`).
"""

from __future__ import annotations

from d1tile.formats import Port, flit_format


__all__ = ["find_window", "advance"]

_LOCAL, _EAST = int(Port.LOCAL), int(Port.EAST)
_PORTS = range(len(Port))


def find_window(tile, driver, limit: int):
    """The steady streams of the tile in its current cycle and how many cycles (at most
    `limit`) they stay steady: `(m, streams)`, or None when the tile is not in such a state or
    m < 2. `tile` is a `TileModel` between two cycles, `driver` its `HostDriver`."""
    cycle = tile.cycle
    mesh, nodes, cfg = tile.mesh, tile.nodes, tile.cfg
    ends = {}
    for node, model in nodes.items():
        if model.resting:
            if model.woken_by(mesh.routers[node]):
                return None
            limit = min(limit, model.wake - cycle)
        else:
            role = model.stream_end()
            if role is None:
                return None
            ends[node] = role
    if limit < 2:
        return None
    routers = mesh.routers
    fmt = flit_format(cfg)
    head_or_tail = (1 << fmt.offsets["head"]) | (1 << fmt.offsets["tail"])
    depth = cfg.router_fifo_depth
    starts = [("node", node) for node, role in ends.items() if role == "source"]
    edge = cfg.cols - 1
    for row, queue in enumerate(driver.queues):
        if queue:
            router = routers[(edge, row)]
            router.evaluate()
            if router.ready[_EAST]:
                starts.append(("host", row))
    streams, outputs, sinks = [], set(), set()
    for start in starts:
        if start[0] == "node":
            node, port = start[1], _LOCAL
            limit = min(limit, nodes[node].stream_limit())
        else:
            node, port = (edge, start[1]), _EAST
            limit = min(limit, driver.body_run(start[1]))
        if limit < 2:
            return None
        hops = []
        while True:
            router = routers[node]
            fifo = router.fifos[port]
            if not 1 <= len(fifo) < depth:
                return None
            for flit in fifo:
                if flit & head_or_tail:
                    return None
            for o in _PORTS:
                if router.locked[o] and router.owner[o] == port:
                    break
            else:
                return None
            if (node, o) in outputs or len(hops) > len(routers):
                return None
            outputs.add((node, o))
            hops.append((router, port, o))
            if o == _LOCAL:
                if ends.get(node) != "sink" or node in sinks:
                    return None
                sinks.add(node)
                limit = min(limit, nodes[node].stream_limit())
                sink = ("node", node)
                break
            link = mesh.link(node, o)
            if link is None:
                return None
            if link[0] == "host":
                sink = ("host", link[1])
                break
            neighbour, port = link
            node = (neighbour.x, neighbour.y)
        streams.append((start, hops, sink))
    if len(sinks) != sum(role == "sink" for role in ends.values()) or limit < 2:
        return None
    # Everything else must be still: no output off the streams can move a flit. A multicast
    # anywhere (a fork, or outputs locked in pairs) is not a steady stream: step cycle by cycle.
    for router in routers.values():
        router.evaluate()
        if max(router.fork) >= 0 or max(router.partner) >= 0:
            return None
    for node, router in routers.items():
        if not router.count:
            continue
        out = router.out
        for o in _PORTS:
            if out[o] is None or (node, o) in outputs:
                continue
            link = mesh.link(node, o) if o != _LOCAL else None
            if link is None or link[0] == "host" or link[0].ready[link[1]]:
                return None
    return int(limit), streams


def advance(tile, driver, m: int, streams) -> None:
    """Apply m cycles of the steady `streams` (from `find_window`) to the tile and the host
    driver: sources, routers and sinks move m flits each; resting nodes are left to account the
    cycles themselves when they resume."""
    first = tile.cycle
    for start, hops, sink in streams:
        if start[0] == "node":
            entering = tile.nodes[start[1]].stream_source(m)
        else:
            entering = driver.accept_many(start[1], m)
        # The stream's flits, the sink's next one first.
        flits = []
        for router, port, _ in reversed(hops):
            flits.extend(router.fifos[port])
        flits.extend(entering)
        pos = m
        for router, port, o in reversed(hops):
            k = len(router.fifos[port])
            router.pass_through(port, o, m, flits[pos:pos + k])
            pos += k
        if sink[0] == "host":
            driver.eject_many(sink[1], flits[:m], first)
        else:
            tile.nodes[sink[1]].stream_sink(flits[:m])
    tile.mesh.cycle += m
    tile.cycle += m
    driver.end_cycles(first, m, first + m - 1)
