"""Forward warping of input frames into target cameras with depth: the small GCD model's extra conditioning.

GCD's successors (ViewCrafter, TrajectoryCrafter, GEN3C) condition the video model on the input video already
moved into the target camera by depth, so the network only fills what the input never saw. Here each input
pixel is lifted with its z-depth, projected into its target camera and splatted to the nearest pixel; where
several land on one pixel the nearest to the camera wins (a z-buffer), ties going to the lowest source index.
Pixels nothing lands on, and source pixels of unknown depth (0, negative or not finite), are invalid: the mask
says where the warp holds content.

`forward_warp_reference` is the plain loop; `forward_warp` is the vectorised version (one scatter-min of
depths, then one of source indices among the depth winners), tested against it and against a plane under a
known translation. Pixel centres sit at integer + 0.5, as in `models.cameras`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def _targets(depth: Float[Tensor, "H W"], K_src: Float[Tensor, "3 3"], w2c_src: Float[Tensor, "4 4"],
             K_dst: Float[Tensor, "3 3"], w2c_dst: Float[Tensor, "4 4"], height: int, width: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """(flat target pixel index (H*W,), target z (H*W,), valid (H*W,)) of every source pixel."""
    H, W = depth.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    z = depth.double().reshape(-1)
    known = torch.isfinite(z) & (z > 0)
    z = torch.where(known, z, torch.ones_like(z))
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(H * W, dtype=torch.float64)], dim=0)
    cam = torch.linalg.inv(K_src.double()) @ pix * z  # (3, HW) source camera coordinates
    world = torch.linalg.inv(w2c_src.double()) @ torch.cat([cam, torch.ones(1, H * W, dtype=torch.float64)])
    dst = (w2c_dst.double() @ world)[:3]
    zt = dst[2]
    uv = (K_dst.double() @ dst)[:2] / zt.clamp(min=1e-12)
    col, row = torch.floor(uv[0]), torch.floor(uv[1])
    valid = known & (zt > 1e-9) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long()
    return index, zt, valid


def forward_warp_reference(image: Float[Tensor, "C H W"], depth: Float[Tensor, "H W"], K_src: Float[Tensor, "3 3"],
                           w2c_src: Float[Tensor, "4 4"], K_dst: Float[Tensor, "3 3"], w2c_dst: Float[Tensor, "4 4"],
                           height: int | None = None, width: int | None = None
                           ) -> tuple[Float[Tensor, "C h w"], Float[Tensor, "h w"]]:
    """One frame, pixel by pixel: (warped image, zeros where invalid; validity mask 0/1) at the target size
    (default: the source's)."""
    C, H, W = image.shape
    height, width = height or H, width or W
    index, zt, valid = _targets(depth, K_src, w2c_src, K_dst, w2c_dst, height, width)
    out = image.new_zeros(C, height * width)
    zbuf = torch.full((height * width,), float("inf"), dtype=torch.float64)
    src = image.reshape(C, -1)
    for i in range(H * W):
        if valid[i] and zt[i] < zbuf[index[i]]:  # strictly nearer: on a tie the first source pixel stays
            zbuf[index[i]] = zt[i]
            out[:, index[i]] = src[:, i]
    mask = torch.isfinite(zbuf).to(image.dtype)
    return out.reshape(C, height, width), mask.reshape(height, width)


def forward_warp(image: Float[Tensor, "N C H W"], depth: Float[Tensor, "N H W"], K_src: Float[Tensor, "N 3 3"],
                 w2c_src: Float[Tensor, "N 4 4"], K_dst: Float[Tensor, "N 3 3"], w2c_dst: Float[Tensor, "N 4 4"],
                 height: int | None = None, width: int | None = None
                 ) -> tuple[Float[Tensor, "N C h w"], Float[Tensor, "N h w"]]:
    """Frame i of `image` (z-depth `depth[i]`, camera K_src[i], w2c_src[i]) seen from camera (K_dst[i],
    w2c_dst[i]): (warped images, zeros where invalid; validity masks 0/1) at the target size (default: the
    source's). The same result as `forward_warp_reference` per frame."""
    N, C, H, W = image.shape
    height, width = height or H, width or W
    P = height * width
    out = image.new_zeros(N, C, P)
    mask = image.new_zeros(N, P)
    for n in range(N):  # frames are few (14 per window); each frame is one vectorised scatter
        index, zt, valid = _targets(depth[n], K_src[n], w2c_src[n], K_dst[n], w2c_dst[n], height, width)
        index, zt, src = index[valid], zt[valid], valid.nonzero()[:, 0]
        if not len(index):
            continue
        zbuf = torch.full((P,), float("inf"), dtype=torch.float64).scatter_reduce(0, index, zt, "amin")
        winner = zt == zbuf[index]
        index, src = index[winner], src[winner]
        first = torch.full((P,), H * W, dtype=torch.long).scatter_reduce(0, index, src, "amin")
        hit = first < H * W
        out[n][:, hit] = image[n].reshape(C, -1)[:, first[hit]]
        mask[n][hit] = 1.0
    return out.reshape(N, C, height, width), mask.reshape(N, height, width)


def perturb_depth(depth: Float[Tensor, "N H W"], generator: torch.Generator, *, scale_std: float = 0.05,
                  pixel_std: float = 0.03, holes: float = 0.1) -> Float[Tensor, "N H W"]:
    """Depth as an estimator gives it, from exact depth: a per-frame scale error (log-normal, `scale_std`),
    smooth per-pixel errors (log-normal, `pixel_std`, on an 8x coarser grid, upsampled) and holes (0 = unknown)
    covering about `holes` of the frame in rectangles. Used in training so the model tolerates real estimates."""
    N, H, W = depth.shape
    g = generator
    scale = torch.exp(scale_std * torch.randn(N, 1, 1, generator=g))
    coarse = torch.randn(N, 1, max(1, H // 8), max(1, W // 8), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    out = depth * scale * torch.exp(pixel_std * smooth)
    keep = torch.ones(N, H, W, dtype=torch.bool)
    for n in range(N):
        covered = 0.0
        target = holes * float(torch.rand(1, generator=g)) * 2  # 0 .. 2x holes per frame
        while covered < target:
            h = int(torch.randint(1, max(2, H // 4), (1,), generator=g))
            w = int(torch.randint(1, max(2, W // 4), (1,), generator=g))
            y = int(torch.randint(0, H - h + 1, (1,), generator=g))
            x = int(torch.randint(0, W - w + 1, (1,), generator=g))
            keep[n, y:y + h, x:x + w] = False
            covered += h * w / (H * W)
    return torch.where(keep, out, torch.zeros_like(out))


def warp_frames(frames: Float[Tensor, "N 3 H W"], depth: Float[Tensor, "N H W"], K_src: Float[Tensor, "N 3 3"],
                w2c_src: Float[Tensor, "N 4 4"], K_dst: Float[Tensor, "N 3 3"], w2c_dst: Float[Tensor, "N 4 4"],
                target_size: tuple[int, int], box: tuple[int, int, int, int], size: tuple[int, int]
                ) -> tuple[Float[Tensor, "N 3 h w"], Float[Tensor, "N h w"]]:
    """The warp as the model sees it: `frames` forward-warped into target images of `target_size` (H, W), the
    `box` (top, left, height, width) cut out and area-resized to `size` (h, w) with mask-weighted averaging, so
    that splatting cracks of a larger target close. Returns (colours, zeros where invalid; valid fraction)."""
    out, mask = forward_warp(frames, depth, K_src, w2c_src, K_dst, w2c_dst, *target_size)
    top, left, h, w = box
    out, mask = out[..., top:top + h, left:left + w], mask[..., top:top + h, left:left + w]
    if (h, w) == tuple(size):
        return out, mask
    area = torch.nn.functional.adaptive_avg_pool2d
    weight = area(mask[:, None], size)
    colour = area(out * mask[:, None], size) / weight.clamp(min=1e-6)
    return colour * (weight > 0), weight[:, 0]
