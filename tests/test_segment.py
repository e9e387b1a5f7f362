"""Segment stage and models/segmentation: motion segmentation on tiny synthetic videos with known masks, the
flow-carried prompt tracker with a stand-in predictor, SAM 2's prompt -> propagate path on a tiny random
model, prompt checks, and the stage through the workspace cache."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.errors import InputError, MonodynError, WeightsNotFoundError
from models.flow_ops import compute_video_flow
from models.segmentation import Prompt, mask_iou, masks_to_ids, validate_prompts, warp_labels
from models.segmentation.motion import (
    MotionConfig,
    camera_residuals,
    fit_camera_model,
    segment_motion,
    split_merged_backward,
    split_objects,
    track_objects,
)
from models.segmentation.sam_tam import track_prompts


def texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def scene(t_count=12, h=96, w=128, cam=(2.0, 0.5), squares=(((60, 30), (-3.0, 2.0)),), size=24):
    """Textured background translating by -cam px/frame (a camera pan) and textured squares starting at
    (x, y) moving by (vx, vy) px/frame. Returns frames (T,H,W,3) uint8 and ground-truth ids (T,H,W)."""
    bg = texture(h + 200, w + 200, 0)
    frames, ids = [], []
    for t in range(t_count):
        f = cv2.warpAffine(bg, np.float32([[1, 0, -100 - cam[0] * t], [0, 1, -100 - cam[1] * t]]), (w, h))
        gt = np.zeros((h, w), np.uint8)
        for k, ((x, y), (vx, vy)) in enumerate(squares):
            m_obj = np.float32([[1, 0, x + vx * t], [0, 1, y + vy * t]])
            obj = cv2.warpAffine(texture(size, size, k + 1), m_obj, (w, h))
            inside = cv2.warpAffine(np.ones((size, size), np.float32), m_obj, (w, h)) > 0.5
            f = np.where(inside[..., None], obj, f)
            gt[inside] = k + 1
        frames.append(f)
        ids.append(gt)
    return np.stack(frames), np.stack(ids)


def run_motion(frames, **cfg):
    flow = compute_video_flow(frames, "dis")
    return segment_motion(flow["fw"], flow["bw"], flow["valid_fw"], flow["valid_bw"], frames, MotionConfig(**cfg))


def id_for(pred: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """Per frame, the predicted id covering most of ground-truth object k (0 when none)."""
    return np.array([np.bincount(p[g == k], minlength=256)[1:].argmax() + 1 if (p[g == k] > 0).any() else 0
                     for p, g in zip(pred, gt)])


# ---- motion -----------------------------------------------------------------------------------------------

def test_motion_finds_object_under_camera_pan():
    frames, gt = scene()
    res = run_motion(frames)
    assert set(res.models) == {"homography"}
    assert np.mean(mask_iou(res.ids > 0, gt > 0)) > 0.75
    assert set(np.unique(res.ids)) == {0, 1}  # one object, one id, on every frame
    assert (id_for(res.ids, gt, 1) == 1).all()


def test_motion_static_camera_two_objects_keep_their_ids():
    frames, gt = scene(t_count=14, cam=(0, 0), squares=(((10, 10), (2.5, 1.0)), ((90, 60), (-2.0, -1.5))), size=20)
    res = run_motion(frames)
    assert set(res.models) == {"static"}
    for k in (1, 2):
        ids = id_for(res.ids, gt, k)
        assert len(set(ids.tolist())) == 1 and ids[0] > 0, f"object {k} changed id: {ids}"
        assert np.mean(mask_iou(res.ids == ids[0], gt == k)) > 0.7
    assert id_for(res.ids, gt, 1)[0] != id_for(res.ids, gt, 2)[0]


def test_motion_static_scene_is_empty():
    frames, _ = scene(squares=())
    res = run_motion(frames)
    assert res.ids.shape == frames.shape[:3] and res.ids.dtype == np.uint8
    assert not res.ids.any()


def test_camera_model_selection_and_residuals():
    """Exact flows: a pan is a homography, no motion is static, a bumpy scene under a sideways camera
    translation needs the fundamental matrix, which leaves a vertically moving square as the only residual."""
    h, w = 96, 128
    valid = np.ones((h, w), bool)
    cfg = MotionConfig()
    pan = np.broadcast_to(np.float32([-2.0, -0.5]), (h, w, 2)).copy()
    assert fit_camera_model(pan, valid, cfg).kind == "homography"
    assert fit_camera_model(np.zeros((h, w, 2), np.float32), valid, cfg).kind == "static"
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inverse_depth = 0.5 + 0.4 * np.sin(xs / 15) * np.cos(ys / 13)  # not a plane: no homography fits
    layers = np.zeros((h, w, 2), np.float32)
    layers[..., 0] = -8 * inverse_depth  # sideways translation: parallax along x, proportional to 1/depth
    square = np.zeros((h, w), bool)
    square[60:76, 40:56] = True
    layers[square] = (0.0, 3.0)
    model = fit_camera_model(layers, valid, cfg)
    assert model.kind == "fundamental"
    fw_res, bw_res = camera_residuals(model, layers, -layers)
    assert np.median(fw_res[square]) > 1.5 and np.median(fw_res[~square]) < 0.05
    assert np.median(bw_res[square]) > 1.5


def test_a_room_is_two_static_planes_and_only_the_moving_square_is_left():
    """A camera translating and turning in a room: the floor (bottom 70%) and the back wall (top 30%) are two
    homographies. One homography reads the wall as moving; the further plane explains it, and
    the only residual left is the square moving on the floor, not explained by the wall's plane next to it."""
    h, w = 96, 128
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    flow = np.zeros((h, w, 2), np.float32)
    floor = ys > 0.3 * h
    # nearer floor rows move more; the far wall, under the camera's turn, drifts the other way
    flow[..., 0] = np.where(floor, -4.0 - 6.0 * (ys - 0.3 * h) / (0.7 * h), 0.5)
    square = (ys > 70) & (ys < 86) & (xs > 40) & (xs < 56)
    flow[square] = (1.5, 2.5)
    valid = np.ones((h, w), bool)
    single = fit_camera_model(flow, valid, MotionConfig(max_planes=1))
    rooms = fit_camera_model(flow, valid, MotionConfig())
    assert single.kind == rooms.kind == "homography" and len(single.planes) == 0 and len(rooms.planes) == 1
    wall = ~floor
    assert np.median(camera_residuals(single, flow, -flow)[0][wall]) > 0.5  # one plane: the wall "moves"
    fw_res, bw_res = camera_residuals(rooms, flow, -flow)
    assert np.median(fw_res[wall]) < 0.3 and np.median(fw_res[floor & ~square]) < 0.3
    assert np.median(fw_res[square]) > 1.5 and np.median(bw_res[square]) > 1.5


