"""DpDy without the diffusion prior: losses, sampling, novel cameras, and short fits on a tiny analytic scene
(a static slab and a cube sliding along x, rendered by our own renderer from exact fields, with exact depth,
instance masks and optical flow)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.cameras import Cameras, camera_rays, intrinsics_from_fov, look_at, project
from models.dpdy import DpDyConfig, DpDyMethod
from models.dpdy.losses import affine_invariant_depth_loss, metric_depth_loss, normalize_depth_prior
from models.dpdy.sampling import PixelSampler, orbit_cameras
from models.fields import AABBMap, RadianceField
from models.fields.base import DensityOutput
from models.registry import get_method
from models.rendering import RenderConfig, render_image
from models.scene import Scene
from monodyn_cli.dataclass_options import parse_options

T, H, W = 4, 24, 32
SPEED = 0.9  # cube x velocity, world units per unit normalised time (0.3 per frame: no static explanation)


class SlabAndCube(RadianceField):
    """Slab z in (-0.6, -0.3) with a checker of period 0.5 in x, y; cube of half-size 0.3 at (SPEED (t - 0.5), 0, 0.1)
    coloured by its local x. `part` = "all", "dynamic" (cube only)."""

    is_dynamic = True

    def __init__(self, part: str = "all"):
        super().__init__()
        self.part = part

    def _cube(self, x, t):
        c = torch.stack([SPEED * (t - 0.5), torch.zeros_like(t), torch.full_like(t, 0.1)], -1)
        return (x - c).abs().amax(-1) < 0.3, x - c

    def query_density(self, x, t):
        cube, _ = self._cube(x, t)
        slab = (x[:, 2] > -0.6) & (x[:, 2] < -0.3)
        occ = cube if self.part == "dynamic" else cube | slab
        return DensityOutput(sigma=occ.float() * 80.0)

    def query_color(self, x, d, t, state):
        cube, local = self._cube(x, t)
        checker = ((torch.floor(x[:, 0] * 2) + torch.floor(x[:, 1] * 2)) % 2)[:, None]
        slab_rgb = 0.2 + 0.6 * checker * torch.tensor([1.0, 0.8, 0.3])
        cube_rgb = torch.stack([0.5 + local[:, 0], torch.full_like(local[:, 0], 0.2), 0.8 - local[:, 0]], -1)
        return torch.where(cube[:, None], cube_rgb, slab_rgb).clamp(0, 1)


def tiny_cameras(n: int = T, spread: float = 20.0, size=(W, H)) -> Cameras:
    az = torch.deg2rad(torch.linspace(-spread, spread, n) - 90)
    eye = torch.stack([2.6 * torch.cos(az), 2.6 * torch.sin(az), torch.full_like(az, 1.2)], -1)
    K = intrinsics_from_fov(size[0], size[1], 50.0)[None].expand(n, 3, 3).clone()
    return Cameras(K, look_at(eye, torch.zeros(n, 3)), size[0], size[1])


def tiny_scene(with_flow: bool = True, static_camera: bool = False) -> Scene:
    cams = tiny_cameras(spread=0.0 if static_camera else 20.0)
    times = torch.linspace(0, 1, T)
    smap = AABBMap([[-1.0] * 3, [1.0] * 3])
    cfg = RenderConfig(n_samples=128)
    full = render_image(SlabAndCube(), cams, times, smap, None, cfg)
    dyn = render_image(SlabAndCube("dynamic"), cams, times, smap, None, cfg)
    instances = (dyn.alpha > 0.5) & ((dyn.depth - full.depth).abs() < 0.05)
    scene = Scene(frames=(full.rgb.clamp(0, 1) * 255).round().byte().numpy(), timestamps=np.arange(T) / 10.0,
                  cameras=cams, instances=instances.numpy().astype(np.uint8), depth=full.depth.numpy(),
                  center=np.zeros(3, np.float32), radius=1.0, static_camera=static_camera,
                  meta={} if static_camera else {"background": "black"})
    if with_flow:  # exact flow: unproject, move cube points with the cube, project into the neighbour frame
        o, d = camera_rays(cams)
        dist = full.depth / (d * cams.w2c[:, 2, :3][:, None, None]).sum(-1)
        pts = o + dist[..., None] * d
        xy = torch.stack(torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")[::-1], -1)
        flows = []
        for src, dst in ((slice(0, T - 1), slice(1, T)), (slice(1, T), slice(0, T - 1))):
            dt = times[dst] - times[src]
            move = instances[src].float()[..., None] * torch.stack([SPEED * dt, 0 * dt, 0 * dt], -1)[:, None, None]
            p2, _ = project(pts[src] + move, cams.K[dst][:, None, None], cams.w2c[dst][:, None, None])
            flows.append((p2 - xy).numpy())
        scene.flow_fw, scene.flow_bw = flows
        scene.valid_fw = scene.valid_bw = (full.alpha[:-1] > 0.5).numpy()
    return scene


def tiny_config(**kw) -> DpDyConfig:
    base = dict(steps=40, batch_rays=256, n_samples=48, static_res_start=16, static_res_final=32,
                static_density_rank=4, static_app_rank=8, static_decoder="sh", dynamic_res=8, dynamic_features=8, occupancy_res=16,
                occupancy_warmup=8, occupancy_every=4, checkpoint_every=0, lr_grid=0.08, device="cpu")
    base.update(kw)
    return DpDyConfig(**base)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scene():
    return tiny_scene()


class Recorder:
    def __init__(self, stop_at: int | None = None):
        self.calls, self.stop_at = [], stop_at

    def __call__(self, step, total, **metrics):
        self.calls.append((step, metrics))
        if self.stop_at is not None and step >= self.stop_at:
            raise KeyboardInterrupt  # what a killed fit looks like from the outside


# ---- pieces ------------------------------------------------------------------------------------------------

def test_metric_depth_loss_is_the_disparity_error_in_scene_units():
    pred = torch.tensor([1.0, 2.0, 4.0])
    prior = torch.tensor([1.0, 4.0, 2.0])
    # |2/1 - 2/1| + |2/2 - 2/4| + |2/4 - 2/2| = 0 + 0.5 + 0.5
    assert float(metric_depth_loss(pred, prior, 2.0)) == pytest.approx(1.0 / 3.0)
    assert float(metric_depth_loss(prior, prior, 2.0)) == 0.0


def test_sparse_depth_gets_extra_rays_through_its_pixels():
    from models.dpdy.trainer import SceneTensors

    scene = tiny_scene(with_flow=False)
    sparse = np.zeros_like(scene.depth)
    sparse[2, 5, 7], sparse[3, 1, 3] = 1.5, 2.5  # two SfM points
    scene.depth = sparse
    data = SceneTensors(scene, tiny_config(depth_rays=64), torch.device("cpu"))
    assert data.depth_metric  # sparse prior -> metric loss on the raw depths
    frame, row, col = data.depth_rays(64, torch.Generator().manual_seed(0))
    assert set(zip(frame.tolist(), row.tolist(), col.tolist())) == {(2, 5, 7), (3, 1, 3)}
    assert float(data.depth[2, 5, 7]) == 1.5
    dense = SceneTensors(tiny_scene(with_flow=False), tiny_config(), torch.device("cpu"))
    assert not dense.depth_metric and dense.depth_pixels is None  # dense prior -> affine-invariant


def test_affine_invariant_depth_loss_ignores_scale_and_shift_per_frame():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(64, generator=g) * 3 + 1
    frame = torch.arange(64) % 2
    prior = torch.where(frame == 0, 2.0 / z + 1.0, 0.5 / z - 3.0)  # different affine disparity per frame
    loss = affine_invariant_depth_loss(z, prior, frame, 2, "disparity")
    assert float(loss) < 1e-4
    flat = torch.full_like(z, 2.0, requires_grad=True)  # a constant rendering cannot match a varying prior
    bad = affine_invariant_depth_loss(flat, prior, frame, 2, "disparity")
    assert float(bad.detach()) > 0.1
    bad.backward()
    assert torch.isfinite(flat.grad).all()
    assert affine_invariant_depth_loss(z[:4], prior[:4], frame[:4], 2) is None  # too few rays per frame
    inverted = affine_invariant_depth_loss(z, -prior, frame, 2, "disparity")  # the scale may not turn negative
    assert float(inverted) > 1.0


def test_normalize_depth_prior_marks_unknown_pixels():
    depth = torch.rand(2, 8, 8) + 1
    depth[0, :2] = 0
    norm, valid = normalize_depth_prior(depth)
    assert not valid[0, :2].any() and valid[0, 2:].all() and valid[1].all()
    disp = 1 / depth[1]
    assert torch.allclose(norm[1], (disp - disp.median()) / (disp - disp.median()).abs().mean(), atol=1e-5)


def test_sampler_oversamples_dynamic_pixels_at_the_expected_rate():
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :4, :4] = True  # one 4x4 block per frame: 1/16 of the pixels
    s = PixelSampler(2, 16, 16, cell=4, dynamic_mask=mask, dynamic_boost=4.0, error_boost=0.0)
    f, r, c = s.sample(40000, torch.Generator().manual_seed(0))
    frac = float(mask[f, r, c].float().mean())
    expected = 5 / (15 + 5)  # weight 5 for the dynamic block, 1 for the other 15
    assert abs(frac - expected) < 0.01
    assert int(r.max()) == 15 and int(c.max()) == 15 and int(r.min()) == 0


def test_orbit_cameras_keep_the_pivot_in_view():
    cams = tiny_cameras(2)
    dist = torch.full((2,), 2.0)
    same = orbit_cameras(cams, dist, torch.zeros(2))
    assert torch.allclose(same.w2c, cams.w2c, atol=1e-5)
    turned = orbit_cameras(cams, dist, torch.tensor([30.0, -45.0]))
    pivot = cams.centers + dist[:, None] * cams.w2c[:, 2, :3]
    xy, z = project(pivot, turned.K, turned.w2c)
    assert torch.allclose(xy, torch.tensor([[W / 2, H / 2]] * 2), atol=1e-3)
    assert torch.allclose(z, dist, atol=1e-4)
    cos = ((turned.centers - pivot) * (cams.centers - pivot)).sum(-1) / dist.square()
    assert torch.allclose(cos, torch.cos(torch.deg2rad(torch.tensor([30.0, -45.0]))), atol=1e-4)


def test_config_options_parse():
    cfg = parse_options(DpDyConfig, ["--steps", "10", "--no-flow", "--background=white", "--rgb-loss", "charbonnier",
                                     "--minutes", "1.5"])
    assert (cfg.steps, cfg.flow, cfg.background, cfg.rgb_loss, cfg.minutes) == (10, False, "white", "charbonnier", 1.5)
    assert DpDyConfig().flow and DpDyConfig().depth


# ---- fitting -----------------------------------------------------------------------------------------------

def test_fit_lowers_the_loss_and_renders_the_training_views(scene, tmp_path):
    rec = Recorder()
    ckpt = DpDyMethod().fit(scene, tiny_config(steps=80, batch_rays=512), tmp_path, rec)
    losses = [m["loss"] for _, m in rec.calls]
    assert losses[-1] < 0.5 * losses[0]
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta["method"] == "dpdy" and meta["step"] == 80 and meta["arch"]["static"]["resolution"] == 32
    out = DpDyMethod().render(ckpt, scene.cameras, scene.times)
    assert out.rgb.shape == (T, H, W, 3) and out.depth.shape == out.alpha.shape == (T, H, W)
    assert out.extras["dynamic"].shape == (T, H, W)
    torch.testing.assert_close(out.extras["dynamic"] + out.extras["static"], out.alpha, atol=1e-4, rtol=0)
    psnr = -10 * math.log10(float(((out.rgb - scene.images()) ** 2).mean()))
    assert psnr > 19.5, psnr  # ~8 dB at the start
    # the moving cube is explained by the dynamic field, the slab by the static one
    inst = torch.as_tensor(scene.instances > 0)
    assert float(out.extras["dynamic"][inst].mean()) > 0.5 > 0.1 > float(out.extras["dynamic"][~inst].mean())
    # the registry finds the method; one camera at a time (how the CLI renders) gives the same image
    one = get_method("dpdy").render(ckpt, scene.cameras[1], scene.times[1:2])
    torch.testing.assert_close(one.rgb[0], out.rgb[1], atol=1e-5, rtol=0)


def test_static_camera_fits_the_view_and_takes_depth_from_the_prior(tmp_path):
    # no parallax: geometry can only come from the depth maps; unbounded (contracted) space
    scene = tiny_scene(with_flow=False, static_camera=True)
    ckpt = DpDyMethod().fit(scene, tiny_config(steps=60, batch_rays=512), tmp_path, Recorder())
    assert json.loads((ckpt / "config.json").read_text())["arch"]["space_map"]["kind"] == "contracted"
    out = DpDyMethod().render(ckpt, scene.cameras, scene.times)
    assert -10 * math.log10(float(((out.rgb - scene.images()) ** 2).mean())) > 16.0  # ~8 dB at the start
    gt = torch.as_tensor(scene.depth)
    disp, gt_disp = 1 / out.depth.clamp_min(1e-3), 1 / gt.clamp_min(1e-3)
    hit = (gt > 0) & (out.alpha > 0.5)  # gt 0: background, no depth
    assert float(hit.float().mean()) > 0.3
    assert torch.corrcoef(torch.stack([disp[hit], gt_disp[hit]]))[0, 1] > 0.8
    # a view 5 degrees away sees about as much of the scene
    near = DpDyMethod().render(ckpt, orbit_cameras(scene.cameras[:1], torch.tensor([2.8]), torch.tensor([5.0])),
                               scene.times[:1])
    assert torch.isfinite(near.rgb).all() and abs(float(near.alpha.mean() - out.alpha[0].mean())) < 0.15


def test_sparse_sfm_depth_seeds_the_occupancy_and_the_dynamic_cells(scene):
    from models.dpdy.trainer import Trainer
    # SfM-like depth on ~1 pixel in 16: the fit samples near those surfaces and the moving cube's rays only
    sparse = copy.copy(scene)
    sparse.depth = np.zeros_like(scene.depth)
    sparse.depth[:, ::4, ::4] = scene.depth[:, ::4, ::4]
    tr = Trainer(sparse, tiny_config(steps=80, batch_rays=512))
    assert tr.prior and tr.data.depth_metric
    dyn = tr.model.field.dynamic_grid
    assert dyn is not None and 0 < float(dyn.occupied.float().mean()) < 0.5 * float(tr.allowed.float().mean())
    assert bool((dyn.occupied <= tr.allowed).all())
    while not tr.done():
        tr.train_step()
    out = tr.model.eval().render_image(sparse.cameras, sparse.times)
    psnr = -10 * math.log10(float(((out.rgb.clamp(0, 1) - sparse.images()) ** 2).mean()))
    assert psnr > 19.0, psnr
    inst = torch.as_tensor(sparse.instances > 0)
    dynamic = out.weights_dynamic
    assert float(dynamic[inst].mean()) > 0.5 > 0.1 > float(dynamic[~inst].mean())


def test_same_seed_same_weights(scene, tmp_path):
    cfg = tiny_config(steps=12, occupancy_warmup=4)
    a = DpDyMethod().fit(scene, cfg, tmp_path / "a", Recorder())
    b = DpDyMethod().fit(scene, cfg, tmp_path / "b", Recorder())
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = DpDyMethod().fit(scene, tiny_config(steps=12, occupancy_warmup=4, seed=1), tmp_path / "c", Recorder())
    wc = load_file(str(c / "model.safetensors"))
    assert not torch.equal(wa["flow_head.out.bias"], wc["flow_head.out.bias"]) or \
        not torch.equal(wa["field.static.app_planes.table"], wc["field.static.app_planes.table"])


def test_resume_after_a_killed_fit_gives_the_same_weights(scene, tmp_path):
    # 24 steps: the grid grows at steps 3 and 6, occupancy updates from step 4, checkpoints every 8 steps
    cfg = tiny_config(steps=24, checkpoint_every=8, occupancy_warmup=4)
    straight = DpDyMethod().fit(scene, cfg, tmp_path / "straight", Recorder())
    with pytest.raises(KeyboardInterrupt):
        DpDyMethod().fit(scene, cfg, tmp_path / "killed", Recorder(stop_at=20))
    assert (tmp_path / "killed" / "train_state.pt").exists()
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["step"] == 16
    resumed = DpDyMethod().fit(scene, cfg, tmp_path / "killed", Recorder(), resume=True)
    assert not (resumed / "train_state.pt").exists()
    wa, wb = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_guidance_hook_sees_novel_view_renders_and_steers_the_fit(scene, tmp_path):
    calls = []

    def toward(value):
        def guidance(render, cameras, times):
            calls.append((tuple(render.rgb.shape), len(cameras), tuple(times.shape), render.alpha.requires_grad))
            return (render.alpha - value).abs().mean()  # a "prior" that wants opaque / empty novel views
        return guidance

    cfg = tiny_config(steps=16, guidance_every=4, guidance_views=2, guidance_size=16, guidance_weight=1.0,
                      flow=False, depth=False)
    opaque = DpDyMethod().fit(scene, cfg, tmp_path / "opaque", Recorder(), guidance=toward(1.0))
    empty = DpDyMethod().fit(scene, cfg, tmp_path / "empty", Recorder(), guidance=toward(0.0))
    assert len(calls) == 8
    assert calls[0] == ((2, 12, 16, 3), 2, (2,), True)
    cams = tiny_cameras(2, spread=35.0)
    a = DpDyMethod().render(opaque, cams, torch.tensor([0.3, 0.6])).alpha.mean()
    b = DpDyMethod().render(empty, cams, torch.tensor([0.3, 0.6])).alpha.mean()
    assert float(a) > float(b) + 0.03
