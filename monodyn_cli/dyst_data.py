"""DyST's cached training / evaluation sets: DySO-style synthetic scenes from our generator + real clips.

A DySO-style scene (DyST section 4; Kubric MSN-like) is one of our synthetic rooms with 1-3 objects seen in
5 object-pose states x 5 camera positions = 25 views. Pose state p is the generator's frame p with fps 0.5
(2 seconds of object motion between states: objects move and turn visibly). The 5 cameras are still, look
at the scene centre from a random azimuth (0-360 degrees) and elevation (10-40 degrees) at 0.75x the
generator's camera distance (objects fill more of a 32x24 image). Scene s uses generator seed `seed0 + s`;
evaluation seeds start at EVAL_SEED0, far from any training seed.

Real clips: every video (mp4, mov, avi, mkv, webm) or folder of images (jpg, png; directly or in images/)
in the --real folders, decoded, squashed to the model size, all frames kept (held-out frames are chosen
by index at training time: models/dyst/data.py HELDOUT_*).

The set is written once to `<cache>/dyst/<kind>-<key16>/` (key = everything that determines the arrays) and
memory-mapped afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

TRAIN_SEED0 = 1000
EVAL_SEED0 = 900_000
VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_EXT = {".jpg", ".jpeg", ".png"}
CAMERA_DISTANCE = 0.75
ELEVATION = (10.0, 40.0)


def default_real_dirs() -> list[Path]:
    """../shared/data/clips beside the project, when present."""
    p = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
    return [p] if p.is_dir() else []


def find_clips(dirs: Iterable[Path]) -> list[Path]:
    """Videos and image folders inside `dirs` (or the paths themselves), sorted by name."""
    from models.errors import InputError

    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise InputError(f"--real {d}: no such file or folder")
        if d.is_file() or _image_folder(d):
            found.append(d)
            continue
        for p in sorted(d.iterdir()):
            if (p.is_file() and p.suffix.lower() in VIDEO_EXT) or (p.is_dir() and _image_folder(p)):
                found.append(p)
    return found


def _image_folder(d: Path) -> Path | None:
    for cand in (d / "images", d):
        if cand.is_dir() and any(p.suffix.lower() in IMAGE_EXT for p in cand.iterdir()):
            return cand
    return None


def read_clip(path: Path, height: int, width: int, max_frames: int = 400) -> np.ndarray:
    """(T,h,w,3) uint8 frames of a video or image folder squashed to width x height."""
    from PIL import Image

    from models.dyst.data import squash
    from models.errors import InputError

    path = Path(path)
    frames = []
    folder = _image_folder(path) if path.is_dir() else None
    if folder is not None:
        for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_EXT)[:max_frames]:
            img = Image.open(p).convert("RGB")
            img = img.resize((width * 4, height * 4), Image.BILINEAR)  # cheap pre-shrink; squash antialiases
            frames.append(np.asarray(img))
    else:
        import av

        try:
            with av.open(str(path)) as container:
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24", width=width * 4, height=height * 4))
                    if len(frames) >= max_frames:
                        break
        except av.error.FFmpegError as e:
            raise InputError(f"not a video: {path} (PyAV: {e})") from None
    if len(frames) < 4:
        raise InputError(f"{path}: {len(frames)} frames; a clip for DyST needs at least 4")
    out = squash(np.stack(frames), height, width)
    return (out.numpy() * 255 + 0.5).astype(np.uint8)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def render_dyso_scene(seed: int, height: int, width: int, poses: int = 5, cams: int = 5
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(poses, cams, h, w, 3) uint8 views, camera azimuths and elevations (cams,) in degrees."""
    import torch

    from models.cameras import Cameras, intrinsics_from_fov, look_at
    from monodyn_cli.synth.raycast import render_view
    from monodyn_cli.synth.scene import CameraRig, SynthConfig, _spherical, build_scene, camera_radius

    n_obj = 1 + seed % 3
    cfg = SynthConfig(seed=seed, frames=poses, width=width, height=height, fps=0.5, objects=n_obj,
                      camera="static", heldout_azimuths=(), fixed_cameras=0, fov_deg=50.0)
    spec = build_scene(cfg)
    rng = np.random.default_rng([seed, 77])
    az = rng.uniform(0, 360, cams)
    el = rng.uniform(*ELEVATION, cams)
    radius = CAMERA_DISTANCE * camera_radius(n_obj)
    K = intrinsics_from_fov(width, height, cfg.fov_deg)
    centre = torch.tensor(spec.centre, dtype=torch.float32)
    spec.cameras = {}
    out = np.empty((poses, cams, height, width, 3), np.uint8)
    for c in range(cams):
        eye = torch.tensor(_spherical(spec.centre, radius, np.full(poses, az[c]), np.full(poses, el[c])),
                           dtype=torch.float32)
        spec.cameras[f"c{c}"] = CameraRig(f"c{c}", "fixed", Cameras(K.expand(poses, 3, 3).clone(),
                                                                     look_at(eye, centre.expand(poses, 3)),
                                                                     width, height))
        out[:, c] = render_view(spec, f"c{c}").rgb
    return out, az.astype(np.float32), el.astype(np.float32)


def build_set(cache: Path, kind: str, scenes: int, seed0: int, height: int, width: int, real: list[Path],
              advance: Callable[[int], None] | None = None, log: Callable[[str], None] = lambda s: None) -> Path:
    """The cached set folder (built now when missing). kind: 'train' or 'eval'."""
    from models.dyst.data import TrainingSet, save_training_set
    from monodyn_cli.synth.scene import SCENE_VERSION

    real = [Path(p).resolve() for p in real]
    stamp = [(str(p), p.stat().st_size if p.is_file() else len(list(p.rglob("*")))) for p in real]
    key = _key({"v": 2, "scene": SCENE_VERSION, "kind": kind, "scenes": scenes, "seed0": seed0, "h": height,
                "w": width, "real": stamp, "dist": CAMERA_DISTANCE, "el": ELEVATION})
    folder = Path(cache) / f"{kind}-{key}"
    if (folder / "manifest.json").exists():
        log(f"dyst {kind} set: cached {folder}")
        return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rgb = np.empty((scenes, 5, 5, height, width, 3), np.uint8)
    az = np.empty((scenes, 5), np.float32)
    el = np.empty((scenes, 5), np.float32)
    for s in range(scenes):
        rgb[s], az[s], el[s] = render_dyso_scene(seed0 + s, height, width)
        if advance:
            advance(1)
    clips = [read_clip(p, height, width) for p in real]
    if advance and real:
        advance(len(real))
    ts = TrainingSet(width, height, rgb, az, el, clips, [p.name for p in real],
                     {"kind": kind, "seeds": [seed0, seed0 + scenes - 1], "key": key,
                      "sources": [str(p) for p in real]})
    save_training_set(tmp, ts)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    log(f"dyst {kind} set: built {folder}")
    return folder
