"""The DyST network: SRT-style encoder, joint camera/dynamics estimator, pixel-query decoder, orbit head.

    3 views --CNN--> tokens (+ learned 2D position, canonical/other view embedding) --transformer--> Z
    target view --CNN--> tokens + a learned camera token --[self-attn, cross-attn to Z, MLP] x L-->
        camera latent = linear(camera token), dynamics latent = linear(mean of the patch tokens)
    pixel (x, y) in [-1, 1] -> Fourier features ++ camera latent ++ dynamics latent --MLP--> query
        --[cross-attn to Z, MLP] x L--> RGB (sigmoid)

No poses enter anywhere: cameras are known to the model only through the camera latent (as in RUST/DyST).
The orbit head maps (camera latent of a reference view, d-azimuth, d-elevation) to a camera latent; it is
residual and exactly the identity at zero motion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from models.dyst.config import DySTConfig


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, N, D = x.shape
        h = self.heads
        q = self.q(x).view(B, N, h, D // h).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-LN block: [self-attention], [cross-attention to a context], MLP (each residual)."""

    def __init__(self, cfg: DySTConfig, self_attn: bool, cross_attn: bool):
        super().__init__()
        d = cfg.dim
        self.self_attn = Attention(d, cfg.heads) if self_attn else None
        self.norm_s = nn.LayerNorm(d) if self_attn else None
        self.cross_attn = Attention(d, cfg.heads) if cross_attn else None
        self.norm_c = nn.LayerNorm(d) if cross_attn else None
        self.norm_m = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.self_attn is not None:
            y = self.norm_s(x)
            x = x + self.self_attn(y, y)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_c(x), context)
        return x + self.mlp(self.norm_m(x))


class PatchCNN(nn.Module):
    """Image (B,h,w,3) in [0,1] -> tokens (B, rows*cols, dim) with a learned 2D position embedding."""

    def __init__(self, cfg: DySTConfig):
        super().__init__()
        layers, c = [nn.Conv2d(3, cfg.channels[0], 3, 1, 1), nn.ReLU()], cfg.channels[0]
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c, c_out, 3, 2, 1), nn.ReLU()]
            c = c_out
        layers += [nn.Conv2d(c, cfg.dim, 3, 2, 1)]
        self.net = nn.Sequential(*layers)
        rows, cols = cfg.grid
        self.pos = nn.Parameter(torch.randn(rows * cols, cfg.dim) * 0.02)

    def forward(self, images: Float[Tensor, "B h w 3"]) -> Float[Tensor, "B n D"]:
        x = self.net(images.permute(0, 3, 1, 2) * 2.0 - 1.0)
        return x.flatten(2).transpose(1, 2) + self.pos


def fourier(xy: Float[Tensor, "*B 2"], octaves: int) -> Float[Tensor, "*B F"]:
    """(x, y) and sin/cos of 2^k * pi * (x, y) for k < octaves."""
    freqs = (2.0 ** torch.arange(octaves, device=xy.device, dtype=xy.dtype)) * math.pi
    a = (xy[..., None] * freqs).flatten(-2)
    return torch.cat([xy, torch.sin(a), torch.cos(a)], -1)


