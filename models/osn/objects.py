"""Objects of an OSN scene: who they are, their per-frame poses relative to the camera, their unit volumes.

Object index o = 0 is the static background (scale fixed to 1, the paper's object 1); o = 1..K are the segmented
objects, in increasing instance id. Every object lives in its own FRAME:
- background: the world of the input cameras (`scene.cameras`), mapped into its field box by an `AABBMap`
  (bounded scenes) or a `ContractedMap` (real clips);
- object k: its per-object SfM frame (`scene.object_cameras[id]`: w2c = camera-from-object, rigid, in that
  object's own units), re-scaled so that one unit is the object's median depth (then the scale s_k below is
  the object's median distance from the camera in background units), and mapped into its field box by the
  cube [-r_k, r_k]^3, r_k from its silhouettes.

Scale: object k at scale s_k is the SfM object with its camera-to-object translation multiplied by s_k; in
camera coordinates (background units) the object is s_k times larger and s_k times farther, so its silhouette
is unchanged and only its depth ordering against other objects moves. As a transform, a WORLD point X seen
from input frame t maps into object k's frame by

    F_k,t(s) = P_k,t  S(1 / s)  w2c_t          (P_k,t: camera -> object frame, rigid; S: uniform scaling)

and distances along a ray in the object's frame are 1 / s those in the world (`frame_rays`). For the background
P_0,t = c2w_t and s = 1, so F = identity. Novel times interpolate the object-to-world similarities F^-1
between the neighbouring frames (`frame_from_world`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError, StageError
from models.scene import Scene

MIN_PIXELS = 16  # frames where an object covers fewer pixels do not count as "visible" for its statistics


@dataclass
class ObjectSet:
    """ids: instance ids per object index (ids[0] = 0, background). frame_from_camera: (O, T, 4, 4) rigid
    P_o,t. w2c / K: (T, 4, 4) / (T, 3, 3) input cameras. times: (T,) normalised times of the frames.
    spaces: per object the field-box map as a dict (`models.fields.space_map_from_dict`). ref_depth: the
    background's median depth (world units), the unit of the scale search range. unit: per object the
    re-scaling applied to its SfM frame (1 SfM unit = 1 / unit[o] object units; 1 for the background)."""

    ids: list[int]
    frame_from_camera: Float[Tensor, "O T 4 4"]
    w2c: Float[Tensor, "T 4 4"]
    K: Float[Tensor, "T 3 3"]
    width: int
    height: int
    times: Float[Tensor, " T"]
    spaces: list[dict]
    ref_depth: float
    unit: list[float]

    @property
    def n_objects(self) -> int:
        """K: the objects with a scale (background excluded)."""
        return len(self.ids) - 1

    def to_dict(self) -> dict:
        return {"ids": self.ids, "width": self.width, "height": self.height, "spaces": self.spaces,
                "ref_depth": self.ref_depth, "unit": self.unit}

    def tensors(self) -> dict[str, Tensor]:
        return {"frame_from_camera": self.frame_from_camera, "w2c": self.w2c, "K": self.K, "times": self.times}

    @staticmethod
    def from_saved(meta: dict, tensors: dict[str, Tensor]) -> "ObjectSet":
        return ObjectSet(list(meta["ids"]), tensors["frame_from_camera"], tensors["w2c"], tensors["K"],
                         int(meta["width"]), int(meta["height"]), tensors["times"], list(meta["spaces"]),
                         float(meta["ref_depth"]), list(meta["unit"]))


# ---- building from a Scene ---------------------------------------------------------------------------------------

def object_ids(scene: Scene) -> list[int]:
    """The instance ids (> 0) present in the masks, or an InputError saying segmentation found nothing."""
    if scene.instances is None:
        raise InputError("OSN needs instance masks, and this workspace has no segment stage result: run "
                         "`monodyn preprocess` with segmentation (point prompts on the moving objects: --point X,Y)")
    ids = sorted(int(v) for v in np.unique(np.asarray(scene.instances)) if v > 0)
    if not ids:
        raise InputError(f"segmentation found no object in the {scene.num_frames} frames (every pixel is "
                         "background): OSN needs at least one segmented object; rerun `monodyn preprocess` with "
                         "point prompts on the moving objects (--point X,Y) or another --segment method")
    return ids


def build_object_set(scene: Scene, margin: float = 1.3, background_space: str = "auto") -> ObjectSet:
    """Per-object frames, unit volumes and the scale reference from a preprocessed scene (see module doc)."""
    ids = object_ids(scene)
    inst = np.asarray(scene.instances)
    T = scene.num_frames
    _check_object_poses(scene, ids, inst)
    cams = scene.cameras
    c2w = torch.linalg.inv(cams.w2c.double()).float()
    frames, spaces, units = [c2w], [_background_space(scene, background_space)], [1.0]
    for k in ids:
        visible = (inst == k).reshape(T, -1).sum(1) >= MIN_PIXELS
        w2o = scene.object_cameras[k].w2c.double()
        if w2o.shape[0] != T:
            raise InputError(f"object {k} has {w2o.shape[0]} per-object SfM poses but the clip has {T} frames; rerun "
                             "`monodyn preprocess --force sfm --per-object-sfm`")
        if not visible.any():
            visible = (inst == k).reshape(T, -1).any(1)
        m = _median_depth(w2o, scene.object_depth.get(k), inst == k, visible)
        w2o = w2o.clone()
        w2o[:, :3, 3] /= m  # one object unit = the object's median depth
        obj_K = scene.object_cameras[k].K.double()
        radius = _silhouette_radius(w2o, obj_K, inst == k, visible) * margin
        cam_in_obj = -(w2o[:, :3, :3].transpose(1, 2) @ w2o[:, :3, 3:])[..., 0]  # camera centres, object frame
        radius = min(radius, 0.95 * float(cam_in_obj[torch.as_tensor(visible)].abs().amax(-1).min()))
        frames.append(torch.linalg.inv(w2o).float())
        spaces.append({"kind": "aabb", "aabb": [[-radius] * 3, [radius] * 3]})
        units.append(float(m))
    return ObjectSet([0] + ids, torch.stack(frames), cams.w2c.float(), cams.K.float(), scene.width, scene.height,
                     scene.times.float(), spaces, _reference_depth(scene, inst), units)


def _check_object_poses(scene: Scene, ids: list[int], inst: np.ndarray) -> None:
    """A StageError naming every segmented object without per-object SfM poses: why (the SfM stage's reason, in
    `scene.object_sfm`) and what to try."""
    missing = [k for k in ids if k not in scene.object_cameras]
    if not missing:
        return
    report = scene.object_sfm
    if not any(k in report for k in missing):
        raise StageError(
            f"no per-object SfM poses for object{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of "
            f"{len(ids)}: per-object SfM did not run; run `monodyn preprocess --per-object-sfm` (OSN needs each "
            "object's camera-to-object poses)")
    T = scene.num_frames
    parts = []
    for k in missing:
        frames = int(((inst == k).reshape(T, -1).sum(1) >= MIN_PIXELS).sum())
        why = report.get(k, {}).get("reason", "no result recorded")
        parts.append(f"object {k} (masked in {frames} of {T} frames, {100 * float((inst == k).mean()):.1f}% of the "
                     f"pixels): {why}")
    hint = next((report[k]["hint"] for k in missing if report.get(k, {}).get("hint")),
                "try a larger --max-side or more frames")
    raise StageError(f"per-object SfM failed for {len(missing)} of {len(ids)} segmented objects, and OSN needs "
                     f"every object's camera-to-object poses: {'; '.join(parts)}. {hint[0].upper() + hint[1:]}; "
                     "then `monodyn preprocess ... --per-object-sfm` again (details in sfm/objects.json)")


def _background_space(scene: Scene, kind: str) -> dict:
    if kind == "auto":
        kind = "aabb" if scene.aabb is not None else "contracted"
    center = np.asarray(scene.center, np.float64)
    if kind == "aabb":
        aabb = scene.aabb if scene.aabb is not None else [center - scene.radius, center + scene.radius]
        return {"kind": "aabb", "aabb": [list(map(float, aabb[0])), list(map(float, aabb[1]))]}
    return {"kind": "contracted", "center": center.tolist(), "radius": float(scene.radius), "order": "inf"}


def _median_depth(w2o: Tensor, depth: np.ndarray | None, mask: np.ndarray, visible: np.ndarray) -> float:
    """The object's median z-depth in its SfM units: from its depth map on its mask when known, else the depth
    of its frame origin (the SfM stage puts that at the median of the object's points)."""
    if depth is not None:
        d = np.asarray(depth)[mask]
        d = d[np.isfinite(d) & (d > 0)]
        if len(d) >= 8:
            return float(np.median(d))
    z = w2o[torch.as_tensor(visible), 2, 3]
    z = z[z > 0]
    if len(z) == 0:
        raise StageError("per-object SfM put the object behind the camera in every frame; rerun `monodyn preprocess "
                         "--force sfm --per-object-sfm`")
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


def frame_rays(frame_from_world: Float[Tensor, "N 4 4"], origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"]
               ) -> tuple[Float[Tensor, "N 3"], Float[Tensor, "N 3"], Float[Tensor, " N"]]:
    """World rays (unit directions) -> rays in an object's frame: origins, unit directions, and the world
    distance per frame distance along each ray (= s for a similarity with scale 1/s)."""
    A, b = frame_from_world[..., :3, :3], frame_from_world[..., :3, 3]
    o = (A @ origins[..., None])[..., 0] + b
    d = (A @ dirs[..., None])[..., 0]
    n = torch.linalg.vector_norm(d, dim=-1)
    return o, d / n[..., None], 1.0 / n


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
