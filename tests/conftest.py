"""pytest support: run a cocotb bench (tests/hw/tb_*.py) against a Verilator build.

Builds are cached per design (see `d1tile.hw.verilator.build`), so every configuration is built
once and reused by all the tests that need it. Seeds come from `D1TILE_SEED` (random when unset)
and are printed with every run; a failure's message says how to replay it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from d1tile.hw import verilator
from d1tile.params import TileConfig

BENCH_DIR = Path(__file__).parent / "hw"


# One seed for the whole session, printed in pytest's header and in every failure message.
SESSION_SEED = int(os.environ.get("D1TILE_SEED", time.time_ns() % 2**31))


def pytest_report_header(config):
    return f"d1tile seed: {SESSION_SEED} (replay with D1TILE_SEED={SESSION_SEED} make test)"


def bench_seed() -> int:
    return SESSION_SEED


def run_bench(component, top: str, cfg: TileConfig, module: str, *, key: str | None = None,
              testcase: str | None = None, env: dict[str, str] | None = None,
              seed: int | None = None):
    """Build `component` (or a factory) once per design and run cocotb `module` against it.

    The bench reads its configuration from the `D1TILE_CONFIG` environment variable.
    """
    build = verilator.build(component, top, key or f"{top}-{cfg.key}")
    seed = bench_seed() if seed is None else seed
    print(f"[d1tile] running {module}{'::' + testcase if testcase else ''} on {cfg.key}, "
          f"seed {seed} (replay: D1TILE_SEED={seed})")
    return verilator.run_cocotb(
        build, module, testcase=testcase, seed=seed, module_path=BENCH_DIR,
        test_dir=build.directory / "runs" / f"{module}-{testcase or 'all'}",
        env={"D1TILE_CONFIG": cfg.to_json(), **(env or {})})


@pytest.fixture(params=["tiny", "default"])
def preset_cfg(request) -> TileConfig:
    """Both presets: block benches run on the tiny and the default configuration."""
    return TileConfig.preset(request.param)
