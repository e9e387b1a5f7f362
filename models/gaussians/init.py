"""Initialise a `DynamicGaussians` from a preprocessed `Scene`, with no pretrained weight.

- Static Gaussians: background pixels (instance 0) of a few keyframes lifted with depth (the depth stage's dense
  depth, or the sparse SfM depth interpolated over the image: a room's walls and floor are planes, so linear
  interpolation between SfM points is already close), plus the SfM points with their colours.
- Dynamic Gaussians: the pixels of each segmented object in the frame where it is largest (its canonical frame),
  lifted with depth. Without dense depth an object's depth is that of the background just around it (an object
  stands in front of what surrounds it; the fit refines it).
- Motion (models/gaussians/motion_init.py, shared with OSN): the object's rigid motion by PnP on flow tracks, then
  clusters of tracks (k-means on their 2D trajectories) each refined by PnP on its own tracks: one motion basis
  per cluster. A dynamic Gaussian starts on the basis of its nearest track.
- Object scales: `InitOptions.object_scales` places an object at a given median depth (e.g. one of OSN's valid
  scales): its lifted depths are multiplied so that their median in its largest view is that depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.gaussians.coverage import fill_static_holes, seen_background
from models.gaussians.model import DynamicGaussians, GaussianSet, MotionBases
from models.gaussians.motion_init import (
    DepthSource,
    grid_pixels,
    lift_pixels,
    object_depth,
    object_motion,
)
from models.scene import Scene


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
    object_scales: dict[int, float] = field(default_factory=dict)
    """Instance id -> the median z-depth (world units) to place that object at (e.g. an OSN scale); others keep
    the depth they are lifted at."""


def gaussian_set(means: np.ndarray, colors: np.ndarray, scales: np.ndarray, opacity: float,
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


def _lift_background(scene: Scene, depth: DepthSource, t: int, mask: np.ndarray, count: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """About `count` Gaussians (means, colours, scales) for the pixels `mask` (H,W) of frame t that have depth;
    None without depth. A Gaussian's size is half the pixel spacing at its depth."""
    z = depth(t)
    if z is None:
        return None
    mask = mask & (z > 0)
    xy = grid_pixels(mask, count, rng)
    zs = z[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    stride = np.sqrt(mask.sum() / max(len(xy), 1))
    focal = float(scene.cameras.K[t, 0, 0])
    colors = np.asarray(scene.frames[t], np.float32)[xy[:, 1].astype(int), xy[:, 0].astype(int)] / 255
    return lift_pixels(scene, t, xy, zs), colors, 0.5 * stride * zs / focal


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
        return gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(scales), 0.1, rng)
    gset = gaussian_set(np.concatenate(means), np.concatenate(colors), np.concatenate(scales), opts.opacity, rng)
    if not opts.fill_holes or depth(0) is None:
        return gset

    def lift_holes(t: int, empty: np.ndarray) -> GaussianSet | None:
        lifted = _lift_background(scene, depth, t, empty, max(1, round(per_pixel * empty.sum())), rng)
        return None if lifted is None else gaussian_set(*lifted, opts.opacity, rng)  # an empty set is skipped

    return fill_static_holes(gset, scene, lift_holes)


def _mean_neighbour_distance(pts: np.ndarray, k: int = 3) -> np.ndarray:
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(pts).query(pts, k=k + 1)
    return dist[:, 1:].mean(1)


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
        xy = grid_pixels(inst_c == k, max(32, opts.tracks_per_object), rng)
        z = object_depth(depth, inst_c, canonical, k, xy)
        if z is None or len(xy) < 3:
            continue
        factor = 1.0
        if k in opts.object_scales:  # placed at a given median depth (e.g. an OSN scale)
            factor = float(opts.object_scales[k]) / max(float(np.median(z)), 1e-9)
            z = z * factor
        rots, trans, labels, pos, ok = object_motion(scene, depth, k, canonical, xy, lift_pixels(scene, canonical, xy, z),
                                                     opts.bases_per_object, opts.seed + k, factor)
        seen = np.nonzero(areas[k] > 0)[0]
        keys = np.unique(np.r_[np.linspace(seen[0], seen[-1], max(1, opts.object_keyframes)).round(), canonical]
                         ).astype(int)
        spacing = max(float(np.ptp(times[seen])) / max(len(keys) - 1, 1), float(times[1] - times[0]) if n_frames > 1
                      else 1.0)
        budget = max(32, opts.dynamic_points * int(areas[k].max()) // total) // len(keys)
        for key in keys:
            inst = np.asarray(scene.instances[key])
            kxy = grid_pixels(inst == k, budget, rng)
            kz = object_depth(depth, inst, key, k, kxy, factor)
            if kz is None or len(kxy) < 3:
                continue
            world = lift_pixels(scene, key, kxy, kz)
            if pos is not None and ok[key].any():  # the basis of the nearest live track there
                live = np.nonzero(ok[key])[0]
                lab = labels[live[((kxy[:, None] - pos[key, live][None]) ** 2).sum(-1).argmin(1)]]
            else:
                lab = np.full(len(kxy), np.bincount(labels).argmax())
            canon = np.einsum("nji,nj->ni", rots[lab, key], world - trans[lab, key])  # R^T (x - t)
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
    gset = gaussian_set(cat("means"), cat("colors"), cat("scales"), opts.opacity, rng)
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
    gset = gaussian_set(means, rng.uniform(0.2, 0.8, (n, 3)), np.full(n, 0.02 * scene.radius), 0.1, rng)
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
