"""DpDy's loss terms. The training loss is a list of `LossTerm`s (name, weight, schedule, fn); each fn reads a
`StepContext` (the batch, its render, the model) and returns a scalar or None (not applicable this step).
A later diffusion prior (SDS) is one more term: `guidance_term` wraps any hook
`guidance(render: models.registry.RenderOutput, cameras, times) -> scalar` called on novel-view renders.

Tensor functions (documented shapes; `ray` = one batch ray, `M` = packed samples):
- `photometric_loss`: L2 or Charbonnier on ray colours.
- `metric_depth_loss`: disparity error against a prior in world units (sparse SfM depth).
- `affine_invariant_depth_loss`: rendered (inverse) depth and prior, each normalised per frame by shift and
  positive scale (MiDaS), compared with L1; neither a flat nor an inverted rendering can cheat it.
- `scene_flow_pass`: the flow terms on the samples that matter (compositing weight > 1e-3):
    * induced optical flow: each sample is moved by its dynamic share times the predicted displacement to
      the neighbour frame, projected into that frame's camera, and the weight-averaged projection must
      land where the optical flow says (NSFF / DynIBaR). Static samples move by zero, so on the static
      background this is parallax from camera motion and constrains depth; on moving samples it fixes the
      2D motion of the scene-flow field.
    * correspondence: the dynamic field at (x + displacement, t') has the colour and opacity it has at (x, t)
      (what "x moves to x + displacement" means for a radiance field); this ties the K-planes' time slices
      together along the motion, which the per-frame photometric loss alone never does.
    * cycle: forward then backward displacement returns to the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.cameras import project
from models.rendering import RenderOutput, accumulate

Guidance = Callable[..., Tensor]  # (models.registry.RenderOutput, Cameras, times (N,)) -> scalar loss


@dataclass
class StepContext:
    """What a loss term may read in one step. batch: per-ray tensors (see trainer.Batch); out: the render;
    progress: schedule position in [0, 1]; cache: values shared between terms (e.g. the flow pass)."""

    model: object
    batch: object
    out: RenderOutput
    step: int
    progress: float
    trainer: object
    cache: dict = field(default_factory=dict)


@dataclass
class LossTerm:
    """weight * schedule(progress) * fn(ctx); a term with zero effective weight is not evaluated."""

    name: str
    weight: float
    fn: Callable[[StepContext], Tensor | None]
    schedule: Callable[[float], float] | None = None

    def effective_weight(self, progress: float) -> float:
        return self.weight * (1.0 if self.schedule is None else self.schedule(progress))


def total_loss(terms: list[LossTerm], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
    """Sum of the weighted terms and each term's unweighted value (for logging)."""
    loss = ctx.out.rgb.new_zeros(())
    logs: dict[str, float] = {}
    for term in terms:
        w = term.effective_weight(ctx.progress)
        if w == 0.0:
            continue
        value = term.fn(ctx)
        if value is None:
            continue
        loss = loss + w * value
        logs[term.name] = float(value.detach())
    return loss, logs


def exponential_decay(final_fraction: float) -> Callable[[float], float]:
    """progress -> final_fraction ** progress (1 at the start, final_fraction at the end)."""
    return lambda p: final_fraction ** p


# ---- photometric -------------------------------------------------------------------------------------------

def photometric_loss(pred: Float[Tensor, "N 3"], target: Float[Tensor, "N 3"], kind: str = "l2",
                     eps: float = 1e-3) -> tuple[Float[Tensor, ""], Float[Tensor, "N"]]:
    """Mean loss and the per-ray squared error (for error-driven sampling)."""
    sq = (pred - target).square()
    per_ray = sq.mean(-1)
    if kind == "l2":
        return sq.mean(), per_ray.detach()
    if kind == "charbonnier":
        return torch.sqrt(sq + eps * eps).mean(), per_ray.detach()
    raise ValueError(f"rgb loss must be l2 or charbonnier, got {kind!r}")


# ---- depth -------------------------------------------------------------------------------------------------

def normalize_depth_prior(depth: Float[Tensor, "T H W"], space: str = "disparity"
                          ) -> tuple[Float[Tensor, "T H W"], Bool[Tensor, "T H W"]]:
    """The prior in the space where it is affine (disparity 1/z or depth z), per frame shifted by its median
    and divided by its mean absolute deviation; zeros (unknown) and non-finite values are invalid."""
    valid = torch.isfinite(depth) & (depth > 0)
    safe = torch.where(valid, depth, torch.ones_like(depth))
    v = 1.0 / safe if space == "disparity" else safe
    out = torch.zeros_like(v)
    for i in range(v.shape[0]):  # per frame, T iterations: cheap, done once
        vals = v[i][valid[i]]
        if vals.numel() < 16:
            valid[i] = False
            continue
        med = vals.median()
        scale = (vals - med).abs().mean().clamp_min(1e-8)
        out[i] = (v[i] - med) / scale
    return out * valid, valid


