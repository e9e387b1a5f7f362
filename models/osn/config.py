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
    """Optimisation steps of the object fields (stage 1 bootstrap + stage 2 alternation)."""
    minutes: float = 0.0
    """Time budget in minutes (0 = none); each stage gets its share (see --bootstrap-fraction) and the fit stops
    at whichever of steps / minutes ends first. A budget makes the result depend on the machine's speed."""
    bootstrap_fraction: float = 0.4
    """Share of the steps (and minutes) spent in stage 1: every object alone on its own masked pixels."""
    seed: int = 0
    """Random seed (initialisation, ray batches, scale samples). Same seed and steps -> same weights on a CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device for fitting: auto picks cuda when available."""
    batch_rays: int = 2048
    """Rays per step (stage 1: shared by the objects; stage 2: one composite batch)."""
    checkpoint_every: int = 500
    """Write the resume state (for `monodyn fit --resume`) every this many steps (0 = never: a killed fit starts
    over). The checkpoint itself is written when the fit ends."""
    lr_grid: float = 0.02
    """Adam learning rate of the TensoRF factor grids."""
    lr_net: float = 0.001
    """Adam learning rate of the colour decoders and of the scale network."""

    # ---- objects (scale-invariant representations) --------------------------------------------------------
    object_resolution: int = 48
    """TensoRF-VM texels per axis of every object's unit volume."""
    background_resolution: int = 96
    """TensoRF-VM texels per axis of the background (object 0, scale fixed to 1)."""
    density_rank: int = 8
    """Density components per VM mode."""
    app_rank: int = 16
    """Appearance components per VM mode."""
    density_shift: float = -1.0
    """Initial log-density of the fields (TensoRF density shift). A dense start learns fastest; empty space is
    then cleared by the colour / opacity losses and skipped by the occupancy grids (seeded from depth when the
    scene has one)."""
    decoder: Literal["sh", "mlp"] = "sh"
    """Colour decoder: spherical harmonics (degree 1, fastest) or a small MLP with view encoding."""
    background_space: Literal["auto", "aabb", "contracted"] = "auto"
    """Background field box: aabb = the scene box (bounded rooms, synthetic scenes); contracted = the scene sphere
    kept linear, everything beyond squeezed in (real clips). auto: aabb when the scene declares itself bounded."""
    object_margin: float = 1.3
    """Each object's unit volume is its silhouette-derived radius times this margin."""
    n_samples_object: int = 64
    """Candidate samples across an object's unit-volume diagonal."""
    n_samples_background: int = 128
    """Candidate samples across the background box (or near..far when contracted)."""
    occupancy_every: int = 16
    """Update the objects' occupancy grids (empty-space skipping) every this many steps."""
    occupancy_warmup: int = 64
    """Steps before empty-space skipping starts."""

    # ---- losses ---------------------------------------------------------------------------------------
    depth_weight: float = 0.1
    """Weight of the depth loss: |rendered depth - s_k * object k's SfM depth| / (s_k * SfM depth)."""
    mask_weight: float = 0.1
    """Stage 1: opacity of an object alone -> 1 on its mask, -> 0 on background pixels it covers."""
    seg_weight: float = 0.05
    """Stage 2: cross-entropy between per-ray object weights of the composite and the instance masks."""
    tv_weight: float = 0.01
    """Total variation of the density planes (smooth geometry)."""

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
    """Stage 2 alternation: object-field steps per round, after which the scale network is trained."""
    scale_steps: int = 60
    """Scale-network steps per round (each on --scale-candidates fresh scale combinations)."""
    final_scale_steps: int = 600
    """Scale-network steps after the last round, on the final geometry: the valid set renders draw from. Cheap
    (no volume rendering); too few leave its boundary blurred, cutting off combinations at the edge of validity."""
    scale_candidates: int = 256
    """H: scale combinations labelled per scale-network step by soft Z-buffer rendering."""
    zbuffer_pixels: int = 60000
    """Pixels (over all frames, on a regular grid) whose per-object depth and opacity the soft Z-buffer uses."""
    zbuffer_temperature: float = 0.01
    """Soft Z-buffer temperature on log-depth (smaller = harder depth test)."""
    label_tolerance: float = 0.02
    """A scale combination is valid when, for every object, at most this fraction of its mask pixels (away from
    mask boundaries) gets another object in front of it."""
    composite_groups: int = 4
    """Stage 2: valid scale combinations per composite batch (its rays are split among them)."""

    def validate(self) -> None:
        """Every option in range; runs before the workspace is touched."""
        for name in ("minutes", "bootstrap_fraction", "scale_min", "scale_max"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.minutes < 0:
            raise InputError(f"--minutes must be >= 0 (0 = no time budget), got {self.minutes}")
        if self.steps < 1:
            raise InputError(f"--steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.bootstrap_fraction <= 1.0:
            raise InputError(f"--bootstrap-fraction must be within [0, 1], got {self.bootstrap_fraction}")
        if not 0 < self.scale_min < self.scale_max:
            raise InputError(f"need 0 < --scale-min < --scale-max, got {self.scale_min} and {self.scale_max}")
        if self.final_scale_steps < 1:
            raise InputError(f"--final-scale-steps must be at least 1 (the scale network must learn the final geometry), "
                             f"got {self.final_scale_steps}")
        if self.scale_frequencies < 0:
            raise InputError(f"--scale-frequencies must be >= 0, got {self.scale_frequencies}")
        if self.batch_rays < 8:
            raise InputError(f"--batch-rays must be at least 8, got {self.batch_rays}")


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
