"""Checks around SfM: does the camera move at all, does it translate or only rotate, how good is a reconstruction,
and poses for the frames SfM did not register.

Camera motion is judged from background feature tracks (Lucas-Kanade on Shi-Tomasi corners, objects masked out)
before COLMAP runs, because COLMAP on a static or purely rotating camera fails or, worse, returns garbage:
- static: the background does not move (median track displacement below a pixel threshold);
- rotation: the background moves but one homography explains every pair of frames (no parallax left after it),
  which is what a camera turning about its centre produces. Rotations then come from those homographies.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from jaxtyping import Bool, Float, UInt8
from scipy.optimize import minimize_scalar
from scipy.spatial.transform import Rotation, Slerp

from models.sfm.align import camera_centers

# ---- pose interpolation ---------------------------------------------------------------------------------------

def interpolate_poses(w2c: Float[np.ndarray, "T 4 4"], known: Bool[np.ndarray, " T"],
                      times: Float[np.ndarray, " T"] | None = None) -> Float[np.ndarray, "T 4 4"]:
    """Fill the poses of frames where `known` is False from their known neighbours.

    Rotation: spherical linear interpolation (slerp) of the camera orientation; position: linear interpolation
    of the camera centre (interpolating centres, not w2c translations, keeps the camera on the straight line
    between its neighbours). Before the first / after the last known frame the nearest known pose is held.
    `times` (default: frame index) sets the interpolation weights, so uneven frame timing is respected.
    """
    w2c = np.asarray(w2c, np.float64)
    known = np.asarray(known, bool)
    if not known.any():
        raise ValueError("interpolate_poses needs at least one known pose")
    T = len(w2c)
    t = np.arange(T, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    out = w2c.copy()
    if known.all():
        return out
    tk = t[known]
    centers = camera_centers(w2c[known])
    c = np.stack([np.interp(t, tk, centers[:, i]) for i in range(3)], -1)  # np.interp holds the end values
    if known.sum() == 1:
        R = np.repeat(w2c[known][:, :3, :3], T, axis=0)
    else:
        slerp = Slerp(tk, Rotation.from_matrix(w2c[known][:, :3, :3]))
        R = slerp(np.clip(t, tk[0], tk[-1])).as_matrix()
    fill = ~known
    out[fill, :3, :3] = R[fill]
    out[fill, :3, 3] = -np.einsum("tij,tj->ti", R[fill], c[fill])
    out[fill, 3] = [0.0, 0.0, 0.0, 1.0]
    return out


# ---- camera motion before SfM -----------------------------------------------------------------------------------

@dataclass
class MotionCheck:
    """What the background tracks say about the camera (pixels at the analysed frame size)."""

    kind: str                  # static | rotation | translation | unknown (too few tracks to tell)
    max_motion_px: float       # median background displacement summed over successive sampled frames
    parallax_px: float         # 80th percentile distance from the best homography, median over frame pairs
    homography_inliers: float  # fraction of tracks a homography explains within 1 px, median over pairs
    num_tracks: int            # median number of good background tracks per pair

    def summary(self) -> dict:
        """JSON-ready (infinite values, i.e. not measurable, become None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else round(v, 3) if isinstance(v, float)
                    else v) for k, v in asdict(self).items()}


