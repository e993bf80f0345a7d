"""MAC utilisation of the toy models (sklearn digits MLP and CNN) compiled onto the tile.

    .venv/bin/python bench/toy_utilisation.py                    # default 4x4, whole test set
    .venv/bin/python bench/toy_utilisation.py --batch 64 --preset default --grid 2x2
    .venv/bin/python bench/toy_utilisation.py --dtype both       # int8 and bf16

For each toy model (`d1tile.sw.toy_models`), compiles it for one batch of test images (default:
all 360), runs it on the cycle model with the issue trace, checks the logits bit for bit against
the reference and prints what `network_utilisation.py` prints (its `measure` and `show`):
cycles against the ideal, the matrix units' MACs and busy share, and the cycles per layer.
"""

from __future__ import annotations

import argparse
import sys

from network_utilisation import measure, show    # this folder's script, beside this one

from d1tile.params import ConfigError, TileConfig, parse_grid
from d1tile.sw.toy_models import digits_split


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--grid", metavar="RxC")
    parser.add_argument("--batch", type=int, help="test images (default: all 360)")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--dtype", choices=("int8", "bf16", "both"), default="int8")
    args = parser.parse_args(argv)
    try:
        cfg = TileConfig.preset(args.preset)
        if args.grid:
            cfg = cfg.with_grid(*parse_grid(args.grid))
    except ConfigError as exc:
        print(f"toy_utilisation: error: {exc}", file=sys.stderr)
        return 2
    batch = args.batch or len(digits_split()[2])
    for name in args.models.split(","):
        for dtype in ("int8", "bf16") if args.dtype == "both" else (args.dtype,):
            show(measure(cfg, name, batch, dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
