"""The `d1tile` command line.

Every user error (bad config, bad option value, missing tool) ends with a one-line message on
stderr and exit status 2; a failed check (a mismatch against the reference) with status 1.
"""

from __future__ import annotations

import argparse
import sys

from .hw.verilator import SimulationFailed
from .params import ConfigError, TileConfig, parse_grid


class CheckFailed(Exception):
    """A run finished but its result disagrees with the reference."""


def config_from_args(args) -> TileConfig:
    cfg = TileConfig.preset(args.preset)
    if getattr(args, "grid", None):
        rows, cols = parse_grid(args.grid)
        cfg = cfg.with_grid(rows, cols)
    return cfg


def _add_config_options(parser, default_preset="default"):
    parser.add_argument("--preset", default=default_preset,
                        help=f"named configuration (default: {default_preset}); see `d1tile config`")
    parser.add_argument("--grid", metavar="RxC", help="override the grid size, e.g. 2x2")


def cmd_config(args) -> int:
    cfg = config_from_args(args)
    print(f"preset {args.preset}: {cfg}")
    derived = {
        "nodes": cfg.nodes, "word_bytes": cfg.word_bytes, "sram_words": cfg.sram_words,
        "bank_words": cfg.bank_words, "macs_per_cycle (node)": cfg.macs_per_cycle,
        "peak_macs_per_cycle (grid)": cfg.peak_macs_per_cycle, "coord_bits": cfg.coord_bits,
    }
    for name, value in derived.items():
        print(f"  {name:28} {value}")
    return 0


def cmd_demo(args) -> int:
    from .hw.matrix_demo import run_demo
    cfg = config_from_args(args)
    m, k, n = args.shape
    for name, value in zip("mkn", args.shape):
        if value < 1:   # checked before anything is printed: no partial output
            raise ValueError(f"--shape: dimension {name}={value} must be a positive integer")
    print(f"d1tile demo: random int8 ({m}x{k}) @ ({k}x{n}) on the {cfg.mac_dim}x{cfg.mac_dim} "
          f"matrix unit of preset {args.preset!r}, RTL on Verilator (seed {args.seed})")
    result = run_demo(cfg, m, k, n, args.seed, log=print)
    print(f"  cycles        {result['cycles']}")
    print(f"  ideal cycles  {result['ideal_cycles']:g}  (m*k*n / {cfg.macs_per_cycle} MACs per cycle)")
    print(f"  utilisation   {100 * result['utilisation']:.1f} %")
    print(f"  vs NumPy      {'bit-exact' if result['match'] else 'MISMATCH'}")
    if not result["match"]:
        raise CheckFailed("the matrix unit's product differs from NumPy's")
    return 0


def cmd_noc_stress(args) -> int:
    from .sim import noc
    cfg = config_from_args(args)
    run = noc.run_rtl if args.backend == "rtl" else noc.run_model
    kwargs = {"log": print} if args.backend == "rtl" else {}
    # Argument errors surface before anything is printed.
    noc.NocTraffic(cfg, packets=args.packets, rate=args.rate, seed=args.seed)
    print(f"d1tile noc-stress: {cfg.rows}x{cfg.cols} mesh ({args.preset}), {args.packets} packets "
          f"at {args.rate} flits/node/cycle, seed {args.seed}, backend {args.backend}")
    stats = run(cfg, packets=args.packets, rate=args.rate, seed=args.seed, **kwargs)
    print(stats.summary())
    if not stats.ok:
        raise CheckFailed("packets were lost, duplicated, reordered or broken, or the mesh stalled")
    return 0


def cmd_verify(args) -> int:
    from .sw.verify import verify
    cfg = config_from_args(args)
    if args.random_programs < 1:
        raise ValueError(f"--random-programs {args.random_programs}: give at least 1")
    if args.only is not None and not 0 <= args.only < args.random_programs:
        raise ValueError(f"--only {args.only} is not one of the {args.random_programs} programs")
    print(f"d1tile verify: {args.random_programs if args.only is None else 1} random program(s), "
          f"seed {args.seed}, {cfg.rows}x{cfg.cols} grid, preset {args.preset}: cycle model vs "
          f"RTL (Verilator) vs functional interpreter")
    report = verify(cfg, args.random_programs, args.seed, only=args.only)
    print(f"model: {report.model_cycles} cycles in {report.model_seconds:.2f} s; RTL: "
          f"{report.rtl_seconds:.2f} s (+ {report.build_seconds:.1f} s build)")
    print(f"{report.programs} programs: {report.mismatches} mismatches")
    return 1 if report.mismatches else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d1tile", description="A runnable model of a D1-style training tile.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print a configuration and its derived sizes")
    _add_config_options(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="run the demo (a random int8 matrix product on the RTL)")
    _add_config_options(p)
    p.add_argument("--shape", nargs=3, type=int, metavar=("M", "K", "N"), default=(32, 64, 32),
                   help="matrix product shape (default: 32 64 32)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("noc-stress", help="random traffic from every node through the mesh")
    _add_config_options(p)
    p.add_argument("--packets", type=int, default=2000, help="packets in total (default 2000)")
    p.add_argument("--rate", type=float, default=0.5,
                   help="offered load, flits per node per cycle, in (0, 1] (default 0.5)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--backend", choices=("model", "rtl"), default="model")
    p.set_defaults(func=cmd_noc_stress)

    p = sub.add_parser("verify", help="random programs on the cycle model and the RTL, compared")
    _add_config_options(p, default_preset="tiny")
    p.add_argument("--random-programs", type=int, default=20, metavar="N",
                   help="how many random programs (default 20)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--only", type=int, metavar="I",
                   help="run only program I of the N (the reproducer of a mismatch)")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as exc:
        print(f"d1tile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (CheckFailed, SimulationFailed) as exc:
        print(f"d1tile {args.command}: FAILED: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:   # tool missing, build failure: the message says what to do
        print(f"d1tile {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
