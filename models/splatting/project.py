"""Projection of 3D Gaussians to screen-space ellipses (EWA splatting, as gsplat's "classic" projection).

Plain vectorised PyTorch with autograd: every op is elementwise over [C, N], written out per matrix entry
because batched 3x3 matmuls of 100k tiny matrices are several times slower on the CPU than a few dozen
elementwise ops over long tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class Projected:
    """Per camera and Gaussian screen-space quantities; culled Gaussians have radius 0 (other fields finite)."""

    means2d: Float[Tensor, "C N 2"]    # pixel coordinates, pixel (0, 0) covers [0, 1)^2
    conics: Float[Tensor, "C N 3"]     # (a, b, c): inverse 2D covariance [[a, b], [b, c]]
    depths: Float[Tensor, "C N"]       # camera-space z
    radii: Int[Tensor, "C N"]          # int32, 0 = culled
    opacities: Float[Tensor, "C N"]    # after antialiasing compensation (if any)


def rotation_entries(quats: Float[Tensor, "*B 4"]) -> list[list[Tensor]]:
    """Rotation matrix entries R[i][j] (each [*B]) of wxyz quaternions (normalised here)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]


def quat_to_rotmat(quats: Float[Tensor, "*B 4"]) -> Float[Tensor, "*B 3 3"]:
    """Rotation matrices of wxyz quaternions (normalised here)."""
    return torch.stack([torch.stack(row, -1) for row in rotation_entries(quats)], -2)


def covariance_3d(quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3 3"]:
    """Σ = R S Sᵀ Rᵀ of each Gaussian."""
    R = rotation_entries(quats)
    s2 = scales * scales
    M = [[R[i][k] * s2[:, k] for k in range(3)] for i in range(3)]  # R S²
    rows = [torch.stack([M[i][0] * R[j][0] + M[i][1] * R[j][1] + M[i][2] * R[j][2] for j in range(3)], -1)
            for i in range(3)]
    return torch.stack(rows, -2)


def project_gaussians(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                      opacities: Float[Tensor, " N"], viewmats: Float[Tensor, "C 4 4"], Ks: Float[Tensor, "C 3 3"],
                      width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10,
                      eps2d: float = 0.3, antialiased: bool = False) -> Projected:
    """Perspective projection of N Gaussians into C cameras (world-to-camera `viewmats`, OpenCV axes).

    cov2d = J W Σ Wᵀ Jᵀ + eps2d·I with the perspective Jacobian J evaluated at the mean, its x/z and y/z
    clamped to 1.3x the half field of view (keeps off-screen Gaussians from exploding); radius =
    ceil(3·sqrt(largest eigenvalue)). Culled (radius 0): z outside (near, far), a degenerate cov2d, or a
    bounding square that misses the image.
    """
    C = viewmats.shape[0]
    W, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("cij,nj->cni", W, means) + t[:, None]  # camera-space means [C, N, 3]
    x, y, z = mc.unbind(-1)
    valid = (z > near_plane) & (z < far_plane)
    zs = torch.where(valid, z, torch.ones_like(z))  # finite everywhere, so masked entries get zero gradients

    # camera-space covariance W Σ Wᵀ, entries [C, N]
    S = covariance_3d(quats, scales)
    Wc = [[W[:, i, j][:, None] for j in range(3)] for i in range(3)]
    WS = [[sum(Wc[i][k] * S[None, :, k, j] for k in range(3)) for j in range(3)] for i in range(3)]
    V = [[sum(WS[i][k] * Wc[j][k] for k in range(3)) for j in range(3)] for i in range(3)]

    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    # gsplat's limits: the image edges plus 30% of the half field of view on each side
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / zs
    tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, x * rz))
    ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, y * rz))
    # J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]
    j00, j02 = fx * rz, -fx * tx * rz * rz
    j11, j12 = fy * rz, -fy * ty * rz * rz
    # cov2d = J V Jᵀ
    a = j00 * (j00 * V[0][0] + j02 * V[0][2]) + j02 * (j00 * V[2][0] + j02 * V[2][2])
    b = j00 * (j11 * V[0][1] + j12 * V[0][2]) + j02 * (j11 * V[2][1] + j12 * V[2][2])
    c = j11 * (j11 * V[1][1] + j12 * V[1][2]) + j12 * (j11 * V[2][1] + j12 * V[2][2])
    det_raw = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)

    op = opacities[None].expand(C, -1)
    if antialiased:  # keeps the integrated opacity of small Gaussians after the eps2d blur
        op = op * torch.sqrt((det_raw / det).clamp_min(0.0))

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt((mid * mid - det).clamp_min(0.01))
        radii = torch.ceil(3.0 * torch.sqrt(lam))
        mx, my = means2d[..., 0], means2d[..., 1]
        off = (mx + radii <= 0) | (mx - radii >= width) | (my + radii <= 0) | (my - radii >= height)
        radii = torch.where(valid & ~off, radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d, conics, z, radii, op)
