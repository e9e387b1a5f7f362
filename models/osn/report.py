"""What the object scale network learned: valid scale ranges per object and validity curves / maps.

`scale_report(model)` returns plain tensors for the CLI to tabulate and plot:
- per object, the search range, the range spanned by all valid combinations (the marginal), and the valid
  interval along that object's axis with the other objects at the default combination;
- validity against scale per object (others at the default), and over the first two objects' scales (others at
  the default) as a 2D map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from models.osn.model import N_CANDIDATES, OSNModel


@dataclass
class ScaleReport:
    """ids: instance ids of objects 1..K. search_lo/hi (K,): the searched scale range. default (K,): the
    default combination. n_valid: valid combinations among the candidates. valid_lo/hi (K,): range over all
    valid combinations (nan when none). axis_lo/hi (K,): valid interval along each object's axis with the others
    at the default (nan when none). curves: (K, G) scales and validity. map2d: (scales_a (G2,), scales_b (G2,),
    validity (G2, G2) indexed [b, a]) for objects 1 and 2, or None with one object."""

    ids: list[int]
    search_lo: Float[Tensor, " K"]
    search_hi: Float[Tensor, " K"]
    default: Float[Tensor, " K"]
    n_valid: int
    n_candidates: int
    valid_lo: Float[Tensor, " K"]
    valid_hi: Float[Tensor, " K"]
    axis_lo: Float[Tensor, " K"]
    axis_hi: Float[Tensor, " K"]
    curve_scales: Float[Tensor, "K G"]
    curve_validity: Float[Tensor, "K G"]
    map2d: tuple[Tensor, Tensor, Tensor] | None


@torch.no_grad()
def scale_report(model: OSNModel, seed: int = 0, n_curve: int = 200, n_map: int = 96) -> ScaleReport:
    space = model.space
    K = model.n_objects
    if K == 0:
        from models.errors import InputError

        raise InputError("this OSN fit has no object with a scale (none was segmented, or none could be posed; see "
                         "the note `monodyn fit` printed): the one scene it renders is the background")
    valid, _ = model.valid_scales(seed)
    default = model.default_scales(seed)
    nan = torch.full((K,), float("nan"))
    valid_lo = valid.amin(0) if len(valid) else nan
    valid_hi = valid.amax(0) if len(valid) else nan
    grid = torch.linspace(-1.0, 1.0, n_curve)
    z0 = space.to_unit(default[None])[0]
    curve_scales, curve_validity = [], []
    axis_lo, axis_hi = nan.clone(), nan.clone()
    for k in range(K):
        z = z0.expand(n_curve, K).clone()
        z[:, k] = grid
        s = space.from_unit(z)
        v = model.validity(s)
        curve_scales.append(s[:, k])
        curve_validity.append(v)
        ok = v > 0.5
        if ok.any():
            axis_lo[k], axis_hi[k] = s[ok, k].min(), s[ok, k].max()
    map2d = None
    if K >= 2:
        g = torch.linspace(-1.0, 1.0, n_map)
        zb, za = torch.meshgrid(g, g, indexing="ij")
        z = z0.expand(n_map * n_map, K).clone()
        z[:, 0], z[:, 1] = za.reshape(-1), zb.reshape(-1)
        s = space.from_unit(z)
        map2d = (s[:n_map, 0], s[::n_map, 1], model.validity(s).reshape(n_map, n_map))
    lo, hi = torch.exp(space.log_lo), torch.exp(space.log_hi)
    return ScaleReport(model.objects.ids[1:], lo, hi, default, len(valid), N_CANDIDATES, valid_lo, valid_hi,
                       axis_lo, axis_hi, torch.stack(curve_scales), torch.stack(curve_validity), map2d)
