"""MAC utilisation of the toy models (sklearn digits MLP and CNN) compiled onto the tile.

    .venv/bin/python bench/toy_utilisation.py                    # default 4x4, whole test set
    .venv/bin/python bench/toy_utilisation.py --batch 64 --preset default --grid 2x2
    .venv/bin/python bench/toy_utilisation.py --dtype both       # int8 and bf16

`network_utilisation.py` for the toy models, with their defaults: the MLP and the CNN, all 360
test images, int8 (any of its options given here wins). It prints, per model, the cycles
against the ideal, the matrix units' MACs and busy share, and the cycles per layer.
"""

from __future__ import annotations

import sys

import network_utilisation    # this folder's script, beside this one

from d1tile.sw.toy_models import digits_split


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = ["--models", "mlp,cnn", "--batch", str(len(digits_split()[2])),
                "--dtype", "int8"]
    return network_utilisation.main(defaults + argv)   # argparse: the last of an option wins


if __name__ == "__main__":
    raise SystemExit(main())
