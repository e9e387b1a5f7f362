"""The dynamic Gaussian scene: a static set for the background and a dynamic set moved by motion bases.

Static Gaussians never move. Dynamic Gaussians live in a canonical frame; their pose at frame t is a
per-Gaussian blend of B global rigid motions (Shape of Motion's motion bases):

    r_i(t) = sum_b w_ib r_b(t),   R_i(t) = gram_schmidt(r_i(t)),   x_i(t) = R_i(t) x_i + sum_b w_ib u_b(t)

with w_i = softmax(logits_i). Rotations are stored and blended in the continuous 6D representation (the first two
columns of the matrix, Zhou et al. 2019): unlike blended quaternions it has no double cover, so no sign flip when
a basis turns past 180 degrees, and any blend maps smoothly back to a rotation. Each basis holds one rotation and
one translation per input frame; between frames both are interpolated linearly, so any normalised time in [0, 1]
renders. Bases are initialised per segmented object (models/gaussians/init.py) and every dynamic Gaussian carries
its object's instance id.

Per-Gaussian parameters are stored unconstrained: log scales, opacity logits, colour logits (rgb = sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from models.cameras import Cameras
from models.registry import RenderOutput
from models.splatting import rasterization
from models.splatting.project import quat_to_rotmat

GAUSSIAN_PARAMS = ("means", "log_scales", "quats", "opacity_logits", "color_logits")


def quat_multiply(a: Float[Tensor, "*B 4"], b: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 4"]:
    """Hamilton product of wxyz quaternions (rotation b first, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def rotmat_to_quat(R: Float[Tensor, "*B 3 3"]) -> Float[Tensor, "*B 4"]:
    """Unit wxyz quaternions (w >= 0) of rotation matrices (Shepperd's method, stable for every angle)."""
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = torch.stack([
        torch.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + 2 * m[:, 0, 0] - tr, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 + 2 * m[:, 1, 1] - tr, m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 + 2 * m[:, 2, 2] - tr], -1),
    ], 1)  # (M, 4 candidates, 4): candidate k is 4 * q * q[k]; use the one with the largest pivot
    pivot = torch.stack([1 + tr, 1 + 2 * m[:, 0, 0] - tr, 1 + 2 * m[:, 1, 1] - tr, 1 + 2 * m[:, 2, 2] - tr], -1)
    q = cands[torch.arange(len(m)), pivot.argmax(-1)]
    q = F.normalize(q, dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def rotmat_to_6d(R: Float[Tensor, "*B 3 3"]) -> Float[Tensor, "*B 6"]:
    """The 6D representation of rotations: the first two columns, concatenated."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rot6d_to_rotmat(r: Float[Tensor, "*B 6"]) -> Float[Tensor, "*B 3 3"]:
    """Rotation matrices from (not necessarily orthonormal) 6D vectors by Gram-Schmidt: exact inverse of
    `rotmat_to_6d` on rotations, smooth everywhere else (the two halves must not be parallel)."""
    a, b = r[..., :3], r[..., 3:]
    x = F.normalize(a, dim=-1)
    y = F.normalize(b - (x * b).sum(-1, keepdim=True) * x, dim=-1)
    return torch.stack([x, y, torch.linalg.cross(x, y)], dim=-1)


class GaussianSet(nn.Module):
    """N Gaussians' parameters: means (N,3), log_scales (N,3), quats (N,4) wxyz, opacity_logits (N,),
    color_logits (N,3)."""

    def __init__(self, means: Float[Tensor, "N 3"], log_scales: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"],
                 opacity_logits: Float[Tensor, " N"], color_logits: Float[Tensor, "N 3"]):
        super().__init__()
        for name, value in zip(GAUSSIAN_PARAMS, (means, log_scales, quats, opacity_logits, color_logits)):
            setattr(self, name, nn.Parameter(value.detach().float().contiguous()))

    @classmethod
    def empty(cls, n: int = 0) -> "GaussianSet":
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        return cls(torch.zeros(n, 3), torch.zeros(n, 3), quats, torch.zeros(n), torch.zeros(n, 3))

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def scales(self) -> Float[Tensor, "N 3"]:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Float[Tensor, " N"]:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self.color_logits)


class MotionBases(nn.Module):
    """B rigid motions over T frames: rotations (B,T,6) in the 6D representation and translations (B,T,3).
    The constructor also takes rotations as wxyz quaternions (B,T,4) or matrices (B,T,3,3)."""

    def __init__(self, rotations: Float[Tensor, "B T R"] | Float[Tensor, "B T 3 3"],
                 translations: Float[Tensor, "B T 3"]):
        super().__init__()
        rotations = rotations.detach().float()
        if rotations.shape[-1] == 4:
            rotations = quat_to_rotmat(rotations)
        if rotations.shape[-2:] == (3, 3):
            rotations = rotmat_to_6d(rotations)
        self.rotations = nn.Parameter(rotations.contiguous())
        self.translations = nn.Parameter(translations.detach().float().contiguous())

    @property
    def num_frames(self) -> int:
        return int(self.rotations.shape[1])

    def rotmats(self) -> Float[Tensor, "B T 3 3"]:
        return rot6d_to_rotmat(self.rotations)

    def at(self, time: float) -> tuple[Float[Tensor, "B 6"], Float[Tensor, "B 3"]]:
        """The bases' poses at normalised time in [0, 1]: 6D rotations and translations, each linear between
        frames (the rotation becomes orthonormal only after blending, in `rot6d_to_rotmat`)."""
        f = min(max(float(time), 0.0), 1.0) * (self.num_frames - 1)
        i0 = min(int(f), self.num_frames - 1)
        i1 = min(i0 + 1, self.num_frames - 1)
        a = f - i0
        lerp = lambda v: (1 - a) * v[:, i0] + a * v[:, i1]
        return lerp(self.rotations), lerp(self.translations)


class DynamicGaussians(nn.Module):
    """The static set, the dynamic set in its canonical frame, the motion bases and the blend weights.

    instance_ids: (N_dyn,) the segmentation id of the object each dynamic Gaussian belongs to (>= 1).
    time_centers, log_time_scales: (N_dyn,) a dynamic Gaussian's opacity is multiplied by
    exp(-((t - center) / exp(log_scale))^2 / 2) at normalised time t.
    """

    def __init__(self, static: GaussianSet, dynamic: GaussianSet, bases: MotionBases,
                 motion_logits: Float[Tensor, "N_dyn B"], instance_ids: Int[Tensor, " N_dyn"],
                 time_centers: Float[Tensor, " N_dyn"] | None = None,
                 log_time_scales: Float[Tensor, " N_dyn"] | None = None):
        super().__init__()
        n = len(dynamic)
        # temporal opacity (Spacetime Gaussians): a dynamic Gaussian lifted from one frame fades away from it, so
        # each frame is explained by the Gaussians seen near it even where the motion is not exact
        centers = torch.full((n,), 0.5) if time_centers is None else time_centers
        scales = torch.full((n,), 3.0) if log_time_scales is None else log_time_scales
        self.time_centers = nn.Parameter(centers.detach().float().contiguous())
        self.log_time_scales = nn.Parameter(scales.detach().float().contiguous())
        self.static = static
        self.dynamic = dynamic
        self.bases = bases
        self.motion_logits = nn.Parameter(motion_logits.detach().float().contiguous())
        self.register_buffer("instance_ids", instance_ids.to(torch.int32).contiguous())
        self.background = nn.Parameter(torch.zeros(3))  # rgb behind every Gaussian (fixed or learned by the fit)

    @property
    def num_frames(self) -> int:
        return self.bases.num_frames

    def sizes(self) -> dict[str, int]:
        """Every size needed to rebuild the module before `load_state_dict` (goes into config.json)."""
        return {"static": len(self.static), "dynamic": len(self.dynamic), "bases": int(self.bases.rotations.shape[0]),
                "frames": self.num_frames}

    @classmethod
    def from_sizes(cls, sizes: dict[str, int]) -> "DynamicGaussians":
        b, t = sizes["bases"], sizes["frames"]
        rot = torch.eye(3).expand(b, t, 3, 3)
        return cls(GaussianSet.empty(sizes["static"]), GaussianSet.empty(sizes["dynamic"]),
                   MotionBases(rot, torch.zeros(b, t, 3)), torch.zeros(sizes["dynamic"], b),
                   torch.zeros(sizes["dynamic"], dtype=torch.int32))

    def dynamic_pose(self, time: float, index: Int[Tensor, " M"] | None = None
                     ) -> tuple[Float[Tensor, "M 3"], Float[Tensor, "M 4"]]:
        """Dynamic Gaussians' world means and orientations (wxyz) at normalised time in [0, 1]: all of them (M = N_dyn),
        or those of `index`."""
        r_b, u_b = self.bases.at(time)
        logits, means, quats = self.motion_logits, self.dynamic.means, self.dynamic.quats
        if index is not None:
            logits, means, quats = logits[index], means[index], quats[index]
        w = torch.softmax(logits, dim=-1)
        R = rot6d_to_rotmat(w @ r_b)
        return (R @ means[:, :, None])[..., 0] + w @ u_b, quat_multiply(rotmat_to_quat(R), quats)

    def temporal_opacity(self, time: float) -> Float[Tensor, " N_dyn"]:
        """Each dynamic Gaussian's opacity factor at normalised time in [0, 1]."""
        z = (time - self.time_centers) / self.log_time_scales.exp()
        return torch.exp(-0.5 * z * z)

    def gaussians_at(self, time: float, pose: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """All Gaussians at normalised time: means (N,3), quats (N,4), scales (N,3), opacities (N,), colors (N,3),
        is_dynamic (N,) float (static first, then dynamic). `pose`: `dynamic_pose(time)` when already computed."""
        dyn_means, dyn_quats = self.dynamic_pose(time) if pose is None else pose
        s, d = self.static, self.dynamic
        return {
            "means": torch.cat([s.means, dyn_means]),
            "quats": torch.cat([s.quats, dyn_quats]),
            "scales": torch.cat([s.scales, d.scales]),
            "opacities": torch.cat([s.opacities, d.opacities * self.temporal_opacity(time)]),
            "colors": torch.cat([s.colors, d.colors]),
            "is_dynamic": torch.cat([s.means.new_zeros(len(s)), d.means.new_ones(len(d))]),
        }

    def render(self, viewmat: Float[Tensor, "4 4"], K: Float[Tensor, "3 3"], width: int, height: int,
               time: float, extra: Float[Tensor, "N E"] | None = None, backend: str = "auto",
               pose: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """One camera at one normalised time. Returns rgb (H,W,3), depth (H,W) expected z, alpha (H,W),
        dynamic (H,W) the dynamic Gaussians' share of the pixel, extra (H,W,E) composited `extra` features,
        meta (the rasterizer's, for densification). `pose`: `dynamic_pose(time)` when already computed. The
        background colour is `self.background` (clamped to [0, 1])."""
        g = self.gaussians_at(time, pose)
        feats = [g["colors"], g["is_dynamic"][:, None]] + ([extra] if extra is not None else [])
        colors = torch.cat(feats, dim=-1)
        bg = torch.cat([self.background.clamp(0, 1), colors.new_zeros(colors.shape[-1] - 3)])[None]
        out, alpha, meta = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], colors,
                                         viewmat[None], K[None], width, height, render_mode="RGB+ED",
                                         backgrounds=bg, backend=backend)
        out, alpha = out[0], alpha[0, ..., 0]
        return {"rgb": out[..., :3], "dynamic": out[..., 3], "extra": out[..., 4:-1], "depth": out[..., -1],
                "alpha": alpha, "meta": meta}

    def render_cameras(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """One image per camera at the matching normalised time: rgb (N,H,W,3) (not clamped), depth (N,H,W) expected
        z, alpha (N,H,W); extras "dynamic": the dynamic Gaussians' share (N,H,W)."""
        outs = [self.render(cameras.w2c[i].float(), cameras.K[i].float(), cameras.width, cameras.height,
                            float(times[i])) for i in range(len(cameras))]
        stack = lambda key: torch.stack([o[key] for o in outs])
        return RenderOutput(rgb=stack("rgb"), depth=stack("depth"), alpha=stack("alpha"),
                            extras={"dynamic": stack("dynamic")})
