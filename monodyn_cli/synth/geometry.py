"""Closed-form geometry of the scene primitives (sphere, box, cylinder) in float64 numpy: rotations, how far a
rotated primitive reaches down, signed distances and surface samples (for contact and interpenetration checks)."""

from __future__ import annotations

import numpy as np


def rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rodrigues: (...,3) unit axes and (...) angles in radians -> (...,3,3)."""
    axis = np.broadcast_to(axis, np.shape(angle) + (3,))
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    c, s = np.cos(angle), np.sin(angle)
    C = 1 - c
    return np.stack([np.stack([c + x * x * C, x * y * C - z * s, x * z * C + y * s], -1),
                     np.stack([y * x * C + z * s, c + y * y * C, y * z * C - x * s], -1),
                     np.stack([z * x * C - y * s, z * y * C + x * s, c + z * z * C], -1)], -2)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def lowest_point_offset(shape: str, size: tuple[float, ...], R: np.ndarray) -> np.ndarray:
    """How far below its centre an object with rotation(s) R (...,3,3) reaches (exact)."""
    if shape == "sphere":
        return np.full(R.shape[:-2], size[0])
    if shape == "box":
        return np.abs(R[..., 2, :]) @ np.asarray(size)
    r, h = size
    cz = np.abs(R[..., 2, 2])
    return cz * h + r * np.sqrt(np.clip(1 - cz ** 2, 0, None))


def signed_distance(shape: str, size: tuple[float, ...], p: np.ndarray) -> np.ndarray:
    """Signed distance (local units; < 0 inside) of local points (...,3) to the shape."""
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) - size[0]
    if shape == "box":
        q = np.abs(p) - np.asarray(size)
    else:
        r, h = size
        q = np.stack([np.linalg.norm(p[..., :2], axis=-1) - r, np.abs(p[..., 2]) - h], -1)
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def surface_samples(shape: str, size: tuple[float, ...], n: int = 768) -> np.ndarray:
    """Deterministic points (M,3) on the shape's surface (local frame), including box corners / edges and
    cylinder rims, where interpenetration starts."""
    rng = np.random.default_rng(12345)
    if shape == "sphere":
        return unit(rng.normal(size=(n, 3))) * size[0]
    if shape == "box":
        h = np.asarray(size)
        areas = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]])
        axis = rng.choice(3, size=n, p=areas / areas.sum())
        pts = rng.uniform(-1, 1, size=(n, 3))
        pts[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
        corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
        u = np.linspace(-1, 1, 9)
        edges = [np.stack([u, np.full(9, a), np.full(9, b)], -1)[:, np.roll([0, 1, 2], i)]
                 for i in range(3) for a in (-1, 1) for b in (-1, 1)]
        return np.concatenate([pts, corners, *edges]) * h
    r, h = size
    ang = rng.uniform(0, 2 * np.pi, n)
    side = np.stack([r * np.cos(ang), r * np.sin(ang), rng.uniform(-h, h, n)], -1)
    rad = r * np.sqrt(rng.uniform(0, 1, n // 2))
    ang2 = rng.uniform(0, 2 * np.pi, n // 2)
    caps = np.stack([rad * np.cos(ang2), rad * np.sin(ang2), rng.choice([-h, h], n // 2)], -1)
    a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    rims = [np.stack([r * np.cos(a), r * np.sin(a), np.full(32, z)], -1) for z in (-h, h)]
    return np.concatenate([side, caps, *rims])
