"""What the host computes while a tile runs: functions of what a node streams to it whose
results it writes back into the node (`TileImage.host_ops`, run by `d1tile.sim.host.HostDriver`
for both backends and by the functional interpreter).

One kind so far, the softmax cross-entropy of a training step, which the tile cannot compute
(its vector unit has no exp): a node streams its N samples' logits (FP32 words, one per class,
the samples in the lanes), the host computes each sample's loss and dL/dz in float32 NumPy and
writes dz back as the two BF16 operand layouts the backward pass reads, bumping a counter the
node WAITs on. An op is plain data (JSON):

    {"kind": "softmax-xent", "node": [x, y], "tag": stream address, "dst": address,
     "counter": c, "classes": F, "rows": words streamed (F rounded up to N),
     "inv_batch": FP32 bits of 1 / (the whole mini-batch), "labels": [[N labels] per step]}

The k-th packet the node streams to address `tag` is step k's logits.
"""

from __future__ import annotations

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ElemType, MATRIX_TYPES
from d1tile.formats import lanes_from_word
from d1tile.params import TileConfig


__all__ = ["softmax_xent_f32", "HOST_OPS", "run_host_op", "logits_from_words"]


def softmax_xent_f32(z_bits, labels, inv_b) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy on the host, in float32 NumPy, from the logits' FP32 bits [B, F]:
    (each sample's loss log s - (z_y - m), float32 [B]; dL/dz = (e / s - onehot) inv_b as FP32
    bits [B, F]), with m = the row's maximum, e = exp(z - m), s = the sum of e added class
    after class. (NumPy's float32 exp and log are not guaranteed identical across CPUs: the
    tile's run and its reference call this one function on the same rows, so their bits
    agree on one machine.)"""
    z = numerics.f32_value(z_bits).astype(np.float32)
    b, f = z.shape
    y = np.asarray(labels, dtype=np.int64)
    inv_b = np.float32(inv_b)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m = z.max(axis=1)
        e = np.exp(z - m[:, None]).astype(np.float32)
        s = np.zeros(b, dtype=np.float32)
        for j in range(f):
            s = (s + e[:, j]).astype(np.float32)
        per = (np.log(s) - (z[np.arange(b), y] - m)).astype(np.float32)
        dz = (e / s[:, None]).astype(np.float32)
        dz[np.arange(b), y] = (dz[np.arange(b), y] - np.float32(1)).astype(np.float32)
        dz = (dz * inv_b).astype(np.float32)
    return per, numerics.f32_bits(dz.astype(np.float64))


def logits_from_words(cfg: TileConfig, words, classes: int) -> np.ndarray:
    """FP32 bits [N, classes] from streamed words (word f: class f, the N samples in lanes)."""
    rows = [lanes_from_word(w, cfg.lanes) for w in list(words)[:classes]]
    return np.asarray(rows, dtype=np.uint32).T.copy()


def _dz_words(cfg: TileConfig, dz_bits: np.ndarray, rows: int) -> list[int]:
    """dz [N, F] (FP32 bits) as the backward's BF16 operands (round to nearest even): rows/2
    words with the samples in the lanes (word w: classes 2w, 2w+1), then per block of N classes
    N/2 words with the classes in the lanes (word w: samples 2w, 2w+1)."""
    n = cfg.mac_dim
    spec = MATRIX_TYPES[ElemType.BF16]
    pad = np.zeros((n, rows), dtype=np.int64)
    pad[:dz_bits.shape[0], :dz_bits.shape[1]] = numerics.bf16_from_f32_rne(dz_bits)
    batch = [spec.pack_vectors(cfg, pad[:, 2 * w:2 * w + 2].T) for w in range(rows // 2)]
    feats = [spec.pack_vectors(cfg, pad[2 * w:2 * w + 2, i * n:(i + 1) * n])
             for i in range(rows // n) for w in range(n // 2)]
    return batch + feats


def _softmax_xent(cfg: TileConfig, op: dict, step: int, words) -> tuple:
    z = logits_from_words(cfg, words, op["classes"])
    labels = op["labels"][step]
    inv_b = numerics.f32_value(np.uint32(op["inv_batch"])).astype(np.float32)
    per, dz = softmax_xent_f32(z, labels, inv_b)
    return per, [(op["dst"], _dz_words(cfg, dz, op["rows"]))]


HOST_OPS = {"softmax-xent": _softmax_xent}


def run_host_op(cfg: TileConfig, op: dict, step: int, words) -> tuple:
    """(the op's values for the host's report, [(address, words)] to write into the node)."""
    if step >= len(op.get("labels", [])):
        raise RuntimeError(f"host op {op['kind']} on node {tuple(op['node'])}: step {step + 1} "
                           f"streamed, only {len(op.get('labels', []))} expected")
    return HOST_OPS[op["kind"]](cfg, op, step, words)
