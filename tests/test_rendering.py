"""Volume rendering: analytic slabs, packed vs reference compositing, ray-box cases, occupancy skipping."""

import math

import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at
from models.fields import AABBMap, ContractedMap, RadianceField
from models.fields.base import DensityOutput
from models.rendering import (OccupancyGrid, RenderConfig, composite_packed, composite_reference, ray_aabb,
                              render_image, render_rays, sample_along_rays)
from models.rendering.losses import distortion_loss, distortion_loss_reference
from models.rendering.volume import PackedSamples


class SlabField(RadianceField):
    """Density `sigma` (per box unit) where lo < x_box[axis] < hi, zero elsewhere; constant colour."""

    def __init__(self, sigma, lo, hi, axis=2, color=(0.2, 0.4, 0.6)):
        super().__init__()
        self.sigma, self.lo, self.hi, self.axis = sigma, lo, hi, axis
        self.register_buffer("color", torch.tensor(color))

    def query_density(self, x, t=None):
        inside = (x[:, self.axis] > self.lo) & (x[:, self.axis] < self.hi)
        return DensityOutput(sigma=inside.float() * self.sigma)

    def query_color(self, x, d, t, state):
        return self.color.expand(x.shape[0], 3)


def test_slab_transmittance_and_depth_match_closed_form():
    # anisotropic box, so the world -> box length scaling is exercised; slab z_box in (-0.25, 0.25)
    aabb = torch.tensor([[-2.0, -1.0, -3.0], [2.0, 1.0, 3.0]])
    smap = AABBMap(aabb)
    sigma = 3.0
    field = SlabField(sigma, -0.25, 0.25)
    dirs = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.1, 1.0], [-0.2, 0.1, 1.0]]), dim=-1)
    origins = torch.tensor([0.0, 0.0, -2.9]).expand(3, 3)
    out = render_rays(field, origins, dirs, None, smap, cfg=RenderConfig(n_samples=8000))
    scale = torch.linalg.vector_norm(dirs * 2.0 / (aabb[1] - aabb[0]), dim=-1)  # box units per world unit
    lam = sigma * scale  # density per world unit along the ray
    a = (-0.75 - (-2.9)) / dirs[:, 2]  # world distance to the slab (slab is world z in (-0.75, 0.75))
    L = 1.5 / dirs[:, 2]
    alpha = 1 - torch.exp(-lam * L)
    expected_t = a + 1 / lam - L * torch.exp(-lam * L) / (1 - torch.exp(-lam * L))
    torch.testing.assert_close(out.alpha, alpha, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.distance, expected_t, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.rgb, alpha[:, None] * field.color, atol=2e-3, rtol=0)


def _random_packed(seed=0, n_rays=7, max_k=9, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_k + 1, (n_rays,), generator=g)
    counts[2] = 0  # an empty ray in the middle
    sigma_pad = torch.rand(n_rays, max_k, generator=g, dtype=dtype) * 4.0
    sigma_pad[0, 1] = 40.0  # an opaque sample
    delta_pad = torch.rand(n_rays, max_k, generator=g, dtype=dtype) * 0.5 + 0.01
    mask = torch.arange(max_k)[None] < counts[:, None]
    return sigma_pad, delta_pad, mask


