"""OSN: object frames and scales, poses from flow tracks, Gaussian compositing vs the soft Z-buffer, validity
labels against the synthetic generator's own ground truth, the scale network, and a tiny fit -> render ->
`osn scales` run (resume equality is tested once per method, in tests/test_method_conformance.py)."""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache

import numpy as np
import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, unproject
from models.errors import InputError
from models.gaussians.model import GaussianSet
from models.gaussians.motion_init import DepthSource, object_poses
from models.osn.composite import place, render_composite
from models.osn.config import OSNConfig, OSNRenderOptions
from models.osn.objects import build_object_set, dropped_line, frame_from_world, frame_from_world_at_frames
from models.osn.scale_net import ScaleNetwork, ScaleSpace, valid_configurations
from models.osn.synthetic import scene_from_ground_truth
from models.osn.trainer import scale_network_step
from models.osn.zbuffer import ZBufferCache, hard_zbuffer, soft_zbuffer
from models.scene import Scene
from monodyn_cli.synth import SynthConfig, generate_scene, render_view
from monodyn_cli.synth.scene import Poses

VARIANTS = ((0.8, 0.8), (1.0, 0.6), (2.0, 2.0), (0.5, 0.5), (1.1, 0.9))


@lru_cache(maxsize=None)
def synth(seed: int, frames: int, width: int, height: int, variants: tuple = ()):
    cfg = SynthConfig(seed=seed, frames=frames, width=width, height=height, objects=2, heldout_azimuths=(),
                      fixed_cameras=0, scale_variants=variants)
    return generate_scene(cfg)


def osn_scene(sc):
    v = sc.view("input")
    room = sc.meta["room"]
    aabb = [[-room["half_size"], -room["half_size"], 0.0], [room["half_size"], room["half_size"], room["height"]]]
    return scene_from_ground_truth(v.rgb, v.instances, v.depth, v.cameras, sc.object_poses(), aabb=aabb)


def tracked_scene(sc) -> Scene:
    """The input view as preprocessing would give it with exact flow and depth, and no per-object SfM."""
    v = sc.view("input")
    depth = np.asarray(v.depth, np.float32)
    return Scene(frames=np.asarray(v.rgb), timestamps=np.arange(len(v.rgb)) / 12.0, cameras=v.cameras,
                 instances=np.asarray(v.instances), flow_fw=np.asarray(v.flow_fw), flow_bw=np.asarray(v.flow_bw),
                 valid_fw=np.asarray(v.valid_fw), valid_bw=np.asarray(v.valid_bw),
                 depth=np.where(np.isfinite(depth), depth, 0), center=np.asarray(sc.meta["scene_centre"], np.float32),
                 radius=float(np.median(depth[np.isfinite(depth)])))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- object frames and scales ---------------------------------------------------------------------------------

