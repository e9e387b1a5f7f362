"""Initialise a `DynamicGaussians` from a preprocessed `Scene`, with no pretrained weight.

- Static Gaussians: background pixels (instance 0) of a few keyframes lifted with depth (the depth stage's dense
  depth, or the sparse SfM depth interpolated over the image: a room's walls and floor are planes, so linear
  interpolation between SfM points is already close), plus the SfM points with their colours.
- Dynamic Gaussians: the pixels of each segmented object in the frame where it is largest (its canonical frame),
  lifted with depth. Without dense depth an object's depth is that of the background just around it (an object
  stands in front of what surrounds it; the fit refines it).
- Motion: 2D tracks chained through the optical flow from the canonical frame, lifted to 3D per frame, clustered
  (k-means on their 3D displacements) into a few groups per object; each group's rigid motion per frame (Kabsch)
  is one motion basis. A dynamic Gaussian starts on the basis of its nearest track.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from jaxtyping import Float

from models.cameras import unproject
from models.depth import densify_sparse_depth
from models.gaussians.model import DynamicGaussians, GaussianSet, MotionBases, rotmat_to_quat
from models.gaussians.tracks import chain_tracks, kmeans, rigid_fit
from models.scene import Scene

DENSE_DEPTH = 0.3  # a depth map covering at least this share of pixels is dense (a prediction), else sparse SfM


@dataclass
class InitOptions:
    static_points: int = 40000
    """Static Gaussians lifted from the keyframes' depth."""
    keyframes: int = 8
    """Frames (evenly spread) whose background pixels are lifted."""
    dynamic_points: int = 12000
    """Dynamic Gaussians over all objects (split by object area)."""
    bases_per_object: int = 4
    """Motion bases per segmented object."""
    tracks_per_object: int = 384
    """Flow tracks per object used to initialise its motion."""
    opacity: float = 0.7
    """Initial opacity of every Gaussian."""
    seed: int = 0


