"""A tile program: what the runtime loads into a tile and reads back.

    tp = TileProgram(cfg)
    p = tp.node(0, 0)              # the node's `Program` (see d1tile.sw.asm)
    p.matmul(0, 64, 16, clear=True); p.mread(128); p.halt()
    tp.load((0, 0), 0, a_words)    # SRAM words loaded before the start
    tp.read((0, 0), 128, 8)        # SRAM words read back after every node has halted
    tp.feed((0, 0), 200, words, counter=31)   # words written after the START (bumps counter 31)

Feeds are what lets a node start before all of its data is there (the GEMM kernels use them
for weights and inputs): the host sends them after the STARTs, in the order of their `key`
(then of the calls), each region bumping its counter once when it has arrived. A compiler that
knows a region's place but not yet its words (an input) declares it with `expect_feed`; the
`load` of those words later becomes the feed.

Every node of the grid runs a program; a node without one gets a lone HALT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from d1tile.formats import SYNC_COUNTER_ID_BITS
from d1tile.params import TileConfig
from d1tile.sim.host import TileImage
from d1tile.sw.asm import Program


__all__ = ["TileProgram", "ProgramError"]


class ProgramError(ValueError):
    """A load or read region that does not fit a node, or a node outside the grid."""


@dataclass
class TileProgram:
    cfg: TileConfig
    programs: dict = field(default_factory=dict)   # (x, y) -> Program
    loads: dict = field(default_factory=dict)      # (x, y) -> [(addr, [words])]
    reads: dict = field(default_factory=dict)      # (x, y) -> [(addr, n)]
    feed_list: list = field(default_factory=list)  # [(key, seq, (x, y), addr, [words], counter)]
    # ((x, y), addr) -> [(n, counter, key, seq)], in declaration order: a region fed more than
    # once (words reused after a barrier) takes its loads in that order
    expected: dict = field(default_factory=dict)
    early: list = field(default_factory=list)      # [(x, y)]: loaded and STARTed first (host)
    gate_of: dict = field(default_factory=dict)    # feed seq -> ((x, y), tokens): a gated feed
    host_ops: list = field(default_factory=list)   # what the host computes from streams and
    #                                                writes back (`d1tile.hostops`)

    def _check_node(self, node) -> tuple[int, int]:
        x, y = node
        if not (0 <= x < self.cfg.cols and 0 <= y < self.cfg.rows):
            raise ProgramError(f"node {node} is outside the {self.cfg.rows}x{self.cfg.cols} grid")
        return (x, y)

    def _check_range(self, node, addr: int, n: int, what: str):
        if addr < 0 or n < 0 or addr + n > self.cfg.sram_words:
            raise ProgramError(f"{what} of {n} words at {addr} on node {node} does not fit its "
                               f"{self.cfg.sram_words}-word SRAM")

    def node(self, x: int, y: int) -> Program:
        node = self._check_node((x, y))
        if node not in self.programs:
            self.programs[node] = Program(self.cfg)
        return self.programs[node]

    def _checked(self, node, addr: int, words, what: str) -> list[int]:
        words = [int(w) for w in words]
        self._check_range(node, addr, len(words), what)
        limit = 1 << self.cfg.word_bits
        for i, word in enumerate(words):
            if not 0 <= word < limit:
                raise ProgramError(f"{what} word {i} for node {node} is not a {self.cfg.word_bits}"
                                   "-bit unsigned value")
        return words

    def load(self, node, addr: int, words) -> None:
        """SRAM words loaded before the start; or, for a region declared by `expect_feed`, its
        feed (the words must fill it exactly)."""
        node = self._check_node(node)
        pending = self.expected.get((node, addr))
        if pending:
            n, counter, key, seq = pending[0]
            words = self._checked(node, addr, words, "load")
            if len(words) != n:
                how = "loaded" if counter is None else "fed"
                raise ProgramError(f"the program expects {n} words {how} at {addr} on node "
                                   f"{node}, not {len(words)}")
            pending.pop(0)
            if not pending:
                del self.expected[(node, addr)]
            if counter is None:         # `expect_load`: before the start
                self.loads.setdefault(node, []).append((addr, words))
            else:
                self.feed_list.append((key, seq, node, addr, words, counter))
            return
        self.loads.setdefault(node, []).append((addr, self._checked(node, addr, words, "load")))

    def _feed_key(self, counter: int, key) -> tuple:
        if not 0 <= counter < 1 << SYNC_COUNTER_ID_BITS:
            raise ProgramError(f"feed counter {counter} is not one of the node's "
                               f"{1 << SYNC_COUNTER_ID_BITS} sync counters")
        return tuple(key) if isinstance(key, (tuple, list)) else (key,)

    def feed(self, node, addr: int, words, *, counter: int, key=(), gate=None) -> None:
        """Words the host writes at `addr` after the STARTs, bumping `counter` on the node once
        they have all arrived; feeds go in the order of `key` (any tuple of numbers), then of
        the calls. `gate` = (node, tokens): the host sends it only once it has received that
        many tokens (zero-length SENDs to the host) from that node (`d1tile.sim.host`)."""
        node = self._check_node(node)
        key = self._feed_key(counter, key)
        words = self._checked(node, addr, words, "feed")
        seq = len(self.feed_list) + self._pending()
        self._gate(seq, gate)
        self.feed_list.append((key, seq, node, addr, words, counter))

    def expect_feed(self, node, addr: int, n: int, *, counter: int, key=(), gate=None) -> None:
        """Declare a feed whose words a later `load(node, addr, words)` of exactly n words
        gives (an input known by place before its values). A region declared twice (its
        words reused after a barrier) takes its loads in the order of the declarations."""
        node = self._check_node(node)
        key = self._feed_key(counter, key)
        self._check_range(node, addr, n, "feed")
        seq = len(self.feed_list) + self._pending()
        self._gate(seq, gate)
        self.expected.setdefault((node, addr), []).append((n, counter, key, seq))

    def expect_load(self, node, addr: int, n: int) -> None:
        """Declare a load before the start whose words a later `load(node, addr, words)` of
        exactly n words gives, in order with the feeds `expect_feed` declares at the same
        address (a region loaded first, then fed again once its words are reused)."""
        node = self._check_node(node)
        self._check_range(node, addr, n, "load")
        self.expected.setdefault((node, addr), []).append((n, None, (), -1))

    def _pending(self, feeds_only: bool = True) -> int:
        """Declared regions not loaded yet (feeds only: what numbers the feeds, `seq`)."""
        return sum(1 for v in self.expected.values() for e in v
                   if e[1] is not None or not feeds_only)

    def _gate(self, seq: int, gate) -> None:
        if gate is None:
            return
        node, tokens = gate
        node = self._check_node(node)
        if not (isinstance(tokens, int) and tokens >= 1):
            raise ProgramError(f"a feed's gate needs a positive token count, not {tokens!r}")
        self.gate_of[seq] = (node, tokens)

    @property
    def feeds(self) -> list:
        """[((x, y), addr, [words], counter)] in the order the host sends them. Raises
        ProgramError while a declared feed has not been loaded."""
        if self.expected:
            (node, addr), ((n, *_), *_) = next(iter(sorted(self.expected.items())))
            raise ProgramError(f"node {node} expects {n} words fed at {addr} and "
                               f"{self._pending(False) - 1} more regions that were not loaded "
                               "(load the program's inputs before running it)")
        return [(node, addr, words, counter)
                for _, _, node, addr, words, counter in self._sorted_feeds()]

    def _sorted_feeds(self) -> list:
        return sorted(self.feed_list, key=lambda f: (f[0], f[1]))

    @property
    def gates(self) -> list:
        """[(index in `feeds`, (x, y), tokens)] of the gated feeds."""
        return [(i, *self.gate_of[f[1]]) for i, f in enumerate(self._sorted_feeds())
                if f[1] in self.gate_of]

    def read(self, node, addr: int, n: int) -> None:
        node = self._check_node(node)
        self._check_range(node, addr, n, "read")
        self.reads.setdefault(node, []).append((addr, n))

    def words_of(self, node) -> list[int]:
        """The node's program words (a lone HALT when it has none)."""
        program = self.programs.get(node)
        if program is None or not program.words:
            program = Program(self.cfg)
            program.halt()
        return program.words

    @property
    def nodes(self) -> list[tuple[int, int]]:
        return [(x, y) for y in range(self.cfg.rows) for x in range(self.cfg.cols)]

    def image(self) -> TileImage:
        """The program as plain data (`d1tile.sim.host.TileImage`)."""
        return TileImage(self.cfg, {n: self.words_of(n) for n in self.programs},
                         self.loads, self.reads, self.feeds, list(self.early), self.gates,
                         list(self.host_ops))

    def to_json(self) -> str:
        """Plain JSON (words as integers), e.g. to hand a program to a simulator process."""
        return self.image().to_json()

    @classmethod
    def from_json(cls, text: str) -> "TileProgram":
        image = TileImage.from_json(text)
        tp = cls(image.cfg)
        for node, words in image.programs.items():
            program = Program(image.cfg, check=False)
            program.words = words
            tp.programs[node] = program
        tp.loads, tp.reads = image.loads, image.reads
        tp.early = list(image.early)
        tp.feed_list = [((), seq, node, addr, words, counter)
                        for seq, (node, addr, words, counter) in enumerate(image.feeds)]
        tp.gate_of = {i: (node, tokens) for i, node, tokens in image.gates}
        tp.host_ops = list(image.host_ops)
        return tp
