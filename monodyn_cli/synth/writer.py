"""Rendering whole scenes, the on-disk layout (see the package docstring) and reading it back."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from models.cameras import Cameras
from models.errors import InputError
from models.files import remove_stale_temps, replace_folder, temp_name
from monodyn_cli.synth.raycast import ViewGT, render_view
from monodyn_cli.synth.scene import SceneSpec, SynthConfig, Variant, build_scene
from monodyn_cli.workspace import Progress

ARRAYS = ("rgb", "depth", "instances", "flow_fw", "flow_bw", "valid_fw", "valid_bw")
# a variant is "valid" when nothing interpenetrates by more than this (world units) ...
MAX_PENETRATION = 1e-3
# ... and at most this fraction of the input video's pixels changes by more than CHANGED_LEVELS (of 255)
MAX_INPUT_CHANGE = 1e-4
CHANGED_LEVELS = 8


@dataclass
class SynthScene:
    """A generated scene held in memory: the description plus every camera's ground truth (base scene and
    each scale variant). Same reading interface as `SynthGT` (what `load_gt` returns)."""

    spec: SceneSpec
    views: dict[str, ViewGT]
    variant_views: dict[str, dict[str, ViewGT]]

    @property
    def meta(self) -> dict:
        return self.spec.to_json()

    @property
    def camera_names(self) -> list[str]:
        return list(self.views)

    @property
    def variant_names(self) -> list[str]:
        return list(self.variant_views)

    def view(self, camera: str, variant: str | None = None) -> ViewGT:
        views = self.views if variant is None else self.variant_views[variant]
        return views[camera]

    def object_poses(self, variant: str | None = None) -> np.ndarray:
        """(K,T,4,4) float32 object-to-world matrices (rotation times scale | translation)."""
        return self.spec.poses_for(variant).object_to_world()

    def part_poses(self, variant: str | None = None) -> np.ndarray:
        """(P,T,4,4) float32 part-to-world matrices of every primitive (`scene.primitives` order)."""
        return self.spec.parts(variant)[1].object_to_world()


def _render_all(spec: SceneSpec, device, progress: Progress) -> Iterator[tuple[str | None, ViewGT]]:
    """Every (variant or None, view), one camera at a time, the input camera first in each set; a variant's
    checks get the change of its input video as soon as that is rendered."""
    T = spec.cfg.frames
    names = list(spec.cameras)  # "input" first
    with progress.task("render", total=T * len(names) * (1 + len(spec.variants))) as advance:
        base_input = None
        for name in names:
            view = render_view(spec, name, device=device, advance=advance)
            if name == "input":
                base_input = view.rgb
            yield None, view
        for variant in spec.variants:
            for name in names:
                view = render_view(spec, name, variant.name, device=device, advance=advance)
                if name == "input":
                    _input_checks(variant, base_input, view.rgb)
                yield variant.name, view


def _input_checks(variant: Variant, base: np.ndarray, scaled: np.ndarray) -> None:
    """Record how much of the input video the scaling changed, and decide the variant's validity."""
    diff = np.abs(base.astype(np.int16) - scaled.astype(np.int16)).max(-1)
    changed = float((diff > CHANGED_LEVELS).mean())
    c = variant.checks
    c["input_changed_fraction"] = changed
    c["valid"] = bool(c["penetration_objects"] <= MAX_PENETRATION and c["penetration_background"] <= MAX_PENETRATION
                      and not c["camera_inside_object"] and changed <= MAX_INPUT_CHANGE)


def generate_scene(cfg: SynthConfig, device: str = "cpu", progress: Progress | None = None) -> SynthScene:
    """Build and render a whole scene in memory (all cameras, base scene and scale variants)."""
    spec = build_scene(cfg)
    views: dict[str, ViewGT] = {}
    variant_views: dict[str, dict[str, ViewGT]] = {v.name: {} for v in spec.variants}
    for variant, view in _render_all(spec, device, progress or Progress()):
        (views if variant is None else variant_views[variant])[view.name] = view
    return SynthScene(spec, views, variant_views)


# ---- writing -------------------------------------------------------------------------------------------------

def _write_poses(folder: Path, spec: SceneSpec, variant: str | None) -> None:
    """objects.npy, and parts.npy where figures make parts differ from objects."""
    np.save(folder / "objects.npy", spec.poses_for(variant).object_to_world())
    if any(o.parts for o in spec.objects):
        np.save(folder / "parts.npy", spec.parts(variant)[1].object_to_world())


def _write_view(folder: Path, view: ViewGT) -> None:
    folder.mkdir(parents=True)
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", getattr(view, name))
    cams = {"name": view.name, "role": view.role, **view.cameras.to_dict()}
    (folder / "cameras.json").write_text(json.dumps(cams))


def _write_common(tmp: Path, spec: SceneSpec, input_rgb: np.ndarray, crf: int) -> None:
    from monodyn_cli.video_io import write_mp4

    write_mp4(tmp / "input.mp4", input_rgb, spec.cfg.fps, crf=crf)
    (tmp / "gt" / "scene.json").write_text(json.dumps(spec.to_json(), indent=1))


