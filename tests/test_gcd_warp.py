"""The forward warp that conditions the small GCD model: vectorised against the loop, and a plane under a known
translation against its analytic shift."""

import torch

from models.gcd.warp import forward_warp, forward_warp_reference, perturb_depth


def _camera(f: float, W: int, H: int) -> torch.Tensor:
    return torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])


def test_plane_under_translation_shifts_by_f_t_over_z():
    # a fronto-parallel plane at z = 2, camera moved by t = 0.25 along +x: every pixel moves f t / z = 4 px left
    H, W, f, z, t = 12, 20, 32.0, 2.0, 0.25
    img = torch.rand(1, 3, H, W)
    K = _camera(f, W, H)[None]
    src = torch.eye(4)[None]
    dst = torch.eye(4)[None].clone()
    dst[0, 0, 3] = -t  # w2c of a camera centred at x = +t
    out, mask = forward_warp(img, torch.full((1, H, W), z), K, src, K, dst)
    shift = round(f * t / z)
    assert torch.equal(mask[0, :, : W - shift], torch.ones(H, W - shift))
    assert torch.equal(mask[0, :, W - shift:], torch.zeros(H, shift))
    assert torch.equal(out[0, :, :, : W - shift], img[0, :, :, shift:])
    assert torch.equal(out[0, :, :, W - shift:], torch.zeros(3, H, shift))


def test_vectorised_matches_reference_with_occlusions_holes_and_resize():
    g = torch.Generator().manual_seed(0)
    H, W = 10, 14
    img = torch.rand(3, 3, H, W, generator=g)
    depth = 1.5 + torch.rand(3, H, W, generator=g)
    depth[0, 2:5, 3:7] = 0.0  # unknown depth
    depth[1, 0, 0] = float("nan")
    depth[2, 4:8, 4:9] = 0.8  # a near block that occludes what lies behind it
    K = _camera(12.0, W, H).expand(3, 3, 3)
    src = torch.eye(4).expand(3, 4, 4)
    angle = torch.tensor([0.0, 0.3, -0.4])
    dst = torch.eye(4).repeat(3, 1, 1)
    dst[:, 0, 0], dst[:, 0, 2], dst[:, 2, 0], dst[:, 2, 2] = angle.cos(), angle.sin(), -angle.sin(), angle.cos()
    dst[:, 0, 3] = torch.tensor([0.3, -0.5, 0.6])
    K_dst = _camera(7.0, 9, 7).expand(3, 3, 3)
    out, mask = forward_warp(img, depth, K, src, K_dst, dst, height=7, width=9)
    assert 0 < mask.mean() < 1
    for n in range(3):
        ref, ref_mask = forward_warp_reference(img[n], depth[n], K[n], src[n], K_dst[n], dst[n], height=7, width=9)
        assert torch.equal(out[n], ref)
        assert torch.equal(mask[n], ref_mask)


def test_identity_camera_returns_the_frame_and_the_known_depth_mask():
    H, W = 6, 8
    img = torch.rand(1, 3, H, W)
    depth = torch.full((1, H, W), 3.0)
    depth[0, 1, 2] = 0.0
    K, E = _camera(10.0, W, H)[None], torch.eye(4)[None]
    out, mask = forward_warp(img, depth, K, E, K, E)
    expect = torch.ones(H, W)
    expect[1, 2] = 0
    assert torch.equal(mask[0], expect)
    assert torch.allclose(out[0], img[0] * expect)


def test_perturbed_depth_keeps_scale_and_makes_holes():
    g = torch.Generator().manual_seed(1)
    depth = torch.full((8, 24, 32), 2.0)
    noisy = perturb_depth(depth, g, holes=0.1)
    known = noisy > 0
    assert 0.8 < known.float().mean() < 0.99
    ratio = noisy[known] / 2.0
    assert 0.8 < float(ratio.min()) and float(ratio.max()) < 1.25
    assert float(ratio.std()) > 0.01


# ---- the warp-conditioned small model ------------------------------------------------------------------------

TINY = dict(channels=(32, 64), vae_channels=(32, 32), token_dim=32)


def _tiny(warp: bool):
    from models.gcd.model import GCDModel, small_configs

    torch.set_num_threads(1)
    return GCDModel.from_configs(small_configs(**TINY, warp=warp), seed=0).eval()


