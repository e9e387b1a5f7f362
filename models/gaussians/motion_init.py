"""Object motion from flow tracks: the one object-motion initialiser that DpDy and OSN share.

- Lifting: `DepthSource` gives every frame a dense z-depth (the depth stage's prediction with holes filled, or the
  sparse SfM depth interpolated); `lift_pixels` maps pixels with depth to world points; an object's own depth is
  that prediction, or without a dense one the nearest background just around it (`object_depth`).
- Tracks: flow chained from the frame where an object is largest, alive while they stay on its mask
  (`masked_tracks`).
- Poses: the object's rigid motion through the clip by PnP of its lifted canonical points onto their tracks,
  outward from the canonical frame, re-seeding tracks where too few survive (`track_object`, `pnp_frames`).
- `object_poses`: every segmented object's camera-from-object poses (up to one scale per object: the depth it
  was lifted at) and its tracks triangulated over them (alternating with PnP: its shape), or the reason they
  cannot be recovered (no flow, no depth, too few tracks, too few frames posed). OSN's object frames come from
  here when no per-object SfM ran.
- `object_motion`: DpDy's motion bases (clusters of tracks, each refined by PnP on its own tracks).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Float

from models.cameras import unproject
from models.depth import densify_sparse_depth
from models.gaussians.tracks import chain_tracks, kmeans
from models.scene import Scene

DENSE_DEPTH = 0.3  # a depth map covering at least this share of pixels is dense (a prediction), else sparse SfM

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


def lift_pixels(scene: Scene, t: int, xy: Float[np.ndarray, "P 2"], z: Float[np.ndarray, " P"]) -> np.ndarray:
    cam = scene.cameras[t]
    pts = unproject(torch.as_tensor(xy, dtype=torch.float32), torch.as_tensor(z, dtype=torch.float32),
                    cam.K[0], cam.w2c[0])
    return pts.numpy()


def grid_pixels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
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


def object_depth(depth: DepthSource, instances: np.ndarray, t: int, obj: int, xy: np.ndarray, factor: float = 1.0
                 ) -> np.ndarray | None:
    """z-depth of object pixels `xy` in frame t: the dense prediction there, else the nearest background just
    around the object (5th percentile of a ring of interpolated SfM depth; an object stands in front of what
    surrounds it: on our synthetic scenes this is 15% too far in the median, the 30th percentile 37%), times
    `factor` (an object placed at another scale)."""
    z = depth(t)
    if z is None:
        return None
    if depth.dense:
        return factor * z[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    mask = (instances == obj).astype(np.uint8)
    ring = (cv2.dilate(mask, np.ones((17, 17), np.uint8)) > 0) & (cv2.dilate(mask, np.ones((5, 5), np.uint8)) == 0)
    ring &= instances == 0
    values = z[ring] if ring.any() else z[z > 0]
    return np.full(len(xy), factor * (np.percentile(values, 5) if len(values) else 1.0), np.float32)


def object_motion(scene: Scene, depth: DepthSource, obj: int, canonical: int, seeds_xy: np.ndarray,
                  seeds_xyz: np.ndarray, n_bases: int, seed: int, factor: float = 1.0) -> tuple:
    """Rotation matrices (b,T,3,3), translations (b,T,3) of the object's bases, each seed's basis (P,), and the seeds' tracks
    (T,P,2) with their validity (T,P) (None without flow).

    With flow: the object's rigid motion by PnP on flow tracks through the whole clip (`track_object`), then each
    cluster of tracks (k-means on their 2D trajectories) refines it by PnP on its own tracks where it has enough.
    Without flow: every basis follows the lifted centroid of the object's mask."""
    n_frames = scene.num_frames
    R_obj = np.tile(np.eye(3), (n_frames, 1, 1))
    t_obj = np.zeros((n_frames, 3))
    if scene.flow_fw is None or len(seeds_xy) < 3:
        _centroid_motion(scene, depth, obj, canonical, t_obj, factor)
        return (np.tile(np.eye(3, dtype=np.float32), (1, n_frames, 1, 1)), t_obj[None].astype(np.float32),
                np.zeros(len(seeds_xy), np.int64), None, None)
    pos, ok = masked_tracks(scene, obj, canonical, seeds_xy)
    have = track_object(scene, depth, obj, canonical, seeds_xyz, pos, ok, R_obj, t_obj, factor=factor)
    idx = nearest_index(have)
    R_obj, t_obj = R_obj[idx], t_obj[idx]
    # clusters of tracks that move differently (parts of a non-rigid object)
    rel = pos - pos[canonical][None]
    feats = _fill_nearest(rel, ok).transpose(1, 0, 2).reshape(len(seeds_xy), -1)
    labels = kmeans(feats, n_bases, seed=seed)
    n_bases = int(labels.max()) + 1
    rots = np.zeros((n_bases, n_frames, 3, 3), np.float32)
    trans = np.zeros((n_bases, n_frames, 3), np.float32)
    for b in range(n_bases):
        R_b, t_b = R_obj.copy(), t_obj.copy()
        pnp_frames(scene, None, seeds_xyz[labels == b], pos[:, labels == b], ok[:, labels == b], R_b, t_b)
        trans[b] = _smooth(t_b)
        rots[b] = R_b
    return rots, trans, labels, pos, ok


