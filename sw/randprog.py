"""Random valid multi-node programs, for `d1tile verify` and the randomised tests.

Every generated program is race-free, so its result is defined by the functional interpreter
and every timed execution (cycle model, RTL) must reproduce it, and it cannot deadlock:

* Each node's SRAM is split in two halves: the *private* half, loaded with random words and used
  by the node's own matrix and vector instructions (whose overlaps the sequencer's hazard check
  orders), and the *inbox* half, which only receives messages.
* Every message (a SEND from one node to another, or to itself) has its own inbox slot at the
  receiver, so no slot is written twice; the receiver reads a slot only after a WAIT on the
  message's counter.
* The program runs in phases: in phase p every node does some local work, sends its phase-p
  messages, waits for its phase-p messages, then may use them. Sends never wait on receives of
  the same phase, so the phases cannot deadlock. Each phase bumps its own counters (a message of
  a later phase may arrive before one of an earlier phase, and must not satisfy its WAIT).

The programs mix every instruction: MATMUL (with and without clear), MREAD (any rows), VEC (all
ops, fixed b, REQUANT packing), SETQ, NOP, SEND (including zero-length signals and sends to
self) and WAIT, with ranges that often overlap inside the private half, to exercise the hazard
check. Every node's whole SRAM is read back.
"""

from __future__ import annotations

import random

from d1tile.formats import VecOp
from d1tile.params import TileConfig
from d1tile.sim.isa import COUNTERS, BINARY_VECOPS, requant_words
from d1tile.sw.program import TileProgram


__all__ = ["random_tile_program"]


def _span(rng: random.Random, lo: int, hi: int, n: int) -> int:
    """A random start for n words inside [lo, hi)."""
    return rng.randrange(lo, hi - n + 1)


def random_tile_program(cfg: TileConfig, rng: random.Random, *, phases: int = 3,
                        ops_per_phase: int = 4, max_words: int = 8,
                        read_back: bool = True) -> TileProgram:
    """A random race-free `TileProgram` for `cfg` (see the module docstring)."""
    tp = TileProgram(cfg)
    words = cfg.sram_words
    half = words // 2
    nodes = tp.nodes
    max_words = max(1, min(max_words, half // 8))
    inbox_next = {node: half for node in nodes}
    word_limit = 1 << cfg.word_bits
    # Filled per phase: messages[p] = [(src, dst, n, src_addr, dst_addr, counter)]
    for node in nodes:
        tp.load(node, 0, [rng.randrange(word_limit) for _ in range(half)])
    programs = {node: tp.node(*node) for node in nodes}
    usable = {node: [(0, half)] for node in nodes}   # regions a node may read

    def region(node, n):
        lo, hi = rng.choice([r for r in usable[node] if r[1] - r[0] >= n] or [(0, half)])
        return _span(rng, lo, hi, n)

    def local_op(node):
        p = programs[node]
        kind = rng.choice(["matmul", "matmul", "mread", "vec", "vec", "setq", "nop"])
        if kind == "matmul":
            kw = rng.randint(1, max_words)
            p.matmul(region(node, kw), region(node, kw), kw, clear=rng.random() < 0.7)
        elif kind == "mread":
            row0 = rng.randrange(cfg.mac_dim)
            nrows = rng.randint(1, cfg.mac_dim - row0)
            p.mread(_span(rng, 0, half, nrows), row0, nrows)
        elif kind == "vec":
            op = rng.choice(list(VecOp))
            n = rng.randint(1, max_words)
            a = region(node, n)
            bfix = op in BINARY_VECOPS and rng.random() < 0.3
            b = region(node, 1 if bfix else n) if op in BINARY_VECOPS else 0
            out = requant_words(n) if op == VecOp.REQUANT else n
            # In place, or a destination clear of the sources (a later element must never read
            # what an earlier one wrote).
            for _ in range(20):
                dst = a if rng.random() < 0.25 and op != VecOp.REQUANT else _span(rng, 0, half, out)
                clear_a = dst == a or dst + out <= a or a + n <= dst
                clear_b = (op not in BINARY_VECOPS or (not bfix and dst == b)
                           or dst + out <= b or b + (1 if bfix else n) <= dst)
                if clear_a and clear_b:
                    break
            else:
                p.nop()
                return
            p.vec(op, dst, a, b, n, bfix)
        elif kind == "setq":
            p.setq(rng.randrange(1 << 16), rng.randrange(48), rng.random() < 0.5)
        else:
            p.nop()

    phase_sets = min(phases, COUNTERS)     # phase p uses the counters c = p (mod phase_sets)
    for phase in range(phases):
        messages = []
        for src in nodes:
            for _ in range(rng.randint(0, 2)):
                dst = rng.choice(nodes)
                n = rng.choice([0, 1, rng.randint(1, max_words)])
                if inbox_next[dst] + n > words:
                    continue
                counter = rng.randrange(phase % phase_sets, COUNTERS, phase_sets)
                messages.append((src, dst, n, _span(rng, 0, half, n) if n else 0,
                                 inbox_next[dst], counter))
                inbox_next[dst] += n
        for node in nodes:
            for _ in range(rng.randint(0, ops_per_phase)):
                local_op(node)
        for src, dst, n, src_addr, dst_addr, counter in messages:
            programs[src].send(src_addr, n, dst, dst_addr, counter)
        for node in nodes:
            incoming = {}
            for src, dst, n, src_addr, dst_addr, counter in messages:
                if dst == node:
                    incoming[counter] = incoming.get(counter, 0) + 1
                    if n:
                        usable[node].append((dst_addr, dst_addr + n))
            for counter, count in sorted(incoming.items(), key=lambda _: rng.random()):
                programs[node].wait(counter, count)
        for node in nodes:
            for _ in range(rng.randint(0, ops_per_phase // 2)):
                local_op(node)
    for node in nodes:
        programs[node].halt()
        if read_back:
            tp.read(node, 0, words)
    return tp
