"""Loop rerolling: the compiler pass that turns a straight-line node program into hardware loops.

The kernels emit a layer's instructions straight-line (their schedule is easiest to state that
way); `reroll` then finds runs of repeated instructions whose address fields advance by a
constant stride, and replaces each run by a `LOOP` whose body carries a `STEP` before every
instruction that moves (`d1tile.isa`: LOOP, STEP, ADDRESS_SLOTS). It works bottom-up: every
round looks, over the top-level sequence, for the period p and repeat count r that save the most
words at each position (a period may hold loops of earlier rounds, so loops nest, up to
`isa.LOOP_DEPTH`), until a round finds nothing. The program's dynamic instruction stream is
unchanged: `unroll(reroll(words))` is the input, less the LOOPs, STEPs and padding NOPs (checked
by `reroll` itself, so a bug here is an exception, never a wrong program).

Two sequences X0 and Xk (k = 1 .. r-1) match when they have the same shape (the same
instructions in the same nesting, every field equal except the address slots) and every address
slot of Xk is the slot of X0 plus k times a stride (modulo 2**16). A body may not end with an
inner loop's last instruction (`isa.LoopControl`), so such a body gets a NOP at its end.

Cost: a STEP issues in one sequencer cycle, like any instruction, but it issues while the
engines are busy; the measured effect on the GEMM kernels is in docs/kernels.md.
"""

from __future__ import annotations

from d1tile import isa
from d1tile.isa import ADDRESS_SLOTS, FORMATS, LOOP_DEPTH, FaultCode, Opcode


__all__ = ["reroll", "unroll", "MAX_PERIOD"]

MAX_PERIOD = 24
"""The longest period (in top-level items) a round tries."""

_PERIODS = tuple(p for p in (2, 4, 8, 16) if p < MAX_PERIOD) + (MAX_PERIOD,)
_MASK = (1 << isa.ADDR_BITS) - 1
_NOP = isa.encode(Opcode.NOP)


def _slot_mask(op: Opcode) -> tuple[int, tuple[int, ...]]:
    lsbs = tuple(FORMATS[op].offsets[name] for name in ADDRESS_SLOTS.get(op, ()))
    mask = 0
    for lsb in lsbs:
        mask |= _MASK << lsb
    return mask, lsbs


_SLOTS = {op: _slot_mask(op) for op in Opcode}


class _Item:
    """A top-level item: one instruction word, or a loop (count, body items)."""

    __slots__ = ("word", "count", "body", "key", "slots", "size", "depth")

    def __init__(self, word: int | None = None, count: int = 0, body: tuple = ()):
        self.word, self.count, self.body = word, count, body
        if word is not None:
            code = word & 0xF
            mask, lsbs = _SLOTS.get(Opcode(code), (0, ())) if code in Opcode._value2member_map_ \
                else (0, ())
            self.key = word & ~mask
            self.slots = tuple((word >> lsb) & _MASK for lsb in lsbs)
            self.size, self.depth = 1, 0
        else:
            self.key = ("loop", count, tuple(i.key for i in body))
            self.slots = tuple(s for i in body for s in i.slots)
            self.size = 1 + sum(i.size for i in body)
            self.depth = 1 + max(i.depth for i in body)

    def words(self) -> list[int]:
        if self.word is not None:
            return [self.word]
        out = [isa.encode(Opcode.LOOP, count=self.count, body=self.size - 1)]
        for item in self.body:
            out += item.words()
        return out


def _stepped_body(items, strides, depth: int) -> list[_Item]:
    """`items` with a STEP of the new loop (level = how deep the instruction sits below it)
    before every instruction whose strides are not all zero; `strides` an iterator over the
    flattened slot strides."""
    out = []
    for item in items:
        if item.word is not None:
            s = [next(strides) for _ in item.slots]
            if any(s):
                s += [0] * (3 - len(s))
                out.append(_Item(isa.encode(Opcode.STEP, s0=s[0], s1=s[1], s2=s[2],
                                            level=depth)))
            out.append(item)
        else:
            body = _stepped_body(item.body, strides, depth + 1)
            out.append(_Item(count=item.count, body=tuple(body)))
    return out


