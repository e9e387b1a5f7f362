"""DpDy's diffusion priors (models/priors): the SDS algebra against its closed form, the RGB-D helpers against
analytic cases, LDM3D and AnimateDiff on tiny randomly initialised diffusers models of the real classes (saved and
loaded through the same code as the official weights), the LoRA fine-tune, the weights resolution and its
error, and the shipped prior against a trivial fill on scenes it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at
from models.errors import WeightsNotFoundError
from models.priors.rgbd import DisparityRange, backward_warp
from models.priors.sds import sds_loss, x0_from_eps

# ---- tiny diffusers / transformers parts of the real classes ---------------------------------------------------

def _tokenizer(folder):
    """A CLIP tokenizer over single bytes (no merges): every prompt tokenizes, nothing is downloaded."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16).save_pretrained(folder)
    return len(vocab)


def make_sd_folder(root, in_channels: int = 4):
    """A Stable-Diffusion-layout folder (vae/ unet/ text_encoder/ tokenizer/ scheduler/), tiny and random."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vocab = _tokenizer(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, eos_token_id=vocab - 1,
                                 bos_token_id=vocab - 2, pad_token_id=vocab - 1)).save_pretrained(root / "text_encoder")
    AutoencoderKL(in_channels=in_channels, out_channels=in_channels, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=32).save_pretrained(root / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=8, norm_num_groups=8).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def ldm3d_folder(tmp_path_factory):
    return make_sd_folder(tmp_path_factory.mktemp("ldm3d") / "ldm3d-4c")


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    return make_sd_folder(tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5", in_channels=3)


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    from diffusers import MotionAdapter

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("animatediff") / "adapter"
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=8, motion_max_seq_length=8).save_pretrained(path)
    return path


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No explicit weights anywhere: empty monodyn and Hugging Face caches, no environment variables."""
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("MONODYN_LDM3D", "MONODYN_ANIMATEDIFF", "MONODYN_ANIMATEDIFF_BASE"):
        monkeypatch.delenv(name, raising=False)


# ---- the algebra ------------------------------------------------------------------------------------------------

def test_sds_gradient_is_weighted_noise_residual():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 5, 6, requires_grad=True)
    eps_pred, noise, w = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6), torch.tensor([0.2, 0.5, 0.9])
    sds_loss(z, eps_pred, noise, w).backward()
    torch.testing.assert_close(z.grad, w[:, None, None, None] * (eps_pred - noise) / 3)


def test_x0_from_eps_inverts_the_forward_noising():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    x0, eps, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([10, 900])
    noisy = sched.add_noise(x0, eps, t)
    torch.testing.assert_close(x0_from_eps(noisy, eps, sched.alphas_cumprod[t]), x0, atol=1e-4, rtol=1e-4)