def test_tracking_splits_objects_that_touch():
    """Two squares approach, merge into one component (one hides the other for a frame), separate: each
    keeps its id throughout, also while merged (split back from where they separate)."""
    t_count, h, w, s = 16, 64, 128, 16
    xa = 20 + 4 * np.arange(t_count)    # A moves right
    xb = 92 - 4 * np.arange(t_count)    # B moves left; they pass through each other around t = 9
    gt = np.zeros((t_count, h, w), np.uint8)
    flow_fw = np.zeros((t_count - 1, h, w, 2), np.float32)
    flow_bw = np.zeros((t_count - 1, h, w, 2), np.float32)
    for t in range(t_count):
        gt[t, 24:24 + s, xb[t]:xb[t] + s] = 2
        gt[t, 24:24 + s, xa[t]:xa[t] + s] = 1  # A in front; B is hidden completely at t = 9
    for t in range(t_count - 1):
        flow_fw[t][gt[t] == 1], flow_fw[t][gt[t] == 2] = (4, 0), (-4, 0)
        flow_bw[t][gt[t + 1] == 1], flow_bw[t][gt[t + 1] == 2] = (-4, 0), (4, 0)
    cfg = MotionConfig(min_area=0.001)
    tracks = track_objects([split_objects(g > 0, cfg) for g in gt], flow_bw, cfg)
    tracks = split_merged_backward(tracks, flow_fw)
    a, b = id_for(tracks, gt, 1), id_for(tracks, gt, 2)
    visible_b = (gt == 2).reshape(t_count, -1).any(1)
    assert len(set(a.tolist())) == 1
    assert len(set(b[visible_b].tolist())) == 1 and a[0] != b[0]


