"""`rasterization()`: one entry point (a subset of gsplat.rasterization) over four backends."""

from __future__ import annotations

import importlib.util

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError
from .binning import bin_gaussians_cpu, bin_gaussians_torch, depth_order, tile_rects
from .project import project_gaussians

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "torch", "cpu", "cuda", "gsplat")


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def pick_backend(backend: str, device: torch.device) -> str:
    """"auto": gsplat for CUDA tensors when installed, else our CUDA kernels on CUDA, else the compiled CPU path."""
    if backend not in BACKENDS:
        raise InputError(f"unknown rasterization backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "gsplat" if gsplat_available() else "cuda"
    return "cpu"


def rasterization(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                  opacities: Float[Tensor, " N"], colors: Float[Tensor, "N D"] | Float[Tensor, "C N D"],
                  viewmats: Float[Tensor, "C 4 4"], Ks: Float[Tensor, "C 3 3"], width: int, height: int,
                  near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
                  render_mode: str = "RGB", rasterize_mode: str = "classic",
                  backgrounds: Float[Tensor, "C D"] | None = None, backend: str = "auto", tile_size: int = 16,
                  ) -> tuple[Float[Tensor, "C H W Dout"], Float[Tensor, "C H W 1"], dict]:
    """Render N 3D Gaussians into C cameras, differentiably.

    quats are wxyz (normalised here), scales linear, opacities in [0, 1]; colors may have any number of
    channels D. viewmats are world-to-camera (OpenCV axes), Ks pixel intrinsics; pixel centres sit at
    integer + 0.5. render_mode: "RGB" (the D channels), "D" (accumulated camera z), "ED" (expected depth:
    accumulated z / alpha), "RGB+D", "RGB+ED" (depth appended as one more channel). Returns (colors,
    alphas, meta); meta["means2d"] is the screen-space tensor the rasterizer consumed (call retain_grad()
    on it before backward for densification statistics), meta["radii"] the int32 radii (0 = culled).
    """
    if render_mode not in RENDER_MODES:
        raise InputError(f"unknown render_mode {render_mode!r}; use one of {', '.join(RENDER_MODES)}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise InputError(f"unknown rasterize_mode {rasterize_mode!r}; use 'classic' or 'antialiased'")
    C, N = viewmats.shape[0], means.shape[0]
    if colors.dim() == 2:
        colors = colors[None].expand(C, -1, -1)
    if colors.shape[:2] != (C, N):
        raise InputError(f"colors has shape {tuple(colors.shape)}; expected [{N}, D] or [{C}, {N}, D]")
    backend = pick_backend(backend, means.device)
    if backend == "cpu" and means.device.type != "cpu":
        raise InputError(f"the 'cpu' rasterization backend needs CPU tensors, got {means.device}; use backend='auto'")
    if backend == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
                                far_plane, eps2d, render_mode, rasterize_mode, backgrounds, tile_size)

    project = project_gaussians
    if backend == "cpu" and not (viewmats.requires_grad or Ks.requires_grad):
        from .cpu_project import project_gaussians_cpu as project  # compiled; no camera gradients
    proj = project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
                   antialiased=rasterize_mode == "antialiased")
    feats, bgs = colors, backgrounds
    if render_mode in ("D", "ED"):
        feats, bgs = proj.depths[..., None], None
    elif render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([colors, proj.depths[..., None]], -1)
        if backgrounds is not None:  # depth of the background is 0, as gsplat
            bgs = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)

    rects = tile_rects(proj.means2d, proj.radii, width, height, tile_size)
    if backend == "torch":
        from .reference import rasterize_dense

        img, alpha = rasterize_dense(proj.means2d, proj.conics, feats, proj.opacities, depth_order(proj.depths),
                                     rects, width, height, tile_size, bgs)
    elif backend == "cpu":
        from .cpu import rasterize_cpu

        offsets, ids = bin_gaussians_cpu(rects, proj.depths, proj.radii, width, height, tile_size)
        img, alpha = rasterize_cpu(proj.means2d, proj.conics, feats, proj.opacities, offsets, ids, width, height,
                                   tile_size, bgs)
    else:
        from .cuda import rasterize_cuda

        offsets, ids = bin_gaussians_torch(rects, depth_order(proj.depths), width, height, tile_size)
        img, alpha = rasterize_cuda(proj.means2d, proj.conics, feats, proj.opacities, offsets, ids, width, height,
                                    tile_size, bgs)
    if render_mode.endswith("ED"):
        img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp_min(1e-10)], -1)
    meta = {"means2d": proj.means2d, "radii": proj.radii, "depths": proj.depths, "conics": proj.conics,
            "opacities": proj.opacities, "width": width, "height": height, "tile_size": tile_size,
            "n_cameras": C, "backend": backend}
    return img, alpha, meta
