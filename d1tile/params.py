"""The tile's parameters: one frozen dataclass shared by the RTL (`d1tile.hw`), the cycle model
(`d1tile.sim`) and the compiler (`d1tile.sw`).

This module imports no Amaranth, so the model and the compiler can use it without the HDL stack.
Derived sizes are properties; named configurations are presets (`TileConfig.preset("tiny")`).

Data layout conventions that follow from the parameters:

* The matrix unit is `mac_dim` x `mac_dim` multiply-accumulate cells (int8 x int8 -> int32 and
  bf16 x bf16 -> fp32).
* An SRAM word holds `mac_dim` 32-bit lanes, i.e. `4 * mac_dim` bytes. How many elements of
  each type it holds, and how many matrix-unit operand vectors (4 of int8, 2 of bf16), is the
  element-type table's (`d1tile.dtypes`).
* One flit carries one SRAM word of payload, so a DMA moves a word per flit.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


__all__ = ["ConfigError", "TileConfig", "PRESETS", "COORD_BITS"]


COORD_BITS = 5
"""Width of a node coordinate in the instruction set (SEND's y, MCAST's first and last, SHAPE's
span_first and span_last): nodes 0..31 along each dimension, so grids of up to
2**COORD_BITS = 32 rows and columns (`TileConfig.MAX_GRID`). SEND's x has one bit more
(`d1tile.isa.SEND_X_BITS`), because x == cols names the host edge east of the last column.
The flits size their coordinates to the grid instead (`TileConfig.coord_bits`)."""


class ConfigError(ValueError):
    """A configuration value is outside what the tile supports; the message names the field."""


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class TileConfig:
    """Parameters of a tile: an R x C mesh of identical nodes.

    Fields
    ------
    name : label used in reports and build-cache keys.
    rows, cols : grid size, 1..MAX_GRID (32) each: the model runs every size; the RTL elaborates
        at every size, and Verilator builds it in minutes up to 4x4 (8x8 takes hours:
        docs/architecture.md, "Scale").
    mac_dim : N, the matrix unit is N x N MACs; SRAM words are N 32-bit lanes. One of 2, 4, 8, 16.
    sram_kib : SRAM per node in KiB (the node's only data memory). A power of two, 1..1024.
    sram_banks : independent SRAM banks per node (high address bits select the bank). 1..16,
        a power of two.
    router_fifo_depth : flits buffered per router input port; 2 or more (2 is the minimum for
        one flit per cycle per port with ready/valid links).
    imem_words : instruction memory words per node (used by the sequencer).
    """

    name: str = "custom"
    rows: int = 4
    cols: int = 4
    mac_dim: int = 8
    sram_kib: int = 64
    sram_banks: int = 4
    router_fifo_depth: int = 4
    imem_words: int = 1024

    MAX_GRID = 1 << COORD_BITS   # node coordinates are COORD_BITS wide in instructions
    MAX_SRAM_WORDS = 1 << 16   # instruction address fields are 16 bits

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConfigError(f"{field.name} must be an integer, not {value!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, not {self.name!r}")
        for field in ("rows", "cols"):
            value = getattr(self, field)
            if not 1 <= value <= self.MAX_GRID:
                raise ConfigError(
                    f"{field}={value} is outside the supported range 1..{self.MAX_GRID} "
                    f"(instructions name nodes with {COORD_BITS}-bit coordinates)")
        if self.mac_dim not in (2, 4, 8, 16):
            raise ConfigError(f"mac_dim={self.mac_dim} is not supported; use one of 2, 4, 8, 16")
        if not _is_pow2(self.sram_kib) or self.sram_kib > 1024:
            raise ConfigError(f"sram_kib={self.sram_kib} must be a power of two from 1 to 1024")
        if not _is_pow2(self.sram_banks) or self.sram_banks > 16:
            raise ConfigError(f"sram_banks={self.sram_banks} must be a power of two from 1 to 16")
        if self.sram_words > self.MAX_SRAM_WORDS:
            raise ConfigError(
                f"sram_kib={self.sram_kib} gives {self.sram_words} words of {self.word_bytes} bytes; "
                f"instructions address at most {self.MAX_SRAM_WORDS} words")
        if self.sram_words < self.sram_banks * 4:
            raise ConfigError(
                f"sram_kib={self.sram_kib} gives {self.sram_words} words of {self.word_bytes} bytes, "
                f"too few for {self.sram_banks} banks of at least 4 words")
        from .formats import packet_header_format   # formats imports this module
        header = packet_header_format(self).width
        if header > self.word_bits:
            raise ConfigError(
                f"a packet header ({header} bits for a {self.rows}x{self.cols} grid) does not fit "
                f"a {self.word_bits}-bit word: use mac_dim >= 4 or a grid of at most 7 columns")
        if not 2 <= self.router_fifo_depth <= 64:
            raise ConfigError(
                f"router_fifo_depth={self.router_fifo_depth} must be 2..64 "
                "(2 is the minimum for full-rate links)")
        if not _is_pow2(self.imem_words) or not 16 <= self.imem_words <= 65536:
            raise ConfigError(f"imem_words={self.imem_words} must be a power of two from 16 to 65536")

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        """32-bit lanes per SRAM word (= mac_dim)."""
        return self.mac_dim

    @property
    def word_bytes(self) -> int:
        return 4 * self.mac_dim

    @property
    def word_bits(self) -> int:
        return 8 * self.word_bytes

    @property
    def sram_words(self) -> int:
        return self.sram_kib * 1024 // self.word_bytes

    @property
    def sram_addr_bits(self) -> int:
        return (self.sram_words - 1).bit_length()

    @property
    def bank_words(self) -> int:
        return self.sram_words // self.sram_banks

    @property
    def bank_addr_bits(self) -> int:
        """Address bits inside a bank; the bits above them select the bank."""
        return (self.bank_words - 1).bit_length()

    @property
    def nodes(self) -> int:
        return self.rows * self.cols

    @property
    def macs_per_cycle(self) -> int:
        """Peak MACs per cycle of one node."""
        return self.mac_dim * self.mac_dim

    @property
    def peak_macs_per_cycle(self) -> int:
        """Peak MACs per cycle of the whole grid."""
        return self.nodes * self.macs_per_cycle

    @property
    def coord_bits(self) -> int:
        """Width of a mesh coordinate. x runs 0..cols, where x == cols is the host edge (east of
        the last column); y runs 0..rows-1."""
        return max(self.cols, self.rows - 1, 1).bit_length()

    # -- presets and serialisation ---------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides) -> "TileConfig":
        """A named configuration, optionally with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> "TileConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def with_grid(self, rows: int, cols: int) -> "TileConfig":
        return self.replace(rows=rows, cols=cols)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TileConfig":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ConfigError("config JSON must be an object")
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**fields)

    @property
    def key(self) -> str:
        """A short stable string naming every field; used for build caches."""
        return (f"{self.name}-g{self.rows}x{self.cols}-n{self.mac_dim}-s{self.sram_kib}k"
                f"-b{self.sram_banks}-f{self.router_fifo_depth}-i{self.imem_words}")


