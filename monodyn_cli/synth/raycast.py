"""Analytic ray casting of a `SceneSpec`: rgb, z-depth, instance ids, and exact flow with visibility.

Every pixel's ray is intersected in closed form with the room (or ground plane) and with each object in
the object's local frame (sphere: quadratic; box: slabs; cylinder: quadratic side and slab caps). Ray
directions are scaled to unit camera-z, so the ray parameter of the first hit IS the z-depth. Objects are
only tested on the rays inside the screen rectangle of their bounding sphere.

Flow is geometric, not estimated: the surface point seen at pixel x in frame t (object-local point p for
objects, the world point for the static background, a direction for the sky) is moved to frame t' with
its object's pose at t' and projected into the camera of frame t'. It is visible there when it lies in
front of that camera, inside the image, and the ray cast from that camera through the projected
(sub-pixel) position at time t' first hits the same part at the same depth (relative tolerance
`VIS_TOL`): an exact occlusion test, the limit of comparing with the other frame's depth map. The room
is convex seen from inside, so only objects can occlude: the visibility ray is tested against objects only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.cameras import Cameras, pixel_grid
from monodyn_cli.synth.scene import BG_NORMALS, SKY, SceneSpec, TextureSpec

VIS_TOL = 1e-3  # relative depth tolerance of the visibility test
_EPS = 1e-5  # hits closer than this (ray parameter) are ignored
_SKY_HORIZON = (0.86, 0.89, 0.93)
_SKY_ZENITH = (0.42, 0.58, 0.85)
_HASH = torch.tensor([12.9898, 78.233, 37.719])


@dataclass
class ViewGT:
    """Ground truth of one camera over the clip (frame index t = 0..T-1; normalised time t / (T-1)).

    rgb (T,H,W,3) uint8; depth (T,H,W) float32 camera z (inf: sky, only without a room); instances
    (T,H,W) uint8 (0 background, k+1 object k); flow_fw[i] (T-1,H,W,2) float32 pixel motion i -> i+1 of
    frame i's pixels, flow_bw[i] motion i+1 -> i of frame i+1's pixels; valid_fw / valid_bw (T-1,H,W)
    bool: the moved point is in front, inside the image and not occluded in the other frame.
    Arrays are numpy (memory-mapped when loaded from disk).
    """

    name: str
    role: str
    cameras: Cameras
    rgb: np.ndarray
    depth: np.ndarray
    instances: np.ndarray
    flow_fw: np.ndarray
    flow_bw: np.ndarray
    valid_fw: np.ndarray
    valid_bw: np.ndarray


@dataclass
class _Texture:
    period: float
    lattice: Tensor  # pre-scaled by pi / period
    phase: Tensor
    colour_a: Tensor
    colour_b: Tensor
    wave_kT: Tensor  # (3, M)
    wave_k2: Tensor  # (M,) -|k|^2 / 8: exponent of the gaussian pixel filter per squared footprint
    wave_phase: Tensor
    wave_colour: Tensor
    cell_colour: Tensor  # (2, 3)

    @staticmethod
    def of(tex: TextureSpec, device) -> "_Texture":
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        k = f(tex.wave_k)
        return _Texture(float(tex.period), f(tex.lattice) * (math.pi / tex.period), f(tex.phase), f(tex.colour_a),
                        f(tex.colour_b), k.T.contiguous(), -0.125 * (k * k).sum(-1), f(tex.wave_phase),
                        f(tex.wave_colour), f(tex.cell_colour))


class _Scene:
    """The spec's numbers as tensors on one device, for one pose set (base scene or a variant).

    Rays are cast against primitives ("parts": a rigid object is one, a figure several); `owner` maps a part
    id (part index + 1, 0 for the background) to the instance id its pixels get."""

    def __init__(self, spec: SceneSpec, variant: str | None, device):
        parts, poses = spec.parts(variant)
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        self.shapes = [o.shape for o in parts]
        self.sizes = [f(o.size) for o in parts]
        self.bounds = [o.bounding_radius for o in parts]
        self.textures = [_Texture.of(o.texture, device) for o in parts]
        self.owner = torch.tensor([0] + [o.owner + 1 for o in parts], device=device)
        self.scale, self.R, self.t = f(poses.scale), f(poses.R), f(poses.t)
        bg = spec.background
        self.room, self.half_size, self.height = bg.room, bg.half_size, bg.height
        self.bg_texture = _Texture.of(bg.texture, device)
        # per background surface: normal, colour a, colour b (one gather per pixel)
        self.bg_table = torch.cat([f(BG_NORMALS[:SKY]), self.bg_texture.colour_a, self.bg_texture.colour_b], -1)
        self.light, self.ambient = f(spec.light_dir), float(spec.ambient)


# ---- intersections (local frame; d need not be unit: the returned parameter is along d) ---------------------

def _sphere_entry(o: Float[Tensor, "N 3"], d: Float[Tensor, "N 3"], size: Tensor) -> Float[Tensor, " N"]:
    # via the point of closest approach: stable where b^2 - ac would cancel (grazing rays)
    a = (d * d).sum(-1)
    tc = -(o * d).sum(-1) / a
    closest = o + tc[:, None] * d
    h2 = size[0] ** 2 - (closest * closest).sum(-1)
    lam = tc - (h2.clamp_min(0) / a).sqrt()
    return torch.where((h2 >= 0) & (lam > _EPS), lam, torch.inf)


def _box_entry(o: Float[Tensor, "N 3"], d: Float[Tensor, "N 3"], size: Tensor) -> Float[Tensor, " N"]:
    inv = 1.0 / d  # +-inf for axis-parallel rays: the slab test still works (o is never exactly on a face)
    t1, t2 = (-size - o) * inv, (size - o) * inv
    near = torch.minimum(t1, t2).amax(-1)
    far = torch.maximum(t1, t2).amin(-1)
    return torch.where((near <= far) & (near > _EPS), near, torch.inf)


def _cylinder_entry(o: Float[Tensor, "N 3"], d: Float[Tensor, "N 3"], size: Tensor) -> Float[Tensor, " N"]:
    r, h = size[0], size[1]
    # side: the circle in xy, via the point of closest approach (stable for grazing rays)
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    parallel = a < 1e-12  # ray along the axis: inside the infinite cylinder or never
    a_safe = torch.where(parallel, 1.0, a)
    tc = -(o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]) / a_safe
    cx, cy = o[:, 0] + tc * d[:, 0], o[:, 1] + tc * d[:, 1]
    h2 = r * r - cx * cx - cy * cy
    half = (h2.clamp_min(0) / a_safe).sqrt()
    s0 = torch.where(parallel, -torch.inf, tc - half)
    s1 = torch.where(parallel, torch.inf, tc + half)
    inv = 1.0 / d[:, 2]
    z1, z2 = (-h - o[:, 2]) * inv, (h - o[:, 2]) * inv
    near = torch.maximum(s0, torch.minimum(z1, z2))
    far = torch.minimum(s1, torch.maximum(z1, z2))
    return torch.where((h2 >= 0) & (near <= far) & (near > _EPS), near, torch.inf)


_ENTRY = {"sphere": _sphere_entry, "box": _box_entry, "cylinder": _cylinder_entry}


def _local_normal(shape: str, size: Tensor, p: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Outward unit normal at local surface points."""
    if shape == "sphere":
        return torch.nn.functional.normalize(p, dim=-1)
    if shape == "box":
        axis = (p.abs() - size).argmax(-1)  # the face the point lies on (|p_i| = h_i there)
        return torch.nn.functional.one_hot(axis, 3).to(p.dtype) * torch.sign(p)
    r, h = size[0], size[1]
    rxy = p[:, :2].norm(dim=-1)
    side = (rxy - r) > (p[:, 2].abs() - h)
    n_side = torch.cat([p[:, :2] / rxy.clamp_min(1e-12)[:, None], torch.zeros_like(p[:, :1])], -1)
    n_cap = torch.zeros_like(p)
    n_cap[:, 2] = torch.sign(p[:, 2])
    return torch.where(side[:, None], n_side, n_cap)


