"""A `Scene` for OSN straight from ground truth (synthetic scenes): no segmentation or SfM needed.

What per-object SfM would give is computed exactly from the ground-truth object poses: each object's frame is
its local frame in units of its median depth (as the SfM stage normalises: origin at the object's centre, median
depth 1), `object_cameras[id].w2c` = camera-from-object (rigid, in those units), `object_depth[id]` = the
object's z-depth in those units. The background is the world of the cameras.

The OSN scale that reproduces the ground-truth scene is then g_k * unit_k for object k, with g_k (returned) the
world units per object unit and unit_k = `ObjectSet.unit[k]` (1 here, since the object depth is given); a scale
variant that scales object k by sigma about the camera has OSN scale sigma * g_k.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from models.cameras import Cameras
from models.scene import Scene


def scene_from_ground_truth(rgb: np.ndarray, instances: np.ndarray, depth: np.ndarray, cameras: Cameras,
                            object_to_world: Float[np.ndarray, "K T 4 4"], aabb: list | None = None,
                            times: np.ndarray | None = None) -> tuple[Scene, list[float]]:
    """rgb (T,H,W,3) uint8, instances (T,H,W) (0 background, k+1 object k), depth (T,H,W) world z-depth,
    cameras: T input cameras, object_to_world (K,T,4,4) local -> world (s R | t). aabb: the background's
    box [[min], [max]] (bounded scene), else a sphere around the cameras' view is used. Returns the scene
    and g_k (world units per object unit) per object."""
    T = rgb.shape[0]
    w2c = cameras.w2c.double()
    M = torch.as_tensor(np.asarray(object_to_world), dtype=torch.float64)
    inst = np.asarray(instances)
    depth = np.asarray(depth, np.float32)
    scene = Scene(frames=np.asarray(rgb), timestamps=np.arange(T, dtype=np.float64), cameras=cameras,
                  instances=inst.astype(np.uint8), depth=np.where(np.isfinite(depth), depth, 0).astype(np.float32),
                  frame_times=None if times is None else np.asarray(times, np.float32))
    if aabb is not None:
        lo, hi = np.asarray(aabb[0], np.float64), np.asarray(aabb[1], np.float64)
        scene.center, scene.radius = ((lo + hi) / 2).astype(np.float32), float(np.linalg.norm(hi - lo) / 2)
        scene.aabb = np.stack([lo, hi]).astype(np.float32)
    else:
        d = depth[np.isfinite(depth) & (depth > 0)]
        scene.radius = float(np.percentile(d, 95)) if len(d) else 1.0
        scene.center = cameras.centers.mean(0).numpy()
    gs = []
    for k in range(M.shape[0]):
        mask = inst == k + 1
        d = depth[mask]
        g = float(np.median(d[np.isfinite(d)])) if mask.any() else 1.0
        s = torch.linalg.det(M[k, :, :3, :3]).abs() ** (1 / 3)  # (T,)
        R = M[k, :, :3, :3] / s[:, None, None]
        w2o = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
        w2o[:, :3, :3] = w2c[:, :3, :3] @ R
        w2o[:, :3, 3] = ((w2c[:, :3, :3] @ M[k, :, :3, 3:])[..., 0] + w2c[:, :3, 3]) / g
        # local units scaled by s are world units at that scale; dividing by g keeps the object rigid in its frame
        scene.object_cameras[k + 1] = Cameras(cameras.K.clone(), w2o.float(), cameras.width, cameras.height)
        scene.object_depth[k + 1] = np.where(mask, depth / g, 0).astype(np.float32)
        gs.append(g)
    return scene, gs
