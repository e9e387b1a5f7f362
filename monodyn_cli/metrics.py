"""Image metrics for `monodyn eval`: PSNR, SSIM, LPIPS and their masked variants (DyCheck protocol).

Images are float [0, 1], channels last, (*B, H, W, 3); masks are (*B, H, W), nonzero = counted (DyCheck's
co-visibility mask: pixels of a held-out view that the training views also saw). Per image:
- PSNR = -10 log10(MSE); masked: MSE over the mask's pixels (all three channels).
- SSIM: Wang et al. with an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed on the
  'valid' region (no padding; the same numbers as skimage with gaussian_weights=True and
  use_sample_covariance=False, or mip-NeRF / DyCheck) and averaged over channels. Masked (default): the
  SSIM map averaged over the mask. `mask_mode="partial"` is DyCheck's own variant, which blurs with a
  mask-normalised (partial) convolution and averages the whole map.
- sharpness: gradient energy of the prediction over the ground truth's (1 = as sharp; below 1 blurred).
- LPIPS (Zhang et al. 2018, v0.1): our implementation of the network, loading the official linear-layer
  weights and torchvision-format AlexNet/VGG16 backbone weights. Masked as in DyCheck: both images are
  multiplied by the mask and the spatial LPIPS map is averaged over it. Without weights LPIPS is skipped.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError, WeightsNotFoundError
from models.filters import gaussian_window, separable_blur
from models.weights import KNOWN, require_weights


def _check_pair(pred: Tensor, gt: Tensor, mask: Tensor | None) -> None:
    if pred.shape != gt.shape or pred.shape[-1] != 3:
        raise InputError(f"metrics need two image stacks of one shape (..., H, W, 3); got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(pred.shape[:-1]):
        raise InputError(f"mask shape {tuple(mask.shape)} does not match the images {tuple(pred.shape[:-1])}")


# ---- PSNR --------------------------------------------------------------------------------------------------

def psnr(pred: Float[Tensor, "*B H W 3"], gt: Float[Tensor, "*B H W 3"], mask: Float[Tensor, "*B H W"] | None = None,
         max_val: float = 1.0) -> Float[Tensor, "*B"]:
    """Peak signal-to-noise ratio in dB per image; with a mask only its pixels count (nan for an empty mask).
    Identical images give +inf."""
    _check_pair(pred, gt, mask)
    se = ((pred.double() - gt.double()) ** 2).mean(-1)
    if mask is None:
        mse = se.mean((-1, -2))
    else:
        m = (mask != 0).double()
        count = m.sum((-1, -2))
        mse = torch.where(count > 0, (se * m).sum((-1, -2)) / count.clamp(min=1), torch.full_like(count, math.nan))
    return (10 * torch.log10(max_val ** 2 / mse)).float()


# ---- SSIM --------------------------------------------------------------------------------------------------

def _partial_blur(x: Tensor, m: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """DyCheck's masked blur (partial convolution, Liu et al. 2018): the blur of x*m, renormalised by the
    fraction of mask pixels under the window; one direction at a time, so the mask is updated in between."""
    C, k = x.shape[1], window.numel()
    for shape in ((1, k), (k, 1)):  # along rows first, then columns, as DyCheck
        w = window.view(1, 1, *shape).expand(C, 1, *shape).to(x)
        ones = torch.ones(1, 1, *shape, dtype=x.dtype, device=x.device)
        blurred = F.conv2d(x * m, w, groups=C)
        covered = F.conv2d(m[:, :1], ones)
        x = torch.where(covered != 0, blurred * k / covered.clamp(min=1e-12), torch.zeros_like(blurred))
        m = (covered != 0).to(x).expand(-1, C, -1, -1)
    return x, m


def ssim_map(pred: Float[Tensor, "*B H W 3"], gt: Float[Tensor, "*B H W 3"], max_val: float = 1.0,
             window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
             mask: Float[Tensor, "*B H W"] | None = None, chunk: int = 4) -> Float[Tensor, "*B h w"]:
    """Per-pixel SSIM averaged over channels on the valid region (h = H - window + 1, w likewise).

    With `mask`, local statistics are computed by DyCheck's partial convolution (only mask pixels enter).
    """
    _check_pair(pred, gt, mask)
    H, W = pred.shape[-3:-1]
    if H < window or W < window:
        raise InputError(f"SSIM needs images of at least {window}x{window} pixels, got {W}x{H}")
    batch = pred.shape[:-3]
    x_all = pred.reshape(-1, H, W, 3)
    y_all = gt.reshape(-1, H, W, 3)
    m_all = None if mask is None else mask.reshape(-1, H, W)
    g = gaussian_window(window, sigma)
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    maps = []
    # float32 (about 4x faster than float64 on CPU) on images centred by their mean: SSIM's statistics are
    # shift-invariant, and centring removes most of the cancellation in E[x^2] - E[x]^2. A few images at a
    # time bound the memory of the intermediates.
    for i in range(0, x_all.shape[0], chunk):
        x = x_all[i:i + chunk].float().permute(0, 3, 1, 2)
        y = y_all[i:i + chunk].float().permute(0, 3, 1, 2)
        if m_all is None:
            cx, cy = x.mean((-1, -2), keepdim=True), y.mean((-1, -2), keepdim=True)
            x, y = x - cx, y - cy

            def blur(v):
                return separable_blur(v, g)
            covered = 1.0
        else:
            m = (m_all[i:i + chunk] != 0).float()[:, None].expand(-1, 3, -1, -1)
            n = m.sum((-1, -2), keepdim=True).clamp(min=1)  # centre on the mask's pixels only
            cx, cy = (x * m).sum((-1, -2), keepdim=True) / n, (y * m).sum((-1, -2), keepdim=True) / n
            x, y = x - cx, y - cy

            def blur(v, m=m):
                return _partial_blur(v, m, g)[0]
            covered = _partial_blur(torch.ones_like(x), m, g)[1]  # windows with no mask pixel stay all-zero
        mu_x, mu_y = blur(x), blur(y)
        var_x = (blur(x * x) - mu_x ** 2).clamp(min=0)
        var_y = (blur(y * y) - mu_y ** 2).clamp(min=0)
        cov = blur(x * y) - mu_x * mu_y
        cov = torch.sign(cov) * torch.minimum((var_x * var_y).sqrt(), cov.abs())  # |cov| <= sigma_x sigma_y
        mu_x, mu_y = mu_x + cx * covered, mu_y + cy * covered
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
        maps.append((num / den).mean(1))
    out = torch.cat(maps)
    return out.reshape(*batch, *out.shape[-2:])


def ssim(pred: Float[Tensor, "*B H W 3"], gt: Float[Tensor, "*B H W 3"], mask: Float[Tensor, "*B H W"] | None = None,
         max_val: float = 1.0, window: int = 11, sigma: float = 1.5, mask_mode: str = "average"
         ) -> Float[Tensor, "*B"]:
    """Mean SSIM per image. With a mask: `average` = the SSIM map averaged over the mask (cropped to the
    valid region; nan where no mask pixel remains), `partial` = DyCheck's partial-convolution SSIM."""
    if mask is None or mask_mode == "partial":
        return ssim_map(pred, gt, max_val, window, sigma, mask=mask).mean((-1, -2))
    if mask_mode != "average":
        raise InputError(f"mask_mode must be 'average' or 'partial', not {mask_mode!r}")
    smap = ssim_map(pred, gt, max_val, window, sigma).double()
    r = (window - 1) // 2
    m = (mask[..., r:mask.shape[-2] - r, r:mask.shape[-1] - r] != 0).double()
    count = m.sum((-1, -2))
    out = torch.where(count > 0, (smap * m).sum((-1, -2)) / count.clamp(min=1), torch.full_like(count, math.nan))
    return out.float()