def _background_hit(sc: _Scene, o: Float[Tensor, "F 1 3"], d: Float[Tensor, "F P 3"]
                    ) -> tuple[Float[Tensor, "F P"], Int[Tensor, "F P"]]:
    """First hit with the room seen from inside (or the ground plane): parameter and surface id."""
    if not sc.room:
        down = d[..., 2] < 0
        lam = torch.where(down, -o[..., 2] / d[..., 2], torch.inf)
        return lam, torch.where(down, 0, SKY)
    # distance to the wall ahead along each axis; the camera is inside, so numerators are positive and
    # axis-parallel rays give +inf
    bound = torch.tensor([sc.half_size, sc.half_size, 0.0], device=d.device)
    num = torch.where(d > 0, bound - o, bound + o)
    num[..., 2] = torch.where(d[..., 2] > 0, sc.height - o[..., 2], o[..., 2])
    lam, axis = (num / d.abs()).min(-1)
    positive = torch.gather(d, -1, axis[..., None])[..., 0] > 0
    first = torch.tensor([2, 4, 0], device=d.device)[axis]  # x-, y-, floor; +1: x+, y+, ceiling
    return lam, first + positive.long()


@dataclass
class _Tables:
    """Per-frame transforms of a chunk (F frames, K objects), so that rays need no per-ray matrices.

    cam_to_local (F,K,9): rows of M = Rc R / s, so a local ray direction is (x_n, y_n, 1) @ M for the
    normalised pixel (x_n, y_n); origin_local (F,K,3): the camera centre in object coordinates;
    local_to_cam (F,K,12): rows of (s Rc R)^T, then Rc t + tc: camera coordinates = p @ A + b;
    rect (F,K,4): screen rectangle of the bounding sphere; light_local (F,K,3); scale (F,K).
    """

    frames: Tensor
    origin: Tensor  # (F,1,3) camera centres
    rotation: Tensor  # (F,3,3) world-to-camera rotations
    translation: Tensor  # (F,3)
    cam_to_local: Tensor
    origin_local: Tensor
    local_to_cam: Tensor
    rect: Tensor
    light_local: Tensor
    scale: Tensor