def test_object_frames_follow_ground_truth_and_scale_about_the_camera():
    sc = synth(0, 6, 32, 24)
    scene, g = osn_scene(sc)
    objects = build_object_set(scene)
    assert objects.source == ["world", "sfm", "sfm"] and objects.dropped == {}
    v = sc.view("input")
    M = torch.as_tensor(sc.object_poses(), dtype=torch.float64)  # (K,T,4,4) local -> world
    for o in (1, 2):
        t, y, x = [torch.as_tensor(a) for a in np.nonzero(v.instances == o)]
        xy = torch.stack([x + 0.5, y + 0.5], -1).double()
        z = torch.as_tensor(v.depth[t.numpy(), y.numpy(), x.numpy()]).double()
        X = unproject(xy, z, v.cameras.K[t].double(), v.cameras.w2c[t].double())  # surface points, world
        local = (torch.linalg.inv(M[o - 1, t]) @ torch.cat([X, torch.ones_like(z)[:, None]], -1)[..., None])[..., :3, 0]
        # at the ground-truth scale g_o, the object frame is the local frame in units of g_o (rigid over time)
        s = torch.full_like(z, g[o - 1] * objects.unit[o])
        F = frame_from_world_at_frames(objects.frame_from_camera[o, t].double(), objects.w2c[t].double(), s)
        p = (F[:, :3, :3] @ X[..., None])[..., 0] + F[:, :3, 3]
        assert torch.allclose(p, local / (g[o - 1] * objects.unit[o]), atol=1e-4)
        # scaling the object by sigma about the input camera maps the same world-scaled point to the same place
        C = v.cameras.centers[t].double()
        X2 = C + 1.7 * (X - C)
        F2 = frame_from_world_at_frames(objects.frame_from_camera[o, t].double(), objects.w2c[t].double(), 1.7 * s)
        assert torch.allclose((F2[:, :3, :3] @ X2[..., None])[..., 0] + F2[:, :3, 3], p, atol=1e-4)
    # the background's frame is the world
    F0 = frame_from_world(objects, 0, 1.0, float(objects.times[2]))
    assert torch.allclose(F0, torch.eye(4), atol=1e-5)
    # between frames the pose is interpolated: halfway for a time halfway between two frames
    t_mid = 0.5 * float(objects.times[1] + objects.times[2])
    O1, O2, Om = [torch.linalg.inv(frame_from_world(objects, 1, 2.0, tt).double()) for tt in
                  (float(objects.times[1]), float(objects.times[2]), t_mid)]
    assert torch.allclose(Om[:3, 3], 0.5 * (O1[:3, 3] + O2[:3, 3]), atol=1e-4)
    assert abs(float(torch.linalg.det(Om[:3, :3])) ** (1 / 3) - 2.0) < 1e-4  # object -> world scales by s


def test_track_poses_match_the_ground_truth_motion():
    """With exact flow and depth, PnP on an object's flow tracks recovers its camera-from-object poses: its tracked
    points land where the generator's motion puts them (a small object's rotation is weakly determined by its
    projections, so the points' positions are what is compared, with a loose bound on the rotation)."""
    sc = synth(14, 8, 128, 96)
    scene = tracked_scene(sc)
    M = sc.object_poses().astype(np.float64)  # (K,T,4,4) local -> world
    w2c = scene.cameras.w2c.double().numpy()
    for k in (1, 2):
        poses = object_poses(scene, DepthSource(scene), k)
        assert poses.reason is None and poses.solved[poses.visible].mean() >= 0.8, poses
        assert poses.error_px < 0.5, poses.error_px
        c = poses.canonical
        pts = np.c_[poses.points, np.ones(len(poses.points))]  # object frame
        at_c = (poses.w2o[c] @ pts.T).T  # camera c
        for t in np.nonzero(poses.solved & poses.visible)[0]:
            est = (poses.w2o[t] @ pts.T).T[:, :3]
            gt = (w2c[t] @ M[k - 1, t] @ np.linalg.inv(M[k - 1, c]) @ np.linalg.inv(w2c[c]) @ at_c.T).T[:, :3]
            assert np.median(np.linalg.norm(est - gt, axis=1) / gt[:, 2]) < 0.06, (k, t)  # measured: <= 4%
            R = poses.w2o[t, :3, :3] @ poses.w2o[c, :3, :3].T
            R_gt = (w2c[t] @ M[k - 1, t] @ np.linalg.inv(M[k - 1, c]) @ np.linalg.inv(w2c[c]))[:3, :3]
            assert np.degrees(np.arccos(np.clip((np.trace(R.T @ R_gt) - 1) / 2, -1, 1))) < 15.0
    objects = build_object_set(scene)
    assert objects.source == ["world", "tracks", "tracks"] and objects.n_objects == 2


