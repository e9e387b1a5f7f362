"""Monocular depth (Depth Anything) and its alignment to SfM sparse depth.

Depth Anything predicts *relative* inverse depth (disparity) that is only defined up to an unknown scale and
shift per image. SfM gives metric-up-to-a-global-scale z-depth at a few hundred pixels per frame. Aligning
the two per frame, robustly, gives dense z-depth in the SfM world units:

    1 / z  ~=  scale_t * disparity + shift_t        (disparity space, the default)
        z  ~=  scale_t * depth     + shift_t        (depth space, for predictors that output depth)

Fitting happens in the space where the prediction is affine (disparity for relative Depth Anything). The
fit is iteratively reweighted: a least-absolute-deviation start (robust to gross outliers), then Tukey
biweights at 4.685 robust sigmas, which give wrong SfM points and points on moving objects zero weight.
Frames with too few points fall back to the fit over the whole sequence (with a warning).

Pixel convention: positions (x, y) with pixel centres at +0.5, as in models/cameras.py.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.errors import StageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14  # Dinov2 patch size: the network input must be a multiple of it on both sides


# ---- Depth Anything inference ------------------------------------------------------------------------------

def network_size(height: int, width: int, long_side: int = 518, multiple: int = PATCH) -> tuple[int, int]:
    """(h, w) fed to the network: aspect kept, longer side about `long_side`, both sides multiples of 14."""
    s = long_side / max(height, width)
    h = max(multiple, int(round(height * s / multiple)) * multiple)
    w = max(multiple, int(round(width * s / multiple)) * multiple)
    return h, w


def preprocess(frames: Float[Tensor, "B H W 3"], size: tuple[int, int]) -> Float[Tensor, "B 3 h w"]:
    """Frames in [0, 1] -> network input: bicubic resize (antialiased when shrinking), ImageNet normalisation."""
    x = frames.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != tuple(size):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp(0.0, 1.0)
    mean = x.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = x.new_tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def load_depth_anything(source: str, device: str | torch.device = "cpu"):
    """A DepthAnythingForDepthEstimation from a local folder or a Hugging Face id already in the local cache.

    Raises OSError when no local copy exists (the caller turns it into `weights.offline_error`).
    """
    from transformers import DepthAnythingForDepthEstimation

    model = DepthAnythingForDepthEstimation.from_pretrained(source, local_files_only=True)
    return model.eval().to(device)


def prediction_kind(model) -> str:
    """'disparity' for relative models (Depth Anything V1/V2 relative), 'depth' for metric ones."""
    return "depth" if getattr(model.config, "depth_estimation_type", "relative") == "metric" else "disparity"


@torch.inference_mode()
def predict(model, frames: np.ndarray | Tensor, long_side: int = 518, batch_size: int = 4,
            advance=lambda n=1: None) -> Float[Tensor, "T H W"]:
    """Run Depth Anything on every frame and upsample its output to frame size (float32, on the CPU).

    frames: (T, H, W, 3) uint8, or float in [0, 1]. The output is what the model predicts: relative
    disparity for relative models, metric depth for metric ones (see `prediction_kind`); it is >= 0.
    """
    device = next(model.parameters()).device
    T, H, W = frames.shape[:3]
    size = network_size(H, W, long_side)
    out = torch.empty(T, H, W)
    for start in range(0, T, batch_size):
        batch = frames[start:start + batch_size]
        # a copy per batch: frames may be a read-only memory map of the decode stage's frames.npy
        batch = torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch
        batch = batch.to(device)
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        pred = model(pixel_values=preprocess(batch, size)).predicted_depth  # (B, h, w)
        # Bilinear, not bicubic: bicubic overshoots at depth edges and can make disparity negative.
        pred = F.interpolate(pred[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        out[start:start + len(batch)] = pred.clamp(min=0.0).float().cpu()
        advance(len(batch))
    return out


# ---- sampling ----------------------------------------------------------------------------------------------

def sample_bilinear(maps: Float[Tensor, "T H W"], frame: Int[Tensor, " N"], xy: Float[Tensor, "N 2"]
                    ) -> Float[Tensor, " N"]:
    """Values of per-frame maps at pixel positions (pixel centres at +0.5), bilinear, clamped at the border."""
    T, H, W = maps.shape
    x = (xy[:, 0] - 0.5).clamp(0, W - 1)
    y = (xy[:, 1] - 0.5).clamp(0, H - 1)
    x0, y0 = x.floor().long().clamp(max=W - 2 if W > 1 else 0), y.floor().long().clamp(max=H - 2 if H > 1 else 0)
    x1, y1 = (x0 + 1).clamp(max=W - 1), (y0 + 1).clamp(max=H - 1)
    fx, fy = x - x0, y - y0
    v00, v01 = maps[frame, y0, x0], maps[frame, y0, x1]
    v10, v11 = maps[frame, y1, x0], maps[frame, y1, x1]
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def pixel_index(xy: Float[Tensor, "N 2"], height: int, width: int) -> tuple[Int[Tensor, " N"], Int[Tensor, " N"]]:
    """Row and column of the pixel containing each position (clamped into the image)."""
    col = xy[:, 0].floor().long().clamp(0, width - 1)
    row = xy[:, 1].floor().long().clamp(0, height - 1)
    return row, col


# ---- robust per-frame scale and shift ------------------------------------------------------------------------

@contextmanager
def _one_thread():
    """The fits below are many tiny ops on a few thousand points: with several intra-op threads on busy
    shared cores, OpenMP spin-waiting made them ~25x slower in our measurements; one thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_scale_shift(x: Float[Tensor, " N"], y: Float[Tensor, " N"], group: Int[Tensor, " N"], num_groups: int,
                    weights: Float[Tensor, " N"] | None = None
                    ) -> tuple[Float[Tensor, " G"], Float[Tensor, " G"], Bool[Tensor, " G"]]:
    """Weighted least squares y ~= s * x + t, separately for each group (frame), in closed form.

    Returns scale, shift and `ok` (False where a group has too little weight or no spread in x, s = 1, t = 0).
    """
    w = torch.ones_like(x) if weights is None else weights
    x, y, w = x.double(), y.double(), w.double()

    def gsum(v):
        return torch.zeros(num_groups, dtype=torch.float64, device=x.device).index_add_(0, group, v)

    sw, sx, sy = gsum(w), gsum(w * x), gsum(w * y)
    sxx, sxy = gsum(w * x * x), gsum(w * x * y)
    det = sw * sxx - sx * sx
    # Relative test: det = sw^2 * weighted variance of x; degenerate when the spread is ~0 relative to x.
    scale_x = (sxx / sw.clamp(min=1e-300)).clamp(min=1e-300)
    ok = (sw > 1e-9) & (det > 1e-10 * sw * sw * scale_x)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    s = torch.where(ok, (sw * sxy - sx * sy) / safe_det, torch.ones_like(det))
    t = torch.where(ok, (sy - s * sx) / sw.clamp(min=1e-300), torch.zeros_like(det))
    return s.float(), t.float(), ok


