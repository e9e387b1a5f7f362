"""Training of the shipped RGB-D prior (`monodyn train prior`): a conditional denoiser in the x0 parameterisation.

Each step draws a batch of pairs (monodyn_cli/prior_data.py), flips half of them left-right, blurs each render
by a random amount (a fit's render is softer than the frame it was fitted to), noises the *render's* RGB-D at a
log-uniform level - as score distillation will: the noisy input is always the fit's render, never the truth, so
the prior cannot lean on a noised copy of the answer and has to inpaint from the conditions - and regresses the
clean target: L1 on rgb, L1 on the normalised disparity where the pair has depth, the empty pixels of the render
weighted `HOLE_WEIGHT` times (they are what the prior is for).
Runs through models/fitting.run_fit (budgets, resume, metrics.jsonl).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.priors.conditioned import ConditionedPrior, PriorSizes, noise_levels

HOLE_WEIGHT = 2.0
MAX_BLUR = 1.2  # pixels (Gaussian sigma) of the strongest render blur


@dataclass
class PriorTrainConfig:
    batch: int = 12
    lr: float = 1e-3
    seed: int = 0
    width: int = 32  # model channels (PriorSizes.width)
    init: str = ""  # start from the weights in this folder (a prior written by `monodyn train prior`)


class PairSet:
    """The pair arrays of one npz file, as tensors (uint8 / float16 kept compact until a batch is drawn)."""

    def __init__(self, path: Path):
        with np.load(path) as data:
            self.arrays = {k: torch.from_numpy(data[k]) for k in data.files}
        self.n = len(self.arrays["target"])

    def batch(self, idx: Tensor, device: torch.device) -> dict[str, Tensor]:
        a = {k: v[idx].to(device) for k, v in self.arrays.items()}
        img = lambda x: x.float().permute(0, 3, 1, 2) / 127.5 - 1  # uint8 (B,H,W,3) -> [-1, 1] (B,3,H,W)
        return {"target": torch.cat([img(a["target"]), (a["target_disp"].float()[:, None] * 2 - 1).clamp(-1, 1)], 1),
                "render": img(a["render"]), "alpha": a["alpha"].float()[:, None] / 255,
                "disparity": a["render_disp"].float()[:, None], "reference": img(a["reference"]),
                "has_depth": a["has_depth"].float()}


def blur(x: Float[Tensor, "B C H W"], sigma: Float[Tensor, " B"]) -> Float[Tensor, "B C H W"]:
    """Separable Gaussian blur with a per-image sigma in pixels (0 = unchanged)."""
    r = math.ceil(3 * MAX_BLUR)
    offs = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (offs[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(-1, keepdim=True)  # (B, 2r+1)
    B, C, H, W = x.shape
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="replicate")
    kk = k.repeat_interleave(C, 0)
    y = F.conv2d(y, kk[:, None, None, :], groups=B * C)
    y = F.conv2d(y, kk[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def batch_loss(model: ConditionedPrior, b: dict[str, Tensor], sigma: Tensor, noise: Tensor, blur_sigma: Tensor
               ) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch (see the module docstring) and its parts."""
    render = blur(b["render"] * 0.5 + 0.5, blur_sigma) * 2 - 1  # blurred as premultiplied colour over black
    x = torch.cat([render, (b["disparity"] * b["alpha"]).clamp(-0.25, 1.25) * 2 - 1], 1)
    x_t = x + sigma[:, None, None, None] * noise
    x0 = model(x_t, render, b["alpha"], b["disparity"], b["reference"], sigma)
    weight = 1 + (HOLE_WEIGHT - 1) * (b["alpha"] < 0.5).float()
    rgb = ((x0[:, :3] - b["target"][:, :3]).abs() * weight).mean()
    depth_mask = b["has_depth"][:, None, None, None] * weight
    disp = ((x0[:, 3:] - b["target"][:, 3:]).abs() * depth_mask).sum() / depth_mask.sum().clamp_min(1)
    holes = (b["alpha"] < 0.5).float()
    err = ((x0.detach()[:, :3] - b["target"][:, :3]) / 2) ** 2
    hole_psnr = -10 * math.log10(max(float((err * holes).sum()
                                           / (3 * holes.sum()).clamp_min(1)), 1e-10))
    return rgb + disp, {"rgb": float(rgb.detach()), "disparity": float(disp.detach()), "hole_psnr": hole_psnr}


class PriorTrainTask:
    """The `models.fitting.FitTask` of the shipped prior (AdamW, warm-up then cosine decay)."""

    def __init__(self, data: PairSet, cfg: PriorTrainConfig, device: torch.device, info: dict | None = None):
        self.data, self.cfg, self.device, self.info = data, cfg, device, info or {}
        torch.manual_seed(cfg.seed)
        self.model = ConditionedPrior(PriorSizes(width=cfg.width)).to(device)
        if cfg.init:
            from models.priors.conditioned import load_conditioned_prior

            self.model = load_conditioned_prior(Path(cfg.init), device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def _lr(self, progress: float) -> float:
        warm = min(1.0, progress / 0.03)
        return self.cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        n = self.cfg.batch
        idx = torch.randint(0, self.data.n, (n,), generator=self.gen)
        b = self.data.batch(idx, self.device)
        flip = torch.rand(n, generator=self.gen) < 0.5
        for k in ("target", "render", "alpha", "disparity", "reference"):
            b[k] = torch.where(flip.to(self.device)[:, None, None, None], b[k].flip(-1), b[k])
        sigma = noise_levels(n, self.gen).to(self.device)
        noise = torch.randn(b["target"].shape, generator=self.gen).to(self.device)
        blur_sigma = (torch.rand(n, generator=self.gen) * MAX_BLUR).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(progress)
        loss, parts = batch_loss(self.model, b, sigma, noise, blur_sigma)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return {"loss": float(loss.detach()), **parts}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])

    def save(self, out: Path, step: int, seconds: float) -> None:
        self.model.save(out, {"train": asdict(self.cfg), "step": step, "seconds": round(seconds, 1), **self.info})
