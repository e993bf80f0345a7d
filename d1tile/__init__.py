"""d1tile: an open, runnable model of a D1-style training tile.

Sub-packages: `d1tile.hw` (Amaranth RTL and the Verilator toolchain), `d1tile.sim` (reference
and cycle-level models), `d1tile.sw` (compiler and runtime). Parameters: `d1tile.params`; bit
formats: `d1tile.formats`.
"""

from .params import ConfigError, TileConfig, PRESETS

__all__ = ["ConfigError", "TileConfig", "PRESETS"]
__version__ = "0.1.0"
