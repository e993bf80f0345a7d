"""How long the RTL of a large tile takes to elaborate: `Tile(cfg)` for a grid (default
16 x 16) through Amaranth's elaboration (`Fragment.get`), and with `--rtlil` on to RTLIL text
(what `d1tile.hw.verilator` hands Yosys before Verilator), with wall and CPU seconds and the
peak memory of the process.

    .venv/bin/python bench/rtl_scale.py [--grid 16x16] [--preset tiny|default] [--rtlil]

Not a test: the 16 x 16 tile's elaboration takes minutes (tests/test_scale.py elaborates its
16 x 16 router mesh and one node of a 32 x 32 tile instead). Measured figures:
docs/architecture.md, "Scale".
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from d1tile.params import ConfigError, TileConfig, parse_grid


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="16x16", help="RxC (default 16x16)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "default"])
    parser.add_argument("--rtlil", action="store_true",
                        help="also convert to RTLIL (much longer, and gigabytes for 16x16)")
    args = parser.parse_args(argv)
    try:
        cfg = TileConfig.preset(args.preset).with_grid(*parse_grid(args.grid))
    except ConfigError as exc:
        parser.error(str(exc))
    from amaranth.hdl import Fragment

    from d1tile.hw.tile import Tile
    print(f"elaborating Tile({cfg.key}): {cfg.nodes} nodes", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    Fragment.get(Tile(cfg), None)
    print(f"Fragment.get: {time.perf_counter() - wall:.1f} s wall, "
          f"{time.process_time() - cpu:.1f} s CPU, peak {peak_mib():,.0f} MiB", flush=True)
    if args.rtlil:
        from amaranth.back import rtlil
        wall, cpu = time.perf_counter(), time.process_time()
        text = rtlil.convert(Tile(cfg), name="tile")
        print(f"rtlil.convert: {time.perf_counter() - wall:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU, {len(text) / 1e6:.0f} MB of RTLIL, "
              f"peak {peak_mib():,.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
