"""DyST training data: the DySO-style 5 x 5 grid, the latent control swap pairing, real-clip windows.

A synthetic scene holds views i = pose * n_cams + cam (DySO: 5 object-pose states x 5 camera positions, so
camera = i mod 5 and pose = i div 5). The latent control swap (DyST section 3) estimates the target's camera
latent from a view with the same camera and another pose, and its dynamics latent from a view with the same
pose and another camera. Real clips have one view per moment: both latents come from the target itself.

The cached training set is a folder of .npy arrays (written once by `monodyn train dyst`, read memory-mapped):

    manifest.json            {"version", "width", "height", "synth": {...}, "real": [{"name", "frames"}]}
    synth_rgb.npy            (S, poses, cams, h, w, 3) uint8
    synth_azimuth.npy        (S, cams) float32 degrees about the scene centre (counter-clockwise about up)
    synth_elevation.npy      (S, cams) float32 degrees
    real_<k>.npy             (T_k, h, w, 3) uint8, clip k squashed to w x h
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor

from models.errors import InputError

DATA_VERSION = 1
HELDOUT_EVERY, HELDOUT_PHASE = 4, 2  # real frame t is held out (never an input or target) when t % 4 == 2


# ---- the 5 x 5 grid and the swap --------------------------------------------------------------------------

def view_index(pose: int, cam: int, n_cams: int = 5) -> int:
    return pose * n_cams + cam


def grid_of(index: int, n_cams: int = 5) -> tuple[int, int]:
    """(pose, cam) of view `index`."""
    return index // n_cams, index % n_cams


@dataclass(frozen=True)
class SwapSample:
    """View indices into one scene's grid: input views, the target, and where each latent is estimated."""

    inputs: tuple[int, ...]
    target: int
    camera_source: int  # same camera as the target, another pose (swap) / the target itself (no swap)
    dynamics_source: int  # same pose as the target, another camera (swap) / the target itself (no swap)
    reference: int  # same pose, another camera: the orbit head moves its camera latent onto the target's camera
    same_camera: int  # same camera, another pose: where the target differs from it, the dynamics are (ray sampling)


def sample_swap(rng: np.random.Generator, n_poses: int = 5, n_cams: int = 5, n_inputs: int = 3,
                swap: bool = True, nearest: np.ndarray | None = None) -> SwapSample:
    """Inputs: n_inputs distinct views; target: another view; latent sources by the control swap.
    nearest: (n_cams,) the closest other camera of each camera; when given, the dynamics source is the target's
    pose seen from its closest other camera instead of a random other one (the same draws either way)."""
    n = n_poses * n_cams
    if n_inputs >= n or n_poses < 2 or n_cams < 2:
        raise InputError(f"a {n_poses}x{n_cams} grid cannot give {n_inputs} inputs, a target and swap partners")
    order = rng.permutation(n)
    inputs, target = tuple(int(i) for i in order[:n_inputs]), int(order[n_inputs])
    pose, cam = grid_of(target, n_cams)
    other_pose = (pose + 1 + int(rng.integers(n_poses - 1))) % n_poses
    other_cam = (cam + 1 + int(rng.integers(n_cams - 1))) % n_cams
    if nearest is not None:
        other_cam = int(nearest[cam])
    reference, same_camera = view_index(pose, other_cam, n_cams), view_index(other_pose, cam, n_cams)
    if not swap:  # the same draws as with the swap, so both runs see the same inputs, targets and references
        return SwapSample(inputs, target, target, target, reference, same_camera)
    return SwapSample(inputs, target, same_camera, reference, reference, same_camera)


def nearest_cameras(azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """(C,) for each of C cameras on a sphere about the scene centre (degrees, (C,) each) the index of the
    camera with the smallest angle between their viewing directions (never itself)."""
    a, e = np.radians(np.asarray(azimuth, np.float64)), np.radians(np.asarray(elevation, np.float64))
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
    cos = d @ d.T
    np.fill_diagonal(cos, -np.inf)
    return cos.argmax(1)


def wrap_degrees(a):
    """Angles wrapped to (-180, 180]."""
    return -((-np.asarray(a) + 180.0) % 360.0 - 180.0)


# ---- resizing ---------------------------------------------------------------------------------------------

def squash(frames: UInt8[np.ndarray, "T H W 3"] | Float[Tensor, "T H W 3"], height: int, width: int,
           chunk: int = 64) -> Float[Tensor, "T h w 3"]:
    """Frames resized (antialiased, aspect not kept: the model's pixel queries are normalised per axis) to
    height x width, float32 in [0, 1]."""
    out = []
    for i in range(0, len(frames), chunk):
        x = torch.from_numpy(np.array(frames[i:i + chunk]))  # a copy: memory-mapped input is read-only
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1:3] != (height, width):
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False).permute(0, 2, 3, 1)
        out.append(x.clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, height, width, 3)


