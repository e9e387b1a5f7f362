"""DpDy (Wang et al., "Diffusion Priors for Dynamic View Synthesis from Monocular Videos", 2024), without the
diffusion prior for now: a per-video static TensoRF-VM + dynamic K-planes (densities summed per sample),
fitted with photometric, affine-invariant depth, optical-flow / scene-flow and sparsity losses. A novel-view
guidance hook (`DpDyMethod.fit(..., guidance=...)`) is where score distillation plugs in.

- config.py   `DpDyConfig` (the options of `monodyn fit --method dpdy`)
- model.py    `DpDyModel`: fields, scene-flow head, background, occupancy grid, space map
- sampling.py `PixelSampler` (mask / error-aware ray sampling), `orbit_cameras` (novel views)
- losses.py   `LossTerm` list, photometric / depth / scene-flow losses, guidance hook type
- trainer.py  `Trainer`: the loop, schedules, resumable state
- method.py   `DpDyMethod` (fit / render), checkpoint I/O
"""

from models.dpdy.config import DpDyConfig
from models.dpdy.method import DpDyMethod, load_model

__all__ = ["DpDyConfig", "DpDyMethod", "load_model"]
