"""Volume rendering for `models.fields` radiance fields, vectorised torch (CPU and CUDA alike).

- `render_rays`, `render_image`, `RenderConfig`, `RenderOutput` (render.py): the entry points.
- `OccupancyGrid` (occupancy.py): empty-space skipping, updated from the field during training.
- `ray_aabb`, `sample_along_rays`, `composite_packed`, `composite_reference`, `PackedSamples`,
  `sort_by_ray_then_distance` (merge several fields' samples along shared rays), `accumulate` (volume.py).
- `distortion_loss`, `opacity_entropy_loss`, `sparsity_loss`, `share_entropy_loss` (losses.py).

A training loop (the pattern bench/bench_render.py uses; times NORMALISED to [0, 1]):

    field = StaticDynamicField(TensoRFVM(32, density_rank=8, app_rank=16, feat_freqs=0),       # -> 64 -> 128
                               KPlanes(48, scales=(1,), time_resolution=8, features=8, hidden=32))
    smap = AABBMap(aabb)                       # or ContractedMap(center, radius) for unbounded scenes
    grid = OccupancyGrid(64)
    cfg = RenderConfig(n_samples=128, stratified=True)
    opt = torch.optim.Adam(field.param_groups(lr_grid=0.02, lr_net=2e-3), betas=(0.9, 0.99), eps=1e-15)
    for step in range(iters):
        if step % (4 if step < 256 else 16) == 0:
            grid.update(field, cfg.box_step(smap), times=train_times)
        o, d, t, rgb = next_ray_batch()        # (B, 3), (B, 3) unit, (B,), (B, 3)
        out = render_rays(field, o, d, t, smap, grid, cfg)
        loss = ((out.rgb - rgb) ** 2).mean() + 1e-4 * field.static.tv_loss() + 1e-4 * field.dynamic.tv_loss() \
            + 1e-2 * field.dynamic.time_smoothness_loss() + 1e-4 * field.dynamic.time_l1_loss() \
            + 1e-4 * sparsity_loss(out.weights_dynamic)
        opt.zero_grad(); loss.backward(); opt.step()
        # coarse-to-fine: field.static.upsample(64) at ~8 %, (128) at ~20 % -> rebuild `opt` after it;
        # from ~50 %: field.dynamic_grid = OccupancyGrid(64), updated with grid.update(field.dynamic, ...)
    with torch.no_grad():
        frame = render_image(field, cameras, times, smap, grid, RenderConfig(n_samples=128))  # (C, H, W, ...)
"""

from models.rendering.losses import distortion_loss, opacity_entropy_loss, share_entropy_loss, sparsity_loss
from models.rendering.occupancy import OccupancyGrid
from models.rendering.render import RenderConfig, RenderOutput, render_image, render_rays
from models.rendering.volume import (PackedSamples, accumulate, composite_packed, composite_reference, ray_aabb,
                                     sample_along_rays, segment_exclusive_cumsum, sort_by_ray_then_distance)

__all__ = ["OccupancyGrid", "PackedSamples", "RenderConfig", "RenderOutput", "accumulate", "composite_packed",
           "composite_reference", "distortion_loss", "opacity_entropy_loss", "ray_aabb", "render_image",
           "render_rays", "sample_along_rays", "segment_exclusive_cumsum", "share_entropy_loss",
           "sort_by_ray_then_distance", "sparsity_loss"]