def test_only_the_small_warp_model_takes_more_channels():
    from models.gcd.model import WARP_CHANNELS, official_configs, small_configs

    assert small_configs(**TINY)["unet"]["in_channels"] == 8
    assert small_configs(**TINY, warp=True)["unet"]["in_channels"] == 8 + WARP_CHANNELS
    assert official_configs()["unet"]["in_channels"] == 8 and not official_configs()["gcd"].warp


def test_with_warp_inputs_starts_as_the_model_it_extends():
    """Zero weights on the new channels: the extended denoiser ignores the warp until trained, so a fine-tune
    starts from the shipped model's outputs exactly."""
    from models.gcd.model import with_warp_inputs

    base = _tiny(False)
    ext = with_warp_inputs(base)
    assert ext.cfg.warp and not base.cfg.warp
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 4, 8, 8, generator=g)
    concat = torch.randn(1, 3, 4, 8, 8, generator=g)
    warp = torch.randn(1, 3, 5, 8, 8, generator=g)
    tokens, deltas = torch.randn(1, 3, 1, 32, generator=g), torch.zeros(1, 3, 3)
    micro, sigma = base.micro_conditioning(deltas), torch.tensor([2.0])
    with torch.no_grad():
        a = base.denoise(x, sigma, tokens, concat, micro, deltas)
        b = ext.denoise(x, sigma, tokens, torch.cat([concat, warp], dim=2), micro, deltas)
    assert torch.allclose(a, b, atol=1e-5)
    # and the new inputs do get a gradient, so training can use them
    ext.unet.conv_in.weight.grad = None
    ext.denoise(x, sigma, tokens, torch.cat([concat, warp], dim=2), micro, deltas).square().sum().backward()
    assert float(ext.unet.conv_in.weight.grad[:, 8:].abs().sum()) > 0


def test_warp_latents_shapes_and_mask_fraction():
    m = _tiny(True)
    warped = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 2, 32, 32)
    mask[:, :, :, :16] = 1  # the left half valid
    with torch.no_grad():
        w = m.warp_latents(warped, mask)
    assert w.shape == (1, 2, 5, 16, 16)
    assert torch.equal(w[:, :, 4, :, :8], torch.ones(1, 2, 16, 8)) and torch.equal(w[:, :, 4, :, 8:], torch.zeros(1, 2, 16, 8))


def test_sampler_needs_the_warp_exactly_for_a_warp_model():
    import pytest

    from models.gcd.sampling import sample

    m = _tiny(True)
    frames, deltas = torch.rand(1, 2, 3, 32, 32) * 2 - 1, torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="warp"):
        sample(m, frames, deltas, steps=1)
    warp = m.warp_latents(frames, torch.ones(1, 2, 32, 32))
    a = sample(m, frames, deltas, steps=2, warp=warp, seed=3)
    assert a.shape == frames.shape and torch.equal(a, sample(m, frames, deltas, steps=2, warp=warp, seed=3))
    with pytest.raises(ValueError, match="warp"):
        sample(_tiny(False), frames, deltas, steps=1, warp=warp)


def test_renderer_warps_by_the_scene_depth_and_renders_without_it():
    import numpy as np

    from models.gcd.method import GCDRenderer, GCDRenderOptions
    from tests.test_gcd import orbit_cameras, scene_of

    m = _tiny(True)
    T = 3
    cams = orbit_cameras(torch.linspace(0, 20, T), elevation=0.0)
    scene = scene_of(cams, T)
    renderer = GCDRenderer(m, scene, GCDRenderOptions(steps=1), torch.device("cpu"))
    idx = torch.tensor([0, 1, 2])
    with torch.no_grad():
        none = renderer.warp_conditioning(idx, cams, 48, 64)
        assert float(none[0, :, 4].abs().sum()) == 0  # no depth: nothing valid
        scene.depth = np.full((T, 48, 64), 5.0, np.float32)
        same = renderer.warp_conditioning(idx, cams, 48, 64)  # targets = the input cameras: the frames themselves
        frames = torch.from_numpy(scene.frames.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        expect = m.warp_latents(frames[None], torch.ones(1, T, 48, 64))
    assert torch.allclose(same, expect, atol=1e-5)
    out = renderer.render(orbit_cameras([30.0, 40.0], elevation=0.0), torch.tensor([0.0, 1.0]))
    assert out.rgb.shape == (2, 48, 64, 3) and float(out.rgb.std()) > 0
