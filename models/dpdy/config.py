"""`DpDyConfig`: every option of `monodyn fit --method dpdy` (the string under a field is its --help text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DpDyConfig:
    # ---- schedule ---------------------------------------------------------------------------------------
    steps: int = 3000
    """Optimisation steps (the learning rate decays and the grids grow over them)."""
    minutes: float = 0.0
    """Time budget in minutes (0 = none): the schedule then runs on max(step / steps, elapsed / budget) and the
    fit stops at whichever ends first. A budget makes the result depend on the machine's speed."""
    seed: int = 0
    """Random seed (initialisation, ray batches, jitter). Same seed and steps -> same weights on a CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device for fitting: auto picks cuda when available."""
    batch_rays: int = 2048
    """Most rays per step (a GPU takes 4096-8192)."""
    batch_samples: int = 32768
    """Target samples per step: the number of rays adapts (128 .. batch_rays) so that early steps, when little
    space is skipped yet and every ray takes many samples, cost no more than later ones (instant-NGP's dynamic
    batch; 0 = always batch_rays). A GPU takes 2^18."""
    checkpoint_every: int = 250
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""

    # ---- representation --------------------------------------------------------------------------------
    space: Literal["auto", "aabb", "contracted"] = "auto"
    """World -> field box: aabb = the box center +- radius (object captures with a known background colour);
    contracted = the scene sphere kept linear, everything beyond squeezed in (real clips). auto: aabb when the
    scene declares a background colour, else contracted."""
    bound_scale: float = 1.0
    """Multiplies the scene radius to size the box / the linear region of the contraction."""
    static_res_start: int = 32
    """Static TensoRF-VM texels per axis at the start."""
    static_res_final: int = 128
    """Static TensoRF-VM texels per axis after the last upsampling (two steps, at 8% and 20% of the schedule;
    samples per ray grow with it)."""
    static_density_rank: int = 8
    """Static density components per VM mode."""
    static_app_rank: int = 16
    """Static appearance components per VM mode."""
    static_decoder: Literal["mlp", "sh"] = "mlp"
    """Static colour decoder: a small MLP on the appearance features and view direction, or spherical
    harmonics (cheaper per sample)."""
    dynamic_res: int = 48
    """Dynamic K-planes spatial texels per axis at the coarsest scale."""
    dynamic_scales: int = 1
    """Number of K-planes scales (resolution x1, x2, x4, ...)."""
    dynamic_time_res: int = 0
    """K-planes texels along time (0 = a quarter of the number of frames, at least 4)."""
    dynamic_features: int = 8
    """K-planes feature channels per scale."""
    dynamic_hidden: int = 32
    """Hidden units of the K-planes density and colour MLPs."""
    dynamic_grid_at: float = 0.5
    """From this point of the schedule on, the dynamic field is evaluated only in the cells of its own
    occupancy grid (a max over time of its density): faster, but pruned cells learn no motion any more
    (1 = never). With the occupancy prior and moving-object masks it is limited to the moving objects' cells
    from the start."""
    occupancy_res: int = 64
    """Occupancy grid cells per axis (empty-space skipping)."""
    occupancy_prior: bool = True
    """With sparse SfM depth, sample only cells near the (interpolated) SfM surfaces, on the viewing segments of
    moving-object pixels, and in the far shell, from the first step: a young field is then not fog that every
    ray pays for (see models/dpdy/occupancy_prior.py)."""
    occupancy_every: int = 16
    """Update the occupancy grid every this many steps."""
    occupancy_warmup: int = 32
    """Steps before empty-space skipping starts; the grid is then refreshed every 8 steps for a while."""
    n_samples: int = 128
    """Candidate samples per ray (across the box diagonal, or across near..far in a contracted scene)."""
    jitter: bool = True
    """Train on rays through random points of each pixel (the pixel colour is an average over its area)."""
    near: float = 0.05
    """Closest sampled distance from a camera, as a fraction of the scene radius."""
    background: Literal["auto", "black", "white", "learned"] = "auto"
    """Colour behind the scene: auto = the scene's declared background, else black (in a contracted space the
    field reaches infinity and models the far background itself); learned = one optimised colour."""

    # ---- optimisation ----------------------------------------------------------------------------------
    lr_grid: float = 0.02
    """Adam learning rate of the grids (planes and lines)."""
    lr_net: float = 2e-3
    """Adam learning rate of the small MLPs (decoders, scene-flow head, background)."""
    lr_decay: float = 0.1
    """Learning rates end at this fraction of their start (exponential decay)."""
    rgb_loss: Literal["l2", "charbonnier"] = "l2"
    """Photometric loss on the input frames."""

    # ---- ray sampling ----------------------------------------------------------------------------------
    dynamic_boost: float = 4.0
    """Extra sampling weight of moving pixels (from the instance masks; 0 = uniform)."""
    error_boost: float = 1.0
    """Extra sampling weight of pixels with a high running photometric error (finds moving or hard regions
    without masks; 0 = off)."""
    sample_cell: int = 4
    """Pixel block size of the sampling-weight map."""

    # ---- loss weights ----------------------------------------------------------------------------------
    depth: bool = True
    """Use the scene's depth maps (see depth_loss) when it has them."""
    flow: bool = True
    """Use the scene's optical flow (flow, correspondence and cycle losses) when it has one."""
    depth_weight: float = 0.05
    """Weight of the depth loss against the scene's depth maps, if any."""
    depth_loss: Literal["auto", "metric", "affine"] = "auto"
    """metric: rendered vs prior disparity in scene units (the prior is in world units: SfM points, or a
    prediction aligned to them); affine: per-frame scale- and shift-invariant (MiDaS), forgiving a dense
    prediction's shape errors; auto = metric for sparse priors (< 30% of pixels), affine for dense ones."""
    depth_rays: int = 256
    """With a sparse prior, extra rays per step through pixels that have a depth (a uniform batch would
    hit ~1% of them)."""
    depth_space: Literal["disparity", "depth"] = "disparity"
    """Space in which the depth prior is affine (disparity for relative monocular depth)."""
    flow_weight: float = 0.02
    """Optical-flow loss: the rendered scene flow projected into the neighbouring frame must match the flow."""
    flow_decay: float = 0.5
    """The flow weight decays to this fraction of itself over the schedule (flow is a prior, not data)."""
    scene_flow_weight: float = 0.01
    """Scene-flow consistency: dynamic colour/opacity kept along the predicted motion, and forward then backward
    motion returning to the start (cycle)."""
    distortion_weight: float = 1e-3
    """mip-NeRF 360 distortion loss (compact surfaces, no floaters)."""
    dynamic_sparsity_weight: float = 1e-3
    """Penalty on the dynamic field's share of every ray (explain with the static field where possible)."""
    static_mask_weight: float = 0.05
    """Penalty on the dynamic share of pixels the instance masks call static."""
    dynamic_mask_weight: float = 0.05
    """Penalty on the static share of pixels the instance masks call moving (a static smear of a moving object
    would otherwise compete with the dynamic field early on)."""
    static_tv_weight: float = 1e-4
    """Total variation of the static planes."""
    static_l1_weight: float = 8e-5
    """L1 sparsity of the static density factors."""
    dynamic_tv_weight: float = 1e-4
    """Total variation of the dynamic space planes."""
    time_smooth_weight: float = 1e-2
    """Smoothness of the dynamic time planes along time (1D Laplacian)."""
    time_l1_weight: float = 1e-4
    """L1 of the time planes' deviation from 1 (prefers static explanations)."""

    # ---- novel-view guidance (used only when a guidance hook is given to fit) ---------------------------
    guidance_weight: float = 1.0
    """Weight of the guidance term on novel-view renders (only when a guidance hook is set)."""
    guidance_every: int = 4
    """Render novel views for the guidance hook every this many steps."""
    guidance_views: int = 1
    """Novel views per guidance step."""
    guidance_size: int = 64
    """Long side in pixels of the guidance renders."""
    guidance_max_degrees: float = 20.0
    """Novel views orbit the input camera about its look-at point by up to this many degrees."""
