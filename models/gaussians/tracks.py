"""2D point tracks chained through optical flow, and k-means for grouping them (motion-basis initialisation).

Flow convention (models/scene.py): flow_fw[i] maps frame i -> i+1, flow_bw[i] maps frame i+1 -> i, in pixels;
valid_* mark forward-backward consistent pixels. Pixel positions (x, y) have pixel centres at +0.5.
"""

from __future__ import annotations

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
