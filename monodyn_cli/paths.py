"""Camera paths for `monodyn render` and nerfstudio file import/export (transforms.json, camera_path.json).

Sections: "camera paths" (orbit, bullet time, spiral, dolly, stabilised, camera_path.json) and "nerfstudio
transforms.json" (read/write of the dataset format). OpenCV axes inside, OpenGL only at the file boundary.
"""

from __future__ import annotations

# ---- camera paths
# Novel-view trajectories for `monodyn render`. Every function returns a CameraPath: Cameras (OpenCV axes,
# world-to-camera, the input intrinsics and image size) plus one *normalised* time in [0, 1] per output frame
# (0 = first input frame, 1 = last). Angles are in degrees. The "up" of a path is the average image-up of
# the input cameras (the -y axis of their camera-to-world rotations), not the world z axis: SfM worlds have
# an arbitrary orientation.
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import (
    Cameras,
    look_at,
    mean_image_up,
    opencv_w2c_to_opengl_c2w,
    opengl_c2w_to_opencv_w2c,
    visible_points,
)
from models.errors import InputError


class CameraPath(NamedTuple):
    cameras: Cameras
    times: Float[Tensor, " N"]  # normalised time in [0, 1] per output frame


def _basis(center: Tensor, up: Tensor, ref_eye: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal (e1, e2, up): e1 = horizontal direction from the centre to the reference eye."""
    up = up / up.norm()
    off = ref_eye - center
    e1 = off - (off @ up) * up
    if float(e1.norm()) < 1e-6 * max(float(off.norm()), 1e-12):  # reference straight above/below: any e1
        e1 = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9
                                else torch.tensor([0.0, 1.0, 0.0]))
    e1 = e1 / e1.norm()
    return e1, torch.linalg.cross(up, e1), up


def to_spherical(eye: Float[Tensor, "*B 3"], center: Float[Tensor, "3"], up: Float[Tensor, "3"],
                 ref_eye: Float[Tensor, "3"]) -> tuple[Float[Tensor, "*B"], Float[Tensor, "*B"], Float[Tensor, "*B"]]:
    """(azimuth, elevation, radius) of eyes around `center`; azimuth 0 = the direction of `ref_eye`,
    positive counter-clockwise seen from above (right-handed about `up`); elevation above the horizon."""
    e1, e2, u = _basis(center, up, ref_eye)
    off = eye - center
    radius = off.norm(dim=-1)
    az = torch.rad2deg(torch.atan2(off @ e2, off @ e1))
    el = torch.rad2deg(torch.asin((off @ u / radius.clamp(min=1e-12)).clamp(-1, 1)))
    return az, el, radius


def from_spherical(center: Float[Tensor, "3"], up: Float[Tensor, "3"], ref_eye: Float[Tensor, "3"],
                   azimuth: Float[Tensor, "*B"], elevation: Float[Tensor, "*B"], radius: Float[Tensor, "*B"]
                   ) -> Float[Tensor, "*B 3"]:
    """Inverse of `to_spherical`: eye positions from (azimuth, elevation, radius) in degrees / world units."""
    e1, e2, u = _basis(center, up, ref_eye)
    az, el = torch.deg2rad(torch.as_tensor(azimuth)), torch.deg2rad(torch.as_tensor(elevation))
    r = torch.as_tensor(radius, dtype=torch.float32)
    d = (torch.cos(el) * torch.cos(az))[..., None] * e1 + (torch.cos(el) * torch.sin(az))[..., None] * e2 \
        + torch.sin(el)[..., None] * u
    return center + r[..., None] * d


def _check(input_cams: Cameras, ref: int, n_frames: int, center=None) -> Tensor | None:
    if n_frames < 1:
        raise InputError(f"a camera path needs at least 1 frame, got {n_frames}")
    if not -len(input_cams) <= ref < len(input_cams):
        raise InputError(f"reference frame {ref} is outside the {len(input_cams)} input frames")
    if center is None:
        return None
    center = torch.as_tensor(center, dtype=torch.float32)
    if center.shape != (3,):
        raise InputError(f"the scene centre must be 3 numbers, got shape {tuple(center.shape)}")
    return center


def _times(times, n_frames: int) -> Tensor:
    """Given times (checked to lie in [0, 1]) or, by default, time playing across the whole input range."""
    if times is None:
        return torch.linspace(0.0, 1.0, n_frames) if n_frames > 1 else torch.zeros(1)
    times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
    if times.numel() != n_frames:
        raise InputError(f"{times.numel()} times given for a path of {n_frames} frames")
    if bool(((times < 0) | (times > 1)).any()):
        raise InputError("camera path times are normalised: they must lie in [0, 1]")
    return times


def _looking_at(eyes: Tensor, center: Tensor, up: Tensor, K: Tensor, input_cams: Cameras) -> Cameras:
    w2c = look_at(eyes, center.expand_as(eyes), up.expand_as(eyes))
    return Cameras(K.expand(len(eyes), 3, 3).clone(), w2c, input_cams.width, input_cams.height)


def orbit(input_cams: Cameras, center: Float[Tensor, "3"], degrees: float = 360.0, n_frames: int = 60,
          times: Float[Tensor, " N"] | None = None, ref: int = 0, up: Float[Tensor, "3"] | None = None) -> CameraPath:
    """An arc of `degrees` around the up axis through `center`, starting at input camera `ref`, every camera
    looking at the centre; distance and elevation stay those of the reference camera. Both ends are
    included (360 degrees ends where it started). Time plays across the input range unless `times` given."""
    center = _check(input_cams, ref, n_frames, center)
    up = mean_image_up(input_cams) if up is None else torch.as_tensor(up, dtype=torch.float32)
    ref_eye = input_cams.centers[ref]
    _, el, r = to_spherical(ref_eye, center, up, ref_eye)
    az = torch.linspace(0.0, degrees, n_frames) if n_frames > 1 else torch.zeros(1)
    eyes = from_spherical(center, up, ref_eye, az, el.expand_as(az), r.expand_as(az))
    return CameraPath(_looking_at(eyes, center, up, input_cams.K[ref], input_cams), _times(times, n_frames))


def bullet_time(input_cams: Cameras, center: Float[Tensor, "3"], degrees: float = 360.0, n_frames: int = 60,
                time: float = 0.5, ref: int | None = None, up: Float[Tensor, "3"] | None = None) -> CameraPath:
    """An orbit with time frozen at normalised `time`; it starts at the input camera of that moment
    (the frame nearest to `time`) unless `ref` says otherwise."""
    if not 0.0 <= time <= 1.0:
        raise InputError(f"bullet-time time is normalised to [0, 1], got {time}")
    if ref is None:
        ref = round(time * (len(input_cams) - 1))
    path = orbit(input_cams, center, degrees, n_frames, ref=ref, up=up)
    return CameraPath(path.cameras, torch.full((n_frames,), float(time)))


def spiral(input_cams: Cameras, center: Float[Tensor, "3"], n_frames: int = 60, degrees: float = 30.0,
           radius_amplitude: float = 0.1, elevation_amplitude: float = 10.0, cycles: float = 2.0,
           times: Float[Tensor, " N"] | None = None, ref: int = 0, up: Float[Tensor, "3"] | None = None
           ) -> CameraPath:
    """A spiral out of the reference camera's viewpoint, always looking at the centre: over `cycles` turns the
    eye circles the reference viewpoint on the sphere about the centre, the circle growing from nothing to
    +-`degrees` of azimuth and +-`elevation_amplitude` degrees of elevation, while the distance swings by
    +-`radius_amplitude` (fraction of the reference distance) with the azimuth. Staying near the input view keeps
    it inside what a forward-facing clip reconstructs (an orbit is `orbit`)."""
    center = _check(input_cams, ref, n_frames, center)
    up = mean_image_up(input_cams) if up is None else torch.as_tensor(up, dtype=torch.float32)
    ref_eye = input_cams.centers[ref]
    _, el0, r0 = to_spherical(ref_eye, center, up, ref_eye)
    s = torch.linspace(0.0, 1.0, n_frames) if n_frames > 1 else torch.zeros(1)
    phase = 2 * torch.pi * cycles * s
    az = degrees * s * torch.sin(phase)
    el = (el0 + elevation_amplitude * s * torch.cos(phase)).clamp(-89.0, 89.0)  # look_at needs a horizon
    r = r0 * (1 + radius_amplitude * s * torch.sin(phase))
    eyes = from_spherical(center, up, ref_eye, az, el, r)
    return CameraPath(_looking_at(eyes, center, up, input_cams.K[ref], input_cams), _times(times, n_frames))


def dolly(input_cams: Cameras, center: Float[Tensor, "3"], n_frames: int = 60, amount: float = 0.5,
          zoom: bool = False, times: Float[Tensor, " N"] | None = None, ref: int = 0) -> CameraPath:
    """Move input camera `ref` along its viewing direction, keeping its orientation, by `amount` times the
    depth of the centre (0.5: halfway to it; negative: away). With `zoom` (the "dolly zoom"), the focal
    length follows the distance so that things at the centre's depth keep their size in the image."""
    center = _check(input_cams, ref, n_frames, center)
    if amount >= 1.0:
        raise InputError(f"dolly amount {amount} would reach or pass the scene centre; use a value below 1")
    c2w = input_cams.c2w[ref]
    eye0, fwd = c2w[:3, 3], c2w[:3, 2]
    d0 = float((center - eye0) @ fwd)
    if d0 <= 0:
        raise InputError("the scene centre is behind the reference camera; a dolly needs it in front")
    s = torch.linspace(0.0, 1.0, n_frames) if n_frames > 1 else torch.zeros(1)
    travel = amount * d0 * s
    w2c = input_cams.w2c[ref].expand(n_frames, 4, 4).clone()
    # Moving the eye by +travel along the camera z axis shifts camera-space points by -travel in z.
    w2c[:, 2, 3] -= travel
    K = input_cams.K[ref].expand(n_frames, 3, 3).clone()
    if zoom:
        f_scale = (d0 - travel) / d0
        K[:, 0, 0] *= f_scale
        K[:, 1, 1] *= f_scale
    return CameraPath(Cameras(K, w2c, input_cams.width, input_cams.height), _times(times, n_frames))


def stabilized(input_cams: Cameras, frame: int, times: Float[Tensor, " N"] | None = None) -> CameraPath:
    """The camera of input frame `frame` held fixed while time plays over every input frame."""
    n = len(input_cams) if times is None else int(torch.as_tensor(times).numel())
    _check(input_cams, frame, n)
    cams = Cameras(input_cams.K[frame].expand(n, 3, 3).clone(), input_cams.w2c[frame].expand(n, 4, 4).clone(),
                   input_cams.width, input_cams.height)
    return CameraPath(cams, _times(times, n))


# nerfstudio camera_path.json: camera_to_world is a row-major 4x4 in OpenGL axes, fov is vertical (degrees),
# intrinsics are square pixels with a centred principal point, render_time (optional) is normalised time.

MAX_PATH_ENTRIES = 100_000  # as render --frames
MIN_RENDER_SIDE, MAX_RENDER_SIDE = 8, 16384  # pixels; what fits in memory is checked by render itself
MAX_POSITION = 1e6  # scene units: cameras farther out see nothing and overflow float32 projections


def load_camera_path(path) -> CameraPath:
    """Read a nerfstudio camera_path.json (as the nerfstudio viewer exports it), checked before any work: at most
    MAX_PATH_ENTRIES entries, sizes in [MIN_RENDER_SIDE, MAX_RENDER_SIDE], finite rigid camera_to_world matrices (a rotation and
    a position within MAX_POSITION), fov in (0, 180) degrees, render_time in [0, 1]."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"camera path file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a JSON camera path: {path} ({e})") from None
    entries = data.get("camera_path") if isinstance(data, dict) else None
    if not entries or not isinstance(entries, list):
        raise InputError(f"{path} has no 'camera_path' list (expected a nerfstudio camera_path.json)")
    if len(entries) > MAX_PATH_ENTRIES:
        raise InputError(f"{path} has {len(entries)} camera_path entries; at most {MAX_PATH_ENTRIES} are rendered")
    if data.get("camera_type", "perspective") != "perspective":
        raise InputError(f"{path}: camera_type {data['camera_type']!r} is not supported (only perspective)")
    try:
        height = _size(data["render_height"], "render_height", path)
        width = data["render_width"] if data.get("render_width") is not None else height * float(entries[0]["aspect"])
        width = _size(width, "render_width", path)
        c2w_gl = torch.tensor([e["camera_to_world"] for e in entries], dtype=torch.float64).reshape(-1, 4, 4)
        fov = torch.tensor([float(e["fov"]) for e in entries], dtype=torch.float64)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError):
        raise InputError(f"{path}: malformed camera path entry; each entry needs camera_to_world (16 numbers) and fov, "
                         "and the file render_height and render_width (or aspect)") from None
    if len(c2w_gl) != len(entries):
        raise InputError(f"{path}: each camera_to_world must hold 16 numbers (a 4x4 matrix)")
    _check_poses(c2w_gl, fov, path)
    f = 0.5 * height / torch.tan(torch.deg2rad(fov) / 2)
    K = torch.zeros(len(entries), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2, height / 2, 1.0
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl)
    if all(isinstance(e, dict) and "render_time" in e for e in entries):
        try:
            times = torch.tensor([float(e["render_time"]) for e in entries])
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{path}: render_time values must be numbers in [0, 1]") from None
        if bool(((times < 0) | (times > 1)).any()) or not math.isfinite(float(times.sum())):
            raise InputError(f"{path}: render_time values must lie in [0, 1]")
    else:
        times = _times(None, len(entries))
    return CameraPath(Cameras(K.float(), w2c.float(), width, height), times)


def _size(value, name: str, path: Path) -> int:
    size = float(value)  # TypeError / ValueError for what is no number: reported as malformed
    if not (math.isfinite(size) and MIN_RENDER_SIDE <= round(size) <= MAX_RENDER_SIDE):
        raise InputError(f"{path}: {name} must be within {MIN_RENDER_SIDE}..{MAX_RENDER_SIDE} pixels, got {value}")
    return round(size)


def _check_poses(c2w: Tensor, fov: Tensor, path: Path) -> None:
    """One line naming the first entry whose pose or fov cannot be a camera."""
    def first(bad: Tensor) -> int:
        return int(bad.nonzero()[0, 0])

    if not bool(torch.isfinite(c2w).all()):
        raise InputError(f"{path}: entry {first(~torch.isfinite(c2w).flatten(1).all(1))}: camera_to_world holds "
                         "a non-finite number (nan or inf)")
    bad_fov = ~((fov >= 1e-3) & (fov < 180))  # a smaller fov has no finite focal length in float32
    if bool(bad_fov.any()):
        raise InputError(f"{path}: entry {first(bad_fov)}: fov must be in (0, 180) degrees (at least 0.001), got "
                         f"{float(fov[first(bad_fov)]):g}")
    R = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=c2w.dtype)
    rotation = ((R.transpose(1, 2) @ R - eye).abs().amax((1, 2)) < 1e-2) & ((torch.linalg.det(R) - 1).abs() < 1e-2)
    bottom = (c2w[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype)).abs().amax(1) < 1e-6
    if not bool((rotation & bottom).all()):
        raise InputError(f"{path}: entry {first(~(rotation & bottom))}: camera_to_world is not a rigid pose (its 3x3 "
                         "part must be a rotation and its last row 0 0 0 1)")
    far = c2w[:, :3, 3].abs().amax(1) > MAX_POSITION
    if bool(far.any()):
        raise InputError(f"{path}: entry {first(far)}: camera position beyond {MAX_POSITION:g} scene units")


def save_camera_path(path, camera_path: CameraPath, fps: float = 24.0) -> None:
    """Write a nerfstudio camera_path.json. nerfstudio stores one vertical fov per camera, square pixels and
    a centred principal point: fx and the principal point of our cameras are not kept."""
    cams, times = camera_path
    c2w_gl = opencv_w2c_to_opengl_c2w(cams.w2c.double())
    fov = torch.rad2deg(2 * torch.atan(0.5 * cams.height / cams.K[:, 1, 1].double()))
    entries = [{"camera_to_world": c2w_gl[i].reshape(-1).tolist(), "fov": float(fov[i]),
                "aspect": cams.width / cams.height, "render_time": float(times[i])} for i in range(len(cams))]
    data = {"camera_type": "perspective", "render_height": cams.height, "render_width": cams.width,
            "fps": fps, "seconds": len(cams) / fps, "is_cycle": False, "smoothness_value": 0.0,
            "keyframes": [], "camera_path": entries}
    if not all(math.isfinite(v) for e in entries for v in e["camera_to_world"]):
        raise InputError("camera path has non-finite poses; nothing written")
    Path(path).write_text(json.dumps(data, indent=2))


# ---- nerfstudio transforms.json
# The nerfstudio dataset format (also read by instant-ngp, gsplat, ...): OpenGL camera-to-world
# `transform_matrix` per frame, pinhole intrinsics fl_x, fl_y, cx, cy, w, h shared at the top level (or per frame
# when they differ), `file_path` relative to the JSON's folder, and for dynamic scenes a normalised "time" in
# [0, 1] per frame (0 = first frame, 1 = last) as nerfstudio's D-NeRF / DyCheck parsers use it.

def write_transforms_json(path, cameras: Cameras, file_paths: list[str], times: list[float] | None = None,
                          extra: dict | None = None) -> None:
    """Write `cameras` (OpenCV world-to-camera inside) as a nerfstudio transforms.json at `path`."""
    if len(file_paths) != len(cameras):
        raise ValueError(f"{len(file_paths)} file paths for {len(cameras)} cameras")
    if times is not None and len(times) != len(cameras):
        raise ValueError(f"{len(times)} times for {len(cameras)} cameras")
    K = cameras.K.double()
    c2w_gl = opencv_w2c_to_opengl_c2w(cameras.w2c.double())
    shared = bool(torch.allclose(K, K[:1].expand_as(K)))

    def intrinsics(k: Tensor) -> dict:
        return {"fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2])}

    data: dict = {"camera_model": "OPENCV", "w": cameras.width, "h": cameras.height}
    if shared:
        data.update(intrinsics(K[0]))
    frames = []
    for i, file_path in enumerate(file_paths):
        frame = {"file_path": str(file_path), "transform_matrix": c2w_gl[i].tolist()}
        if not shared:
            frame.update(intrinsics(K[i]))
        if times is not None:
            frame["time"] = float(times[i])
        frames.append(frame)
    data.update(extra or {})
    data["frames"] = frames
    Path(path).write_text(json.dumps(data, indent=2))


def read_transforms_json(path) -> tuple[Cameras, list[str], list[float] | None]:
    """Read a nerfstudio (or NeRF/Blender-style) transforms.json: cameras in our convention, the frames'
    file paths as written, and per-frame times when every frame has one.

    Intrinsics come from fl_x/fl_y/cx/cy (top level or per frame, per frame wins) or, in the Blender format,
    from camera_angle_x; w/h must be given (top level or per frame). Lens distortion (k1, ...) is ignored.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"transforms file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a JSON transforms file: {path} ({e})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise InputError(f"{path} has no 'frames' list (expected a nerfstudio transforms.json)")
    try:
        width = int(frames[0].get("w", data.get("w")))
        height = int(frames[0].get("h", data.get("h")))
        K = torch.zeros(len(frames), 3, 3, dtype=torch.float64)
        for i, fr in enumerate(frames):
            get = lambda key: fr.get(key, data.get(key))  # noqa: E731 (per-frame value overrides the shared one)
            if get("fl_x") is not None:
                fx = float(get("fl_x"))
                fy = float(get("fl_y") if get("fl_y") is not None else fx)
            else:
                fx = fy = 0.5 * width / math.tan(0.5 * float(get("camera_angle_x")))
            cx = float(get("cx") if get("cx") is not None else width / 2)
            cy = float(get("cy") if get("cy") is not None else height / 2)
            K[i] = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]], dtype=torch.float64)
        c2w_gl = torch.tensor([fr["transform_matrix"] for fr in frames], dtype=torch.float64).reshape(-1, 4, 4)
        file_paths = [str(fr["file_path"]) for fr in frames]
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError):
        raise InputError(f"{path}: malformed transforms; each frame needs file_path and "
                         "transform_matrix (4x4), and the file w, h and fl_x/fl_y/cx/cy or camera_angle_x") from None
    times = [float(fr["time"]) for fr in frames] if all("time" in fr for fr in frames) else None
    w2c = opengl_c2w_to_opencv_w2c(c2w_gl)
    return Cameras(K.float(), w2c.float(), width, height), file_paths, times


