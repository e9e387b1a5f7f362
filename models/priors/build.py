"""Which prior a DpDy fit uses (`--prior`, `--video-prior`) and building its hook."""

from __future__ import annotations

from pathlib import Path

import torch

from models.errors import InputError, WeightsNotFoundError
from models.weights import KNOWN, hub_source

PRIORS = ("auto", "ldm3d", "small", "none")
VIDEO_PRIORS = ("none", "animatediff")


def official_available(explicit: str = "") -> bool:
    """Whether LDM3D weights are found (explicit path, $MONODYN_LDM3D, the monodyn or Hugging Face cache)."""
    try:
        hub_source(KNOWN["ldm3d"], explicit or None)
        return True
    except WeightsNotFoundError:
        return False


def resolve_prior(name: str, checkpoint: str = "") -> str:
    """auto -> ldm3d when its weights are found, else small; other names as they are."""
    if name not in PRIORS:
        raise InputError(f"--prior must be one of {', '.join(PRIORS)}, got {name!r}")
    if name == "auto":
        return "ldm3d" if official_available(checkpoint) else "small"
    return name


def build_prior(cfg, device: torch.device):
    """The `NovelViewPrior` of a DpDyConfig (None for --prior none). LDM3D needs the fine-tune folder in
    cfg.prior_lora (made by `monodyn fit` as the workspace's prior_lora stage; without one, the model as it is)."""
    from models.priors.hook import NovelViewPrior, PriorSchedule

    name = resolve_prior(cfg.prior, cfg.prior_checkpoint)
    if name == "none":
        return None
    schedule = PriorSchedule(every=cfg.prior_every, start=cfg.prior_start, weight=cfg.prior_weight,
                             views=cfg.prior_views, size=cfg.prior_size, max_degrees=cfg.prior_max_degrees,
                             lift=cfg.prior_lift, video_weight=cfg.video_prior_weight, opacity=cfg.init_opacity)
    if name == "ldm3d":
        from models.priors.ldm3d import LDM3DScore, load_ldm3d, load_lora

        parts = load_ldm3d(cfg.prior_checkpoint, device)
        if cfg.prior_lora:
            load_lora(parts, Path(cfg.prior_lora))
        score = LDM3DScore(parts, size=cfg.prior_model_size)
    else:
        from models.priors.conditioned import ConditionedScore, load_conditioned_prior

        score = ConditionedScore(load_conditioned_prior(cfg.prior_checkpoint or None, device))
    video = None
    if cfg.video_prior == "animatediff":
        from models.priors.animatediff import VideoScore, load_animatediff

        video = VideoScore(load_animatediff(cfg.video_prior_base or None, cfg.video_prior_checkpoint or None, device),
                           size=cfg.prior_model_size)
    return NovelViewPrior(score, schedule, video, name)
