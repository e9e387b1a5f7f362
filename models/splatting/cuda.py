"""CUDA rasterizer: our numba-cuda kernels (`cuda_kernels.py`) behind a torch.autograd.Function.

torch CUDA tensors reach the kernels zero-copy through `cuda.as_cuda_array`, and launches go on torch's
current stream. Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba.cuda is first
imported) the same code runs on CPU tensors, passed as numpy arrays: that is how the tests check the
kernels on machines without a GPU.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InputError
from .binning import tile_grid


def _kernels():
    from . import cuda_kernels  # imports numba.cuda (with the numpy shim) on first use

    return cuda_kernels


def simulating() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def _dev(t: Tensor):
    """A kernel argument viewing `t` (zero-copy): a CUDA array on the GPU, a numpy array in the simulator."""
    from numba import cuda

    t = t.detach()
    return cuda.as_cuda_array(t) if t.is_cuda else t.numpy()


def _launch(kernel, grid, block, device: torch.device, *args):
    if device.type == "cuda":
        from numba import cuda

        with cuda.gpus[device.index if device.index is not None else torch.cuda.current_device()]:
            stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
            kernel[grid, block, stream](*(_dev(a) if isinstance(a, Tensor) else a for a in args))
    else:
        kernel[grid, block](*(_dev(a) if isinstance(a, Tensor) else a for a in args))


def _chunks(D: int, max_d: int):
    return [(d0, min(max_d, D - d0)) for d0 in range(0, D, max_d)]


class _RasterizeCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height, tile_size):
        K = _kernels()
        C, N = opacities.shape
        D = colors.shape[-1]
        device = means2d.device
        f32 = dict(dtype=torch.float32, device=device)
        m2 = means2d.detach().float().reshape(C * N, 2).contiguous()
        con = conics.detach().float().reshape(C * N, 3).contiguous()
        col = colors.detach().float().reshape(C * N, D).contiguous()
        op = opacities.detach().float().reshape(C * N).contiguous()
        bg = backgrounds.detach().float().contiguous() if backgrounds is not None else torch.zeros(C, D, **f32)
        offsets = offsets.contiguous()
        ids = ids.contiguous() if ids.numel() else torch.zeros(1, dtype=torch.int32, device=device)  # no 0-size arrays
        out = torch.empty(C, height, width, D, **f32)
        T = torch.empty(C, height, width, **f32)
        last = torch.empty(C, height, width, dtype=torch.int32, device=device)
        tiles_x, tiles_y = tile_grid(width, height, tile_size)
        grid, block = (tiles_x, tiles_y, C), (tile_size, tile_size)
        for d0, nd in _chunks(D, K.MAX_D):
            _launch(K.forward_kernel, grid, block, device, m2, con, col, op, bg, offsets, ids, d0, nd, out, T, last,
                    width, height)
        ctx.save_for_backward(m2, con, col, op, bg, offsets, ids, T, last)
        ctx.meta = (C, N, D, width, height, tile_size, backgrounds is not None)
        return out, (1 - T)[..., None]

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        K = _kernels()
        m2, con, col, op, bg, offsets, ids, T, last = ctx.saved_tensors
        C, N, D, width, height, tile_size, has_bg = ctx.meta
        device = m2.device
        f32 = dict(dtype=torch.float32, device=device)
        v_out = torch.zeros(C, height, width, D, **f32) if v_out is None else v_out.float().contiguous()
        v_alpha = (torch.zeros(C, height, width, **f32) if v_alpha is None
                   else v_alpha.float().reshape(C, height, width).contiguous())
        v_m2, v_con = torch.zeros(C * N, 2, **f32), torch.zeros(C * N, 3, **f32)
        v_op, v_col = torch.zeros(C * N, **f32), torch.zeros(C * N, D, **f32)
        tiles_x, tiles_y = tile_grid(width, height, tile_size)
        grid, block = (tiles_x, tiles_y, C), (tile_size, tile_size)
        for d0, nd in _chunks(D, K.MAX_D):
            _launch(K.backward_kernel, grid, block, device, m2, con, col, op, bg, offsets, ids, T, last, v_out,
                    v_alpha, d0, nd, d0 == 0, v_m2, v_con, v_op, v_col, width, height)
        v_bg = (T[..., None] * v_out).sum((1, 2)) if has_bg else None
        return (v_m2.reshape(C, N, 2), v_con.reshape(C, N, 3), v_col.reshape(C, N, D), v_op.reshape(C, N), v_bg,
                None, None, None, None, None)


def rasterize_cuda(means2d: Float[Tensor, "C N 2"], conics: Float[Tensor, "C N 3"], colors: Float[Tensor, "C N D"],
                   opacities: Float[Tensor, "C N"], offsets: Int[Tensor, " T1"], ids: Int[Tensor, " I"],
                   width: int, height: int, tile_size: int, backgrounds: Float[Tensor, "C D"] | None = None
                   ) -> tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"]]:
    """Tile rasterization of binned Gaussians (`binning.bin_gaussians_torch`) with our CUDA kernels."""
    if not means2d.is_cuda and not simulating():
        raise InputError("the 'cuda' rasterization backend needs CUDA tensors (or NUMBA_ENABLE_CUDASIM=1 for the "
                         "simulator); use backend='cpu' or 'auto' for CPU tensors")
    if tile_size * tile_size > 256:
        raise InputError(f"the CUDA rasterizer takes tile_size <= 16 (256 threads per block), got {tile_size}")
    assert math.prod(tile_grid(width, height, tile_size)) * opacities.shape[0] + 1 == offsets.numel()
    return _RasterizeCUDA.apply(means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height,
                                tile_size)
