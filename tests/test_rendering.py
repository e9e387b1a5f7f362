"""Volume-rendering blocks: analytic slabs, packed vs reference compositing, ray-box cases, occupancy skipping,
contracted sampling."""

import math

import torch

from models.cameras import Cameras, camera_rays, intrinsics_from_fov, look_at
from models.fields import AABBMap, ContractedMap, RadianceField
from models.fields.base import DensityOutput
from models.rendering import (
    OccupancyGrid,
    RenderConfig,
    accumulate,
    composite_packed,
    composite_reference,
    ray_aabb,
    sample_along_rays,
)


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


def _render(field, origins, dirs, smap, grid=None, n_samples=128, near=0.0, far=1e4):
    """Plain volume rendering from the building blocks: per ray rgb (black background), alpha and the
    expected ray distance, plus the number of samples taken."""
    n = origins.shape[0]
    s = sample_along_rays(origins, dirs, smap, n_samples, near, far, grid)
    dens = field.query_density(s.x, None)
    w, _ = composite_packed(dens.sigma, s.delta, s.ray_indices, n)
    rgb = accumulate(w[:, None] * field.query_color(s.x, dirs[s.ray_indices], None, dens.state), s.ray_indices, n)
    alpha = accumulate(w, s.ray_indices, n)
    distance = accumulate(w * s.t_pos, s.ray_indices, n) / alpha.clamp_min(1e-6)
    return {"rgb": rgb, "alpha": alpha, "distance": distance}, len(s)


def _image_rays(cams):
    o, d = camera_rays(cams)
    return o.reshape(-1, 3), d.reshape(-1, 3)


def test_slab_transmittance_and_depth_match_closed_form():
    # anisotropic box, so the world -> box length scaling is exercised; slab z_box in (-0.25, 0.25)
    aabb = torch.tensor([[-2.0, -1.0, -3.0], [2.0, 1.0, 3.0]])
    smap = AABBMap(aabb)
    sigma = 3.0
    field = SlabField(sigma, -0.25, 0.25)
    dirs = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.1, 1.0], [-0.2, 0.1, 1.0]]), dim=-1)
    origins = torch.tensor([0.0, 0.0, -2.9]).expand(3, 3)
    out, _ = _render(field, origins, dirs, smap, n_samples=8000)
    scale = torch.linalg.vector_norm(dirs * 2.0 / (aabb[1] - aabb[0]), dim=-1)  # box units per world unit
    lam = sigma * scale  # density per world unit along the ray
    a = (-0.75 - (-2.9)) / dirs[:, 2]  # world distance to the slab (slab is world z in (-0.75, 0.75))
    L = 1.5 / dirs[:, 2]
    alpha = 1 - torch.exp(-lam * L)
    expected_t = a + 1 / lam - L * torch.exp(-lam * L) / (1 - torch.exp(-lam * L))
    torch.testing.assert_close(out["alpha"], alpha, atol=2e-3, rtol=0)
    torch.testing.assert_close(out["distance"], expected_t, atol=2e-3, rtol=0)
    torch.testing.assert_close(out["rgb"], alpha[:, None] * field.color, atol=2e-3, rtol=0)


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
    grid = OccupancyGrid(16)
    grid.update(field, step_size=RenderConfig(n_samples=128).box_step(smap))
    assert torch.equal(grid.occupied, field.cells)
    K = intrinsics_from_fov(24, 20, 50.0)[None]
    o, d = _image_rays(Cameras(K, look_at(torch.tensor([[3.0, 2.0, 1.5]]), torch.zeros(1, 3)), 24, 20))
    dense, n_dense = _render(field, o, d, smap, None, 128)
    skipped, n_skipped = _render(field, o, d, smap, grid, 128)
    assert dense["alpha"].max() > 0.5  # the scene is visible
    assert n_skipped < 0.2 * n_dense
    for key in ("rgb", "alpha", "distance"):
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
    assert not bool(grid.occupied.any())


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


def test_occupancy_skipping_with_contracted_space():
    field = CellField(res=8, seed=3)
    smap = ContractedMap(radius=1.0)
    grid = OccupancyGrid(8)
    grid.update(field, step_size=RenderConfig(n_samples=96).box_step(smap))
    K = intrinsics_from_fov(16, 12, 60.0)[None]
    o, d = _image_rays(Cameras(K, look_at(torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([[1.0, 0.5, 0.2]])), 16, 12))
    dense, n_dense = _render(field, o, d, smap, None, 96, near=0.05, far=50.0)
    skipped, n_skipped = _render(field, o, d, smap, grid, 96, near=0.05, far=50.0)
    assert dense["alpha"].max() > 0.5 and n_skipped < n_dense
    for key in ("rgb", "alpha", "distance"):
        torch.testing.assert_close(skipped[key], dense[key], atol=1e-5, rtol=0)