def group_median(values: Float[Tensor, " N"], group: Int[Tensor, " N"], num_groups: int,
                 weights: Float[Tensor, " N"] | None = None) -> Float[Tensor, " G"]:
    """Median of `values` within each group, counting only entries with weight > 0 (0 for empty groups)."""
    keep = torch.ones_like(values, dtype=torch.bool) if weights is None else weights > 0
    v, g = values[keep], group[keep]
    if v.numel() == 0:
        return torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    # Sort by value, then stably by group: each group's values end up contiguous and ascending.
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(g[order], stable=True)]
    counts = torch.bincount(g, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    mid = (starts + (counts - 1).clamp(min=0) // 2).clamp(max=v.numel() - 1)
    med = v[order][mid]
    return torch.where(counts > 0, med, torch.zeros_like(med))


class TooFewPointsError(StageError):
    """The whole sequence has too few SfM points to align to (static or purely rotating camera, failed SfM)."""


TUKEY_C = 4.685  # Tukey biweight constant: 95% efficiency under Gaussian noise


def robust_scale_shift(x: Float[Tensor, " N"], y: Float[Tensor, " N"], group: Int[Tensor, " N"], num_groups: int,
                       lad_iters: int = 15, tukey_iters: int = 10
                       ) -> tuple[Float[Tensor, " G"], Float[Tensor, " G"], Float[Tensor, " N"], Bool[Tensor, " G"]]:
    """Per-group y ~= s * x + t that ignores outliers.

    Least-absolute-deviation start by IRLS (weights 1/|r|), then Tukey biweight IRLS with the robust sigma
    1.4826 * median|r| per group. Returns scale, shift, final per-point weights in [0, 1] (0 = outlier), ok.
    """
    s, t, ok = fit_scale_shift(x, y, group, num_groups)
    y_scale = group_median(y.abs(), group, num_groups).clamp(min=1e-12)
    w = torch.ones_like(x)
    for _ in range(lad_iters):
        r = (y - (s[group] * x + t[group])).abs()
        w = 1.0 / torch.maximum(r, 1e-6 * y_scale[group])
        s, t, ok = fit_scale_shift(x, y, group, num_groups, w)
    for _ in range(tukey_iters):
        r = y - (s[group] * x + t[group])
        sigma = 1.4826 * group_median(r.abs(), group, num_groups, w)
        # Floor sigma so exact (noise-free) data keeps its weights instead of dividing by zero.
        sigma = torch.maximum(sigma, 1e-6 * y_scale)
        u = r / (TUKEY_C * sigma[group])
        w = ((1 - u * u).clamp(min=0.0)) ** 2
        s, t, ok = fit_scale_shift(x, y, group, num_groups, w)
    return s, t, w, ok


@dataclass
class Alignment:
    """Per-frame affine map from the monocular prediction to the SfM target (see module docstring)."""

    scale: Float[Tensor, " T"]
    shift: Float[Tensor, " T"]
    space: str                        # "disparity" (fit 1/z) or "depth" (fit z)
    residual: Float[Tensor, " T"]      # RMS residual of the inliers, in the fitting space
    rel_error: Float[Tensor, " T"]     # median |z_aligned - z| / z over the frame's points (nan: no points)
    points: Int[Tensor, " T"]          # sparse points used per frame (after masking)
    inliers: Int[Tensor, " T"]         # points with nonzero final weight
    fallback: Bool[Tensor, " T"]       # frames that use the sequence-wide scale/shift

    def to_dict(self) -> dict:
        def clean(v):
            return [None if (isinstance(a, float) and not math.isfinite(a)) else a for a in v.tolist()]
        return {"space": self.space, "scale": clean(self.scale), "shift": clean(self.shift),
                "residual": clean(self.residual), "rel_error": clean(self.rel_error),
                "points": self.points.tolist(), "inliers": self.inliers.tolist(),
                "fallback_frames": torch.nonzero(self.fallback)[:, 0].tolist()}


def to_target_space(z: Tensor, space: str) -> Tensor:
    if space == "disparity":
        return 1.0 / z
    if space == "depth":
        return z
    raise ValueError(f"alignment space must be 'disparity' or 'depth', not {space!r}")


def align_points(pred: Float[Tensor, " N"], z: Float[Tensor, " N"], frame: Int[Tensor, " N"], num_frames: int,
                 space: str = "disparity", min_points: int = 20) -> Alignment:
    """Fit per-frame scale/shift mapping predictions at sparse points to their SfM z-depth.

    pred: the monocular prediction sampled at each point (disparity or depth, per `space`); z: SfM z-depth
    (> 0); frame: the frame index of each point. Frames with fewer than `min_points` points, a degenerate
    fit or a non-positive scale use the fit over all points of the sequence; a `UserWarning` names them.
    Raises StageError when the whole sequence has fewer than `min_points` usable points.
    """
    with _one_thread():
        return _align_points(pred, z, frame, num_frames, space, min_points)


def _align_points(pred, z, frame, num_frames, space, min_points) -> Alignment:
    good = torch.isfinite(pred) & torch.isfinite(z) & (z > 0)
    pred, z, frame = pred[good].float(), z[good].float(), frame[good].long()
    if pred.numel() < min_points:
        raise TooFewPointsError(f"only {pred.numel()} SfM points with valid depth to align the monocular depth "
                                f"to (need {min_points})")
    y = to_target_space(z, space)
    counts = torch.bincount(frame, minlength=num_frames)
    s, t, w, ok = robust_scale_shift(pred, y, frame, num_frames)
    gs, gt, gw, gok = robust_scale_shift(pred, y, torch.zeros_like(frame), 1)
    if not bool(gok[0]) or float(gs[0]) <= 0:
        raise StageError("the monocular prediction does not correlate with the SfM depth (sequence-wide "
                         f"scale {float(gs[0]):.3g}); the depth model output is unusable for this clip")
    fallback = (counts < min_points) | ~ok | (s <= 0)
    if bool(fallback.any()):
        frames = torch.nonzero(fallback)[:, 0].tolist()
        shown = ", ".join(map(str, frames[:12])) + (" ..." if len(frames) > 12 else "")
        warnings.warn(f"depth alignment: {len(frames)} frame(s) with fewer than {min_points} usable SfM points "
                      f"or a degenerate fit use the sequence-wide scale/shift: {shown}", stacklevel=4)
    s = torch.where(fallback, gs[0], s)
    t = torch.where(fallback, gt[0], t)
    w = torch.where(fallback[frame], gw, w)

    r = y - (s[frame] * pred + t[frame])
    inlier = w > 0
    sq = torch.zeros(num_frames).index_add_(0, frame, torch.where(inlier, r * r, torch.zeros_like(r)))
    n_in = torch.bincount(frame[inlier], minlength=num_frames)
    residual = torch.where(n_in > 0, (sq / n_in.clamp(min=1)).sqrt(), torch.full_like(sq, float("nan")))
    z_hat = from_target_space(s[frame] * pred + t[frame], space)
    rel = torch.where(z_hat > 0, (z_hat - z).abs() / z, torch.ones_like(z))  # an unusable prediction counts as 100%
    rel_error = group_median(rel, frame, num_frames)
    rel_error = torch.where(counts > 0, rel_error, torch.full_like(rel_error, float("nan")))
    return Alignment(s, t, space, residual, rel_error, counts, n_in, fallback)


def from_target_space(v: Tensor, space: str) -> Tensor:
    """Aligned values back to z-depth; a non-positive aligned disparity/depth becomes 0 (unknown)."""
    if space == "disparity":
        return torch.where(v > 0, 1.0 / v.clamp(min=1e-12), torch.zeros_like(v))
    return v.clamp(min=0.0)


def apply_alignment(pred: Float[Tensor, "T H W"], alignment: Alignment, max_depth: float | None = None
                    ) -> Float[Tensor, "T H W"]:
    """Dense z-depth from the monocular prediction; 0 = unknown (non-positive aligned disparity, or beyond
    `max_depth`, where a tiny disparity makes depth meaningless)."""
    v = alignment.scale[:, None, None] * pred + alignment.shift[:, None, None]
    depth = from_target_space(v, alignment.space)
    if max_depth is not None:
        depth = torch.where(depth <= max_depth, depth, torch.zeros_like(depth))
    return depth


def align_depth(pred: Float[Tensor, "T H W"], frame: Int[Tensor, " N"], xy: Float[Tensor, "N 2"],
                z: Float[Tensor, " N"], space: str = "disparity", static: Bool[Tensor, "T H W"] | None = None,
                min_points: int = 20, max_depth_factor: float | None = 20.0
                ) -> tuple[Float[Tensor, "T H W"], Alignment]:
    """Dense z-depth in SfM units from a monocular prediction and per-frame SfM points.

    frame/xy/z: the sparse points (frame index, pixel position with centres at +0.5, z-depth). `static`
    (True = static scene) drops points that fall on moving objects before fitting. Depth beyond
    `max_depth_factor` times the 95th percentile of the SfM depths is set to 0 (unknown).
    """
    T, H, W = pred.shape
    frame = frame.long()
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H) & (frame >= 0) & (frame < T)
    frame, xy, z = frame[inside], xy[inside].float(), z[inside].float()
    if static is not None:
        row, col = pixel_index(xy, H, W)
        keep = static[frame, row, col]
        frame, xy, z = frame[keep], xy[keep], z[keep]
    values = sample_bilinear(pred.float(), frame, xy)
    alignment = align_points(values, z, frame, T, space=space, min_points=min_points)
    max_depth = None
    if max_depth_factor is not None and z.numel():
        max_depth = max_depth_factor * float(torch.quantile(z[z > 0], 0.95))
    return apply_alignment(pred.float(), alignment, max_depth), alignment


def normalize_median(pred: Float[Tensor, "T H W"], space: str = "disparity", max_depth_factor: float | None = 20.0
                     ) -> tuple[Float[Tensor, "T H W"], Alignment]:
    """Depth without any SfM points: shift assumed 0 (disparity proportional to 1/z, or depth to z) and each
    frame scaled so that its median depth is 1, the SfM stage's world unit (median depth of its points).

    Only a fallback: the true shift is unknown, so far-away depth is distorted. Depth beyond
    `max_depth_factor` units is marked unknown (0).
    """
    T = pred.shape[0]
    with _one_thread():
        flat = pred.reshape(T, -1).float()
        vals = torch.where(flat > 0, flat, torch.full_like(flat, float("nan")))
        med = torch.nanmedian(vals, dim=1).values
        ok = torch.isfinite(med) & (med > 0)
        med = torch.where(ok, med, torch.ones_like(med))
        # disparity: z = med / d has median 1 (1/x is monotone, so the median maps to the median)
        scale = 1.0 / med
        nan = torch.full((T,), float("nan"))
        alignment = Alignment(scale, torch.zeros(T), space, nan, nan.clone(), torch.zeros(T, dtype=torch.long),
                              torch.zeros(T, dtype=torch.long), torch.ones(T, dtype=torch.bool))
        return apply_alignment(pred.float(), alignment, max_depth_factor), alignment


def sparse_depth_map(frame: Int[Tensor, " N"], xy: Float[Tensor, "N 2"], z: Float[Tensor, " N"], num_frames: int,
                     height: int, width: int) -> Float[Tensor, "T H W"]:
    """Splat sparse points into per-frame depth maps (0 = unknown); the nearest point wins a shared pixel."""
    frame = frame.long()
    inside = ((xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height) & (z > 0)
              & (frame >= 0) & (frame < num_frames))
    frame, xy, z = frame[inside], xy[inside], z[inside].float()
    row, col = pixel_index(xy, height, width)
    flat = (frame * height + row) * width + col
    out = torch.full((num_frames * height * width,), float("inf"))
    out.scatter_reduce_(0, flat, z, reduce="amin")
    out[torch.isinf(out)] = 0.0
    return out.view(num_frames, height, width)


# ---- sparse depth -------------------------------------------------------------------------------------------

def densify_sparse_depth(depth: Float[np.ndarray, "H W"]) -> Float[np.ndarray, "H W"] | None:
    """Sparse z-depth (0 = unknown) -> every pixel: linear interpolation over the known pixels' Delaunay
    triangulation, nearest known pixel outside their convex hull. None when fewer than 4 pixels are known."""
    from scipy.interpolate import griddata

    rows, cols = np.nonzero(depth > 0)
    if len(rows) < 4:
        return None
    pts, vals = np.stack([rows, cols], 1).astype(np.float64), depth[rows, cols].astype(np.float64)
    grid = tuple(np.mgrid[0:depth.shape[0], 0:depth.shape[1]])
    nearest = griddata(pts, vals, grid, method="nearest")
    try:
        linear = griddata(pts, vals, grid, method="linear")
    except Exception:  # degenerate point sets (all on a line): Qhull refuses, nearest is all we have
        return nearest.astype(np.float32)
    return np.where(np.isfinite(linear), linear, nearest).astype(np.float32)
