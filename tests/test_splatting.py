"""models.splatting: analytic cases, the compiled CPU path and the CUDA kernels (simulator) against the dense
PyTorch reference, forward and gradient."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.cameras import look_at
from models.splatting import rasterization
from models.splatting.binning import bin_gaussians_cpu, bin_gaussians_torch, depth_order, tile_rects
from models.splatting.project import project_gaussians

ROOT = Path(__file__).resolve().parents[1]


def random_scene(seed: int = 0, n: int = 40, d: int = 3, width: int = 40, height: int = 32,
                 dtype=torch.float32) -> dict:
    """Two cameras looking at a cloud of Gaussians, some overlapping and opaque enough for early
    termination, a few behind camera 0 and a few off-screen."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.7
    means[:3] = torch.tensor([[0.0, -5.0, 0.3], [0.2, -4.6, 0.5], [-0.3, -6.0, 0.0]])  # behind camera 0
    means[3:6] = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 5.0], [-5.0, 1.0, -3.0]])  # off-screen
    means[6:16] *= 0.15  # an opaque cluster in the middle: pixels run out of transmittance there
    opacities = torch.rand(n, generator=g) * 0.6 + 0.4
    opacities[6:16] = 0.97
    opacities[6] = 1.0  # clamped to 0.99
    f = 0.9 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return {
        "means": means.to(dtype),
        "quats": torch.randn(n, 4, generator=g).to(dtype),
        "scales": (torch.rand(n, 3, generator=g) * 0.3 + 0.03).to(dtype),
        "opacities": opacities.to(dtype),
        "colors": torch.rand(n, d, generator=g).to(dtype),
        "viewmats": look_at(torch.tensor([[0.0, -4.0, 0.5], [1.5, -3.5, -0.5]]), torch.zeros(2, 3)).to(dtype),
        "Ks": K[None].repeat(2, 1, 1).to(dtype),
        "width": width, "height": height,
    }


def render_with_grads(scene: dict, backend: str, backgrounds=None, seed: int = 1, **kw):
    """Render, backpropagate a fixed random weighting of colours and alphas; return outputs and gradients."""
    names = ["means", "quats", "scales", "opacities", "colors"]
    params = {k: scene[k].clone().requires_grad_() for k in names}
    bg = None if backgrounds is None else backgrounds.clone().requires_grad_()
    img, alpha, meta = rasterization(**params, viewmats=scene["viewmats"], Ks=scene["Ks"], width=scene["width"],
                                     height=scene["height"], backgrounds=bg, backend=backend, **kw)
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    loss = (img * torch.rand(img.shape, generator=g)).sum() + (alpha * torch.rand(alpha.shape, generator=g)).sum()
    loss.backward()
    grads = {k: v.grad for k, v in params.items()}
    grads["means2d"] = meta["means2d"].grad
    if bg is not None:
        grads["backgrounds"] = bg.grad
    return img.detach(), alpha.detach(), grads, meta


def assert_close_grads(got: dict, want: dict, rtol: float = 2e-3):
    for k in want:
        if want[k] is None:  # an input the render does not use ("D" mode ignores colours)
            assert got[k] is None or got[k].abs().max() == 0, k
            continue
        scale = want[k].abs().max().item() + 1e-6
        err = (got[k] - want[k]).abs().max().item()
        assert err <= rtol * scale, f"gradient of {k}: max error {err:.3g} vs max {scale:.3g}"


CASES = [  # (render_mode, channels, backgrounds, rasterize_mode, colors per camera)
    ("RGB", 3, False, "classic", False),
    ("RGB+ED", 5, True, "classic", False),
    ("RGB+D", 3, True, "antialiased", True),
    ("D", 3, False, "classic", False),
]