def test_tracks_triangulated_over_the_poses_give_the_shape_not_a_relief():
    """Without depth on the objects (sparse background depth only), every object is lifted as a flat relief at
    the depth around it; triangulating its tracks over the PnP poses (alternating with PnP) recovers its shape:
    the points' depths in the canonical view follow the true depths, and the tracks are explained better."""
    sc = synth(14, 8, 128, 96)
    scene = tracked_scene(sc)
    inst = np.asarray(scene.instances)
    true = np.asarray(scene.depth).copy()
    sparse = true.copy()
    keep = np.zeros_like(sparse, bool)
    keep.reshape(-1)[::7] = True
    sparse[(inst > 0) | ~keep] = 0
    flat = dataclasses.replace(scene, depth=sparse)
    for k in (1, 2):
        poses = object_poses(flat, DepthSource(flat), k)
        assert poses.reason is None and poses.triangulated >= 0.4 * len(poses.points), poses.triangulated
        assert poses.error_px < 0.2, poses.error_px
        c = poses.canonical
        z = poses.points @ poses.w2o[c, 2, :3] + poses.w2o[c, 2, 3]  # depth in the canonical view
        gt = true[c][poses.pixels[:, 1].astype(int), poses.pixels[:, 0].astype(int)]
        assert np.corrcoef(z, gt)[0, 1] > 0.5  # measured 0.83 / 0.62; the relief: 0.07 / 0.21


def test_objects_without_poses_stay_background_and_are_named():
    sc = synth(0, 6, 32, 24)
    scene, _ = osn_scene(sc)
    with pytest.raises(InputError, match="no segment stage result.*--point"):
        build_object_set(dataclasses.replace(scene, instances=None))
    # nothing segmented: the background alone, the one scene there is
    alone = build_object_set(dataclasses.replace(scene, instances=np.zeros_like(scene.instances)))
    assert alone.ids == [0] and alone.n_objects == 0 and dropped_line(alone) is None
    # object 2 has no per-object SfM and the scene no flow to track it: it becomes background, with the reason
    missing = dataclasses.replace(scene, object_cameras={1: scene.object_cameras[1]})
    objects = build_object_set(missing)
    assert objects.ids == [0, 1] and set(objects.dropped) == {2}
    line = dropped_line(objects)
    assert "\n" not in line and "object 2: no optical flow" in line and "1 of 2 segmented objects" in line
    # a tiny object has too few tracks for PnP
    tracked = tracked_scene(synth(14, 8, 64, 48))
    speck = np.asarray(tracked.instances).copy()
    speck[speck == 2] = 0
    speck[:, 10:12, 10:12] = 3
    poses = object_poses(dataclasses.replace(tracked, instances=speck), DepthSource(tracked), 3)
    assert poses.w2o is None and "too small" in poses.reason


# ---- Gaussian compositing vs the soft Z-buffer ----------------------------------------------------------------

def disc(depth: float, radius: float, colour) -> GaussianSet:
    """One opaque flat Gaussian facing the camera (camera frame = object frame), centred on the optical axis."""
    g = GaussianSet(torch.tensor([[0.0, 0.0, depth]]), torch.log(torch.tensor([[radius, radius, 1e-3]])),
                    torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([8.0]),
                    torch.logit(torch.tensor([colour], dtype=torch.float32).clamp(0.01, 0.99)))
    return g


