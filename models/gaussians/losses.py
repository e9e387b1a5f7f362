"""Loss terms of the dynamic Gaussian fit: photometric (L1 + D-SSIM), depth (metric for SfM points, affine-invariant
for dense predictions), 2D tracks through rendered 3D positions, masks, and motion smoothness."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.cameras import project
from models.filters import gaussian_window, separable_blur


def ssim(a: Float[Tensor, "H W C"], b: Float[Tensor, "H W C"]) -> Float[Tensor, ""]:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5, valid region) of two images in [0, 1]. The five local
    statistics are blurred in one grouped convolution (fewer, larger ops: ~20% faster forward+backward on a CPU)."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    c = x.shape[1]
    mx, my, sxx, syy, sxy = separable_blur(torch.cat([x, y, x * x, y * y, x * y], 1), gaussian_window()).split(c, 1)
    vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def photometric_loss(pred: Float[Tensor, "H W 3"], target: Float[Tensor, "H W 3"], ssim_weight: float = 0.2
                     ) -> Float[Tensor, ""]:
    """(1 - w) L1 + w (1 - SSIM), as 3DGS."""
    return (1 - ssim_weight) * (pred - target).abs().mean() + ssim_weight * (1 - ssim(pred, target))


def metric_disparity_loss(pred_depth: Float[Tensor, " M"], prior_depth: Float[Tensor, " M"], unit: float
                          ) -> Float[Tensor, ""]:
    """Mean |unit / pred - unit / prior|: disparity error in units of the scene radius (near points weigh more,
    as their depth is better known)."""
    if pred_depth.numel() == 0:
        return pred_depth.sum() * 0
    return (unit / pred_depth.clamp(min=1e-6) - unit / prior_depth).abs().mean()


def affine_invariant_loss(pred: Float[Tensor, " M"], prior: Float[Tensor, " M"]) -> Float[Tensor, ""]:
    """L1 after the least-squares scale and shift that best map `prior` onto `pred` (MiDaS-style; the prior's
    scale and shift are unknown per frame). Both in the same space (e.g. disparity)."""
    if pred.numel() < 2:
        return pred.sum() * 0
    a = torch.stack([prior, torch.ones_like(prior)], -1)
    sol = torch.linalg.lstsq(a, pred.detach()[:, None]).solution
    return (pred - (a @ sol)[:, 0]).abs().mean() / pred.detach().abs().mean().clamp(min=1e-6)


def track_loss(positions: Float[Tensor, "H W 3"], alpha: Float[Tensor, "H W"], target_xy: Float[Tensor, "H W 2"],
               valid: Bool[Tensor, "H W"], K: Float[Tensor, "3 3"], w2c: Float[Tensor, "4 4"], scale: float
               ) -> Float[Tensor, ""]:
    """Rendered 3D positions (composited, not yet divided by alpha) projected with another frame's camera must land
    on the tracked pixel: mean L1 in pixels x `scale`, over valid pixels the render covers."""
    sel = valid & (alpha.detach() > 0.5)
    if not bool(sel.any()):
        return positions.sum() * 0
    xy, _ = project(positions[sel] / alpha[sel, None], K, w2c)
    return ((xy - target_xy[sel]).abs().sum(-1) * scale).mean()


def motion_smoothness(translations: Float[Tensor, "B T 3"], rotations: Float[Tensor, "B T 6"], unit: float
                      ) -> Float[Tensor, ""]:
    """Squared second differences over time of the bases' translations (in units of `unit`) and 6D rotations. The
    rotation term is divided by 8: a small turn by angle a moves the 6D vector (two unit columns) by ~sqrt(2) a
    against a/2 for a unit quaternion, so /8 keeps the weight the quaternion bases had."""
    if translations.shape[1] < 3:
        return translations.sum() * 0
    acc_t = translations[:, 2:] - 2 * translations[:, 1:-1] + translations[:, :-2]
    r = rotations
    acc_q = r[:, 2:] - 2 * r[:, 1:-1] + r[:, :-2]
    return (acc_t / unit).square().sum(-1).mean() + acc_q.square().sum(-1).mean() / 8


def long_track_loss(positions: Float[Tensor, "H W 3"], alpha: Float[Tensor, "H W"], query_xy: Float[Tensor, "P 2"],
                    target_xy: Float[Tensor, "P 2"], ok: Bool[Tensor, " P"], K: Float[Tensor, "3 3"],
                    w2c: Float[Tensor, "4 4"], near: float, delta: float = 2.0) -> Float[Tensor, ""]:
    """Sparse long-range tracks: the rendered 3D position (composited, not yet divided by alpha) at each query
    pixel, projected with the target frame's camera, must land on the track's position there. Pseudo-Huber in
    pixels (quadratic below `delta`, linear above: chained flow has outliers); points the render does not cover,
    broken tracks and points at or behind the target camera's near plane (z <= near) are left out."""
    h, w = alpha.shape
    ix = query_xy[:, 0].long().clamp(0, w - 1)
    iy = query_xy[:, 1].long().clamp(0, h - 1)
    a = alpha[iy, ix]
    sel = ok & (a.detach() > 0.5)
    if not bool(sel.any()):
        return positions.sum() * 0
    xy, z = project(positions[iy[sel], ix[sel]] / a[sel, None], K, w2c)
    front = z.detach() > near
    if not bool(front.any()):
        return positions.sum() * 0
    r2 = (xy[front] - target_xy[sel][front]).square().sum(-1)
    return (delta * delta * (torch.sqrt(1 + r2 / (delta * delta)) - 1)).mean()


