"""A tile program: what the runtime loads into a tile and reads back.

    tp = TileProgram(cfg)
    p = tp.node(0, 0)              # the node's `Program` (see d1tile.sw.asm)
    p.matmul(0, 64, 16, clear=True); p.mread(128); p.halt()
    tp.load((0, 0), 0, a_words)    # SRAM words loaded before the start
    tp.read((0, 0), 128, 8)        # SRAM words read back after every node has halted

Every node of the grid runs a program; a node without one gets a lone HALT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def load(self, node, addr: int, words) -> None:
        node = self._check_node(node)
        words = [int(w) for w in words]
        self._check_range(node, addr, len(words), "load")
        limit = 1 << self.cfg.word_bits
        for i, word in enumerate(words):
            if not 0 <= word < limit:
                raise ProgramError(f"load word {i} for node {node} is not a {self.cfg.word_bits}"
                                   "-bit unsigned value")
        self.loads.setdefault(node, []).append((addr, words))

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
                         self.loads, self.reads)

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
        return tp