def test_placing_scales_depth_about_the_camera_and_keeps_the_silhouette():
    W = H = 32
    K = intrinsics_from_fov(W, H, 40.0)
    eye = torch.eye(4)
    g = disc(3.0, 0.4, (1.0, 0.0, 0.0))
    scaled = torch.diag(torch.tensor([2.5, 2.5, 2.5, 1.0]))  # object -> camera at scale 2.5
    with torch.no_grad():
        a = render_composite([place(g, eye)], eye, K, W, H, backend="torch")
        b = render_composite([place(g, scaled)], eye, K, W, H, backend="torch")
    assert torch.allclose(a.alpha, b.alpha, atol=1e-4) and float(a.alpha.max()) > 0.99
    seen = a.alpha > 0.5
    assert torch.allclose(b.depth[seen], 2.5 * a.depth[seen], rtol=1e-4)
    assert torch.allclose(a.depth[seen], torch.full_like(a.depth[seen], 3.0), rtol=1e-3)
    # a rotation turns the Gaussian's orientation too: turned 90 degrees about y, the disc is seen edge-on
    R = torch.eye(4)
    R[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    shift = torch.eye(4)
    shift[2, 3] = 3.0
    side = place(disc(0.0, 0.4, (1.0, 0.0, 0.0)), shift @ R)
    assert torch.allclose(side.means, torch.tensor([[0.0, 0.0, 3.0]]))
    assert float(render_composite([side], eye, K, W, H, backend="torch").alpha.detach().sum()) < 0.2 * float(a.alpha.sum())


def square(depth: float, half: float, colour, x0: float = 0.0, n: int = 24) -> GaussianSet:
    """An opaque square facing the camera at z = depth, centred at x = x0: n x n small flat Gaussians."""
    u = torch.linspace(-half, half, n)
    gy, gx = torch.meshgrid(u, u, indexing="ij")
    means = torch.stack([gx.reshape(-1) + x0, gy.reshape(-1), torch.full((n * n,), depth)], -1)
    size = 2 * half / (n - 1)
    return GaussianSet(means, torch.log(torch.tensor([size, size, 1e-3])).expand(n * n, 3),
                       torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n * n, 4), torch.full((n * n,), 8.0),
                       torch.logit(torch.tensor(colour, dtype=torch.float32).clamp(0.01, 0.99)).expand(n * n, 3))


def test_soft_zbuffer_segmentation_equals_composite_rendering():
    """Three opaque squares (background, A, B) in their own frames (= the camera frame); the composite of all
    three concatenated in one rasterisation segments every pixel as the hard / soft Z-buffer of the objects
    rendered alone at unit scale says, for several scale combinations."""
    W = H = 32
    K = intrinsics_from_fov(W, H, 40.0)
    eye = torch.eye(4)
    sets = [square(9.5, 6.0, (0.5, 0.5, 0.5), n=40), square(3.0, 0.5, (1.0, 0.0, 0.0)),
            square(4.0, 0.5, (0.0, 0.0, 1.0), x0=0.5)]

    @torch.no_grad()
    def render(scales, objects=(0, 1, 2)):
        placed = [place(sets[o], torch.diag(torch.tensor([scales[o]] * 3 + [1.0]))) for o in objects]
        return render_composite(placed, eye, K, W, H, backend="torch")

    alone = [render([1.0, 1.0, 1.0], (o,)) for o in range(3)]
    depth = torch.stack([a.depth.reshape(-1) for a in alone], -1)
    alpha = torch.stack([a.alpha.reshape(-1) for a in alone], -1)
    combos = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.5, 1.0], [1.0, 1.0, 0.6], [1.0, 4.0, 1.0], [1.0, 1.0, 3.0]])
    seg_soft = soft_zbuffer(depth, alpha, combos, temperature=1e-3).argmax(-1)
    seg_hard = hard_zbuffer(depth, alpha, combos)
    crisp = ((alpha > 0.97) | (alpha < 0.01)).all(-1)
    assert crisp.float().mean() > 0.7
    for h, s in enumerate(combos.tolist()):
        comp = render(s)
        seg = comp.object_weights.reshape(-1, 3).argmax(-1)
        assert torch.allclose(comp.object_weights.sum(-1), comp.alpha, atol=1e-5)
        assert bool((comp.alpha.reshape(-1)[crisp] > 0.97).all())
        assert torch.equal(seg[crisp], seg_soft[h][crisp]), s
        assert torch.equal(seg[crisp], seg_hard[h][crisp]), s
        # the composite depth is the scaled alone depth of the object that wins
        win = seg[crisp]
        scaled = depth[crisp].gather(1, win[:, None])[:, 0] * torch.tensor(s)[win]
        assert torch.allclose(comp.depth.reshape(-1)[crisp], scaled, rtol=0.03)
    # the combinations above really change the winner somewhere (the test can fail)
    assert len({tuple(seg_hard[h][crisp].tolist()) for h in range(len(combos))}) >= 4


