"""Similarity alignment of two camera trajectories and the errors that compare them (ATE, rotation error).

SfM recovers a scene up to a similarity (scale, rotation, translation), so estimated cameras are compared with
ground truth after the least-squares similarity that maps estimated camera centres onto true ones (Umeyama
1991). All functions take numpy float arrays; cameras are world-to-camera 4x4 matrices (OpenCV axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float


@dataclass
class Sim3:
    """x_dst = scale * R @ x_src + t."""

    scale: float
    R: Float[np.ndarray, "3 3"]
    t: Float[np.ndarray, "3"]

    def apply(self, points: Float[np.ndarray, "*B 3"]) -> Float[np.ndarray, "*B 3"]:
        return self.scale * points @ self.R.T + self.t

    def matrix(self) -> Float[np.ndarray, "4 4"]:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.R
        m[:3, 3] = self.t
        return m

    def inverse(self) -> "Sim3":
        return Sim3(1.0 / self.scale, self.R.T, -(self.R.T @ self.t) / self.scale)


def umeyama(src: Float[np.ndarray, "N 3"], dst: Float[np.ndarray, "N 3"], with_scale: bool = True) -> Sim3:
    """Least-squares similarity (or rigid transform with `with_scale=False`) with dst ~ s R src + t.

    Needs at least 3 points that are not collinear for a unique rotation (with fewer, the rotation returned is
    one of the minimisers).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # reflection: flip the weakest axis
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = (xs ** 2).sum() / len(src)
    scale = float((S * np.diag(D)).sum() / var_s) if with_scale and var_s > 0 else 1.0
    return Sim3(scale, R, mu_d - scale * R @ mu_s)


def transform_w2c(w2c: Float[np.ndarray, "T 4 4"], sim: Sim3) -> Float[np.ndarray, "T 4 4"]:
    """The same cameras expressed in the world x' = s R x + t (camera-space lengths scale by s too)."""
    w2c = np.asarray(w2c, np.float64)
    out = np.tile(np.eye(4), (len(w2c), 1, 1))
    R_new = w2c[:, :3, :3] @ sim.R.T
    out[:, :3, :3] = R_new
    out[:, :3, 3] = sim.scale * w2c[:, :3, 3] - R_new @ sim.t
    return out


def camera_centers(w2c: Float[np.ndarray, "T 4 4"]) -> Float[np.ndarray, "T 3"]:
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    return -np.einsum("tji,tj->ti", R, t)


def rotation_angle_deg(Ra: Float[np.ndarray, "*B 3 3"], Rb: Float[np.ndarray, "*B 3 3"]) -> Float[np.ndarray, "*B"]:
    """Geodesic angle between rotations, in degrees."""
    cos = (np.trace(np.swapaxes(Ra, -1, -2) @ Rb, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def align_trajectories(w2c_est: Float[np.ndarray, "T 4 4"], w2c_gt: Float[np.ndarray, "T 4 4"],
                       with_scale: bool = True) -> Sim3:
    """Similarity taking the estimated world to the true one.

    Umeyama on camera centres plus a point one trajectory-length along each camera axis (in each world's own
    units), so that camera orientations pin down the rotation even when the centres lie on a line. When the
    centres (nearly) coincide, as for a static or purely rotating camera, the rotation is the average relative
    camera rotation, the scale 1 and the translation matches the mean centres.
    """
    w2c_est, w2c_gt = np.asarray(w2c_est, np.float64), np.asarray(w2c_gt, np.float64)
    c_est, c_gt = camera_centers(w2c_est), camera_centers(w2c_gt)
    spread_est = np.sqrt(((c_est - c_est.mean(0)) ** 2).sum(1).mean())
    spread_gt = np.sqrt(((c_gt - c_gt.mean(0)) ** 2).sum(1).mean())
    if len(c_est) >= 2 and spread_gt > 1e-6 * max(1.0, np.abs(c_gt).max()) and spread_est > 0:
        def augmented(c, w2c, length):  # rows of R are the camera axes in world coordinates
            return np.concatenate([c, (c[:, None] + length * w2c[:, :3, :3]).reshape(-1, 3)])
        return umeyama(augmented(c_est, w2c_est, spread_est), augmented(c_gt, w2c_gt, spread_gt), with_scale)
    # R such that R_est @ R.T ~ R_gt for every camera: R ~ R_gt.T @ R_est, averaged and projected onto SO(3)
    M = np.einsum("tji,tjk->ik", w2c_gt[:, :3, :3], w2c_est[:, :3, :3])
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    return Sim3(1.0, R, c_gt.mean(0) - R @ c_est.mean(0))


@dataclass
class TrajectoryError:
    ate: float               # RMSE of camera centres after alignment (ground-truth world units)
    rot_mean_deg: float      # mean rotation error after alignment
    rot_max_deg: float
    scale: float             # the alignment's scale (est -> gt)


def trajectory_error(w2c_est: Float[np.ndarray, "T 4 4"], w2c_gt: Float[np.ndarray, "T 4 4"],
                     with_scale: bool = True) -> TrajectoryError:
    """ATE and rotation error of estimated cameras against ground truth after similarity alignment."""
    sim = align_trajectories(w2c_est, w2c_gt, with_scale)
    aligned = transform_w2c(w2c_est, sim)
    d = camera_centers(aligned) - camera_centers(np.asarray(w2c_gt, np.float64))
    rot = rotation_angle_deg(aligned[:, :3, :3], np.asarray(w2c_gt, np.float64)[:, :3, :3])
    return TrajectoryError(float(np.sqrt((d ** 2).sum(1).mean())), float(rot.mean()), float(rot.max()),
                           sim.scale)


def upright_normalization(w2c: Float[np.ndarray, "T 4 4"], depths: Float[np.ndarray, " M"] | None,
                          origin: Float[np.ndarray, "3"] | None = None) -> Sim3:
    """The similarity to our normalised, z-up world (DESIGN: world is z-up).

    - z axis: the mean "up" direction of the cameras (-y of OpenCV camera axes): people hold cameras upright,
      so this is a good estimate of gravity without any other sensor;
    - y axis: the first camera's viewing direction made horizontal (so camera 0 looks along +y);
    - origin: `origin` if given (e.g. an object's centre), else the first camera's centre;
    - scale: the median of `depths` (z-depths of sparse points seen from the cameras) becomes 1, so one world
      unit is the typical viewing distance. Without depths the scale is kept.
    """
    w2c = np.asarray(w2c, np.float64)
    up = -w2c[:, 1, :3].mean(0)  # row 1 of R = camera y axis in world coordinates
    up /= np.linalg.norm(up)
    fwd = w2c[0, 2, :3] - up * (w2c[0, 2, :3] @ up)
    if np.linalg.norm(fwd) < 1e-6:  # first camera looks straight up or down: any horizontal direction will do
        fwd = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 1.0, 0.0])
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    R = np.stack([right, fwd, up])  # rows: new axes in old world coordinates
    scale = 1.0
    if depths is not None and len(depths) and np.median(depths) > 0:
        scale = 1.0 / float(np.median(depths))
    o = camera_centers(w2c[:1])[0] if origin is None else np.asarray(origin, np.float64)
    return Sim3(scale, R, -scale * R @ o)
