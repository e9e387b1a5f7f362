"""Compiled multi-threaded CPU rasterizer (numba), forward and hand-written backward.

Work is split by tile (each task takes every TASKS-th (camera, tile), so threads get tiles from all over the
image). Inside a tile the loop runs over the tile's Gaussians front to back and, for each, only over the
pixels where its α can reach 1/255 (row by row, see `_footprint`), so small Gaussians cost a few pixels
rather than the whole tile, with exactly the result of testing every pixel. The backward walks the same
lists back to front from each pixel's last contributing entry, rebuilding T by division, and writes one
gradient row per intersection (each belongs to one tile, hence one thread: no atomics), then sums the
rows per Gaussian.

The pixel loops are scalar. A branch-free version over groups of 8 pixels with an inlined exp was tried:
LLVM left it scalar inside numba's parallel loop (array accesses it cannot prove independent), and as a
separate function the per-call cost of numba's array arguments ate the gain.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float, Int
from numba import njit, prange
from torch import Tensor

from .binning import tile_grid
from .threads import kernel_threads

# The per-pixel decisions (σ < 0, α < 1/255, the 0.99 clamp, T ≤ 1e-4) are made in float32 exactly as
# the float32 torch reference (and gsplat) make them: two clamped Gaussians give T = 0.01·0.01, which is
# below 1e-4 in float32 and above it in float64. Gradient sums are float64.
ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.99)
T_MIN = np.float32(1e-4)
TASKS = 64  # parallel tasks per raster call (tiles interleaved between them)
HALF = np.float32(0.5)
ONE = np.float32(1.0)


@njit(inline="always")
def _tile_bounds(k, n_tiles, tiles_x, tile_size, width, height):
    """Camera and pixel box [x0, x1) x [y0, y1) of flat (camera, tile) index k."""
    cam = k // n_tiles
    ty = (k - cam * n_tiles) // tiles_x
    tx = k - cam * n_tiles - ty * tiles_x
    x0, y0 = tx * tile_size, ty * tile_size
    return cam, x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height)


@njit(inline="always")
def _footprint(mx, my, a, b, c, o, x0, y0, x1, y1):
    """Rows [r0, r1] of the tile that the ellipse σ ≤ L = ln(255·o) reaches (outside it α < 1/255), and the
    (slightly enlarged) L that `_row_span` needs (-1: a non-positive-definite conic, test the whole tile).

    L is enlarged by more than float32 rounding can move σ (relative 1e-5 of the size of its terms), so
    the spans hold every pixel the exact per-pixel test accepts: the result is the same as testing every
    pixel of the tile, at a fraction of the cost.
    """
    a, b, c = float(a), float(b), float(c)
    det = a * c - b * b
    if det <= 0 or a <= 0:
        return y0, y1 - 1, -1.0
    L = math.log(255.0 * float(o))
    ex = math.sqrt(2.0 * L * c / det) + 2.0  # half-extents along x and y (Σxx = c / det)
    ey = math.sqrt(2.0 * L * a / det) + 2.0
    L += 1e-5 * (1.0 + a * ex * ex + c * ey * ey)
    h = math.sqrt(2.0 * L * a / det)
    r0 = max(float(y0), math.ceil(my - h - 0.5))
    r1 = min(float(y1 - 1), math.floor(my + h - 0.5))
    return int(r0), int(r1), L


@njit(inline="always")
def _row_span(mx, a, b, c, L, dy, x0, x1):
    """Columns [c0, c1] of one tile row (offset dy = my - row centre) inside the ellipse σ ≤ L: the roots
    of ½a dx² + b dy dx + ½c dy² - L = 0 in dx = mx - x."""
    if L < 0:
        return x0, x1 - 1
    a, b, c, dy = float(a), float(b), float(c), float(dy)
    qb = b * dy
    disc = qb * qb - a * (c * dy * dy - 2.0 * L)
    if disc < 0:
        return 0, -1
    r = math.sqrt(disc)
    # dx in [(-qb - r) / a, (-qb + r) / a]; column centre x = col + 0.5 = mx - dx
    c0 = max(float(x0), math.ceil(mx - (-qb + r) / a - 0.5))
    c1 = min(float(x1 - 1), math.floor(mx - (-qb - r) / a - 0.5))
    return int(c0), int(c1)


@njit(parallel=True, fastmath=False, cache=True)
def _forward(means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height, tile_size):
    n_cams = backgrounds.shape[0]
    D = colors.shape[1]
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    out = np.empty((n_cams, height, width, D), np.float32)
    T_out = np.empty((n_cams, height, width), np.float32)
    last = np.empty((n_cams, height, width), np.int32)
    # Tasks take every n_tasks-th tile: each thread gets tiles from all over the image, so uneven
    # content balances out under numba's static split of the prange.
    n_tasks = min(n_cams * n_tiles, TASKS)
    for task in prange(n_tasks):
        for k in range(task, n_cams * n_tiles, n_tasks):
            cam, x0, y0, x1, y1 = _tile_bounds(k, n_tiles, tiles_x, tile_size, width, height)
            tw = x1 - x0
            npx = tw * (y1 - y0)
            T = np.ones(npx, np.float32)
            acc = np.zeros((npx, D), np.float32)
            lst = np.full(npx, -1, np.int64)
            done = np.zeros(npx, np.bool_)
            n_done = 0
            for j in range(offsets[k], offsets[k + 1]):
                g = ids[j]
                o = opacities[g]
                if o < ALPHA_MIN:  # α ≤ o everywhere
                    continue
                mx, my = means2d[g, 0], means2d[g, 1]
                a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
                r0, r1, L = _footprint(mx, my, a, b, c, o, x0, y0, x1, y1)
                for row in range(r0, r1 + 1):
                    dy = my - (np.float32(row) + HALF)
                    c0, c1 = _row_span(mx, a, b, c, L, dy, x0, x1)
                    for col in range(c0, c1 + 1):
                        p = (row - y0) * tw + (col - x0)
                        if done[p]:
                            continue
                        dx = mx - (np.float32(col) + HALF)
                        sigma = HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                        if sigma < 0:
                            continue
                        alpha = min(ALPHA_MAX, o * math.exp(-sigma))
                        if alpha < ALPHA_MIN:
                            continue
                        next_T = T[p] * (ONE - alpha)
                        if next_T <= T_MIN:
                            done[p] = True
                            n_done += 1
                            continue
                        w = alpha * T[p]
                        for d in range(D):
                            acc[p, d] += w * colors[g, d]
                        T[p] = next_T
                        lst[p] = j
                if n_done == npx:
                    break
            for row in range(y0, y1):
                for col in range(x0, x1):
                    p = (row - y0) * tw + (col - x0)
                    for d in range(D):
                        out[cam, row, col, d] = acc[p, d] + T[p] * backgrounds[cam, d]
                    T_out[cam, row, col] = T[p]
                    last[cam, row, col] = lst[p]
    return out, T_out, last


@njit(parallel=True, fastmath=False, cache=True)
def _backward(means2d, conics, colors, opacities, backgrounds, offsets, ids, T_final, last, v_out, v_alpha,
              width, height, tile_size):
    """Per-Gaussian gradient rows [d means2d (2), d conic (3), d opacity (1), d colour (D)], flat ids."""
    n_cams = backgrounds.shape[0]
    D = colors.shape[1]
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    n_tiles = tiles_x * tiles_y
    grads = np.empty((ids.shape[0], 6 + D), np.float32)  # zeroed tile by tile, by the thread that fills it
    # Tasks take every n_tasks-th tile: each thread gets tiles from all over the image, so uneven
    # content balances out under numba's static split of the prange.
    n_tasks = min(n_cams * n_tiles, TASKS)
    for task in prange(n_tasks):
        for k in range(task, n_cams * n_tiles, n_tasks):
            cam, x0, y0, x1, y1 = _tile_bounds(k, n_tiles, tiles_x, tile_size, width, height)
            tw = x1 - x0
            npx = tw * (y1 - y0)
            T = np.empty(npx)
            tf_term = np.empty(npx)  # T_final · (dL/dalpha_out - Σ bg·dL/dC): the part of dL/dα_i via T_final
            buf = np.zeros((npx, D))  # colour composited behind the current Gaussian
            vo = np.empty((npx, D))
            lst = np.empty(npx, np.int64)
            gcol = np.empty(D)
            cg = np.empty(D)  # the current Gaussian's colour
            grads[offsets[k]:offsets[k + 1]] = 0.0
            j_max = -1
            for row in range(y0, y1):
                for col in range(x0, x1):
                    p = (row - y0) * tw + (col - x0)
                    T[p] = T_final[cam, row, col]
                    lst[p] = last[cam, row, col]
                    j_max = max(j_max, lst[p])
                    s = 0.0
                    for d in range(D):
                        vo[p, d] = v_out[cam, row, col, d]
                        s += backgrounds[cam, d] * vo[p, d]
                    tf_term[p] = T[p] * (v_alpha[cam, row, col] - s)
            for j in range(j_max, offsets[k] - 1, -1):
                g = ids[j]
                o = opacities[g]
                if o < ALPHA_MIN:
                    continue
                mx, my = means2d[g, 0], means2d[g, 1]
                a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
                r0, r1, L = _footprint(mx, my, a, b, c, o, x0, y0, x1, y1)
                g_mx = g_my = g_a = g_b = g_c = g_o = 0.0
                gcol[:] = 0.0
                for d in range(D):
                    cg[d] = colors[g, d]
                touched = False
                for row in range(r0, r1 + 1):
                    dy = my - (np.float32(row) + HALF)
                    c0, c1 = _row_span(mx, a, b, c, L, dy, x0, x1)
                    for col in range(c0, c1 + 1):
                        p = (row - y0) * tw + (col - x0)
                        if j > lst[p]:
                            continue
                        dx = mx - (np.float32(col) + HALF)
                        sigma = HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
                        if sigma < 0:
                            continue
                        e = math.exp(-sigma)
                        vis = o * e
                        alpha = min(ALPHA_MAX, vis)
                        if alpha < ALPHA_MIN:
                            continue
                        touched = True
                        ra = 1.0 / (1.0 - float(alpha))
                        T[p] *= ra  # T in front of this Gaussian
                        fac = alpha * T[p]
                        v_a = tf_term[p] * ra
                        for d in range(D):
                            cd = cg[d]
                            gcol[d] += fac * vo[p, d]
                            v_a += (cd * T[p] - buf[p, d] * ra) * vo[p, d]
                            buf[p, d] += cd * fac
                        if vis < ALPHA_MAX:  # the clamp has zero gradient
                            v_sigma = -vis * v_a
                            fdx, fdy = float(dx), float(dy)
                            g_a += 0.5 * v_sigma * fdx * fdx
                            g_b += v_sigma * fdx * fdy
                            g_c += 0.5 * v_sigma * fdy * fdy
                            g_mx += v_sigma * (a * fdx + b * fdy)
                            g_my += v_sigma * (b * fdx + c * fdy)
                            g_o += e * v_a
                if touched:
                    grads[j, 0] = g_mx
                    grads[j, 1] = g_my
                    grads[j, 2] = g_a
                    grads[j, 3] = g_b
                    grads[j, 4] = g_c
                    grads[j, 5] = g_o
                    for d in range(D):
                        grads[j, 6 + d] = gcol[d]
    # Sum the rows per Gaussian. Serial, but ~1 ns per value; torch's index_add_ over rows of a 2D tensor
    # took ~15x longer here (a loop of per-row tensor ops).
    out = np.zeros((means2d.shape[0], 6 + D), np.float32)
    for j in range(ids.shape[0]):
        g = ids[j]
        for q in range(6 + D):
            out[g, q] += grads[j, q]
    return out


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height, tile_size):
        C, N = opacities.shape
        D = colors.shape[-1]
        bg = backgrounds if backgrounds is not None else torch.zeros(C, D)
        args = (_np(means2d).reshape(C * N, 2), _np(conics).reshape(C * N, 3), _np(colors).reshape(C * N, D),
                _np(opacities).reshape(C * N), _np(bg), offsets.numpy(), ids.numpy())
        with kernel_threads(ids.numel()):
            out, T, last = _forward(*args, width, height, tile_size)
        ctx.args = args
        ctx.shape = (C, N, D, width, height, tile_size, backgrounds is not None)
        T = torch.from_numpy(T)
        ctx.T, ctx.last = T, last
        return torch.from_numpy(out), (1 - T)[..., None]

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        C, N, D, width, height, tile_size, has_bg = ctx.shape
        v_out = torch.zeros(C, height, width, D) if v_out is None else v_out.float().contiguous()
        v_alpha = torch.zeros(C, height, width) if v_alpha is None else v_alpha.float().reshape(C, height, width)
        with kernel_threads(ctx.args[6].shape[0]):
            per_gauss = _backward(*ctx.args, ctx.T.numpy(), ctx.last, v_out.numpy(), v_alpha.contiguous().numpy(),
                                  width, height, tile_size)
        per_gauss = torch.from_numpy(per_gauss).reshape(C, N, 6 + D)
        v_bg = (ctx.T[..., None] * v_out).sum((1, 2)) if has_bg else None
        return (per_gauss[..., 0:2], per_gauss[..., 2:5], per_gauss[..., 6:], per_gauss[..., 5], v_bg,
                None, None, None, None, None)


def rasterize_cpu(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], colors: Float[Tensor, "C N D"],
                  opacities: Float[Tensor, "C N"], offsets: Int[Tensor, " T1"], ids: Int[Tensor, " I"],
                  width: int, height: int, tile_size: int, backgrounds: Float[Tensor, "C D"] | None = None
                  ) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Tile rasterization of binned Gaussians (`binning.bin_gaussians_cpu`) on the CPU, differentiable."""
    assert tile_grid(width, height, tile_size)[0] * tile_grid(width, height, tile_size)[1] * opacities.shape[0] \
        + 1 == offsets.numel()
    return _RasterizeCPU.apply(means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height,
                               tile_size)