def test_soft_zbuffer_weights_are_alpha_compositing_of_layers():
    depth = torch.tensor([[5.0, 2.0, 3.0]])
    alpha = torch.tensor([[1.0, 0.5, 0.8]])
    w = soft_zbuffer(depth, alpha, torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0]]), temperature=1e-4)
    # order 1, 2, 0: w1 = .5, w2 = .8 * .5, w0 = 1 * .5 * .2 ; then 2 (3.0) before 1 (4.0): w2 = .8, w1 = .5*.2
    assert torch.allclose(w[0, 0], torch.tensor([0.1, 0.5, 0.4]), atol=1e-4)
    assert torch.allclose(w[1, 0], torch.tensor([0.1, 0.1, 0.8]), atol=1e-4)
    assert torch.allclose(w.sum(-1), torch.ones(2, 1), atol=1e-4)


# ---- validity labels and the scale network against the generator's ground truth ---------------------------------

def ground_truth_layers(sc, g):
    """Each object rendered alone by the generator (exact opacity and depth, also where it is hidden), in OSN's
    unit-scale depth (object units = world / g)."""
    spec = sc.spec
    depth, alpha = [], []
    for o in range(len(spec.objects) + 1):
        keep = slice(0, 0) if o == 0 else slice(o - 1, o)
        sub = dataclasses.replace(spec, objects=spec.objects[keep], variants=[],
                                  poses=Poses(spec.poses.scale[:, keep], spec.poses.R[:, keep], spec.poses.t[:, keep]))
        v = render_view(sub, "input")
        a = (v.instances == (0 if o == 0 else 1))
        depth.append(np.where(a, v.depth / (1.0 if o == 0 else g[o - 1]), 0.0))
        alpha.append(a.astype(np.float32))
    to = lambda xs: torch.as_tensor(np.stack(xs, -1), dtype=torch.float32).reshape(-1, len(xs))
    return to(depth), to(alpha)


@lru_cache(maxsize=None)
def gt_cache():
    # seed 14: two objects in the air that pass in front of each other; 24 frames at 48 x 36
    sc = synth(14, 24, 48, 36, VARIANTS)
    scene, g = osn_scene(sc)
    depth, alpha = ground_truth_layers(sc, g)
    labels = torch.as_tensor(sc.view("input").instances.astype(np.int64)).reshape(-1)
    scales = torch.tensor([[1.0, 1.0]] + [v["scales"] for v in sc.meta["variants"]]) * torch.tensor(g)
    changed = [0.0] + [v["input_changed_fraction"] for v in sc.meta["variants"]]
    return ZBufferCache.build(depth, alpha, labels), scales, changed


def test_validity_labels_agree_with_the_generator():
    cache, scales, changed = gt_cache()
    full = torch.cat([torch.ones(len(scales), 1), scales], 1)
    labels, err = cache.validity_labels(full, temperature=2e-3, tolerance=5e-3)
    for lab, e, ch in zip(labels.tolist(), err.tolist(), changed):
        if ch == 0.0:  # the input video is unchanged: a valid scene
            assert lab, (e, ch)
        if ch > 5e-4:  # clearly changes the video (occlusions broken): invalid
            assert not lab, (e, ch)
    assert sum(c > 5e-4 for c in changed) >= 2 and sum(c == 0 for c in changed) >= 3