class DepthSource:
    """Per-frame dense z-depth in world units (H, W), made once per frame: the scene's dense depth with its holes
    filled, or its sparse SfM depth interpolated; None when the scene has no depth at all."""

    def __init__(self, scene: Scene):
        self.depth = scene.depth
        self.dense = scene.depth is not None and float((np.asarray(scene.depth[::max(1, scene.num_frames // 8)]) > 0)
                                                       .mean()) >= DENSE_DEPTH
        self._cache: dict[int, np.ndarray | None] = {}

    def __call__(self, t: int) -> np.ndarray | None:
        if self.depth is None:
            return None
        if t not in self._cache:
            d = np.asarray(self.depth[t], np.float32)
            self._cache[t] = d if self.dense and (d > 0).all() else densify_sparse_depth(d)
        return self._cache[t]


def _lift(scene: Scene, t: int, xy: Float[np.ndarray, "P 2"], z: Float[np.ndarray, "P"]) -> np.ndarray:
    cam = scene.cameras[t]
    pts = unproject(torch.as_tensor(xy, dtype=torch.float32), torch.as_tensor(z, dtype=torch.float32),
                    cam.K[0], cam.w2c[0])
    return pts.numpy()


def _gaussian_set(means: np.ndarray, colors: np.ndarray, scales: np.ndarray, opacity: float,
                  rng: np.random.Generator) -> GaussianSet:
    n = len(means)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    c = np.clip(colors, 0.02, 0.98)
    return GaussianSet(torch.as_tensor(means, dtype=torch.float32),
                       torch.as_tensor(np.log(np.maximum(scales, 1e-6)), dtype=torch.float32)[:, None].repeat(1, 3),
                       torch.as_tensor(quats),
                       torch.full((n,), float(np.log(opacity / (1 - opacity)))),
                       torch.as_tensor(np.log(c / (1 - c)), dtype=torch.float32))


def _grid_pixels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """About `count` jittered pixel positions (x, y) spread evenly over `mask` (H, W) bool."""
    area = int(mask.sum())
    if area == 0 or count <= 0:
        return np.zeros((0, 2), np.float32)
    stride = max(1.0, float(np.sqrt(area / count)))
    h, w = mask.shape
    ys, xs = np.meshgrid(np.arange(stride / 2, h, stride), np.arange(stride / 2, w, stride), indexing="ij")
    xy = np.stack([xs.ravel(), ys.ravel()], 1) + rng.uniform(-stride / 2, stride / 2, (xs.size, 2))
    xy = np.clip(xy, 0, [w - 1e-3, h - 1e-3])
    keep = mask[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    return xy[keep].astype(np.float32)


def static_gaussians(scene: Scene, depth: DepthSource, opts: InitOptions, rng: np.random.Generator) -> GaussianSet:
    means, colors, scales = [], [], []
    focal = float(scene.cameras.K[:, 0, 0].mean())
    keyframes = np.unique(np.linspace(0, scene.num_frames - 1, max(1, opts.keyframes)).round().astype(int))
    for t in keyframes:
        z = depth(int(t))
        if z is None:
            break
        background = np.ones((scene.height, scene.width), bool)
        if scene.instances is not None:
            moving = cv2.dilate((np.asarray(scene.instances[t]) > 0).astype(np.uint8), np.ones((5, 5), np.uint8))
            background = moving == 0
        xy = _grid_pixels(background & (z > 0), opts.static_points // len(keyframes), rng)
        zs = z[xy[:, 1].astype(int), xy[:, 0].astype(int)]
        stride = np.sqrt(background.sum() / max(len(xy), 1))
        means.append(_lift(scene, int(t), xy, zs))
        colors.append(np.asarray(scene.frames[t], np.float32)[xy[:, 1].astype(int), xy[:, 0].astype(int)] / 255)
        scales.append(0.5 * stride * zs / focal)
    if scene.points is not None and len(scene.points):
        pts = np.asarray(scene.points, np.float32)
        rgb = (np.asarray(scene.points_rgb, np.float32) / 255 if scene.points_rgb is not None
               else np.full_like(pts, 0.5))
        d = np.linalg.norm(pts - scene.center, axis=1)
        means.append(pts)
        colors.append(rgb)
        scales.append(np.full(len(pts), 0.01 * float(scene.radius)) if len(pts) < 4 else
                      np.maximum(_mean_neighbour_distance(pts), 1e-4 * (1 + d)))
    if not means:  # no depth, no points: a shell of random Gaussians around the scene centre
        n = opts.static_points
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        means.append(scene.center + dirs * scene.radius * rng.uniform(0.2, 1.0, (n, 1)))
        colors.append(np.full((n, 3), 0.5))
        scales.append(np.full(n, 0.02 * scene.radius))
    return _gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(scales), opts.opacity, rng)


def _mean_neighbour_distance(pts: np.ndarray, k: int = 3) -> np.ndarray:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(pts).query(pts, k=k + 1)
    return dist[:, 1:].mean(1)


def _object_depth(depth: DepthSource, instances: np.ndarray, t: int, obj: int, xy: np.ndarray) -> np.ndarray | None:
    """z-depth of object pixels `xy` in frame t: the dense prediction there, else the nearest background just
    around the object (5th percentile of a ring of interpolated SfM depth; an object stands in front of what
    surrounds it: on our synthetic scenes this is 15% too far in the median, the 30th percentile 37%)."""
    z = depth(t)
    if z is None:
        return None
    if depth.dense:
        return z[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    mask = (instances == obj).astype(np.uint8)
    ring = (cv2.dilate(mask, np.ones((17, 17), np.uint8)) > 0) & (cv2.dilate(mask, np.ones((5, 5), np.uint8)) == 0)
    ring &= instances == 0
    values = z[ring] if ring.any() else z[z > 0]
    return np.full(len(xy), np.percentile(values, 5) if len(values) else 1.0, np.float32)


def _object_motion(scene: Scene, depth: DepthSource, obj: int, canonical: int, seeds_xy: np.ndarray,
                   seeds_xyz: np.ndarray, n_bases: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations (b,T,4), translations (b,T,3) of the object's bases and each seed's basis (P,)."""
    n_frames = scene.num_frames
    inst = scene.instances
    if scene.flow_fw is None or len(seeds_xy) < 3:
        pos = None
    else:
        pos, ok = chain_tracks(scene.flow_fw, scene.flow_bw, scene.valid_fw, scene.valid_bw, canonical, seeds_xy)
    xyz = np.zeros((n_frames, len(seeds_xy), 3), np.float32)
    valid = np.zeros((n_frames, len(seeds_xy)), bool)
    for t in range(n_frames):
        frame_inst = np.asarray(inst[t])
        if pos is None:  # no flow: every seed follows the object's mask centroid
            ys, xs = np.nonzero(frame_inst == obj)
            if len(xs) == 0:
                continue
            shift = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) - seeds_xy.mean(0)
            xy_t, ok_t = seeds_xy + shift, np.ones(len(seeds_xy), bool)
        else:
            xy_t, ok_t = pos[t], ok[t].copy()
            ix = np.clip(xy_t.astype(int), 0, [scene.width - 1, scene.height - 1])
            ok_t &= frame_inst[ix[:, 1], ix[:, 0]] == obj
        if ok_t.sum() < 3:
            continue
        z = _object_depth(depth, frame_inst, t, obj, xy_t)
        if z is None:
            continue
        xyz[t] = _lift(scene, t, xy_t, z)
        valid[t] = ok_t & (z > 0)
    # cluster tracks by their displacement over time (missing frames: the nearest frame where they were seen)
    disp = xyz - seeds_xyz[None]
    filled = _fill_nearest(disp, valid)
    labels = kmeans(filled.transpose(1, 0, 2).reshape(len(seeds_xy), -1), n_bases, seed=seed)
    n_bases = int(labels.max()) + 1
    rots = np.tile(np.array([1, 0, 0, 0], np.float32), (n_bases, n_frames, 1))
    trans = np.zeros((n_bases, n_frames, 3), np.float32)
    for b in range(n_bases):
        have = np.zeros(n_frames, bool)
        R_all = np.tile(np.eye(3), (n_frames, 1, 1))
        for t in range(n_frames):
            sel = valid[t] & (labels == b)
            if sel.sum() >= 3:
                R_all[t], trans[b, t] = rigid_fit(seeds_xyz[sel], xyz[t, sel])
                have[t] = True
            elif sel.sum() >= 1:  # too few for a rotation: translate only
                trans[b, t] = (xyz[t, sel] - seeds_xyz[sel]).mean(0)
                have[t] = True
        have[canonical] = True  # the canonical frame is the identity by construction
        R_all[canonical], trans[b, canonical] = np.eye(3), 0
        idx = _nearest_index(have)
        R_all, trans[b] = R_all[idx], trans[b, idx]
        trans[b] = _smooth(trans[b])
        rots[b] = rotmat_to_quat(torch.as_tensor(R_all, dtype=torch.float32)).numpy()
    return rots, trans, labels


def _nearest_index(have: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest frame where `have` is True."""
    idx = np.nonzero(have)[0]
    return idx[np.abs(np.arange(len(have))[:, None] - idx[None]).argmin(1)]


def _fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (T,P,C): entries where valid (T,P) is False take the value of the nearest valid frame (0 if none)."""
    out = np.zeros_like(values)
    for p in range(values.shape[1]):
        if valid[:, p].any():
            out[:, p] = values[_nearest_index(valid[:, p]), p]
    return out


def _smooth(x: np.ndarray, radius: int = 1) -> np.ndarray:
    """Moving average over time (T,C) with edge padding: removes the frame-to-frame jitter of lifted tracks."""
    pad = np.pad(x, ((radius, radius), (0, 0)), mode="edge")
    return np.mean([pad[i:i + len(x)] for i in range(2 * radius + 1)], axis=0)


def dynamic_gaussians(scene: Scene, depth: DepthSource, opts: InitOptions, rng: np.random.Generator
                      ) -> tuple[GaussianSet, MotionBases, torch.Tensor, torch.Tensor]:
    """The dynamic set (in canonical poses), its bases, blend logits (N,B) and instance ids (N,)."""
    n_frames = scene.num_frames
    objects = [] if scene.instances is None else [int(k) for k in np.unique(np.asarray(scene.instances)) if k > 0]
    areas = {k: (np.asarray(scene.instances) == k).sum((1, 2)) for k in objects}
    total = sum(int(a.max()) for a in areas.values()) or 1
    sets, rot_list, trans_list, labels_list, ids = [], [], [], [], []
    focal = float(scene.cameras.K[:, 0, 0].mean())
    for k in objects:
        canonical = int(areas[k].argmax())
        mask = np.asarray(scene.instances[canonical]) == k
        xy = _grid_pixels(mask, max(32, opts.dynamic_points * int(areas[k].max()) // total), rng)
        z = _object_depth(depth, np.asarray(scene.instances[canonical]), canonical, k, xy)
        if z is None or len(xy) < 3:
            continue
        xyz = _lift(scene, canonical, xy, z)
        colors = np.asarray(scene.frames[canonical], np.float32)[xy[:, 1].astype(int), xy[:, 0].astype(int)] / 255
        stride = np.sqrt(mask.sum() / len(xy))
        pick = rng.choice(len(xy), min(len(xy), opts.tracks_per_object), replace=False)
        rots, trans, labels = _object_motion(scene, depth, k, canonical, xy[pick], xyz[pick],
                                             opts.bases_per_object, opts.seed + k)
        nearest = ((xy[:, None] - xy[pick][None]) ** 2).sum(-1).argmin(1)
        sets.append((xyz, colors, 0.5 * stride * z / focal))
        rot_list.append(rots)
        trans_list.append(trans)
        labels_list.append(labels[nearest])
        ids.append(np.full(len(xy), k))
    if not sets:
        empty_rot = torch.zeros(1, n_frames, 4)
        empty_rot[..., 0] = 1
        return (GaussianSet.empty(0), MotionBases(empty_rot, torch.zeros(1, n_frames, 3)), torch.zeros(0, 1),
                torch.zeros(0, dtype=torch.int32))
    offsets = np.cumsum([0] + [len(r) for r in rot_list])
    logits = np.full((sum(len(s[0]) for s in sets), offsets[-1]), -10.0, np.float32)
    row = 0
    for i, (s, lab) in enumerate(zip(sets, labels_list)):
        rows = np.arange(row, row + len(s[0]))
        logits[rows, offsets[i]:offsets[i + 1]] = 0.0  # the object's other bases stay reachable
        logits[rows, offsets[i] + lab] = 4.0
        row += len(s[0])
    gset = _gaussian_set(np.concatenate([s[0] for s in sets]), np.concatenate([s[1] for s in sets]),
                         np.concatenate([s[2] for s in sets]), opts.opacity, rng)
    bases = MotionBases(torch.as_tensor(np.concatenate(rot_list)), torch.as_tensor(np.concatenate(trans_list)))
    return gset, bases, torch.as_tensor(logits), torch.as_tensor(np.concatenate(ids), dtype=torch.int32)


def initialise(scene: Scene, opts: InitOptions | None = None) -> DynamicGaussians:
    """The scene's Gaussians before fitting (deterministic for a given opts.seed)."""
    opts = opts or InitOptions()
    rng = np.random.default_rng(opts.seed)
    depth = DepthSource(scene)
    static = static_gaussians(scene, depth, opts, rng)
    dynamic, bases, logits, ids = dynamic_gaussians(scene, depth, opts, rng)
    return DynamicGaussians(static, dynamic, bases, logits, ids)
