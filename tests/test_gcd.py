"""GCD: the sgm -> diffusers key mapping, the folder round trip, camera deltas, the sampler, a training step,
option checks and the missing-weights message. Tiny randomly initialised models of the real classes."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from models.cameras import Cameras, intrinsics_from_fov, look_at
from models.errors import InputError, WeightsNotFoundError
from models.gcd.model import GCDModel, GCDUNet, small_configs, spherical_features

TINY = dict(channels=(32, 64), vae_channels=(32, 32), token_dim=32)


@pytest.fixture(scope="module")
def tiny() -> GCDModel:
    torch.set_num_threads(1)
    return GCDModel.from_configs(small_configs(**TINY), seed=0).eval()


def clip_inputs(B: int = 1, T: int = 4, seed: int = 0, H: int = 32, W: int = 32):
    """Short small clips keep the tests fast (the networks take any frame count and size)."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, T, 3, H, W, generator=g) * 2 - 1
    deltas = torch.zeros(B, T, 3)
    deltas[..., 0] = torch.linspace(0, 60, T)
    return frames, deltas


# ---- sgm -> diffusers ------------------------------------------------------------------------------------

# the official (sgm) module prefixes of the tiny UNet (layers_per_block=1, levels: cross-attn, plain), written
# out by hand from sgm's VideoUNet layout
UNET_PREFIXES = {
    "conv_in.": "input_blocks.0.0.",
    "down_blocks.0.resnets.0.": "input_blocks.1.0.",
    "down_blocks.0.attentions.0.": "input_blocks.1.1.",
    "down_blocks.0.downsamplers.0.conv.": "input_blocks.2.0.op.",
    "down_blocks.1.resnets.0.": "input_blocks.3.0.",
    "mid_block.resnets.0.": "middle_block.0.",
    "mid_block.attentions.0.": "middle_block.1.",
    "mid_block.resnets.1.": "middle_block.2.",
    "up_blocks.0.resnets.0.": "output_blocks.0.0.",
    "up_blocks.0.resnets.1.": "output_blocks.1.0.",
    "up_blocks.0.upsamplers.0.": "output_blocks.1.1.",
    "up_blocks.1.resnets.0.": "output_blocks.2.0.",
    "up_blocks.1.attentions.0.": "output_blocks.2.1.",
    "up_blocks.1.resnets.1.": "output_blocks.3.0.",
    "up_blocks.1.attentions.1.": "output_blocks.3.1.",
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_norm_out.": "out.0.", "conv_out.": "out.2.", "aux_label_emb.": "aux_label_emb.",
}
RESNET_INNER = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
                "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}


def to_sgm_unet(key: str, prefixes: dict[str, str] = UNET_PREFIXES) -> str:
    """Our UNet name -> sgm's (`prefixes`: the module prefixes of the layout; bench_gcd_convert.py makes SVD's)."""
    if key.startswith("camera_embedder."):
        return "conditioner.embedders.5." + key[len("camera_embedder."):]
    prefix = max((p for p in prefixes if key.startswith(p)), key=len)
    rest = key[len(prefix):]
    if "resnets" in prefix:
        for ours, theirs in (("spatial_res_block.", ""), ("temporal_res_block.", "time_stack.")):
            if rest.startswith(ours):
                inner = rest[len(ours):]
                new = next(v for k, v in RESNET_INNER.items() if inner.startswith(k))
                rest = theirs + new + inner[len(next(k for k in RESNET_INNER if inner.startswith(k))):]
    if "attentions" in prefix:
        rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
        rest = rest.replace("time_pos_embed.linear_1.", "time_pos_embed.0.").replace("time_pos_embed.linear_2.", "time_pos_embed.2.")
    return "model.diffusion_model." + prefixes[prefix] + rest


def to_sgm_vae(key: str, levels: int) -> str:
    k = key
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
               lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
               lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.", k)
    k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
    k = k.replace("mid_block.attentions.0.", "mid.attn_1.")
    k = k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.").replace("to_v.", "v.")
    k = k.replace("to_out.0.", "proj_out.").replace("conv_shortcut.", "nin_shortcut.")
    k = k.replace("spatial_res_block.", "").replace("time_mixer.mix_factor", "mix_factor")
    for ours, theirs in (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                         ("conv2.", "out_layers.3.")):
        k = k.replace("temporal_res_block." + ours, "time_stack." + theirs)
    k = k.replace("conv_norm_out.", "norm_out.").replace("decoder.time_conv_out.", "decoder.conv_out.time_mix_conv.")
    return "first_stage_model." + k


