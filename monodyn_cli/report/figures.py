"""The report's pictures, as numpy images (uint8, (H, W, 3) RGB) and as base64 data URIs.

Everything here takes arrays already read from a workspace; nothing reads files except `video_poster`. cv2 does
the resizing and encoding; matplotlib (Agg, imported when first needed) draws the curves.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import cv2
import numpy as np

# instance id k > 0 gets PALETTE[(k - 1) % len]; id 0 (background) is not tinted
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
                    (170, 110, 40)], np.uint8)


# ---- encoding ---------------------------------------------------------------------------------------------------

def data_uri(img: np.ndarray, fmt: str = "jpeg", quality: int = 85) -> str:
    """`img` (H, W, 3) uint8 RGB (or (H, W) gray) -> "data:image/...;base64,..." (JPEG for photos, PNG for plots)."""
    bgr = img[..., ::-1] if img.ndim == 3 else img
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"could not encode a {img.shape} image as {fmt}")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def bytes_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Frames as stored ((..., 3) uint8, or float in [0, 1]) -> uint8."""
    if img.dtype == np.uint8:
        return np.asarray(img)
    return (np.clip(np.asarray(img, np.float32), 0, 1) * 255).round().astype(np.uint8)


def fit_size(img: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (H, W, ...) so that its long side is at most `max_side` (never upscales)."""
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return np.asarray(img)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(np.asarray(img), size, interpolation=cv2.INTER_AREA)


def sample_indices(n: int, k: int) -> list[int]:
    """Up to k evenly spaced indices in [0, n-1], first and last included."""
    if n <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


# ---- flow ---------------------------------------------------------------------------------------------------------

def flow_to_rgb(flow: np.ndarray, max_mag: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Colour wheel coding of optical flow: hue = direction, saturation = |flow| / max_mag (white = still).

    flow: (H, W, 2) pixels (u right, v down); valid: (H, W) bool or None (invalid pixels are drawn grey).
    Returns (H, W, 3) uint8 RGB."""
    u = np.asarray(flow[..., 0], np.float32)
    v = np.asarray(flow[..., 1], np.float32)
    mag = np.sqrt(u * u + v * v)
    ang = (np.arctan2(v, u) + 2 * np.pi) % (2 * np.pi)  # 0 = right, pi/2 = down (image axes)
    hsv = np.empty(u.shape + (3,), np.uint8)
    hsv[..., 0] = np.round(ang / (2 * np.pi) * 179).astype(np.uint8)  # OpenCV hue in [0, 180)
    hsv[..., 1] = np.round(np.clip(mag / max(max_mag, 1e-6), 0, 1) * 255).astype(np.uint8)
    hsv[..., 2] = 255
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if valid is not None:
        rgb[~np.asarray(valid, bool)] = (110, 110, 110)
    return rgb


def flow_wheel(size: int = 120) -> np.ndarray:
    """The legend of `flow_to_rgb`: a disk whose rim is |flow| = max_mag; (size, size, 3) uint8 RGB, white outside."""
    r = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([(x - r) / r, (y - r) / r], -1)
    rgb = flow_to_rgb(flow, 1.0)
    outside = np.hypot(x - r, y - r) > r
    rgb[outside] = 255
    cv2.circle(rgb, (round(r), round(r)), round(r), (80, 80, 80), 1, cv2.LINE_AA)
    return rgb


def robust_max_flow(flows: np.ndarray) -> float:
    """99th percentile of |flow| over (N, H, W, 2) flows: the saturation scale of the colour wheel."""
    f = np.asarray(flows, np.float32)
    mag = np.sqrt((f ** 2).sum(-1))
    return float(max(np.percentile(mag, 99), 0.5))


# ---- masks ------------------------------------------------------------------------------------------------------

def mask_overlay(frame: np.ndarray, instances: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Tint each object of `instances` (H, W) int ids (0 = background) over `frame` (H, W, 3) uint8, with outlines."""
    out = frame.astype(np.float32).copy()
    ids = np.asarray(instances)
    for k in np.unique(ids):
        if k == 0:
            continue
        m = ids == k
        color = PALETTE[(int(k) - 1) % len(PALETTE)].astype(np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * color
        edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        out[edge] = color
    return out.round().astype(np.uint8)


def palette_hex(k: int) -> str:
    r, g, b = PALETTE[(int(k) - 1) % len(PALETTE)]
    return f"#{r:02x}{g:02x}{b:02x}"


# ---- depth ------------------------------------------------------------------------------------------------------

def depth_range(depths: np.ndarray) -> tuple[float, float]:
    """(near, far): 2nd and 98th percentiles of the known (> 0, finite) depths in (N, H, W); (1, 1) if none."""
    d = np.asarray(depths, np.float32)
    known = d[np.isfinite(d) & (d > 0)]
    if known.size == 0:
        return 1.0, 1.0
    near, far = np.percentile(known, [2, 98])
    return float(near), float(max(far, near * 1.001))


def colorize_depth(depth: np.ndarray, near: float, far: float, frame: np.ndarray | None = None) -> np.ndarray:
    """Colour-map (H, W) depth by inverse depth (turbo: near = red, far = blue); 0 = unknown.

    Dense maps are drawn as they are; sparse ones (most pixels unknown) as enlarged dots over the dimmed grey
    `frame` (H, W, 3) uint8 when given. Returns (H, W, 3) uint8 RGB."""
    d = np.asarray(depth, np.float32)
    known = np.isfinite(d) & (d > 0)
    inv = np.zeros_like(d)
    inv[known] = 1.0 / np.clip(d[known], 1e-6, None)
    lo, hi = 1.0 / far, 1.0 / near
    t = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = cv2.applyColorMap(np.round(t * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    if known.mean() > 0.3:
        rgb[~known] = 0
        return rgb
    if frame is not None:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        base = np.repeat((gray.astype(np.float32) * 0.35)[..., None], 3, -1).astype(np.uint8)
    else:
        base = np.zeros_like(rgb)
    grown = cv2.dilate(known.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    # spread each dot's colour to its 3x3 neighbourhood (max over inverse depth: the nearest point wins)
    t_grown = cv2.dilate(np.where(known, t, -1).astype(np.float32), np.ones((3, 3), np.uint8))
    dots = cv2.applyColorMap(np.round(np.clip(t_grown, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    base[grown] = dots[grown]
    return base


def colorbar(width: int = 256, height: int = 14) -> np.ndarray:
    """The turbo colour bar of `colorize_depth`, far (left) to near (right): (height, width, 3) uint8 RGB."""
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8)[None], (height, 1))
    return cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)[..., ::-1].copy()


# ---- strips -----------------------------------------------------------------------------------------------------

def hstack(images: list[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Images (H_i, W_i, 3) uint8 side by side, top-aligned, `gap` pixels apart."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        pad = np.full((h, im.shape[1], 3), fill, np.uint8)
        pad[:im.shape[0]] = im
        parts.append(pad)
        if i + 1 < len(images):
            parts.append(np.full((h, gap, 3), fill, np.uint8))
    return np.concatenate(parts, axis=1)


# ---- plots ------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> str:
    """A matplotlib figure -> PNG data URI (the figure is closed)."""
    import io

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return bytes_uri(buf.getvalue(), "image/png")


def curves_png(runs: list[dict]) -> str:
    """Loss (log scale) and PSNR against step for each run: runs = [{"label": str, "rows": [{"step", "loss",
    "psnr", ...}]}]. Returns a PNG data URI."""
    plt = _pyplot()
    has_psnr = any("psnr" in r for run in runs for r in run["rows"])
    fig, axes = plt.subplots(1, 2 if has_psnr else 1, figsize=(11 if has_psnr else 6, 3.4), squeeze=False)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for col, name in enumerate(["loss", "psnr"] if has_psnr else ["loss"]):
            rows = [r for r in run["rows"] if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]
            if not rows:
                continue
            steps, values = [r["step"] for r in rows], np.array([r[name] for r in rows], np.float64)
            ax = axes[0, col]
            if len(values) >= 20:  # noisy per-batch values: faint, with a smoothed line on top
                ax.plot(steps, values, color=color, lw=0.8, alpha=0.3)
                smooth = ema(np.log(values) if name == "loss" and (values > 0).all() else values, len(values) // 15)
                ax.plot(steps, np.exp(smooth) if name == "loss" and (values > 0).all() else smooth, color=color,
                        lw=1.6, label=run["label"])
            else:
                ax.plot(steps, values, color=color, lw=1.4, marker="." if len(values) < 5 else None,
                        label=run["label"])
    ax = axes[0, 0]
    lines = ax.get_lines()
    if lines and all(np.min(line.get_ydata()) > 0 for line in lines):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if has_psnr:
        ax = axes[0, 1]
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title("training PSNR (on the batch)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


def ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average of (N,) values over about `span` samples, debiased at the start."""
    a = 2.0 / (max(span, 1) + 1)
    out, acc, weight = np.empty(len(values)), 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - a) * acc + a * v
        weight = (1 - a) * weight + a
        out[i] = acc / weight
    return out


def video_poster(path, max_side: int = 320) -> np.ndarray | None:
    """The first frame of a video file, downscaled ((h, w, 3) uint8 RGB), or None when it cannot be read."""
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok or frame is None:
        return None
    return fit_size(frame[..., ::-1], max_side)


def plot_osn_scales(report, path: Path) -> Path:
    """Validity against scale per object (others at the default) and, for two or more objects, the 2D map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(report.ids)
    n = K + (report.map2d is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for k in range(K):
        ax = axes[0, k]
        ax.plot(report.curve_scales[k].numpy(), report.curve_validity[k].numpy(), color="C0")
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.axvline(float(report.default[k]), color="C3", lw=0.8, label="default")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"scale of object {report.ids[k]}")
        ax.set_ylabel("validity")
        ax.set_title(f"object {report.ids[k]} (others at default)", fontsize=9)
        ax.legend(fontsize=7)
    if report.map2d is not None:
        sa, sb, v = report.map2d
        ax = axes[0, K]
        mesh = ax.pcolormesh(sa.numpy(), sb.numpy(), v.numpy(), vmin=0, vmax=1, cmap="viridis", shading="auto")
        ax.contour(sa.numpy(), sb.numpy(), v.numpy(), levels=[0.5], colors="w", linewidths=0.8)
        ax.plot([float(report.default[0])], [float(report.default[1])], "r+")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"scale of object {report.ids[0]}")
        ax.set_ylabel(f"scale of object {report.ids[1]}")
        ax.set_title("validity" + (" (others at default)" if K > 2 else ""), fontsize=9)
        fig.colorbar(mesh, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
