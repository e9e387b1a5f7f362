"""Delegation to gsplat (nerfstudio-project/gsplat) when it is installed and the tensors are on CUDA.

gsplat's own kernels are the fastest option on a GPU. Its semantics differ from ours in small ways that
depend on its version: recent releases clamp α at 0.999 (we clamp at 0.99, as the original 3DGS) and cull
with an opacity-aware, per-axis radius (meta["radii"] is [C, N, 2] there; we return the larger axis).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def rasterize_gsplat(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                     opacities: Float[Tensor, " N"], colors: Float[Tensor, "C N D"], viewmats: Float[Tensor, "C 4 4"],
                     Ks: Float[Tensor, "C 3 3"], width: int, height: int, near_plane: float, far_plane: float,
                     eps2d: float, render_mode: str, rasterize_mode: str, backgrounds: Float[Tensor, "C D"] | None,
                     tile_size: int) -> tuple[Float[Tensor, "C H W Dout"], Float[Tensor, "C H W 1"], dict]:
    """gsplat.rasterization with our arguments (unpacked layout, colours as given, no spherical harmonics)."""
    import gsplat

    img, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        far_plane=far_plane, eps2d=eps2d, render_mode=render_mode, rasterize_mode=rasterize_mode,
        backgrounds=backgrounds, tile_size=tile_size, packed=False, sh_degree=None)
    radii = meta["radii"]
    if radii.dim() == 3:  # per-axis radii in gsplat >= 1.5
        radii = radii.amax(-1)
    meta = dict(meta)
    meta.update(radii=radii.to(torch.int32), width=width, height=height, tile_size=tile_size,
                n_cameras=viewmats.shape[0], backend="gsplat")
    return img, alpha, meta