def build_path(scene, kind: str, n: int, *, orbit_degrees=None, bullet_time_at=None, dolly_amount=None,
               stabilize=None, camera_path=None, degrees=90.0, hold_time=None) -> tuple[CameraPath, str]:
    """The camera path `monodyn render` asks for (n cameras + normalised times) and a short label for file
    names. kind: orbit, bullet-time, spiral, dolly, stabilize, camera-path, or input (the clip's own cameras)."""
    if kind == "input":
        idx = torch.linspace(0, scene.num_frames - 1, n).round().long()
        return CameraPath(scene.cameras[idx], scene.times[idx]), "input"
    if kind == "camera-path":
        path = load_camera_path(camera_path)
        if hold_time is not None:
            path = CameraPath(path.cameras, torch.full((len(path.cameras),), float(hold_time)))
        return path, Path(camera_path).stem
    center = scene.look_at_point()
    hold = None if hold_time is None else torch.full((n,), float(hold_time))
    if kind == "orbit":
        return orbit(scene.cameras, center, orbit_degrees, n, times=hold), f"orbit{orbit_degrees:g}"
    if kind == "bullet-time":
        return bullet_time(scene.cameras, center, degrees, n, time=bullet_time_at), f"bullet{bullet_time_at:g}"
    if kind == "spiral":
        return spiral(scene.cameras, center, n, times=hold), "spiral"
    if kind == "dolly":
        return dolly(scene.cameras, center, n, amount=dolly_amount, times=hold), f"dolly{dolly_amount:g}"
    if kind == "stabilize":
        times = hold if hold is not None else torch.linspace(0.0, 1.0, n)  # --frames resamples time
        return stabilized(scene.cameras, stabilize, times=times), f"stabilized{stabilize}"
    raise InputError(f"unknown camera path {kind!r}")


