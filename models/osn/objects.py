"""Objects of an OSN scene: who they are, their per-frame poses relative to the camera, their sizes.

Object index o = 0 is the static background (scale fixed to 1, the paper's object 1); o = 1..K are the segmented
objects whose poses could be recovered, in increasing instance id. Every object lives in its own FRAME:
- background: the world of the input cameras (`scene.cameras`);
- object k: camera-from-object poses (rigid) from its flow tracks by PnP (`models.gaussians.motion_init`, the
  initialiser DpDy uses), or from per-object SfM (`scene.object_cameras[id]`, the optional object_sfm stage)
  where that succeeded; re-scaled so that one unit is the object's median depth (then the scale s_k below is the
  object's median distance from the camera in background units). `radius` is its extent in those units, from
  its silhouettes.
An object whose poses cannot be recovered (too few tracks, PnP loses it) is `dropped` with the reason, and its
pixels count as background (label 0): OSN fits the others.

Scale: object k at scale s_k is the object with its camera-to-object translation multiplied by s_k; in camera
coordinates (background units) the object is s_k times larger and s_k times farther, so its silhouette is
unchanged and only its depth ordering against other objects moves. As a transform, a WORLD point X seen from
input frame t maps into object k's frame by

    F_k,t(s) = P_k,t  S(1 / s)  w2c_t          (P_k,t: camera -> object frame, rigid; S: uniform scaling)

so object k's Gaussians, placed in the world, are F^-1 applied to them: means and sizes times s about the camera.
For the background P_0,t = c2w_t and s = 1, so F = identity. Novel times interpolate the object-to-world
similarities F^-1 between the neighbouring frames (`frame_from_world`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError, StageError
from models.gaussians.motion_init import MIN_PIXELS, DepthSource, object_poses
from models.scene import Scene


@dataclass
class ObjectSet:
    """ids: instance ids per object index (ids[0] = 0, background). frame_from_camera: (O, T, 4, 4) rigid
    P_o,t. w2c / K: (T, 4, 4) / (T, 3, 3) input cameras. times: (T,) normalised times of the frames.
    radius: per object its extent (object units; the background's: the scene radius). ref_depth: the
    background's median depth (world units), the unit of the scale search range. unit: per object the
    re-scaling applied to its pose frame (1 pose unit = 1 / unit[o] object units; 1 for the background).
    source: per object where its poses came from ("world", "tracks", "sfm"). dropped: instance id -> why its
    poses could not be recovered (those objects are background here). shape: per track-posed object its tracks
    triangulated over its poses (object units; for the initialisation, not saved)."""

    ids: list[int]
    frame_from_camera: Float[Tensor, "O T 4 4"]
    w2c: Float[Tensor, "T 4 4"]
    K: Float[Tensor, "T 3 3"]
    width: int
    height: int
    times: Float[Tensor, " T"]
    radius: list[float]
    ref_depth: float
    unit: list[float]
    source: list[str]
    dropped: dict[int, str]
    shape: dict[int, np.ndarray] = field(default_factory=dict)  # o -> its tracked points (object units); not saved

    @property
    def n_objects(self) -> int:
        """K: the objects with a scale (background excluded)."""
        return len(self.ids) - 1

    def to_dict(self) -> dict:
        return {"ids": self.ids, "width": self.width, "height": self.height, "radius": self.radius,
                "ref_depth": self.ref_depth, "unit": self.unit, "source": self.source,
                "dropped": {str(k): v for k, v in self.dropped.items()}}

    def tensors(self) -> dict[str, Tensor]:
        return {"frame_from_camera": self.frame_from_camera, "w2c": self.w2c, "K": self.K, "times": self.times}

    @staticmethod
    def from_saved(meta: dict, tensors: dict[str, Tensor]) -> "ObjectSet":
        return ObjectSet(list(meta["ids"]), tensors["frame_from_camera"], tensors["w2c"], tensors["K"],
                         int(meta["width"]), int(meta["height"]), tensors["times"], list(meta["radius"]),
                         float(meta["ref_depth"]), list(meta["unit"]), list(meta["source"]),
                         {int(k): v for k, v in meta.get("dropped", {}).items()})


# ---- building from a Scene ---------------------------------------------------------------------------------------

def object_ids(scene: Scene) -> list[int]:
    """The instance ids (> 0) present in the masks (none: OSN fits the background alone, the one scene there is),
    or an InputError when the scene has no segmentation at all."""
    if scene.instances is None:
        raise InputError("OSN needs instance masks, and this workspace has no segment stage result: run "
                         "`monodyn preprocess` with segmentation (point prompts on the moving objects: --point X,Y)")
    return sorted(int(v) for v in np.unique(np.asarray(scene.instances)) if v > 0)


def build_object_set(scene: Scene, depth: DepthSource | None = None, min_posed: float = 0.5,
                     seed: int = 0) -> ObjectSet:
    """Per-object frames, sizes and the scale reference from a preprocessed scene (see module doc). Poses: per-object
    SfM where the scene has it, else flow tracks + PnP (`min_posed`: the share of its visible frames PnP must
    pose); objects with neither are dropped with the reason."""
    ids = object_ids(scene)
    inst = np.asarray(scene.instances)
    T = scene.num_frames
    depth = depth or DepthSource(scene)
    cams = scene.cameras
    c2w = torch.linalg.inv(cams.w2c.double()).float()
    frames, radii, units, sources, kept, dropped = [c2w], [float(scene.radius)], [1.0], ["world"], [0], {}
    shapes: dict[int, np.ndarray] = {}
    for k in ids:
        visible = (inst == k).reshape(T, -1).sum(1) >= MIN_PIXELS
        if not visible.any():
            visible = (inst == k).reshape(T, -1).any(1)
        if k in scene.object_cameras and scene.object_cameras[k].w2c.shape[0] == T:
            w2o, obj_K, source = scene.object_cameras[k].w2c.double(), scene.object_cameras[k].K.double(), "sfm"
            known = scene.object_depth.get(k)
        else:
            poses = object_poses(scene, depth, k, min_solved=min_posed, seed=seed)
            if poses.reason is not None:
                dropped[k] = poses.reason
                continue
            w2o, obj_K, source = torch.as_tensor(poses.w2o), cams.K.double(), "tracks"
            # its median depth on its pixels where the scene has a dense depth (the track poses are in world
            # units), else the depth of the centre of its lifted points
            known = np.asarray(scene.depth) if depth.dense and depth.plane is None else None
        try:
            m = _median_depth(w2o, known, inst == k, visible)
        except StageError as e:
            dropped[k] = str(e)
            continue
        w2o = w2o.clone()
        w2o[:, :3, 3] /= m  # one object unit = the object's median depth
        radius = _silhouette_radius(w2o, obj_K, inst == k, visible)
        cam_in_obj = -(w2o[:, :3, :3].transpose(1, 2) @ w2o[:, :3, 3:])[..., 0]  # camera centres, object frame
        near = float(torch.linalg.vector_norm(cam_in_obj[torch.as_tensor(visible)], dim=-1).min())
        if source == "tracks":
            shapes[len(kept)] = poses.points / m
        frames.append(torch.linalg.inv(w2o).float())
        radii.append(float(min(radius, 0.95 * near)))
        units.append(float(m))
        sources.append(source)
        kept.append(k)
    return ObjectSet(kept, torch.stack(frames), cams.w2c.float(), cams.K.float(), scene.width, scene.height,
                     scene.times.float(), radii, _reference_depth(scene, inst), units, sources, dropped, shapes)


def dropped_line(objects: ObjectSet) -> str | None:
    """One line naming every object left in the background and why, or None."""
    if not objects.dropped:
        return None
    n = objects.n_objects + len(objects.dropped)
    parts = "; ".join(f"object {k}: {why}" for k, why in sorted(objects.dropped.items()))
    return (f"OSN could not pose {len(objects.dropped)} of {n} segmented objects and keeps them as part of the "
            f"background ({parts}); the other {objects.n_objects} get scales")


def background_labels(objects: ObjectSet, instances: np.ndarray) -> np.ndarray:
    """Per pixel the object index (0 = background, dropped objects included) of instance masks (T,H,W)."""
    lut = np.zeros(256, np.int64)
    lut[np.asarray(objects.ids, np.int64)] = np.arange(len(objects.ids))
    return lut[np.asarray(instances).astype(np.int64)]


def _median_depth(w2o: Tensor, depth: np.ndarray | None, mask: np.ndarray, visible: np.ndarray) -> float:
    """The object's median z-depth in its pose units: from its depth map on its mask when known, else the depth
    of its frame origin (per-object SfM and the track poses put that at the centre of the object's points)."""
    if depth is not None:
        d = np.asarray(depth)[mask]
        d = d[np.isfinite(d) & (d > 0)]
        if len(d) >= 8:
            return float(np.median(d))
    z = w2o[torch.as_tensor(visible), 2, 3]
    z = z[z > 0]
    if len(z) == 0:
        raise StageError("its poses put it behind the camera in every frame")
    return float(z.median())


def _silhouette_radius(w2o: Tensor, K: Tensor, mask: np.ndarray, visible: np.ndarray) -> float:
    """A radius (object units) that holds the object: per frame, the farthest mask pixel from the projected
    frame origin, back-projected at the origin's depth; the 90th percentile over the visible frames."""
    t_idx, ys, xs = np.nonzero(mask)
    centre = w2o[:, :3, 3]  # the object origin in camera coordinates
    z = centre[:, 2].clamp_min(1e-6)
    proj = (K @ centre[..., None])[..., 0]
    px, py = (proj[:, 0] / z).numpy(), (proj[:, 1] / z).numpy()
    dist = np.hypot(xs + 0.5 - px[t_idx], ys + 0.5 - py[t_idx])
    far = np.zeros(len(w2o))
    np.maximum.at(far, t_idx, dist)
    focal = K[:, 0, 0].numpy()
    radius = far * z.numpy() / focal
    return float(np.percentile(radius[visible], 90))


def _reference_depth(scene: Scene, inst: np.ndarray) -> float:
    """Median background depth in world units (the depth map on background pixels, else the distance of the
    scene centre along each camera's optical axis)."""
    if scene.depth is not None:
        d = np.asarray(scene.depth)[inst == 0]
        d = d[np.isfinite(d) & (d > 0)]
        if len(d) >= 16:
            return float(np.median(d))
    c = torch.as_tensor(np.asarray(scene.center), dtype=torch.float32)
    z = (scene.cameras.w2c[:, :3, :3] @ c + scene.cameras.w2c[:, :3, 3])[:, 2]
    return float(z.clamp_min(1e-3).median())


# ---- rays in object frames ------------------------------------------------------------------------------------

def scaling(s: Float[Tensor, "*B"]) -> Float[Tensor, "*B 4 4"]:
    """Homogeneous uniform scaling matrices diag(s, s, s, 1)."""
    m = torch.zeros(*s.shape, 4, 4, dtype=s.dtype, device=s.device)
    m[..., 0, 0] = m[..., 1, 1] = m[..., 2, 2] = s
    m[..., 3, 3] = 1.0
    return m


def frame_from_world_at_frames(frame_from_camera: Float[Tensor, "*B 4 4"], w2c: Float[Tensor, "*B 4 4"],
                               scale: Float[Tensor, "*B"]) -> Float[Tensor, "*B 4 4"]:
    """F = P S(1/s) w2c: world -> object frame at input frames (see module doc)."""
    return frame_from_camera @ scaling(1.0 / scale) @ w2c


# ---- novel times: interpolating object poses --------------------------------------------------------------------

def matrix_to_quaternion(R: Float[Tensor, "*B 3 3"]) -> Float[Tensor, "*B 4"]:
    """Rotation matrices -> unit quaternions (w, x, y, z), w >= 0 (the largest-component method, vectorised)."""
    m = R
    t = torch.stack([1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    cands = torch.stack([
        torch.stack([t[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], t[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], t[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], t[..., 3]], -1),
    ], -2)  # (*B, 4 candidates, 4)
    best = t.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 3 3"]:
    w, x, y, z = (q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def slerp(q0: Float[Tensor, "*B 4"], q1: Float[Tensor, "*B 4"], u: Float[Tensor, "*B"]) -> Float[Tensor, "*B 4"]:
    dot = (q0 * q1).sum(-1)
    q1 = torch.where(dot[..., None] < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    small = theta < 1e-4
    sin = torch.sin(theta).clamp_min(1e-8)
    a = torch.where(small, 1 - u, torch.sin((1 - u) * theta) / sin)
    b = torch.where(small, u, torch.sin(u * theta) / sin)
    q = a[..., None] * q0 + b[..., None] * q1
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def interpolate_similarity(M: Float[Tensor, "T 4 4"], frame_times: Float[Tensor, " T"], t: float) -> Float[Tensor, "4 4"]:
    """The similarity (scale * R | translation) at normalised time t between the frames' M (rotation slerp,
    translation and log-scale linear; clamped to the clip)."""
    times = frame_times.to(M)
    if len(times) == 1 or t <= float(times[0]):
        return M[0]
    if t >= float(times[-1]):
        return M[-1]
    i = int(torch.searchsorted(times, torch.tensor(t, dtype=times.dtype)).clamp(1, len(times) - 1))
    u = (t - float(times[i - 1])) / max(float(times[i] - times[i - 1]), 1e-12)
    A0, A1 = M[i - 1, :3, :3], M[i, :3, :3]
    s0, s1 = torch.linalg.det(A0).abs() ** (1 / 3), torch.linalg.det(A1).abs() ** (1 / 3)
    q = slerp(matrix_to_quaternion(A0 / s0), matrix_to_quaternion(A1 / s1), torch.tensor(u, dtype=M.dtype))
    out = torch.eye(4, dtype=M.dtype)
    out[:3, :3] = quaternion_to_matrix(q) * torch.exp((1 - u) * torch.log(s0) + u * torch.log(s1))
    out[:3, 3] = (1 - u) * M[i - 1, :3, 3] + u * M[i, :3, 3]
    return out


def frame_from_world(objects: ObjectSet, o: int, scale: float, t: float) -> Float[Tensor, "4 4"]:
    """World -> frame of object o at scale `scale` and normalised time t (interpolated between frames)."""
    P = objects.frame_from_camera[o].double()
    w2c = objects.w2c.double()
    s = torch.full((len(w2c),), float(scale), dtype=torch.float64)
    F = frame_from_world_at_frames(P, w2c, s)
    exact = (objects.times.double() - t).abs() < 1e-9
    if exact.any():
        return F[int(exact.nonzero()[0, 0])].float()
    O = torch.linalg.inv(F)  # object frame -> world, a similarity with scale s
    return torch.linalg.inv(interpolate_similarity(O, objects.times.double(), t)).float()


def log_scale_range(objects: ObjectSet, scale_min: float, scale_max: float) -> tuple[list[float], list[float]]:
    """Per-object log-scale search range [log(scale_min * ref), log(scale_max * ref)] (objects 1..K)."""
    lo, hi = math.log(scale_min * objects.ref_depth), math.log(scale_max * objects.ref_depth)
    return [lo] * objects.n_objects, [hi] * objects.n_objects
