"""Compiled projection (numba) with a hand-written backward: the same maths as `project.project_gaussians`.

The torch projection is ~150 elementwise ops over [C, N]; forward+backward it took ~70 ms for 100k
Gaussians on the 2-core CPU, more than the rasterizer itself. Here one task handles a chunk of
Gaussians across all cameras, so per-Gaussian gradients are summed over cameras without races. No
gradients flow to the cameras (viewmats, Ks): `rasterization` uses the torch projection when they need one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Float
from numba import njit, prange
from torch import Tensor

from .project import Projected
from .threads import kernel_threads

CHUNK = 1024

# 3x3 matrices are 9-tuples (row-major) of float64: they stay in registers, where small scratch arrays
# made every product a round trip through memory (3x slower).


@njit(inline="always")
def _mm(A, B):
    """A B"""
    return (A[0] * B[0] + A[1] * B[3] + A[2] * B[6], A[0] * B[1] + A[1] * B[4] + A[2] * B[7],
            A[0] * B[2] + A[1] * B[5] + A[2] * B[8],
            A[3] * B[0] + A[4] * B[3] + A[5] * B[6], A[3] * B[1] + A[4] * B[4] + A[5] * B[7],
            A[3] * B[2] + A[4] * B[5] + A[5] * B[8],
            A[6] * B[0] + A[7] * B[3] + A[8] * B[6], A[6] * B[1] + A[7] * B[4] + A[8] * B[7],
            A[6] * B[2] + A[7] * B[5] + A[8] * B[8])


@njit(inline="always")
def _mmt(A, B):
    """A Bᵀ"""
    return (A[0] * B[0] + A[1] * B[1] + A[2] * B[2], A[0] * B[3] + A[1] * B[4] + A[2] * B[5],
            A[0] * B[6] + A[1] * B[7] + A[2] * B[8],
            A[3] * B[0] + A[4] * B[1] + A[5] * B[2], A[3] * B[3] + A[4] * B[4] + A[5] * B[5],
            A[3] * B[6] + A[4] * B[7] + A[5] * B[8],
            A[6] * B[0] + A[7] * B[1] + A[8] * B[2], A[6] * B[3] + A[7] * B[4] + A[8] * B[5],
            A[6] * B[6] + A[7] * B[7] + A[8] * B[8])


@njit(inline="always")
def _tmm(A, B):
    """Aᵀ B"""
    return (A[0] * B[0] + A[3] * B[3] + A[6] * B[6], A[0] * B[1] + A[3] * B[4] + A[6] * B[7],
            A[0] * B[2] + A[3] * B[5] + A[6] * B[8],
            A[1] * B[0] + A[4] * B[3] + A[7] * B[6], A[1] * B[1] + A[4] * B[4] + A[7] * B[7],
            A[1] * B[2] + A[4] * B[5] + A[7] * B[8],
            A[2] * B[0] + A[5] * B[3] + A[8] * B[6], A[2] * B[1] + A[5] * B[4] + A[8] * B[7],
            A[2] * B[2] + A[5] * B[5] + A[8] * B[8])


@njit(inline="always")
def _gaussian(q, s):
    """Rotation R of the normalised quaternion q (wxyz), M = R diag(s), Σ = M Mᵀ; and (w, x, y, z, |q|)."""
    norm = max(math.sqrt(float(q[0]) * q[0] + float(q[1]) * q[1] + float(q[2]) * q[2] + float(q[3]) * q[3]), 1e-12)
    w, x, y, z = q[0] / norm, q[1] / norm, q[2] / norm, q[3] / norm
    R = (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
         2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
         2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y))
    s0, s1, s2 = float(s[0]), float(s[1]), float(s[2])
    M = (R[0] * s0, R[1] * s1, R[2] * s2, R[3] * s0, R[4] * s1, R[5] * s2, R[6] * s0, R[7] * s1, R[8] * s2)
    return R, M, _mmt(M, M), (w, x, y, z, norm)


@njit(inline="always")
def _camera(vm, m, S):
    """Rotation W (9-tuple), camera-space mean (x, y, z) and covariance V = W Σ Wᵀ."""
    W = (float(vm[0, 0]), float(vm[0, 1]), float(vm[0, 2]), float(vm[1, 0]), float(vm[1, 1]), float(vm[1, 2]),
         float(vm[2, 0]), float(vm[2, 1]), float(vm[2, 2]))
    m0, m1, m2 = float(m[0]), float(m[1]), float(m[2])
    x = W[0] * m0 + W[1] * m1 + W[2] * m2 + vm[0, 3]
    y = W[3] * m0 + W[4] * m1 + W[5] * m2 + vm[1, 3]
    z = W[6] * m0 + W[7] * m1 + W[8] * m2 + vm[2, 3]
    return W, x, y, z, _mmt(_mm(W, S), W)


@njit(inline="always")
def _jacobian(x, y, zs, K, width, height):
    """Entries of the perspective Jacobian at the clamped position; clamped flags for x and y."""
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lxp, lxn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lyp, lyn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    rz = 1.0 / zs
    ux, uy = x * rz, y * rz
    cux, cuy = min(lxp, max(-lxn, ux)), min(lyp, max(-lyn, uy))
    tx, ty = zs * cux, zs * cuy
    j00, j02 = fx * rz, -fx * tx * rz * rz
    j11, j12 = fy * rz, -fy * ty * rz * rz
    return j00, j02, j11, j12, tx, ty, rz, cux != ux, cuy != uy


@njit(inline="always")
def _cov2d(V, j00, j02, j11, j12):
    """J V Jᵀ for J = [[j00, 0, j02], [0, j11, j12]]: entries (a, b, c)."""
    a = j00 * (j00 * V[0] + j02 * V[2]) + j02 * (j00 * V[6] + j02 * V[8])
    b = j00 * (j11 * V[1] + j12 * V[2]) + j02 * (j11 * V[7] + j12 * V[8])
    c = j11 * (j11 * V[4] + j12 * V[5]) + j12 * (j11 * V[7] + j12 * V[8])
    return a, b, c


# The per-Gaussian work runs in plain (non-parallel) functions over a chunk, called from a prange over
# chunks: numba's parallel array analysis mistakes the 9-tuples for array shapes and fails to compile.

@njit(fastmath=False, cache=True)
def _fwd_chunk(lo, hi, means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d,
           antialiased, means2d, conics, depths, radii, op_out):
    C = viewmats.shape[0]
    for n in range(lo, hi):
        _, _, S, _ = _gaussian(quats[n], scales[n])
        for cam in range(C):
            K = Ks[cam]
            _, x, y, z, V = _camera(viewmats[cam], means[n], S)
            valid = near < z < far
            zs = z if valid else 1.0
            j00, j02, j11, j12, tx, ty, rz, _, _ = _jacobian(x, y, zs, K, width, height)
            a, b, c = _cov2d(V, j00, j02, j11, j12)
            det_raw = a * c - b * b
            a += eps2d
            c += eps2d
            det = a * c - b * b
            valid = valid and det > 0
            if not valid:
                det = 1.0
            u = K[0, 0] * x * rz + K[0, 2]
            v = K[1, 1] * y * rz + K[1, 2]
            means2d[cam, n, 0], means2d[cam, n, 1] = u, v
            conics[cam, n, 0], conics[cam, n, 1], conics[cam, n, 2] = c / det, -b / det, a / det
            depths[cam, n] = z
            o = float(opacities[n])
            if antialiased:
                o = o * math.sqrt(max(det_raw / det, 0.0))
            op_out[cam, n] = o
            mid = 0.5 * (a + c)
            r = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(mid * mid - det, 0.01))))
            if not valid or u + r <= 0 or u - r >= width or v + r <= 0 or v - r >= height:
                r = 0
            radii[cam, n] = r


@njit(parallel=True, fastmath=False, cache=True)
def _project_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased):
    N, C = means.shape[0], viewmats.shape[0]
    means2d = np.empty((C, N, 2), np.float32)
    conics = np.empty((C, N, 3), np.float32)
    depths = np.empty((C, N), np.float32)
    radii = np.empty((C, N), np.int32)
    op_out = np.empty((C, N), np.float32)
    for chunk in prange((N + CHUNK - 1) // CHUNK):
        _fwd_chunk(chunk * CHUNK, min(N, (chunk + 1) * CHUNK), means, quats, scales, opacities, viewmats, Ks, width,
                   height, near, far, eps2d, antialiased, means2d, conics, depths, radii, op_out)
    return means2d, conics, depths, radii, op_out


@njit(fastmath=False, cache=True)
def _bwd_chunk(lo, hi, means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased,
           v_means2d, v_conics, v_depths, v_op, v_means, v_quats, v_scales, v_opac):
    C = viewmats.shape[0]
    for n in range(lo, hi):
        R, M, S, (w, qx, qy, qz, norm) = _gaussian(quats[n], scales[n])
        vS = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        vm0 = vm1 = vm2 = vo_sum = 0.0
        for cam in range(C):
            K = Ks[cam]
            W, x, y, z, V = _camera(viewmats[cam], means[n], S)
            vp0, vp1, vp2 = 0.0, 0.0, float(v_depths[cam, n])
            valid = near < z < far
            zs = z if valid else 1.0
            j00, j02, j11, j12, tx, ty, rz, clamp_x, clamp_y = _jacobian(x, y, zs, K, width, height)
            a, b, c = _cov2d(V, j00, j02, j11, j12)
            a_raw, c_raw = a, c
            det_raw = a * c - b * b
            a += eps2d
            c += eps2d
            det = a * c - b * b
            if valid and det > 0:
                # opacity (antialiasing compensation o·sqrt(det_raw / det))
                vo = float(v_op[cam, n])
                v_det = v_det_raw = 0.0
                if antialiased:
                    ratio = det_raw / det
                    comp = math.sqrt(max(ratio, 0.0))
                    vo_sum += vo * comp
                    if ratio > 0:
                        v_ratio = vo * opacities[n] * 0.5 / comp
                        v_det_raw = v_ratio / det
                        v_det = -v_ratio * det_raw / (det * det)
                else:
                    vo_sum += vo
                # conic = (c, -b, a) / det
                vA, vB, vC = float(v_conics[cam, n, 0]), float(v_conics[cam, n, 1]), float(v_conics[cam, n, 2])
                v_det += -(vA * c - vB * b + vC * a) / (det * det)
                v_a = vC / det + v_det * c + v_det_raw * c_raw
                v_c = vA / det + v_det * a + v_det_raw * a_raw
                v_b = -vB / det - 2.0 * b * (v_det + v_det_raw)
                # cov2d = J V Jᵀ with rows J0 = (j00, 0, j02), J1 = (0, j11, j12): dL/dV, dL/dJ
                vV02 = v_a * j00 * j02 + 0.5 * v_b * j00 * j12
                vV12 = 0.5 * v_b * j02 * j11 + v_c * j11 * j12
                vV = (v_a * j00 * j00, 0.5 * v_b * j00 * j11, vV02,
                      0.5 * v_b * j00 * j11, v_c * j11 * j11, vV12,
                      vV02, vV12, v_a * j02 * j02 + v_b * j02 * j12 + v_c * j12 * j12)
                VJ0_0, VJ0_1, VJ0_2 = V[0] * j00 + V[2] * j02, V[3] * j00 + V[5] * j02, V[6] * j00 + V[8] * j02
                VJ1_0, VJ1_1, VJ1_2 = V[1] * j11 + V[2] * j12, V[4] * j11 + V[5] * j12, V[7] * j11 + V[8] * j12
                v_j00 = 2.0 * v_a * VJ0_0 + v_b * VJ1_0
                v_j02 = 2.0 * v_a * VJ0_2 + v_b * VJ1_2
                v_j11 = 2.0 * v_c * VJ1_1 + v_b * VJ0_1
                v_j12 = 2.0 * v_c * VJ1_2 + v_b * VJ0_2
                # J and means2d through rz = 1/z and the (clamped) tx, ty
                fx, fy = float(K[0, 0]), float(K[1, 1])
                vu, vv = float(v_means2d[cam, n, 0]), float(v_means2d[cam, n, 1])
                v_rz = vu * fx * x + vv * fy * y + v_j00 * fx + v_j11 * fy \
                    - 2.0 * fx * tx * rz * v_j02 - 2.0 * fy * ty * rz * v_j12
                v_tx, v_ty = -fx * rz * rz * v_j02, -fy * rz * rz * v_j12
                vp0 += vu * fx * rz
                vp1 += vv * fy * rz
                if clamp_x:
                    vp2 += v_tx * tx / zs  # tx = z · limit
                else:
                    vp0 += v_tx
                if clamp_y:
                    vp2 += v_ty * ty / zs
                else:
                    vp1 += v_ty
                vp2 += -v_rz * rz * rz
                # V = W Σ Wᵀ
                d = _tmm(W, _mm(vV, W))
                vS = (vS[0] + d[0], vS[1] + d[1], vS[2] + d[2], vS[3] + d[3], vS[4] + d[4], vS[5] + d[5],
                      vS[6] + d[6], vS[7] + d[7], vS[8] + d[8])
            # p = W m + t
            vm0 += W[0] * vp0 + W[3] * vp1 + W[6] * vp2
            vm1 += W[1] * vp0 + W[4] * vp1 + W[7] * vp2
            vm2 += W[2] * vp0 + W[5] * vp1 + W[8] * vp2
        v_means[n, 0], v_means[n, 1], v_means[n, 2] = vm0, vm1, vm2
        v_opac[n] = vo_sum
        # Σ = M Mᵀ, M = R diag(s)
        vM = _mm(vS, M)
        vM = (2 * vM[0], 2 * vM[1], 2 * vM[2], 2 * vM[3], 2 * vM[4], 2 * vM[5], 2 * vM[6], 2 * vM[7], 2 * vM[8])
        s = scales[n]
        for k in range(3):
            v_scales[n, k] = vM[k] * R[k] + vM[3 + k] * R[3 + k] + vM[6 + k] * R[6 + k]
        s0, s1, s2 = float(s[0]), float(s[1]), float(s[2])
        v00, v01, v02 = vM[0] * s0, vM[1] * s1, vM[2] * s2
        v10, v11, v12 = vM[3] * s0, vM[4] * s1, vM[5] * s2
        v20, v21, v22 = vM[6] * s0, vM[7] * s1, vM[8] * s2
        gw = 2 * (-qz * v01 + qy * v02 + qz * v10 - qx * v12 - qy * v20 + qx * v21)
        gx = 2 * (qy * v01 + qz * v02 + qy * v10 - 2 * qx * v11 - w * v12 + qz * v20 + w * v21 - 2 * qx * v22)
        gy = 2 * (-2 * qy * v00 + qx * v01 + w * v02 + qx * v10 + qz * v12 - w * v20 + qz * v21 - 2 * qy * v22)
        gz = 2 * (-2 * qz * v00 - w * v01 + qx * v02 + w * v10 - 2 * qz * v11 + qy * v12 + qx * v20 + qy * v21)
        dot = w * gw + qx * gx + qy * gy + qz * gz  # through the normalisation q / |q|
        v_quats[n, 0] = (gw - w * dot) / norm
        v_quats[n, 1] = (gx - qx * dot) / norm
        v_quats[n, 2] = (gy - qy * dot) / norm
        v_quats[n, 3] = (gz - qz * dot) / norm


@njit(parallel=True, fastmath=False, cache=True)
def _project_bwd(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased,
                 v_means2d, v_conics, v_depths, v_op):
    N = means.shape[0]
    v_means = np.zeros((N, 3), np.float32)
    v_quats = np.zeros((N, 4), np.float32)
    v_scales = np.zeros((N, 3), np.float32)
    v_opac = np.zeros(N, np.float32)
    for chunk in prange((N + CHUNK - 1) // CHUNK):
        _bwd_chunk(chunk * CHUNK, min(N, (chunk + 1) * CHUNK), means, quats, scales, opacities, viewmats, Ks, width,
                   height, near, far, eps2d, antialiased, v_means2d, v_conics, v_depths, v_op, v_means, v_quats,
                   v_scales, v_opac)
    return v_means, v_quats, v_scales, v_opac


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().cpu().numpy()


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, antialiased):
        args = (_np(means), _np(quats), _np(scales), _np(opacities), _np(viewmats), _np(Ks), width, height,
                float(near), float(far), float(eps2d), bool(antialiased))
        with kernel_threads(args[0].shape[0] * args[4].shape[0]):
            means2d, conics, depths, radii, op = _project_fwd(*args)
        ctx.args = args
        radii = torch.from_numpy(radii)
        ctx.mark_non_differentiable(radii)
        return (torch.from_numpy(means2d), torch.from_numpy(conics), torch.from_numpy(depths), radii,
                torch.from_numpy(op))

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_radii, v_op):
        C, N = ctx.args[4].shape[0], ctx.args[0].shape[0]

        def arr(g, shape):
            return np.zeros(shape, np.float32) if g is None else _np(g)

        with kernel_threads(C * N):
            grads = _project_bwd(*ctx.args, arr(v_means2d, (C, N, 2)), arr(v_conics, (C, N, 3)), arr(v_depths, (C, N)),
                                 arr(v_op, (C, N)))
        return tuple(torch.from_numpy(g) for g in grads) + (None,) * 8


def project_gaussians_cpu(means: Float[Tensor, "N 3"], quats: Float[Tensor, "N 4"], scales: Float[Tensor, "N 3"],
                          opacities: Float[Tensor, " N"], viewmats: Float[Tensor, "C 4 4"], Ks: Float[Tensor, "C 3 3"],
                          width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10,
                          eps2d: float = 0.3, antialiased: bool = False) -> Projected:
    """`project.project_gaussians` compiled, float32 outputs; differentiable in means, quats, scales, opacities."""
    out = _ProjectCPU.apply(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
                            eps2d, antialiased)
    return Projected(*out)
