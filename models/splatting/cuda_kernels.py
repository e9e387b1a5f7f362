"""numba-cuda kernels of the tile rasterizer: one block per (tile, camera), one thread per pixel.

Imported only by `cuda.py` when the CUDA backend runs (importing numba.cuda costs time and, on machines
without a GPU, needs NUMBA_ENABLE_CUDASIM=1). Arithmetic is float32 throughout, with the same per-pixel
rules as the CPU kernels and the torch reference. Each block walks its tile's depth-sorted list in batches
staged in shared memory; a batch loop ends early once every pixel of the tile is done. Channels are handled
MAX_D at a time (a launch per chunk), so per-thread accumulators stay in registers / local memory.
"""

from __future__ import annotations

import math

import numpy as np

if not hasattr(np, "row_stack"):  # numpy >= 2.5 removed it; some numba-cuda releases still call it
    np.row_stack = np.vstack

from numba import cuda, float32, int32  # noqa: E402

MAX_D = 16  # channels per launch
BLOCK = 256  # threads per block at most (tile_size <= 16)
ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.99)
T_MIN = np.float32(1e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)


@cuda.jit(cache=True)
def forward_kernel(means2d, conics, colors, opacities, backgrounds, offsets, ids, d0, nd, out, T_out, last,
                   width, height):
    ts = cuda.blockDim.x
    n_threads = ts * ts
    cam = cuda.blockIdx.z
    tile = (cam * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x
    tid = cuda.threadIdx.y * ts + cuda.threadIdx.x
    x = cuda.blockIdx.x * ts + cuda.threadIdx.x
    y = cuda.blockIdx.y * ts + cuda.threadIdx.y
    inside = x < width and y < height
    px = float32(x) + HALF
    py = float32(y) + HALF

    sh_g = cuda.shared.array(BLOCK, int32)
    sh_xy = cuda.shared.array((BLOCK, 2), float32)
    sh_con = cuda.shared.array((BLOCK, 3), float32)
    sh_o = cuda.shared.array(BLOCK, float32)
    acc = cuda.local.array(MAX_D, float32)
    for d in range(nd):
        acc[d] = ZERO
    T = ONE
    done = not inside
    lst = -1
    start, end = offsets[tile], offsets[tile + 1]
    for b0 in range(start, end, n_threads):
        if cuda.syncthreads_count(1 if done else 0) == n_threads:  # the whole tile is done
            break
        i = b0 + tid
        if i < end:  # stage one batch of the list in shared memory
            g = ids[i]
            sh_g[tid] = g
            sh_xy[tid, 0], sh_xy[tid, 1] = means2d[g, 0], means2d[g, 1]
            sh_con[tid, 0], sh_con[tid, 1], sh_con[tid, 2] = conics[g, 0], conics[g, 1], conics[g, 2]
            sh_o[tid] = opacities[g]
        cuda.syncthreads()
        for t in range(min(n_threads, end - b0)):
            if done:
                break
            dx = sh_xy[t, 0] - px
            dy = sh_xy[t, 1] - py
            sigma = HALF * (sh_con[t, 0] * dx * dx + sh_con[t, 2] * dy * dy) + sh_con[t, 1] * dx * dy
            if sigma < ZERO:
                continue
            alpha = min(ALPHA_MAX, sh_o[t] * math.exp(-sigma))
            if alpha < ALPHA_MIN:
                continue
            next_T = T * (ONE - alpha)
            if next_T <= T_MIN:  # this Gaussian is left out, and every later one
                done = True
                break
            w = alpha * T
            g = sh_g[t]
            for d in range(nd):
                acc[d] += w * colors[g, d0 + d]
            T = next_T
            lst = b0 + t
        cuda.syncthreads()
    if inside:
        for d in range(nd):
            out[cam, y, x, d0 + d] = acc[d] + T * backgrounds[cam, d0 + d]
        T_out[cam, y, x] = T
        last[cam, y, x] = lst


@cuda.jit(cache=True)
def backward_kernel(means2d, conics, colors, opacities, backgrounds, offsets, ids, T_final, last, v_out, v_alpha,
                    d0, nd, first_chunk, v_means2d, v_conics, v_opac, v_colors, width, height):
    """Back to front from each pixel's last entry; per-Gaussian gradients summed with atomics. A launch for
    channels d0..d0+nd adds their part of dL/dα (linear in the channels), the alpha output's part only
    with first_chunk."""
    ts = cuda.blockDim.x
    n_threads = ts * ts
    cam = cuda.blockIdx.z
    tile = (cam * cuda.gridDim.y + cuda.blockIdx.y) * cuda.gridDim.x + cuda.blockIdx.x
    tid = cuda.threadIdx.y * ts + cuda.threadIdx.x
    x = cuda.blockIdx.x * ts + cuda.threadIdx.x
    y = cuda.blockIdx.y * ts + cuda.threadIdx.y
    inside = x < width and y < height
    px = float32(x) + HALF
    py = float32(y) + HALF

    sh_g = cuda.shared.array(BLOCK, int32)
    sh_xy = cuda.shared.array((BLOCK, 2), float32)
    sh_con = cuda.shared.array((BLOCK, 3), float32)
    sh_o = cuda.shared.array(BLOCK, float32)
    sh_max = cuda.shared.array(1, int32)
    vo = cuda.local.array(MAX_D, float32)
    buf = cuda.local.array(MAX_D, float32)  # colour composited behind the current Gaussian

    if tid == 0:
        sh_max[0] = -1
    T = ONE
    lst = -1
    tf = ZERO  # T_final·(dL/dalpha_out - Σ bg·dL/dC): dL/dα_i through T_final, times 1/(1-α_i)
    if inside:
        T = T_final[cam, y, x]
        lst = last[cam, y, x]
        s = ZERO
        for d in range(nd):
            vo[d] = v_out[cam, y, x, d0 + d]
            buf[d] = ZERO
            s += backgrounds[cam, d0 + d] * vo[d]
        tf = T * ((v_alpha[cam, y, x] if first_chunk else ZERO) - s)
    cuda.syncthreads()
    cuda.atomic.max(sh_max, 0, lst)
    cuda.syncthreads()
    start = offsets[tile]
    for b_end in range(sh_max[0] + 1, start, -n_threads):  # batches of entries b_end-1, b_end-2, ...
        i = b_end - 1 - tid
        if i >= start:
            g = ids[i]
            sh_g[tid] = g
            sh_xy[tid, 0], sh_xy[tid, 1] = means2d[g, 0], means2d[g, 1]
            sh_con[tid, 0], sh_con[tid, 1], sh_con[tid, 2] = conics[g, 0], conics[g, 1], conics[g, 2]
            sh_o[tid] = opacities[g]
        cuda.syncthreads()
        for t in range(min(n_threads, b_end - start)):
            if b_end - 1 - t > lst:  # not composited at this pixel
                continue
            a, b, c = sh_con[t, 0], sh_con[t, 1], sh_con[t, 2]
            dx = sh_xy[t, 0] - px
            dy = sh_xy[t, 1] - py
            sigma = HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
            if sigma < ZERO:
                continue
            e = math.exp(-sigma)
            vis = sh_o[t] * e
            alpha = min(ALPHA_MAX, vis)
            if alpha < ALPHA_MIN:
                continue
            g = sh_g[t]
            ra = ONE / (ONE - alpha)
            T = T * ra  # T in front of this Gaussian
            fac = alpha * T
            v_a = tf * ra
            for d in range(nd):
                cd = colors[g, d0 + d]
                cuda.atomic.add(v_colors, (g, d0 + d), fac * vo[d])
                v_a += (cd * T - buf[d] * ra) * vo[d]
                buf[d] += cd * fac
            if vis < ALPHA_MAX:  # the 0.99 clamp passes no gradient
                v_s = -vis * v_a
                cuda.atomic.add(v_conics, (g, 0), HALF * v_s * dx * dx)
                cuda.atomic.add(v_conics, (g, 1), v_s * dx * dy)
                cuda.atomic.add(v_conics, (g, 2), HALF * v_s * dy * dy)
                cuda.atomic.add(v_means2d, (g, 0), v_s * (a * dx + b * dy))
                cuda.atomic.add(v_means2d, (g, 1), v_s * (b * dx + c * dy))
                cuda.atomic.add(v_opac, g, e * v_a)
        cuda.syncthreads()