@pytest.mark.parametrize("mode,d,with_bg,rmode,per_cam", CASES)
def test_cpu_matches_reference(mode, d, with_bg, rmode, per_cam):
    scene = random_scene(seed=d, d=d)
    if per_cam:
        scene["colors"] = torch.stack([scene["colors"], scene["colors"].flip(0)])
    bg = torch.rand(2, d, generator=torch.Generator().manual_seed(5)) if with_bg else None
    ref = render_with_grads(scene, "torch", bg, render_mode=mode, rasterize_mode=rmode)
    got = render_with_grads(scene, "cpu", bg, render_mode=mode, rasterize_mode=rmode)
    radii = ref[3]["radii"]
    assert (radii == 0).any() and (radii > 0).sum() > 40  # the scene has culled and visible Gaussians
    assert ref[1].max() > 0.999  # and pixels that run out of transmittance
    assert torch.equal(got[3]["radii"], radii)
    if mode.endswith("ED"):  # expected depth divides by alpha: compare where alpha is not tiny
        m = ref[1] > 0.05
        torch.testing.assert_close(got[0][..., :-1], ref[0][..., :-1], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got[0][..., -1:][m], ref[0][..., -1:][m], atol=2e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(got[0], ref[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[1], ref[1], atol=2e-6, rtol=0)
    assert_close_grads(got[2], ref[2])


@pytest.mark.parametrize("antialiased", [False, True])
def test_compiled_projection_matches_torch(antialiased):
    """The numba projection with its hand-written backward against the torch projection under autograd,
    including Gaussians beyond the 1.3x field-of-view clamp whose footprint still reaches the image."""
    from models.splatting.cpu_project import project_gaussians_cpu

    scene = random_scene(seed=2)
    # camera 0 sits at (0, -4, 0.5) looking at the origin (x right, z down in its image): large Gaussians
    # far to the side project outside the clamp limit but cover the image edge
    scene["means"][16:19] = torch.tensor([[3.5, 0.0, 0.5], [-3.2, 0.5, 0.0], [0.3, 0.0, 3.0]])
    scene["scales"][16:19] = 1.5
    outs = []
    for fn in (project_gaussians, project_gaussians_cpu):
        params = [scene[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities")]
        p = fn(*params, scene["viewmats"], scene["Ks"], scene["width"], scene["height"], antialiased=antialiased)
        g = torch.Generator().manual_seed(0)
        vis = (p.radii > 0).float()
        loss = sum((t * torch.rand(t.shape, generator=g) * (vis[..., None] if t.dim() == 3 else vis)).sum()
                   for t in (p.means2d, p.conics, p.depths, p.opacities))
        loss.backward()
        outs.append((p, [t.grad for t in params]))
    (ref, ref_grads), (got, got_grads) = outs
    x = torch.tensor([3.5, -3.2]) / 4.0  # their x / z in camera 0 (depth ~4): beyond the clamp limit
    assert (x.abs() > 1.3 * scene["width"] / 2 / scene["Ks"][0, 0, 0]).all() and (ref.radii[0, 16:18] > 0).all()
    assert torch.equal(got.radii, ref.radii)
    m = ref.radii > 0
    for k in ("means2d", "conics", "depths", "opacities"):
        torch.testing.assert_close(getattr(got, k)[m], getattr(ref, k)[m], atol=1e-4, rtol=1e-5)
    assert_close_grads(dict(enumerate(got_grads)), dict(enumerate(ref_grads)), rtol=1e-4)


def test_binning_cpu_equals_torch():
    scene = random_scene(seed=3)
    scene["means"][30:34] = scene["means"][29]  # equal depths: both keep index order
    p = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmats"],
                          scene["Ks"], scene["width"], scene["height"])
    rects = tile_rects(p.means2d, p.radii, scene["width"], scene["height"], 16)
    order = depth_order(p.depths)
    a = bin_gaussians_cpu(rects, p.depths, p.radii, scene["width"], scene["height"], 16)
    b = bin_gaussians_torch(rects, order, scene["width"], scene["height"], 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0][-1] == int(((rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])).sum())


def test_reference_gradcheck():
    d64 = torch.float64
    g = torch.Generator().manual_seed(7)
    scene = {"means": torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.3, 0.1], [-0.2, 0.1, -0.1], [0.1, -0.1, 0.2],
                                    [0.0, 0.5, 0.0]], dtype=d64),
             "quats": torch.randn(5, 4, generator=g, dtype=d64),
             "scales": torch.rand(5, 3, generator=g, dtype=d64) * 0.3 + 0.1,
             "opacities": torch.rand(5, generator=g, dtype=d64) * 0.5 + 0.3,
             "colors": torch.rand(5, 2, generator=g, dtype=d64),
             "viewmats": look_at(torch.tensor([[0.0, -4.0, 0.5]]), torch.zeros(1, 3)).to(d64),
             "Ks": torch.tensor([[[12.0, 0.0, 6.0], [0.0, 12.0, 5.0], [0.0, 0.0, 1.0]]], dtype=d64),
             "width": 12, "height": 10}

    def f(means, quats, scales, opacities, colors):
        img, alpha, _ = rasterization(means, quats, scales, opacities, colors, scene["viewmats"], scene["Ks"],
                                      scene["width"], scene["height"], render_mode="RGB+D", backend="torch")
        return img, alpha

    inputs = tuple(scene[k].clone().requires_grad_() for k in ["means", "quats", "scales", "opacities", "colors"])
    assert f(*inputs)[1].max() > 0.5
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def head_on(opacities, depths, colors, backend, f=20.0, size=33):
    """Isotropic Gaussians on the optical axis of a camera at the origin; the axis hits pixel (16, 16)'s centre."""
    n = len(opacities)
    means = torch.tensor([[0.0, 0.0, z] for z in depths])
    s = math.sqrt(4.0 - 0.3) * depths[0] / f  # screen variance (f s / z)² + eps2d = 4: sigma = 2 px (first one)
    K = torch.tensor([[[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]]])
    return rasterization(means, torch.tensor([[1.0, 0, 0, 0]] * n), torch.full((n, 3), s),
                         torch.tensor(opacities), torch.as_tensor(colors), torch.eye(4)[None], K, size, size,
                         backend=backend)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_single_gaussian_head_on(backend):
    img, alpha, meta = head_on([0.7], [2.0], [[1.0, 0.5, 0.25]], backend)
    torch.testing.assert_close(meta["means2d"][0, 0], torch.tensor([16.5, 16.5]))
    # gsplat's largest eigenvalue is mid + sqrt(max(0.01, mid² - det)) = 4 + 0.1 for an isotropic cov2d
    assert meta["radii"][0, 0] == math.ceil(3 * math.sqrt(4.0 + 0.1))
    torch.testing.assert_close(meta["conics"][0, 0], torch.tensor([0.25, 0.0, 0.25]))
    torch.testing.assert_close(alpha[0, 16, 16, 0], torch.tensor(0.7))
    torch.testing.assert_close(img[0, 16, 16], torch.tensor([0.7, 0.35, 0.175]))
    one_sigma = 0.7 * math.exp(-0.5)  # 2 px = 1 sigma away, along x and along y
    torch.testing.assert_close(alpha[0, 16, 18, 0], torch.tensor(one_sigma))
    torch.testing.assert_close(alpha[0, 14, 16, 0], torch.tensor(one_sigma))
    assert alpha[0, 16, 16 + 8, 0] == 0  # 4 sigma: o·exp(-8) < 1/255 is skipped


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_two_gaussians_composite_in_depth_order(backend):
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    img, alpha, _ = head_on([0.6, 0.8], [2.0, 3.0], [red, green], backend)
    torch.testing.assert_close(img[0, 16, 16], torch.tensor([0.6, 0.4 * 0.8, 0.0]))
    torch.testing.assert_close(alpha[0, 16, 16, 0], torch.tensor(1 - 0.4 * 0.2))
    img, alpha, _ = head_on([0.6, 0.8], [3.0, 2.0], [red, green], backend)  # green in front now
    torch.testing.assert_close(img[0, 16, 16], torch.tensor([0.6 * 0.2, 0.8, 0.0]))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_clamp_and_early_termination(backend):
    # opacity 1 is clamped to alpha 0.99, and the clamp passes no gradient
    op = torch.tensor([1.0, 0.5]).requires_grad_()
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    K = torch.tensor([[[20.0, 0.0, 16.5], [0.0, 20.0, 16.5], [0.0, 0.0, 1.0]]])
    img, alpha, _ = rasterization(means, torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.2), op,
                                  torch.ones(2, 1), torch.eye(4)[None], K, 33, 33, backend=backend)
    torch.testing.assert_close(alpha[0, 16, 16, 0], torch.tensor(0.99 + 0.01 * 0.5))
    img[0, 16, 16, 0].backward()
    assert op.grad[0] == 0 and op.grad[1] > 0
    # T: 1 -> 0.05 -> 0.0025 -> 0.0025·0.02 = 5e-5 <= 1e-4: the third Gaussian is left out, gradients too
    colors = torch.eye(3).requires_grad_()
    img, alpha, _ = head_on([0.95, 0.95, 0.98], [2.0, 3.0, 4.0], colors, backend)
    torch.testing.assert_close(img[0, 16, 16], torch.tensor([0.95, 0.05 * 0.95, 0.0]))
    torch.testing.assert_close(alpha[0, 16, 16, 0], torch.tensor(1 - 0.0025))
    img[0, 16, 16].sum().backward()
    assert colors.grad[2].abs().sum() == 0 and colors.grad[1, 1] > 0


