"""Radiance fields on explicit grids (fast on a CPU), all sharing the `RadianceField` interface of
`models.fields.base` (positions in the box [-1, 1]^3, unit world directions). OSN builds one per object.

- `TensoRFVM` (tensorf.py): static 3D field, vector-matrix factorised.
- `AABBMap`, `ContractedMap`, `contract` (contraction.py): world -> box (OSN objects use a box; a real
  clip's background uses the contracted, unbounded space).
- `TinyMLP`, `frequency_encoding`, `sh_encoding`, `trunc_exp` (mlp.py); `PlaneSet`, `LineSet` (grids.py).
"""

from models.fields.base import DensityOutput, RadianceField, select_state
from models.fields.contraction import AABBMap, ContractedMap, aabb_normalize, contract, space_map_from_dict
from models.fields.grids import LineSet, PlaneSet
from models.fields.mlp import TinyMLP, frequency_encoding, sh_encoding, trunc_exp
from models.fields.tensorf import TensoRFVM

__all__ = ["AABBMap", "ContractedMap", "DensityOutput", "LineSet", "PlaneSet", "RadianceField", "TensoRFVM",
           "TinyMLP", "aabb_normalize", "contract", "frequency_encoding", "select_state", "sh_encoding",
           "space_map_from_dict", "trunc_exp"]
