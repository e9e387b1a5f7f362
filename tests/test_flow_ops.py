"""Flow helpers: warping, forward-backward consistency, DIS flow, colour coding, whole-video flow."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.errors import InputError
from models.flow_ops import (
    backward_warp,
    compute_video_flow,
    dis_flow,
    flow_to_rgb,
    forward_backward_consistency,
)
from models.raft import RAFT, RAFTConfig

H, W = 96, 128


def texture(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Smooth multi-scale colour noise in [0, 1], (h, w, 3): trackable at every pixel."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3))
    for sigma in (8, 4, 2, 1):
        out += sigma * np.stack([ndimage.gaussian_filter(rng.random((h, w)), sigma) for _ in range(3)], -1)
    out -= out.min((0, 1))
    return out / out.max((0, 1))


def translate(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """img moved by (dx, dy) px (cubic spline): the flow from img to the result is (dx, dy) everywhere."""
    return np.stack([ndimage.shift(img[..., c], (dy, dx), order=3, mode="reflect") for c in range(3)], -1)


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def test_backward_warp_zero_flow_is_identity():
    img = torch.rand(2, 9, 13, 3)
    out = backward_warp(img, torch.zeros(2, 9, 13, 2))
    assert out.shape == img.shape
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)


def test_backward_warp_integer_flow_is_a_roll():
    img = torch.rand(1, 20, 30, 2)
    dx, dy = 3, -2
    flow = torch.tensor([dx, dy], dtype=torch.float32).expand(1, 20, 30, 2)
    out = backward_warp(img, flow)
    rolled = torch.roll(img, shifts=(-dy, -dx), dims=(1, 2))  # rolled[y, x] = img[y + dy, x + dx]
    torch.testing.assert_close(out[:, 2:, :-3], rolled[:, 2:, :-3], atol=1e-5, rtol=0)
    # outside the frame: the nearest border pixel
    torch.testing.assert_close(out[:, 5, -1], img[:, 3, -1], atol=1e-5, rtol=0)


def test_backward_warp_subpixel_is_linear_interpolation():
    xs = torch.arange(16, dtype=torch.float32)
    ramp = (2.0 * xs + 1.0).expand(1, 8, 16)[..., None]  # value = 2x + 1
    flow = torch.zeros(1, 8, 16, 2)
    flow[..., 0] = 0.25
    out = backward_warp(ramp, flow)[0, :, :-1, 0]
    torch.testing.assert_close(out, (2.0 * (xs[:-1] + 0.25) + 1.0).expand(8, 15), atol=1e-4, rtol=0)


def test_consistency_marks_occlusion_and_out_of_frame():
    # A 10x10 square moves 4 px right over a static background; frame is 32x40.
    h, w, s = 32, 40, 4
    fw = torch.zeros(1, h, w, 2)
    bw = torch.zeros(1, h, w, 2)
    fw[0, 10:20, 10:20, 0] = s  # square in frame a: x in [10, 20)
    bw[0, 10:20, 14:24, 0] = -s  # square in frame b: x in [14, 24)
    valid_fw = forward_backward_consistency(fw, bw)[0]
    valid_bw = forward_backward_consistency(bw, fw)[0]
    assert valid_fw.dtype == torch.bool and valid_fw.shape == (h, w)
    # background of frame a that the square covers in frame b: x in [20, 24)
    assert not valid_fw[10:20, 20:24].any()
    # background of frame b uncovered by the square: x in [10, 14)
    assert not valid_bw[10:20, 10:14].any()
    expected_fw = torch.ones(h, w, dtype=torch.bool)
    expected_fw[10:20, 20:24] = False
    assert torch.equal(valid_fw, expected_fw)  # the square itself and the rest of the background are valid

    # a uniform pan by 3 px: the last 3 columns leave the frame
    pan_fw = torch.tensor([3.0, 0.0]).expand(1, h, w, 2).contiguous()
    valid = forward_backward_consistency(pan_fw, -pan_fw)[0]
    assert valid[:, : w - 3].all() and not valid[:, w - 3 :].any()


def test_consistency_tolerance_grows_with_speed():
    fw = torch.tensor([20.0, 0.0]).expand(1, 8, 64, 2).contiguous()
    # mismatch 1 px: 1 < 0.01 * (400 + 361) + 0.5 = 8.11 -> valid; same 1 px with zero motion is not
    bw = torch.tensor([-19.0, 0.0]).expand(1, 8, 64, 2).contiguous()
    assert forward_backward_consistency(fw, bw)[0, :, :40].all()
    still = torch.zeros(1, 8, 64, 2)
    off = torch.tensor([1.0, 0.0]).expand(1, 8, 64, 2).contiguous()
    assert not forward_backward_consistency(still, off)[0].any()


@pytest.mark.parametrize("dx,dy", [(3.0, -2.0), (1.5, 0.25)])
def test_dis_recovers_translation(dx, dy):
    tex = texture(0)
    flow = dis_flow(to_u8(tex), to_u8(translate(tex, dx, dy)), "medium")
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    inner = flow[10:-10, 10:-10]
    epe = np.linalg.norm(inner - [dx, dy], axis=-1)
    assert epe.mean() < 0.15, epe.mean()
    np.testing.assert_allclose(inner.mean((0, 1)), [dx, dy], atol=0.1)


def test_dis_rejects_unknown_preset():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="preset"):
        dis_flow(a, a, "slow")


def test_flow_to_rgb_colours():
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 1] = (2.0, 0.0)  # right, full speed
    flow[0, 2] = (-2.0, 0.0)  # left, full speed
    flow[1, 0] = (1.0, 0.0)  # right, half speed
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # still -> white
    assert tuple(rgb[0, 1]) == (255, 0, 0)
    assert tuple(rgb[0, 2]) == (0, 255, 255)
    assert tuple(rgb[1, 0]) == (255, 128, 128)
    # a fixed scale makes the same flow paler
    assert tuple(flow_to_rgb(flow, max_magnitude=4.0)[0, 1]) == (255, 128, 128)
    # batched input and torch tensors work the same
    assert np.array_equal(flow_to_rgb(torch.from_numpy(np.stack([flow, flow])))[1], rgb)


def test_compute_video_flow_dis_pan():
    tex = texture(1, 64, 80)
    frames = np.stack([to_u8(translate(tex, 2.0 * t, 0.0)) for t in range(3)])
    calls = []
    out = compute_video_flow(frames, "dis", progress=lambda n, total: calls.append((n, total)))
    assert set(out) == {"fw", "bw", "valid_fw", "valid_bw"}
    assert out["fw"].shape == out["bw"].shape == (2, 64, 80, 2) and out["fw"].dtype == np.float32
    assert out["valid_fw"].shape == (2, 64, 80) and out["valid_fw"].dtype == bool
    np.testing.assert_allclose(np.median(out["fw"][:, 8:-8, 8:-8], axis=(1, 2)), [[2, 0]] * 2, atol=0.15)
    np.testing.assert_allclose(np.median(out["bw"][:, 8:-8, 8:-8], axis=(1, 2)), [[-2, 0]] * 2, atol=0.15)
    assert out["valid_fw"][:, 8:-8, 8:-8].mean() > 0.95
    assert not out["valid_fw"][:, :, -1].any()  # moves out of frame b
    assert not out["valid_bw"][:, :, 0].any()  # moves out of frame a (backward)
    assert calls[-1] == (4, 4) and len(calls) == 2


def test_compute_video_flow_raft_tiny_random_model():
    torch.manual_seed(0)
    model = RAFT(RAFTConfig(small=True)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 72, 3), dtype=np.uint8)
    calls = []
    out = compute_video_flow(frames, "raft", model=model, iters=2, batch=1, progress=lambda n, t: calls.append((n, t)))
    assert out["fw"].shape == out["bw"].shape == (2, 64, 72, 2)
    assert np.isfinite(out["fw"]).all() and np.isfinite(out["bw"]).all()
    assert calls == [(2, 4), (4, 4)]
    # the same flows as running the network pair by pair
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        fw1 = model(x[1:2], x[2:3], iters=2)[0].permute(1, 2, 0).numpy()
        bw0 = model(x[1:2], x[0:1], iters=2)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out["fw"][1], fw1, atol=1e-3)
    np.testing.assert_allclose(out["bw"][0], bw0, atol=1e-3)


def test_compute_video_flow_rejects_bad_input():
    with pytest.raises(InputError):
        compute_video_flow(np.zeros((1, 8, 8, 3), np.uint8), "dis")
    with pytest.raises(InputError, match="backend"):
        compute_video_flow(np.zeros((2, 8, 8, 3), np.uint8), "farneback")


def test_compose_flow_adds_displacements_along_the_path_and_ands_validity():
    from models.flow_ops import compose_flow

    h, w = 6, 10
    first = torch.zeros(1, h, w, 2)
    first[..., 0] = 2.0  # everything 2 px right
    second = torch.zeros(1, h, w, 2)
    second[..., 1] = torch.arange(w, dtype=torch.float32)[None, None] * 0.1  # down by 0.1 x column
    valid2 = torch.ones(1, h, w, dtype=torch.bool)
    valid2[..., 5] = False
    flow, valid = compose_flow(first, second, None, valid2)
    assert torch.allclose(flow[0, 2, 3], torch.tensor([2.0, 0.5]))  # lands on column 5: 0.1 * 5 down
    assert not bool(valid[0, 2, 3]) and bool(valid[0, 2, 1])  # column 3 lands on the invalid column 5
    assert not bool(valid[0, 2, w - 1])  # lands outside the image


def test_scene_subset_composes_flow_over_the_frames_left_out():
    from models.cameras import Cameras
    from models.scene import Scene

    T, h, w = 5, 6, 12
    fw = np.zeros((T - 1, h, w, 2), np.float32)
    fw[..., 0] = 1.0
    cams = Cameras(torch.eye(3).expand(T, 3, 3).clone(), torch.eye(4).expand(T, 4, 4).clone(), w, h)
    scene = Scene(frames=np.zeros((T, h, w, 3), np.uint8), timestamps=np.arange(T) / 10.0, cameras=cams,
                  flow_fw=fw, flow_bw=-fw, valid_fw=np.ones((T - 1, h, w), bool), valid_bw=np.ones((T - 1, h, w), bool))
    sub = scene.subset(np.array([0, 2, 4]))
    assert sub.flow_fw.shape == (2, h, w, 2)
    np.testing.assert_allclose(sub.flow_fw[:, :, :w - 2], np.broadcast_to([2.0, 0.0], (2, h, w - 2, 2)), atol=1e-6)
    np.testing.assert_allclose(sub.flow_bw[:, :, 2:], np.broadcast_to([-2.0, 0.0], (2, h, w - 2, 2)), atol=1e-6)
    assert sub.valid_fw[:, :, :w - 2].all() and not sub.valid_fw[:, :, w - 1].any()
    assert scene.subset(np.array([2, 0])).flow_fw is None  # not increasing: no flow
