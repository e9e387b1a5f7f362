"""Fields: grid lookups, TensoRF-VM, contraction, encodings."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from models.fields import (
    AABBMap,
    ContractedMap,
    PlaneSet,
    TensoRFVM,
    contract,
    frequency_encoding,
    sh_encoding,
    space_map_from_dict,
)
from models.fields.grids import LineSet
from models.fields.tensorf import vm_coords


def test_plane_lookup_matches_grid_sample_values_and_coordinate_gradients():
    torch.manual_seed(0)
    planes = PlaneSet([(5, 7), (9, 4), (3, 3)], channels=6)
    coords = (torch.rand(3, 50, 2) * 2.2 - 1.1).requires_grad_()  # some points outside: border clamp
    out = planes.lookup(coords)
    ref = torch.stack([
        F.grid_sample(planes.plane(p).permute(2, 0, 1)[None], coords[p][None, :, None].clamp(-1, 1),
                      mode="bilinear", align_corners=True)[0, :, :, 0].t() for p in range(3)])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    g1, = torch.autograd.grad((out ** 2).sum(), coords)
    g2, = torch.autograd.grad((ref ** 2).sum(), coords)
    inner = (coords.abs() < 0.99).all(-1, keepdim=True)
    torch.testing.assert_close(g1 * inner, g2 * inner, atol=1e-4, rtol=1e-4)


def test_weighted_gather_gradients():
    from models.fields.grids import weighted_gather
    torch.manual_seed(0)
    table = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 7, (5, 4))
    w = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(weighted_gather, (table, idx, w))


def test_line_lookup_is_linear_interpolation():
    lines = LineSet([6, 11], channels=2)
    c = torch.rand(2, 40) * 2 - 1
    out = lines.lookup(c)
    for p, n in enumerate([6, 11]):
        xs = np.linspace(-1, 1, n)
        for ch in range(2):
            ref = np.interp(c[p].numpy(), xs, lines.line(p)[:, ch].detach().numpy())
            np.testing.assert_allclose(out[p, :, ch].detach().numpy(), ref, atol=1e-6)


def _raw_density(field, x):
    pc, lc = vm_coords(x)
    return (field.density_planes.lookup(pc) * field.density_lines.lookup(lc)).sum(dim=(0, 2))


def test_rank1_vm_fits_an_outer_product_exactly():
    # target f(x,y,z) = a(x,y) * b(z), a and b interpolated from random texel values: a rank-1 VM term
    torch.manual_seed(0)
    r = 12
    a_tab, b_tab = torch.rand(1, 1, r, r) + 0.5, torch.rand(r) + 0.5
    x = torch.rand(2048, 3) * 2 - 1
    a = F.grid_sample(a_tab, x[None, :, None, :2], align_corners=True)[0, 0, :, 0]
    b = torch.from_numpy(np.interp(x[:, 2].numpy(), np.linspace(-1, 1, r), b_tab.numpy())).float()
    target = a * b
    field = TensoRFVM(resolution=r, density_rank=1, app_rank=1)
    opt = torch.optim.Adam([field.density_planes.table, field.density_lines.table], lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threading only adds overhead (and stalls on a busy machine)
    try:
        for it in range(400):
            loss = (_raw_density(field, x) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if it == 300:
                for g in opt.param_groups:
                    g["lr"] = 0.005
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 1e-5 * target.square().mean().item()


def test_tensorf_upsample_preserves_the_function_on_refined_grid():
    torch.manual_seed(0)
    field = TensoRFVM(resolution=9, density_rank=3, app_rank=3, app_dim=5)
    x, d = torch.rand(500, 3) * 2 - 1, F.normalize(torch.randn(500, 3), dim=-1)
    s0, c0 = field(x, d)
    field.upsample(17)  # 2r - 1: new texels at old texels and midpoints -> same piecewise-(bi)linear function
    s1, c1 = field(x, d)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-6)
    assert field.density_planes.plane(0).shape == (17, 17, 3)


def test_tensorf_sh_decoder_and_regularisers():
    field = TensoRFVM(resolution=8, density_rank=2, app_rank=2, decoder="sh", sh_degree=1)
    rgb = field(torch.zeros(3, 3), F.normalize(torch.randn(3, 3), dim=-1))[1]
    assert rgb.shape == (3, 3) and bool(((rgb > 0) & (rgb < 1)).all())
    with torch.no_grad():
        field.density_planes.table.fill_(1.0)
        field.density_lines.table.fill_(1.0)
        field.app_planes.table.fill_(0.3)
        field.app_lines.table.fill_(0.3)
    assert field.tv_loss().item() == 0.0


def test_fields_start_near_empty():
    torch.manual_seed(0)
    s = TensoRFVM(64).density(torch.rand(2000, 3) * 2 - 1)
    # a ray crossing the whole box (length 2 sqrt(3) box units) keeps > 80 % transmittance
    assert math.exp(-float(s.detach().max()) * 2 * math.sqrt(3)) > 0.8






def test_contraction_keeps_inside_points_and_bounds_far_points():
    torch.manual_seed(0)
    inside = torch.rand(100, 3) * 2 - 1
    far = torch.randn(100, 3) * 1e4
    for order in (2, math.inf):
        inner = inside if order == math.inf else inside / torch.linalg.vector_norm(inside, dim=-1, keepdim=True).clamp_min(1)
        torch.testing.assert_close(contract(inner, order), inner)
        c = contract(far, order)
        n = torch.linalg.vector_norm(c, ord=order, dim=-1)
        assert bool((n < 2).all()) and bool((n > 1.99).all())
        # continuous at the unit boundary and monotone in radius
        u = F.normalize(torch.randn(5, 3), dim=-1)
        u = u / torch.linalg.vector_norm(u, ord=order, dim=-1, keepdim=True)
        torch.testing.assert_close(contract(u * 1.0001, order), u, atol=2e-4, rtol=0)
    m = ContractedMap(center=[1.0, 0.0, 0.0], radius=2.0)
    torch.testing.assert_close(m(torch.tensor([[2.0, 1.0, 0.0]])), torch.tensor([[0.25, 0.25, 0.0]]))
    assert space_map_from_dict(m.to_dict()).radius == 2.0
    a = AABBMap([[0.0, -1.0, 2.0], [2.0, 1.0, 6.0]])
    torch.testing.assert_close(a(torch.tensor([[0.0, -1.0, 2.0], [2.0, 1.0, 6.0], [1.0, 0.0, 4.0]])),
                               torch.tensor([[-1.0] * 3, [1.0] * 3, [0.0] * 3]))


def test_encodings():
    x = torch.tensor([[0.5, -0.25]])
    e = frequency_encoding(x, 3)
    assert e.shape == (1, 2 * 7)
    torch.testing.assert_close(e[0, 2:4], torch.sin(x[0]))
    torch.testing.assert_close(e[0, -2:], torch.cos(4 * x[0]))
    # SH basis is orthonormal on the sphere (Fibonacci-lattice quadrature)
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    Y = sh_encoding(dirs, 3)
    gram = Y.t() @ Y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)



def test_param_groups_cover_every_parameter_once_and_survive_upsampling():
    field = TensoRFVM(8, 2, 2, 4)
    field.upsample(12)
    groups = field.param_groups(0.02, 1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(field.parameters()))
    assert {g["name"] for g in groups} == {"grid", "net"}
    assert field.app_planes.plane(2).shape == (12, 12, 2)
    # a state dict round-trips into a field built at the final resolution
    clone = TensoRFVM(12, 2, 2, 4)
    clone.load_state_dict(field.state_dict())
    x, d = torch.rand(10, 3) * 2 - 1, F.normalize(torch.randn(10, 3), dim=-1)
    torch.testing.assert_close(clone(x, d)[1], field(x, d)[1])