def _run(items, s: int, p: int):
    """(r, strides) of the longest run of periods of p items from s (r >= 2), or None."""
    n = len(items)
    if s + 2 * p > n:
        return None
    first = items[s:s + p]
    keys = [i.key for i in first]
    if [i.key for i in items[s + p:s + 2 * p]] != keys:
        return None
    base = [v for i in first for v in i.slots]
    nxt = [v for i in items[s + p:s + 2 * p] for v in i.slots]
    strides = [(b - a) & _MASK for a, b in zip(base, nxt)]
    r = 2
    while s + (r + 1) * p <= n and r < 0xFFFF:
        period = items[s + r * p:s + (r + 1) * p]
        if [i.key for i in period] != keys:
            break
        values = [v for i in period for v in i.slots]
        if any(v != (a + r * d) & _MASK for v, a, d in zip(values, base, strides)):
            break
        r += 1
    return r, strides


def _round(items: list[_Item], longest: int, depth: int = LOOP_DEPTH) -> tuple[list[_Item], bool]:
    """One round: the runs (each the longest of its period from its start) that together
    save the most words, chosen by dynamic programming over the positions, each rolled."""
    n = len(items)
    runs = [[] for _ in range(n)]            # s -> [(saved, p, r, strides)]
    for s in range(n):
        for p in range(1, min(longest, (n - s) // 2) + 1):
            if 1 + max(i.depth for i in items[s:s + p]) > depth:
                continue
            found = _run(items, s, p)
            if found is None:
                continue
            r, strides = found
            size = sum(i.size for i in items[s:s + p])
            steps = sum(1 for item in items[s:s + p] for _ in _moving(item, iter(strides)))
            cost = 1 + steps + (1 if items[s + p - 1].word is None else 0)
            saved = size * (r - 1) - cost
            if saved > 0:
                runs[s].append((saved, p, r, strides))
    best = [0] * (n + 1)                     # the most words saved from s on
    choice = [None] * n
    for s in range(n - 1, -1, -1):
        best[s] = best[s + 1]
        for run in runs[s]:
            saved, p, r, _ = run
            if saved + best[s + p * r] > best[s]:
                best[s], choice[s] = saved + best[s + p * r], run
    out, s = [], 0
    while s < n:
        run = choice[s]
        if run is None:
            out.append(items[s])
            s += 1
            continue
        _, p, r, strides = run
        body = _stepped_body(items[s:s + p], iter(strides), 0)
        if body[-1].word is None:
            body.append(_Item(_NOP))
        out.append(_Item(count=r, body=tuple(body)))
        s += p * r
    return out, best[0] > 0


def _moving(item: _Item, strides):
    """Yield once per instruction of `item` that a STEP would have to move."""
    if item.word is not None:
        if any([next(strides) for _ in item.slots]):
            yield item
    else:
        for inner in item.body:
            yield from _moving(inner, strides)


def reroll(words, depth: int = LOOP_DEPTH) -> list[int]:
    """The program `words` (straight-line, or with loops of its own kept as they are) with its
    repeated runs rolled into LOOPs (module docstring), nested at most `depth` deep (less than
    the sequencer's `LOOP_DEPTH` when the result goes inside loops of the caller's)."""
    words = [int(w) for w in words]
    if any(w & 0xF in (Opcode.LOOP, Opcode.STEP) for w in words):
        return words        # already looped: left alone
    items = [_Item(w) for w in words]
    # Short periods first, to a fixed point, then longer ones: so the inner loops form before
    # a long period (a whole row of tiles, say) could swallow them unrolled.
    for longest in _PERIODS:
        changed = True
        while changed:
            items, changed = _round(items, longest, depth)
    out = [w for item in items for w in item.words()]
    if _stream(out) != _stream(words):
        raise AssertionError("loop rerolling changed the program's instruction stream")
    return out


def unroll(words, limit: int = 10_000_000) -> list[int]:
    """The instruction stream a program issues up to its end or its HALT (included), loops
    unrolled and STEPs applied (`isa.LoopControl`), LOOP and STEP words left out. A loop fault
    raises ValueError."""
    from d1tile.params import TileConfig
    loops = isa.LoopControl(TileConfig(imem_words=65536))
    pc, out = 0, []
    while pc < len(words):
        instr = isa.decode(loops.effective(words[pc]))
        if instr.op in (Opcode.LOOP, Opcode.STEP):
            code, value = loops.fault(instr, pc)
            if code != FaultCode.NONE:
                raise ValueError(f"pc {pc}: {instr}: loop fault {code.name} (value {value})")
        else:
            out.append(instr.raw)
            if instr.op == Opcode.HALT:
                break
        if len(out) > limit:
            raise ValueError(f"the program issues more than {limit} instructions")
        pc = loops.issue(instr, pc)
    return out


def _stream(words) -> list[int]:
    return [w for w in unroll(words) if w != _NOP]
