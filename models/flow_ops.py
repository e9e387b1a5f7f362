"""Optical-flow helpers: warping, forward-backward consistency, OpenCV DIS flow, colour coding, whole-video flow.

Flow convention (same as models/raft.py): channels last, (..., H, W, 2) with [..., 0] = dx (columns) and
[..., 1] = dy (rows) in pixels, from frame a to frame b: frame_b(p + flow(p)) ~ frame_a(p).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, UInt8
from torch import Tensor

from models.errors import InputError

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _pixel_grid(h: int, w: int, device: torch.device) -> Float[Tensor, "H W 2"]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def backward_warp(
    image: Float[Tensor, "B H W C"], flow: Float[Tensor, "B H W 2"], padding_mode: str = "border"
) -> Float[Tensor, "B H W C"]:
    """out[b, y, x] = image[b, y + flow_y, x + flow_x], bilinear (pull `image` back along `flow`).

    With flow from frame a to frame b and image = frame b, the result is frame b seen from frame a. Samples
    outside the image take the nearest border value (`padding_mode="zeros"` gives 0 instead).
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[-1] != 2 or image.shape[:3] != flow.shape[:3]:
        raise ValueError(f"backward_warp: expected (B,H,W,C) and (B,H,W,2) with equal B,H,W, "
                         f"got {tuple(image.shape)}, {tuple(flow.shape)}")
    _, h, w, _ = image.shape
    target = _pixel_grid(h, w, flow.device) + flow
    # align_corners=True: -1 / +1 are the centres of the first / last pixel, so integer coords hit pixel centres
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=flow.device)
    grid = target * scale - 1.0
    out = F.grid_sample(image.permute(0, 3, 1, 2).float(), grid.float(), mode="bilinear",
                        padding_mode=padding_mode, align_corners=True)
    return out.permute(0, 2, 3, 1)


def _lands_inside(flow: Float[Tensor, "B H W 2"]) -> Bool[Tensor, "B H W"]:
    """Pixels whose flow target lies inside the image."""
    _, h, w, _ = flow.shape
    target = _pixel_grid(h, w, flow.device) + flow
    return (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)


def forward_backward_consistency(
    flow_fw: Float[Tensor, "B H W 2"], flow_bw: Float[Tensor, "B H W 2"], alpha: float = 0.01, beta: float = 0.5
) -> Bool[Tensor, "B H W"]:
    """Pixels of frame a whose forward flow is confirmed by the backward flow (Sundaram et al. 2010 test).

    flow_fw: a -> b, flow_bw: b -> a. With bw' = flow_bw sampled at p + flow_fw(p), a pixel is valid when
    |fw + bw'|^2 < alpha * (|fw|^2 + |bw'|^2) + beta and p + flow_fw(p) lands inside frame b. Occluded and
    out-of-frame pixels come out False.
    """
    bw_at_target = backward_warp(flow_bw, flow_fw)
    mismatch = (flow_fw + bw_at_target).square().sum(-1)
    tolerance = alpha * (flow_fw.square().sum(-1) + bw_at_target.square().sum(-1)) + beta
    return (mismatch < tolerance) & _lands_inside(flow_fw)


def compose_flow(
    first: Float[Tensor, "B H W 2"], second: Float[Tensor, "B H W 2"],
    first_valid: Bool[Tensor, "B H W"] | None = None, second_valid: Bool[Tensor, "B H W"] | None = None,
) -> tuple[Float[Tensor, "B H W 2"], Bool[Tensor, "B H W"]]:
    """Flow a -> c from `first` (a -> b) and `second` (b -> c): first(p) + second(p + first(p)), bilinear. A pixel
    stays valid where both steps were valid (the second's validity read where the first lands) and it lands
    inside frame b."""
    composed = first + backward_warp(second, first)
    valid = _lands_inside(first)
    if first_valid is not None:
        valid &= first_valid
    if second_valid is not None:
        valid &= backward_warp(second_valid[..., None].float(), first)[..., 0] > 0.5
    return composed, valid


