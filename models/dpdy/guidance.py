"""DpDy's novel-view guidance hook: the type of the hook, and the novel cameras it renders.

DpDy's priors (score distillation from an RGB-D diffusion model and a video diffusion model) act on renders
from cameras the video never had. The fit calls `guidance(task, step, progress) -> {name: loss}` at the start
of every step (models/priors/hook.py: `NovelViewPrior`); the hook renders input cameras orbited about their
look-at point (`novel_cameras`) itself, may add Gaussians, and returns its loss terms ({} when it rests).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras

Guidance = Callable[..., dict[str, Tensor]]  # (DpDyTask, step, progress) -> {loss name: scalar}


def rotation_about_axis(axis: Float[Tensor, "N 3"], angle: Float[Tensor, " N"]) -> Float[Tensor, "N 3 3"]:
    """Rodrigues: rotation by `angle` (radians) about `axis` (normalised here)."""
    k = F.normalize(axis, dim=-1)
    zero = torch.zeros_like(angle)
    kx, ky, kz = k.unbind(-1)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    eye = torch.eye(3, device=axis.device, dtype=axis.dtype).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def orbit_cameras(cams: Cameras, pivot_distance: Float[Tensor, " N"], degrees: Float[Tensor, " N"]) -> Cameras:
    """Each camera turned by `degrees` about its own up axis through the point `pivot_distance` ahead of it
    on its optical axis; it keeps looking at that point. World up is unknown after SfM, the camera's is not."""
    w2c = cams.w2c
    R = w2c[:, :3, :3]
    center = cams.centers
    forward, up = R[:, 2], -R[:, 1]  # rows of R are the camera axes in world coordinates (y points down)
    pivot = center + pivot_distance[:, None] * forward
    rot = rotation_about_axis(up, torch.deg2rad(degrees))
    new_center = pivot + (rot @ (center - pivot)[..., None])[..., 0]
    R_new = R @ rot.transpose(-1, -2)  # camera-to-world rotation R^T becomes rot R^T
    out = torch.eye(4, device=w2c.device, dtype=w2c.dtype).repeat(len(cams), 1, 1)
    out[:, :3, :3] = R_new
    out[:, :3, 3] = -(R_new @ new_center[..., None])[..., 0]
    return Cameras(cams.K.clone(), out, cams.width, cams.height)


def novel_cameras(cams: Cameras, scene_center: Float[Tensor, "3"], degrees: Float[Tensor, " N"], size: int,
                  min_pivot: float) -> Cameras:
    """Input cameras orbited by `degrees` about the point of their optical axis nearest the scene centre, at
    `size` pixels on the long side."""
    forward = cams.w2c[:, 2, :3]
    pivot = ((scene_center - cams.centers) * forward).sum(-1).clamp_min(min_pivot)
    return orbit_cameras(cams, pivot, degrees).scaled(size / max(cams.width, cams.height))
