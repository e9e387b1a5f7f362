"""Densification and pruning with gsplat's DefaultStrategy semantics, on a schedule position in [0, 1].

After every backward pass, `observe` accumulates each Gaussian's screen-space positional gradient (normalised
to the image half-size, as gsplat does) over the steps where it was visible. Every `refine_every` steps inside
the refine window:
- Gaussians whose mean gradient exceeds `grow_grad2d` grow: small ones (largest scale <= grow_scale3d x scene
  scale) are duplicated, large ones split in two (positions drawn from the Gaussian, scales / 1.6);
- Gaussians with opacity < prune_opa, or larger than prune_scale3d x scene scale, are removed.
New rows start with zero Adam moments; every per-Gaussian tensor of the set (and extra per-Gaussian tensors
such as the dynamic set's motion logits and instance ids) is re-indexed together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from models.gaussians.model import GAUSSIAN_PARAMS, GaussianSet
from models.splatting.project import quat_to_rotmat


@dataclass
class StrategyOptions:
    grow_grad2d: float = 0.0002
    grow_scale3d: float = 0.01
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    refine_every: int = 50
    refine_start: float = 0.03
    refine_stop: float = 0.6
    max_gaussians: int = 200_000
    reset_every: float = 0.0  # opacity reset every this share of the schedule inside the refine window (0: never)
    reset_opacity: float = 0.01  # ... down to this (gsplat: twice prune_opa)


def reindex_rows(module: nn.Module, names: tuple[str, ...], optimizer: torch.optim.Optimizer | None,
                 keep: Int[Tensor, " K"], new_rows: dict[str, Tensor]) -> None:
    """Replace each parameter/buffer `name` of `module` by cat(value[keep], new_rows[name]); Adam moments of kept
    rows follow them, new rows start at zero."""
    for name in names:
        old = getattr(module, name)
        value = torch.cat([old.detach()[keep], new_rows[name].to(old)])
        if not isinstance(old, nn.Parameter):
            setattr(module, name, value.contiguous())
            continue
        new = nn.Parameter(value.contiguous())
        if optimizer is not None:
            for group in optimizer.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is old:
                        group["params"][i] = new
                        state = optimizer.state.pop(old, None)
                        if state:
                            for key in ("exp_avg", "exp_avg_sq"):
                                pad = torch.zeros((len(value) - len(keep), *old.shape[1:]), dtype=old.dtype,
                                                  device=old.device)
                                state[key] = torch.cat([state[key][keep], pad])
                            optimizer.state[new] = state
        setattr(module, name, new)


class DensifyStrategy:
    """Growth and pruning state of one `GaussianSet` (plus `extra` per-Gaussian tensors held by `owner`)."""

    def __init__(self, gaussians: GaussianSet, owner: nn.Module, extra: tuple[str, ...], scene_scale: float,
                 opts: StrategyOptions):
        self.g, self.owner, self.extra, self.scale, self.opts = gaussians, owner, extra, scene_scale, opts
        self.reset()

    def reset(self) -> None:
        n, dev = len(self.g), self.g.means.device
        self.grad2d = torch.zeros(n, device=dev)
        self.count = torch.zeros(n, device=dev)

    def state_dict(self) -> dict:
        return {"grad2d": self.grad2d, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.grad2d, self.count = state["grad2d"].to(self.g.means.device), state["count"].to(self.g.means.device)

    @torch.no_grad()
    def observe(self, means2d_grad: Float[Tensor, "N 2"], radii: Int[Tensor, " N"], width: int, height: int) -> None:
        """Accumulate one step's screen-space gradients (rows of this set only)."""
        g = means2d_grad * means2d_grad.new_tensor([width / 2, height / 2])
        visible = radii > 0
        self.grad2d[visible] += g[visible].norm(dim=-1)
        self.count[visible] += 1

    def due(self, step: int, progress: float) -> bool:
        o = self.opts
        return o.refine_start <= progress < o.refine_stop and step > 0 and step % o.refine_every == 0

    def reset_due(self, last_progress: float, progress: float) -> bool:
        """Whether the schedule crossed a multiple of `reset_every` (inside the refine window) since the last step."""
        o = self.opts
        if o.reset_every <= 0 or not o.refine_start <= progress < o.refine_stop:
            return False
        return int(progress / o.reset_every) > int(last_progress / o.reset_every)

    @torch.no_grad()
    def reset_opacities(self, optimizer: torch.optim.Optimizer) -> None:
        """Clamp every opacity to at most `reset_opacity` and clear its Adam moments (gsplat's reset): Gaussians that
        matter regain opacity within a few hundred steps, floaters and occluded ones stay faint and get pruned."""
        g, cap = self.g, self.opts.reset_opacity
        g.opacity_logits.clamp_(max=float(torch.logit(torch.tensor(cap))))
        state = optimizer.state.get(g.opacity_logits)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].zero_()

    @torch.no_grad()
    def refine(self, optimizer: torch.optim.Optimizer, generator: torch.Generator, cap: int | None = None
               ) -> dict[str, int]:
        """Grow then prune; returns counts. `cap`: most Gaussians this set may have after growing (default
        `max_gaussians`; a caller sharing one global cap between sets passes what the others leave)."""
        o, g = self.opts, self.g
        mean_grad = self.grad2d / self.count.clamp(min=1)
        high = mean_grad > o.grow_grad2d
        room = (o.max_gaussians if cap is None else cap) - len(g)
        if int(high.sum()) > max(room, 0):  # over the cap: grow only the steepest ones
            order = torch.argsort(mean_grad, descending=True)[:max(room, 0)]
            high = torch.zeros_like(high)
            high[order] = True
        small = g.scales.max(-1).values <= o.grow_scale3d * self.scale
        dup, split = high & small, high & ~small
        n = len(g)
        keep = torch.nonzero(~split).squeeze(1)
        new_rows = self._rows(dup)  # duplicates are exact copies
        split_rows = self._split_rows(split, generator)
        rows = {k: torch.cat([new_rows[k], split_rows[k]]) for k in new_rows}
        reindex_rows(g, GAUSSIAN_PARAMS, optimizer, keep, rows)
        reindex_rows(self.owner, self.extra, optimizer, keep, rows)
        # prune transparent and huge Gaussians (new ones included)
        bad = (g.opacities < o.prune_opa) | (g.scales.max(-1).values > o.prune_scale3d * self.scale)
        alive = torch.nonzero(~bad).squeeze(1)
        none = {k: getattr(src, k)[:0] for src, names in ((g, GAUSSIAN_PARAMS), (self.owner, self.extra))
                for k in names}
        reindex_rows(g, GAUSSIAN_PARAMS, optimizer, alive, none)
        reindex_rows(self.owner, self.extra, optimizer, alive, none)
        self.reset()
        return {"duplicated": int(dup.sum()), "split": int(split.sum()), "pruned": int(bad.sum()),
                "before": n, "after": len(g)}

    def _rows(self, sel: Tensor) -> dict[str, Tensor]:
        out = {k: getattr(self.g, k).detach()[sel] for k in GAUSSIAN_PARAMS}
        out.update({k: getattr(self.owner, k).detach()[sel] for k in self.extra})
        return out

    def _split_rows(self, sel: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        rows = self._rows(sel)
        scales = rows["log_scales"].exp()
        R = quat_to_rotmat(rows["quats"])
        offsets = []
        for _ in range(2):
            z = torch.randn(scales.shape, generator=generator, device=scales.device)
            offsets.append((R @ (z * scales)[..., None])[..., 0])
        out = {k: torch.cat([v, v]) for k, v in rows.items()}
        out["means"] = torch.cat([rows["means"] + offsets[0], rows["means"] + offsets[1]])
        out["log_scales"] = torch.cat([rows["log_scales"], rows["log_scales"]]) - torch.log(torch.tensor(1.6))
        return out
