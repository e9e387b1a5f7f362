"""`OSNMethod`: the `models.registry.Method` of OSN (fit, render any valid scale combination)."""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from torch import Tensor

from models.cameras import Cameras
from models.checkpoints import read_checkpoint_config
from models.devices import resolve_device
from models.errors import InputError
from models.fitting import Budget, run_fit
from models.osn.config import OSNConfig, OSNRenderOptions
from models.osn.model import FORMAT, N_CANDIDATES, OSNModel
from models.osn.objects import dropped_line
from models.osn.trainer import OSNTask
from models.registry import FitProgress, RenderOutput, times_per_camera
from models.scene import Scene


def load_model(ckpt: Path, device: str | torch.device = "cpu") -> OSNModel:
    """The model in checkpoint folder `ckpt` on `device`; a missing, corrupt or other-format checkpoint is a
    one-line InputError that says to refit."""
    ckpt = Path(ckpt)
    refit = "refit with `monodyn fit --method osn --force`"
    weights = ckpt / "model.safetensors"
    read_checkpoint_config(ckpt, "osn", FORMAT, refit, version_key="format")
    try:
        model, doc = OSNModel.load(ckpt, device)
    except (SafetensorError, OSError, KeyError, RuntimeError) as e:
        raise InputError(f"{weights} is unreadable or does not match its config ({str(e).splitlines()[0]}); "
                         f"{refit}") from None
    return model.eval()


def choose_scales(model: OSNModel, scale_sample: int | None = None, scales: list[float] | None = None,
                  scale_samples: int | None = None, seed: int = 0) -> list[Float[Tensor, " K"]]:
    """The scale combinations (objects 1..K) a render asks for: explicit `scales`, the `scale_sample`-th valid
    one, the first `scale_samples` valid ones, or by default the valid one nearest the centre of the valid set.
    Without objects (K = 0) the one scene there is."""
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
    if K == 0:  # no object has a scale: the background is the one scene, whatever is asked for
        return [torch.zeros(0)]
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


def object_placements(ckpt: Path, choice: str = "centre", seed: int = 0) -> dict[int, float]:
    """{instance id: OSN scale} of one valid combination of the fit in `ckpt`: "centre" (the default
    combination), "near" / "far" (the valid one with the smallest / largest product of scales). Objects OSN could
    not pose are absent."""
    model = load_model(ckpt)
    if model.n_objects == 0:
        return {}
    if choice == "centre":
        scales = model.default_scales(seed)
    else:
        valid, _ = model.valid_scales(seed)
        if len(valid) == 0:
            scales = model.default_scales(seed)
        else:
            total = torch.log(valid).sum(-1)
            scales = valid[int(total.argmin() if choice == "near" else total.argmax())]
    return {k: float(s) for k, s in zip(model.objects.ids[1:], scales.tolist())}


class OSNRenderer:
    """One fitted OSN model and the scale combinations chosen for this render."""

    chunk = 1
    cache_key = None  # renders in seconds from a checkpoint; not worth disk space

    def __init__(self, model: OSNModel, options: OSNRenderOptions, device: torch.device):
        self.model, self.device = model, device
        self.scales = choose_scales(model, options.scale_sample, options.scales, options.scale_samples, options.seed)

    @torch.no_grad()
    def render(self, cameras: Cameras, times: Float[Tensor, " N"]) -> RenderOutput:
        """One image per camera at its normalised time. Several scale combinations are tiled side by side:
        rgb (N, H, S*W, 3). extras: object_weights (N,H,S*W,O), instance (N,H,S*W) object index of the largest
        weight (-1 where empty), scales (S, K) the combinations used (objects 1..K)."""
        times = times_per_camera(times, len(cameras)).cpu()
        outs = [self.model.render_cameras(cameras.to(self.device), times, s) for s in self.scales]
        cat = {k: torch.cat([o[k] for o in outs], dim=2) for k in outs[0]}
        weights = cat["object_weights"]
        instance = torch.where(weights.sum(-1) > 0.5, weights.argmax(-1), torch.full_like(weights[..., 0], -1).long())
        return RenderOutput(rgb=cat["rgb"].clamp(0, 1), depth=cat["depth"], alpha=cat["alpha"],
                            extras={"object_weights": weights, "instance": instance, "scales": torch.stack(self.scales)})


class OSNMethod:
    name = "osn"
    Config = OSNConfig
    RenderOptions = OSNRenderOptions
    version = FORMAT
    reads_object_sfm = True  # the fit uses per-object SfM poses when that optional stage ran

    def fit_notes(self, ckpt: Path) -> list[str]:
        """One line naming the objects the fit kept as background (poses not recoverable) and why."""
        import json

        from models.osn.objects import ObjectSet

        try:
            doc = json.loads((Path(ckpt) / "config.json").read_text())
            meta = doc["objects"]
        except (OSError, ValueError, KeyError):
            return []
        objects = ObjectSet(meta["ids"], None, None, None, 0, 0, None, [], 0.0, [], [],
                            {int(k): v for k, v in meta.get("dropped", {}).items()})
        line = dropped_line(objects)
        if len(meta["ids"]) == 1:
            line = (line + "; " if line else "") + "no object has a scale: the one scene OSN renders is the background"
        return [line] if line else []

    def fit(self, scene: Scene, cfg: OSNConfig, out: Path, progress: FitProgress, resume: bool = False) -> Path:
        budget = Budget(cfg.steps, cfg.minutes or None)  # validated before the (slow) task set-up
        return run_fit(OSNTask(scene, cfg), out, budget, progress, checkpoint_every=cfg.checkpoint_every,
                       resume=resume)

    def load(self, ckpt: Path | None, scene: Scene | None = None, options: OSNRenderOptions | None = None,
             device: str = "auto") -> OSNRenderer:
        if ckpt is None:
            raise InputError("osn renders a fitted checkpoint: run `monodyn fit --method osn` first")
        options = options or OSNRenderOptions()
        options.validate()
        dev = resolve_device(str(device))
        return OSNRenderer(load_model(ckpt, dev), options, dev)
