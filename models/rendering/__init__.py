"""Volume-rendering building blocks for `models.fields` radiance fields, vectorised torch (CPU and CUDA
alike). OSN's scaled composite renderer (`models.osn.composite`) is built from them.

- `ray_aabb`, `sample_along_rays` (box or contracted space, occupancy skipping), `PackedSamples`,
  `composite_packed` (with `composite_reference`, its plain padded twin), `accumulate`, `RenderConfig`
  (volume.py).
- `OccupancyGrid` (occupancy.py): empty-space skipping, updated from the field during training.

One static field along N rays (what `models.osn.composite.render_composite` does for one object):

    samples = sample_along_rays(origins, dirs, space_map, n_samples, near, far, grid)   # packed, ray-sorted
    w, _ = composite_packed(field.density(samples.x), samples.delta, samples.ray_indices, len(origins))
    rgb = accumulate(w[:, None] * field.query_color(samples.x, dirs[samples.ray_indices], None, {}),
                     samples.ray_indices, len(origins))
    alpha = accumulate(w, samples.ray_indices, len(origins))
    # every ~16 steps: grid.update(field, step_size=RenderConfig(n_samples).box_step(space_map))
"""

from models.rendering.occupancy import OccupancyGrid
from models.rendering.volume import (
    PackedSamples,
    RenderConfig,
    accumulate,
    composite_packed,
    composite_reference,
    ray_aabb,
    sample_along_rays,
)

__all__ = ["OccupancyGrid", "PackedSamples", "RenderConfig", "accumulate", "composite_packed", "composite_reference",
           "ray_aabb", "sample_along_rays"]