def _tables(sc: _Scene, cams: Cameras, frames: Int[Tensor, " F"]) -> _Tables:
    w2c, K = cams.w2c[frames], cams.K[0]
    Rc, tc = w2c[:, :3, :3], w2c[:, :3, 3]
    origin = -(tc[:, None] @ Rc)  # (F,1,3): -R^T t
    F, n = len(frames), len(sc.shapes)
    R, t, s = sc.R[frames], sc.t[frames], sc.scale[frames]  # (F,K,3,3) (F,K,3) (F,K)
    RcR = Rc[:, None] @ R
    cam_to_local = (RcR / s[..., None, None]).reshape(F, n, 9)
    origin_local = ((origin - t)[..., None, :] @ R)[..., 0, :] / s[..., None]
    centre_cam = (Rc[:, None] @ t[..., None])[..., 0] + tc[:, None]  # object origins in camera coordinates
    local_to_cam = torch.cat([(s[..., None, None] * RcR).transpose(-1, -2).reshape(F, n, 9), centre_cam], -1)
    # conservative pixel rectangle of each bounding sphere: the projection of its bounding cube; the whole
    # plane when the sphere reaches the camera plane
    r = torch.tensor(sc.bounds, device=s.device) * s
    zs = torch.stack([centre_cam[..., 2] - r, centre_cam[..., 2] + r])  # (2,F,K)
    rect = []
    for axis in (0, 1):
        ratios = torch.stack([centre_cam[..., axis] - r, centre_cam[..., axis] + r])[:, None] / zs[None]
        f, pp = K[axis, axis], K[axis, 2]
        rect += [f * ratios.amin((0, 1)) + pp - 1, f * ratios.amax((0, 1)) + pp + 1]
    rect = torch.stack(rect, -1)
    whole = torch.tensor([-torch.inf, torch.inf, -torch.inf, torch.inf], device=s.device)
    rect = torch.where((zs[0] < 1e-3)[..., None], whole, rect)
    light_local = sc.light @ R  # R^T l
    return _Tables(frames, origin, Rc, tc, cam_to_local, origin_local, local_to_cam, rect, light_local, s)