def test_scale_network_learns_the_valid_region():
    cache, scales, changed = gt_cache()
    torch.manual_seed(0)
    space = ScaleSpace(torch.log(scales.amin(0) / 8), torch.log(scales.amax(0) * 3))
    net = ScaleNetwork(2, hidden=64)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        scale_network_step(net, space, cache, opt, 128, g, temperature=2e-3, tolerance=5e-3)
    p = net.validity(space.to_unit(scales))
    for score, ch in zip(p.tolist(), changed):
        if ch == 0.0:
            assert score > 0.5, (p, changed)
        if ch > 5e-4:
            assert score < 0.5, (p, changed)
    valid, _ = valid_configurations(net, space, 1024, seed=3)
    again, _ = valid_configurations(net, space, 1024, seed=3)
    assert torch.equal(valid, again) and 0 < len(valid) < 1024
    # what the network calls valid, the soft Z-buffer mostly confirms
    agree, _ = cache.validity_labels(torch.cat([torch.ones(len(valid), 1), valid], 1), 2e-3, 5e-3)
    assert agree.float().mean() > 0.9


# ---- fit -> checkpoint -> render -> `monodyn osn scales` ------------------------------------------------------

TINY = dict(steps=40, checkpoint_every=0, bootstrap_fraction=0.5, round_steps=10, scale_steps=10, final_scale_steps=100,
            scale_candidates=64, background_points=1500, object_points=400, keyframes=3, zbuffer_pixels=20000,
            refine_every=10, device="cpu")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from monodyn_cli.fits import fit_cached
    from monodyn_cli.workspace import Progress, Workspace

    torch.set_num_threads(1)
    scene = tracked_scene(synth(14, 8, 48, 36))  # object poses from flow tracks
    ws = Workspace(tmp_path_factory.mktemp("osn") / "clip.monodyn")
    ws.ensure()
    method = __import__("models.registry", fromlist=["get_method"]).get_method("osn")
    cfg = OSNConfig(**TINY)
    ckpt = fit_cached(ws, "osn", method, cfg, scene, {"decode": "0" * 16}, Progress(), False, False, lambda s: None)
    return ws, ckpt, scene, method


def test_fit_writes_a_checkpoint_that_renders(fitted):
    ws, ckpt, scene, method = fitted
    files = sorted(p.name for p in ckpt.iterdir())
    assert {"config.json", "model.safetensors", "manifest.json"} <= set(files)
    assert "train_state.pt" not in files and "metrics.jsonl" in files  # the resume state only while unfinished
    doc = json.loads((ckpt / "config.json").read_text())
    assert doc["method"] == "osn" and doc["objects"]["ids"] == [0, 1, 2] and doc["state"]["finished"]
    assert doc["objects"]["source"] == ["world", "tracks", "tracks"] and method.fit_notes(ckpt) == []
    t = [0, 5]
    render = lambda **options: method.load(ckpt, scene, OSNRenderOptions(**options), "cpu").render  # noqa: E731
    out = render()(scene.cameras[torch.tensor(t)], scene.times[t])
    assert out.rgb.shape == (2, 36, 48, 3) and out.depth.shape == (2, 36, 48)
    gt = scene.images(t)
    mse = ((out.rgb - gt) ** 2).mean()
    # it learned the video in 40 tiny steps: better than 20 dB and than the clip's mean colour
    assert mse < 0.01 and mse < ((gt - gt.mean((0, 1, 2))) ** 2).mean()
    assert out.extras["scales"].shape == (1, 2) and out.extras["object_weights"].shape == (2, 36, 48, 3)
    # several scale samples are tiled side by side, each equal to its own render
    two = render(scale_samples=2)(scene.cameras[torch.tensor([0])], scene.times[[0]])
    one = render(scale_sample=1)(scene.cameras[torch.tensor([0])], scene.times[[0]])
    assert two.rgb.shape == (1, 36, 96, 3)
    assert torch.allclose(two.rgb[:, :, 48:], one.rgb, atol=1e-5)
    with pytest.raises(InputError, match="one scale per object"):
        render(scales=(1.0,))