def _gray(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def _track(g0: np.ndarray, g1: np.ndarray, pts: np.ndarray, levels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """LK tracks of `pts` (N,1,2) from g0 to g1 that pass a forward-backward check (0.5 px): (N',2) each.

    `levels` pyramid levels reach motions of about 10 * 2^levels px; fewer levels keep coarse levels from being
    dominated by moving objects when only small motion is expected."""
    if len(pts) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    lk = dict(winSize=(21, 21), maxLevel=levels,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(g0, g1, pts, None, **lk)
    p0b, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, None, **lk)
    ok = (st1[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(pts - p0b, axis=-1)[:, 0] < 0.5)
    return pts[ok, 0], p1[ok, 0]


def _corners(gray: np.ndarray, mask: np.ndarray | None, n: int = 600) -> np.ndarray:
    m = None if mask is None else mask.astype(np.uint8) * 255
    spacing = max(4, min(gray.shape) // 40)
    pts = cv2.goodFeaturesToTrack(gray, n, 0.005, spacing, mask=m, blockSize=5)
    return np.zeros((0, 1, 2), np.float32) if pts is None else pts.astype(np.float32)


def _background_tracks(gray: np.ndarray, bg: np.ndarray | None, t0: int, t1: int, levels: int = 3
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Tracks from corners of frame t0 on background in both frames (objects move over the background: a
    corner they cover in t1 cannot be tracked) that land on background in frame t1. Positions in our pixel
    convention (centres at +0.5; OpenCV's are at integers), so homographies fit our intrinsics."""
    a, b = _track(gray[t0], gray[t1], _corners(gray[t0], None if bg is None else bg[t0] & bg[t1]), levels)
    if bg is not None and len(b):  # objects move into view: the target must be background too
        H, W = bg.shape[1:]
        col, row = np.rint(b).astype(int).T  # OpenCV positions: the nearest pixel centre
        keep = bg[t1, np.clip(row, 0, H - 1), np.clip(col, 0, W - 1)]
        a, b = a[keep], b[keep]
    return a + 0.5, b + 0.5


def check_camera_motion(frames: UInt8[np.ndarray, "T H W 3"], background: Bool[np.ndarray, "T H W"] | None,
                        static_px: float | None = None, min_homography_inliers: float = 0.9,
                        num_samples: int = 10, min_tracks: int = 20) -> MotionCheck:
    """Classify the camera motion of a clip from background tracks.

    static: the background's displacement, summed over successive sampled frames, stays below `static_px`
    (default 0.4% of the longer side, at least 1 px). rotation: the background moves, but one homography
    explains at least `min_homography_inliers` of the tracks between frames as far apart as tracking allows,
    i.e. no parallax, no translation. (A planar scene looks the same, so "rotation" is only used to explain or replace a failed
    SfM, never to overrule a good one.)
    """
    T, H, W = frames.shape[:3]
    gray = _gray(frames)
    bg = None if background is None else np.asarray(background, bool)
    static_px = static_px if static_px is not None else max(1.0, 0.004 * max(H, W))
    samples = np.unique(np.linspace(1, T - 1, min(num_samples, T - 1)).round().astype(int))

    # 1) background displacement between successive sampled frames, summed: an upper bound of how far the
    #    background drifts from frame 0 that, unlike comparing with frame 0 directly, survives objects moving
    #    over the background. A shallow pyramid: a static camera moves a few pixels at most (a track lost to
    #    larger motion only makes the clip look less static)
    motions, counts = [], []
    for t0, t1 in zip(np.concatenate([[0], samples[:-1]]), samples):
        a, b = _background_tracks(gray, bg, int(t0), int(t1), levels=1)
        counts.append(len(a))
        motions.append(float(np.median(np.linalg.norm(b - a, axis=1))) if len(a) >= min_tracks else np.inf)
    max_motion = float(np.sum(motions))

    # 2) parallax left after a homography, between frames as far apart as tracking holds (wider pairs show
    #    more parallax for a translating camera) but less than a tenth of the image apart
    residuals, inliers = [], []
    for t0 in np.unique(np.linspace(0, T - 2, min(num_samples, T - 1)).round().astype(int)):
        best = None
        for gap in (1, 2, 4, 8):
            if t0 + gap >= T:
                break
            a, b = _background_tracks(gray, bg, int(t0), int(t0 + gap))
            if len(a) < min_tracks:
                break
            best = (a, b)
            if np.median(np.linalg.norm(b - a, axis=1)) > 0.1 * max(H, W):
                break
        if best is None:
            continue
        a, b = best
        Hm, _ = cv2.findHomography(a, b, cv2.RANSAC, 1.0)
        if Hm is None:
            continue
        r = np.linalg.norm(cv2.perspectiveTransform(a[:, None], Hm)[:, 0] - b, axis=1)
        residuals.append(float(np.percentile(r, 80)))
        inliers.append(float((r < 1.0).mean()))
    parallax = float(np.median(residuals)) if residuals else float("inf")
    h_inliers = float(np.median(inliers)) if inliers else 0.0

    if np.isfinite(max_motion) and max_motion < static_px:
        kind = "static"
    elif not inliers:
        kind = "unknown"
    elif h_inliers >= min_homography_inliers:
        kind = "rotation"
    else:
        kind = "translation"
    return MotionCheck(kind, max_motion, parallax, h_inliers, int(np.median(counts)) if counts else 0)


def chain_homographies(frames: UInt8[np.ndarray, "T H W 3"], background: Bool[np.ndarray, "T H W"] | None,
                       min_tracks: int = 12) -> Float[np.ndarray, "T 3 3"] | None:
    """Homographies from frame 0 to every frame, chained through consecutive frames (background only).

    None when some pair of consecutive frames cannot be tracked (the chain would break).
    """
    gray = _gray(frames)
    bg = None if background is None else np.asarray(background, bool)
    chain = [np.eye(3)]
    for t in range(1, len(frames)):
        a, b = _background_tracks(gray, bg, t - 1, t)
        if len(a) < min_tracks:
            return None
        Hm, _ = cv2.findHomography(a, b, cv2.RANSAC, 1.0)
        if Hm is None:
            return None
        h = Hm @ chain[-1]
        chain.append(h / h[2, 2])
    return np.stack(chain)


# ---- rotation-only cameras -----------------------------------------------------------------------------------

def rotations_from_homographies(H0t: Float[np.ndarray, "T 3 3"], K: Float[np.ndarray, "3 3"]
                                ) -> Float[np.ndarray, "T 3 3"]:
    """World-to-camera rotations of a camera turning about its centre, world = camera 0.

    For a pure rotation, x_t ~ K R_t K^-1 x_0, so R_t is K^-1 H K projected onto SO(3) (nearest rotation).
    """
    M = np.linalg.inv(K) @ np.asarray(H0t, np.float64) @ K
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.zeros_like(M)
    D[:, 0, 0], D[:, 1, 1], D[:, 2, 2] = 1.0, 1.0, d
    return U @ D @ Vt


def focal_from_homographies(H0t: Float[np.ndarray, "T 3 3"], width: int, height: int,
                            min_rotation_deg: float = 4.0) -> float | None:
    """Focal length (px) that makes K^-1 H K closest to a rotation for every homography, or None when the camera
    turns too little for the focal length to be observable. Principal point assumed at the image centre."""
    H0t = np.asarray(H0t, np.float64)
    base = max(width, height)
    grid = base * np.exp(np.linspace(math.log(0.3), math.log(4.0), 200))

    def cost(f: float) -> float:
        K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
        M = np.linalg.inv(K) @ H0t @ K
        M = M / np.cbrt(np.linalg.det(M))[:, None, None]
        s = np.linalg.svd(M, compute_uv=False)
        return float(((s - 1.0) ** 2).sum())

    costs = np.array([cost(f) for f in grid])
    i = int(np.argmin(costs))
    if 0 < i < len(grid) - 1:  # refine between the grid neighbours
        f = float(minimize_scalar(cost, bounds=(grid[i - 1], grid[i + 1]), method="bounded",
                                  options={"xatol": 1e-4 * grid[i]}).x)
    else:
        f = float(grid[i])
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    angles = np.degrees(np.arccos(np.clip((np.trace(rotations_from_homographies(H0t, K), axis1=1, axis2=2) - 1) / 2,
                                          -1, 1)))
    if angles.max() < min_rotation_deg or i in (0, len(grid) - 1):
        return None
    return f


# ---- reconstruction quality -----------------------------------------------------------------------------------

def baseline_ratio(w2c: Float[np.ndarray, "T 4 4"], registered: Bool[np.ndarray, " T"],
                   median_depth: float) -> float:
    """Largest distance between registered camera centres over the median scene depth (0: no translation)."""
    c = camera_centers(np.asarray(w2c, np.float64)[np.asarray(registered, bool)])
    if len(c) < 2 or not median_depth > 0:
        return 0.0
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    return float(d.max() / median_depth)


def fov_focal(width: int, height: int, fov_deg: float) -> float:
    """Focal length in pixels for a field of view across the longer image side."""
    return 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
