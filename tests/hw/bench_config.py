"""The configuration a cocotb bench runs with, passed by tests/conftest.py::run_bench."""

import os

from d1tile.params import TileConfig


def bench_config() -> TileConfig:
    return TileConfig.from_json(os.environ["D1TILE_CONFIG"])
