"""Evaluation protocols: what to fit on, which views to render, what to compare them with.

- holdout: any clip. Fit on every other frame, render the frames left out at their (SfM) cameras.
- synth: a `monodyn synth` scene. Fit on the input video's workspace, render the held-out cameras after
  aligning the ground-truth cameras to the SfM frame (similarity from input-camera centres and rotations).
  Masked metrics use co-visible pixels (DyCheck): a held-out pixel counts when its 3D point was seen by the
  input camera (moving objects: at the same time; static background: at any sampled time); `dpsnr` counts
  the co-visible pixels of moving objects only.
- multiview: images + cameras with a train/test split (e.g. D-NeRF's npz): fit on train, score test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras, opengl_c2w_to_opencv_w2c, pixel_grid, project, unproject
from models.errors import InputError
from models.scene import Scene
from models.sfm.align import Sim3, align_trajectories, transform_w2c
from monodyn_cli import metrics


@dataclass
class EvalViews:
    """Ground truth to score: images (N,H,W,3) float [0,1], their cameras and normalised times, optional
    masks (N,H,W): co-visible pixels, and the co-visible pixels of moving objects (`dynamic`)."""

    name: str
    images: torch.Tensor
    cameras: Cameras
    times: torch.Tensor
    mask: torch.Tensor | None = None
    dynamic: torch.Tensor | None = None

    def every(self, n: int) -> "EvalViews":
        """Every n-th image (from the first)."""
        if n <= 1:
            return self
        idx = torch.arange(0, len(self.times), n)
        return EvalViews(self.name, self.images[idx], self.cameras[idx], self.times[idx],
                         None if self.mask is None else self.mask[idx],
                         None if self.dynamic is None else self.dynamic[idx])


# metrics that the floor (the nearest input frame as the prediction) reports beside the method's
FLOOR_METRICS = ("psnr", "mpsnr", "dpsnr", "ssim", "mssim", "sharpness", "msharpness")


def score(pred: Float[Tensor, "N H W 3"], views: EvalViews, lpips_model=None) -> list[dict]:
    """Per-image metrics of `pred` against `views`: metrics.evaluate's (psnr, ssim, masked mpsnr, mssim,
    lpips where a model is given), the sharpness ratio (masked: msharpness) and, where the views mark moving
    objects, dpsnr (PSNR over their co-visible pixels; nan in images without any)."""
    rows = metrics.evaluate(pred, views.images, views.mask, lpips_model)
    extra = {"sharpness": metrics.sharpness(pred, views.images)}
    if views.mask is not None:
        extra["msharpness"] = metrics.sharpness(pred, views.images, views.mask)
    if views.dynamic is not None:
        extra["dpsnr"] = metrics.psnr(pred, views.images, views.dynamic)
    for i, r in enumerate(rows):
        r.update({k: float(v[i]) for k, v in extra.items()})
    return rows


def holdout_split(scene: Scene) -> tuple[Scene, EvalViews]:
    """Train on even frames, test on odd frames (DyCheck-style held-out evaluation on a monocular clip)."""
    if scene.num_frames < 4:
        raise InputError(f"holdout evaluation needs at least 4 frames, the clip has {scene.num_frames}")
    train = np.arange(0, scene.num_frames, 2)
    test = np.arange(1, scene.num_frames, 2)
    views = EvalViews("holdout", scene.images(test), scene.cameras[torch.as_tensor(test)], scene.times[test])
    return scene.subset(train), views


# ---- multi-view data (D-NeRF npz) ------------------------------------------------------------------------

def load_multiview_npz(path: Path) -> tuple[Scene, EvalViews]:
    """`images` (N,H,W,3) [0,1], `poses` (N,4,4) camera-to-world OpenGL, `times` (N,) [0,1], `focal` px,
    optional `train`/`test` index arrays (default D-NeRF tiny split: first 50 train, last 20 test)."""
    try:
        data = np.load(path)
        images, poses, times, focal = data["images"], data["poses"], data["times"], float(data["focal"])
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except (KeyError, ValueError, OSError) as e:
        raise InputError(f"{path} is not a multi-view npz with images/poses/times/focal ({e})") from None
    n, h, w = images.shape[:3]
    train = data["train"] if "train" in data else np.arange(0, min(50, n))
    test = data["test"] if "test" in data else np.arange(max(0, n - 20), n)
    K = torch.tensor([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], dtype=torch.float32).expand(n, 3, 3)
    w2c = opengl_c2w_to_opencv_w2c(torch.as_tensor(poses, dtype=torch.float32))
    cams = Cameras(K.clone(), w2c, w, h)
    frames = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    order = train[np.argsort(times[train], kind="stable")]  # a clip plays forward in time
    centers = cams.centers
    radius = float(centers.norm(dim=-1).median()) * 0.4  # object-centred captures: the object fills ~40% of the range
    scene = Scene(frames=frames[order], timestamps=times[order].astype(np.float64), cameras=cams[torch.as_tensor(order)],
                  center=np.zeros(3, np.float32), radius=radius, frame_times=times[order].astype(np.float32))
    views = EvalViews("test", torch.as_tensor(images[test], dtype=torch.float32), cams[torch.as_tensor(test)],
                      torch.as_tensor(times[test], dtype=torch.float32))
    return scene, views


# ---- synthetic ground truth -------------------------------------------------------------------------------

def sim3_from_cameras(est: Cameras, gt: Cameras) -> Sim3:
    """Similarity with x_est = s R x_gt + t, from camera centres *and* orientations.

    Centres alone leave the rotation about the trajectory free when they lie on (or near) a line, as for a
    dolly or a short arc: the held-out cameras then land rotated about that line. `align_trajectories` adds a
    point along each camera axis, and falls back to orientations alone for a static camera.
    """
    return align_trajectories(gt.w2c.double().numpy(), est.w2c.double().numpy())


def transform_cameras(cams: Cameras, sim: Sim3) -> Cameras:
    """Cameras given in the ground-truth world, expressed in the estimated world x_est = s R x_gt + t."""
    w2c = torch.as_tensor(transform_w2c(cams.w2c.double().numpy(), sim), dtype=torch.float32)
    return Cameras(cams.K.clone(), w2c, cams.width, cams.height)


def covisible_mask(view_depth: np.ndarray, view_cams: Cameras, view_inst: np.ndarray, input_depth: np.ndarray,
                   input_cams: Cameras, rel_tol: float = 0.02, static_stride: int = 4) -> np.ndarray:
    """(T,H,W) bool: held-out pixels whose 3D point the input camera saw (same time for moving objects, any
    sampled time for the static background), by projecting with ground-truth depth and a depth test."""
    T, H, W = view_depth.shape
    xy = pixel_grid(W, H).reshape(-1, 2)
    mask = np.zeros((T, H, W), bool)
    static_times = list(range(0, input_depth.shape[0], static_stride))
    for t in range(T):
        pts = unproject(xy, torch.from_numpy(np.array(view_depth[t].reshape(-1), np.float32)), view_cams.K[t], view_cams.w2c[t])
        dynamic = view_inst[t].reshape(-1) > 0
        seen = np.zeros(H * W, bool)
        for u in sorted(set(static_times + [t])):
            p_xy, z = project(pts, input_cams.K[u], input_cams.w2c[u])
            px = p_xy.numpy()
            inside = (z.numpy() > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
            cols = np.clip(px[:, 0].astype(int), 0, W - 1)
            rows = np.clip(px[:, 1].astype(int), 0, H - 1)
            unoccluded = np.abs(input_depth[u][rows, cols] - z.numpy()) < rel_tol * z.numpy()
            ok = inside & unoccluded
            seen |= ok & (~dynamic if u != t else True)
        mask[t] = seen.reshape(H, W)
    return mask


def _input_cameras_as_estimated(cams: Cameras, view_gt: Cameras, input_gt: Cameras, estimated: Cameras,
                                tol: float = 1e-4) -> Cameras:
    """A held-out view's frames whose ground-truth camera *is* one of the input cameras (a stabilised view, the
    NVIDIA rig's camera 0) take the workspace's own estimate of that input camera, as `render` does for them: the
    Sim(3) of the whole trajectory would add its alignment error (and a focal/depth trade-off SfM cannot resolve on a
    short baseline) to a view the reconstruction holds exactly. Others keep their aligned camera."""
    diff = (view_gt.w2c[:, None, :3].double() - input_gt.w2c[None, :, :3].double()).abs().amax(dim=(-1, -2))
    best, idx = diff.min(dim=1)  # (N,) nearest input camera of each view frame
    same = best < tol * max(1.0, float(input_gt.w2c[:, :3, 3].abs().max()))
    if not bool(same.any()):
        return cams
    w2c, K = cams.w2c.clone(), cams.K.clone()
    w2c[same] = estimated.w2c[idx[same]].to(w2c.dtype)
    K[same] = estimated.K[idx[same]].to(K.dtype)
    return Cameras(K, w2c, cams.width, cams.height)


def synth_views(gt_dir: Path, scene: Scene, names: list[str] | None = None) -> list[EvalViews]:
    """Held-out cameras of a `monodyn synth` scene, expressed in the workspace's (SfM) world and image size, with the
    workspace's estimated intrinsics."""
    import cv2

    from monodyn_cli.synth.writer import load_gt

    gt = load_gt(gt_dir)
    roles = {c["name"]: c["role"] for c in gt.meta["cameras"]}
    input_name = next(n for n, r in roles.items() if r == "input")
    names = names or [n for n, r in roles.items() if r != "input"]
    inp = gt.view(input_name)
    if inp.rgb.shape[0] != scene.num_frames:
        raise InputError(f"the workspace has {scene.num_frames} frames but the ground truth {inp.rgb.shape[0]}: "
                         "preprocess the synthetic input.mp4 without --fps/--max-frames/--start/--end")
    sim = sim3_from_cameras(scene.cameras, inp.cameras)
    factor = scene.width / inp.cameras.width
    views = []
    for name in names:
        v = gt.view(name)
        mask = covisible_mask(np.asarray(v.depth), v.cameras, np.asarray(v.instances), np.asarray(inp.depth),
                              inp.cameras)
        dynamic = mask & (np.asarray(v.instances) > 0)
        cams = transform_cameras(v.cameras, sim)
        images = np.array(v.rgb)  # a writable copy of the read-only ground truth
        if factor != 1.0:
            cams = cams.scaled(factor)
        # the reconstruction's own intrinsics, as its poses are aligned by Sim(3): an estimated focal (or the
        # assumed one of a static camera) must not be scored as a zoom
        cams = Cameras(scene.cameras.K.median(dim=0).values.expand(len(cams), 3, 3).clone(), cams.w2c,
                       cams.width, cams.height)
        cams = _input_cameras_as_estimated(cams, v.cameras, inp.cameras, scene.cameras)
        if factor != 1.0:
            size = (cams.width, cams.height)
            images = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images])
            mask, dynamic = (np.stack([cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) for m in a]) > 0
                             for a in (mask, dynamic))
        views.append(EvalViews(name, torch.as_tensor(images, dtype=torch.float32) / 255.0, cams,
                               torch.linspace(0, 1, images.shape[0]), torch.as_tensor(mask, dtype=torch.float32),
                               torch.as_tensor(dynamic, dtype=torch.float32)))
    return views
