"""Pinhole cameras: intrinsics, extrinsics, projection and back-projection (the geometry every stage and method shares).

Conventions (see DESIGN.md):
- OpenCV camera axes: x right, y down, z forward. Extrinsics are world-to-camera 4x4 matrices.
- Pixel centres sit at integer + 0.5 (pixel (0, 0) covers [0, 1) x [0, 1)).
- nerfstudio / NeRF files use OpenGL axes (x right, y up, z back) and camera-to-world; convert only at
  that boundary with `opengl_c2w_to_opencv_w2c` / `opencv_w2c_to_opengl_c2w`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of N pinhole cameras sharing one image size.

    K: (N, 3, 3) intrinsics in pixels. w2c: (N, 4, 4) world-to-camera (OpenCV axes).
    """

    K: Float[Tensor, "N 3 3"]
    w2c: Float[Tensor, "N 4 4"]
    width: int
    height: int

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        K, w2c = self.K[idx], self.w2c[idx]
        if K.dim() == 2:
            K, w2c = K[None], w2c[None]
        return Cameras(K, w2c, self.width, self.height)

    def to(self, device) -> "Cameras":
        return Cameras(self.K.to(device), self.w2c.to(device), self.width, self.height)

    @property
    def c2w(self) -> Float[Tensor, "N 4 4"]:
        return torch.linalg.inv(self.w2c)

    @property
    def centers(self) -> Float[Tensor, "N 3"]:
        """Camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def scaled(self, factor: float) -> "Cameras":
        """The same cameras for images resized by `factor` (intrinsics scaled, extrinsics kept)."""
        K = self.K.clone()
        K[:, :2] *= factor
        return Cameras(K, self.w2c.clone(), round(self.width * factor), round(self.height * factor))

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "K": self.K.tolist(), "w2c": self.w2c.tolist()}

    @staticmethod
    def from_dict(d: dict) -> "Cameras":
        return Cameras(torch.tensor(d["K"], dtype=torch.float32), torch.tensor(d["w2c"], dtype=torch.float32),
                       int(d["width"]), int(d["height"]))


def intrinsics_from_fov(width: int, height: int, fov_x_deg: float) -> Float[Tensor, "3 3"]:
    """Intrinsics with square pixels, principal point at the image centre, horizontal field of view in degrees."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: Float[Tensor, "*B 3"], target: Float[Tensor, "*B 3"],
            up: Float[Tensor, "*B 3"] | None = None) -> Float[Tensor, "*B 4 4"]:
    """World-to-camera matrices (OpenCV axes) of cameras at `eye` looking at `target`.

    `up` is the world direction that appears up in the image; default (0, 0, 1): scenes are z-up, as in
    the synthetic generator and GCD's spherical camera convention. `eye` must not be straight above
    or below `target` along `up`.
    """
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0]).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.nn.functional.normalize(torch.cross(forward, up, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    R = torch.stack([right, down, forward], dim=-2)  # rows = camera axes in world coords
    t = -(R @ eye[..., None])[..., 0]
    w2c = torch.zeros(*eye.shape[:-1], 4, 4)
    w2c[..., :3, :3] = R
    w2c[..., :3, 3] = t
    w2c[..., 3, 3] = 1.0
    return w2c


def pixel_grid(width: int, height: int, device=None) -> Float[Tensor, "H W 2"]:
    """Pixel-centre coordinates (x, y) = (col + 0.5, row + 0.5)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def project(points: Float[Tensor, "*#B 3"], K: Float[Tensor, "*#B 3 3"], w2c: Float[Tensor, "*#B 4 4"]
            ) -> tuple[Float[Tensor, "*#B 2"], Float[Tensor, "*#B"]]:
    """World points to pixel positions (x, y) and camera-space depth z (z <= 0 means behind the camera).
    The batch shapes broadcast (e.g. one camera for many points)."""
    p_cam = (w2c[..., :3, :3] @ points[..., None])[..., 0] + w2c[..., :3, 3]
    z = p_cam[..., 2]
    uvw = (K @ p_cam[..., None])[..., 0]
    xy = uvw[..., :2] / z.clamp(min=1e-8)[..., None]
    return xy, z


def unproject(xy: Float[Tensor, "*#B 2"], depth: Float[Tensor, "*#B"], K: Float[Tensor, "*#B 3 3"],
              w2c: Float[Tensor, "*#B 4 4"]) -> Float[Tensor, "*#B 3"]:
    """Pixel positions with z-depth (camera-space z, not ray length) back to world points; batch shapes
    broadcast."""
    x = (xy[..., 0] - K[..., 0, 2]) / K[..., 0, 0]
    y = (xy[..., 1] - K[..., 1, 2]) / K[..., 1, 1]
    p_cam = torch.stack([x * depth, y * depth, depth], dim=-1)
    R = w2c[..., :3, :3]
    t = w2c[..., :3, 3]
    return (R.transpose(-1, -2) @ (p_cam - t)[..., None])[..., 0]


def opengl_c2w_to_opencv_w2c(c2w_gl: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """NeRF / nerfstudio camera-to-world (OpenGL axes) to our world-to-camera (OpenCV axes)."""
    c2w_cv = c2w_gl @ _FLIP_YZ.to(c2w_gl)
    return torch.linalg.inv(c2w_cv)


def opencv_w2c_to_opengl_c2w(w2c: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """Inverse of `opengl_c2w_to_opencv_w2c`."""
    return torch.linalg.inv(w2c) @ _FLIP_YZ.to(w2c)


# ---- where a clip's cameras look (camera paths, GCD's and DyST's relative moves) ---------------------------
def mean_image_up(cams: Cameras) -> Float[Tensor, "3"]:
    """World direction that is 'up' in the images on average (mean of the cameras' -y axes), unit length."""
    up = -cams.c2w[:, :3, 1].mean(0)
    if float(up.norm()) < 1e-6:
        raise InputError("cannot estimate an up direction: the input cameras' image-up axes cancel out")
    return up / up.norm()


def axes_meeting_point(cams: Cameras, fallback_distance: float | None = None) -> Float[Tensor, "3"]:
    """The point nearest (least squares) to all optical axes: what a converging capture looks at.

    When the axes are nearly parallel (a forward-facing clip) that point is ill-defined; then the point
    `fallback_distance` in front of the mean camera is used (an InputError if it is not given)."""
    c2w = cams.c2w
    eye, fwd = c2w[:, :3, 3].double(), torch.nn.functional.normalize(c2w[:, :3, 2].double(), dim=-1)
    proj = torch.eye(3, dtype=torch.float64) - fwd[:, :, None] * fwd[:, None, :]  # (I - d d^T) per axis
    A, b = proj.sum(0), (proj @ eye[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if float(eig[0]) > 1e-3 * float(eig[-1]):
        return torch.linalg.solve(A, b).float()
    if fallback_distance is None:
        raise InputError("the input cameras look in nearly parallel directions, so no common look-at point "
                         "exists; give the scene centre (e.g. from the depth) explicitly")
    mean_fwd = torch.nn.functional.normalize(fwd.mean(0), dim=0)
    return (eye.mean(0) + fallback_distance * mean_fwd).float()


def visible_points(points: Float[Tensor, "P 3"], cams: Cameras, with_xy: bool = False) -> tuple:
    """Camera-space z (N,P) of every point in every camera, and whether the point lies in front of that camera and
    inside its image (N,P) bool; with `with_xy` also the pixel positions (N,P,2)."""
    xy, z = project(points[None].to(cams.w2c), cams.K[:, None], cams.w2c[:, None])
    inside = (z > 0) & (xy >= 0).all(-1) & (xy[..., 0] <= cams.width) & (xy[..., 1] <= cams.height)
    return (z, inside, xy) if with_xy else (z, inside)


def scene_look_at(cams: Cameras, center: Float[Tensor, "3"] | None = None,
                  content: Float[Tensor, "P 3"] | None = None) -> Float[Tensor, "3"]:
    """A clip's look-at point, in front of its cameras at the depth of what they film.

    `content`: world points on the scene (SfM points, lifted depth, Gaussian means); without any the scene
    `center` stands for it. Where the optical axes meet is what a converging capture looks at, and is used when
    it lies in front of (nearly) all cameras at a depth the content spans. A pan or a turning camera has axes
    that diverge or meet at the camera itself: then the point at the median content depth along the mean
    viewing direction, from the mean camera centre."""
    center = None if center is None else torch.as_tensor(center, dtype=torch.float32)
    depths = None
    if content is not None and len(content):
        z, inside = visible_points(content.float(), cams)
        depths = z[inside] if bool(inside.any()) else None
    if depths is None and center is not None:
        z = project(center.expand(len(cams), 3), cams.K, cams.w2c)[1]
        depths = z if float(z.median()) > 0 else (cams.centers - center).norm(dim=-1)
    if depths is None:  # nothing known about the content: trust the axes
        return axes_meeting_point(cams)
    lo, mid, hi = (float(q) for q in torch.quantile(depths.float(), torch.tensor([0.05, 0.5, 0.95])))
    mid = max(mid, 1e-3)
    try:
        meet = axes_meeting_point(cams)
    except InputError:  # parallel axes
        meet = None
    if meet is not None:
        z_meet = project(meet.expand(len(cams), 3), cams.K, cams.w2c)[1]
        consistent = (z_meet >= 0.5 * lo) & (z_meet <= 2.0 * hi) & (z_meet > 0)
        if float(consistent.float().mean()) >= 0.9:
            return meet
    fwd = cams.c2w[:, :3, 2].mean(0)
    if float(fwd.norm()) < 0.3 and content is not None and len(content):  # cameras all around: the content's centre
        return content.float().median(0).values
    return cams.centers.mean(0) + mid * fwd / fwd.norm().clamp(min=1e-12)
