"""Convolutions as implicit GEMMs: the geometry of a convolution on the tile, the MATMUL runs of
one output tile, the weight words of a feature block, and the references of what the tile
computes (int8 and bf16). The kernel that schedules them is `KernelBuilder.conv_layer`
(`d1tile.sw.kernels`); docs/kernels.md ("Convolutions") tells the whole story.

**Image layout.** An activation [B, C, H, W] lives on the tile as an `ActivationLayout` whose
stored features are its pixels in raster order, each pixel `cp` channels (c < C real, the
rest zeros), so a pixel is cp / V whole operand words (V k-steps per word: 4 int8, 2 bf16) and
the words of one image row are contiguous: feature (h, w, c) is stored at (h W + w) cp + c.
A layer's output is stored the same way with cp = its channel blocks x N (`padded_channels`).

**A tile** is N output channels (feature block i) x N batch elements (batch block j) at one
output position. Its product runs over the window's taps in the order (dy, dx, c) as one
MATMUL per *run*: a window row dy whose dx taps are contiguous in the input (dilation 1, the
block reads every channel word of the pixel) is one run of kw x cp / V words; otherwise (a
grouped convolution whose block reads only its groups' channel words, or dilation > 1) each
(dy, dx) is a run of the block's channel words. The weights of block i are stored once per node
that computes it, in run order (`block_kmatrix`). Taps over the padding are not multiplied:
a run is clipped to the part of the row inside the image, and a row outside it is skipped
(`tile_runs`), so no padding is stored or sent.

**Pooling.** A max pool after the convolution (its windows not overlapping) is fused: the
tiles of the P conv positions of one pooled output are computed one after the other and
max-reduced on the accumulators, as the GEMM kernels' pooled layers do (`candidates`; a window
element over the pool's padding repeats the window's first real element).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import ceil

import numpy as np

from d1tile import numerics
from d1tile.dtypes import ELEMENTS, ElemType
from d1tile.sim.vector import requantize
from d1tile.sw.errors import CompileError


__all__ = ["ConvGeometry", "WindowGeometry", "Run", "padded_channels", "split_positions",
           "reference_conv", "reference_conv_bf16", "conv_kmatrix_order"]


def padded_channels(channels: int, multiple: int) -> int:
    """`channels` rounded up to a multiple of `multiple`."""
    return ceil(channels / multiple) * multiple


def split_positions(positions: int, rows: int) -> dict:
    """{grid row y: (q0, q1)}: `positions` output positions (raster order) over the first
    min(rows, positions) grid rows, split evenly (sizes differ by at most one, the larger
    first): how convolutions and pools spread an image over a column."""
    used = min(rows, positions)
    base, extra = divmod(positions, used)
    out, lo = {}, 0
    for y in range(used):
        hi = lo + base + (1 if y < extra else 0)
        out[y] = (lo, hi)
        lo = hi
    return out


@dataclass(frozen=True)
class Run:
    """One MATMUL of a tile before clipping: window row `dy`, taps dx0 .. dx1-1, channel words
    cw0 .. cw1-1 of each pixel, from word `a` of the feature block's weights on."""
    dy: int
    dx0: int
    dx1: int
    cw0: int
    cw1: int
    a: int

    @property
    def words(self) -> int:
        return (self.dx1 - self.dx0) * (self.cw1 - self.cw0)


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution (1-D: height 1) on an image stored with `cp` channels per pixel, and
    the max pool fused after it (or none).

    in_h, in_w, in_c : the input image (in_c real channels of the cp stored per pixel)
    cp : stored channels per pixel (a multiple of the operand type's V)
    out_c : output channels
    kernel, strides, dilations : (h, w) each
    pads : (top, left, bottom, right), zero padding (never stored: taps over it are skipped)
    groups : in_c and out_c are split into this many groups (depthwise: groups = in_c)
    pool : None, or ((kh, kw), (sh, sw), (top, left, bottom, right)) of a fused max pool
    """
    in_h: int
    in_w: int
    in_c: int
    cp: int
    out_c: int
    kernel: tuple
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    groups: int = 1
    pool: tuple | None = None

    def __post_init__(self):
        where = "convolution"
        if self.cp < self.in_c:
            raise CompileError(f"{where}: {self.cp} stored channels hold fewer than its "
                               f"{self.in_c} input channels")
        if self.in_c % self.groups or self.out_c % self.groups:
            raise CompileError(f"{where}: {self.in_c} input and {self.out_c} output channels "
                               f"do not split into {self.groups} groups")
        kh, kw = self.kernel
        dh, dw = self.dilations
        pt, pl, pb, pr = self.pads
        if min(kh, kw, *self.strides, dh, dw) < 1 or min(self.pads) < 0:
            raise CompileError(f"{where}: kernel, strides and dilations must be >= 1 and pads "
                               f">= 0 (kernel {self.kernel}, strides {self.strides}, dilations "
                               f"{self.dilations}, pads {self.pads})")
        if self.out_h < 1 or self.out_w < 1:
            raise CompileError(f"{where}: its {kh}x{kw} kernel (dilations {self.dilations}) "
                               f"is larger than the padded {self.in_h}x{self.in_w} input")
        # Every output must see at least one real tap: a tile with no MATMUL would not clear
        # its accumulators.
        if max(pt, pb) > (kh - 1) * dh or max(pl, pr) > (kw - 1) * dw:
            raise CompileError(f"{where}: pads {self.pads} reach past the kernel's extent, so "
                               "some outputs see padding only (not supported)")
        if self.pool is not None:
            (qh, qw), (qsh, qsw), qpads = self.pool
            if qsh < qh or qsw < qw:
                raise CompileError(f"{where}: a fused max pool needs windows that do not "
                                   f"overlap (kernel {self.pool[0]}, strides {self.pool[1]})")
            if max(qpads[0], qpads[2]) >= qh or max(qpads[1], qpads[3]) >= qw:
                raise CompileError(f"{where}: max pool pads {qpads} reach a whole window")
            if self.pooled_h < 1 or self.pooled_w < 1:
                raise CompileError(f"{where}: the max pool's window is larger than its input")

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def out_h(self) -> int:
        kh, dh, (pt, _, pb, _) = self.kernel[0], self.dilations[0], self.pads
        return (self.in_h + pt + pb - (kh - 1) * dh - 1) // self.strides[0] + 1

    @property
    def out_w(self) -> int:
        kw, dw, (_, pl, _, pr) = self.kernel[1], self.dilations[1], self.pads
        return (self.in_w + pl + pr - (kw - 1) * dw - 1) // self.strides[1] + 1

    @property
    def pooled_h(self) -> int:
        if self.pool is None:
            return self.out_h
        (qh, _), (qsh, _), (qt, _, qb, _) = self.pool
        return (self.out_h + qt + qb - qh) // qsh + 1

    @property
    def pooled_w(self) -> int:
        if self.pool is None:
            return self.out_w
        (_, qw), (_, qsw), (_, ql, _, qr) = self.pool
        return (self.out_w + ql + qr - qw) // qsw + 1

    @property
    def positions(self) -> int:
        """Output (pooled) positions."""
        return self.pooled_h * self.pooled_w

    @property
    def pool_size(self) -> int:
        """Conv positions per output position (P, the candidates of a fused max pool)."""
        return 1 if self.pool is None else self.pool[0][0] * self.pool[0][1]

    def macs(self, batch: int) -> int:
        """The convolution's multiply-accumulates: C / groups x kh x kw per conv output
        (padding taps included, as the network defines them)."""
        kh, kw = self.kernel
        return (batch * self.out_c * self.out_h * self.out_w * (self.in_c // self.groups)
                * kh * kw)

    # -- where things are ----------------------------------------------------------------------

    @cached_property
    def candidates(self) -> np.ndarray:
        """[positions, P, 2] int: the conv position (oy, ox) of candidate p of each output
        position (raster order); without a pool P = 1 and the position itself. A pool window
        element over the pool's padding repeats the window's first real element."""
        if self.pool is None:
            oy, ox = np.divmod(np.arange(self.out_h * self.out_w), self.out_w)
            return np.stack([oy, ox], axis=1)[:, None, :]
        (qh, qw), (qsh, qsw), (qt, ql, _, _) = self.pool
        out = np.zeros((self.positions, qh * qw, 2), dtype=np.int64)
        for q in range(self.positions):
            py, px = divmod(q, self.pooled_w)
            cands = [(py * qsh - qt + u, px * qsw - ql + v) for u in range(qh)
                     for v in range(qw)]
            real = [c for c in cands if 0 <= c[0] < self.out_h and 0 <= c[1] < self.out_w]
            out[q] = [c if c in real else real[0] for c in cands]
        return out

    def row_split(self, rows: int, positions: tuple | None = None) -> dict:
        """{grid row y: (q0, q1)}: the output positions per grid row (`split_positions`);
        of the range `positions` = [p0, p1) only (a band of a convolution split over time),
        or of all."""
        p0, p1 = positions or (0, self.positions)
        return {y: (p0 + q0, p0 + q1) for y, (q0, q1) in split_positions(p1 - p0, rows).items()}

    def spans(self, rows: int, words_per_pixel: int, positions: tuple | None = None) -> dict:
        """{grid row y: (lo, hi)}: the words of an input block grid row y reads when the
        positions (all, or the range `positions`) are split over `rows` grid rows
        (`row_split`): whole input rows."""
        return {y: tuple(r * self.in_w * words_per_pixel for r in self.input_rows(*qs))
                for y, qs in self.row_split(rows, positions).items()}

    def bands(self, parts: int) -> list[tuple[int, int]]:
        """The output positions cut into `parts` bands of whole output rows (pooled rows;
        fewer bands when there are fewer rows): [(p0, p1)] in raster order, for a convolution
        split over time."""
        return [(r0 * self.pooled_w, r1 * self.pooled_w)
                for r0, r1 in split_positions(self.pooled_h, parts).values()]

    def band_macs(self, band: tuple, batch: int) -> int:
        """The MACs (as `macs` counts them) of the conv outputs band `band`'s outputs read:
        the band's share of a fused pool's candidates; conv rows no pool window reads go to
        the band after them, or the last."""
        p0, p1 = band
        last = p1 == self.positions
        rows = self.candidates[p0:p1, :, 0]
        r1 = self.out_h if last else int(rows.max()) + 1
        r0 = 0 if p0 == 0 else int(self.candidates[:p0, :, 0].max()) + 1
        return self.macs(batch) * (r1 - r0) // self.out_h

    def input_rows(self, q0: int, q1: int) -> tuple[int, int]:
        """[r0, r1): the input rows the output positions q0 .. q1-1 read (clipped to the
        image)."""
        oy = self.candidates[q0:q1, :, 0]
        kh, sh, dh, pt = self.kernel[0], self.strides[0], self.dilations[0], self.pads[0]
        r0 = int(oy.min()) * sh - pt
        r1 = int(oy.max()) * sh - pt + (kh - 1) * dh + 1
        return max(r0, 0), min(r1, self.in_h)

    # -- runs and weights ----------------------------------------------------------------------

    def block_words(self, i: int, n: int, vpw: int) -> tuple[int, int]:
        """[cw0, cw1): the channel words of a pixel that output block i (channels iN ..
        iN+N-1) reads: its groups' input channels."""
        cg, og = self.in_c // self.groups, self.out_c // self.groups
        o0, o1 = i * n, min((i + 1) * n, self.out_c)
        g0, g1 = o0 // og, (o1 - 1) // og
        return (g0 * cg) // vpw, ceil((g1 + 1) * cg / vpw)

    def runs(self, i: int, n: int, vpw: int) -> list[Run]:
        """The MATMUL runs of output block i, in the order its products are added: window
        rows dy; within a row one run of kw taps when the block reads every channel word and
        dilation is 1 (the taps are then contiguous words of the input row), else one run per
        tap of the block's channel words."""
        kh, kw = self.kernel
        cw0, cw1 = self.block_words(i, n, vpw)
        full = cw0 == 0 and cw1 == self.cp // vpw and self.dilations[1] == 1
        runs, a = [], 0
        for dy in range(kh):
            spans = [(0, kw)] if full else [(dx, dx + 1) for dx in range(kw)]
            for dx0, dx1 in spans:
                run = Run(dy, dx0, dx1, cw0, cw1, a)
                runs.append(run)
                a += run.words
        return runs

    def block_kmatrix(self, weight: np.ndarray, i: int, n: int, vpw: int) -> np.ndarray:
        """[K_i, N]: the k-steps of output block i in run order (V per word: word w, element
        s is channel cw V + s of tap (dy, dx)), column r = output channel iN + r; zeros for
        padding channels, channels outside an output's group and outputs beyond out_c.
        `weight` is [out_c, in_c / groups, kh, kw] (the ONNX layout; any dtype)."""
        cg, og = self.in_c // self.groups, self.out_c // self.groups
        rows = []
        for run in self.runs(i, n, vpw):
            for dx in range(run.dx0, run.dx1):
                for cw in range(run.cw0, run.cw1):
                    for s in range(vpw):
                        c = cw * vpw + s
                        row = np.zeros(n, dtype=weight.dtype)
                        for r in range(n):
                            o = i * n + r
                            if o < self.out_c and c < self.in_c and c // cg == o // og:
                                row[r] = weight[o, c - (o // og) * cg, run.dy, dx]
                        rows.append(row)
        return np.array(rows, dtype=weight.dtype).reshape(-1, n)

    def tile_runs(self, runs: list[Run], oy: int, ox: int, r0: int,
                  cwi: int) -> list[tuple[int, int, int]]:
        """The MATMULs (a, b, n) of the tile at conv position (oy, ox): a the word offset in
        the block's weights, b in the input block held from input row r0 on (rows of in_w
        pixels of cwi words), n words; the taps over the padding clipped away."""
        sh, sw = self.strides
        dh, dw = self.dilations
        pt, pl = self.pads[0], self.pads[1]
        out = []
        for run in runs:
            iy = oy * sh - pt + run.dy * dh
            if not 0 <= iy < self.in_h:
                continue
            ix0 = ox * sw - pl
            # taps dx with 0 <= ix0 + dx * dw < in_w
            lo = max(run.dx0, -(ix0 // dw) if ix0 < 0 else 0)
            hi = min(run.dx1, (self.in_w - 1 - ix0) // dw + 1)
            if lo >= hi:
                continue
            width = run.cw1 - run.cw0
            b = ((iy - r0) * self.in_w + ix0 + lo * dw) * cwi + run.cw0
            out.append((run.a + (lo - run.dx0) * width, b, (hi - lo) * width))
        return out


def conv_kmatrix_order(geom: ConvGeometry, i: int, n: int, vpw: int) -> list[tuple]:
    """(dy, dx, c) of each k-step of block i in run order (for the references)."""
    return [(run.dy, dx, cw * vpw + s) for run in geom.runs(i, n, vpw)
            for dx in range(run.dx0, run.dx1) for cw in range(run.cw0, run.cw1)
            for s in range(vpw)]


def _taps(geom: ConvGeometry, x: np.ndarray, i: int, n: int, vpw: int, pad_value):
    """The block's im2col: x [B, H, W, cp] -> ([B, OH, OW, K_i] values in run order, [OH, OW,
    K_i] mask of the taps inside the image)."""
    order = conv_kmatrix_order(geom, i, n, vpw)
    sh, sw = geom.strides
    dh, dw = geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    oy = np.arange(geom.out_h)[:, None, None]
    ox = np.arange(geom.out_w)[None, :, None]
    dy = np.array([t[0] for t in order])[None, None, :]
    dx = np.array([t[1] for t in order])[None, None, :]
    c = np.array([t[2] for t in order])
    iy = oy * sh - pt + dy * dh
    ix = ox * sw - pl + dx * dw
    inside = (iy >= 0) & (iy < geom.in_h) & (ix >= 0) & (ix < geom.in_w)
    iyc, ixc = np.clip(iy, 0, geom.in_h - 1), np.clip(ix, 0, geom.in_w - 1)
    taps = x[:, iyc, ixc, c[None, None, :]]
    return np.where(inside[None], taps, pad_value), inside


def _pool_and_layout(geom: ConvGeometry, acc: np.ndarray, pick) -> np.ndarray:
    """acc [B, OH, OW, ...] -> [B, positions, P, ...] by the pool's candidates, reduced with
    `pick` over P."""
    cand = geom.candidates
    picked = acc[:, cand[:, :, 0], cand[:, :, 1]]            # B, positions, P, ...
    return pick(picked)


def reference_conv(geom: ConvGeometry, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                   scale: int, shift: int, relu: bool, n: int) -> np.ndarray:
    """What `conv_layer` computes in int8: x [B, H, W, cp] int8 (the image layout) ->
    [B, positions, ob N] int8: requantize(max over the pool's candidates of the int32 sums
    over the taps inside the image + bias). Exact integers, so the order does not matter."""
    ob = ceil(geom.out_c / n)
    vpw = ELEMENTS[ElemType.INT8].groups
    out = np.zeros((x.shape[0], geom.positions, ob * n), dtype=np.int8)
    x = np.asarray(x, dtype=np.int64)
    for i in range(ob):
        k = geom.block_kmatrix(np.asarray(weight, dtype=np.int64), i, n, vpw)
        taps, _ = _taps(geom, x, i, n, vpw, 0)
        acc = taps @ k                                        # B, OH, OW, N (exact int64)
        pooled = _pool_and_layout(geom, acc, lambda a: a.max(axis=2))
        b = np.zeros(n, dtype=np.int64)
        hi = min(geom.out_c, (i + 1) * n)
        b[:hi - i * n] = np.asarray(bias, dtype=np.int64)[i * n:hi]
        wrapped = (pooled + b + 2**31) % 2**32 - 2**31
        out[:, :, i * n:(i + 1) * n] = requantize(wrapped, scale, shift, relu)
    return out


def reference_conv_bf16(geom: ConvGeometry, x_bits: np.ndarray, weight: np.ndarray,
                        bias: np.ndarray, relu: bool, n: int) -> np.ndarray:
    """What `conv_layer` computes in bf16, as BF16 bits (uint16) [B, positions, ob N]: per
    output, the FP32 sum from -0 of the BF16 products of the taps inside the image, added one
    after another in run order (`conv_kmatrix_order`, `numerics.bf16_mac`); the max over the
    pool's candidates (`numerics.fp32_max`, candidate 0 first); the bias added
    (`numerics.fp32_add`, the bias rounded to FP32); `numerics.fp32_relu` with relu; padding
    channels (beyond out_c) +0; rounded to BF16 (`numerics.bf16_from_f32_rne`). `x_bits` is
    [B, H, W, cp] BF16 bits, `weight` [out_c, in_c / groups, kh, kw] floats (rounded to
    BF16)."""
    ob = ceil(geom.out_c / n)
    vpw = ELEMENTS[ElemType.BF16].groups
    wbits = numerics.bf16_bits(np.asarray(weight, dtype=np.float32)).astype(np.int64)
    out = np.zeros((x_bits.shape[0], geom.positions, ob * n), dtype=np.uint16)
    bias32 = numerics.f32_bits(np.asarray(bias, dtype=np.float64))
    for i in range(ob):
        k = geom.block_kmatrix(wbits, i, n, vpw)                 # K, N
        taps, inside = _taps(geom, np.asarray(x_bits, dtype=np.int64), i, n, vpw, 0)
        acc = np.full(taps.shape[:3] + (n,), numerics.F32_NEG_ZERO, dtype=np.uint32)
        for s in range(k.shape[0]):
            step = numerics.bf16_mac(acc, taps[..., s, None], k[s][None, None, None, :])
            acc = np.where(inside[None, :, :, s, None], step, acc)
        cand = geom.candidates
        best = acc[:, cand[:, 0, 0], cand[:, 0, 1]]
        for p in range(1, cand.shape[1]):
            best = numerics.fp32_max(best, acc[:, cand[:, p, 0], cand[:, p, 1]])
        b = np.zeros(n, dtype=np.uint32)
        hi = min(geom.out_c, (i + 1) * n)
        b[:hi - i * n] = bias32[i * n:hi]
        y = numerics.fp32_add(best, b[None, None, :])
        if relu:
            y = numerics.fp32_relu(y)
        y = np.where(np.arange(n)[None, None, :] < hi - i * n, y, np.uint32(0))
        out[:, :, i * n:(i + 1) * n] = numerics.bf16_from_f32_rne(y)
    return out


@dataclass(frozen=True)
class WindowGeometry:
    """A pooling window over an image stored with `cp` channels per pixel (the vector unit's
    pooling layers, `KernelBuilder.pool_layer`).

    in_h, in_w : the input image; cp : stored channels per pixel (the output keeps them)
    kernel, strides, dilations : (h, w) each; pads : (top, left, bottom, right)
    kind : "max" or "avg"
    count_include_pad : avg only, the divisor counts the padding taps (inside the padded
        extent) too, else only the taps inside the image
    ceil_mode : output sizes round up (a last window that would start in the end padding is
        dropped, as ONNX's reference does)
    """
    in_h: int
    in_w: int
    cp: int
    kernel: tuple
    strides: tuple
    pads: tuple = (0, 0, 0, 0)
    dilations: tuple = (1, 1)
    kind: str = "max"
    count_include_pad: bool = False
    ceil_mode: bool = False

    def __post_init__(self):
        if self.kind not in ("max", "avg"):
            raise CompileError(f"pooling: kind {self.kind!r} is not 'max' or 'avg'")
        if min(*self.kernel, *self.strides, *self.dilations) < 1 or min(self.pads) < 0:
            raise CompileError(f"pooling: kernel {self.kernel}, strides {self.strides}, "
                               f"dilations {self.dilations} must be >= 1, pads {self.pads} >= 0")
        if self.out_h < 1 or self.out_w < 1:
            raise CompileError(f"pooling: the {self.kernel[0]}x{self.kernel[1]} window is "
                               f"larger than the padded {self.in_h}x{self.in_w} input")
        if any(not self.taps(q) for q in range(self.positions)):
            raise CompileError(f"pooling: pads {self.pads} leave windows with no input "
                               "element")

    def _size(self, size, k, s, d, lo, hi) -> int:
        span = size + lo + hi - d * (k - 1) - 1
        if not self.ceil_mode:
            return span // s + 1
        out = -(-span // s) + 1
        if (out - 1) * s >= size + lo:      # the last window starts in the end padding
            out -= 1
        return out

    @property
    def out_h(self) -> int:
        return self._size(self.in_h, self.kernel[0], self.strides[0], self.dilations[0],
                          self.pads[0], self.pads[2])

    @property
    def out_w(self) -> int:
        return self._size(self.in_w, self.kernel[1], self.strides[1], self.dilations[1],
                          self.pads[1], self.pads[3])

    @property
    def positions(self) -> int:
        return self.out_h * self.out_w

    def taps(self, q: int) -> list[tuple[int, int]]:
        """The input pixels (iy, ix) of output position q's window inside the image, in order
        (dy, then dx)."""
        oy, ox = divmod(q, self.out_w)
        out = []
        for dy in range(self.kernel[0]):
            iy = oy * self.strides[0] - self.pads[0] + dy * self.dilations[0]
            for dx in range(self.kernel[1]):
                ix = ox * self.strides[1] - self.pads[1] + dx * self.dilations[1]
                if 0 <= iy < self.in_h and 0 <= ix < self.in_w:
                    out.append((iy, ix))
        return out

    def divisor(self, q: int) -> int:
        """An average's divisor at output position q: the taps inside the padded extent
        (count_include_pad) or inside the image."""
        if not self.count_include_pad:
            return len(self.taps(q))
        oy, ox = divmod(q, self.out_w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        rows = sum(1 for dy in range(kh) if -pt <= oy * sh - pt + dy * dh < self.in_h + pb)
        cols = sum(1 for dx in range(kw) if -pl <= ox * sw - pl + dx * dw < self.in_w + pr)
        return rows * cols

    def row_split(self, rows: int) -> dict:
        """{grid row y: (q0, q1)}: the output positions per grid row (`split_positions`)."""
        return split_positions(self.positions, rows)

    def input_rows(self, q0: int, q1: int) -> tuple[int, int]:
        """[r0, r1): the input rows the windows of positions q0 .. q1-1 read."""
        rows = [iy for q in range(q0, q1) for iy, _ in self.taps(q)]
        return min(rows), max(rows) + 1


# -- the host's fold of a first layer ----------------------------------------------------------

FOLDS = ("none", "kw", "full")
"""How the host may lay out a convolution's input (its own input, which it can arrange at
will): "none", the image as it is (channels padded to whole words); "kw", each pixel of an
output column the kw taps of its window row side by side (the conv becomes kh x 1 over kw C
channels: one word where C < V wastes most of a word, fewer MATMULs per tile); "full", the
whole window (im2col: the conv becomes 1 x 1 over kh kw C channels, one MATMUL per tile). The
folds cost input words (kw, or kh kw, times the taps) for fewer, fuller MATMULs; a cost model
picks one (`d1tile.sw.compiler`)."""


def folded(geom: ConvGeometry, fold: str, vpw: int) -> ConvGeometry:
    """The convolution the tile runs on the input folded by the host (`FOLDS`); folds need
    group 1 (a first layer's)."""
    if fold == "none":
        return geom
    if geom.groups != 1 or fold not in FOLDS:
        raise CompileError(f"convolution: fold {fold!r} needs group 1 and is one of {FOLDS}")
    kh, kw = geom.kernel
    if fold == "kw":
        channels = kw * geom.in_c
        return ConvGeometry(geom.in_h, geom.out_w, channels, padded_channels(channels, vpw),
                            geom.out_c, (kh, 1), (geom.strides[0], 1),
                            (geom.pads[0], 0, geom.pads[2], 0), (geom.dilations[0], 1), 1,
                            geom.pool)
    channels = kh * kw * geom.in_c
    return ConvGeometry(geom.out_h, geom.out_w, channels, padded_channels(channels, vpw),
                        geom.out_c, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, geom.pool)


def fold_weights(weight: np.ndarray, fold: str) -> np.ndarray:
    """[O, C, kh, kw] weights as the folded convolution's: "kw" channel dx C + c of tap
    (dy, 0); "full" channel (dy kw + dx) C + c of tap (0, 0)."""
    o, c, kh, kw = weight.shape
    if fold == "none":
        return weight
    if fold == "kw":
        return weight.transpose(0, 3, 1, 2).reshape(o, kw * c, kh, 1)
    return weight.transpose(0, 2, 3, 1).reshape(o, kh * kw * c, 1, 1)


def fold_order(geom: ConvGeometry, fold: str, vpw: int) -> np.ndarray:
    """The stored order of the folded input: for each stored feature of the folded image
    (pixel in raster order, then channel), the ONNX flat index c H W + h W + w of the input
    element it holds, or -1 for a zero (the padding, or padding channels). Elements under
    several windows appear several times."""
    f = folded(geom, fold, vpw)
    h, w, c = geom.in_h, geom.in_w, geom.in_c
    (kh, kw), (sh, sw), (dh, dw) = geom.kernel, geom.strides, geom.dilations
    pt, pl = geom.pads[0], geom.pads[1]
    rows = np.arange(f.in_h)[:, None, None]
    cols = np.arange(f.in_w)[None, :, None]
    ch = np.arange(f.cp)[None, None, :]
    real = ch < f.in_c
    if fold == "none":
        iy, ix, cc = rows, cols, ch
    elif fold == "kw":
        dx, cc = np.divmod(ch, c)
        iy, ix = rows, cols * sw - pl + dx * dw
    else:
        tap, cc = np.divmod(ch, c)
        dy, dx = np.divmod(tap, kw)
        iy, ix = rows * sh - pt + dy * dh, cols * sw - pl + dx * dw
    inside = real & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    flat = np.clip(cc, 0, c - 1) * h * w + np.clip(iy, 0, h - 1) * w + np.clip(ix, 0, w - 1)
    return np.where(inside, flat, -1).reshape(-1)
