"""`Scene`: what preprocessing produced for one clip, handed to every method.

Arrays are kept as numpy (memory-mapped when loaded from a workspace), so nothing is read until a method
asks for it; `tensor_*` helpers convert on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras, pixel_grid, scene_look_at, unproject


@dataclass
class Scene:
    """One monocular clip after preprocessing.

    frames: (T,H,W,3) uint8. timestamps: (T,) seconds. cameras: T cameras (one per frame).
    instances: (T,H,W) uint8 object ids (0 = static background) or None.
    flow_fw / flow_bw: (T-1,H,W,2) pixels (flow_bw[i] maps frame i+1 -> i) or None; valid_fw / valid_bw bool.
    depth: (T,H,W) z-depth in world units, 0 = unknown, or None.
    points: (N,3) sparse static points in world units or None; points_rgb: their (N,3) uint8 colours or None.
    center / radius: a sphere holding the region of interest (from SfM points or cameras); aabb: (2,3) min/max
    corners when the scene is known to be bounded (synthetic data), else None.
    fps: the clip's frame rate (from the decoder, else from the timestamps).
    object_cameras / object_depth / object_sfm: per-object SfM (OSN), by object id: camera-from-object
    cameras, (T,H,W) sparse z-depth in that object's units (0 = unknown), and the stage's report (ok, reason,
    hint) of every object it tried, failed ones included.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    cameras: Cameras
    instances: np.ndarray | None = None
    flow_fw: np.ndarray | None = None
    flow_bw: np.ndarray | None = None
    valid_fw: np.ndarray | None = None
    valid_bw: np.ndarray | None = None
    depth: np.ndarray | None = None
    points: np.ndarray | None = None
    points_rgb: np.ndarray | None = None  # (N,3) uint8 colours of `points`
    center: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    radius: float = 1.0
    static_camera: bool = False
    no_parallax: bool = False  # the camera centre never moves (static or only turning): depth is unobservable
    aabb: np.ndarray | None = None
    fps: float | None = None
    object_cameras: dict[int, Cameras] = field(default_factory=dict)
    object_depth: dict[int, np.ndarray] = field(default_factory=dict)
    object_sfm: dict[int, dict] = field(default_factory=dict)
    frame_times: np.ndarray | None = None  # explicit normalised times (T,), e.g. for a subset or multi-view data

    def __post_init__(self):
        if self.fps is None:
            ts = np.asarray(self.timestamps, np.float64)
            span = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
            self.fps = (len(ts) - 1) / span if span > 0 else 24.0

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def times(self) -> Float[Tensor, " T"]:
        """Normalised time in [0, 1] per frame: `frame_times` when given (a subset keeps the times of the frames
        it kept), else frame index / (T - 1)."""
        if self.frame_times is not None:
            return torch.as_tensor(np.asarray(self.frame_times), dtype=torch.float32)
        return torch.linspace(0.0, 1.0, self.num_frames)

    def images(self, idx=None) -> Float[Tensor, "T H W 3"]:
        """Frames as float32 in [0, 1] (all, or those at `idx`)."""
        frames = self.frames if idx is None else self.frames[idx]
        return torch.from_numpy(np.asarray(frames, dtype=np.float32) / 255.0)

    def content_points(self, max_points: int = 4096) -> Float[Tensor, "P 3"] | None:
        """World points on what the clip filmed, for placing cameras: the SfM points and the depth maps of up to 8
        frames lifted to 3D (moving things included), evenly thinned to `max_points`; None when neither exists."""
        parts = [] if self.points is None else [torch.as_tensor(np.asarray(self.points), dtype=torch.float32)]
        if self.depth is not None:
            xy = pixel_grid(self.width, self.height)
            for t in np.linspace(0, self.num_frames - 1, min(8, self.num_frames)).round().astype(int):
                z = torch.as_tensor(np.asarray(self.depth[t], np.float32))
                ok = z > 0
                parts.append(unproject(xy[ok], z[ok], self.cameras.K[t], self.cameras.w2c[t]))
        pts = torch.cat(parts) if parts else torch.zeros(0, 3)
        if not len(pts):
            return None
        return pts[torch.linspace(0, len(pts) - 1, min(max_points, len(pts))).long()]

    def look_at_point(self, content: Float[Tensor, "P 3"] | None = None) -> Float[Tensor, "3"]:
        """The point camera paths turn around and look at (`models.cameras.scene_look_at` on this scene's content;
        pass `content_points()` when already computed: lifting the depth maps is the costly part)."""
        content = self.content_points() if content is None else content
        return scene_look_at(self.cameras, torch.as_tensor(self.center, dtype=torch.float32), content)

    def subset(self, idx: np.ndarray) -> "Scene":
        """The scene restricted to frames `idx` (e.g. every other frame for held-out evaluation).

        With increasing `idx` the flow between the kept frames is the clip's flow composed across the frames left
        out (a fit on the subset keeps its track supervision, as a fit on the whole clip has it); otherwise flow is
        dropped. `times` of the subset are those of the full clip.
        """
        idx = np.asarray(idx)
        pick = lambda a: None if a is None else np.asarray(a[idx])
        flows = self._subset_flow(idx)
        sub = Scene(frames=np.asarray(self.frames[idx]), timestamps=self.timestamps[idx],
                    cameras=self.cameras[torch.as_tensor(idx)], instances=pick(self.instances),
                    depth=pick(self.depth), points=self.points, points_rgb=self.points_rgb, center=self.center, radius=self.radius,
                    static_camera=self.static_camera, no_parallax=self.no_parallax, aabb=self.aabb, fps=self.fps,
                    frame_times=self.times.numpy()[idx], object_sfm=dict(self.object_sfm),
                    object_cameras={k: c[torch.as_tensor(idx)] for k, c in self.object_cameras.items()},
                    object_depth={k: np.asarray(d[idx]) for k, d in self.object_depth.items()}, **flows)
        return sub

    def _subset_flow(self, idx: np.ndarray) -> dict:
        """flow_fw / flow_bw / valid_fw / valid_bw between consecutive frames of `idx`, composed over the frames in
        between; {} without flow or for a non-increasing `idx`."""
        if self.flow_fw is None or self.flow_bw is None or len(idx) < 2 or not (np.diff(idx) > 0).all():
            return {}
        from models.flow_ops import compose_flow

        # np.array copies: the stage outputs are read-only memory maps
        as_t = lambda a, i: torch.from_numpy(np.array(a[i], np.float32))[None]
        valid = lambda v, i: None if v is None else torch.from_numpy(np.array(v[i], bool))[None]
        fw, bw, vfw, vbw = [], [], [], []
        for a, b in zip(idx[:-1], idx[1:]):
            f, v = as_t(self.flow_fw, a), valid(self.valid_fw, a)
            for j in range(a + 1, b):  # a -> j, then j -> j + 1
                f, v = compose_flow(f, as_t(self.flow_fw, j), v, valid(self.valid_fw, j))
            g, u = as_t(self.flow_bw, b - 1), valid(self.valid_bw, b - 1)
            for j in range(b - 2, a - 1, -1):  # b -> j + 1, then j + 1 -> j
                g, u = compose_flow(g, as_t(self.flow_bw, j), u, valid(self.valid_bw, j))
            fw.append(f[0].numpy())
            bw.append(g[0].numpy())
            vfw.append(np.ones(f.shape[1:3], bool) if v is None else v[0].numpy())
            vbw.append(np.ones(g.shape[1:3], bool) if u is None else u[0].numpy())
        return {"flow_fw": np.stack(fw), "flow_bw": np.stack(bw), "valid_fw": np.stack(vfw), "valid_bw": np.stack(vbw)}