def _per_ray(table: Tensor, fi: Tensor) -> Tensor:
    """Rows of a per-frame table (F,D) for rays in frames fi (n,); a broadcastable row when F == 1."""
    return table[0] if table.shape[0] == 1 else table.index_select(0, fi)


def _cast_objects(sc: _Scene, cams: Cameras, tab: _Tables, xy: Float[Tensor, "F P 2"], lam: Float[Tensor, "F P"],
                  part: Int[Tensor, "F P"], keep: bool = False) -> list:
    """Lower `lam` (in place) to each part's entry along the rays through pixel positions xy where it is
    closer, setting the part ids `part` to k + 1. With `keep`, returns per part the candidate rays
    (index, frame-in-chunk, local origin, local direction, entry) or None."""
    F, P = lam.shape
    lam_flat, part_flat, xy_flat = lam.view(-1), part.view(-1), xy.reshape(-1, 2)
    fx, fy, cx, cy = cams.K[0, 0, 0], cams.K[0, 1, 1], cams.K[0, 0, 2], cams.K[0, 1, 2]
    kept = []
    for k, shape in enumerate(sc.shapes):
        x0, x1, y0, y1 = tab.rect[:, k, :, None].unbind(1)
        inside = (xy[..., 0] >= x0) & (xy[..., 0] <= x1) & (xy[..., 1] >= y0) & (xy[..., 1] <= y1)
        idx = torch.nonzero(inside.view(-1))[:, 0]
        if len(idx) == 0:
            kept.append(None)
            continue
        fi = idx // P
        pix = xy_flat.index_select(0, idx)
        M = _per_ray(tab.cam_to_local[:, k], fi)
        d_l = ((pix[:, :1] - cx) / fx) * M[..., 0:3] + ((pix[:, 1:] - cy) / fy) * M[..., 3:6] + M[..., 6:9]
        o_l = _per_ray(tab.origin_local[:, k], fi).expand_as(d_l)
        lam_k = _ENTRY[shape](o_l, d_l, sc.sizes[k])
        closer = lam_k < lam_flat.index_select(0, idx)
        sel = idx[closer]
        lam_flat.index_copy_(0, sel, lam_k[closer])
        part_flat.index_fill_(0, sel, k + 1)
        kept.append((idx, fi, o_l, d_l, lam_k) if keep else None)
    return kept


# ---- appearance ----------------------------------------------------------------------------------------------

def _albedo(tex: _Texture, p: Float[Tensor, "N 3"], footprint: Float[Tensor, " N"], colour_a: Tensor,
            colour_b: Tensor) -> Float[Tensor, "N 3"]:
    """Band-limited procedural albedo at surface points p (the texture's own coordinates); `footprint`
    is the pixel's size in those units: checker edges are ramped over ~one pixel and waves finer than a
    pixel fade out, so distant surfaces do not alias. colour_a / colour_b: (3,) or per point (N,3)."""
    P = tex.period
    q = torch.addmm(tex.phase, p, tex.lattice)  # checker cells are the intervals between multiples of pi
    s = torch.sin(q)
    fp = footprint.clamp_min(1e-6)
    fade = (1 - 2 / P * fp).clamp(0, 1)  # cells smaller than ~2 pixels fade to their mean
    checker = (s[:, 0] * s[:, 1] * s[:, 2] * (2 * P / math.pi) / fp).clamp(-1, 1) * fade
    base = torch.lerp(colour_a, colour_b, (0.5 - 0.5 * checker)[:, None])
    # every cell gets its own colour shift (a hash of its integer index): no two cells look alike, which
    # keeps feature matching (SfM) from confusing repeated checker corners
    h1 = torch.frac(torch.sin(torch.floor(q * (1 / math.pi)) @ _HASH.to(q.device)) * 43758.5453)
    h2 = torch.frac(h1 * 97.31)
    jitter = (torch.stack([h1, h2], -1) - 0.5) @ tex.cell_colour
    waves = torch.sin(torch.addmm(tex.wave_phase, p, tex.wave_kT))
    # gaussian pixel filter of each wave (clamped: exp of very negative numbers hits slow denormal paths)
    waves *= torch.exp(torch.outer(fp * fp, tex.wave_k2).clamp_min(-30.0))
    return (base * (1 + jitter * fade[:, None] + waves @ tex.wave_colour)).clamp(0.02, 1.0)


