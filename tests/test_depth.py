"""Depth Anything wrapper (tiny random model), robust alignment to sparse depth, and the depth stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import depth as D
from models.errors import StageError, WeightsNotFoundError
from monodyn_cli import pipeline
from monodyn_cli.stages import decode as decode_stage
from monodyn_cli.stages import depth as depth_stage
from monodyn_cli.workspace import Progress, Workspace
from tests.conftest import pattern_frames, write_video


def tiny_depth_anything(seed: int = 0):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56,
                            patch_size=14, out_indices=[1, 2], reshape_hidden_states=False, initializer_range=0.2)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[16, 32],
                              reassemble_factors=[2, 1], fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                              initializer_range=0.2)
    torch.manual_seed(seed)
    return DepthAnythingForDepthEstimation(cfg).eval()


# ---- network input / inference ----------------------------------------------------------------------------

@pytest.mark.parametrize("h, w, expect", [(480, 640, (392, 518)), (640, 480, (518, 392)), (64, 48, (518, 392)),
                                          (100, 100, (518, 518))])
def test_network_size(h, w, expect):
    assert D.network_size(h, w, 518) == expect
    nh, nw = D.network_size(h, w, 140)
    assert nh % 14 == 0 and nw % 14 == 0 and max(nh, nw) == 140


def test_preprocess_normalises_with_imagenet_stats():
    img = torch.tensor(D.IMAGENET_MEAN).expand(2, 30, 40, 3).clone()
    x = D.preprocess(img, (28, 42))
    assert x.shape == (2, 3, 28, 42)
    torch.testing.assert_close(x, torch.zeros_like(x), atol=1e-5, rtol=0)
    one = D.preprocess(torch.ones(1, 14, 14, 3), (14, 14))
    torch.testing.assert_close(one[0, :, 0, 0], (1 - torch.tensor(D.IMAGENET_MEAN)) / torch.tensor(D.IMAGENET_STD))


def test_predict_shapes_batching_determinism():
    model = tiny_depth_anything()
    frames = pattern_frames(5, h=30, w=44)
    a = D.predict(model, frames, long_side=56, batch_size=2)
    assert a.shape == (5, 30, 44) and a.dtype == torch.float32 and (a >= 0).all()
    assert float(a.std()) > 0  # the prediction depends on the image
    tol = 1e-4 * float(a.max())  # batched matmuls may sum in another order
    torch.testing.assert_close(D.predict(model, frames, long_side=56, batch_size=5), a, atol=tol, rtol=0)
    torch.testing.assert_close(D.predict(model, frames, long_side=56, batch_size=1), a, atol=tol, rtol=0)
    assert torch.equal(D.predict(model, frames, long_side=56, batch_size=2), a)
    assert D.prediction_kind(model) == "disparity"
    # float input in [0, 1] gives the same as uint8
    torch.testing.assert_close(D.predict(model, torch.from_numpy(frames).float() / 255, 56, 2), a)


def test_loads_saved_checkpoint_and_reports_missing_weights(tmp_path, monkeypatch):
    model = tiny_depth_anything()
    model.save_pretrained(tmp_path / "da")
    loaded = depth_stage.load_model(depth_stage.DepthConfig(backend="depth-anything", checkpoint=str(tmp_path / "da"), device="cpu"))
    frames = pattern_frames(2, h=28, w=28)
    torch.testing.assert_close(D.predict(loaded, frames, 28), D.predict(model, frames, 28))

    monkeypatch.delenv("MONODYN_DEPTH_ANYTHING", raising=False)
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(WeightsNotFoundError, match="--depth-checkpoint"):
        depth_stage.load_model(depth_stage.DepthConfig(device="cpu"))


# ---- alignment math ------------------------------------------------------------------------------------------

def synthetic(T=5, H=40, W=60, n=150, seed=0, shared=False):
    """GT depth, a disparity with per-frame scale a and shift b (1/z = a*(disp + b)), and sparse samples."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    depth = torch.stack([2 + 3 * (xx / W) + 0.5 * torch.sin(yy / 5.0 + t) for t in range(T)]).float()
    a = torch.full((T,), 1.3) if shared else 0.5 + 2 * torch.rand(T, generator=g)
    b = torch.full((T,), 0.2) if shared else 0.3 * torch.rand(T, generator=g)
    disp = (1 / depth) / a[:, None, None] - b[:, None, None]
    frame = torch.arange(T).repeat_interleave(n)
    col = torch.randint(0, W, (T * n,), generator=g)
    row = torch.randint(0, H, (T * n,), generator=g)
    xy = torch.stack([col + 0.5, row + 0.5], -1).float()
    return depth, disp, frame, xy, depth[frame, row, col].clone(), g