def _prepare(out_dir: Path, force: bool) -> Path:
    """Refuse to replace a non-empty folder without `force`; return the temporary sibling to write into."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path exists and is not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise InputError(f"output folder is not empty: {out_dir} (pass --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent)  # what killed runs left
    tmp = temp_name(out_dir)
    (tmp / "gt").mkdir(parents=True)
    return tmp


def _commit(tmp: Path, out_dir: Path) -> None:
    """Put the finished folder in place with renames, so OUT_DIR is never half written."""
    replace_folder(tmp, Path(out_dir))


def _view_folder(root: Path, variant: str | None, camera: str) -> Path:
    return root / "gt" / camera if variant is None else root / "gt" / "variants" / variant / camera


def write_scene(scene: SynthScene, out_dir: str | Path, force: bool = False, crf: int = 12) -> Path:
    """Write an in-memory scene in the documented layout (atomically: temporary sibling, then rename)."""
    out_dir = Path(out_dir)
    tmp = _prepare(out_dir, force)
    try:
        for camera, view in scene.views.items():
            _write_view(_view_folder(tmp, None, camera), view)
        for variant, views in scene.variant_views.items():
            folder = tmp / "gt" / "variants" / variant
            folder.mkdir(parents=True)
            _write_poses(folder, scene.spec, variant)
            for camera, view in views.items():
                _write_view(_view_folder(tmp, variant, camera), view)
        _write_poses(tmp / "gt", scene.spec, None)
        _write_common(tmp, scene.spec, scene.views["input"].rgb, crf)
        _commit(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def synthesize(cfg: SynthConfig, out_dir: str | Path, force: bool = False, crf: int = 12, device: str = "cpu",
               progress: Progress | None = None) -> Path:
    """Generate a scene straight to disk, one camera at a time (memory stays at one camera's arrays).

    The layout is the same as `write_scene`'s; OUT_DIR appears only once everything is written.
    """
    out_dir = Path(out_dir)
    spec = build_scene(cfg)  # validates cfg before anything touches the disk
    tmp = _prepare(out_dir, force)
    try:
        _write_poses(tmp / "gt", spec, None)
        for v in spec.variants:
            (tmp / "gt" / "variants" / v.name).mkdir(parents=True)
            _write_poses(tmp / "gt" / "variants" / v.name, spec, v.name)
        input_rgb = None
        for variant, view in _render_all(spec, device, progress or Progress()):
            if variant is None and view.name == "input":
                input_rgb = view.rgb
            _write_view(_view_folder(tmp, variant, view.name), view)
        _write_common(tmp, spec, input_rgb, crf)
        _commit(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ---- reading -------------------------------------------------------------------------------------------------

class SynthGT:
    """A scene written by `monodyn synth`, read lazily: arrays are memory-mapped .npy files."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if (root / "gt" / "scene.json").is_file():
            root = root / "gt"
        if not (root / "scene.json").is_file():
            raise InputError(f"not a synthetic scene: {root} has no gt/scene.json (make one with `monodyn synth DIR`)")
        self.root = root
        self.meta: dict = json.loads((root / "scene.json").read_text())

    @property
    def camera_names(self) -> list[str]:
        return [c["name"] for c in self.meta["cameras"]]

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.meta["variants"]]

    @property
    def input_video(self) -> Path:
        return self.root.parent / "input.mp4"

    def _folder(self, camera: str, variant: str | None) -> Path:
        if camera not in self.camera_names:
            raise InputError(f"no camera {camera!r} in {self.root}; have {', '.join(self.camera_names)}")
        if variant is not None and variant not in self.variant_names:
            raise InputError(f"no scale variant {variant!r} in {self.root}; have {self.variant_names or 'none'}")
        return self.root / camera if variant is None else self.root / "variants" / variant / camera

    def cameras(self, camera: str, variant: str | None = None) -> Cameras:
        return Cameras.from_dict(json.loads((self._folder(camera, variant) / "cameras.json").read_text()))

    def view(self, camera: str, variant: str | None = None, mmap: bool = True) -> ViewGT:
        folder = self._folder(camera, variant)
        cams = json.loads((folder / "cameras.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
        return ViewGT(camera, cams.get("role", ""), Cameras.from_dict(cams), **arrays)

    def object_poses(self, variant: str | None = None) -> np.ndarray:
        """(K,T,4,4) float32 object-to-world matrices (rotation times scale | translation)."""
        folder = self.root if variant is None else self.root / "variants" / variant
        return np.load(folder / "objects.npy")

    def part_poses(self, variant: str | None = None) -> np.ndarray:
        """(P,T,4,4) float32 part-to-world matrices: figures' parts (scene.json objects[k].parts) in object
        order, a rigid object as its own part (then these are `object_poses`)."""
        folder = self.root if variant is None else self.root / "variants" / variant
        return np.load(folder / ("parts.npy" if (folder / "parts.npy").is_file() else "objects.npy"))


def load_gt(path: str | Path) -> SynthGT:
    """Open OUT_DIR (or OUT_DIR/gt) written by `monodyn synth` / `synthesize` / `write_scene`."""
    return SynthGT(path)
