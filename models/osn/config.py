"""`OSNConfig`: every option of `monodyn fit --method osn` (the string under a field is its --help text)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from models.errors import InputError


@dataclass
class OSNConfig:
    # ---- schedule ---------------------------------------------------------------------------------------
    steps: int = 3000
    """Optimisation steps of the objects' Gaussians, one input frame each (stage 1 bootstrap + stage 2
    alternation)."""
    minutes: float = 0.0
    """Time budget in minutes (0 = none); each stage gets its share (see --bootstrap-fraction) and the fit stops
    at whichever of steps / minutes ends first. A budget makes the result depend on the machine's speed."""
    bootstrap_fraction: float = 0.4
    """Share of the steps (and minutes) spent in stage 1: every object rendered alone on its own masked pixels."""
    seed: int = 0
    """Random seed (initialisation, frame order, scale samples). Same seed and steps -> same weights on a CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device for fitting: auto picks cuda when available."""
    checkpoint_every: int = 500
    """Write the resume state (for `monodyn fit --resume`) every this many steps (0 = never: a killed fit starts
    over). The checkpoint itself is written when the fit ends."""

    # ---- objects: poses and Gaussians (models/gaussians) -------------------------------------------------
    min_posed: float = 0.5
    """An object counts as posed when PnP on its flow tracks poses at least this share of the frames where it is
    visible; the others stay part of the background (named in one line)."""
    background_points: int = 20000
    """Background Gaussians lifted from the keyframes' depth (plus the SfM points)."""
    object_points: int = 6000
    """Object Gaussians over all objects (split by object area), lifted in each object's own frame."""
    keyframes: int = 6
    """Frames (evenly spread) whose background / object pixels are lifted."""
    init_opacity: float = 0.7
    """Opacity of every Gaussian at the start."""
    lr_means: float = 1.6e-4
    """Learning rate of the Gaussians' means, in units of each object's size (decays 100x over the schedule)."""
    lr_scales: float = 5e-3
    """Learning rate of the log sizes."""
    lr_quats: float = 1e-3
    """Learning rate of the orientations."""
    lr_opacity: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_colors: float = 1e-2
    """Learning rate of the colour logits."""
    lr_scale_net: float = 0.001
    """Adam learning rate of the object scale network."""
    grow_grad2d: float = 0.0002
    """Screen-space gradient above which a Gaussian is duplicated (small) or split (large)."""
    refine_every: int = 50
    """Densify and prune every this many steps."""
    refine_stop: float = 0.6
    """Stop densifying at this point of the schedule."""
    max_gaussians: int = 100000
    """Upper bound on Gaussians per object (background included)."""

    # ---- losses ---------------------------------------------------------------------------------------
    ssim_weight: float = 0.2
    """Share of D-SSIM in the photometric loss (the rest is L1)."""
    depth_weight: float = 0.1
    """Weight of the depth loss: |rendered depth - s_k * object k's depth| / (s_k * its depth), where the scene
    has a depth (background: the depth stage; objects: per-object SfM, or a dense depth prediction)."""
    mask_weight: float = 0.1
    """Stage 1: opacity of an object alone -> 1 on its mask, -> 0 on background pixels; stage 2: the composite's
    opacity -> 1 everywhere."""
    seg_weight: float = 0.05
    """Stage 2: cross-entropy between the per-object shares of every pixel in the composite and the masks."""

    # ---- object scale network ------------------------------------------------------------------------------
    scale_min: float = 0.05
    """Smallest object scale searched, relative to the background's median depth (s_k = 1 puts an object's
    median depth at 1 background unit)."""
    scale_max: float = 2.0
    """Largest object scale searched, relative to the background's median depth."""
    scale_hidden: int = 64
    """Hidden units of the object scale network (3 hidden layers)."""
    scale_frequencies: int = 6
    """Frequency bands encoding the normalised log-scales for the scale network: more bands resolve a sharper
    valid boundary (an object resting on the ground is valid up to just the scale where it touches it)."""
    round_steps: int = 100
    """Stage 2 alternation: object steps per round, after which the scale network is trained."""
    scale_steps: int = 60
    """Scale-network steps per round (each on --scale-candidates fresh scale combinations)."""
    final_scale_steps: int = 600
    """Scale-network steps after the last round, on the final geometry: the valid set renders draw from. Cheap
    (no rendering); too few leave its boundary blurred, cutting off combinations at the edge of validity."""
    scale_candidates: int = 256
    """H: scale combinations labelled per scale-network step by soft Z-buffer rendering."""
    zbuffer_pixels: int = 60000
    """Pixels (over all frames, on a regular grid) whose per-object depth and opacity the soft Z-buffer uses."""
    zbuffer_temperature: float = 0.01
    """Soft Z-buffer temperature on log-depth (smaller = harder depth test)."""
    label_tolerance: float = 0.02
    """A scale combination is valid when, for every object, at most this fraction of its mask pixels (away from
    mask boundaries) gets another object in front of it."""

    def validate(self) -> None:
        """Every option in range; runs before the workspace is touched."""
        for name in ("minutes", "bootstrap_fraction", "scale_min", "scale_max", "min_posed", "init_opacity"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.minutes < 0:
            raise InputError(f"--minutes must be >= 0 (0 = no time budget), got {self.minutes}")
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.bootstrap_fraction <= 1.0:
            raise InputError(f"--bootstrap-fraction must be within [0, 1], got {self.bootstrap_fraction}")
        if not 0.0 <= self.min_posed <= 1.0:
            raise InputError(f"--min-posed must be within [0, 1], got {self.min_posed}")
        if not 0 < self.scale_min < self.scale_max:
            raise InputError(f"need 0 < --scale-min < --scale-max, got {self.scale_min} and {self.scale_max}")
        if self.final_scale_steps < 1:
            raise InputError(f"--final-scale-steps must be at least 1 (the scale network must learn the final geometry), "
                             f"got {self.final_scale_steps}")
        if self.scale_frequencies < 0:
            raise InputError(f"--scale-frequencies must be >= 0, got {self.scale_frequencies}")
        if not 0 < self.init_opacity < 1:
            raise InputError(f"--init-opacity must be in (0, 1), got {self.init_opacity}")
        for name in ("background_points", "object_points"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("keyframes", "refine_every", "max_gaussians", "scale_candidates", "round_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_means", "lr_scales", "lr_quats", "lr_opacity", "lr_colors", "lr_scale_net", "grow_grad2d",
                     "ssim_weight", "depth_weight", "mask_weight", "seg_weight", "zbuffer_temperature",
                     "label_tolerance", "refine_stop"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be finite and >= 0, got {v}")
        if self.ssim_weight > 1:
            raise InputError(f"--ssim-weight must be in [0, 1], got {self.ssim_weight}")


@dataclass
class OSNRenderOptions:
    """Which object-scale configuration `monodyn render --method osn` shows (default: the valid one nearest the
    centre of the valid set)."""

    scale_sample: int | None = None
    """Render the K-th sampled valid object-scale configuration."""
    scales: tuple[float, ...] | None = None
    """Render this object-scale configuration, e.g. 1.0,0.7 (one scale per object, objects in id order)."""
    scale_samples: int | None = None
    """Tile the first N sampled valid configurations side by side."""
    seed: int = 0
    """Seed of the sampled candidate configurations (as `monodyn osn scales --seed`)."""

    def validate(self) -> None:
        if sum(v is not None for v in (self.scale_sample, self.scales, self.scale_samples)) > 1:
            raise InputError("give only one of --scale-sample, --scales and --scale-samples")
        if self.scale_sample is not None and self.scale_sample < 0:
            raise InputError(f"--scale-sample must be >= 0, got {self.scale_sample}")
        if self.scale_samples is not None and not 1 <= self.scale_samples <= 16:
            raise InputError(f"--scale-samples must be in 1..16, got {self.scale_samples}")
        if self.scales is not None and not all(math.isfinite(v) and v > 0 for v in self.scales):
            raise InputError(f"--scales must be positive numbers, got {','.join(map(str, self.scales))}")