def isometry_loss(a: Float[Tensor, "N 3"], b: Float[Tensor, "N 3"], pairs: Int[Tensor, "M 2"],
                  rest: Float[Tensor, " M"]) -> Float[Tensor, ""]:
    """Local rigidity between neighbouring dynamic Gaussians (Dynamic 3D Gaussians, MoSca): the distance of each
    pair (i, j) at one time `a` should equal that at another time `b`. Relative to the mean rest length `rest`
    (not each pair's: near-duplicate pairs would blow up). Bending and turning cost nothing; stretching and tearing
    apart do."""
    if len(pairs) == 0:
        return a.sum() * 0
    da = (a[pairs[:, 0]] - a[pairs[:, 1]]).norm(dim=-1)
    db = (b[pairs[:, 0]] - b[pairs[:, 1]]).norm(dim=-1)
    return (da - db).abs().mean() / rest.mean().clamp(min=1e-8)


def neighbour_pairs(points: Float[Tensor, "N 3"], groups: Int[Tensor, " N"], k: int = 8, max_points: int = 4096,
                    generator: torch.Generator | None = None) -> tuple[Int[Tensor, "M 2"], Float[Tensor, " M"]]:
    """Pairs (i, j) of each of up to `max_points` sampled points with its k nearest neighbours in the same group
    (one object), and their distances."""
    n = len(points)
    if n < 2:
        return torch.zeros(0, 2, dtype=torch.long), points.new_zeros(0)
    sample = torch.randperm(n, generator=generator)[:max_points] if n > max_points else torch.arange(n)
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().numpy()
    ids = groups.cpu().numpy()
    rows, cols = [], []
    for g in np.unique(ids[sample.numpy()]):
        members = np.nonzero(ids == g)[0]
        if len(members) < 2:
            continue
        tree = cKDTree(pts[members])
        mine = sample.numpy()[ids[sample.numpy()] == g]
        _, nn = tree.query(pts[mine], k=min(k + 1, len(members)))
        nn = members[nn[:, 1:]]
        rows.append(np.repeat(mine, nn.shape[1]))
        cols.append(nn.ravel())
    if not rows:
        return torch.zeros(0, 2, dtype=torch.long), points.new_zeros(0)
    pairs = torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)], 1), device=points.device)
    rest = (points.detach()[pairs[:, 0]] - points.detach()[pairs[:, 1]]).norm(dim=-1)
    return pairs, rest