# ---- LPIPS -------------------------------------------------------------------------------------------------

# Backbones as torchvision builds them, so that torchvision state dicts (features.N.*) load unchanged.
# Each entry: channel widths of the five tapped layers and the end index of each slice in `features`.
_ALEX_TAPS = ((64, 192, 384, 256, 256), (2, 5, 8, 10, 12))      # relu1 .. relu5
_VGG_TAPS = ((64, 128, 256, 512, 512), (4, 9, 16, 23, 30))      # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity, v0.1 (linear-calibrated), AlexNet or VGG16 backbone."""

    # The LPIPS input scaling layer (constants of the published model, for inputs in [-1, 1]).
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in {"alex", "vgg"}:
            raise InputError(f"LPIPS backbone must be 'alex' or 'vgg', not {net!r}")
        self.net = net
        self.features = _alexnet_features() if net == "alex" else _vgg16_features()
        widths, self.ends = _ALEX_TAPS if net == "alex" else _VGG_TAPS
        # 1x1 convolutions without bias, one per tapped layer (Dropout first, as in the official model, so
        # the official state dict keys `linK.model.1.weight` map onto `lins.K.1.weight`).
        self.lins = nn.ModuleList(nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)) for c in widths)
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, lin_state: dict, backbone_state: dict) -> "LPIPS":
        """Official LPIPS linear weights (`lin0.model.1.weight`, ...) and a torchvision backbone state dict
        (`features.N.weight/bias`; classifier entries are ignored)."""
        lins = {}
        for k, v in lin_state.items():
            parts = k.split(".")  # linK.model.1.weight
            if parts[0].startswith("lin") and parts[1] == "model":
                lins[f"{parts[0][3:]}.{'.'.join(parts[2:])}"] = v
        feats = {k[len("features."):]: v for k, v in backbone_state.items() if k.startswith("features.")}
        try:
            self.lins.load_state_dict(lins)
            self.features.load_state_dict(feats)
        except RuntimeError as e:
            raise InputError(f"LPIPS-{self.net} weights do not fit the network ({str(e).splitlines()[0]}); "
                             "check that the linear and backbone files are for the same backbone") from None
        return self

    def taps(self, x: Float[Tensor, "N 3 H W"]) -> list[Tensor]:
        out, start = [], 0
        for end in self.ends:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out

    def forward(self, pred: Float[Tensor, "N 3 H W"], gt: Float[Tensor, "N 3 H W"], spatial: bool = False
                ) -> Float[Tensor, " N"] | Float[Tensor, "N H W"]:
        """LPIPS distance of images in [0, 1] (channels first); `spatial` gives the per-pixel map."""
        def prep(v):
            return ((2 * v - 1) - self.shift) / self.scale

        total = 0.0
        for lin, a, b in zip(self.lins, self.taps(prep(pred)), self.taps(prep(gt))):
            # unit-normalise each feature vector over channels (eps as in the official model)
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = lin((a - b) ** 2)
            if spatial:
                total = total + F.interpolate(d, size=pred.shape[-2:], mode="bilinear", align_corners=False)
            else:
                total = total + d.mean((-1, -2), keepdim=True)
        return total[:, 0] if spatial else total.view(-1)