def _lit(sc: _Scene, albedo: Tensor, cos_light: Tensor) -> Tensor:
    """Lambertian shading with ambient light; cos_light = normal . light direction."""
    return albedo * (sc.ambient + (1 - sc.ambient) * cos_light.clamp_min(0))[:, None]


def _background_colour(sc: _Scene, focal: float, d: Float[Tensor, "N 3"], lam: Float[Tensor, " N"],
                       world: Float[Tensor, "N 3"], bg_surf: Int[Tensor, " N"]) -> Float[Tensor, "N 3"]:
    """Shaded room / ground colour at every pixel (sky and object pixels get overwritten later)."""
    table = sc.bg_table.index_select(0, bg_surf.clamp_max(SKY - 1))
    n = table[:, 0:3]
    # pixel footprint on the surface: depth / focal, stretched at grazing angles (at most 5x)
    cos = ((d * n).sum(-1) * torch.rsqrt((d * d).sum(-1))).abs().clamp_min(0.2)
    fp = torch.where(torch.isfinite(lam), lam, 1e6) / (focal * cos)
    rgb = _lit(sc, _albedo(sc.bg_texture, world, fp, table[:, 3:6], table[:, 6:9]), n @ sc.light)
    if not sc.room:
        sky = bg_surf == SKY
        idx = torch.nonzero(sky)[:, 0]
        up = d[idx, 2] * torch.rsqrt((d[idx] * d[idx]).sum(-1))
        horizon, zenith = (torch.tensor(c, device=d.device) for c in (_SKY_HORIZON, _SKY_ZENITH))
        rgb.index_copy_(0, idx, torch.lerp(horizon, zenith, up.clamp(0, 1).sqrt()[:, None]))
    return rgb


# ---- one chunk of frames -------------------------------------------------------------------------------------

@dataclass
class _Hits:
    """First hits of a chunk's pixel rays, flattened over (frame, pixel) = N."""

    lam: Tensor  # (N,) z-depth, inf for sky
    bg_surf: Tensor  # (N,) background surface behind / at the pixel
    part: Tensor  # (N,) part id (part index + 1; 0 background)
    inst: Tensor  # (N,) instance id
    d: Tensor  # (N,3) world ray direction (unit camera-z)
    world: Tensor  # (N,3) hit point (sky: the ray direction)
    sky: Tensor | None  # (N,) bool, None when the scene has a room
    objects: list  # per visible part: (k, pixel index, frame-in-chunk index, local point, local ray direction)


def _pixel_dirs(cams: Cameras, tab: _Tables, xy: Float[Tensor, "F P 2"]) -> Float[Tensor, "F P 3"]:
    x = (xy[..., 0] - cams.K[0, 0, 2]) / cams.K[0, 0, 0]
    y = (xy[..., 1] - cams.K[0, 1, 2]) / cams.K[0, 1, 1]
    return torch.stack([x, y, torch.ones_like(x)], -1) @ tab.rotation  # R^T d_cam: unit camera-z


def _hits(sc: _Scene, cams: Cameras, tab: _Tables, xy: Float[Tensor, "1 P 2"],
          background: tuple[Tensor, Tensor, Tensor] | None = None) -> _Hits:
    """Cast a chunk's pixel rays. `background` = (lam, bg_surf, d) of one frame when the camera is static:
    the room is then hit once per camera, not once per frame."""
    F, P = len(tab.frames), xy.shape[1]
    xy = xy.expand(F, P, 2)
    if background is None:
        d = _pixel_dirs(cams, tab, xy)
        lam, bg_surf = _background_hit(sc, tab.origin, d)
    else:
        lam, bg_surf = background[0].expand(F, P).clone(), background[1].expand(F, P).clone()
        d = background[2].expand(F, P, 3)
    part = torch.zeros_like(bg_surf)
    kept = _cast_objects(sc, cams, tab, xy, lam, part, keep=True)
    world = tab.origin + torch.where(torch.isfinite(lam), lam, 0.0)[..., None] * d
    sky = None
    if not sc.room:
        sky = ((part == 0) & (bg_surf == SKY)).view(-1)
        world = torch.where(sky.view(F, P, 1), d, world)
    lam, bg_surf, part = lam.view(-1), bg_surf.view(-1), part.view(-1)
    objects = []
    for k, cand in enumerate(kept):
        if cand is None:
            continue
        idx, fi, o_l, d_l, lam_k = cand
        win = part.index_select(0, idx) == k + 1
        if bool(win.any()):
            objects.append((k, idx[win], fi[win], o_l[win] + lam_k[win, None] * d_l[win], d_l[win]))
    return _Hits(lam, bg_surf, part, sc.owner[part], d.reshape(-1, 3), world.view(-1, 3), sky, objects)