def masked_tracks(scene: Scene, obj: int, start: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow tracks from frame `start`, valid only while they stay on the object's mask."""
    pos, ok = chain_tracks(scene.flow_fw, scene.flow_bw, scene.valid_fw, scene.valid_bw, start, xy)
    for t in range(scene.num_frames):
        ix = np.clip(pos[t].astype(int), 0, [scene.width - 1, scene.height - 1])
        ok[t] &= np.asarray(scene.instances[t])[ix[:, 1], ix[:, 0]] == obj
    return pos, ok


def _centroid_motion(scene: Scene, depth: DepthSource, obj: int, canonical: int, t_out: np.ndarray,
                     factor: float = 1.0) -> None:
    """Translation of the object's lifted mask centroid relative to the canonical frame (no flow)."""
    centre = {}
    for t in range(scene.num_frames):
        inst = np.asarray(scene.instances[t])
        ys, xs = np.nonzero(inst == obj)
        if len(xs) == 0:
            continue
        xy = np.array([[xs.mean() + 0.5, ys.mean() + 0.5]], np.float32)
        z = object_depth(depth, inst, t, obj, xy, factor)
        if z is not None:
            centre[t] = lift_pixels(scene, t, xy, z)[0]
    if canonical not in centre:
        return
    frames = np.array(sorted(centre))
    for t in range(scene.num_frames):
        near = frames[np.abs(frames - t).argmin()]
        t_out[t] = centre[near] - centre[canonical]


def track_object(scene: Scene, depth: DepthSource, obj: int, canonical: int, points: np.ndarray, pos: np.ndarray,
                 ok: np.ndarray, R_out: np.ndarray, t_out: np.ndarray, keep_fraction: float = 0.5, factor: float = 1.0
                 ) -> np.ndarray:
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
                xy = grid_pixels(inst == obj, len(points), rng)
                z = object_depth(depth, inst, prev, obj, xy, factor)
                if z is None or len(xy) < 6:
                    break
                world = lift_pixels(scene, prev, xy, z)
                pts = (world - t_out[prev]) @ R_out[prev]  # canonical = R^T (x - t)
                trk, val = masked_tracks(scene, obj, prev, xy)
                start_count = int(val[prev].sum())
            if pnp_frames(scene, prev, pts, trk, val, R_out, t_out, frames=[t])[t]:
                have[t] = True
                prev = t
            else:
                R_out[t], t_out[t] = R_out[prev], t_out[prev]
    return have


def pnp_frames(scene: Scene, guess_frame: int | None, points: np.ndarray, tracks: np.ndarray, valid: np.ndarray,
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


def nearest_index(have: np.ndarray) -> np.ndarray:
    """For each frame, the index of the nearest frame where `have` is True."""
    idx = np.nonzero(have)[0]
    return idx[np.abs(np.arange(len(have))[:, None] - idx[None]).argmin(1)]


def _fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (T,P,C): entries where valid (T,P) is False take the value of the nearest valid frame (0 if none)."""
    out = np.zeros_like(values)
    for p in range(values.shape[1]):
        if valid[:, p].any():
            out[:, p] = values[nearest_index(valid[:, p]), p]
    return out


def _smooth(x: np.ndarray, radius: int = 1) -> np.ndarray:
    """Moving average over time (T,C) with edge padding: removes the frame-to-frame jitter of lifted tracks."""
    pad = np.pad(x, ((radius, radius), (0, 0)), mode="edge")
    return np.mean([pad[i:i + len(x)] for i in range(2 * radius + 1)], axis=0)


# ---- every object's poses (OSN's object frames) ---------------------------------------------------------------

MIN_PIXELS = 16  # an object covering fewer pixels in a frame is not "visible" there
MIN_TRACKS = 6  # PnP needs this many points


@dataclass
class ObjectPoses:
    """One segmented object's camera-from-object poses, or why there are none.

    w2o (T,4,4): camera-from-object per frame, in world units at the depth the object was lifted at (its true
    scale is unknown: any s > 0 times the translations explains the video as well). The object frame is the
    world frame of its canonical frame (where it is largest), moved to the centroid of its lifted points. Frames
    where PnP failed or the object is not visible hold the nearest solved pose. solved (T,): frames posed by PnP.
    visible (T,): frames where it covers >= MIN_PIXELS pixels. points (P,3): its tracked points in the object
    frame, triangulated over the poses where the tracks see parallax (`refine_shape`: a shape, not a relief at the
    depth they were lifted at; `triangulated` of them). error_px: median reprojection error of the live tracks
    over the solved frames (a rigid object that PnP follows: under a pixel; a non-rigid one, more). reason: None,
    or one line saying why the poses cannot be recovered (w2o is then None). pixels (P,2): where each point's
    track starts, in the canonical frame."""

    id: int
    canonical: int
    w2o: Float[np.ndarray, "T 4 4"] | None
    solved: Bool[np.ndarray, " T"]
    visible: Bool[np.ndarray, " T"]
    points: Float[np.ndarray, "P 3"]
    error_px: float = float("nan")
    reason: str | None = None
    triangulated: int = 0
    pixels: Float[np.ndarray, "P 2"] | None = None


def object_poses(scene: Scene, depth: DepthSource, obj: int, n_tracks: int = 384, min_solved: float = 0.5,
                 seed: int = 0) -> ObjectPoses:
    """Object `obj`'s camera-from-object poses from flow tracks and PnP (see `ObjectPoses`). Unrecoverable when
    the scene has no flow or no depth to lift with, the object's largest view holds fewer than MIN_TRACKS
    tracks, or PnP poses fewer than `min_solved` of the frames where it is visible (tracks lost: too small,
    textureless, or no rigid motion explains them)."""
    inst = np.asarray(scene.instances)
    T = scene.num_frames
    areas = (inst == obj).reshape(T, -1).sum(1)
    visible = areas >= MIN_PIXELS
    with_depth = np.array([depth(t) is not None for t in range(T)]) if scene.flow_fw is not None else np.ones(T, bool)
    canonical = int(np.where(with_depth, areas, -1).argmax())  # its largest view among the frames with depth
    none = lambda why: ObjectPoses(obj, canonical, None, np.zeros(T, bool), visible, np.zeros((0, 3)),  # noqa: E731
                                   reason=why)
    if scene.flow_fw is None:
        return none("no optical flow to track it (run the flow stage)")
    if not visible.any():
        return none(f"it covers at most {int(areas.max())} pixels of a frame (too small to track)")
    if not (visible & with_depth).any():
        return none("no depth to lift its tracks in the frames where it is visible (neither the depth stage nor "
                    "SfM points there)")
    rng = np.random.default_rng(seed + obj)
    xy = grid_pixels(inst[canonical] == obj, n_tracks, rng)
    z = object_depth(depth, inst[canonical], canonical, obj, xy)
    if z is None:
        return none("no depth to lift its tracks (neither the depth stage nor SfM points)")
    if len(xy) < MIN_TRACKS:
        return none(f"too few tracks ({len(xy)} in its largest view; PnP needs {MIN_TRACKS})")
    pts = lift_pixels(scene, canonical, xy, z)
    pos, ok = masked_tracks(scene, obj, canonical, xy)
    R = np.tile(np.eye(3), (T, 1, 1))
    t = np.zeros((T, 3))
    have = track_object(scene, depth, obj, canonical, pts, pos, ok, R, t)
    n_vis, n_ok = int(visible.sum()), int((have & visible).sum())
    if n_ok < max(2, min_solved * n_vis):
        return none(f"PnP on its flow tracks posed {n_ok} of the {n_vis} frames where it is visible (tracks lost: "
                    "too small or textureless, or no rigid motion explains them)")
    idx = nearest_index(have)
    R, t = R[idx], t[idx]
    centre = pts.mean(0)
    M = np.tile(np.eye(4), (T, 1, 1))  # object frame -> world: x_world = R (x + centre) + t
    M[:, :3, :3] = R
    M[:, :3, 3] = (R @ centre) + t
    w2o = scene.cameras.w2c.double().numpy() @ M
    K = scene.cameras.K.double().numpy()
    w2o, shape, error, n_tri = refine_shape(w2o, K, pts - centre, pos, ok, have & visible, canonical)
    return ObjectPoses(obj, canonical, w2o, have, visible, shape, error, triangulated=n_tri, pixels=xy)


def reprojection_error(w2o: Float[np.ndarray, "T 4 4"], K: Float[np.ndarray, "T 3 3"], points: Float[np.ndarray, "P 3"],
                       tracks: Float[np.ndarray, "T P 2"], valid: Bool[np.ndarray, "T P"], frames: Bool[np.ndarray, " T"]
                       ) -> float:
    """Median pixel distance between the object-frame points projected by camera-from-object poses and their tracks
    (live observations of `frames`); inf without any."""
    errs = []
    for f in np.nonzero(frames)[0]:
        live = valid[f]
        if not live.any():
            continue
        proj = (points[live] @ w2o[f, :3, :3].T + w2o[f, :3, 3]) @ K[f].T
        errs.append(np.linalg.norm(proj[:, :2] / np.maximum(proj[:, 2:], 1e-9) - tracks[f, live], axis=1))
    return float(np.median(np.concatenate(errs))) if errs else float("inf")


def triangulate_tracks(w2o: Float[np.ndarray, "T 4 4"], K: Float[np.ndarray, "T 3 3"], tracks: Float[np.ndarray, "T P 2"],
                       valid: Bool[np.ndarray, "T P"], frames: Bool[np.ndarray, " T"], min_views: int = 3,
                       min_angle_deg: float = 1.0) -> tuple[Float[np.ndarray, "P 3"], Bool[np.ndarray, " P"]]:
    """Object-frame points from their tracks over camera-from-object poses (linear triangulation, DLT). A track
    counts when it is seen in `min_views` of `frames`, in front of every camera, and its rays span at least
    `min_angle_deg` (else its depth is not determined); returns the points and which ones count."""
    P = np.einsum("fij,fjk->fik", K, w2o[:, :3, :])
    centres = -np.einsum("fji,fj->fi", w2o[:, :3, :3], w2o[:, :3, 3])  # cameras in the object frame
    X = np.zeros((tracks.shape[1], 3))
    good = np.zeros(tracks.shape[1], bool)
    for p in range(tracks.shape[1]):
        fs = np.nonzero(valid[:, p] & frames)[0]
        if len(fs) < min_views:
            continue
        uv = tracks[fs, p].astype(np.float64)
        A = np.concatenate([uv[:, :1] * P[fs, 2] - P[fs, 0], uv[:, 1:] * P[fs, 2] - P[fs, 1]])
        h = np.linalg.svd(A)[2][-1]
        if abs(h[3]) < 1e-12:
            continue
        x = h[:3] / h[3]
        if ((w2o[fs, 2, :3] @ x + w2o[fs, 2, 3]) <= 0).any():
            continue
        rays = x - centres[fs]
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        if np.degrees(np.arccos(np.clip(rays @ rays.T, -1, 1))).max() < min_angle_deg:
            continue
        X[p], good[p] = x, True
    return X, good


def refine_shape(w2o: Float[np.ndarray, "T 4 4"], K: Float[np.ndarray, "T 3 3"], points: Float[np.ndarray, "P 3"],
                 tracks: Float[np.ndarray, "T P 2"], valid: Bool[np.ndarray, "T P"], frames: Bool[np.ndarray, " T"],
                 canonical: int, iters: int = 3) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Alternate triangulating the tracks over the poses and re-solving every pose by PnP on the triangulated points
    (a small bundle adjustment): the lifted relief becomes the object's shape where its tracks see parallax. The
    gauge stays: the points' median depth in the canonical view. A round is kept only while the reprojection error
    does not grow. Returns poses, points, the median reprojection error and the number of triangulated tracks."""
    err = reprojection_error(w2o, K, points, tracks, valid, frames)
    z0 = float(np.median(points @ w2o[canonical, 2, :3] + w2o[canonical, 2, 3]))
    n_tri = 0
    for _ in range(iters):
        X, good = triangulate_tracks(w2o, K, tracks, valid, frames)
        if good.sum() < 2 * MIN_TRACKS:
            break
        new = np.where(good[:, None], X, points)
        poses = w2o.copy()
        for f in np.nonzero(frames)[0]:
            live = valid[f]
            if live.sum() < MIN_TRACKS:
                continue
            r, tv = cv2.Rodrigues(w2o[f, :3, :3])[0], w2o[f, :3, 3:].copy()
            ok, r, tv = cv2.solvePnP(new[live], tracks[f, live].astype(np.float64), K[f], None, r, tv,
                                     useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
            if ok and np.all(np.isfinite(tv)):
                poses[f, :3, :3], poses[f, :3, 3] = cv2.Rodrigues(r)[0], tv[:, 0]
        z1 = float(np.median(new @ poses[canonical, 2, :3] + poses[canonical, 2, 3]))
        if not z1 > 0:
            break
        new, poses[:, :3, 3] = new * (z0 / z1), poses[:, :3, 3] * (z0 / z1)
        new_err = reprojection_error(poses, K, new, tracks, valid, frames)
        if not new_err <= err * 1.05:
            break
        w2o, points, err, n_tri = poses, new, new_err, int(good.sum())
    return w2o, points, err, n_tri
