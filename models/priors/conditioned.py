"""The small RGB-D prior shipped with monodyn: a conditional denoiser trained from scratch (`monodyn train prior`).

A generator trained from scratch on a few minutes of CPU predicts the mean of what it cannot know, so this one
is told what the fit already knows at the novel view: the render (rgb, alpha, normalised disparity) and the
nearest input frame. It then only has to inpaint the empty parts and sharpen the blurred ones. Input channels:

    noisy RGB-D x_t (4: the render's rgb and normalised disparity in [-1, 1], plus sigma * noise), render rgb (3),
    render alpha (1), render disparity (1, normalised, 0 where alpha is low), nearest input frame (3), log sigma (1)

Output: the clean RGB-D image x0 (4 channels in [-1, 1]); a denoiser in the x0 parameterisation, so the
score-distillation gradient at noise level sigma is (x - x0_hat) (`NovelViewPrior`). A U-Net (one block at full size, three levels
below it) with a global-context branch (the mean feature of the image, so a hole far from any seen pixel still gets the
scene's colours). Checkpoint: `config.json` (sizes, format) + `model.safetensors`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.errors import InputError
from models.files import atomic_write

FORMAT = 1
IN_CHANNELS = 13
SHIPPED = Path(__file__).resolve().parent / "pretrained" / "rgbd-small"


@dataclass
class PriorSizes:
    width: int = 32  # channels at full resolution (x2 and x3 at the lower levels)
    blocks: int = 1  # residual blocks per level


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class ConditionedPrior(nn.Module):
    def __init__(self, sizes: PriorSizes | None = None):
        super().__init__()
        self.sizes = sizes or PriorSizes()
        c = self.sizes.width
        widths = (c, 2 * c, 3 * c)  # at 1/2, 1/4 and 1/8 of the image size (full size: one block, for speed)
        self.inp = nn.Conv2d(IN_CHANNELS, c, 3, padding=1)
        self.down = nn.ModuleList()
        cin = c
        for w in widths:
            self.down.append(nn.Sequential(*[_Block(cin if b == 0 else w, w) for b in range(self.sizes.blocks)]))
            cin = w
        self.context = nn.Linear(widths[-1], widths[-1])
        self.up = nn.ModuleList()
        for i in range(len(widths) - 2, -1, -1):
            self.up.append(nn.Sequential(_Block(widths[i + 1] + widths[i], widths[i]),
                                         *[_Block(widths[i], widths[i]) for _ in range(self.sizes.blocks - 1)]))
        self.full = _Block(2 * c, c)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 4, 3, padding=1))

    def forward(self, x_t: Float[Tensor, "B 4 H W"], render: Float[Tensor, "B 3 H W"], alpha: Float[Tensor, "B 1 H W"],
                disparity: Float[Tensor, "B 1 H W"], reference: Float[Tensor, "B 3 H W"], sigma: Float[Tensor, " B"]
                ) -> Float[Tensor, "B 4 H W"]:
        """x0 estimate (rgb, normalised disparity; both in [-1, 1]) of the clean image under noisy `x_t` at noise
        level `sigma` (B,). render and reference in [-1, 1], alpha in [0, 1], disparity normalised (0 where the
        render is empty). H and W divisible by 8."""
        if x_t.shape[-1] % 8 or x_t.shape[-2] % 8:
            raise InputError(f"the shipped prior needs image sides divisible by 8, got {tuple(x_t.shape[-2:])}")
        log_sigma = sigma.log()[:, None, None, None].expand(-1, 1, *x_t.shape[-2:])
        full = self.inp(torch.cat([x_t, render, alpha, disparity * alpha, reference, log_sigma], 1))
        h, skips = full, []
        for level in self.down:
            h = level(F.avg_pool2d(h, 2))
            skips.append(h)
        h = h + self.context(h.mean((-1, -2)))[..., None, None]
        for level, skip in zip(self.up, reversed(skips[:-1])):
            h = level(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        h = self.full(torch.cat([F.interpolate(h, size=full.shape[-2:], mode="bilinear", align_corners=False), full], 1))
        return torch.tanh(self.out(h))

    def save(self, folder: Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, str(p)))
        meta = {"format": FORMAT, "sizes": asdict(self.sizes), **(extra or {})}
        atomic_write(folder / "config.json", lambda p: p.write_text(json.dumps(meta, indent=2)))


def load_conditioned_prior(folder: Path | None = None, device: str | torch.device = "cpu") -> ConditionedPrior:
    """The prior in `folder` (default: the one shipped in the package), in eval mode."""
    folder = Path(folder or SHIPPED)
    try:
        meta = json.loads((folder / "config.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise InputError(f"{folder} is not a prior written by `monodyn train prior` ({e})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{folder} holds prior format {meta.get('format')}, this monodyn reads {FORMAT}: train it "
                         "again with `monodyn train prior`")
    model = ConditionedPrior(PriorSizes(**meta["sizes"]))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def noise_levels(n: int, generator: torch.Generator, lo: float = 0.02, hi: float = 2.0,
                 device: str | torch.device = "cpu") -> Float[Tensor, " n"]:
    """Log-uniform noise levels in [lo, hi] (training draws; every level from fine detail to the whole image)."""
    u = torch.rand(n, generator=generator, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


class ConditionedScore:
    """Score distillation from the shipped prior, in its x0 parameterisation: the render's RGB-D x (in [-1, 1]) is
    noised at a level sigma drawn from `sigmas`, the prior estimates x0 from it and from the conditions, and the
    loss 0.5 |x - sg(x0_hat)|^2 has the gradient (x - x0_hat), the SDS direction of a denoiser that predicts x0.
    `fill=True` uses `fill_sigma`, the level whose estimate filled the holes of held-out scenes best (the hook
    lifts it into the empty pixels; tests/test_priors.py checks it against a flat fill)."""

    def __init__(self, model: ConditionedPrior, sigmas: tuple[float, float] = (0.1, 0.6), fill_sigma: float = 0.5):
        self.model, self.sigmas, self.fill_sigma = model.requires_grad_(False), sigmas, fill_sigma

    def __call__(self, rgb: Float[Tensor, "B 3 H W"], alpha: Float[Tensor, "B 1 H W"],
                 disparity: Float[Tensor, "B 1 H W"], reference: Float[Tensor, "B 3 H W"], generator: torch.Generator,
                 fill: bool = False) -> tuple[Tensor, Float[Tensor, "B 3 H W"], Float[Tensor, "B 1 H W"]]:
        """(loss, x0 rgb in [0,1], x0 normalised disparity). Sides are padded to multiples of 8 and cropped back."""
        B, _, H, W = rgb.shape
        x = torch.cat([rgb * 2 - 1, ((disparity * alpha).clamp(-0.25, 1.25) * 2 - 1)], 1)  # as in training
        lo, hi = self.sigmas
        u = torch.rand(B, generator=generator).to(rgb.device)
        sigma = torch.full((B,), self.fill_sigma, device=rgb.device) if fill else lo + (hi - lo) * u
        noise = torch.randn(x.shape, generator=generator).to(rgb.device)
        pad = (0, (-W) % 8, 0, (-H) % 8)
        p = lambda a: F.pad(a, pad, mode="replicate")
        with torch.no_grad():
            x0 = self.model(p(x.detach() + sigma[:, None, None, None] * noise), p(rgb.detach() * 2 - 1), p(alpha),
                            p(disparity.detach()), p(reference * 2 - 1), sigma)[..., :H, :W]
        loss = 0.5 * (x - x0).square().sum((1, 2, 3)).mean() / (H * W)
        return loss, x0[:, :3] * 0.5 + 0.5, x0[:, 3:] * 0.5 + 0.5
