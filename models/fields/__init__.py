"""Radiance fields on explicit grids (fast on a CPU), all sharing the `RadianceField` interface of
`models.fields.base` (positions in the box [-1, 1]^3, unit world directions, normalised time [0, 1]).

- `TensoRFVM` (tensorf.py): static 3D field, vector-matrix factorised (DpDy static part, OSN objects).
- `KPlanes` (kplanes.py): dynamic 4D field, six multiscale planes (DpDy dynamic part).
- `StaticDynamicField` (composite.py): static + dynamic, densities summed, per-field shares reported.
- `AABBMap`, `ContractedMap`, `contract` (contraction.py): world -> box.
- `TinyMLP`, `frequency_encoding`, `sh_encoding`, `trunc_exp` (mlp.py); `PlaneSet`, `LineSet` (grids.py).
"""

from models.fields.base import DensityOutput, RadianceField, select_state
from models.fields.composite import StaticDynamicField
from models.fields.contraction import AABBMap, ContractedMap, aabb_normalize, contract, space_map_from_dict
from models.fields.grids import LineSet, PlaneSet
from models.fields.kplanes import KPlanes
from models.fields.mlp import TinyMLP, frequency_encoding, sh_encoding, trunc_exp
from models.fields.tensorf import TensoRFVM

__all__ = ["AABBMap", "ContractedMap", "DensityOutput", "KPlanes", "LineSet", "PlaneSet", "RadianceField",
           "StaticDynamicField", "TensoRFVM", "TinyMLP", "aabb_normalize", "contract", "frequency_encoding",
           "select_state", "sh_encoding", "space_map_from_dict", "trunc_exp"]
