"""Volume rendering for `models.fields` radiance fields, vectorised torch (CPU and CUDA alike).

- `render_rays`, `render_image`, `RenderConfig`, `RenderOutput` (render.py): the entry points.
- `OccupancyGrid` (occupancy.py): empty-space skipping, updated from the field during training.
- `ray_aabb`, `sample_along_rays`, `composite_packed`, `composite_reference`, `PackedSamples` (volume.py).
- `distortion_loss`, `opacity_entropy_loss`, `sparsity_loss`, `share_entropy_loss` (losses.py).
"""

from models.rendering.losses import distortion_loss, opacity_entropy_loss, share_entropy_loss, sparsity_loss
from models.rendering.occupancy import OccupancyGrid
from models.rendering.render import RenderConfig, RenderOutput, render_image, render_rays
from models.rendering.volume import (PackedSamples, accumulate, composite_packed, composite_reference, ray_aabb,
                                     sample_along_rays)

__all__ = ["OccupancyGrid", "PackedSamples", "RenderConfig", "RenderOutput", "accumulate", "composite_packed",
           "composite_reference", "distortion_loss", "opacity_entropy_loss", "ray_aabb", "render_image",
           "render_rays", "sample_along_rays", "share_entropy_loss", "sparsity_loss"]
