"""Which pixels to train on, and which novel cameras to show a guidance prior.

`PixelSampler` draws training pixels over all frames with probability proportional to a weight per block of
cell x cell pixels:
    weight = 1 + dynamic_boost * (fraction of moving pixels in the block, from the instance masks)
               + error_boost * (running photometric error of the block / its mean over all blocks)
so moving objects (a small part of each frame, yet the hard part) get many more rays, and without masks the
running error finds them (and any other region the model still gets wrong). Within a block the pixel is
uniform. Drawing is an inverse-CDF lookup (`searchsorted`) over the blocks: O(batch log blocks) per step.
The weights are rebuilt every `rebuild_every` steps from the error map (exponential moving average of the
per-ray squared error, updated from every batch).

`orbit_cameras` turns input cameras about their look-at point (novel views for the guidance hook).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.cameras import Cameras


class PixelSampler:
    def __init__(self, num_frames: int, height: int, width: int, cell: int = 4,
                 dynamic_mask: Bool[Tensor, "T H W"] | None = None, dynamic_boost: float = 4.0,
                 error_boost: float = 1.0, decay: float = 0.9, rebuild_every: int = 64, device=None):
        self.T, self.H, self.W, self.cell = num_frames, height, width, max(1, int(cell))
        self.hc, self.wc = math.ceil(height / self.cell), math.ceil(width / self.cell)
        self.dynamic_boost, self.error_boost = dynamic_boost, error_boost
        self.decay, self.rebuild_every = decay, rebuild_every
        self.device = device
        if dynamic_mask is not None and dynamic_boost > 0:
            m = dynamic_mask.float()[:, None].to(device)
            pad = (0, self.wc * self.cell - width, 0, self.hc * self.cell - height)
            self.dyn_frac = F.avg_pool2d(F.pad(m, pad), self.cell)[:, 0].reshape(-1)
        else:
            self.dyn_frac = None
        self.error = torch.zeros(self.T * self.hc * self.wc, device=device)
        self.cdf = self._cdf()

    def _cdf(self) -> Float[Tensor, "B"]:
        w = torch.ones(self.T * self.hc * self.wc, device=self.device, dtype=torch.float64)
        if self.dyn_frac is not None:
            w = w + self.dynamic_boost * self.dyn_frac.double()
        mean_err = float(self.error.mean())
        if self.error_boost > 0 and mean_err > 0:
            w = w + self.error_boost * self.error.double() / mean_err
        cdf = torch.cumsum(w, 0)
        return cdf / cdf[-1]

    def sample(self, n: int, generator: torch.Generator | None = None
               ) -> tuple[Int[Tensor, "N"], Int[Tensor, "N"], Int[Tensor, "N"]]:
        """n pixels: (frame, row, column) indices."""
        u = torch.rand(n, device=self.device, dtype=torch.float64, generator=generator)
        block = torch.searchsorted(self.cdf, u, right=True).clamp_max(self.cdf.numel() - 1)
        frame = block // (self.hc * self.wc)
        rest = block % (self.hc * self.wc)
        y0, x0 = (rest // self.wc) * self.cell, (rest % self.wc) * self.cell
        # blocks on the right / bottom edge may be narrower than cell
        jitter = torch.rand(n, 2, device=self.device, generator=generator)
        hgt = (self.H - y0).clamp_max(self.cell)
        wid = (self.W - x0).clamp_max(self.cell)
        row = y0 + (jitter[:, 0] * hgt).long().clamp_max(hgt - 1)
        col = x0 + (jitter[:, 1] * wid).long().clamp_max(wid - 1)
        return frame, row, col

    def block_index(self, frame: Int[Tensor, "N"], row: Int[Tensor, "N"], col: Int[Tensor, "N"]) -> Int[Tensor, "N"]:
        return (frame * self.hc + row // self.cell) * self.wc + col // self.cell

    @torch.no_grad()
    def update(self, frame: Int[Tensor, "N"], row: Int[Tensor, "N"], col: Int[Tensor, "N"],
               error: Float[Tensor, "N"], step: int) -> None:
        """Fold this batch's per-ray errors into the running error map; rebuild the weights on schedule."""
        if self.error_boost <= 0:
            return
        idx = self.block_index(frame, row, col)
        sums = torch.zeros_like(self.error).index_add_(0, idx, error.float())
        counts = torch.zeros_like(self.error).index_add_(0, idx, torch.ones_like(error, dtype=torch.float32))
        hit = counts > 0
        first = hit & (self.error == 0)  # first visit: take the value, no decay from zero
        mean = sums / counts.clamp_min(1)
        self.error = torch.where(first, mean, torch.where(hit, self.decay * self.error + (1 - self.decay) * mean,
                                                          self.error))
        if (step + 1) % self.rebuild_every == 0:
            self.cdf = self._cdf()

    def state_dict(self) -> dict[str, Tensor]:
        return {"error": self.error.cpu(), "cdf": self.cdf.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.error = state["error"].to(self.device)
        self.cdf = state["cdf"].to(self.device)


def rotation_about_axis(axis: Float[Tensor, "N 3"], angle: Float[Tensor, "N"]) -> Float[Tensor, "N 3 3"]:
    """Rodrigues: rotation by `angle` (radians) about unit `axis`."""
    k = F.normalize(axis, dim=-1)
    zero = torch.zeros_like(angle)
    kx, ky, kz = k.unbind(-1)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    eye = torch.eye(3, device=axis.device, dtype=axis.dtype).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def orbit_cameras(cams: Cameras, pivot_distance: Float[Tensor, "N"], degrees: Float[Tensor, "N"]) -> Cameras:
    """Each camera turned by `degrees` about its own up axis through the point `pivot_distance` ahead of it
    on its optical axis; it keeps looking at that point. World up is unknown after SfM, the camera's is not."""
    w2c = cams.w2c
    R = w2c[:, :3, :3]
    center = cams.centers
    forward, up = R[:, 2], -R[:, 1]  # rows of R are the camera axes in world coordinates (y points down)
    pivot = center + pivot_distance[:, None] * forward
    rot = rotation_about_axis(up, torch.deg2rad(degrees))
    new_center = pivot + (rot @ (center - pivot)[..., None])[..., 0]
    R_new = R @ rot.transpose(-1, -2)  # camera-to-world rotation R^T becomes rot R^T
    out = torch.eye(4, device=w2c.device, dtype=w2c.dtype).repeat(len(cams), 1, 1)
    out[:, :3, :3] = R_new
    out[:, :3, 3] = -(R_new @ new_center[..., None])[..., 0]
    return Cameras(cams.K.clone(), out, cams.width, cams.height)