def test_disparity_range_maps_quantiles_to_0_and_1_and_back():
    depth = torch.linspace(1.0, 5.0, 400).reshape(1, 20, 20)
    rng = DisparityRange.of(depth, torch.ones_like(depth))
    disp = 1 / depth
    q = torch.quantile(disp.reshape(-1), torch.tensor([0.05, 0.95]))
    torch.testing.assert_close(torch.stack([rng.lo[0], rng.hi[0]]), q)
    torch.testing.assert_close(rng.depth(rng.normalise(depth)), depth, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(rng.depth(torch.full((1, 2, 2), -10.0))).all()  # far beyond the range: still finite


def test_backward_warp_identity_and_occlusion():
    K = intrinsics_from_fov(16, 12, 60.0)
    w2c = look_at(torch.tensor([0.0, -3.0, 0.0]), torch.zeros(3))
    rgb = torch.rand(12, 16, 3)
    depth = torch.full((12, 16), 3.0)
    warped, seen = backward_warp(rgb, depth, K, w2c, depth, K, w2c)
    assert bool(seen.all())
    torch.testing.assert_close(warped, rgb)
    # a surface nearer in the source hides the destination's points there: not seen, black
    near = depth.clone()
    near[:, :5] = 1.0
    warped, seen = backward_warp(rgb, near, K, w2c, depth, K, w2c)
    assert not bool(seen[:, :5].any()) and bool(seen[:, 6:].all()) and float(warped[:, :5].abs().max()) == 0


# ---- weights resolution ---------------------------------------------------------------------------------------

def test_auto_uses_the_small_prior_without_weights_and_ldm3d_with_them(no_weights, ldm3d_folder, monkeypatch):
    from models.priors.build import resolve_prior
    from models.priors.ldm3d import load_ldm3d

    assert resolve_prior("auto") == "small"
    with pytest.raises(WeightsNotFoundError, match="huggingface-cli download Intel/ldm3d-4c.*MONODYN_LDM3D"):
        load_ldm3d(None, torch.device("cpu"))
    monkeypatch.setenv("MONODYN_LDM3D", str(ldm3d_folder))
    assert resolve_prior("auto") == "ldm3d"
    assert load_ldm3d(None, torch.device("cpu")).vae.config.in_channels == 4


def test_six_channel_ldm3d_is_refused_with_the_name_of_the_four_channel_one(tmp_path):
    from models.errors import InputError
    from models.priors.ldm3d import load_ldm3d

    folder = make_sd_folder(tmp_path / "ldm3d6", in_channels=6)
    with pytest.raises(InputError, match="Intel/ldm3d-4c"):
        load_ldm3d(str(folder), torch.device("cpu"))


# ---- LDM3D: SDS reaches the Gaussians; the LoRA fine-tune ----------------------------------------------------

def _gaussians():
    from models.gaussians.model import DynamicGaussians, GaussianSet, MotionBases

    torch.manual_seed(0)
    n = 400
    static = GaussianSet(torch.randn(n, 3) * 0.5, torch.full((n, 3), -2.5), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                         torch.full((n,), 1.0), torch.randn(n, 3))
    return DynamicGaussians(static, GaussianSet.empty(0), MotionBases(torch.eye(3).expand(1, 2, 3, 3),
                                                                       torch.zeros(1, 2, 3)),
                            torch.zeros(0, 1), torch.zeros(0, dtype=torch.int32))


def _camera(width=32, height=24):
    K = intrinsics_from_fov(width, height, 60.0)[None]
    return Cameras(K, look_at(torch.tensor([0.0, -3.0, 0.0]), torch.zeros(3))[None], width, height)


def test_ldm3d_sds_gradients_reach_the_gaussians(ldm3d_folder):
    from models.priors.ldm3d import LDM3DScore, load_ldm3d

    model = _gaussians()
    score = LDM3DScore(load_ldm3d(str(ldm3d_folder), torch.device("cpu")), size=32)
    out = model.render_cameras(_camera(), torch.zeros(1))
    disp = DisparityRange.of(out.depth, out.alpha).normalise(out.depth)[:, None]
    loss, x0_rgb, x0_disp = score(out.rgb.permute(0, 3, 1, 2), out.alpha[:, None], disp, out.rgb.permute(0, 3, 1, 2),
                                  torch.Generator().manual_seed(0))
    loss.backward()
    assert x0_rgb.shape == (1, 3, 24, 32) and x0_disp.shape == (1, 1, 24, 32)
    for p in (model.static.color_logits, model.static.means, model.static.opacity_logits):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_lora_fine_tune_lowers_the_denoising_loss_and_reloads_to_the_same_unet(ldm3d_folder, tmp_path):
    from models.priors.diffusion import prompt_embeddings
    from models.priors.ldm3d import PROMPT, LoraOptions, encode_rgbd, finetune_lora, load_ldm3d, load_lora

    frames = torch.rand(3, 3, 32, 32) * 0.2 + torch.linspace(0, 0.8, 32)[None, None, None]  # one smooth scene
    disp = torch.linspace(0, 1, 32).expand(3, 1, 32, 32)
    parts = load_ldm3d(str(ldm3d_folder), torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a fixed set of noised frames to score the U-Net on, before and after
        z = encode_rgbd(parts, frames, disp).repeat(4, 1, 1, 1)
        noise, t = torch.randn(z.shape, generator=gen), torch.randint(50, 950, (len(z),), generator=gen)
        noisy, text = parts.scheduler.add_noise(z, noise, t), prompt_embeddings(parts, [PROMPT]).expand(len(z), -1, -1)
    loss = lambda unet: float(((unet(noisy, t, encoder_hidden_states=text).sample - noise) ** 2).mean())
    with torch.no_grad():
        before = loss(parts.unet)
    finetune_lora(parts, frames, disp, LoraOptions(rank=8, steps=80, lr=1e-2), tmp_path)
    with torch.no_grad():
        after = loss(parts.unet)
    assert after < 0.9 * before, (before, after)
    fresh = load_ldm3d(str(ldm3d_folder), torch.device("cpu"))
    load_lora(fresh, tmp_path)
    with torch.no_grad():
        assert loss(fresh.unet) == pytest.approx(after, rel=1e-5)


# ---- AnimateDiff -----------------------------------------------------------------------------------------------

def test_animatediff_video_sds_reaches_every_frame_of_the_clip(sd15_folder, adapter_folder, no_weights):
    from models.priors.animatediff import VideoScore, load_animatediff

    with pytest.raises(WeightsNotFoundError, match="guoyww/animatediff-motion-adapter-v1-5-2"):
        load_animatediff(str(sd15_folder), None, torch.device("cpu"))
    parts = load_animatediff(str(sd15_folder), str(adapter_folder), torch.device("cpu"))
    assert type(parts.unet).__name__ == "UNetMotionModel"
    clip = torch.rand(4, 3, 24, 32, requires_grad=True)
    VideoScore(parts, size=32)(clip, torch.Generator().manual_seed(0)).backward()
    assert all(float(clip.grad[f].abs().sum()) > 0 for f in range(4))


# ---- the shipped prior ------------------------------------------------------------------------------------------

def test_shipped_prior_fills_holes_of_an_unseen_scene_better_than_a_flat_fill():
    from models.priors.conditioned import ConditionedScore, load_conditioned_prior
    from monodyn_cli.prior_data import synth_pairs

    p = synth_pairs(777, 48, 64)  # a scene seed far from the training seeds (5000..)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))
    rgb, alpha = t(p["render"]).permute(0, 3, 1, 2), t(p["alpha"])[:, None]
    score = ConditionedScore(load_conditioned_prior())
    _, x0, _ = score(rgb, alpha, t(p["render_disp"])[:, None], t(p["reference"]).permute(0, 3, 1, 2),
                     torch.Generator().manual_seed(0), fill=True)
    target, holes = t(p["target"]).permute(0, 3, 1, 2), (alpha < 0.5).expand(-1, 3, -1, -1)
    flat = (rgb * alpha).sum((2, 3), keepdim=True) / alpha.sum((2, 3), keepdim=True).clamp_min(1)  # mean seen colour
    psnr = lambda pred: float(-10 * torch.log10(((pred - target)[holes] ** 2).mean()))
    assert psnr(x0) > psnr(flat.expand_as(rgb)) + 1.0, (psnr(x0), psnr(flat.expand_as(rgb)))


def test_conditioned_score_gradient_points_from_the_render_to_the_estimate():
    from models.priors.conditioned import ConditionedPrior, ConditionedScore

    torch.manual_seed(0)
    score = ConditionedScore(ConditionedPrior().eval())
    rgb = torch.rand(2, 3, 12, 20, requires_grad=True)  # not divisible by 8: padded and cropped back
    disp = torch.rand(2, 1, 12, 20)
    loss, x0, _ = score(rgb, torch.ones(2, 1, 12, 20), disp, torch.rand(2, 3, 12, 20), torch.Generator().manual_seed(1))
    loss.backward()
    expected = 2 * ((rgb * 2 - 1) - (x0 * 2 - 1)) / (2 * 12 * 20)  # d/d rgb of 0.5 |x - x0|^2, x = 2 rgb - 1
    torch.testing.assert_close(rgb.grad, expected.detach(), atol=1e-6, rtol=1e-4)


# ---- the hook in a fit ------------------------------------------------------------------------------------------

def test_hook_lifts_gaussians_into_unseen_parts_and_keeps_the_input_views(tmp_path):
    from test_dpdy import Recorder, scene_from, synth, tiny_config

    from models.dpdy.method import DpDyMethod
    from models.registry import get_method

    scene = scene_from(synth())
    rec = Recorder()
    common = dict(steps=60, prior_every=3, prior_start=0.0, prior_size=32, prior_lift=64)  # step 0: weight 0
    DpDyMethod().fit(scene, tiny_config(prior="small", **common), tmp_path / "p", rec)
    DpDyMethod().fit(scene, tiny_config(prior="none", **common), tmp_path / "n", Recorder())
    stats = json.loads((tmp_path / "p" / "prior.json").read_text())
    assert stats["prior"] == "small" and stats["calls"] == 19 and stats["lifted"] > 0
    assert any("prior" in m for _, m in rec.calls)
    assert DpDyMethod().fit_notes(tmp_path / "p")[0].startswith("prior small")
    psnr = {}
    for k in ("p", "n"):
        res = get_method("dpdy").load(tmp_path / k, scene, None, "cpu").render(scene.cameras, scene.times)
        psnr[k] = float(-10 * torch.log10(((res.rgb - torch.as_tensor(scene.frames).float() / 255) ** 2).mean()))
    assert psnr["p"] > psnr["n"] - 1.0, psnr


def test_fit_with_ldm3d_caches_its_lora_stage(ldm3d_folder, tmp_path, monkeypatch):
    from conftest import preprocessed_synth
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    ws = preprocessed_synth(tmp_path, seed=4, frames=6, width=64, height=48)
    monkeypatch.setenv("MONODYN_LDM3D", str(ldm3d_folder))
    args = ["fit", "-w", str(ws), "-q", "--steps", "12", "--prior-every", "3", "--prior-start", "0",
            "--prior-lora-steps", "3", "--prior-model-size", "32", "--static-points", "500", "--dynamic-points", "100"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "prior: ldm3d" in first.output and "prior ldm3d" in first.output
    (lora,) = (ws / "prior_lora").iterdir()
    assert (lora / "lora.safetensors").exists() and (lora / "manifest.json").exists()
    stamp = (lora / "manifest.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, [*args, "--steps", "13"])  # another fit of the same clip: the fine-tune is reused
    assert again.exit_code == 0, again.output
    assert (lora / "manifest.json").stat().st_mtime_ns == stamp and len(list((ws / "prior_lora").iterdir())) == 1