def parse_grid(text: str) -> tuple[int, int]:
    """Parse 'RxC' (for example '4x4') into (rows, cols)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"grid {text!r} is not of the form RxC, for example 4x4")
    return int(parts[0]), int(parts[1])


PRESETS: dict[str, TileConfig] = {
    # Fast tests: a 2x2 grid of nodes with a 4x4 matrix unit and 4 KiB of SRAM each.
    "tiny": TileConfig(name="tiny", rows=2, cols=2, mac_dim=4, sram_kib=4, sram_banks=4,
                       router_fifo_depth=2, imem_words=256),
    # The reference configuration: 4x4 nodes, 8x8 MACs and 64 KiB of SRAM per node.
    "default": TileConfig(name="default", rows=4, cols=4, mac_dim=8, sram_kib=64, sram_banks=4,
                          router_fifo_depth=4, imem_words=1024),
    # Training: the default tile with 256 KiB of SRAM per node (a D1 node has 1.25 MB). FP32
    # master weights, velocity, gradients and received partial sums take 16 bytes per
    # parameter on every node of a data-parallel group (the toy MLP: 120 KiB), beside the BF16
    # operands; the default's 64 KiB holds the inference but not that.
    "train": TileConfig(name="train", rows=4, cols=4, mac_dim=8, sram_kib=256, sram_banks=4,
                        router_fifo_depth=4, imem_words=1024),
}