def test_sgm_key_mapping_unet_and_vae(tiny):
    from models.gcd.convert import convert_state_dict

    cfg = small_configs(**TINY)
    unet_sd = tiny.unet.state_dict()
    vae_sd = {k: v for k, v in tiny.vae.state_dict().items() if not k.startswith("quant_conv.")}
    sgm = {to_sgm_unet(k): v for k, v in unet_sd.items()}
    levels = len(cfg["vae"]["block_out_channels"])
    for k, v in vae_sd.items():
        if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", k):
            v = v[:, :, None, None]  # sgm's VAE attention uses 1x1 convolutions
        sgm[to_sgm_vae(k, levels)] = v
    assert "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight" in sgm
    assert "first_stage_model.decoder.up.0.block.1.mix_factor" in sgm
    assert "model.diffusion_model.aux_label_emb.2.weight" in sgm and "conditioner.embedders.5.proj.weight" in sgm
    parts = convert_state_dict(sgm, cfg["unet"], levels)
    assert set(parts["unet"]) == set(unet_sd)
    assert set(parts["vae"]) == set(vae_sd)
    for k, v in unet_sd.items():
        assert torch.equal(parts["unet"][k], v), k
    for k, v in vae_sd.items():
        assert torch.equal(parts["vae"][k], v), k
    # a fresh UNet loaded from the mapped dict computes the same function
    fresh = GCDUNet(**cfg["unet"])
    fresh.load_state_dict(parts["unet"])
    x = torch.randn(1, 14, 8, 12, 16)
    args = (torch.tensor([0.3]), torch.randn(1, 14, 1, 32), torch.tensor([[12.0, 40.0, 0.02]]), torch.randn(1, 14, 3))
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x, *args), tiny.unet(x, *args), atol=1e-5)


TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                 image_size=32, projection_dim=32, hidden_act="gelu")


def to_openclip(sd: dict, layers: int) -> dict:
    """A transformers CLIP vision state dict in OpenCLIP's visual-tower names (q, k, v fused)."""
    oc = {"conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
          "class_embedding": sd["vision_model.embeddings.class_embedding"],
          "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
          "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"], "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
          "ln_post.weight": sd["vision_model.post_layernorm.weight"],
          "ln_post.bias": sd["vision_model.post_layernorm.bias"], "proj": sd["visual_projection.weight"].t()}
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            oc[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{p}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                oc[f"transformer.resblocks.{i}.{theirs}.{kind}"] = sd[f"{p}{ours}.{kind}"]
    return oc


def test_openclip_mapping():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from models.gcd.convert import clip_state

    torch.manual_seed(0)
    sd = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP)).state_dict()
    mapped = clip_state(to_openclip(sd, 2))
    assert set(mapped) == {k for k in sd if "position_ids" not in k}
    for k, v in mapped.items():
        assert torch.equal(v, sd[k]), k


def tiny_official():
    """Tiny sizes standing in for SVD's (with a tiny CLIP, as the official model)."""
    c = small_configs(**TINY)
    c["gcd"].image_encoder, c["image_encoder"] = "clip", TINY_CLIP
    return c


def write_official(path, tiny) -> GCDModel:
    """A Lightning-style file ({"state_dict": sgm keys, optimizer leftovers}) of the tiny model with a tiny CLIP;
    returns the model it holds."""
    cfg = small_configs(**TINY)
    sgm = {to_sgm_unet(k): v for k, v in tiny.unet.state_dict().items()}
    levels = len(cfg["vae"]["block_out_channels"])
    for k, v in tiny.vae.state_dict().items():
        if k.startswith("quant_conv."):
            continue
        if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", k):
            v = v[:, :, None, None]
        sgm[to_sgm_vae(k, levels)] = v
    clip = GCDModel.from_configs(tiny_official(), seed=1).image_encoder
    for k, v in to_openclip(clip.state_dict(), 2).items():
        sgm[f"conditioner.embedders.0.open_clip.model.visual.{k}"] = v
    torch.save({"state_dict": sgm, "global_step": 1, "optimizer_states": [{"x": torch.zeros(3)}]}, path)
    return GCDModel(tiny.cfg, tiny.unet, tiny.vae, clip)