def _object_colours(sc: _Scene, tab: _Tables, hits: _Hits, focal: float, rgb: Float[Tensor, "N 3"]) -> None:
    """Shade the object pixels of `rgb` in place (textures in object coordinates, light turned into them)."""
    for k, idx, fi, local, d_l in hits.objects:
        n = _local_normal(sc.shapes[k], sc.sizes[k], local)
        cos = ((n * d_l).sum(-1) * torch.rsqrt((d_l * d_l).sum(-1))).abs().clamp_min(0.2)
        # pixel footprint in object units: depth / focal / scale, stretched at grazing angles (at most 5x)
        fp = hits.lam.index_select(0, idx) / (focal * cos * _per_ray(tab.scale[:, k:k + 1], fi)[..., 0])
        tex = sc.textures[k]
        albedo = _albedo(tex, local, fp, tex.colour_a[0], tex.colour_b[0])
        rgb.index_copy_(0, idx, _lit(sc, albedo, (n * _per_ray(tab.light_local[:, k], fi)).sum(-1)))


def _flow(sc: _Scene, cams: Cameras, dst: _Tables, hits: _Hits, xy: Float[Tensor, "1 P 2"]
          ) -> tuple[Float[Tensor, "F P 2"], Bool[Tensor, "F P"]]:
    """Exact flow of the surface points in `hits` (seen at pixel centres xy) into the frames of `dst`, and
    their visibility there."""
    F, P = len(dst.frames), xy.shape[1]
    # camera coordinates in the target frame: static background / sky directions through the camera
    # motion alone, object points through their object's pose at the target frame
    cam = hits.world.view(F, P, 3) @ dst.rotation.transpose(-1, -2)
    if hits.sky is None:
        cam += dst.translation[:, None]
    else:
        cam += (~hits.sky).view(F, P, 1) * dst.translation[:, None]
    cam_flat = cam.view(-1, 3)
    for k, idx, fi, local, _ in hits.objects:
        A = _per_ray(dst.local_to_cam[:, k], fi)
        cam_flat.index_copy_(0, idx, local[:, :1] * A[..., 0:3] + local[:, 1:2] * A[..., 3:6]
                             + local[:, 2:] * A[..., 6:9] + A[..., 9:12])
    z = cam[..., 2]
    front = z > 1e-6
    K = cams.K[0]
    xy_dst = cam[..., :2] * (K[[0, 1], [0, 1]] / torch.where(front, z, 1.0)[..., None]) + K[:2, 2]
    flow = (xy_dst - xy) * front[..., None]
    inside = front & (xy_dst[..., 0] >= 0) & (xy_dst[..., 0] < cams.width) & (xy_dst[..., 1] >= 0) \
        & (xy_dst[..., 1] < cams.height)
    # visibility: the ray through the moved point's projection starts "at" the point itself (its own
    # part, depth z (1 + tol/2)); any part entered before that takes over, a figure's other parts included
    lam = z * (1 + 0.5 * VIS_TOL)
    own = hits.part.view(F, P)
    if hits.sky is not None:
        lam = torch.where(hits.sky.view(F, P), torch.inf, lam)
    part = own.clone()
    _cast_objects(sc, cams, dst, xy_dst, lam, part)
    same = (part == own) & ((lam - z).abs() <= VIS_TOL * z)
    if hits.sky is not None:
        same |= hits.sky.view(F, P) & (part == 0)
    return flow, inside & same


