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
from models.gaussians.coverage import fill_static_holes, seen_background
from models.gaussians.model import DynamicGaussians, GaussianSet, MotionBases, rotmat_to_quat
from models.gaussians.tracks import chain_tracks, kmeans
from models.scene import Scene
from models.splatting.project import quat_to_rotmat

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
    object_keyframes: int = 6
    """Frames (spread over those where an object is seen) whose object pixels are lifted."""
    opacity: float = 0.7
    """Initial opacity of every Gaussian."""
    fill_holes: bool = True
    """Also lift the background pixels of every other frame that the keyframes' Gaussians leave empty."""
    seed: int = 0


class DepthSource:
    """Per-frame dense z-depth in world units (H, W), made once per frame: the scene's dense depth with its holes
    filled, or its sparse SfM depth interpolated. A static or only turning camera without any depth sees no
    parallax, so nothing tells depths apart: every pixel is put on the plane through the scene centre (the input view is reproduced
    exactly). None for other scenes without depth (multi-view captures: random Gaussians then)."""

    def __init__(self, scene: Scene):
        self.depth = scene.depth
        sample = None if scene.depth is None else np.asarray(scene.depth[::max(1, scene.num_frames // 8)])
        self.dense = sample is not None and float((sample > 0).mean()) >= DENSE_DEPTH
        self.plane = None
        if (scene.static_camera or scene.no_parallax) and (sample is None or not (sample > 0).any()):
            cams = scene.cameras
            ahead = ((torch.as_tensor(scene.center, dtype=torch.float32) - cams.centers) * cams.w2c[:, 2, :3]).sum(-1)
            self.plane = ahead.clamp(min=1e-3).numpy()
            self.dense = True
            self.shape = (scene.height, scene.width)
        self._cache: dict[int, np.ndarray | None] = {}

    def __call__(self, t: int) -> np.ndarray | None:
        if self.plane is not None:
            return np.full(self.shape, self.plane[t], np.float32)
        if self.depth is None:
            return None
        if t not in self._cache:
            d = np.asarray(self.depth[t], np.float32)
            self._cache[t] = d if self.dense and (d > 0).all() else densify_sparse_depth(d)
        return self._cache[t]


def _lift(scene: Scene, t: int, xy: Float[np.ndarray, "P 2"], z: Float[np.ndarray, " P"]) -> np.ndarray:
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


def _lift_background(scene: Scene, depth: DepthSource, t: int, mask: np.ndarray, count: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """About `count` Gaussians (means, colours, scales) for the pixels `mask` (H,W) of frame t that have depth;
    None without depth. A Gaussian's size is half the pixel spacing at its depth."""
    z = depth(t)
    if z is None:
        return None
    mask = mask & (z > 0)
    xy = _grid_pixels(mask, count, rng)
    zs = z[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    stride = np.sqrt(mask.sum() / max(len(xy), 1))
    focal = float(scene.cameras.K[t, 0, 0])
    colors = np.asarray(scene.frames[t], np.float32)[xy[:, 1].astype(int), xy[:, 0].astype(int)] / 255
    return _lift(scene, t, xy, zs), colors, 0.5 * stride * zs / focal


def static_gaussians(scene: Scene, depth: DepthSource, opts: InitOptions, rng: np.random.Generator) -> GaussianSet:
    """Background pixels of the keyframes and the SfM points, then whatever background any other frame sees that
    these leave empty (`coverage.fill_static_holes`)."""
    means, colors, scales = [], [], []
    keyframes = np.unique(np.linspace(0, scene.num_frames - 1, max(1, opts.keyframes)).round().astype(int))
    per_pixel = opts.static_points / len(keyframes) / (scene.width * scene.height)
    for t in keyframes:
        bg = seen_background(scene, int(t))
        lifted = _lift_background(scene, depth, int(t), bg, round(per_pixel * bg.sum()), rng)
        if lifted is None:
            break
        for out, value in zip((means, colors, scales), lifted):
            out.append(value)
    if scene.points is not None and len(scene.points):
        pts = np.asarray(scene.points, np.float32)
        rgb = (np.asarray(scene.points_rgb, np.float32) / 255 if scene.points_rgb is not None
               else np.full_like(pts, 0.5))
        d = np.linalg.norm(pts - scene.center, axis=1)
        means.append(pts)
        colors.append(rgb)
        scales.append(np.full(len(pts), 0.01 * float(scene.radius)) if len(pts) < 4 else
                      np.maximum(_mean_neighbour_distance(pts), 1e-4 * (1 + d)))
    if not means:  # no depth, no points (e.g. a multi-view capture): random Gaussians in the scene sphere
        n = opts.static_points
        means.append(scene.center + _ball(rng, n) * scene.radius)
        colors.append(rng.uniform(0.2, 0.8, (n, 3)))
        scales.append(np.full(n, 0.02 * scene.radius))
        return _gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(scales), 0.1, rng)
    gset = _gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(scales), opts.opacity, rng)
    if not opts.fill_holes or depth(0) is None:
        return gset

    def lift_holes(t: int, empty: np.ndarray) -> GaussianSet | None:
        lifted = _lift_background(scene, depth, t, empty, max(1, round(per_pixel * empty.sum())), rng)
        return None if lifted is None or not len(lifted[0]) else _gaussian_set(*lifted, opts.opacity, rng)

    return fill_static_holes(gset, scene, lift_holes)


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
                   seeds_xyz: np.ndarray, n_bases: int, seed: int) -> tuple:
    """Rotations (b,T,4), translations (b,T,3) of the object's bases, each seed's basis (P,), and the seeds' tracks
    (T,P,2) with their validity (T,P) (None without flow).

    With flow: the object's rigid motion by PnP on flow tracks through the whole clip (`_track_object`), then each
    cluster of tracks (k-means on their 2D trajectories) refines it by PnP on its own tracks where it has enough.
    Without flow: every basis follows the lifted centroid of the object's mask."""
    n_frames = scene.num_frames
    R_obj = np.tile(np.eye(3), (n_frames, 1, 1))
    t_obj = np.zeros((n_frames, 3))
    if scene.flow_fw is None or len(seeds_xy) < 3:
        _centroid_motion(scene, depth, obj, canonical, seeds_xyz, t_obj)
        return (np.tile(np.array([1, 0, 0, 0], np.float32), (1, n_frames, 1)), t_obj[None].astype(np.float32),
                np.zeros(len(seeds_xy), np.int64), None, None)
    pos, ok = _masked_tracks(scene, obj, canonical, seeds_xy)
    have = _track_object(scene, depth, obj, canonical, seeds_xyz, pos, ok, R_obj, t_obj)
    idx = _nearest_index(have)
    R_obj, t_obj = R_obj[idx], t_obj[idx]
    # clusters of tracks that move differently (parts of a non-rigid object)
    rel = pos - pos[canonical][None]
    feats = _fill_nearest(rel, ok).transpose(1, 0, 2).reshape(len(seeds_xy), -1)
    labels = kmeans(feats, n_bases, seed=seed)
    n_bases = int(labels.max()) + 1
    rots = np.zeros((n_bases, n_frames, 4), np.float32)
    trans = np.zeros((n_bases, n_frames, 3), np.float32)
    for b in range(n_bases):
        R_b, t_b = R_obj.copy(), t_obj.copy()
        _pnp_frames(scene, None, seeds_xyz[labels == b], pos[:, labels == b], ok[:, labels == b], R_b, t_b)
        trans[b] = _smooth(t_b)
        rots[b] = rotmat_to_quat(torch.as_tensor(R_b, dtype=torch.float32)).numpy()
    return rots, trans, labels, pos, ok


def _masked_tracks(scene: Scene, obj: int, start: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow tracks from frame `start`, valid only while they stay on the object's mask."""
    pos, ok = chain_tracks(scene.flow_fw, scene.flow_bw, scene.valid_fw, scene.valid_bw, start, xy)
    for t in range(scene.num_frames):
        ix = np.clip(pos[t].astype(int), 0, [scene.width - 1, scene.height - 1])
        ok[t] &= np.asarray(scene.instances[t])[ix[:, 1], ix[:, 0]] == obj
    return pos, ok


def _centroid_motion(scene: Scene, depth: DepthSource, obj: int, canonical: int, seeds_xyz: np.ndarray,
                     t_out: np.ndarray) -> None:
    """Translation of the object's lifted mask centroid relative to the canonical frame (no flow)."""
    centre = {}
    for t in range(scene.num_frames):
        inst = np.asarray(scene.instances[t])
        ys, xs = np.nonzero(inst == obj)
        if len(xs) == 0:
            continue
        xy = np.array([[xs.mean() + 0.5, ys.mean() + 0.5]], np.float32)
        z = _object_depth(depth, inst, t, obj, xy)
        if z is not None:
            centre[t] = _lift(scene, t, xy, z)[0]
    if canonical not in centre:
        return
    frames = np.array(sorted(centre))
    for t in range(scene.num_frames):
        near = frames[np.abs(frames - t).argmin()]
        t_out[t] = centre[near] - centre[canonical]


def _track_object(scene: Scene, depth: DepthSource, obj: int, canonical: int, points: np.ndarray, pos: np.ndarray,
                  ok: np.ndarray, R_out: np.ndarray, t_out: np.ndarray, keep_fraction: float = 0.5) -> np.ndarray:
    """The object's rigid motion through the clip by PnP, outward from the canonical frame. When fewer than
    `keep_fraction` of the tracks survive (faces turn away, occlusions), new tracks start from the object's mask in
    the last solved frame, their canonical positions lifted there and mapped back through that frame's pose.
    Returns the frames solved (T,) bool."""
    n_frames = scene.num_frames
    have = np.zeros(n_frames, bool)
    have[canonical] = True
    rng = np.random.default_rng(obj)
    for step in (1, -1):
        pts, trk, val = points, pos, ok
        start_count = int(val[canonical].sum())
        prev = canonical
        for t in range(canonical + step, n_frames if step == 1 else -1, step):
            if val[t].sum() < keep_fraction * start_count:  # re-seed from the last solved frame
                inst = np.asarray(scene.instances[prev])
                xy = _grid_pixels(inst == obj, len(points), rng)
                z = _object_depth(depth, inst, prev, obj, xy)
                if z is None or len(xy) < 6:
                    break
                world = _lift(scene, prev, xy, z)
                pts = (world - t_out[prev]) @ R_out[prev]  # canonical = R^T (x - t)
                trk, val = _masked_tracks(scene, obj, prev, xy)
                start_count = int(val[prev].sum())
            if _pnp_frames(scene, prev, pts, trk, val, R_out, t_out, frames=[t])[t]:
                have[t] = True
                prev = t
            else:
                R_out[t], t_out[t] = R_out[prev], t_out[prev]
    return have


def _pnp_frames(scene: Scene, guess_frame: int | None, points: np.ndarray, tracks: np.ndarray, valid: np.ndarray,
                R_out: np.ndarray, t_out: np.ndarray, frames: list[int] | None = None, min_points: int = 6
                ) -> np.ndarray:
    """Solve the world motion (R_out[t], t_out[t]: x_t = R x_canonical + t) of a rigid group at `frames` (default:
    all) by PnP: canonical points `points` (P,3) must project onto their tracks (T,P,2) in camera t. Each solve
    starts from the motion at `guess_frame` (or at the neighbouring frame already solved). The worst tenth of the
    tracks (flow drift, mask slop) is dropped and the pose solved again. guess_frame None: start from the motion
    already in R_out[t], t_out[t]. Returns the frames solved (T,) bool."""
    n_frames = len(tracks)
    solved = np.zeros(n_frames, bool)
    w2c = scene.cameras.w2c.double().numpy()
    K = scene.cameras.K.double().numpy()
    frames = list(range(n_frames)) if frames is None else frames
    for t in frames:
        sel = valid[t]
        if sel.sum() < min_points:
            continue
        g = t if guess_frame is None else (t - 1 if t - 1 >= 0 and solved[t - 1] else guess_frame)
        R_cam0 = w2c[t, :3, :3] @ R_out[g]  # the guess: motion at g seen from camera t
        t_cam0 = w2c[t, :3, :3] @ t_out[g] + w2c[t, :3, 3]
        obj, img = points[sel].astype(np.float64), tracks[t, sel].astype(np.float64)
        r, tv = cv2.Rodrigues(R_cam0)[0], t_cam0[:, None].copy()
        good = np.ones(len(obj), bool)
        for _ in range(2):
            if good.sum() < min_points:
                break
            res, r, tv = cv2.solvePnP(obj[good], img[good], K[t], None, r, tv, useExtrinsicGuess=True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
            if not res or not np.all(np.isfinite(tv)):
                break
            err = np.linalg.norm(cv2.projectPoints(obj, r, tv, K[t], None)[0][:, 0] - img, axis=1)
            good = err <= np.percentile(err, 90)
        else:
            R_wc = w2c[t, :3, :3].T
            R_out[t] = R_wc @ cv2.Rodrigues(r)[0]
            t_out[t] = R_wc @ (tv[:, 0] - w2c[t, :3, 3])
            solved[t] = True
    return solved


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
                      ) -> tuple[GaussianSet, MotionBases, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dynamic set (in canonical poses), its bases, blend logits (N,B), instance ids (N,), time centres (N,) and
    log time scales (N,).

    Each object's pixels are lifted at a few keyframes over the frames where it is seen (its canonical frame, where
    it is largest, among them), mapped back to the canonical frame through their basis' motion, and given a
    temporal opacity centred on their keyframe: faces that only some frames see are represented, and every frame
    is explained by Gaussians lifted near it."""
    n_frames = scene.num_frames
    times = scene.times.numpy()
    objects = [] if scene.instances is None else [int(k) for k in np.unique(np.asarray(scene.instances)) if k > 0]
    areas = {k: (np.asarray(scene.instances) == k).sum((1, 2)) for k in objects}
    total = sum(int(a.max()) for a in areas.values()) or 1
    parts, rot_list, trans_list = [], [], []
    focal = float(scene.cameras.K[:, 0, 0].mean())
    for k in objects:
        canonical = int(areas[k].argmax())
        inst_c = np.asarray(scene.instances[canonical])
        xy = _grid_pixels(inst_c == k, max(32, opts.tracks_per_object), rng)
        z = _object_depth(depth, inst_c, canonical, k, xy)
        if z is None or len(xy) < 3:
            continue
        rots, trans, labels, pos, ok = _object_motion(scene, depth, k, canonical, xy, _lift(scene, canonical, xy, z),
                                                      opts.bases_per_object, opts.seed + k)
        seen = np.nonzero(areas[k] > 0)[0]
        keys = np.unique(np.r_[np.linspace(seen[0], seen[-1], max(1, opts.object_keyframes)).round(), canonical]
                         ).astype(int)
        spacing = max(float(np.ptp(times[seen])) / max(len(keys) - 1, 1), float(times[1] - times[0]) if n_frames > 1
                      else 1.0)
        budget = max(32, opts.dynamic_points * int(areas[k].max()) // total) // len(keys)
        R = quat_to_rotmat(torch.as_tensor(rots)).numpy()  # (b,T,3,3)
        for key in keys:
            inst = np.asarray(scene.instances[key])
            kxy = _grid_pixels(inst == k, budget, rng)
            kz = _object_depth(depth, inst, key, k, kxy)
            if kz is None or len(kxy) < 3:
                continue
            world = _lift(scene, key, kxy, kz)
            if pos is not None and ok[key].any():  # the basis of the nearest live track there
                live = np.nonzero(ok[key])[0]
                lab = labels[live[((kxy[:, None] - pos[key, live][None]) ** 2).sum(-1).argmin(1)]]
            else:
                lab = np.full(len(kxy), np.bincount(labels).argmax())
            canon = np.einsum("nji,nj->ni", R[lab, key], world - trans[lab, key])  # R^T (x - t)
            colors = np.asarray(scene.frames[key], np.float32)[kxy[:, 1].astype(int), kxy[:, 0].astype(int)] / 255
            stride = np.sqrt((inst == k).sum() / len(kxy))
            parts.append(dict(means=canon, colors=colors, scales=0.5 * stride * kz / focal, label=lab,
                              obj=len(rot_list), id=k, center=times[key], sigma=spacing))
        rot_list.append(rots)
        trans_list.append(trans)
    if not parts and scene.instances is None:
        return free_dynamic_gaussians(scene, opts, rng)
    if not parts:
        empty_rot = torch.zeros(1, n_frames, 4)
        empty_rot[..., 0] = 1
        return (GaussianSet.empty(0), MotionBases(empty_rot, torch.zeros(1, n_frames, 3)), torch.zeros(0, 1),
                torch.zeros(0, dtype=torch.int32), torch.zeros(0), torch.zeros(0))
    offsets = np.cumsum([0] + [len(r) for r in rot_list])
    logits = np.full((sum(len(p["means"]) for p in parts), offsets[-1]), -10.0, np.float32)
    row = 0
    for p in parts:
        rows = np.arange(row, row + len(p["means"]))
        logits[rows, offsets[p["obj"]]:offsets[p["obj"] + 1]] = 0.0  # the object's other bases stay reachable
        logits[rows, offsets[p["obj"]] + p["label"]] = 4.0
        row += len(p["means"])
    cat = lambda key: np.concatenate([np.broadcast_to(p[key], (len(p["means"]),) + np.shape(p[key])[1:])
                                      if np.ndim(p[key]) == 0 else p[key] for p in parts])
    gset = _gaussian_set(cat("means"), cat("colors"), cat("scales"), opts.opacity, rng)
    bases = MotionBases(torch.as_tensor(np.concatenate(rot_list)), torch.as_tensor(np.concatenate(trans_list)))
    return (gset, bases, torch.as_tensor(logits), torch.as_tensor(cat("id"), dtype=torch.int32),
            torch.as_tensor(cat("center"), dtype=torch.float32),
            torch.as_tensor(np.log(cat("sigma")), dtype=torch.float32))


def free_dynamic_gaussians(scene: Scene, opts: InitOptions, rng: np.random.Generator
                           ) -> tuple[GaussianSet, MotionBases, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Without segmentation nothing says what moves: random dynamic Gaussians in the scene sphere on 2 x
    bases_per_object global bases that start still, with random blend weights (Shape of Motion without its
    track-based init); photometric losses over the frames find the motion (multi-view captures such as D-NeRF)."""
    n, b, t = max(opts.dynamic_points, 1), 2 * opts.bases_per_object, scene.num_frames
    means = scene.center + _ball(rng, n) * scene.radius
    gset = _gaussian_set(means, rng.uniform(0.2, 0.8, (n, 3)), np.full(n, 0.02 * scene.radius), 0.1, rng)
    rot = torch.zeros(b, t, 4)
    rot[..., 0] = 1
    logits = torch.as_tensor(rng.normal(0, 1, (n, b)), dtype=torch.float32)
    return (gset, MotionBases(rot, torch.zeros(b, t, 3)), logits, torch.ones(n, dtype=torch.int32),
            torch.full((n,), 0.5), torch.full((n,), 3.0))


def _ball(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points uniform in the unit ball."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return dirs * rng.uniform(0, 1, (n, 1)) ** (1 / 3)


def initialise(scene: Scene, opts: InitOptions | None = None) -> DynamicGaussians:
    """The scene's Gaussians before fitting (deterministic for a given opts.seed)."""
    opts = opts or InitOptions()
    rng = np.random.default_rng(opts.seed)
    depth = DepthSource(scene)
    static = static_gaussians(scene, depth, opts, rng)
    dynamic, bases, logits, ids, centers, log_scales = dynamic_gaussians(scene, depth, opts, rng)
    return DynamicGaussians(static, dynamic, bases, logits, ids, centers, log_scales)