def test_alignment_recovers_depth_with_noise_and_outliers():
    depth, disp, frame, xy, z, g = synthetic()
    z = z * (1 + 0.01 * torch.randn(z.shape, generator=g))          # 1% noise
    bad = torch.rand(z.shape, generator=g) < 0.25                    # 25% gross outliers
    z[bad] *= 0.2 + 3 * torch.rand(int(bad.sum()), generator=g)
    out, al = D.align_depth(disp, frame, xy, z)
    rel = (out - depth).abs() / depth
    assert float(rel.max()) < 0.02 and float(rel.mean()) < 0.005
    assert not al.fallback.any()
    assert (al.inliers < al.points).all() and (al.inliers > 0.6 * al.points).all()  # outliers got weight 0
    assert float(torch.as_tensor(al.rel_error).max()) < 0.015
    # a plain least-squares fit is visibly worse with these outliers
    s, t, _ = D.fit_scale_shift(D.sample_bilinear(disp, frame, xy), 1 / z, frame, 5)
    plain = 1 / (s[:, None, None] * disp + t[:, None, None])
    assert float(((plain - depth).abs() / depth).mean()) > 5 * float(rel.mean())


def test_depth_space_variant():
    depth, _, frame, xy, z, g = synthetic(seed=1)
    pred = (depth - 0.5) / 2.0  # an affine-depth predictor
    out, al = D.align_depth(pred, frame, xy, z, space="depth")
    torch.testing.assert_close(al.scale, torch.full((5,), 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(al.shift, torch.full((5,), 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out, depth, atol=1e-4, rtol=0)


def test_sparse_frame_falls_back_to_sequence_fit_with_warning():
    depth, disp, frame, xy, z, _ = synthetic(shared=True, seed=2)
    keep = (frame != 2) | (torch.arange(len(frame)) % 150 < 5)  # frame 2 keeps 5 points
    with pytest.warns(UserWarning, match=r"1 frame\(s\).*: 2"):
        out, al = D.align_depth(disp, frame[keep], xy[keep], z[keep], min_points=20)
    assert al.fallback.tolist() == [False, False, True, False, False]
    assert al.points[2] == 5
    torch.testing.assert_close(out[2], depth[2], atol=1e-3, rtol=1e-4)


def test_too_few_points_overall_is_an_error_and_median_fallback():
    depth, disp, frame, xy, z, _ = synthetic(n=3)
    with pytest.raises(D.TooFewPointsError, match="only 15 SfM points"):
        D.align_depth(disp, frame, xy, z, min_points=20)
    out, al = D.normalize_median(disp + 1.0)
    torch.testing.assert_close(out.reshape(5, -1).median(1).values, torch.ones(5), atol=2e-3, rtol=0)
    assert al.fallback.all() and int(al.points.sum()) == 0
    # exact when the prediction really is proportional to inverse depth
    prop, _ = D.normalize_median(1.0 / depth)
    med_disp = (1.0 / depth).reshape(5, -1).median(1).values  # z = median(d) / d
    torch.testing.assert_close(prop, depth * med_disp[:, None, None], atol=1e-5, rtol=1e-5)


def test_dynamic_mask_removes_moving_object_points():
    depth, disp, frame, xy, z, g = synthetic(seed=3, n=200)
    moving = torch.zeros(5, 40, 60, dtype=torch.bool)
    moving[1, :, :42] = True  # most of frame 1 is a moving object whose SfM depths are wrong
    row, col = D.pixel_index(xy, 40, 60)
    on_obj = moving[frame, row, col]
    z_bad = torch.where(on_obj, z * 0.5, z)
    out_masked, _ = D.align_depth(disp, frame, xy, z_bad, static=~moving)
    out_plain, _ = D.align_depth(disp, frame, xy, z_bad)
    torch.testing.assert_close(out_masked, depth, atol=1e-3, rtol=1e-4)
    assert float(((out_plain[1] - depth[1]).abs() / depth[1]).mean()) > 0.2


def test_fit_scale_shift_exact_and_degenerate():
    x = torch.tensor([0.0, 1, 2, 3, 5, 5, 5, 5])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    s, t, ok = D.fit_scale_shift(x, 2 * x + 1, group, 2)
    assert ok.tolist() == [True, False]  # group 1 has no spread in x
    assert float(s[0]) == pytest.approx(2.0) and float(t[0]) == pytest.approx(1.0)


def test_group_median():
    v = torch.tensor([5.0, 1, 3, 10, 20, 2])
    g = torch.tensor([0, 0, 0, 2, 2, 2])
    torch.testing.assert_close(D.group_median(v, g, 3), torch.tensor([3.0, 0.0, 10.0]))


def test_sample_bilinear_and_sparse_map():
    H, W = 4, 5
    ramp = (torch.arange(W).float()[None, None] * 2 + torch.arange(H).float()[None, :, None]).expand(2, H, W)
    xy = torch.tensor([[0.5, 0.5], [1.75, 2.5], [3.0, 1.0]])
    torch.testing.assert_close(D.sample_bilinear(ramp, torch.tensor([0, 1, 1]), xy),
                               torch.tensor([0.0, 2 * 1.25 + 2, 2 * 2.5 + 0.5]))
    m = D.sparse_depth_map(torch.tensor([0, 0, 1, 1]), torch.tensor([[1.2, 2.7], [1.9, 2.1], [0.5, 0.5], [9.0, 0.5]]),
                           torch.tensor([3.0, 2.0, 1.5, 4.0]), 2, H, W)
    assert m[0, 2, 1] == 2.0 and m[1, 0, 0] == 1.5  # nearest wins; outside the image is dropped
    assert int((m > 0).sum()) == 2


# ---- the stage -----------------------------------------------------------------------------------------------

T, H, W = 4, 42, 56


def decoded(ws: Workspace, tmp_path):
    video = write_video(tmp_path / "clip.mp4", pattern_frames(T, h=H, w=W))
    source = decode_stage.resolve_source(video)
    cfg = decode_stage.DecodeConfig(max_side=0)
    spec = pipeline.StageSpec("decode", decode_stage.VERSION, (), lambda ctx, c: decode_stage.run(ctx, source, c))
    return pipeline.run_chain(ws, [pipeline.StageRequest(spec, cfg, decode_stage.config_for(source, cfg))],
                              Progress())["decode"]


def fake_sfm(ws: Workspace, dec, points, K=None, size=(W, H)):
    """An 'sfm' stage result holding the given sparse points (frame, xy, z) in the agreed file layout."""
    frame, xy, z = points

    def run(ctx, _cfg):
        K_ = np.tile(np.array([[50.0, 0, size[0] / 2], [0, 50.0, size[1] / 2], [0, 0, 1]]), (T, 1, 1))
        (ctx.out / "cameras.json").write_text(json.dumps(
            {"width": size[0], "height": size[1], "K": K_.tolist(), "w2c": np.tile(np.eye(4), (T, 1, 1)).tolist()}))
        np.savez(ctx.out / "sparse_depth.npz", frame=frame, xy=xy, z=z)
        (ctx.out / "sfm.json").write_text("{}")
        return ["cameras.json", "sparse_depth.npz", "sfm.json"]
    spec = pipeline.StageSpec("sfm", 1, ("decode",), run)
    return pipeline.run_chain(ws, [pipeline.StageRequest(spec, {"n": int(len(z)), "seed": float(z.sum())})],
                              Progress())["sfm"]


def run_depth(ws, cfg, spec=depth_stage.SPEC):
    return pipeline.run_chain(ws, [pipeline.StageRequest(spec, cfg, cfg.key())], Progress())["depth"]


def grid_points(step=3):
    r, c = np.meshgrid(np.arange(0, H, step), np.arange(0, W, step), indexing="ij")
    frame = np.repeat(np.arange(T), r.size)
    xy = np.tile(np.stack([c.ravel() + 0.5, r.ravel() + 0.5], -1), (T, 1)).astype(np.float32)
    return frame, xy, r.ravel(), c.ravel()


def test_stage_sfm_backend_and_none(tmp_path):
    ws = Workspace(tmp_path / "ws")
    dec = decoded(ws, tmp_path)
    frame, xy, r, c = grid_points(step=7)
    z = (1.0 + frame + 0.01 * np.tile(c, T)).astype(np.float32)
    fake_sfm(ws, dec, (frame, xy, z))
    res = run_depth(ws, depth_stage.DepthConfig(backend="sfm"))
    depth = np.load(res.file("depth.npy"))
    assert depth.shape == (T, H, W) and depth.dtype == np.float16
    assert int((depth > 0).sum()) == len(z)
    np.testing.assert_allclose(depth[frame, np.tile(r, T), np.tile(c, T)], z, rtol=1e-3)
    meta = json.loads(res.file("depth_meta.json").read_text())
    assert meta["backend"] == "sfm" and meta["points"] == [len(r)] * T
    assert res.file("preview.png").stat().st_size > 0

    # depth-anything with no SfM points at all (static camera): a warning and median-normalised depth
    fake_sfm(ws, dec, (np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)))
    model = tiny_depth_anything()
    model.save_pretrained(tmp_path / "da")
    warned = []

    class Recorder(Progress):
        def warn(self, message):
            warned.append(message)
    cfg = depth_stage.DepthConfig(backend="depth-anything", checkpoint=str(tmp_path / "da"), input_size=28, device="cpu")
    res = pipeline.run_chain(ws, [pipeline.StageRequest(depth_stage.SPEC, cfg, cfg.key())],
                             Recorder())["depth"]
    assert any("only 0 SfM points" in w for w in warned)
    depth = np.load(res.file("depth.npy")).astype(np.float32)
    disp = np.load(res.file("disparity.npy")).astype(np.float32)
    far = np.where(depth > 0, depth, np.inf)  # beyond the depth cap counts as far, not as unknown
    np.testing.assert_allclose([np.median(far[t][disp[t] > 0]) for t in range(T)], 1.0, rtol=2e-3)
    assert json.loads(res.file("depth_meta.json").read_text())["aligned"] is False

    none = run_depth(ws, depth_stage.DepthConfig(backend="none"))
    assert none.manifest["outputs"] == ["depth_meta.json"]


def test_stage_depth_anything_recovers_depth_end_to_end(tmp_path):
    """Sparse depths made from the tiny model's own disparity, 1/z = a*disp + b, must come back densely."""
    ws = Workspace(tmp_path / "ws")
    dec = decoded(ws, tmp_path)
    model = tiny_depth_anything(seed=1)
    model.save_pretrained(tmp_path / "da")
    disp = D.predict(model, np.load(dec.file("frames.npy")), long_side=56).numpy()
    a, b = 3.0, 0.5
    true_depth = 1.0 / (a * disp + b)
    frame, xy, r, c = grid_points(step=4)
    z = true_depth[frame, np.tile(r, T), np.tile(c, T)].astype(np.float32)
    fake_sfm(ws, dec, (frame, xy * 2, z), size=(2 * W, 2 * H))  # SfM ran at twice the frame size
    cfg = depth_stage.DepthConfig(backend="depth-anything", checkpoint=str(tmp_path / "da"), input_size=56, device="cpu")
    res = run_depth(ws, cfg)
    depth = np.load(res.file("depth.npy")).astype(np.float32)
    np.testing.assert_allclose(depth, true_depth, rtol=2e-3)
    meta = json.loads(res.file("depth_meta.json").read_text())
    assert meta["prediction"] == "disparity" and meta["fallback_frames"] == []
    np.testing.assert_allclose(meta["scale"], [a] * T, rtol=1e-3)
    np.testing.assert_allclose(meta["shift"], [b] * T, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(np.load(res.file("disparity.npy")), disp, rtol=2e-3, atol=1e-3)
    assert "median rel. error" in res.manifest["summary"]

    # with the segment stage: points on the moving object are wrong, and ignored
    moving = np.zeros((T, H, W), bool)
    moving[:, 5:35, 3:40] = True
    z_bad = np.where(moving[frame, np.tile(r, T), np.tile(c, T)], z * 3.0, z).astype(np.float32)
    seg_spec = pipeline.StageSpec("segment", 1, ("decode",),
                                  lambda ctx, _c: (np.save(ctx.out / "instances.npy", moving.astype(np.uint8) * 2),
                                                  ["instances.npy"])[1])
    pipeline.run_chain(ws, [pipeline.StageRequest(seg_spec, {})], Progress())
    fake_sfm(ws, dec, (frame, xy * 2, z_bad), size=(2 * W, 2 * H))
    res = run_depth(ws, cfg, depth_stage.SPEC_WITH_SEGMENT)
    depth = np.load(res.file("depth.npy")).astype(np.float32)
    np.testing.assert_allclose(depth, true_depth, rtol=2e-3)
    assert json.loads(res.file("depth_meta.json").read_text())["dynamic_mask"] is True


def test_sparse_depth_reader_formats(tmp_path):
    flat = tmp_path / "flat.npz"
    np.savez(flat, obs_frame=np.array([0, 1, 1]), obs_xy=np.array([[1.5, 2.5], [3.5, 0.5], [0.5, 0.5]]),
             depth=np.array([2.0, 3.0, 4.0]))
    per_frame = tmp_path / "per_frame.npz"
    np.savez(per_frame, xy_0000=np.array([[1.5, 2.5]]), z_0000=np.array([2.0]),
             xy_0001=np.array([[3.5, 0.5], [0.5, 0.5]]), z_0001=np.array([3.0, 4.0]))
    triples = tmp_path / "triples.npz"
    np.savez(triples, **{"0": np.array([[1.5, 2.5, 2.0]]), "1": np.array([[3.5, 0.5, 3.0], [0.5, 0.5, 4.0]])})
    dense = tmp_path / "dense.npz"
    m = np.zeros((2, 3, 4), np.float32)
    m[0, 2, 1], m[1, 0, 3], m[1, 0, 0] = 2.0, 3.0, 4.0
    np.savez(dense, depth=m)
    for path in (flat, per_frame, triples, dense):
        frame, xy, z = depth_stage.load_sparse_depth(path, 2)
        order = np.lexsort((xy[:, 0], frame))
        assert frame[order].tolist() == [0, 1, 1], path.name
        np.testing.assert_allclose(xy[order], [[1.5, 2.5], [0.5, 0.5], [3.5, 0.5]])
        np.testing.assert_allclose(z[order], [2.0, 4.0, 3.0])
    bad = tmp_path / "bad.npz"
    np.savez(bad, points=np.zeros((3, 3)))
    with pytest.raises(StageError, match="redo the sfm stage"):
        depth_stage.load_sparse_depth(bad, 2)


def test_sparse_plane_depth_is_interpolated_exactly_inside_the_hull():
    from models.depth import densify_sparse_depth

    rows, cols = np.mgrid[0:24, 0:32]
    plane = 2.0 + 0.05 * rows - 0.02 * cols
    sparse = np.zeros_like(plane, np.float32)
    sparse[::5, ::7] = plane[::5, ::7]
    dense = densify_sparse_depth(sparse)
    inside = (rows <= 20) & (cols <= 28)  # the points' hull
    np.testing.assert_allclose(dense[inside], plane[inside], atol=1e-4)
    assert np.all(dense > 0)  # outside the hull: the nearest known depth, never a hole
    assert densify_sparse_depth(np.zeros((8, 8), np.float32)) is None