# ---- does a path stay inside the reconstructed scene?
# A fit only knows the scene as the clip filmed it. Two ways a path leaves it: its view holds little of the
# content (looking past it, or a camera_path.json from another workspace's coordinates), or it looks from a
# side the clip never saw (an orbit beyond the filmed arc), where the far side is holes and smears.
MIN_COVERAGE = 0.5  # a path frame's content coverage, relative to the input frames' (median)
MAX_AWAY_DEG = 45.0  # how far around the look-at point a path camera may go from the nearest input view
GRID = 4  # coverage: the image as GRID x GRID cells


def coverage(cams: Cameras, points: Float[Tensor, "P 3"], grid: int = GRID) -> Float[Tensor, " N"]:
    """Share of each camera's image, as grid x grid cells, in which some of `points` lie in front of it."""
    _, inside, xy = visible_points(points, cams, with_xy=True)
    cell = (xy[..., 0] / cams.width * grid).long().clamp(0, grid - 1) * grid \
        + (xy[..., 1] / cams.height * grid).long().clamp(0, grid - 1)
    hit = torch.zeros(len(cams), grid * grid, dtype=torch.bool)
    rows = torch.arange(len(cams))[:, None].expand_as(cell)
    hit[rows[inside], cell[inside]] = True
    return hit.float().mean(1)


