"""`monodyn render --method dyst` options (torch-free: the CLI reads them at start-up), and the hook through
which the CLI lends models/dyst a way to open another clip's workspace (models never import the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models.errors import InputError

_scene_loader: Callable[[Path], object] | None = None


def set_scene_loader(loader: Callable[[Path], object]) -> None:
    """`loader(path) -> Scene` for `--camera-from/--dynamics-from CLIP` (the CLI registers its workspace loader)."""
    global _scene_loader
    _scene_loader = loader


def load_other_scene(path: Path):
    if _scene_loader is None:
        raise InputError(f"cannot open {path}: no workspace loader registered (call "
                         "models.dyst.options.set_scene_loader, as the monodyn CLI does)")
    return _scene_loader(Path(path))


def parse_clip_ref(text: str, option: str) -> tuple[Path, int | None]:
    """'PATH[:FRAME]' -> (path, frame or None)."""
    path, frame = text, None
    head, sep, tail = text.rpartition(":")
    if sep and tail.strip().lstrip("-").isdigit():
        path, frame = head, int(tail)
        if frame < 0:
            raise InputError(f"{option} {text}: FRAME must be >= 0")
    if not path:
        raise InputError(f"{option} needs CLIP[:FRAME] (a *.monodyn workspace folder), got {text!r}")
    return Path(path), frame


@dataclass
class DySTRenderOptions:
    camera_from: str | None = None
    """CLIP[:FRAME]: camera latents from another preprocessed clip (its *.monodyn workspace): frame by frame at
    the same normalised time, or its frame FRAME for every output frame (control transfer)."""
    dynamics_from: str | None = None
    """CLIP[:FRAME]: dynamics latents from another preprocessed clip, as --camera-from."""
    freeze_camera: int | None = None
    """Hold the camera latent of input frame F while the dynamics play (DyST's stabilised view)."""
    freeze_dynamics: int | None = None
    """Hold the dynamics latent of input frame F while the camera moves (DyST's bullet time)."""
    dyst_checkpoint: str | None = None
    """DyST checkpoint folder (config.json + model.safetensors); default: $MONODYN_DYST_CHECKPOINT, then
    $MONODYN_CACHE/dyst/model, then the small model bundled with monodyn."""
    dyst_decode_scale: float = 2.0
    """Decode at this multiple of the model's training resolution (at most the output size), then resize."""

    def validate(self) -> None:
        refs = {}
        for option, value in (("--camera-from", self.camera_from), ("--dynamics-from", self.dynamics_from)):
            if value is not None:
                path, frame = parse_clip_ref(value, option)
                if not path.exists():
                    raise InputError(f"{option} {path}: no such workspace folder (preprocess that clip first)")
                refs[option] = (path, frame)
        for option, value in (("--freeze-camera", self.freeze_camera), ("--freeze-dynamics", self.freeze_dynamics)):
            if value is not None and value < 0:
                raise InputError(f"{option} is an input frame index (>= 0), got {value}")
        if self.camera_from is not None and self.freeze_camera is not None:
            raise InputError("--camera-from and --freeze-camera both set the camera latent: choose one")
        if self.dynamics_from is not None and self.freeze_dynamics is not None:
            raise InputError("--dynamics-from and --freeze-dynamics both set the dynamics latent: choose one")
        if self.dyst_checkpoint is not None and not Path(self.dyst_checkpoint).is_dir():
            raise InputError(f"--dyst-checkpoint {self.dyst_checkpoint}: no such folder")
        if not 0 < self.dyst_decode_scale <= 16:
            raise InputError(f"--dyst-decode-scale must be in (0, 16], got {self.dyst_decode_scale}")