def test_warp_labels_follows_flow():
    labels_b = np.zeros((10, 12), np.int32)
    labels_b[2:4, 3:5] = 300  # ids above 255 survive
    flow_ab = np.zeros((10, 12, 2), np.float32)
    flow_ab[..., 0] = 2  # pixel p of frame a is at p + 2 in frame b, so b's object was at columns 1-2 in a
    out = warp_labels(labels_b, flow_ab)
    assert out.dtype == np.int32 and (out[2:4, 1:3] == 300).all() and out.sum() == 300 * 4


def test_masks_to_ids_overlap_rules():
    a = np.zeros((2, 4, 4), bool)
    a[0, :, :3] = True
    a[1, 1:3, 1:3] = True
    assert (masks_to_ids(a)[1:3, 1:3] == 2).all()  # smaller mask wins
    scores = np.stack([np.full((4, 4), 5.0), np.full((4, 4), 1.0)])
    assert (masks_to_ids(a, scores)[1:3, 1:3] == 1).all()  # higher score wins


# ---- prompted tracking ------------------------------------------------------------------------------------

class FakeSam:
    """Stand-in for SAM: returns the ground-truth mask of the object under the click or, without one,
    the object most inside the box. Records the queries."""

    def __init__(self, gt: np.ndarray, wrong_on: int | None = None):
        self.gt, self.calls, self.wrong_on = gt, [], wrong_on

    def __call__(self, t, box, points, labels):
        self.calls.append((t, box, points))
        if t == self.wrong_on:  # a jump to something else entirely
            m = np.zeros(self.gt.shape[1:], bool)
            m[:5, :5] = True
            return m
        if points is not None:
            x, y = points[0]
            k = self.gt[t, int(y), int(x)]
            if k:
                return self.gt[t] == k
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = np.bincount(self.gt[t, y0:y1, x0:x1].ravel(), minlength=256)
        inside[0] = 0
        return self.gt[t] == inside.argmax() if inside.any() else np.zeros(self.gt.shape[1:], bool)


def prompt_scene():
    frames, gt = scene(t_count=10, cam=(0, 0), squares=(((10, 10), (3.0, 1.0)), ((90, 60), (-2.0, -1.5))), size=20)
    flow = compute_video_flow(frames, "dis")
    return frames, gt, flow


def test_track_prompts_follows_objects_with_stable_ids():
    frames, gt, flow = prompt_scene()
    prompts = [Prompt(0, point=(20.0, 20.0)), Prompt(5, box=(78.0, 50.0, 102.0, 74.0))]  # B prompted mid-video
    sam = FakeSam(gt)
    ids = track_prompts(len(frames), flow["fw"], flow["bw"], prompts, sam)
    assert ids.shape == gt.shape and ids.dtype == np.uint8
    assert np.all(mask_iou(ids == 1, gt == 1) > 0.95)
    assert np.all(mask_iou(ids == 2, gt == 2) > 0.95)  # frames 0-4 came from backward propagation
    # each re-prompt's box contains the object it asks about
    for t, box, points in sam.calls[2:]:
        k = gt[t, int(points[0][1]), int(points[0][0])]
        ys, xs = np.nonzero(gt[t] == k)
        assert k > 0 and box[0] <= xs.min() + 1 and box[2] >= xs.max() and box[1] <= ys.min() + 1 and box[3] >= ys.max()