# ---- the cached training set ------------------------------------------------------------------------------

@dataclass
class TrainingSet:
    width: int
    height: int
    synth_rgb: np.ndarray  # (S, poses, cams, h, w, 3) uint8
    synth_azimuth: np.ndarray  # (S, cams)
    synth_elevation: np.ndarray  # (S, cams)
    real: list[np.ndarray] = field(default_factory=list)  # (T, h, w, 3) uint8 each
    real_names: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    @property
    def n_scenes(self) -> int:
        return int(self.synth_rgb.shape[0])


def save_training_set(folder: Path, ts: TrainingSet) -> None:
    """Write the arrays, then manifest.json last (a folder without it is incomplete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "synth_rgb.npy", ts.synth_rgb)
    np.save(folder / "synth_azimuth.npy", ts.synth_azimuth.astype(np.float32))
    np.save(folder / "synth_elevation.npy", ts.synth_elevation.astype(np.float32))
    for k, clip in enumerate(ts.real):
        np.save(folder / f"real_{k}.npy", clip)
    manifest = {**ts.manifest, "version": DATA_VERSION, "width": ts.width, "height": ts.height,
                "real": [{"name": n, "frames": len(c)} for n, c in zip(ts.real_names, ts.real)]}
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / "manifest.json")


def load_training_set(folder: Path) -> TrainingSet:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise InputError(f"{folder} is not a complete dyst training set (no manifest.json); build it with "
                         "`monodyn train dyst --data-dir DIR`")
    try:
        m = json.loads(path.read_text())
    except ValueError:
        m = None
    m = m if isinstance(m, dict) else {}  # a damaged manifest: a set of unknown format
    if m.get("version") != DATA_VERSION:
        raise InputError(f"{folder} is a dyst training set of format {m.get('version')} (need {DATA_VERSION}); "
                         "delete it and run `monodyn train dyst` again")
    real = [np.load(folder / f"real_{k}.npy", mmap_mode="r") for k in range(len(m.get("real", [])))]
    return TrainingSet(int(m["width"]), int(m["height"]), np.load(folder / "synth_rgb.npy", mmap_mode="r"),
                       np.load(folder / "synth_azimuth.npy"), np.load(folder / "synth_elevation.npy"), real,
                       [r["name"] for r in m.get("real", [])], m)


# ---- batches ----------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """inputs (B,V,h,w,3); camera / dynamics source views (B,h,w,3); target pixels at xy (B,R,2) -> rgb (B,R,3).
    For synthetic batches also the orbit-head pair: a reference view (B,h,w,3) of the target's pose from
    another camera, moved by (d_azimuth, d_elevation) degrees (B,) onto the target's camera."""

    inputs: Tensor
    camera_source: Tensor
    dynamics_source: Tensor
    xy: Tensor
    rgb: Tensor
    reference: Tensor | None = None
    d_azimuth: Tensor | None = None
    d_elevation: Tensor | None = None
    same_sources: bool = False  # both sources are the target itself (real batches, no-swap ablation)


def _pixels(rng: np.random.Generator, images: Tensor, rays: int, focus: Tensor | None = None,
            focus_fraction: float = 0.0) -> tuple[Tensor, Tensor]:
    """`rays` random pixels per image (B,h,w,3): normalised centres (B,R,2) and their colours (B,R,3). With a
    mask `focus` (B,h,w), `focus_fraction` of the rays are drawn among its pixels (where it has any)."""
    B, h, w, _ = images.shape
    idx = rng.integers(0, h * w, size=(B, rays))
    n_focus = int(round(rays * focus_fraction))
    if focus is not None and n_focus > 0:
        flat = focus.reshape(B, -1).numpy()
        for b in range(B):
            where = np.flatnonzero(flat[b])
            if len(where):
                idx[b, :n_focus] = where[rng.integers(0, len(where), size=n_focus)]
    idx = torch.as_tensor(idx)
    rows, cols = idx // w, idx % w
    xy = torch.stack([(cols + 0.5) / w * 2 - 1, (rows + 0.5) / h * 2 - 1], -1).float()
    rgb = torch.gather(images.reshape(B, h * w, 3), 1, idx[..., None].expand(-1, -1, 3))
    return xy, rgb