def affine_invariant_depth_loss(pred_depth: Float[Tensor, "N"], prior: Float[Tensor, "N"],
                                group: Int[Tensor, "N"], num_groups: int, space: str = "disparity",
                                min_per_group: int = 8, eps: float = 1e-3) -> Float[Tensor, ""] | None:
    """Scale- and shift-invariant depth loss (MiDaS): per group (frame), f(pred) (f = 1/z or z) and the prior
    are each shifted to zero mean and divided by their mean absolute deviation, and the loss is the mean
    |difference| over groups with >= min_per_group rays. Unlike a least-squares fit of a free scale, the
    scale cannot turn negative, so an inverted depth order is penalised, not fitted; a flat rendering
    (deviation ~0, floored at eps x its magnitude) has loss ~1, not 0."""
    x = 1.0 / pred_depth.clamp_min(1e-6) if space == "disparity" else pred_depth
    count = torch.zeros(num_groups, device=x.device, dtype=x.dtype).index_add(0, group, torch.ones_like(x))
    use = count[group] >= min_per_group
    if not bool(use.any()):
        return None

    def normalized(v: Tensor) -> Tensor:
        mean = torch.zeros_like(count).index_add(0, group, v) / count.clamp_min(1)
        dev = v - mean[group]
        mad = torch.zeros_like(count).index_add(0, group, dev.abs()) / count.clamp_min(1)
        floor = eps * (torch.zeros_like(count).index_add(0, group, v.abs()) / count.clamp_min(1))
        return dev / torch.maximum(mad, floor).clamp_min(1e-12)[group]

    return (normalized(x) - normalized(prior)).abs()[use].mean()


def metric_depth_loss(pred_depth: Float[Tensor, "N"], prior: Float[Tensor, "N"], unit: float
                      ) -> Float[Tensor, ""]:
    """Mean |unit / pred - unit / prior|: disparity error in scene units (`unit` = the scene radius), for a
    prior already in world units (SfM points). Disparity weighs near surfaces most, where the prior is
    most precise, and stays bounded for far ones."""
    return (unit / pred_depth - unit / prior).abs().mean()


# ---- scene flow -----------------------------------------------------------------------------------------------

@dataclass
class FlowTargets:
    """Per ray: the neighbour frame's camera (K, w2c) and normalised time, the pixel position the optical flow
    maps the ray's pixel to, and whether that flow is valid (neighbour exists, flow not occluded)."""

    K: Float[Tensor, "N 3 3"]
    w2c: Float[Tensor, "N 4 4"]
    time: Float[Tensor, "N"]
    xy: Float[Tensor, "N 2"]
    valid: Bool[Tensor, "N"]
    forward: bool


def scene_flow_pass(model, out: RenderOutput, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"],
                    times: Float[Tensor, "N"], targets: FlowTargets, image_size: int,
                    with_consistency: bool = True, min_weight: float = 1e-3, min_share: float = 0.05,
                    charbonnier_eps: float = 1e-3) -> dict[str, Tensor]:
    """The scene-flow losses of one batch in one direction (see module docstring): 'flow' (pixels / image
    size, Charbonnier), 'corr' and 'cycle' (means weighted by compositing weight x dynamic share; cycle in
    units of model.motion_scale). Missing keys: nothing to supervise."""
    samples = out.samples
    w_all, ri_all = samples.weights, samples.ray_indices
    sel = ((w_all.detach() > min_weight) & targets.valid[ri_all]).nonzero()[:, 0]
    res: dict[str, Tensor] = {}
    if sel.numel() == 0:
        return res
    ri, w = ri_all[sel], w_all[sel]
    x_box = samples.x[sel]
    t = times[ri]
    world = origins[ri] + samples.t_pos[sel, None] * dirs[ri]
    # the render already evaluated both fields at these samples: reuse its outputs (and autograd graph)
    dens = out.density
    sigma_s, sigma_d = dens.parts[sel, 0].float(), dens.parts[sel, 1].float()
    geo, feats = dens.state["d.geo"][sel], dens.state["d.feat"][sel]
    share = sigma_d / (sigma_s + sigma_d).clamp_min(1e-10)
    v_fw, v_bw = model.velocities(feats)
    v = v_fw if targets.forward else v_bw
    dt = (targets.time[ri] - t).abs()[:, None]
    disp = v * dt

    # induced optical flow: expected projection of the moved samples into the neighbour frame
    xy_k, z_k = project(world + share[:, None] * disp, targets.K[ri], targets.w2c[ri])
    w_proj = w * (z_k > 1e-3).to(w.dtype)
    n = targets.xy.shape[0]
    w_sum = accumulate(w_proj, ri, n)
    xy_pred = accumulate(w_proj[:, None] * xy_k, ri, n) / w_sum.clamp_min(1e-6)[:, None]
    ok = targets.valid & (w_sum.detach() > 0.5)  # rays that hit something in front of the neighbour camera
    if bool(ok.any()):
        err = (xy_pred[ok] - targets.xy[ok]) / image_size
        res["flow"] = torch.sqrt(err.square().sum(-1) + charbonnier_eps ** 2).mean()

    if not with_consistency:
        return res
    dyn = (share.detach() > min_share).nonzero()[:, 0]
    if dyn.numel() == 0:
        return res
    wd = (w * share)[dyn].detach()  # where to look, not something to optimise
    moved = world[dyn] + disp[dyn]
    t2 = targets.time[ri[dyn]]
    sigma2, geo2, feats2 = model.dynamic_query(model.to_box(moved), t2)
    d = dirs[ri[dyn]]
    c1 = model.dynamic_color(x_box[dyn], d, geo[dyn])
    c2 = model.dynamic_color(model.to_box(moved), d, geo2)
    step = model.render_config(True).box_step(model.space_map)
    a1 = -torch.expm1(-sigma_d[dyn] * step)
    a2 = -torch.expm1(-sigma2 * step)
    norm = wd.sum().clamp_min(1e-6)
    res["corr"] = (wd * ((c2 - c1).abs().mean(-1) + (a2 - a1).abs())).sum() / norm
    v_fw2, v_bw2 = model.velocities(feats2)
    back = (v_bw2 if targets.forward else v_fw2) * dt[dyn]
    res["cycle"] = (wd * (disp[dyn] + back).abs().sum(-1)).sum() / norm / model.motion_scale
    return res