def test_track_prompts_keeps_warped_mask_when_predictor_jumps():
    frames, gt, flow = prompt_scene()
    ids = track_prompts(len(frames), flow["fw"], flow["bw"], [Prompt(0, point=(20.0, 20.0))], FakeSam(gt, wrong_on=4))
    assert mask_iou(ids[4] == 1, gt[4] == 1) > 0.7  # the flow-carried mask, not the jump
    assert not ids[4, :5, :5].any()
    assert mask_iou(ids[9] == 1, gt[9] == 1) > 0.9  # and tracking recovers afterwards


def test_prompt_validation_names_the_prompt():
    with pytest.raises(InputError, match=r"point 200,10@0 is outside the 128x96 image"):
        validate_prompts([Prompt(0, point=(200.0, 10.0))], 10, 96, 128)
    with pytest.raises(InputError, match=r"box 1,2,30,40@12: frame 12 is outside the video \(frames 0..9\)"):
        validate_prompts([Prompt(12, box=(1.0, 2.0, 30.0, 40.0))], 10, 96, 128)


def test_sam_without_torchvision_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("segment_anything") is None:
        pytest.skip("segment-anything is not installed")
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is installed here")
    except ImportError:
        pass
    from models.segmentation.sam_tam import sam_predictor

    with pytest.raises(MonodynError, match="torchvision"):
        sam_predictor(np.zeros((2, 8, 8, 3), np.uint8))


# ---- SAM 2 -------------------------------------------------------------------------------------------------

def tiny_sam2():
    """A randomly initialised Sam2VideoModel with a 64 px input, one- or two-block stages, 128-wide features."""
    import torch
    from transformers import Sam2VideoConfig, Sam2VideoModel

    s = 64
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, num_attention_heads=1, image_size=[s, s],
                    blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[8, 16, 32, 64],
                    num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 2, 2],
                    global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2])
    vision = dict(model_type="sam2_vision_model", backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                  backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], fpn_hidden_size=128)
    # memory features are 64 wide (fixed in transformers); object pointers need a wider hidden size
    cfg = Sam2VideoConfig(
        vision_config=vision, image_size=s, num_maskmem=3, max_object_pointers_in_encoder=4,
        prompt_encoder_config=dict(hidden_size=128, image_size=s, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=128, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16], memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64)
    torch.manual_seed(0)
    return Sam2VideoModel(cfg).eval()


def test_sam2_prompt_and_propagate_runs(tmp_path, one_torch_thread):
    from models.segmentation.sam2_video import load_sam2_video, prepare_frames, segment_video_sam2

    frames, _ = scene(t_count=4, h=40, w=60, cam=(0, 0), squares=(((5, 5), (2.0, 1.0)),), size=12)
    model = tiny_sam2()
    model.save_pretrained(tmp_path / "sam2")
    loaded = load_sam2_video(str(tmp_path / "sam2"))  # a local folder loads without network
    prompts = [Prompt(1, point=(10.0, 10.0)), Prompt(2, box=(30.0, 20.0, 50.0, 35.0))]
    calls = []
    ids = segment_video_sam2(loaded, frames, prompts, advance=lambda n=1: calls.append(n))
    assert ids.shape == (4, 40, 60) and ids.dtype == np.uint8
    assert set(np.unique(ids)) <= {0, 1, 2}  # random weights: which pixels is arbitrary, the ids are not
    assert len(calls) == 3 + 2  # forward 1..3, then backward 1..0
    # preprocessing: a constant frame becomes (v / 255 - mean) / std everywhere
    x = prepare_frames(np.full((1, 7, 9, 3), 128, np.uint8), 16)
    assert x.shape == (1, 3, 16, 16)
    assert np.allclose(x[0, :, 3, 3].numpy(), (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), atol=1e-5)


def test_sam2_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    from models.segmentation.sam2_video import load_sam2_video

    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path))
    monkeypatch.delenv("MONODYN_SAM2", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match="sam2"):
        load_sam2_video(None)


# ---- the stage ---------------------------------------------------------------------------------------------

