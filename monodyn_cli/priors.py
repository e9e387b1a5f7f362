"""DpDy's prior in the workspace: which prior `--prior auto` means here, and LDM3D's fine-tune on the clip as a
cached stage of its own (`<workspace>/prior_lora/<key>/`), so a second fit of the same clip reuses it.

Both are settled before the fit's cache key is made: the key then names the prior actually used (a fit with
the small prior is not served once LDM3D weights appear) and the fine-tune it read.
"""

from __future__ import annotations

import numpy as np
import torch

LORA_VERSION = 1
LORA_FRAMES = 24  # frames (evenly spread) the fine-tune sees


def prepare_prior(ws, cfg, scene, keys: dict[str, str], progress, log) -> str | None:
    """Resolve cfg.prior ('auto' -> 'ldm3d' or 'small') and, for ldm3d, run or reuse the LoRA stage and put its
    folder into cfg.prior_lora; adds the prior's identity to the fit's input `keys` (the LoRA stage's key, or a
    digest of the small prior's weights: a retrained prior is a new fit). Returns a line saying which prior the
    fit uses (None for a method without one)."""
    if not hasattr(cfg, "prior"):
        return None
    from models.priors.build import resolve_prior

    cfg.prior = resolve_prior(cfg.prior, cfg.prior_checkpoint)
    if cfg.prior == "ldm3d":
        if not cfg.prior_lora:
            stage = lora_stage(ws, cfg, scene, progress, log)
            cfg.prior_lora, keys["prior_lora"] = str(stage.path), stage.key
    elif cfg.prior == "small":
        keys["prior"] = small_prior_digest(cfg.prior_checkpoint)
    if cfg.prior == "small" and not cfg.prior_checkpoint:
        return "prior: the small shipped RGB-D prior (no LDM3D weights found; see `monodyn fit --help` for them)"
    return f"prior: {cfg.prior}" + (f", video prior: {cfg.video_prior}" if cfg.video_prior != "none" else "")


def small_prior_digest(folder: str = "") -> str:
    import hashlib
    from pathlib import Path

    from models.errors import InputError
    from models.priors.conditioned import SHIPPED

    path = Path(folder or SHIPPED) / "model.safetensors"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise InputError(f"--prior-checkpoint {folder}: not a prior written by `monodyn train prior` ({e})") from None


def lora_stage(ws, cfg, scene, progress, log):
    """The workspace's LoRA fine-tune of LDM3D on this clip (cached by checkpoint, steps, rank, frames, depth)."""
    from models.devices import resolve_device
    from models.priors.ldm3d import LoraOptions, finetune_lora, load_ldm3d
    from models.weights import KNOWN, find_weights

    spec = KNOWN["ldm3d"]
    source = cfg.prior_checkpoint or (str(find_weights(spec) or spec.hub_id))
    opts = LoraOptions(rank=cfg.prior_lora_rank, steps=cfg.prior_lora_steps, seed=cfg.seed,
                       size=cfg.prior_model_size)
    inputs = {"decode": ws.require("decode")}
    if (depth := ws.current("depth")) is not None:
        inputs["depth"] = depth
    config = {"source": source, "rank": opts.rank, "steps": opts.steps, "size": opts.size, "seed": opts.seed,
              "frames": LORA_FRAMES}

    def run(ctx) -> list[str]:
        device = resolve_device(cfg.device)
        parts = load_ldm3d(cfg.prior_checkpoint, device)
        frames, disparity = clip_rgbd(scene, opts.size, 8 * 2 ** (len(parts.vae.config.block_out_channels) - 1))
        with ctx.progress.task("prior: LDM3D LoRA fine-tune", opts.steps) as advance:
            losses = finetune_lora(parts, frames, disparity, opts, ctx.out, advance)
        ctx.extra["loss_first_last"] = [round(losses[0], 4), round(losses[-1], 4)]
        return ["lora.safetensors", "lora.json"]

    return ws.run_stage("prior_lora", LORA_VERSION, config, inputs, run, progress, log=log)


def clip_rgbd(scene, size: int, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to LORA_FRAMES frames (T,3,h,w) in [0,1] at `size` on the long side (sides divisible by `multiple`) and
    their normalised disparity (T,1,h,w): from the depth stage where it has values, filled in (inpainted) where
    it has none; 0.5 everywhere without a depth stage."""
    import cv2

    from models.priors.rgbd import DisparityRange

    idx = np.unique(np.linspace(0, scene.num_frames - 1, min(LORA_FRAMES, scene.num_frames)).round().astype(int))
    s = size / max(scene.width, scene.height)
    h, w = (max(multiple, round(x * s / multiple) * multiple) for x in (scene.height, scene.width))
    rgb = np.stack([cv2.resize(np.asarray(scene.frames[i]), (w, h), interpolation=cv2.INTER_AREA) for i in idx])
    disp = np.full((len(idx), h, w), 0.5, np.float32)
    if scene.depth is not None:
        for k, i in enumerate(idx):
            z = cv2.resize(np.asarray(scene.depth[i], np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
            known = z > 0
            if known.sum() < 4:
                continue
            zt = torch.as_tensor(np.where(known, z, 1.0))[None]
            d = DisparityRange.of(zt, torch.as_tensor(known, dtype=torch.float32)[None]).normalise(zt)[0].numpy()
            d = np.clip(d, -0.5, 1.5).astype(np.float32)
            disp[k] = cv2.inpaint(d, (~known).astype(np.uint8), 3, cv2.INPAINT_TELEA) if (~known).any() else d
    frames = torch.as_tensor(rgb).permute(0, 3, 1, 2).float() / 255
    return frames, torch.as_tensor(disp)[:, None].clamp(0, 1)
