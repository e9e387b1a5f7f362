"""RAFT optical flow (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms", ECCV 2020), our implementation.

Module and parameter names follow the authors' code (github.com/princeton-vl/RAFT, `core/`) so that their
checkpoints (`raft-small.pth`, `raft-things.pth`, ... from models.zip) load with strict=True once the
`module.` prefix left by DataParallel is stripped. torchvision's RAFT weight files use other names; they are
renamed on load (`official_from_torchvision`).

Pipeline: a feature encoder maps both images to 1/8-resolution features; their all-pairs dot products form a
4-level correlation pyramid; a context encoder of image 1 gives the GRU's initial state and its context input;
each iteration looks up a (2r+1)^2 window of the pyramid around the current match, the update block (motion
encoder + GRU + flow head) predicts a flow increment, and the 1/8 flow is upsampled x8 (bilinear for the small
model, a learned convex combination for the large one).

Flow convention everywhere: flow[:, 0] is dx (columns), flow[:, 1] is dy (rows), in pixels, pointing from
image 1 to image 2: image2(p + flow(p)) ~ image1(p).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from models.errors import InputError, WeightsNotFoundError
from models.weights import KNOWN, cache_dir

CHECKPOINT_ENV = "MONODYN_RAFT_CHECKPOINT"
OFFICIAL_MODELS_URL = KNOWN["raft-small"].url  # the authors' models.zip (download_models.sh)
SMALL_FILE, LARGE_FILE = "raft-small.pth", "raft-things.pth"


@dataclass
class RAFTConfig:
    small: bool = False
    """RAFT-small (1.0M parameters, bilinear x8 upsampling) instead of RAFT (5.3M, convex upsampling)."""
    iters: int | None = None
    """Refinement iterations when the caller gives none (None: 12 for small, 20 for large)."""
    dropout: float = 0.0
    """Dropout in the encoders (training only; 0 for inference)."""

    @property
    def hidden_dim(self) -> int:
        return 96 if self.small else 128

    @property
    def context_dim(self) -> int:
        return 64 if self.small else 128

    @property
    def corr_levels(self) -> int:
        return 4

    @property
    def corr_radius(self) -> int:
        return 3 if self.small else 4

    @property
    def default_iters(self) -> int:
        return self.iters if self.iters is not None else (12 if self.small else 20)


# ----------------------------------------------------------------------------------------------- encoders

def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(num_groups=groups, num_channels=channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # affine=False: no parameters, as in the official model
    if kind == "none":
        return nn.Sequential()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip (RAFT's encoder block). The projection's norm is registered both as `norm3`
    and inside `downsample`, as in the official code, so checkpoints carry it under both names."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, planes, planes // 8)
        self.norm2 = _norm(norm_fn, planes, planes // 8)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm_fn, planes, planes // 8)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 block with a skip (RAFT-small's encoder block); `norm4` doubles as the projection's norm."""

    def __init__(self, in_planes: int, planes: int, norm_fn: str = "group", stride: int = 1):
        super().__init__()
        mid = planes // 4
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, padding=0)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(mid, planes, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, mid, planes // 8)
        self.norm2 = _norm(norm_fn, mid, planes // 8)
        self.norm3 = _norm(norm_fn, planes, planes // 8)
        self.downsample = None
        if stride != 1:
            self.norm4 = _norm(norm_fn, planes, planes // 8)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.relu(self.norm3(self.conv3(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class Encoder(nn.Module):
    """7x7/2 stem + three stages of two blocks (strides 1, 2, 2) + 1x1 projection: (B,3,H,W) -> (B,C,H/8,W/8).

    Large: ResidualBlocks, widths 64/64/96/128 (official BasicEncoder); small: BottleneckBlocks, widths
    32/32/64/96 (official SmallEncoder).
    """

    def __init__(self, output_dim: int, norm_fn: str, small: bool, dropout: float = 0.0):
        super().__init__()
        widths = (32, 32, 64, 96) if small else (64, 64, 96, 128)
        block = BottleneckBlock if small else ResidualBlock
        self.norm_fn = norm_fn
        self.norm1 = _norm(norm_fn, widths[0], 8)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        stages = []
        in_planes = widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(nn.Sequential(block(in_planes, width, norm_fn, stride), block(width, width, norm_fn, 1)))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[3], output_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(p=dropout) if dropout > 0 else None
        for m in self.modules():  # the authors' initialisation (matters only for training from scratch)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B C h w"]:
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.conv2(x)
        if self.training and self.dropout is not None:
            x = self.dropout(x)
        return x


# ------------------------------------------------------------------------------------------- correlation

class CorrPyramid:
    """All-pairs correlation of two feature maps, average-pooled into `levels` levels, looked up in windows.

    Level l holds, for every pixel of image 1, its correlation with image 2 pooled by 2^l: (B*h*w, 1, h/2^l, w/2^l).
    """

    def __init__(self, fmap1: Float[Tensor, "B C h w"], fmap2: Float[Tensor, "B C h w"], levels: int, radius: int):
        b, c, h, w = fmap1.shape
        corr = torch.einsum("bci,bcj->bij", fmap1.reshape(b, c, h * w), fmap2.reshape(b, c, h * w))
        corr = (corr / c**0.5).reshape(b * h * w, 1, h, w)
        self.pyramid = [corr]
        for _ in range(levels - 1):
            corr = F.avg_pool2d(corr, kernel_size=2, stride=2)
            self.pyramid.append(corr)
        self.radius = radius
        side = torch.linspace(-radius, radius, 2 * radius + 1, device=fmap1.device)
        # Offsets (a, b) applied as (dx, dy) = (a, b) with the FIRST window axis running over x: the official
        # code builds it this way (meshgrid(dy, dx) then adds to (x, y)), and its weights expect that order.
        self.delta = torch.stack(torch.meshgrid(side, side, indexing="ij"), dim=-1)[None]  # (1, 2r+1, 2r+1, 2)

    def __call__(self, coords: Float[Tensor, "B 2 h w"]) -> Float[Tensor, "B K h w"]:
        """Window features around `coords` (pixel (x, y) in image 2 at 1/8 resolution); K = levels*(2r+1)^2."""
        b, _, h, w = coords.shape
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for level, corr in enumerate(self.pyramid):
            pts = centre / 2**level + self.delta
            hl, wl = corr.shape[-2:]
            # grid_sample wants [-1, 1] with align_corners=True: -1 is pixel 0, +1 is pixel size-1
            scale = torch.tensor([2.0 / max(wl - 1, 1), 2.0 / max(hl - 1, 1)], device=coords.device)
            sampled = F.grid_sample(corr, pts * scale - 1, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(sampled.view(b, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------- update blocks

class FlowHead(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


def _gru_step(convz: nn.Conv2d, convr: nn.Conv2d, convq: nn.Conv2d, h: Tensor, x: Tensor) -> Tensor:
    hx = torch.cat([h, x], dim=1)
    z = torch.sigmoid(convz(hx))
    r = torch.sigmoid(convr(hx))
    q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
    return (1 - z) * h + z * q


class ConvGRU(nn.Module):
    """GRU with 3x3 convolutions (RAFT-small)."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        self.convz = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convr = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)
        self.convq = nn.Conv2d(hidden_dim + input_dim, hidden_dim, 3, padding=1)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return _gru_step(self.convz, self.convr, self.convq, h, x)


class SepConvGRU(nn.Module):
    """Two GRU steps, a 1x5 (horizontal) then a 5x1 (vertical): a large receptive field at low cost (RAFT)."""

    def __init__(self, hidden_dim: int = 128, input_dim: int = 192 + 128):
        super().__init__()
        c = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(c, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(c, hidden_dim, (5, 1), padding=(2, 0))

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        h = _gru_step(self.convz1, self.convr1, self.convq1, h, x)
        return _gru_step(self.convz2, self.convr2, self.convq2, h, x)


class SmallMotionEncoder(nn.Module):
    """Correlation features + current flow -> 82 motion channels (80 learned + the flow itself)."""

    def __init__(self, cfg: RAFTConfig):
        super().__init__()
        corr_planes = cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2
        self.convc1 = nn.Conv2d(corr_planes, 96, 1, padding=0)
        self.convf1 = nn.Conv2d(2, 64, 7, padding=3)
        self.convf2 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv = nn.Conv2d(128, 80, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        cor = F.relu(self.convc1(corr))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class BasicMotionEncoder(nn.Module):
    """Correlation features + current flow -> 128 motion channels (126 learned + the flow itself)."""

    def __init__(self, cfg: RAFTConfig):
        super().__init__()
        corr_planes = cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2
        self.convc1 = nn.Conv2d(corr_planes, 256, 1, padding=0)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SmallUpdateBlock(nn.Module):
    def __init__(self, cfg: RAFTConfig, hidden_dim: int = 96):
        super().__init__()
        self.encoder = SmallMotionEncoder(cfg)
        self.gru = ConvGRU(hidden_dim=hidden_dim, input_dim=82 + 64)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=128)

    def forward(self, net: Tensor, inp: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        """-> (new hidden state, flow increment at 1/8 resolution)."""
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, self.flow_head(net)


class BasicUpdateBlock(nn.Module):
    def __init__(self, cfg: RAFTConfig, hidden_dim: int = 128):
        super().__init__()
        self.encoder = BasicMotionEncoder(cfg)
        self.gru = SepConvGRU(hidden_dim=hidden_dim, input_dim=128 + hidden_dim)
        self.flow_head = FlowHead(hidden_dim, hidden_dim=256)
        self.mask = nn.Sequential(
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, 64 * 9, 1, padding=0)
        )

    def forward(self, net: Tensor, inp: Tensor, corr: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        """-> (new hidden state, flow increment at 1/8 resolution)."""
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, self.flow_head(net)

    def upsample_mask(self, net: Tensor) -> Tensor:
        # the 0.25 is the authors' (it down-weights this branch's gradients); kept so their weights fit
        return 0.25 * self.mask(net)


# ------------------------------------------------------------------------------------------------ model

def _coords_grid(b: int, h: int, w: int, device: torch.device) -> Float[Tensor, "B 2 h w"]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys], dim=0).float()[None].repeat(b, 1, 1, 1)


def _upsample_bilinear8(flow: Float[Tensor, "B 2 h w"]) -> Float[Tensor, "B 2 H W"]:
    h, w = flow.shape[-2:]
    return 8 * F.interpolate(flow, size=(8 * h, 8 * w), mode="bilinear", align_corners=True)


def _upsample_convex8(flow: Float[Tensor, "B 2 h w"], mask: Float[Tensor, "B 576 h w"]) -> Float[Tensor, "B 2 H W"]:
    """Each full-resolution pixel is a softmax-weighted mix of the 3x3 coarse flows around its coarse cell."""
    b, _, h, w = flow.shape
    weights = torch.softmax(mask.view(b, 1, 9, 8, 8, h, w), dim=2)
    neigh = F.unfold(8 * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (weights * neigh).sum(dim=2)  # (b, 2, 8, 8, h, w): sub-pixel (i, j) of coarse cell (y, x)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


def _pad8(h: int, w: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding to the next multiple of 8, centred like the official demo."""
    ph, pw = (-h) % 8, (-w) % 8
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class RAFT(nn.Module):
    """RAFT / RAFT-small. `forward` takes two image batches in [0, 255] and returns flow from image 1 to image 2."""

    def __init__(self, cfg: RAFTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else RAFTConfig()
        hdim, cdim = cfg.hidden_dim, cfg.context_dim
        if cfg.small:
            self.fnet = Encoder(128, "instance", small=True, dropout=cfg.dropout)
            self.cnet = Encoder(hdim + cdim, "none", small=True, dropout=cfg.dropout)
            self.update_block = SmallUpdateBlock(cfg, hidden_dim=hdim)
        else:
            self.fnet = Encoder(256, "instance", small=False, dropout=cfg.dropout)
            self.cnet = Encoder(hdim + cdim, "batch", small=False, dropout=cfg.dropout)
            self.update_block = BasicUpdateBlock(cfg, hidden_dim=hdim)

    def _upsample(self, coarse: Tensor, net: Tensor) -> Tensor:
        if self.cfg.small:
            return _upsample_bilinear8(coarse)
        return _upsample_convex8(coarse, self.update_block.upsample_mask(net))

    def _prepare(self, images: Float[Tensor, "N 3 H W"]) -> tuple[Tensor, tuple[int, int, int, int]]:
        """[0, 255] images -> replicate-padded to /8 and scaled to [-1, 1] (the official input normalisation)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"RAFT expects (N,3,H,W) RGB batches, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        pad = _pad8(h, w)
        min_side = 8 * 2 ** (self.cfg.corr_levels - 1)  # the coarsest correlation level must keep >= 1 cell
        if min(h + pad[2] + pad[3], w + pad[0] + pad[1]) < min_side:
            raise InputError(f"RAFT needs images of at least {min_side}x{min_side} px, got {w}x{h}; "
                             "upscale the frames or use DIS flow")
        images = images.float()
        images = F.pad(images, pad, mode="replicate") if any(pad) else images
        return 2 * (images / 255.0) - 1.0, pad

    def _context(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Context encoder -> (initial GRU state, context input) for the frames the flow starts from."""
        net, inp = self.cnet(x).split([self.cfg.hidden_dim, self.cfg.context_dim], dim=1)
        return torch.tanh(net), torch.relu(inp)

    def _refine(
        self, fmap1: Tensor, fmap2: Tensor, net: Tensor, inp: Tensor, iters: int, all_iters: bool,
        pad: tuple[int, int, int, int],
    ) -> list[Tensor]:
        """The recurrent updates from zero flow -> the unpadded full-resolution flow of the last (or every) step."""
        corr_fn = CorrPyramid(fmap1, fmap2, self.cfg.corr_levels, self.cfg.corr_radius)
        b, _, h8, w8 = fmap1.shape
        coords0 = _coords_grid(b, h8, w8, fmap1.device)
        coords1 = coords0.clone()
        flows = []
        for step in range(iters):
            coords1 = coords1.detach()  # the paper stops gradients through the lookup coordinates
            net, delta = self.update_block(net, inp, corr_fn(coords1), coords1 - coords0)
            coords1 = coords1 + delta
            if all_iters or step == iters - 1:
                flows.append(self._unpad(self._upsample(coords1 - coords0, net), pad))
        if not flows:  # iters == 0: the zero initial flow
            flows.append(self._unpad(torch.zeros(b, 2, 8 * h8, 8 * w8, device=fmap1.device), pad))
        return flows

    def forward(
        self,
        image1: Float[Tensor, "B 3 H W"],
        image2: Float[Tensor, "B 3 H W"],
        iters: int | None = None,
        all_iters: bool = False,
    ) -> Float[Tensor, "B 2 H W"] | list[Float[Tensor, "B 2 H W"]]:
        """Flow from image1 to image2 (images: float RGB in [0, 255], any H, W; padded to /8 internally).

        iters: refinement steps (None: cfg.default_iters). all_iters: return the list of every step's
        full-resolution flow (for sequence losses) instead of only the last.
        """
        if image1.shape != image2.shape:
            raise InputError(f"RAFT: the image batches differ in shape, {tuple(image1.shape)} vs {tuple(image2.shape)}")
        iters = self.cfg.default_iters if iters is None else iters
        b = image1.shape[0]
        x, pad = self._prepare(torch.cat([image1, image2], dim=0))
        fmap1, fmap2 = self.fnet(x).float().split(b, dim=0)
        net, inp = self._context(x[:b])
        flows = self._refine(fmap1, fmap2, net, inp, iters, all_iters, pad)
        return flows if all_iters else flows[-1]

    def neighbour_flows(
        self, frames: Float[Tensor, "T 3 H W"], iters: int | None = None
    ) -> tuple[Float[Tensor, "T-1 2 H W"], Float[Tensor, "T-1 2 H W"]]:
        """(forward t -> t+1, backward t+1 -> t) flows of a clip, [0, 255] frames, each frame encoded once.

        Same result as calling forward on every pair both ways, with a third of the encoder work.
        """
        iters = self.cfg.default_iters if iters is None else iters
        x, pad = self._prepare(frames)
        fmap = self.fnet(x).float()
        net, inp = self._context(x)
        src, dst = torch.cat([fmap[:-1], fmap[1:]]), torch.cat([fmap[1:], fmap[:-1]])
        net, inp = torch.cat([net[:-1], net[1:]]), torch.cat([inp[:-1], inp[1:]])
        flow = self._refine(src, dst, net, inp, iters, False, pad)[-1]
        return flow.split(frames.shape[0] - 1, dim=0)

    @staticmethod
    def _unpad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
        left, right, top, bottom = pad
        return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@torch.no_grad()
def estimate_flow(
    model: RAFT,
    frames_a: np.ndarray | Tensor,
    frames_b: np.ndarray | Tensor,
    iters: int | None = None,
    batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Float[Tensor, "N H W 2"]:
    """Flow from frames_a[i] to frames_b[i] for N image pairs, channels last, in batches of `batch`.

    frames_*: (N, H, W, 3) RGB, uint8 in [0, 255] or float in [0, 1] (the house convention). Runs on the model's
    device; returns float32 on the CPU, channels last (dx, dy). progress(n_done, N) after each batch.
    """
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    a, b = frames_a, frames_b
    if tuple(a.shape) != tuple(b.shape) or len(a.shape) != 4 or a.shape[-1] != 3:
        raise InputError(f"estimate_flow: expected two (N,H,W,3) frame arrays of one shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    n = a.shape[0]
    for start in range(0, n, batch):
        ia = _as_float255(a[start : start + batch]).to(device).permute(0, 3, 1, 2)
        ib = _as_float255(b[start : start + batch]).to(device).permute(0, 3, 1, 2)
        out.append(model(ia, ib, iters=iters).permute(0, 2, 3, 1).float().cpu())
        if progress is not None:
            progress(min(start + batch, n), n)
    model.train(was_training)
    return torch.cat(out, dim=0) if out else torch.zeros(0, *a.shape[1:3], 2)


@torch.no_grad()
def estimate_video_flow(
    model: RAFT,
    frames: np.ndarray | Tensor,
    iters: int | None = None,
    batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Float[Tensor, "T-1 H W 2"], Float[Tensor, "T-1 H W 2"]]:
    """Forward (t -> t+1) and backward (t+1 -> t) flow of a clip, channels last, float32 on the CPU.

    frames: (T, H, W, 3) RGB, uint8 or float in [0, 1]. Runs windows of `batch` + 1 frames (2*batch flow
    fields at once) on the model's device, encoding each frame once per window; memory grows with
    batch * (H*W/64)^2 (the correlation volumes). progress(n_done, 2*(T-1)) counts flow fields.
    """
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    x = frames
    if len(x.shape) != 4 or x.shape[-1] != 3 or x.shape[0] < 2:
        raise InputError(f"estimate_video_flow: expected (T>=2,H,W,3) frames, got {tuple(x.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pairs = x.shape[0] - 1
    fws, bws = [], []
    for start in range(0, pairs, batch):
        window = _as_float255(x[start : min(start + batch, pairs) + 1]).to(device).permute(0, 3, 1, 2)
        fw, bw = model.neighbour_flows(window, iters=iters)
        fws.append(fw.permute(0, 2, 3, 1).float().cpu())
        bws.append(bw.permute(0, 2, 3, 1).float().cpu())
        if progress is not None:
            progress(2 * (start + fw.shape[0]), 2 * pairs)
    model.train(was_training)
    return torch.cat(fws), torch.cat(bws)


def _as_float255(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 [0, 255] or float [0, 1] frames -> float32 [0, 255] (called per batch: clips can be long, and a
    read-only memory map is copied one batch at a time)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.array(frames))
    if frames.dtype == torch.uint8:
        return frames.float()
    if frames.is_floating_point():
        if frames.numel() and float(frames.max()) > 1.0 + 1e-3:  # [0, 255] floats would silently give garbage flow
            raise InputError(f"float frames must be in [0, 1] (got values up to {float(frames.max()):.1f}); "
                             "pass uint8 for [0, 255]")
        return frames.float() * 255.0
    raise InputError(f"frames must be uint8 [0,255] or float [0,1], got dtype {frames.dtype}")


# ----------------------------------------------------------------------------------------- checkpoints

def _official_to_torchvision_key(key: str, small: bool) -> str:
    """One official parameter name -> torchvision's name for the same tensor (see torchvision RAFT's modules).

    The official projection norm is stored twice (`norm3`/`norm4` and `downsample.1`); both map to
    torchvision's `downsample.1`.
    """
    m = re.fullmatch(r"(fnet|cnet)\.(.*)", key)
    if m:
        enc = "feature_encoder" if m.group(1) == "fnet" else "context_encoder"
        rest = m.group(2)
        rules = [
            (r"conv1\.(.*)", r"convnormrelu.0.\1"),
            (r"norm1\.(.*)", r"convnormrelu.1.\1"),
            (r"conv2\.(.*)", r"conv.\1"),
            (r"(layer\d\.\d)\.conv(\d)\.(.*)", r"\1.convnormrelu\2.0.\3"),
            (r"(layer\d\.\d)\.downsample\.(\d)\.(.*)", r"\1.downsample.\2.\3"),
        ]
        alias = "4" if small else "3"  # the norm registered twice
        rules.insert(3, (rf"(layer\d\.\d)\.norm{alias}\.(.*)", r"\1.downsample.1.\2"))
        rules.insert(4, (r"(layer\d\.\d)\.norm(\d)\.(.*)", r"\1.convnormrelu\2.1.\3"))
        for pattern, repl in rules:
            if re.fullmatch(pattern, rest):
                return f"{enc}.{re.sub(pattern, repl, rest)}"
    rules = [
        (r"update_block\.encoder\.convc(\d)\.(.*)", r"update_block.motion_encoder.convcorr\1.0.\2"),
        (r"update_block\.encoder\.convf(\d)\.(.*)", r"update_block.motion_encoder.convflow\1.0.\2"),
        (r"update_block\.encoder\.conv\.(.*)", r"update_block.motion_encoder.conv.0.\1"),
        (r"update_block\.gru\.conv([zrq])([12])\.(.*)", r"update_block.recurrent_block.convgru\2.conv\1.\3"),
        (r"update_block\.gru\.conv([zrq])\.(.*)", r"update_block.recurrent_block.convgru1.conv\1.\2"),
        (r"update_block\.flow_head\.(.*)", r"update_block.flow_head.\1"),
        (r"update_block\.mask\.0\.(.*)", r"mask_predictor.convrelu.0.\1"),
        (r"update_block\.mask\.2\.(.*)", r"mask_predictor.conv.\1"),
    ]
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    raise KeyError(f"no torchvision name for RAFT parameter {key!r}")


def torchvision_key_map(small: bool) -> dict[str, str]:
    """official parameter/buffer name -> torchvision name, for every entry of our (= the official) state dict."""
    keys = RAFT(RAFTConfig(small=small)).state_dict().keys()
    return {k: _official_to_torchvision_key(k, small) for k in keys}


def torchvision_from_official(state: dict[str, Tensor], small: bool) -> dict[str, Tensor]:
    """Rename an official-layout state dict to torchvision's `raft_small()` / `raft_large()` layout."""
    mapping = torchvision_key_map(small)
    return {mapping[k]: v for k, v in state.items()}


def official_from_torchvision(state: dict[str, Tensor], small: bool) -> dict[str, Tensor]:
    """Rename a torchvision RAFT state dict (e.g. raft_small_C_T_V2-01064c6d.pth) to the official layout."""
    mapping = torchvision_key_map(small)
    missing = sorted(set(mapping.values()) - set(state))
    unused = sorted(set(state) - set(mapping.values()))
    if missing or unused:
        raise InputError(
            f"not a torchvision RAFT-{'small' if small else 'large'} state dict: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unused[:3]}{'...' if len(unused) > 3 else ''}"
        )
    return {k: state[tv] for k, tv in mapping.items()}


def is_small_state_dict(state: dict[str, Tensor]) -> bool:
    """Tell RAFT-small from RAFT by its keys (official or torchvision layout)."""
    if "update_block.gru.convz.weight" in state or "update_block.recurrent_block.convgru1.convz.weight" in state:
        return "update_block.recurrent_block.convgru2.convz.weight" not in state
    if "update_block.gru.convz1.weight" in state or "update_block.recurrent_block.convgru2.convz.weight" in state:
        return False
    raise InputError("not a RAFT state dict: no GRU weights (update_block.gru.* / update_block.recurrent_block.*)")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a RAFT checkpoint (.pth/.pt or .safetensors) as an official-layout state dict.

    Strips DataParallel's `module.` prefix, unwraps {"state_dict": ...}/{"model": ...}, renames torchvision keys.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a checkpoint (the library's own words stay in the cause)
        raise InputError(f"cannot read RAFT checkpoint {path} (not a PyTorch checkpoint, or damaged); re-download "
                         "it") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"{path} is not a RAFT state dict (expected a mapping of names to tensors)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if any(k.startswith("feature_encoder.") for k in state):
        state = official_from_torchvision(state, is_small_state_dict(state))
    return state


def find_checkpoint(checkpoint: Path | str | None = None, small: bool | None = None) -> Path:
    """Resolve the RAFT weights file: explicit path, $MONODYN_RAFT_CHECKPOINT, ~/.cache/monodyn, else raise."""
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"RAFT checkpoint not found: {p} (pass an existing raft-small.pth / "
                                       "raft-things.pth)")
        return p
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"${CHECKPOINT_ENV}={env} does not exist; point it at raft-small.pth or "
                                       "raft-things.pth")
        return p
    specs = {True: ["raft-small"], False: ["raft-things"], None: ["raft-small", "raft-things"]}[small]
    tried = []
    for name in specs:
        for filename in KNOWN[name].filenames:
            tried.append(str(cache_dir() / filename))
            if (cache_dir() / filename).is_file():
                return cache_dir() / filename
    raise WeightsNotFoundError(
        f"RAFT weights not found (looked for {', '.join(tried)}): run `monodyn weights fetch {specs[0]}`, or "
        f"download the authors' models.zip ({OFFICIAL_MODELS_URL}, linked from github.com/princeton-vl/RAFT), "
        f"unzip it and copy {' or '.join(KNOWN[n].member for n in specs)} to {cache_dir()}/, or pass "
        f"--raft-checkpoint PATH / set {CHECKPOINT_ENV}; or use the DIS flow backend."
    )


def load_raft(
    checkpoint: Path | str | None = None, small: bool | None = None, device: str | torch.device = "cpu"
) -> RAFT:
    """A RAFT in eval mode with pretrained weights (official or torchvision files, .pth or .safetensors).

    small: which variant to expect (None: infer it from the file's keys). Raises WeightsNotFoundError when no
    file is found, InputError when the file is unreadable or of the other variant.
    """
    path = find_checkpoint(checkpoint, small)
    state = read_state_dict(path)
    file_small = is_small_state_dict(state)
    if small is not None and small != file_small:
        raise InputError(
            f"{path} holds RAFT-{'small' if file_small else 'large'} weights but "
            f"RAFT-{'small' if small else 'large'} was asked for"
        )
    model = RAFT(RAFTConfig(small=file_small))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"{path} does not fit the RAFT architecture ({first}); "
                         "is it an official RAFT checkpoint?") from e
    return model.to(device).eval()