SIMULATOR_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
from test_splatting import random_scene, render_with_grads
from models.splatting import cuda_kernels
cuda_kernels.MAX_D = 2  # channels per launch: 3 channels (2 + expected depth) take two launches
scene = random_scene(seed=3, n=20, d=2, width=32, height=32)
bg = torch.rand(2, 2, generator=torch.Generator().manual_seed(2))
ref = render_with_grads(scene, "torch", bg, render_mode="RGB+ED")
got = render_with_grads(scene, "cuda", bg, render_mode="RGB+ED")
m = ref[1] > 0.05
res = {"img": (got[0] - ref[0])[m.expand_as(ref[0])].abs().max().item(), "alpha": (got[1] - ref[1]).abs().max().item(),
       "max_alpha": ref[1].max().item(), "radii_equal": torch.equal(got[3]["radii"], ref[3]["radii"])}
res["grads"] = {k: [(got[2][k] - v).abs().max().item(), v.abs().max().item()] for k, v in ref[2].items()}
print(json.dumps(res))
"""


def test_cuda_kernels_in_simulator():
    """Our numba-cuda kernels, run by numba's CUDA simulator (which must be enabled before numba.cuda is
    imported, hence a subprocess) on CPU arrays, against the dense reference: forward and gradients."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", SIMULATOR_SCRIPT, str(ROOT / "tests")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["radii_equal"] and res["max_alpha"] > 0.999
    assert res["img"] < 1e-4 and res["alpha"] < 1e-6
    for k, (err, scale) in res["grads"].items():
        assert err <= 2e-3 * scale + 1e-6, (k, err, scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "gsplat"])
def test_gpu_backends_match_reference(backend):
    if backend == "gsplat":
        pytest.importorskip("gsplat")
    scene = random_scene(seed=4, d=4)
    scene["opacities"] = scene["opacities"].clamp(max=0.9)  # below both clamps (gsplat's is 0.999, ours 0.99)
    bg = torch.rand(2, 4, generator=torch.Generator().manual_seed(5))
    ref = render_with_grads(scene, "torch", bg, render_mode="RGB+D")
    gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    got = render_with_grads(gpu, backend, bg.cuda(), render_mode="RGB+D")
    torch.testing.assert_close(got[0].cpu(), ref[0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got[1].cpu(), ref[1], atol=1e-4, rtol=0)
    assert_close_grads({k: v.cpu() for k, v in got[2].items() if v is not None}, ref[2], rtol=1e-2)