OFFICIAL_YAML = """model:
  base_learning_rate: 2e-5
data:
  params:
    frame_width: 64
    frame_height: 48
    model_frames: 14
    radius_range: [12.0, 18.0]
    delta_azimuth_range: [-180.0, 180.0]
    delta_elevation_range: [-60.0, 60.0]
    delta_radius_range: [-3.0, 3.0]
    move_time: 0
    cond_aug: 0.02
"""


def run_cli(args):
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_weights_convert_gcd_from_the_name(tmp_path, tiny, monkeypatch):
    """`monodyn weights convert gcd` on a file in the official layout: settings from the name (and says so), fp16
    UNet and CLIP, fp32 VAE; the folder loads into the same functions (up to fp16 rounding)."""
    from safetensors import safe_open

    from models.gcd import model as gcd_model

    monkeypatch.setattr(gcd_model, "official_configs", tiny_official)
    ckpt = tmp_path / "tiny_gradual_max90.ckpt"
    source = write_official(ckpt, tiny)
    before = ckpt.read_bytes()
    result = run_cli(["weights", "convert", "gcd", ckpt, "--out", tmp_path / "conv", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "file name" in result.output and "gradual" in result.output
    assert ckpt.read_bytes() == before  # the user's file is only read
    out = tmp_path / "conv"
    dtypes = {}
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "image_encoder/model"):
        with safe_open(str(out / f"{part}.safetensors"), "pt") as f:
            dtypes[part.split("/")[0]] = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {"unet": {torch.float16}, "vae": {torch.float32}, "image_encoder": {torch.float16}}
    loaded = GCDModel.load(out)
    cfg = loaded.cfg
    assert cfg.mode == "gradual" and cfg.motion_norm == (90.0, 30.0) and cfg.radius_scale == 15.0
    assert cfg.max_delta == (90.0, 30.0, pytest.approx(0.2)) and cfg.notes["settings_from"] == "file name"
    for a, b in ((loaded.unet, source.unet), (loaded.image_encoder, source.image_encoder)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y.half().float()), k
    for (k, x), y in zip(loaded.vae.state_dict().items(), source.vae.state_dict().values(), strict=True):
        assert torch.equal(x, y) if not k.startswith("quant_conv") else True, k
    assert torch.equal(loaded.vae.quant_conv.weight[:, :, 0, 0], torch.eye(8))  # sgm has none: the identity
    frames, _ = clip_inputs()
    assert loaded.image_tokens(frames).shape == (1, 4, 1, 32)
    # a name without the settings, and no YAML: one line asking for --config
    bad = tmp_path / "mystery.ckpt"
    bad.write_bytes(before)
    result = run_cli(["weights", "convert", "gcd", bad, "--out", tmp_path / "c2", "--quiet"])
    assert result.exit_code == 1 and "--config" in result.output and "Traceback" not in result.output


def test_weights_convert_gcd_reads_the_yaml(tmp_path, tiny, monkeypatch):
    """The training YAML wins over the name: max180 ranges, direct mode (move_time 0), its frame size."""
    from models.gcd import model as gcd_model
    from models.gcd.official import settings_from_yaml

    monkeypatch.setattr(gcd_model, "official_configs", tiny_official)
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "kubric_gradual_max90.ckpt"
    write_official(ckpt, tiny)
    yml = tmp_path / "train.yaml"
    yml.write_text(OFFICIAL_YAML)
    s = settings_from_yaml(yml)
    assert (s.max_azimuth, s.max_elevation, s.max_radius, s.radius_scale, s.mode) == (180, 60, 3, 15, "direct")
    result = run_cli(["weights", "convert", "gcd", ckpt, "--config", yml, "--quiet"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "cache" / "gcd" / "kubric_gradual_max90"  # the default: the cache, found by render
    cfg = GCDModel.load(folder).cfg
    assert cfg.mode == "direct" and cfg.motion_norm == (180.0, 60.0) and (cfg.width, cfg.height) == (64, 48)
    yml.write_text("data:\n  params:\n    move_time: 13\n")
    result = run_cli(["weights", "convert", "gcd", ckpt, "--config", yml, "--out", tmp_path / "c3", "--quiet"])
    assert result.exit_code == 1 and "delta_azimuth_range" in result.output


def test_render_weights_resolution(tmp_path, tiny, monkeypatch):
    """A raw *.ckpt is refused with the convert command; of several converted folders the newest wins and the
    notice names the others."""
    import os

    from models.gcd.method import GCDRenderOptions, resolve_weights

    monkeypatch.delenv("MONODYN_GCD", raising=False)
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path))
    cache = tmp_path / "gcd"
    cache.mkdir()
    (cache / "kubric_gradual_max90.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match="monodyn weights convert gcd"):
        resolve_weights(GCDRenderOptions())
    with pytest.raises(InputError, match="monodyn weights convert gcd"):
        resolve_weights(GCDRenderOptions(gcd_checkpoint=str(cache / "kubric_gradual_max90.ckpt")))
    for i, name in enumerate(("a_old", "b_new")):
        tiny.save(cache / name)
        os.utime(cache / name / "gcd.json", ns=(10**18 + i, 10**18 + i))
    w = resolve_weights(GCDRenderOptions())
    assert w.path == cache / "b_new"
    assert "a_old" in w.notice and "kubric_gradual_max90.ckpt" in w.notice and "--gcd-checkpoint" in w.notice
    assert resolve_weights(GCDRenderOptions(gcd_checkpoint=str(cache / "a_old"))).path == cache / "a_old"
    assert "shipped" in resolve_weights(GCDRenderOptions(gcd_weights="small")).notice


# ---- camera embedding, files -----------------------------------------------------------------------------

def test_spherical_features_layout():
    f = spherical_features(torch.tensor([[math.pi / 2, 0.0, 0.5]]))
    assert f.shape == (1, 13)
    assert torch.allclose(f[0, :2], torch.tensor([0.0, 1.0]), atol=1e-6)   # cos, sin of Δaz
    assert torch.allclose(f[0, 2:4], torch.tensor([-1.0, 0.0]), atol=1e-6)  # at 2x
    assert torch.allclose(f[0, 6:8], torch.tensor([1.0, 0.0]))  # Δel = 0
    assert float(f[0, 12]) == 0.5


def test_save_load_round_trip(tmp_path, tiny):
    from models.gcd.sampling import sample

    frames, deltas = clip_inputs()
    tiny.save(tmp_path / "m")
    back = GCDModel.load(tmp_path / "m")
    for a, b in zip(tiny.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert back.cfg == tiny.cfg
    a = sample(tiny, frames, deltas, steps=2)
    assert torch.equal(a, sample(back, frames, deltas, steps=2))
    # another format version: a one-line retrain message
    cfg = (tmp_path / "m" / "gcd.json").read_text().replace('"version": 1', '"version": 99')
    (tmp_path / "m" / "gcd.json").write_text(cfg)
    with pytest.raises(InputError, match="retrain"):
        GCDModel.load(tmp_path / "m")


# ---- geometry --------------------------------------------------------------------------------------------

def orbit_cameras(azimuths, elevation=20.0, radius=5.0, center=(0.0, 0.0, 0.4), n=None, fov=55.0):
    center = torch.tensor(center)
    az, el = torch.deg2rad(torch.as_tensor(azimuths, dtype=torch.float32)), math.radians(elevation)
    eyes = center + radius * torch.stack([math.cos(el) * az.cos(), math.cos(el) * az.sin(),
                                          torch.full_like(az, math.sin(el))], -1)
    w2c = look_at(eyes, center.expand_as(eyes))
    K = intrinsics_from_fov(64, 48, fov).expand(len(eyes), 3, 3).clone()
    return Cameras(K, w2c, 64, 48)


def test_camera_deltas_analytic():
    from models.cameras import scene_look_at as look_at_point
    from models.gcd.geometry import camera_deltas

    inputs = orbit_cameras([0.0, 10.0, 20.0, 30.0])
    center = look_at_point(inputs)
    assert torch.allclose(center, torch.tensor([0.0, 0.0, 0.4]), atol=1e-4)
    # rotated 30 degrees about the look-at point (counter-clockwise seen from above): Δaz = 30
    d = camera_deltas(inputs, orbit_cameras([30.0, 40.0, 50.0, 60.0]), center, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(d[:, 0], torch.full((4,), 30.0), atol=1e-3)
    assert torch.allclose(d[:, 1:], torch.zeros(4, 2), atol=1e-3)
    # the other way, across ±180, higher and farther
    d = camera_deltas(inputs[:1], orbit_cameras([-170.0], elevation=35.0, radius=6.0), center, torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(d[0], torch.tensor([-170.0, 15.0, 0.2]), atol=1e-3)
    d = camera_deltas(inputs[:1], orbit_cameras([180.0]), center, torch.tensor([0.0, 0.0, 1.0]))
    assert abs(float(d[0, 0]) - 180.0) < 1e-3


def test_paths_gcd_cannot_express():
    from models.gcd.geometry import camera_deltas, check_range

    inputs = orbit_cameras([0.0])
    center, up = torch.tensor([0.0, 0.0, 0.4]), torch.tensor([0.0, 0.0, 1.0])
    eye = torch.linalg.inv(inputs.w2c)[0, :3, 3]
    w2c = look_at(eye[None], torch.tensor([[0.0, 5.0, 0.4]]))  # the same place, looking far to the side
    with pytest.raises(InputError, match="look"):
        camera_deltas(inputs, Cameras(inputs.K, w2c, 64, 48), center, up)
    with pytest.raises(InputError, match="zoom"):
        camera_deltas(inputs, orbit_cameras([10.0], fov=30.0), center, up)
    with pytest.raises(InputError, match="elevation"):
        check_range(torch.tensor([[10.0, 70.0, 0.0]]), (180.0, 45.0, 0.3))


# ---- sampler, training -----------------------------------------------------------------------------------

def test_sampler_deterministic_and_seeded(tiny):
    from models.gcd.sampling import edm_sigmas, sample

    s = edm_sigmas(25)
    assert len(s) == 26 and abs(float(s[0]) - 700.0) < 1e-2 and abs(float(s[24]) - 0.002) < 1e-6 and float(s[25]) == 0
    frames, deltas = clip_inputs()
    a = sample(tiny, frames, deltas, steps=3, seed=1)
    assert a.shape == (1, 4, 3, 32, 32) and float(a.abs().max()) <= 1.0
    assert torch.equal(a, sample(tiny, frames, deltas, steps=3, seed=1))
    assert not torch.equal(a, sample(tiny, frames, deltas, steps=3, seed=2))


def test_train_steps_lower_the_loss_and_resume_is_exact(tmp_path):
    from models.fitting import Budget, run_fit
    from models.gcd.train import DiffusionTask, encode_pairs, focal_loss

    err = torch.tensor([[4.0, 1.0, 1.0, 2.0]])
    assert torch.allclose(focal_loss(err, 0.5), torch.tensor([0.9 * 3.0 + 0.1 * 2.0]))
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 255, (2, 4, 32, 32, 3), dtype=np.uint8)
    targets = np.flip(inputs, axis=3).copy()
    deltas = np.zeros((2, 4, 3), np.float32)

    def make():
        m = GCDModel.from_configs(small_configs(**TINY), seed=0)
        z, c = encode_pairs(m, inputs, targets)
        return m, DiffusionTask(m, inputs, deltas, z, c, lr=2e-3, seed=0, warmup=1)

    _, task = make()
    with torch.no_grad():  # the same draw (clip, dropout, σ, noise) before and after
        task.gen.manual_seed(5)
        before = float(task.loss(task.draw(), 0.0)[0])
    task.gen.manual_seed(0)
    for step in range(6):
        task.train_step(step, 0.0)
    with torch.no_grad():
        task.gen.manual_seed(5)
        after = float(task.loss(task.draw(), 0.0)[0])
    assert after < before
    # same seed -> same weights, also across a resume
    _, t1 = make()
    run_fit(t1, tmp_path / "a", Budget(3), lambda *a, **k: None)
    _, t2 = make()

    class Killed(Exception):
        pass

    def kill_at_2(step, total, **metrics):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):  # killed after step 2, before its resume state: resumes from step 1
        run_fit(t2, tmp_path / "b", Budget(3), kill_at_2, checkpoint_every=1, log_every=1)
    assert (tmp_path / "b" / "train_state.pt").exists()
    _, t3 = make()
    run_fit(t3, tmp_path / "b", Budget(3), lambda *a, **k: None, resume=True)
    a = GCDModel.load(tmp_path / "a").unet.state_dict()
    b = GCDModel.load(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- the method ------------------------------------------------------------------------------------------

def test_render_options_validate():
    from models.gcd.method import GCDRenderOptions

    GCDRenderOptions().validate()
    for bad in (dict(mode="sideways"), dict(steps=0), dict(cfg_max=float("nan")), dict(gcd_weights="huge"), dict(samples=0),
                dict(gcd_checkpoint="/nonexistent/gcd.ckpt")):
        with pytest.raises(InputError):
            GCDRenderOptions(**bad).validate()


def test_missing_official_weights_message(tmp_path, monkeypatch):
    from models.gcd.method import GCDRenderOptions, resolve_weights

    monkeypatch.delenv("MONODYN_GCD", raising=False)
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(GCDRenderOptions(gcd_weights="official"))
    msg = str(e.value)
    assert "kubric_gradual_max90.ckpt" in msg and "--gcd-checkpoint" in msg and "MONODYN_GCD" in msg
    assert str(tmp_path / "gcd") in msg
    monkeypatch.setenv("MONODYN_GCD", str(tmp_path / "nothing"))
    with pytest.raises(WeightsNotFoundError, match="MONODYN_GCD"):
        resolve_weights(GCDRenderOptions())


def scene_of(cams, T, H=48, W=64, seed=0):
    from models.scene import Scene

    frames = (np.random.default_rng(seed).random((T, H, W, 3)) * 255).astype(np.uint8)
    return Scene(frames=frames, timestamps=np.arange(T) / 12.0, cameras=cams, center=np.array([0.0, 0.0, 0.4], np.float32))


def test_renderer_on_a_scene(tmp_path, tiny):
    from models.gcd.method import GCDMethod, GCDRenderOptions

    tiny.save(tmp_path / "m")
    T = 5
    # level cameras: their mean image-up is the world's z, about which the targets turn
    scene = scene_of(orbit_cameras(torch.linspace(0, 20, T), elevation=0.0), T)
    renderer = GCDMethod().load(None, scene, GCDRenderOptions(gcd_checkpoint=str(tmp_path / "m"), steps=2), "cpu")
    assert renderer.chunk == 14 and renderer.mode == "direct" and str(tmp_path / "m") in renderer.notice
    targets = orbit_cameras(torch.linspace(30, 50, 3), elevation=0.0)
    out = renderer.render(targets, torch.tensor([0.0, 0.5, 1.0]))
    assert out.rgb.shape == (3, 48, 64, 3) and out.depth.shape == (3, 48, 64) and bool((out.alpha == 1).all())
    idx, d = renderer.deltas(targets, torch.tensor([0.0, 0.5, 1.0]))
    assert idx.tolist() == [0, 2, 4]
    assert torch.allclose(d[:, 0], torch.tensor([30.0, 30.0, 30.0]), atol=1e-2)
    with pytest.raises(InputError, match="range"):
        renderer.render(orbit_cameras([0.0], elevation=89.0), torch.tensor([0.0]))


def test_renderer_centre_crops_to_the_model_aspect(tmp_path, tiny):
    """A 16:9 clip into the 4:3 model: the centred 4:3 box of each frame goes in (not a squashed frame), and the
    output fills the same box of the target image, alpha 0 outside."""
    from models.gcd.method import GCDRenderer, GCDRenderOptions, center_crop_box

    assert center_crop_box(36, 64, 4 / 3) == (0, 8, 36, 48)
    assert center_crop_box(64, 48, 4 / 3) == (14, 0, 36, 48)
    T = 3
    cams = orbit_cameras(torch.linspace(0, 20, T))
    cams = Cameras(intrinsics_from_fov(64, 36, 55.0).expand(T, 3, 3).clone(), cams.w2c, 64, 36)
    scene = scene_of(cams, T, H=36, W=64)
    renderer = GCDRenderer(tiny, scene, GCDRenderOptions(steps=1), torch.device("cpu"))
    x = renderer.input_frames(torch.tensor([1]))
    box = torch.from_numpy(scene.frames[1, :, 8:56].astype(np.float32) / 255.0).permute(2, 0, 1)
    expect = torch.nn.functional.interpolate(box[None], size=(48, 64), mode="bilinear", align_corners=False,
                                             antialias=True) * 2 - 1
    assert torch.allclose(x, expect, atol=1e-6)
    out = renderer.render(cams[:2], torch.tensor([0.0, 1.0]))
    assert bool((out.alpha[:, :, 8:56] == 1).all()) and float(out.alpha[:, :, :8].sum() + out.alpha[:, :, 56:].sum()) == 0
    assert float(out.rgb[:, :, :8].abs().sum()) == 0 and float(out.rgb[:, :, 8:56].std()) > 0


def test_an_orbit_path_reaches_gcd_as_a_pure_azimuth_change(tiny):
    """Pitched input cameras (looking down 35 degrees, spread over 20 degrees of azimuth): `monodyn render
    --orbit 30` turns about the paths' up, and GCD measures the same up: Δelevation 0, Δazimuth 0..30."""
    from models.gcd.method import GCDRenderer, GCDRenderOptions
    from monodyn_cli.paths import orbit

    T = 6
    cams = orbit_cameras(torch.linspace(0, 20, T), elevation=35.0)
    scene = scene_of(cams, T)
    renderer = GCDRenderer(tiny, scene, GCDRenderOptions(), torch.device("cpu"))
    path = orbit(scene.cameras, renderer.center, degrees=30.0, n_frames=T, times=torch.zeros(T))
    _, d = renderer.deltas(path.cameras, path.times)
    assert torch.allclose(d[:, 0], torch.linspace(0, 30, T), atol=1e-3)
    assert torch.allclose(d[:, 1:], torch.zeros(T, 2), atol=1e-3)


def test_cli_train_gcd_tiny(tmp_path):
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    out = tmp_path / "model"
    args = ["train", "gcd", "--out", str(out), "--data", str(tmp_path / "data"), "--pairs", "2", "--frames", "4",
            "--width", "32", "--height", "32", "--channels", "32,64", "--vae-channels", "32,32", "--vae-steps", "2",
            "--steps", "2", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = GCDModel.load(out)
    assert model.cfg.num_frames == 4 and model.cfg.notes["diffusion_steps"] == 2
    assert len(list((tmp_path / "data").glob("*/manifest.json"))) == 1
    bad = CliRunner().invoke(app, ["train", "gcd", "--out", str(out), "--channels", "30,64"])
    assert bad.exit_code == 1 and "multiples of 32" in bad.output


def test_small_configs_three_levels_skip_the_full_size_transformer():
    cfg = small_configs(channels=(32, 32, 32), vae_channels=(32, 32), token_dim=32)
    assert cfg["unet"]["down_block_types"] == ("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                               "DownBlockSpatioTemporal")
    assert cfg["unet"]["up_block_types"] == ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                             "UpBlockSpatioTemporal")
    m = GCDModel.from_configs(cfg, seed=0).eval()
    frames, deltas = clip_inputs(T=2, H=16, W=16)
    with torch.no_grad():
        tokens, concat = m.conditioning(frames)
        out = m.denoise(torch.zeros_like(concat), torch.ones(1), tokens, concat, m.micro_conditioning(deltas), deltas)
    assert out.shape == concat.shape == (1, 2, 4, 8, 8)
    with pytest.raises(ValueError, match="2 levels"):
        small_configs(channels=(32,))


def test_opponent_colour_space_analytic_and_round_trip(tiny):
    from models.gcd.model import official_configs, opponent_to_rgb, rgb_to_opponent

    grey = torch.full((1, 3, 2, 2), 0.3)
    y = rgb_to_opponent(grey, 2.0)
    assert torch.allclose(y[:, 0], torch.full((1, 2, 2), 0.3)) and float(y[:, 1:].abs().max()) < 1e-7
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # pure red in [-1, 1]
    assert torch.allclose(rgb_to_opponent(red, 3.0).flatten(), torch.tensor([-1 / 3, 3.0, 1.5]))
    x = torch.rand(2, 4, 3, 5, 6) * 2 - 1
    assert torch.allclose(opponent_to_rgb(rgb_to_opponent(x, 2.0), 2.0), x, atol=1e-6)
    # the small models code the opponent space, the official weights RGB; encode/decode convert both ways
    assert tiny.cfg.vae_space == "opponent" and official_configs()["gcd"].vae_space == "rgb"
    frames, _ = clip_inputs(T=2, H=16, W=16)
    with torch.no_grad():
        z = tiny.encode_latents(frames)
        direct = tiny.vae.encode(rgb_to_opponent(frames.flatten(0, 1), tiny.cfg.chroma_gain)).latent_dist.mode()
        assert torch.allclose(z.flatten(0, 1), direct)
        out = tiny.decode_latents(z)
        raw = tiny.vae.decode(z.flatten(0, 1), num_frames=2).sample
        assert torch.allclose(out.flatten(0, 1), opponent_to_rgb(raw, tiny.cfg.chroma_gain), atol=1e-6)