def pixel_queries(height: int, width: int, device=None) -> Float[Tensor, "P 2"]:
    """Normalised pixel-centre coordinates in [-1, 1] of an image (row-major): the decoder's queries. Any
    output size maps onto the same square, so a model trained at w x h decodes at any resolution."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)


class DyST(nn.Module):
    def __init__(self, cfg: DySTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.dim
        self.cnn = PatchCNN(cfg)
        self.view_embed = nn.Parameter(torch.randn(2, d) * 0.02)  # 0: canonical (first) view, 1: the others
        self.encoder = nn.ModuleList(Block(cfg, True, False) for _ in range(cfg.encoder_layers))
        self.z_norm = nn.LayerNorm(d)
        self.cam_token = nn.Parameter(torch.randn(d) * 0.02)
        self.estimator = nn.ModuleList(Block(cfg, True, True) for _ in range(cfg.estimator_layers))
        self.est_norm = nn.LayerNorm(d)
        self.to_cam = nn.Linear(d, cfg.latent)
        self.to_dyn = nn.Linear(d, cfg.latent)
        q_in = 2 + 4 * cfg.octaves + 2 * cfg.latent
        self.query = nn.Sequential(nn.Linear(q_in, d), nn.GELU(), nn.Linear(d, d))
        self.decoder = nn.ModuleList(Block(cfg, False, True) for _ in range(cfg.decoder_layers))
        self.to_rgb = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3))
        self.head = nn.Sequential(nn.Linear(cfg.latent + 3, cfg.head_hidden), nn.GELU(),
                                  nn.Linear(cfg.head_hidden, cfg.head_hidden), nn.GELU(),
                                  nn.Linear(cfg.head_hidden, cfg.latent))

    # ---- the three parts ---------------------------------------------------------------------------------

    def encode(self, views: Float[Tensor, "B V h w 3"]) -> Float[Tensor, "B M D"]:
        """Set-latent scene representation Z from V input views (the first one is the canonical view)."""
        B, V = views.shape[:2]
        tokens = self.cnn(views.flatten(0, 1)).unflatten(0, (B, V))  # (B,V,n,D)
        which = torch.ones(V, dtype=torch.long, device=views.device)
        which[0] = 0
        x = (tokens + self.view_embed[which][None, :, None]).flatten(1, 2)
        for blk in self.encoder:
            x = blk(x)
        return self.z_norm(x)

    def estimate(self, z: Float[Tensor, "B M D"], images: Float[Tensor, "B h w 3"]
                 ) -> tuple[Float[Tensor, "B L"], Float[Tensor, "B L"]]:
        """Camera latent and dynamics latent of one view per scene (one shared transformer: the camera
        latent from a learned output token, the dynamics latent from average pooling)."""
        x = self.cnn(images)
        x = torch.cat([self.cam_token.expand(len(x), 1, -1), x], 1)
        for blk in self.estimator:
            x = blk(x, z)
        x = self.est_norm(x)
        return self.to_cam(x[:, 0]), self.to_dyn(x[:, 1:].mean(1))

    def decode(self, z: Float[Tensor, "B M D"], xy: Float[Tensor, "B P 2"], cam: Float[Tensor, "B L"],
               dyn: Float[Tensor, "B L"]) -> Float[Tensor, "B P 3"]:
        """Colours at normalised pixel positions `xy` of the view with these control latents."""
        P = xy.shape[1]
        q = torch.cat([fourier(xy, self.cfg.octaves), cam[:, None].expand(-1, P, -1),
                       dyn[:, None].expand(-1, P, -1)], -1)
        x = self.query(q)
        for blk in self.decoder:
            x = blk(x, z)
        return torch.sigmoid(self.to_rgb(x))

    def orbit(self, cam: Float[Tensor, "B L"], d_azimuth: Float[Tensor, " B"], d_elevation: Float[Tensor, " B"]
              ) -> Float[Tensor, "B L"]:
        """Camera latent of the reference view's camera moved by (d-azimuth, d-elevation) degrees about the
        look-at point (azimuth counter-clockwise about up). Identity at zero motion."""
        def g(daz: Tensor, del_: Tensor) -> Tensor:
            a, e = torch.deg2rad(daz), torch.deg2rad(del_)
            return self.head(torch.cat([cam, torch.stack([torch.sin(a), torch.cos(a) - 1.0, e], -1)], -1))

        zero = torch.zeros_like(d_azimuth)
        # The bracket makes zero motion exact: (cam + x) - x would round.
        return cam + (g(d_azimuth, d_elevation) - g(zero, zero))

    def render_image(self, z: Float[Tensor, "B M D"], cam: Float[Tensor, "B L"], dyn: Float[Tensor, "B L"],
                     height: int, width: int, max_queries: int = 1 << 15) -> Float[Tensor, "B H W 3"]:
        """Decode whole images, in chunks of at most `max_queries` pixels per scene."""
        xy = pixel_queries(height, width, device=z.device)
        out = [self.decode(z, xy[None, i:i + max_queries].expand(len(z), -1, -1), cam, dyn)
               for i in range(0, len(xy), max_queries)]
        return torch.cat(out, 1).view(len(z), height, width, 3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