def test_scaling_an_object_scales_its_depth_in_the_input_view(fitted):
    from models.osn.method import load_model

    ws, ckpt, scene, method = fitted
    model = load_model(ckpt)
    t = int(np.argmax((np.asarray(scene.instances) == 1).sum((1, 2))))  # the frame where object 1 is largest
    cam, time = scene.cameras[t], float(scene.times[t])
    s1, s2 = model.default_scales().tolist()
    alone = [model.render(cam.w2c[0], cam.K[0], cam.width, cam.height, time, [1.0, s, s2], objects=[1])
             for s in (s1, 0.5 * s1)]
    seen = alone[0].alpha > 0.5
    assert int(seen.sum()) >= 5 and torch.allclose(alone[0].alpha, alone[1].alpha, atol=1e-3)  # same silhouette
    assert torch.allclose(alone[1].depth[seen] / alone[0].depth[seen], torch.tensor(0.5), atol=1e-3)
    # in the composite the silhouette of everything is unchanged too
    a, b = [model.render_cameras(Cameras(cam.K, cam.w2c, cam.width, cam.height), scene.times[[t]],
                                 torch.tensor(s)) for s in ((s1, s2), (0.5 * s1, s2))]
    assert torch.allclose(a["alpha"], b["alpha"], atol=0.03)


def test_osn_scales_command(fitted):
    import typer
    from typer.testing import CliRunner

    from monodyn_cli.commands import osn

    ws, ckpt, scene, method = fitted
    app = typer.Typer()
    osn.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `osn` a sub-command
    result = CliRunner().invoke(app, ["osn", "scales", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "OSN object scales" in result.output and "candidate combinations valid" in result.output
    png = ws.root / "osn" / f"scales-{ckpt.name[:8]}.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    from models.osn.method import load_model
    from models.osn.report import scale_report

    rep = scale_report(load_model(ckpt))
    assert rep.curve_validity.shape == (2, 200) and rep.map2d[2].shape == (96, 96)
    assert bool(((rep.curve_validity >= 0) & (rep.curve_validity <= 1)).all())


def test_dpdy_places_objects_at_osn_scales(fitted):
    """DpDy takes OSN's scales: each object's lifted Gaussians have the chosen OSN scale as their median depth in
    the frame where the object is largest (the others keep theirs)."""
    from models.dpdy.config import DpDyConfig
    from models.gaussians.init import InitOptions, initialise
    from models.osn.method import object_placements

    ws, ckpt, scene, method = fitted
    centre, near, far = (object_placements(ckpt, c) for c in ("centre", "near", "far"))
    assert set(centre) == {1, 2} and sum(map(np.log, near.values())) <= sum(map(np.log, far.values()))
    model = method.load(ckpt, scene, OSNRenderOptions(), "cpu").model
    assert torch.allclose(torch.tensor(list(centre.values())), model.default_scales())
    cfg = DpDyConfig(object_scales=",".join(f"{k}:{v}" for k, v in centre.items()))
    cfg.validate()
    assert cfg.placements() == pytest.approx(centre, rel=1e-6)
    with pytest.raises(InputError, match="--object-scales"):
        DpDyConfig(object_scales="1:-2").validate()
    opts = dict(static_points=300, dynamic_points=600, bases_per_object=1, seed=0)
    plain = initialise(scene, InitOptions(**opts))
    placed = initialise(scene, InitOptions(**opts, object_scales={1: 2 * centre[1]}))
    inst = np.asarray(scene.instances)
    for k in (1, 2):
        t = int((inst == k).sum((1, 2)).argmax())
        w2c = scene.cameras.w2c[t]
        z = lambda m: (m.dynamic_pose(float(scene.times[t]))[0][m.instance_ids == k] @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]  # noqa: E731
        if k == 1:
            assert float(z(placed).detach().median()) == pytest.approx(2 * centre[1], rel=0.1)
        else:
            assert torch.allclose(z(placed), z(plain), atol=1e-5)