def run_stages(tmp_path: Path, frames: np.ndarray, cfg):
    from monodyn_cli import pipeline
    from monodyn_cli.stages import decode, flow, segment
    from monodyn_cli.video_io import write_mp4
    from monodyn_cli.workspace import Progress, Workspace

    video = tmp_path / "clip.mp4"
    if not video.exists():
        write_mp4(video, frames, fps=12.0, crf=10)
    source = decode.resolve_source(video)
    dcfg = decode.DecodeConfig(max_side=0)
    spec = pipeline.StageSpec(decode.NAME, decode.VERSION, (), run=lambda ctx, c: decode.run(ctx, source, c))
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    warnings = []

    class Recorder(Progress):
        def warn(self, message):
            warnings.append(message)

    requests = [pipeline.StageRequest(spec, dcfg, decode.config_for(source, dcfg)),
                pipeline.StageRequest(flow.SPEC, flow.FlowConfig(backend="dis")),
                pipeline.StageRequest(segment.SPEC, cfg, cfg.key())]
    return pipeline.run_chain(ws, requests, Recorder()), warnings


def test_stage_motion_writes_outputs_and_caches(tmp_path):
    from monodyn_cli.stages.segment import SegmentConfig

    frames, gt = scene(t_count=10, cam=(0, 0), squares=(((10, 10), (3.0, 1.0)),), size=20)
    results, warnings = run_stages(tmp_path, frames, SegmentConfig())
    res = results["segment"]
    ids = np.load(res.file("instances.npy"))
    assert ids.shape == gt.shape and ids.dtype == np.uint8
    assert np.mean(mask_iou(ids == 1, gt == 1)) > 0.6  # through H.264 and DIS
    objects = json.loads(res.file("objects.json").read_text())
    assert objects["backend"] == "motion" and objects["num_objects"] == 1 and objects["objects"][0]["id"] == 1
    assert objects["camera_models"] == {"static": 9}
    assert res.manifest["summary"].startswith("1 object (motion), mean coverage")
    assert cv2.imread(str(res.file("preview.png"))).shape == (2 * 96, 2 * 128, 3)
    import av

    with av.open(str(res.file("preview.mp4"))) as c:
        assert c.streams.video[0].frames == 10
    assert not warnings
    again, _ = run_stages(tmp_path, frames, SegmentConfig())
    assert again["segment"].cached and again["segment"].key == res.key


def test_stage_static_video_warns_and_writes_zeros(tmp_path):
    from monodyn_cli.stages.segment import SegmentConfig

    frames, _ = scene(t_count=6, cam=(0, 0), squares=())
    results, warnings = run_stages(tmp_path, frames, SegmentConfig())
    assert not np.load(results["segment"].file("instances.npy")).any()
    assert any("no moving object" in w for w in warnings)


def test_stage_prompt_errors(tmp_path):
    from monodyn_cli.stages.configs import SegmentConfig, parse_box, parse_point

    assert parse_point("12.5,40@3") == (12.5, 40.0, 3) and parse_point("1,2") == (1.0, 2.0, 0)
    assert parse_box("1,2,30,40@7") == (1.0, 2.0, 30.0, 40.0, 7)
    with pytest.raises(InputError, match="X,Y"):
        parse_point("12;40")
    frames, _ = scene(t_count=4, cam=(0, 0), squares=())
    with pytest.raises(InputError, match=r"--point 500,10@0 is outside the 128x96 video"):
        run_stages(tmp_path, frames, SegmentConfig(backend="sam2", points=((500.0, 10.0, 0),)))
    with pytest.raises(InputError, match=r"--box 1,2,30,40@9: frame 9 is outside the decoded video \(frames 0..3\)"):
        run_stages(tmp_path, frames, SegmentConfig(backend="sam2", boxes=((1.0, 2.0, 30.0, 40.0, 9),)))
    with pytest.raises(InputError, match="needs at least one prompt"):
        run_stages(tmp_path, frames, SegmentConfig(backend="sam"))