def _gray_u8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        frame = np.clip(np.asarray(frame, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(frame)


def dis_flow(
    frame_a: UInt8[np.ndarray, "H W 3"] | UInt8[np.ndarray, "H W"],
    frame_b: UInt8[np.ndarray, "H W 3"] | UInt8[np.ndarray, "H W"],
    preset: str = "medium",
) -> Float[np.ndarray, "H W 2"]:
    """OpenCV's DIS flow (Kroeger et al. 2016) from frame_a to frame_b: no weights needed, CPU-fast.

    Frames: RGB or grayscale, uint8 (float frames are taken as [0, 1]). preset: ultrafast | fast | medium.
    """
    if preset not in DIS_PRESETS:
        raise InputError(f"unknown DIS preset {preset!r}; use one of {', '.join(DIS_PRESETS)}")
    a, b = _gray_u8(frame_a), _gray_u8(frame_b)
    if a.shape != b.shape:
        raise InputError(f"dis_flow: frames differ in size {a.shape} vs {b.shape}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    return dis.calc(a, b, None).astype(np.float32)


def flow_to_rgb(
    flow: Float[np.ndarray, "... H W 2"] | Tensor, max_magnitude: float | None = None
) -> UInt8[np.ndarray, "... H W 3"]:
    """Colour-code flow: hue = direction, saturation = speed / max_magnitude (white = still), value = 1.

    Direction hues: right red, down yellow-green, left cyan, up violet (image axes, y down). max_magnitude
    defaults to the largest speed in `flow` (pass one value to compare several fields on one scale).
    """
    f = flow.detach().cpu().numpy() if isinstance(flow, Tensor) else np.asarray(flow)
    f = f.astype(np.float32)
    dx, dy = f[..., 0], f[..., 1]
    mag = np.hypot(dx, dy)
    if max_magnitude is None:
        max_magnitude = float(mag.max()) if mag.size else 0.0
    sat = np.clip(mag / max(max_magnitude, 1e-6), 0.0, 1.0)
    hue6 = (np.arctan2(dy, dx) % (2 * np.pi)) / (2 * np.pi) * 6.0  # [0, 6): sector of the hue circle
    # HSV -> RGB with V = 1: each channel is 1 - S * (how far the hue is inside that channel's "off" arc)
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32) + hue6[..., None]) % 6.0
    off = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    rgb = 1.0 - sat[..., None] * off
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def compute_video_flow(
    frames: UInt8[np.ndarray, "T H W 3"],
    backend: str = "raft",  # raft | dis; checked below with a message for the user
    model=None,
    progress: Callable[[int, int], None] | None = None,
    *,
    iters: int | None = None,
    batch: int = 4,
    dis_preset: str = "medium",
    alpha: float = 0.01,
    beta: float = 0.5,
) -> dict[str, np.ndarray]:
    """Flow between neighbouring frames, both ways, with forward-backward validity masks.

    frames: (T, H, W, 3) uint8 RGB, T >= 2. backend "raft" uses `model` (a models.raft.RAFT; None loads the
    default weights via load_raft, which may raise WeightsNotFoundError; `batch` pairs per network call, each
    frame encoded once per call), "dis" uses OpenCV DIS (`dis_preset`).
    Returns fw[t] = flow t -> t+1 and bw[t] = flow t+1 -> t, both (T-1, H, W, 2) float32, and valid_fw[t]
    (pixels of frame t) / valid_bw[t] (pixels of frame t+1), (T-1, H, W) bool. progress(n_done, 2*(T-1))
    counts flow fields computed.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise InputError(f"compute_video_flow needs (T>=2, H, W, 3) frames, got shape {frames.shape}")
    pairs = frames.shape[0] - 1
    total = 2 * pairs
    if backend == "raft":
        from models.raft import estimate_video_flow, load_raft

        if model is None:
            model = load_raft()
        fw_t, bw_t = estimate_video_flow(model, frames, iters=iters, batch=batch, progress=progress)
        fw, bw = fw_t.numpy(), bw_t.numpy()
    elif backend == "dis":
        fw = np.empty((pairs, *frames.shape[1:3], 2), np.float32)
        bw = np.empty_like(fw)
        for t in range(pairs):
            fw[t] = dis_flow(frames[t], frames[t + 1], dis_preset)
            bw[t] = dis_flow(frames[t + 1], frames[t], dis_preset)
            if progress is not None:
                progress(2 * (t + 1), total)
    else:
        raise InputError(f"unknown flow backend {backend!r}; use raft or dis")
    fw_t, bw_t = torch.from_numpy(np.ascontiguousarray(fw)), torch.from_numpy(np.ascontiguousarray(bw))
    return {
        "fw": fw.astype(np.float32, copy=False),
        "bw": bw.astype(np.float32, copy=False),
        "valid_fw": forward_backward_consistency(fw_t, bw_t, alpha, beta).numpy(),
        "valid_bw": forward_backward_consistency(bw_t, fw_t, alpha, beta).numpy(),
    }