def test_packed_compositing_matches_reference_forward_and_gradient():
    sigma_pad, delta_pad, mask = _random_packed()
    ri = mask.nonzero()[:, 0]
    n = mask.shape[0]
    probe = torch.randn(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    s1, d1 = sigma_pad.clone().requires_grad_(), delta_pad.clone().requires_grad_()
    w_ref, t_ref = composite_reference(torch.where(mask, s1, 0.0), d1)
    ((w_ref * probe).sum() + (t_ref * probe * mask).sum()).backward()

    s2, d2 = sigma_pad.clone().requires_grad_(), delta_pad.clone().requires_grad_()
    w, t = composite_packed(s2[mask], d2[mask], ri, n)
    ((w * probe[mask]).sum() + (t * probe[mask]).sum()).backward()

    torch.testing.assert_close(w, w_ref[mask])
    torch.testing.assert_close(t, t_ref[mask])
    torch.testing.assert_close(s2.grad, s1.grad * mask)
    torch.testing.assert_close(d2.grad, d1.grad * mask)
    assert bool((w_ref.sum(1) <= 1 + 1e-12).all())


def test_packed_compositing_keeps_precision_after_many_opaque_rays():
    # 20000 opaque rays before the probe ray: a float32 running sum of sigma*delta would reach 2e6
    n_before = 20000
    sigma = torch.cat([torch.full((n_before * 10,), 1000.0), torch.tensor([1.0, 1.0])])
    delta = torch.full_like(sigma, 0.01)
    ri = torch.cat([torch.arange(n_before).repeat_interleave(10), torch.tensor([n_before, n_before])])
    w, t = composite_packed(sigma, delta, ri, n_before + 1)
    torch.testing.assert_close(t[-2:], torch.tensor([1.0, math.exp(-0.01)]))


def test_distortion_loss_packed_matches_reference():
    sigma_pad, delta_pad, mask = _random_packed(seed=3)
    n = mask.shape[0]
    t_starts = torch.cumsum(delta_pad, 1) - delta_pad
    w_pad = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w1 = (w_pad * mask).requires_grad_()
    ref = distortion_loss_reference(w1, t_starts, t_starts + delta_pad)
    ref.sum().backward()
    w2 = w_pad[mask].clone().requires_grad_()
    ri = mask.nonzero()[:, 0]
    samples = PackedSamples(ri, t_starts[mask], (t_starts + delta_pad)[mask], t_starts[mask], delta_pad[mask],
                            torch.zeros(int(mask.sum()), 3), n)
    fast = distortion_loss(samples, w2)
    fast.sum().backward()
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(w2.grad, w1.grad[mask])


def test_ray_aabb_hand_cases():
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    o = torch.tensor([[-5.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-5.0, 2.0, 0.0], [5.0, 0.0, 0.0], [0.0, -3.0, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t0, t1, hit = ray_aabb(o, d, aabb)
    assert hit.tolist() == [True, True, False, False, True]
    torch.testing.assert_close(t0[[0, 1, 4]], torch.tensor([4.0, 0.0, 2.0]))
    torch.testing.assert_close(t1[[0, 1, 4]], torch.tensor([6.0, 1.0, 4.0]))
    # diagonal ray through the corner region
    t0, t1, hit = ray_aabb(torch.tensor([[-3.0, -3.0, 0.0]]), torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0]])), aabb)
    torch.testing.assert_close(t0, torch.tensor([2.0 * math.sqrt(2.0)]))
    torch.testing.assert_close(t1, torch.tensor([4.0 * math.sqrt(2.0)]))


