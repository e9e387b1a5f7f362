"""Where a target camera sits relative to the input camera of its moment: (d-azimuth, d-elevation) about the
clip's look-at point, the input of DyST's orbit head. Same conventions as `monodyn render`'s paths: up = the
mean image-up of the input cameras, azimuth counter-clockwise about up (seen from above), elevation above the
horizon, the look-at point = least-squares nearest point to the optical axes (or, for nearly parallel axes,
the scene centre's distance in front of the mean camera)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def azimuth_elevation(eyes: Float[Tensor, "N 3"], center: Float[Tensor, "3"], up: Float[Tensor, "3"]
                      ) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"]]:
    """Azimuth (about `up`, from an arbitrary fixed horizontal axis) and elevation of eyes, degrees."""
    up = up / up.norm()
    ref = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = torch.nn.functional.normalize(ref - (ref @ up) * up, dim=0)
    e2 = torch.linalg.cross(up, e1)
    off = eyes - center
    az = torch.rad2deg(torch.atan2(off @ e2, off @ e1))
    el = torch.rad2deg(torch.asin((off @ up / off.norm(dim=-1).clamp_min(1e-12)).clamp(-1, 1)))
    return az, el


def relative_move(target_eyes: Float[Tensor, "N 3"], reference_eyes: Float[Tensor, "N 3"], center: Float[Tensor, "3"],
                  up: Float[Tensor, "3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"]]:
    """(d-azimuth wrapped to (-180, 180], d-elevation) in degrees from each reference eye to its target eye."""
    az_t, el_t = azimuth_elevation(target_eyes, center, up)
    az_r, el_r = azimuth_elevation(reference_eyes, center, up)
    daz = torch.remainder(az_t - az_r + 180.0, 360.0) - 180.0
    return daz, el_t - el_r
