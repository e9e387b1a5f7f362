"""`DpDyConfig`: every option of `monodyn fit --method dpdy` (the string under a field is its --help text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DpDyConfig:
    # ---- schedule ---------------------------------------------------------------------------------------
    steps: int = 3000
    """Optimisation steps (one input frame each; learning rates decay and densification runs over them)."""
    minutes: float = 0.0
    """Time budget in minutes (0 = none): the schedule then runs on max(step / steps, elapsed / budget) and the
    fit stops at whichever ends first. A budget makes the result depend on the machine's speed."""
    seed: int = 0
    """Random seed (initialisation, frame order, splits). Same seed and steps -> same weights on a CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device for fitting: auto picks cuda when available."""
    checkpoint_every: int = 250
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""

    # ---- initialisation (models/gaussians/init.py) -----------------------------------------------------
    static_points: int = 40000
    """Static Gaussians lifted from the depth of the keyframes' background pixels (plus the SfM points)."""
    keyframes: int = 8
    """Frames (evenly spread) whose background pixels are lifted."""
    dynamic_points: int = 12000
    """Dynamic Gaussians over all segmented objects, lifted in each object's largest view."""
    bases_per_object: int = 4
    """Rigid motion bases per segmented object (initialised from flow tracks clustered by motion)."""
    init_opacity: float = 0.7
    """Opacity of every Gaussian at the start."""
    osn_scale: Literal["centre", "near", "far", "off"] = "centre"
    """Where to place the segmented objects when an OSN fit exists in the workspace (`monodyn fit --method osn`):
    centre = OSN's default valid scale combination (the valid one nearest the centre of its valid set), near / far
    = the valid combination with the objects nearest to / farthest from the camera; each object is lifted so that
    its median depth is its OSN scale (`monodyn osn scales` prints the valid ranges). off, or no OSN fit: objects
    start at the depth the depth stage (or the background around them) gives. Objects OSN could not pose keep
    that depth too."""
    object_scales: str = ""
    """Explicit placement ID:DEPTH,... (median depth of object ID in scene units, e.g. 1:0.8,2:1.5); set from the
    OSN fit by --osn-scale when empty."""

    # ---- densification (gsplat DefaultStrategy semantics) ------------------------------------------------
    grow_grad2d: float = 0.0002
    """Screen-space gradient above which a Gaussian is duplicated (small) or split (large)."""
    refine_every: int = 50
    """Densify and prune every this many steps."""
    refine_stop: float = 0.6
    """Stop densifying at this point of the schedule."""
    max_gaussians: int = 200000
    """Upper bound on all Gaussians (static and dynamic together): growth beyond it keeps the steepest ones, the
    moving content first."""
    opacity_reset_every: float = 0.0
    """Reset every opacity to 0.01 each time the schedule passes a multiple of this share of it, inside the
    densification window (gsplat's reset: floaters fade and get pruned); 0 = never."""

    # ---- optimisation ----------------------------------------------------------------------------------
    lr_means: float = 1.6e-4
    """Learning rate of the Gaussians' means, in units of the scene radius (decays 100x over the schedule)."""
    lr_scales: float = 5e-3
    """Learning rate of the log scales."""
    lr_quats: float = 1e-3
    """Learning rate of the orientations."""
    lr_opacity: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_colors: float = 1e-2
    """Learning rate of the colour logits."""
    lr_motion: float = 1.6e-4
    """Learning rate of the motion bases' translations (scene-radius units; rotations use 10x this, unitless)."""
    lr_motion_weights: float = 1e-2
    """Learning rate of the per-Gaussian motion-basis blend logits."""
    background: Literal["black", "white", "learned"] = "black"
    """Colour behind every Gaussian: black, white, or one colour learned by the fit (e.g. a green screen)."""

    # ---- loss weights ----------------------------------------------------------------------------------
    ssim_weight: float = 0.2
    """Share of D-SSIM in the photometric loss (the rest is L1)."""
    depth: bool = True
    """Use the scene's depth maps when it has them (see depth_loss)."""
    depth_weight: float = 0.05
    """Weight of the depth loss."""
    depth_loss: Literal["auto", "metric", "affine"] = "auto"
    """metric: disparity error against SfM depth in scene units; affine: per-frame scale- and shift-invariant (for
    dense monocular predictions); auto = metric for sparse priors, affine for dense ones."""
    track_weight: float = 0.002
    """2D track loss: Gaussians' rendered positions at a neighbouring frame, projected with its camera, must land
    where the optical flow carries the pixel (pixels of error)."""
    track_decay: float = 0.3
    """The track weight decays to this fraction of itself over the schedule (flow is a prior, not data)."""
    mask_weight: float = 0.1
    """The dynamic Gaussians' share of each pixel must match the moving-object masks."""
    motion_smooth_weight: float = 0.1
    """Second differences over time of the motion bases (smooth, plausible motion)."""
    track_window: int = 8
    """Long-range tracks reach this many frames either side (chained flow); each step supervises one other frame
    within it: the neighbour through the dense flow, a farther one through the sparse tracks."""
    track_points: int = 512
    """Query pixels per frame for the long-range tracks (3/4 on moving objects)."""
    long_track_weight: float = 0.002
    """Weight of the long-range track loss (pseudo-Huber, pixels of error)."""
    isometry_weight: float = 0.0
    """Local rigidity: distances between neighbouring dynamic Gaussians of one object keep their length across
    time (relative change; bending and turning are free). Off by default: on a synth room with true masks, weight
    1 cut the moving pixels of the training views from 27.6 to 20.9 dB (0.1: 23.5) and did not help off-path views
    (Gaussians lifted at different keyframes are neighbours without being rigidly linked)."""
    temporal_opacity: bool = True
    """Let dynamic Gaussians fade in and out over time (Spacetime Gaussians); off: they exist at every time."""

    # ---- diffusion priors on novel views (models/priors) ------------------------------------------------
    prior: str = "auto"
    """RGB-D prior on novel views: auto = LDM3D when its weights are found (--prior-checkpoint, $MONODYN_LDM3D,
    ~/.cache/monodyn/ldm3d-4c, the Hugging Face cache of Intel/ldm3d-4c), else the small prior shipped with
    monodyn; ldm3d (an error says what to download when missing), small, or none (off)."""
    prior_checkpoint: str = ""
    """ldm3d: a folder with LDM3D's vae/ unet/ text_encoder/ tokenizer/ scheduler/; small: a folder written by
    `monodyn train prior` (default: the shipped one)."""
    prior_lora: str = ""
    """ldm3d: the folder of its LoRA fine-tune on this clip (monodyn fit makes it once per clip, as the workspace's
    prior_lora stage, and fills this in)."""
    prior_lora_steps: int = 200
    """ldm3d: LoRA fine-tune steps on the clip's frames and depths (DreamBooth-style)."""
    prior_lora_rank: int = 4
    """ldm3d: LoRA rank."""
    prior_model_size: int = 256
    """ldm3d / animatediff: long side in pixels at which renders enter the diffusion model (512 is LDM3D's own)."""
    video_prior: str = "none"
    """Video prior on short novel-view clips: none, or animatediff (SD 1.5 + motion adapter; its weights resolve
    like LDM3D's: --video-prior-checkpoint / $MONODYN_ANIMATEDIFF, --video-prior-base / $MONODYN_ANIMATEDIFF_BASE)."""
    video_prior_checkpoint: str = ""
    """animatediff: the motion adapter folder (guoyww/animatediff-motion-adapter-v1-5-2)."""
    video_prior_base: str = ""
    """animatediff: the Stable Diffusion 1.5 folder it animates."""
    video_prior_weight: float = 0.1
    """Weight of the video prior relative to the image prior."""
    prior_weight: float = 1.0
    """Full weight of the prior's loss (it ramps up from 0 at --prior-start over a fifth of the schedule)."""
    prior_every: int = 10
    """Apply the prior every this many steps (its cost on a CPU: see docs/prior.md)."""
    prior_start: float = 0.3
    """Share of the schedule before the prior acts (the fit first settles on the input views)."""
    prior_views: int = 1
    """Novel views per prior step."""
    prior_size: int = 64
    """Long side in pixels of the novel-view renders the prior sees (and lifts from)."""
    prior_max_degrees: float = 90.0
    """Novel views orbit an input camera about its look-at point by up to this many degrees (the angles you render)."""
    prior_lift: int = 256
    """Most new Gaussians lifted per novel view where its render is empty (0 = distil only)."""

    def validate(self) -> None:
        """Raise InputError naming the first option out of range (before any work)."""
        from models.errors import InputError

        checks = [("steps", self.steps >= 1, ">= 1"), ("minutes", self.minutes >= 0 and self.minutes < 1e6, ">= 0"),
                  ("static_points", self.static_points >= 0, ">= 0"), ("keyframes", self.keyframes >= 1, ">= 1"),
                  ("dynamic_points", self.dynamic_points >= 0, ">= 0"),
                  ("bases_per_object", self.bases_per_object >= 1, ">= 1"),
                  ("init_opacity", 0 < self.init_opacity < 1, "in (0, 1)"),
                  ("refine_every", self.refine_every >= 1, ">= 1"),
                  ("opacity_reset_every", 0 <= self.opacity_reset_every <= 1, "in [0, 1]"),
                  ("max_gaussians", self.max_gaussians >= 1, ">= 1"),
                  ("ssim_weight", 0 <= self.ssim_weight <= 1, "in [0, 1]"),
                  ("prior", self.prior in ("auto", "ldm3d", "small", "none"), "one of auto, ldm3d, small, none"),
                  ("video_prior", self.video_prior in ("none", "animatediff"), "one of none, animatediff"),
                  ("prior_size", 8 <= self.prior_size <= 4096, "within 8..4096"),
                  ("prior_model_size", 32 <= self.prior_model_size <= 4096, "within 32..4096"),
                  ("prior_every", self.prior_every >= 1, ">= 1"), ("prior_views", self.prior_views >= 1, ">= 1"),
                  ("prior_start", 0 <= self.prior_start <= 1, "in [0, 1]"),
                  ("prior_max_degrees", 0 < self.prior_max_degrees <= 180, "in (0, 180]"),
                  ("prior_lift", self.prior_lift >= 0, ">= 0"), ("prior_lora_steps", self.prior_lora_steps >= 1, ">= 1"),
                  ("prior_lora_rank", self.prior_lora_rank >= 1, ">= 1"),
                  ("track_window", self.track_window >= 1, ">= 1"),
                  ("track_points", self.track_points >= 1, ">= 1"),
                  ("osn_scale", self.osn_scale in ("centre", "near", "far", "off"), "one of centre, near, far, off")]
        for name in ("lr_means", "lr_scales", "lr_quats", "lr_opacity", "lr_colors", "lr_motion", "lr_motion_weights",
                     "depth_weight", "track_weight", "mask_weight", "motion_smooth_weight", "grow_grad2d",
                     "long_track_weight", "isometry_weight",
                     "prior_weight", "video_prior_weight"):
            v = getattr(self, name)
            checks.append((name, v == v and 0 <= v < float("inf"), "finite and >= 0"))
        for name, ok, rule in checks:
            if not ok:
                raise InputError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)}")
        self.placements()

    def placements(self) -> dict[int, float]:
        """--object-scales as {instance id: median depth}."""
        from models.errors import InputError

        out = {}
        for part in filter(None, (p.strip() for p in self.object_scales.split(","))):
            try:
                k, v = part.split(":")
                out[int(k)] = float(v)
            except ValueError:
                raise InputError(f"--object-scales: expected ID:DEPTH,... (e.g. 1:0.8,2:1.5), got {part!r}") from None
            if not (out[int(k)] > 0 and out[int(k)] < float("inf")):
                raise InputError(f"--object-scales: object {k}'s depth must be positive, got {v}")
        return out