def _u8(a) -> Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32) / 255.0)


DYNAMIC_THRESHOLD = 0.08  # a target pixel is "dynamic" where it differs from the same camera's other pose by more


def synth_batch(rng: np.random.Generator, ts: TrainingSet, batch: int, rays: int, swap: bool,
                n_inputs: int = 3, dynamic_fraction: float = 0.0, nearest: bool = False) -> Batch:
    """One synthetic batch; `dynamic_fraction` of each target's rays fall on its dynamic pixels (where it differs
    from the same camera's view of another pose: the objects in either pose), the rest uniformly."""
    S, P, C = ts.synth_rgb.shape[:3]
    scenes = rng.integers(0, S, size=batch)
    picks = [sample_swap(rng, P, C, n_inputs, swap, nearest_cameras(ts.synth_azimuth[s], ts.synth_elevation[s])
                         if nearest else None) for s in scenes]
    take = lambda s, i: ts.synth_rgb[s, i // C, i % C]  # noqa: E731 (a one-line index helper)
    inputs = _u8(np.stack([np.stack([take(s, i) for i in p.inputs]) for s, p in zip(scenes, picks)]))
    target = _u8(np.stack([take(s, p.target) for s, p in zip(scenes, picks)]))
    cam_src = _u8(np.stack([take(s, p.camera_source) for s, p in zip(scenes, picks)]))
    dyn_src = _u8(np.stack([take(s, p.dynamics_source) for s, p in zip(scenes, picks)]))
    reference = dyn_src if swap else _u8(np.stack([take(s, p.reference) for s, p in zip(scenes, picks)]))
    focus = None
    if dynamic_fraction > 0:
        other = cam_src if swap else _u8(np.stack([take(s, p.same_camera) for s, p in zip(scenes, picks)]))
        focus = (target - other).abs().amax(-1) > DYNAMIC_THRESHOLD
    xy, rgb = _pixels(rng, target, rays, focus, dynamic_fraction)
    tgt_cam = np.array([p.target % C for p in picks])
    ref_cam = np.array([p.reference % C for p in picks])
    daz = wrap_degrees(ts.synth_azimuth[scenes, tgt_cam] - ts.synth_azimuth[scenes, ref_cam])
    delv = ts.synth_elevation[scenes, tgt_cam] - ts.synth_elevation[scenes, ref_cam]
    return Batch(inputs, cam_src, dyn_src, xy, rgb, reference, torch.as_tensor(daz, dtype=torch.float32),
                 torch.as_tensor(delv, dtype=torch.float32), same_sources=not swap)


def train_frames(n: int) -> np.ndarray:
    """Frame indices of a real clip used in training (the others are held out for evaluation)."""
    t = np.arange(n)
    return t[t % HELDOUT_EVERY != HELDOUT_PHASE] if n >= HELDOUT_EVERY else t


def input_frames(frames: np.ndarray, n_inputs: int = 3) -> np.ndarray:
    """n_inputs frames spread evenly over `frames` (first, middle, last for 3): the clip's input views."""
    pos = np.linspace(0, len(frames) - 1, n_inputs).round().astype(int)
    return np.asarray(frames)[pos]


def real_batch(rng: np.random.Generator, ts: TrainingSet, batch: int, rays: int, n_inputs: int = 3) -> Batch:
    """Windows of real clips: inputs spread over the window, a target inside it, latents from the target."""
    ins, tgts = [], []
    for _ in range(batch):
        clip = ts.real[int(rng.integers(len(ts.real)))]
        frames = train_frames(len(clip))
        n = len(frames)
        length = int(rng.integers(min(n, 8), n + 1))
        start = int(rng.integers(0, n - length + 1))
        window = frames[start:start + length]
        ins.append(np.stack([clip[i] for i in input_frames(window, n_inputs)]))
        tgts.append(clip[int(window[rng.integers(len(window))])])
    inputs, target = _u8(np.stack(ins)), _u8(np.stack(tgts))
    xy, rgb = _pixels(rng, target, rays)
    return Batch(inputs, target, target, xy, rgb, same_sources=True)