def angle_from_inputs(path_cams: Cameras, input_cams: Cameras, center: Float[Tensor, "3"]) -> Float[Tensor, " N"]:
    """Degrees between each path camera's direction from `center` and the nearest input camera's."""
    unit = lambda c: torch.nn.functional.normalize(c.centers - center, dim=-1)  # noqa: E731
    cos = (unit(path_cams) @ unit(input_cams).T).max(1).values
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def path_warning(scene, path: CameraPath, kind: str) -> str | None:
    """One line saying why and where `path` (a `build_path` of `kind`) leaves the reconstructed scene and what to
    try, or None when it stays inside."""
    if kind in ("input", "stabilize"):
        return None  # the clip's own cameras
    content = scene.content_points()
    # without points or depth the scene centre stands for the content: it must at least be in view
    points, grid = (content, GRID) if content is not None else (torch.as_tensor(scene.center).float()[None], 1)
    cams, center = path.cameras, scene.look_at_point(content)
    wanted = MIN_COVERAGE * float(coverage(scene.cameras, points, grid).median())
    low = coverage(cams, points, grid) < wanted
    away = angle_from_inputs(cams, scene.cameras, center)
    far = away > MAX_AWAY_DEG
    if not (low.any() or far.any()):
        return None
    bad = (low | far).nonzero()[:, 0]
    where = f"in frames {int(bad[0])}-{int(bad[-1])} of {len(cams)}"
    if far.any():
        why = (f"views the scene from up to {float(away.max()):.0f} degrees beyond the nearest input view {where} "
               "(the clip never filmed it from there: expect holes and smears)")
    else:
        why = f"looks past the reconstructed scene {where} (under half the view holds scene content)"
    # the arc the path can turn before it goes too far (between its last good and first bad frame, where the
    # angle crosses MAX_AWAY_DEG), rounded down to 5 degrees, keeping its sign
    az = to_spherical(cams.centers, center, mean_image_up(scene.cameras), cams.centers[0])[0]
    i = int(bad[0])
    turned = float(az[i - 1]) if i > 0 else 0.0
    if i > 0 and far[i] and not low[i]:
        turned += float((az[i] - az[i - 1]) * (MAX_AWAY_DEG - away[i - 1]) / (away[i] - away[i - 1]).clamp(min=1e-6))
    safe = f"{math.copysign(max(5, 5 * int(abs(turned) // 5)), turned):g}"
    hint = {"orbit": f"a smaller arc, e.g. --orbit {safe}",
            "bullet-time": f"a smaller arc, e.g. --degrees {safe}",
            "dolly": "a smaller --dolly",
            "spiral": "--orbit 30 or --stabilize 0",
            "camera-path": "a path made in this workspace's coordinates (each render writes its "
                           "*-camera_path.json beside the video: start from one of those)"}.get(kind, "another path")
    name = {"bullet-time": "the bullet-time arc", "camera-path": "the camera path"}.get(kind, f"the {kind}")
    return f"{name} {why}; try {hint}"
