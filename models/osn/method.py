"""`OSNMethod`: the `models.registry.Method` of OSN (fit, render any valid scale combination)."""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from models.cameras import Cameras
from models.errors import InputError
from models.fitting import Budget, run_fit
from models.osn.config import OSNConfig
from models.osn.model import N_CANDIDATES, OSNModel
from models.osn.trainer import OSNTask
from models.registry import FitProgress, RenderOutput
from models.scene import Scene

_LOADED: dict[tuple[str, str, float], OSNModel] = {}


def load_model(ckpt: Path, device: str | torch.device = "cpu") -> OSNModel:
    """The model in checkpoint folder `ckpt` on `device`, loaded once per (folder, device, file time)."""
    ckpt = Path(ckpt).resolve()
    weights = ckpt / "model.safetensors"
    if not weights.exists() or not (ckpt / "config.json").exists():
        raise InputError(f"not an OSN checkpoint: {ckpt} (no config.json / model.safetensors); run "
                         "`monodyn fit --method osn`")
    key = (str(ckpt), str(device), weights.stat().st_mtime)
    if key not in _LOADED:
        model, doc = OSNModel.load(ckpt, device)
        if doc.get("method") != "osn":
            raise InputError(f"{ckpt} is a {doc.get('method')!r} checkpoint, not an OSN one")
        model.eval()
        _LOADED.clear()  # one model at a time: renders go frame by frame through the same checkpoint
        _LOADED[key] = model
    return _LOADED[key]


def choose_scales(model: OSNModel, scale_sample: int | None = None, scales: list[float] | None = None,
                  scale_samples: int | None = None, seed: int = 0) -> list[Float[Tensor, "K"]]:
    """The scale combinations (objects 1..K) a render asks for: explicit `scales`, the `scale_sample`-th valid
    one, the first `scale_samples` valid ones, or by default the valid one nearest the centre of the valid set."""
    K = model.n_objects
    given = [v is not None for v in (scale_sample, scales, scale_samples)]
    if sum(given) > 1:
        raise InputError("give only one of --scale-sample, --scales and --scale-samples")
    if scales is not None:
        values = [float(v) for v in (scales if isinstance(scales, (list, tuple)) else str(scales).split(","))]
        if len(values) != K:
            raise InputError(f"--scales needs one scale per object ({K}: ids {model.objects.ids[1:]}), got {len(values)}")
        if any(v <= 0 for v in values):
            raise InputError(f"--scales must be positive, got {values}")
        return [torch.tensor(values)]
    valid, _ = model.valid_scales(seed)
    if scale_sample is not None or scale_samples is not None:
        wanted = list(range(scale_samples)) if scale_samples is not None else [int(scale_sample)]
        if scale_samples is not None and scale_samples < 1:
            raise InputError(f"--scale-samples must be at least 1, got {scale_samples}")
        if wanted and (min(wanted) < 0 or max(wanted) >= len(valid)):
            raise InputError(f"the scale network found {len(valid)} valid scale combinations among "
                             f"{N_CANDIDATES} candidates; ask for samples 0..{len(valid) - 1}")
        return [valid[i] for i in wanted]
    return [model.default_scales(seed)]


class OSNMethod:
    name = "osn"
    Config = OSNConfig

    def fit(self, scene: Scene, cfg: OSNConfig, out: Path, progress: FitProgress, resume: bool = False) -> Path:
        budget = Budget(cfg.steps, cfg.minutes or None)  # validated before the (slow) task set-up
        return run_fit(OSNTask(scene, cfg), out, budget, progress, checkpoint_every=cfg.checkpoint_every,
                       resume=resume)

    def render(self, ckpt: Path, cameras: Cameras, times: Float[Tensor, "N"], device: str = "cpu",
               scale_sample: int | None = None, scales: list[float] | None = None,
               scale_samples: int | None = None) -> RenderOutput:
        """One image per camera at its normalised time. Several scale combinations (`scale_samples`) are tiled
        side by side: rgb (N, H, S*W, 3). extras: object_weights (N,H,W',O), instance (N,H,W') object index
        of the largest weight (-1 where empty), scales (S, K) the combinations used (objects 1..K)."""
        model = load_model(ckpt, device)
        chosen = choose_scales(model, scale_sample, scales, scale_samples)
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1)
        if times.numel() not in (1, len(cameras)):
            raise InputError(f"render: {len(cameras)} cameras but {times.numel()} times")
        outs = [model.render_cameras(cameras, times.cpu(), s) for s in chosen]
        cat = {k: torch.cat([o[k] for o in outs], dim=2) for k in outs[0]}
        weights = cat["object_weights"]
        instance = torch.where(weights.sum(-1) > 0.5, weights.argmax(-1), torch.full_like(weights[..., 0], -1).long())
        return RenderOutput(rgb=cat["rgb"].clamp(0, 1), depth=cat["depth"], alpha=cat["alpha"],
                            extras={"object_weights": weights, "instance": instance, "scales": torch.stack(chosen)})