LPIPS_SPECS = {"alex": ("lpips-alex-lin", "alexnet"), "vgg": ("lpips-vgg-lin", "vgg16")}


def load_lpips(net: str = "alex", lin: str | Path | None = None, backbone: str | Path | None = None,
               device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS with its weights found through models.weights (explicit paths, env vars, ~/.cache/monodyn).

    Raises WeightsNotFoundError naming both files when either is missing.
    """
    if net not in LPIPS_SPECS:
        raise InputError(f"LPIPS backbone must be 'alex' or 'vgg', not {net!r}")
    lin_spec, bb_spec = (KNOWN[n] for n in LPIPS_SPECS[net])
    lin_path = require_weights(lin_spec, lin, "--lpips-weights")
    bb_path = require_weights(bb_spec, backbone, "--lpips-backbone")
    lin_state = torch.load(lin_path, map_location="cpu", weights_only=True)
    bb_state = torch.load(bb_path, map_location="cpu", weights_only=True)
    return LPIPS(net).load_weights(lin_state, bb_state).to(device)


def try_load_lpips(net: str = "alex", lin: str | Path | None = None, backbone: str | Path | None = None,
                   device: str | torch.device = "cpu") -> tuple[LPIPS | None, str | None]:
    """(model, None), or (None, "LPIPS skipped: ...") when its weights are not on this machine."""
    try:
        return load_lpips(net, lin, backbone, device), None
    except WeightsNotFoundError as e:
        return None, f"LPIPS skipped: {e}"


def lpips(model: LPIPS, pred: Float[Tensor, "*B H W 3"], gt: Float[Tensor, "*B H W 3"],
          mask: Float[Tensor, "*B H W"] | None = None, batch_size: int = 8) -> Float[Tensor, "*B"]:
    """LPIPS per image; with a mask, DyCheck's variant (masked inputs, spatial map averaged over the mask)."""
    _check_pair(pred, gt, mask)
    H, W = pred.shape[-3:-1]
    batch = pred.shape[:-3]
    device = next(model.parameters()).device
    x = pred.reshape(-1, H, W, 3).permute(0, 3, 1, 2).float()
    y = gt.reshape(-1, H, W, 3).permute(0, 3, 1, 2).float()
    m = None if mask is None else (mask != 0).reshape(-1, 1, H, W).float()
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            if m is None:
                out.append(model(xb, yb).cpu())
                continue
            mb = m[i:i + batch_size].to(device)
            d = model(xb * mb, yb * mb, spatial=True)
            count = mb[:, 0].sum((-1, -2))
            val = (d * mb[:, 0]).sum((-1, -2)) / count.clamp(min=1)
            out.append(torch.where(count > 0, val, torch.full_like(val, math.nan)).cpu())
    return torch.cat(out).reshape(batch)


# ---- sharpness ---------------------------------------------------------------------------------------------

def sharpness(pred: Float[Tensor, "*B H W 3"], gt: Float[Tensor, "*B H W 3"], mask: Float[Tensor, "*B H W"] | None = None
              ) -> Float[Tensor, "*B"]:
    """Gradient-energy ratio per image: mean squared finite difference (both axes, all channels) of `pred`
    over that of `gt`, counting differences whose two pixels are both in the mask (nan where none are).
    1 is as sharp as the ground truth, below 1 blurred, above 1 noisy: a perceptual check that needs no
    weights, since PSNR ranks a blur above sharp but slightly misplaced detail."""
    _check_pair(pred, gt, mask)

    def energy(x: Tensor, m: Tensor) -> Tensor:
        dx, dy = (x[..., :, 1:, :] - x[..., :, :-1, :]) ** 2, (x[..., 1:, :, :] - x[..., :-1, :, :]) ** 2
        mx, my = m[..., :, 1:] * m[..., :, :-1], m[..., 1:, :] * m[..., :-1, :]
        total = (dx.sum(-1) * mx).sum((-1, -2)) + (dy.sum(-1) * my).sum((-1, -2))
        return total / (mx.sum((-1, -2)) + my.sum((-1, -2)))

    m = torch.ones(pred.shape[:-1], dtype=torch.float64) if mask is None else (mask != 0).double()
    return (energy(pred.double(), m) / energy(gt.double(), m)).float()


# ---- per-frame table ---------------------------------------------------------------------------------------

def evaluate(pred: Float[Tensor, "T H W 3"], gt: Float[Tensor, "T H W 3"], mask: Float[Tensor, "T H W"] | None = None,
             lpips_model: LPIPS | None = None, mask_mode: str = "average") -> list[dict]:
    """One row per frame: psnr, ssim (+ lpips when a model is given), and mpsnr, mssim (+ mlpips) with a mask."""
    cols = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
    if lpips_model is not None:
        cols["lpips"] = lpips(lpips_model, pred, gt)
    if mask is not None:
        cols["mpsnr"] = psnr(pred, gt, mask)
        cols["mssim"] = ssim(pred, gt, mask, mask_mode=mask_mode)
        if lpips_model is not None:
            cols["mlpips"] = lpips(lpips_model, pred, gt, mask)
    return [{"frame": t, **{k: float(v[t]) for k, v in cols.items()}} for t in range(pred.shape[0])]


def summarize(rows: list[dict]) -> dict:
    """Mean of every metric column over the frames with a finite value (identical frames give PSNR inf,
    which would make the mean meaningless; they are counted in `<metric>_skipped`)."""
    summary: dict = {"frames": len(rows)}
    keys = [k for k, v in (rows[0] if rows else {}).items() if k != "frame" and isinstance(v, (int, float))]
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None and math.isfinite(r[k])]
        summary[k] = sum(vals) / len(vals) if vals else None
        if len(vals) < len(rows):
            summary[f"{k}_skipped"] = len(rows) - len(vals)
    return summary


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Per-frame metrics as CSV (one header line; columns in the order of the first row)."""
    if not rows:
        raise InputError("no frames to write metrics for")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path: str | Path) -> list[dict]:
    """Rows written by `write_csv` (frame as int, metrics as float)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "frame" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
