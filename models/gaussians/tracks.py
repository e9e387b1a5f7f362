"""2D point tracks chained through optical flow, and k-means for grouping them (motion-basis initialisation).

Flow convention (models/scene.py): flow_fw[i] maps frame i -> i+1, flow_bw[i] maps frame i+1 -> i, in pixels;
valid_* mark forward-backward consistent pixels. Pixel positions (x, y) have pixel centres at +0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float


def _bilinear(field: np.ndarray, xy: Float[np.ndarray, "P 2"]) -> np.ndarray:
    """Sample an (H, W[, C]) array at pixel positions (x, y) (centres at +0.5), clamped at the borders."""
    h, w = field.shape[:2]
    x = np.clip(xy[:, 0] - 0.5, 0, w - 1)
    y = np.clip(xy[:, 1] - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = x - x0, y - y0
    if field.ndim == 3:
        ax, ay = ax[:, None], ay[:, None]
    f = np.asarray(field, np.float32)
    return ((1 - ay) * ((1 - ax) * f[y0, x0] + ax * f[y0, x1]) + ay * ((1 - ax) * f[y1, x0] + ax * f[y1, x1]))


def chain_tracks(flow_fw: np.ndarray, flow_bw: np.ndarray, valid_fw: np.ndarray | None,
                 valid_bw: np.ndarray | None, start: int, xy: Float[np.ndarray, "P 2"]
                 ) -> tuple[Float[np.ndarray, "T P 2"], Bool[np.ndarray, "T P"]]:
    """Follow points from frame `start` to every frame by chaining the flow step by step.

    A track ends (valid False from there on) where the flow is inconsistent or the point leaves the image."""
    n_frames = flow_fw.shape[0] + 1
    h, w = flow_fw.shape[1:3]
    pos = np.zeros((n_frames, len(xy), 2), np.float32)
    ok = np.zeros((n_frames, len(xy)), bool)
    pos[start], ok[start] = xy, True
    for direction, flows, valids in ((1, flow_fw, valid_fw), (-1, flow_bw, valid_bw)):
        cur, alive = xy.astype(np.float32).copy(), np.ones(len(xy), bool)
        t = start
        while 0 <= t + direction < n_frames and alive.any():
            i = t if direction == 1 else t - 1  # index of the flow between t and t + direction
            step = _bilinear(flows[i], cur)
            if valids is not None:
                alive &= _bilinear(valids[i].astype(np.float32), cur) > 0.5
            cur = cur + step
            alive &= (cur[:, 0] >= 0) & (cur[:, 0] < w) & (cur[:, 1] >= 0) & (cur[:, 1] < h)
            t += direction
            pos[t], ok[t] = cur, alive
    return pos, ok


def kmeans(x: Float[np.ndarray, "P D"], k: int, seed: int = 0, iters: int = 20) -> np.ndarray:
    """Cluster labels (P,) of plain k-means with k-means++ seeding."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centers = np.asarray(centers)
    labels = np.zeros(len(x), np.int64)
    for _ in range(iters):
        labels = ((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            if (labels == j).any():
                centers[j] = x[labels == j].mean(0)
    return labels


@dataclass
class WindowTracks:
    """Sparse long-range 2D tracks: for every frame t, P query pixels `query` (T,P,2) and where each is at frames
    t-W..t+W, `pos` (T,2W+1,P,2), with `ok` (T,2W+1,P) (False where the chain broke: occlusion, inconsistent flow,
    leaving the image, or beyond the clip). Offset k lives at index k + W."""

    query: Float[np.ndarray, "T P 2"]
    pos: Float[np.ndarray, "T K P 2"]
    ok: Bool[np.ndarray, "T K P"]
    window: int


def window_tracks(flow_fw: np.ndarray, flow_bw: np.ndarray, valid_fw: np.ndarray | None, valid_bw: np.ndarray | None,
                  moving: np.ndarray | None, points: int, window: int, seed: int = 0,
                  moving_share: float = 0.75) -> WindowTracks:
    """Chain `points` query pixels of every frame through the flow to the frames within `window` of it. Moving
    pixels (`moving` (T,H,W) bool, if given) get `moving_share` of the queries: their motion is what the tracks
    are for; the rest go to the background, whose tracks fix the static depth through the camera's motion."""
    rng = np.random.default_rng(seed)
    n_frames, h, w = flow_fw.shape[0] + 1, flow_fw.shape[1], flow_fw.shape[2]
    k = 2 * window + 1
    query = np.zeros((n_frames, points, 2), np.float32)
    pos = np.zeros((n_frames, k, points, 2), np.float32)
    ok = np.zeros((n_frames, k, points), bool)
    for t in range(n_frames):
        query[t] = _query_pixels(None if moving is None else np.asarray(moving[t]), points, h, w, moving_share, rng)
        lo, hi = max(0, t - window), min(n_frames, t + window + 1)
        p, o = chain_tracks(flow_fw[lo:hi - 1], flow_bw[lo:hi - 1],
                            None if valid_fw is None else valid_fw[lo:hi - 1],
                            None if valid_bw is None else valid_bw[lo:hi - 1], t - lo, query[t])
        pos[t, lo - t + window:hi - t + window], ok[t, lo - t + window:hi - t + window] = p, o
    return WindowTracks(query, pos, ok, window)


def _query_pixels(moving: np.ndarray | None, points: int, h: int, w: int, moving_share: float,
                  rng: np.random.Generator) -> np.ndarray:
    """`points` pixel centres (x, y): `moving_share` of them drawn from the moving pixels (when there are any),
    the rest from the others."""
    if moving is None or not moving.any():
        masks, counts = [np.ones((h, w), bool)], [points]
    else:
        n_moving = min(int(round(points * moving_share)), points)
        masks, counts = [moving, ~moving], [n_moving, points - n_moving]
    out = []
    for mask, count in zip(masks, counts):
        ys, xs = np.nonzero(mask)
        if not len(xs):
            ys, xs = np.nonzero(np.ones((h, w), bool))
        pick = rng.integers(len(xs), size=count)
        out.append(np.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1))
    return np.concatenate(out).astype(np.float32)