@contextmanager
def _cpu_threads(device) -> Iterator[None]:
    """One intra-op thread on CPU: the kernels here work on ~64k-element chunks, where extra threads give
    little and, on shared cores, OpenMP spin-waiting made them 10-50x slower in our measurements."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render_view(spec: SceneSpec, camera: str, variant: str | None = None, device: str | torch.device = "cpu",
                rays_per_chunk: int = 1 << 16, advance: Callable[[int], None] | None = None) -> ViewGT:
    """Render every frame of one camera (of the base scene, or of scale variant `variant`).

    `advance(n)` is called with the number of frames finished after each chunk (for progress bars).
    """
    rig = spec.cameras[camera]
    cams = rig.cameras.to(device)
    if not torch.allclose(cams.K, cams.K[:1]):
        raise ValueError("render_view assumes one intrinsics matrix for all frames of a camera")
    sc = _Scene(spec, variant, device)
    T, H, W = len(cams), cams.height, cams.width
    P = H * W
    out = ViewGT(rig.name, rig.role, rig.cameras, np.empty((T, H, W, 3), np.uint8), np.empty((T, H, W), np.float32),
                 np.empty((T, H, W), np.uint8), np.empty((T - 1, H, W, 2), np.float32),
                 np.empty((T - 1, H, W, 2), np.float32), np.empty((T - 1, H, W), bool), np.empty((T - 1, H, W), bool))
    xy = pixel_grid(W, H, device=device).reshape(1, P, 2)
    focal = float(cams.K[0, 0, 0])
    step = max(1, rays_per_chunk // P)
    with torch.no_grad(), _cpu_threads(device):
        background = background_rgb = None
        if bool((cams.w2c == cams.w2c[:1]).all()):  # static camera: the room looks the same in every frame
            tab = _tables(sc, cams, torch.zeros(1, dtype=torch.long, device=device))
            d = _pixel_dirs(cams, tab, xy)
            lam, bg_surf = _background_hit(sc, tab.origin, d)
            world = tab.origin + torch.where(torch.isfinite(lam), lam, 0.0)[..., None] * d
            if not sc.room:
                world = torch.where((bg_surf == SKY)[..., None], d, world)
            background = (lam[0], bg_surf[0], d[0])
            background_rgb = _background_colour(sc, focal, d[0], lam[0], world[0], bg_surf[0])
        for f0 in range(0, T, step):
            frames = torch.arange(f0, min(T, f0 + step), device=device)
            F = len(frames)
            tab = _tables(sc, cams, frames)
            hits = _hits(sc, cams, tab, xy, background)
            if background_rgb is None:
                rgb = _background_colour(sc, focal, hits.d, hits.lam, hits.world, hits.bg_surf)
            else:
                rgb = background_rgb.repeat(F, 1)
            _object_colours(sc, tab, hits, focal, rgb)
            sl = slice(f0, f0 + F)
            out.rgb[sl] = (rgb * 255 + 0.5).to(torch.uint8).view(F, H, W, 3).cpu().numpy()
            out.depth[sl] = hits.lam.view(F, H, W).cpu().numpy()
            out.instances[sl] = hits.inst.to(torch.uint8).view(F, H, W).cpu().numpy()
            # flow to the next / previous frame (a chunk's last / first frame has none at the clip's ends:
            # clamped to itself and dropped)
            for name, shift in (("fw", 1), ("bw", -1)):
                flow, valid = _flow(sc, cams, _tables(sc, cams, (frames + shift).clamp(0, T - 1)), hits, xy)
                keep = ((frames + shift >= 0) & (frames + shift < T)).cpu().numpy()
                rows = frames.cpu().numpy()[keep] - (0 if shift > 0 else 1)
                getattr(out, f"flow_{name}")[rows] = flow.view(F, H, W, 2).cpu().numpy()[keep]
                getattr(out, f"valid_{name}")[rows] = valid.view(F, H, W).cpu().numpy()[keep]
            if advance is not None:
                advance(F)
    return out
