"""Target cameras -> GCD's per-frame spherical deltas about the look-at point.

GCD conditions on (Δazimuth, Δelevation, Δradius) of the output camera relative to the input camera, both
on a sphere about the point they look at (Kubric: (0, 0, 1), z up). A monodyn scene has SfM cameras in an
arbitrary frame, so here: the look-at point is where the input cameras' optical axes meet when that lies in
front of them at the content's depth (else the median content depth along the mean view), "up" is the input
cameras' mean image-up (`models.cameras.mean_image_up`, the axis the render paths orbit about), azimuth is
counter-clockwise about up seen from above, elevation is above the horizontal plane through the look-at
point, and Δr is relative (r_target / r_input - 1) because SfM scale is arbitrary. The look-at point is
`Scene.look_at_point`, the one `monodyn render`'s paths use.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras
from models.errors import InputError

MAX_LOOK_AWAY_DEG = 20.0  # a target camera's optical axis may miss the look-at point by at most this


def spherical(eyes: Float[Tensor, "N 3"], center: Float[Tensor, "3"], up: Float[Tensor, "3"],
              ref: Float[Tensor, "3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"], Float[Tensor, " N"]]:
    """(azimuth deg, elevation deg, radius) of `eyes` about `center`; azimuth 0 = the horizontal direction of
    `ref` from the centre, counter-clockwise about `up`."""
    up = up / up.norm()
    off_ref = ref - center
    e1 = off_ref - (off_ref @ up) * up
    if float(e1.norm()) < 1e-9:
        e1 = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9
                                else torch.tensor([0.0, 1.0, 0.0]))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    off = eyes - center
    r = off.norm(dim=-1)
    az = torch.rad2deg(torch.atan2(off @ e2, off @ e1))
    el = torch.rad2deg(torch.asin((off @ up / r.clamp(min=1e-12)).clamp(-1, 1)))
    return az, el, r


def camera_deltas(inputs: Cameras, targets: Cameras, center: Float[Tensor, "3"], up: Float[Tensor, "3"],
                  check: bool = True) -> Float[Tensor, "N 3"]:
    """Per pair (input camera i, target camera i): (Δazimuth deg in (-180, 180], Δelevation deg, Δr / r).

    With `check`, a target camera GCD cannot express raises InputError: one that does not look at the
    look-at point (its optical axis misses it by more than 20 degrees), sits on it, or zooms (another focal
    length than its input camera's, by more than 5 %)."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} input cameras for {len(targets)} targets")
    center, up = center.float(), up.float()
    in_eyes = torch.linalg.inv(inputs.w2c)[:, :3, 3]
    c2w = torch.linalg.inv(targets.w2c)
    out_eyes, out_fwd = c2w[:, :3, 3], c2w[:, :3, 2]
    if check:
        to_center = center - out_eyes
        dist = to_center.norm(dim=-1)
        if bool((dist < 1e-6 * max(float(in_eyes.sub(center).norm(dim=-1).max()), 1e-12)).any()):
            raise InputError("a target camera sits on the look-at point: GCD needs cameras on a sphere around it")
        cos = (torch.nn.functional.normalize(to_center, dim=-1) * torch.nn.functional.normalize(out_fwd, dim=-1)).sum(-1)
        away = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))
        if float(away.max()) > MAX_LOOK_AWAY_DEG:
            k = int(away.argmax())
            raise InputError(f"GCD renders cameras that look at the scene's look-at point; target camera {k} looks "
                             f"{float(away[k]):.0f} degrees away from it (at most {MAX_LOOK_AWAY_DEG:.0f}): use an "
                             f"orbit, dolly or a camera path aimed at the scene centre")
        zoom = (targets.K[:, 0, 0] * inputs.width) / (inputs.K[:, 0, 0] * targets.width)
        if bool(((zoom - 1).abs() > 0.05).any()):
            raise InputError(f"GCD cannot zoom: target focal lengths differ from the input's by up to "
                             f"{100 * float((zoom - 1).abs().max()):.0f} % (at most 5 %)")
    ref = in_eyes[0]
    az_i, el_i, r_i = spherical(in_eyes, center, up, ref)
    az_o, el_o, r_o = spherical(out_eyes, center, up, ref)
    daz = torch.remainder(az_o - az_i + 180.0, 360.0) - 180.0
    daz = torch.where(daz == -180.0, torch.full_like(daz, 180.0), daz)
    return torch.stack([daz, el_o - el_i, r_o / r_i.clamp(min=1e-12) - 1.0], dim=-1)


def check_range(deltas: Float[Tensor, "N 3"], max_delta: tuple[float, float, float]) -> None:
    """InputError when a delta is beyond what the model was trained for."""
    names = ("azimuth change", "elevation change", "relative radius change")
    units = ("deg", "deg", "")
    for j in range(3):
        if not len(deltas):
            return
        worst = float(deltas[int(deltas[:, j].abs().argmax()), j])
        if abs(worst) > max_delta[j] + 1e-3:
            raise InputError(f"GCD: the camera path asks for a {names[j]} of {worst:.3g}{units[j]}, beyond the "
                             f"model's range of ±{max_delta[j]:g}{units[j]}; use a smaller move")


def nearest_frames(times: Float[Tensor, " N"], scene_times: Float[Tensor, " T"]) -> Tensor:
    """Index of the input frame nearest in normalised time to each target time."""
    return (times[:, None].float() - scene_times[None, :].float()).abs().argmin(dim=1)