class CellField(RadianceField):
    """Density 5 in a fixed random set of occupancy cells (res 16), exactly zero elsewhere; colour from x."""

    is_dynamic = True

    def __init__(self, res=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.grid = OccupancyGrid(res)
        self.register_buffer("cells", torch.rand(res ** 3, generator=g) < 0.05)

    def query_density(self, x, t=None):
        idx, inside = self.grid.cell_index(x)
        return DensityOutput(sigma=(self.cells[idx] & inside).float() * 5.0)

    def query_color(self, x, d, t, state):
        return (x * 0.5 + 0.5).clamp(0, 1)


def test_occupancy_skipping_gives_the_same_image_as_dense_sampling():
    field = CellField()
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    cfg = RenderConfig(n_samples=128, weight_threshold=0.0)
    grid = OccupancyGrid(16)
    grid.update(field, step_size=cfg.box_step(smap), times=torch.tensor([0.0, 0.5]))
    assert torch.equal(grid.occupied, field.cells)
    K = intrinsics_from_fov(24, 20, 50.0)[None]
    cams = Cameras(K, look_at(torch.tensor([[3.0, 2.0, 1.5]]), torch.zeros(1, 3)), 24, 20)
    dense = render_image(field, cams, 0.5, smap, None, cfg)
    skipped = render_image(field, cams, 0.5, smap, grid, cfg)
    assert dense.alpha.max() > 0.5  # the scene is visible
    assert skipped.stats["occupied"] < 0.2 * dense.stats["occupied"]
    for key in ("rgb", "alpha", "distance", "depth"):
        torch.testing.assert_close(skipped[key], dense[key], atol=1e-5, rtol=0)


def test_occupancy_update_threshold_and_decay():
    field = SlabField(sigma=100.0, lo=-0.25, hi=0.25, axis=0)
    grid = OccupancyGrid(8)
    for _ in range(4):
        grid.update(field, step_size=0.01)
    # cells whose x-range lies inside the slab's x range are occupied; those far from it are not
    centres = grid.cell_centers(torch.arange(8 ** 3))
    assert bool(grid.occupied[centres[:, 0].abs() < 0.2].all())
    assert not bool(grid.occupied[centres[:, 0].abs() > 0.3].any())
    # once the field is empty, the decayed maximum falls below the threshold and cells are released
    field.sigma = 0.0
    for _ in range(200):
        grid.update(field, step_size=0.01, fraction=1.0, decay=0.9)
    assert grid.occupancy_fraction() == 0.0


def test_render_image_depth_is_z_depth_and_background_colour():
    # an opaque wall filling x_world < 0.5 seen from a camera at x = 5 looking along -x
    smap = AABBMap([[-2.0] * 3, [2.0] * 3])
    field = SlabField(sigma=1e4, lo=-1.0, hi=0.25, axis=0)  # box x < 0.25 <=> world x < 0.5
    K = intrinsics_from_fov(16, 12, 40.0)[None]
    cams = Cameras(K, look_at(torch.tensor([[5.0, 0.0, 0.0]]), torch.zeros(1, 3)), 16, 12)
    out = render_image(field, cams, None, smap, None, RenderConfig(n_samples=2048), background="white")
    assert out.rgb.shape == (1, 12, 16, 3) and out.depth.shape == (1, 12, 16)
    torch.testing.assert_close(out.alpha, torch.ones_like(out.alpha))
    step = 4.0 * math.sqrt(3.0) / 2048
    assert float((out.depth - 4.5).abs().max()) < step  # Z-depth is the same for every pixel
    assert float(out.distance.max() - out.distance.min()) > 0.1  # ray distance is not
    empty = render_image(SlabField(0.0, 0, 0), cams, None, smap, None, RenderConfig(n_samples=64), background="white")
    torch.testing.assert_close(empty.rgb, torch.ones_like(empty.rgb))


def test_contracted_sampling_covers_near_to_far_and_grows_steps():
    smap = ContractedMap(radius=1.0)
    o = torch.zeros(4, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    s = sample_along_rays(o, d, smap, n_samples=64, near=0.1, far=100.0)
    t0 = s.t_starts.view(4, 64)[0]
    t1 = s.t_ends.view(4, 64)[0]
    assert abs(float(t0[0]) - 0.1) < 1e-5 and abs(float(t1[-1]) - 100.0) < 1e-2
    steps = t1 - t0
    assert bool((steps[1:] >= steps[:-1] - 1e-6).all())  # constant inside, growing outside
    assert bool((s.x.abs() <= 1.0 + 1e-6).all())
    assert bool((s.delta > 0).all())


def _blended_field_and_rays(n: int, seed: int):
    """A small random static + dynamic field in the box [-1, 1]^3 and n rays from z = -3 towards it."""
    from models.fields import KPlanes, StaticDynamicField, TensoRFVM
    torch.manual_seed(seed)
    field = StaticDynamicField(TensoRFVM(16, 2, 4, 6), KPlanes(8, (1,), 4, 4, 16, 7))
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(n, 3)
    d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    return field, AABBMap([[-1.0] * 3, [1.0] * 3]), o, d


def test_render_rays_gradients_reach_density_and_colour():
    field, smap, o, d = _blended_field_and_rays(32, seed=0)
    out = render_rays(field, o, d, torch.rand(32), smap, cfg=RenderConfig(n_samples=64))
    torch.testing.assert_close(out.weights_static + out.weights_dynamic, out.alpha)
    out.rgb.sum().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_render_rays_returns_the_density_of_its_samples():
    # losses on the packed samples (DpDy's scene flow) reuse it instead of querying the field again
    field, smap, o, d = _blended_field_and_rays(16, seed=1)
    t = torch.rand(16)
    out = render_rays(field, o, d, t, smap, cfg=RenderConfig(n_samples=32, alpha_threshold=1e-3))
    again = field.query_density(out.samples.x, t[out.samples.ray_indices])
    assert len(out.density.sigma) == len(out.samples) > 0
    torch.testing.assert_close(out.density.sigma, again.sigma)
    torch.testing.assert_close(out.density.parts, again.parts)
    torch.testing.assert_close(out.density.state["d.feat"], again.state["d.feat"])


def test_coarse_to_fine_marching_equals_dense_test_on_random_grids():
    g = torch.Generator().manual_seed(0)
    smap = AABBMap([[-2.0, -1.0, -0.5], [2.0, 1.5, 1.0]])
    for res, density in ((8, 0.02), (32, 0.005), (64, 0.3)):
        grid = OccupancyGrid(res)
        grid.occupied = torch.rand(res ** 3, generator=g) < density
        o = torch.randn(300, 3, generator=g) * 3.0
        d = torch.nn.functional.normalize(torch.randn(300, 3, generator=g) - o * 0.3, dim=-1)
        for n_samples in (64, 300):
            dense = sample_along_rays(o, d, smap, n_samples, 0.0, 1e4, None)
            keep = grid.query(dense.x)
            fast = sample_along_rays(o, d, smap, n_samples, 0.0, 1e4, grid)
            assert len(fast) == int(keep.sum()) > 0
            torch.testing.assert_close(fast.ray_indices, dense.ray_indices[keep], rtol=0, atol=0)
            torch.testing.assert_close(fast.t_starts, dense.t_starts[keep])
            torch.testing.assert_close(fast.delta, dense.delta[keep])


def test_inference_marching_matches_training_path():
    from models.fields import KPlanes, StaticDynamicField, TensoRFVM
    torch.manual_seed(0)
    field = StaticDynamicField(TensoRFVM(16, 4, 4, 6, density_shift=2.0, init_scale=0.5),
                               KPlanes(8, (1,), 4, 4, 16, 7, density_shift=1.0))
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(64, 3)
    d = torch.nn.functional.normalize(torch.randn(64, 3) * 0.3 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    t = torch.rand(64)
    cfg = RenderConfig(n_samples=128)
    train = render_rays(field, o, d, t, smap, cfg=cfg)
    with torch.no_grad():
        infer = render_rays(field, o, d, t, smap, cfg=cfg)
    assert (train.alpha > 0.99).float().mean() > 0.5  # mostly opaque: early stopping matters
    assert infer.stats["samples"] < 0.7 * infer.stats["occupied"]
    for key in ("rgb", "alpha", "distance", "part_weights"):
        torch.testing.assert_close(infer[key], train[key].detach(), atol=1e-5, rtol=1e-5)


def test_rays_that_miss_everything_render_background_with_and_without_grad():
    from models.fields import TensoRFVM
    field = TensoRFVM(8, 2, 2, 4)
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    o = torch.tensor([[5.0, 5.0, 5.0]]).expand(4, 3)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
    out = render_rays(field, o, d, None, smap, background="white")
    torch.testing.assert_close(out.rgb, torch.ones(4, 3))
    out.rgb.sum().backward()  # an empty graph still backpropagates
    with torch.no_grad():
        out = render_rays(field, o, d, None, smap, OccupancyGrid(4), background="white")
    torch.testing.assert_close(out.alpha, torch.zeros(4))


def test_occupancy_skipping_with_contracted_space():
    field = CellField(res=8, seed=3)
    smap = ContractedMap(radius=1.0)
    cfg = RenderConfig(n_samples=96, near=0.05, far=50.0, weight_threshold=0.0)
    grid = OccupancyGrid(8)
    grid.update(field, step_size=cfg.box_step(smap))
    K = intrinsics_from_fov(16, 12, 60.0)[None]
    cams = Cameras(K, look_at(torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([[1.0, 0.5, 0.2]])), 16, 12)
    dense = render_image(field, cams, 0.0, smap, None, cfg)
    skipped = render_image(field, cams, 0.0, smap, grid, cfg)
    assert dense.alpha.max() > 0.5 and skipped.stats["occupied"] < dense.stats["occupied"]
    for key in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(skipped[key], dense[key], atol=1e-5, rtol=0)


def test_merging_two_fields_samples_equals_rendering_their_sum():
    # two slabs rendered as separate packed sample sets, merged by (ray, t), composite like one field
    from models.rendering import accumulate, sort_by_ray_then_distance
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    a, b = SlabField(2.0, -0.6, -0.2), SlabField(5.0, 0.1, 0.4)
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(5, 3)
    d = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 0.1
                                      + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    sa = sample_along_rays(o, d, smap, 200, 0.0, 1e4)
    sb = sample_along_rays(o, d, smap, 200, 0.0, 1e4)
    sigma = torch.cat([a.density(sa.x), b.density(sb.x)])
    ri, t, delta = (torch.cat([getattr(sa, k), getattr(sb, k)]) for k in ("ray_indices", "t_pos", "delta"))
    perm = sort_by_ray_then_distance(ri, t)
    w, _ = composite_packed(sigma[perm], delta[perm], ri[perm], 5)
    both = SlabField(0.0, 0, 0)
    both.query_density = lambda x, t=None: type(a.query_density(x))(sigma=a.density(x) + b.density(x))
    ref = render_rays(both, o, d, None, smap, cfg=RenderConfig(n_samples=200, early_stop=0.0))
    # every interval appears twice (once per field), in a row: the total optical depth along each ray is
    # that of the summed field, so the accumulated opacity is identical
    torch.testing.assert_close(accumulate(w, ri[perm], 5), ref.alpha, atol=1e-5, rtol=0)
    assert float(ref.alpha.min()) > 0.5
    assert bool((ri[perm][1:] >= ri[perm][:-1]).all())
