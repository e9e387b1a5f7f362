"""RAFT: architecture vs the official checkpoints, loading and weight resolution, torchvision key mapping,
analytic pieces (correlation lookup, convex upsampling), and real-weight flow on translated textures."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import ndimage

import models.raft as raft
from models.errors import InputError, WeightsNotFoundError
from models.raft import (
    RAFT,
    CorrPyramid,
    RAFTConfig,
    _upsample_convex8,
    estimate_flow,
    load_raft,
    official_from_torchvision,
    torchvision_from_official,
    torchvision_key_map,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RAFT_SMALL = SHARED / "weights" / "raft-small.pth"
needs_weights = pytest.mark.skipif(not RAFT_SMALL.is_file(), reason="needs ../shared/weights/raft-small.pth")

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
WB = ("weight", "bias")


def _keys(prefix: str, names) -> list[str]:
    return [f"{prefix}.{n}" for n in names]


def official_large_keys() -> set[str]:
    """raft-things.pth's names (minus `module.`), written out from the authors' core/ module tree."""
    keys = []
    for enc, batchnorm in (("fnet", False), ("cnet", True)):  # fnet: instance norm (no state); cnet: batch norm
        keys += _keys(f"{enc}.conv1", WB) + _keys(f"{enc}.conv2", WB)
        if batchnorm:
            keys += _keys(f"{enc}.norm1", BN)
        for layer in (1, 2, 3):
            for block in (0, 1):
                p = f"{enc}.layer{layer}.{block}"
                keys += _keys(f"{p}.conv1", WB) + _keys(f"{p}.conv2", WB)
                if batchnorm:
                    keys += _keys(f"{p}.norm1", BN) + _keys(f"{p}.norm2", BN)
                if layer > 1 and block == 0:
                    keys += _keys(f"{p}.downsample.0", WB)
                    if batchnorm:
                        keys += _keys(f"{p}.norm3", BN) + _keys(f"{p}.downsample.1", BN)
    for conv in ("convc1", "convc2", "convf1", "convf2", "conv"):
        keys += _keys(f"update_block.encoder.{conv}", WB)
    for gate in "zrq":
        for k in "12":
            keys += _keys(f"update_block.gru.conv{gate}{k}", WB)
    keys += _keys("update_block.flow_head.conv1", WB) + _keys("update_block.flow_head.conv2", WB)
    keys += _keys("update_block.mask.0", WB) + _keys("update_block.mask.2", WB)
    return set(keys)


def torchvision_keys(small: bool) -> set[str]:
    """torchvision raft_small()/raft_large() state-dict names, written out from torchvision's module tree."""
    keys = []
    for enc, batchnorm in (("feature_encoder", False), ("context_encoder", not small)):
        keys += _keys(f"{enc}.convnormrelu.0", WB) + _keys(f"{enc}.conv", WB)
        if batchnorm:
            keys += _keys(f"{enc}.convnormrelu.1", BN)
        for layer in (1, 2, 3):
            for block in (0, 1):
                p = f"{enc}.layer{layer}.{block}"
                for i in (1, 2, 3) if small else (1, 2):
                    keys += _keys(f"{p}.convnormrelu{i}.0", WB)
                    if batchnorm:
                        keys += _keys(f"{p}.convnormrelu{i}.1", BN)
                if layer > 1 and block == 0:
                    keys += _keys(f"{p}.downsample.0", WB)
                    if batchnorm:
                        keys += _keys(f"{p}.downsample.1", BN)
    me = "update_block.motion_encoder"
    keys += _keys(f"{me}.convcorr1.0", WB) + _keys(f"{me}.convflow1.0", WB) + _keys(f"{me}.convflow2.0", WB)
    keys += _keys(f"{me}.conv.0", WB)
    for gru in ("convgru1",) if small else ("convgru1", "convgru2"):
        for gate in "zrq":
            keys += _keys(f"update_block.recurrent_block.{gru}.conv{gate}", WB)
    keys += _keys("update_block.flow_head.conv1", WB) + _keys("update_block.flow_head.conv2", WB)
    if not small:
        keys += _keys(f"{me}.convcorr2.0", WB)
        keys += _keys("mask_predictor.convrelu.0", WB) + _keys("mask_predictor.conv", WB)
    return set(keys)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_model(small: bool, seed: int = 0) -> RAFT:
    torch.manual_seed(seed)
    model = RAFT(RAFTConfig(small=small))
    if not small:  # give the batch norms non-trivial statistics so that renaming mistakes would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def texture(seed: int = 0, h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3))
    for sigma in (8, 4, 2, 1):
        out += sigma * np.stack([ndimage.gaussian_filter(rng.random((h, w)), sigma) for _ in range(3)], -1)
    out -= out.min((0, 1))
    return out / out.max((0, 1))


def translate(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return np.stack([ndimage.shift(img[..., c], (dy, dx), order=3, mode="reflect") for c in range(3)], -1)


# ------------------------------------------------------------------------------------------ architecture

def test_parameter_counts_match_official_models():
    assert n_params(RAFT(RAFTConfig(small=True))) == 990_162  # raft-small.pth
    assert n_params(RAFT(RAFTConfig(small=False))) == 5_257_536  # raft-things.pth


def test_large_key_names_match_raft_things():
    assert set(RAFT(RAFTConfig(small=False)).state_dict()) == official_large_keys()


@needs_weights
def test_official_small_checkpoint_loads_strict():
    state = torch.load(RAFT_SMALL, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in state)
    model = RAFT(RAFTConfig(small=True))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    loaded = load_raft(RAFT_SMALL)
    assert loaded.cfg.small and not loaded.training
    assert n_params(loaded) == sum(v.numel() for v in state.values()) == 990_162
    torch.testing.assert_close(loaded.update_block.gru.convz.weight, state["module.update_block.gru.convz.weight"])


@pytest.mark.parametrize("small", [True, False])
def test_random_forward_shapes_and_determinism(small):
    model = random_model(small)
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 66, 90) * 255, torch.rand(2, 3, 66, 90) * 255  # not multiples of 8: padded inside
    with torch.no_grad():
        flow = model(a, b, iters=2)
        steps = model(a, b, iters=2, all_iters=True)
        single = model(a[1:], b[1:], iters=2)
    assert flow.shape == (2, 2, 66, 90) and torch.isfinite(flow).all()
    assert len(steps) == 2 and torch.equal(steps[-1], flow)  # deterministic
    assert not torch.allclose(steps[0], steps[1])  # the second step changed the flow
    # each pair is independent of its batch neighbours (no batch statistics in eval mode)
    torch.testing.assert_close(single, flow[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("small", [True, False])
def test_neighbour_flows_match_pairwise_forward(small):
    model = random_model(small)
    torch.manual_seed(2)
    frames = torch.rand(3, 3, 64, 72) * 255
    with torch.no_grad():
        fw, bw = model.neighbour_flows(frames, iters=2)
        assert fw.shape == bw.shape == (2, 2, 64, 72)
        torch.testing.assert_close(fw, model(frames[:-1], frames[1:], iters=2), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bw, model(frames[1:], frames[:-1], iters=2), atol=1e-4, rtol=1e-4)


def test_estimate_flow_rejects_float_frames_in_0_255():
    frames = np.full((1, 64, 64, 3), 200.0, np.float32)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        estimate_flow(random_model(True), frames, frames, iters=1)


def test_too_small_images_are_rejected():
    model = random_model(True)
    x = torch.zeros(1, 3, 40, 128)
    with pytest.raises(InputError, match="at least 64x64"):
        model(x, x, iters=1)


# --------------------------------------------------------------------------------- analytic components

def test_correlation_lookup_window_order():
    # one-hot features: pixel p correlates only with itself, so the window shows where coords point
    h, w, r = 8, 8, 3
    feats = torch.eye(h * w).reshape(1, h * w, h, w)
    corr = CorrPyramid(feats, feats, levels=1, radius=r)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([xs, ys]).float()[None]
    side = 2 * r + 1
    win = corr(coords)[0, :, 4, 4].reshape(side, side)  # pixel (x=4, y=4), looking at itself
    assert win[r, r] == pytest.approx(1 / np.sqrt(h * w)) and (win.abs() > 1e-4).sum() == 1
    # look one to the right (x+1) and two down (y+2): the match sits at offset dx=-1, dy=-2. The FIRST window
    # axis is x (the official layout the weights were trained with).
    win = corr(coords + torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))[0, :, 2, 2].reshape(side, side)
    assert win[r - 1, r - 2] == pytest.approx(1 / np.sqrt(h * w)) and (win.abs() > 1e-4).sum() == 1


def test_convex_upsampling_picks_neighbours():
    h, w = 3, 4
    flow = torch.arange(2 * h * w, dtype=torch.float32).reshape(1, 2, h, w)
    mask = torch.full((1, 9, 8, 8, h, w), -1e4)
    mask[:, 4, :4] = 1e4  # sub-pixel rows 0-3: the cell itself (neighbour 4 of the 3x3)
    mask[:, 5, 4:] = 1e4  # sub-pixel rows 4-7: the cell to the right (neighbour 5), zero past the edge
    up = _upsample_convex8(flow, mask.reshape(1, 576, h, w))
    assert up.shape == (1, 2, 8 * h, 8 * w)
    right = torch.nn.functional.pad(flow[..., 1:], (0, 1))
    top = up.reshape(1, 2, h, 8, w, 8)[:, :, :, :4]  # (b, c, y, i, x, j)
    bottom = up.reshape(1, 2, h, 8, w, 8)[:, :, :, 4:]
    torch.testing.assert_close(top, (8 * flow)[:, :, :, None, :, None].expand_as(top))
    torch.testing.assert_close(bottom, (8 * right)[:, :, :, None, :, None].expand_as(bottom))


# ---------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_module_prefixed_files_load(tmp_path, small, suffix):
    model = random_model(small)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_raft(path)  # variant inferred from the keys
    assert loaded.cfg.small == small
    x, y = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y, iters=2), model(x, y, iters=2))


@pytest.mark.parametrize("small", [True, False])
def test_torchvision_key_mapping(tmp_path, small):
    mapping = torchvision_key_map(small)
    assert set(mapping.values()) == torchvision_keys(small)
    model = random_model(small)
    official = model.state_dict()
    tv = torchvision_from_official(official, small)
    assert set(tv) == torchvision_keys(small)
    assert sum(v.numel() for k, v in tv.items() if "running" not in k and "num_batches" not in k) == n_params(model)
    back = official_from_torchvision(tv, small)
    assert set(back) == set(official)
    for k, v in official.items():
        assert torch.equal(back[k], v), k
    # a torchvision-layout file loads and gives the same flow
    torch.save(tv, tmp_path / ("raft_small_C_T_V2-x.pth" if small else "raft_large_C_T_V2-x.pth"))
    loaded = load_raft(next(tmp_path.iterdir()))
    assert loaded.cfg.small == small
    x, y = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, y, iters=2), model(x, y, iters=2))


def test_torchvision_mapping_rejects_foreign_keys():
    tv = torchvision_from_official(random_model(True).state_dict(), True)
    tv.pop("update_block.flow_head.conv2.bias")
    with pytest.raises(InputError, match="missing"):
        official_from_torchvision(tv, True)


def test_wrong_variant_is_reported(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(random_model(True).state_dict(), path)
    with pytest.raises(InputError, match="RAFT-small weights but RAFT-large"):
        load_raft(path, small=False)


def test_missing_weights_say_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(raft.CHECKPOINT_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        load_raft(small=True)
    msg = str(err.value)
    assert raft.OFFICIAL_MODELS_URL in msg and "models/raft-small.pth" in msg
    assert str(tmp_path / ".cache" / "monodyn") in msg and raft.CHECKPOINT_ENV in msg
    with pytest.raises(WeightsNotFoundError, match="raft-things.pth"):
        load_raft(small=False)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_raft(tmp_path / "nope.pth")
    monkeypatch.setenv(raft.CHECKPOINT_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsNotFoundError, match=raft.CHECKPOINT_ENV):
        load_raft()


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(raft.CHECKPOINT_ENV, raising=False)
    cache = tmp_path / ".cache" / "monodyn"
    cache.mkdir(parents=True)
    torch.save(random_model(False).state_dict(), cache / "raft-things.pth")
    assert not load_raft().cfg.small  # only the large file in the cache
    env_file = tmp_path / "env.pth"
    torch.save(random_model(True).state_dict(), env_file)
    monkeypatch.setenv(raft.CHECKPOINT_ENV, str(env_file))
    assert load_raft().cfg.small  # the environment variable wins over the cache
    assert not load_raft(cache / "raft-things.pth").cfg.small  # an explicit path wins over both


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "raft-small.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_raft(bad)


# ------------------------------------------------------------------------------------------ real weights

@needs_weights
@pytest.mark.parametrize("dx,dy", [(3.0, -2.0), (1.5, 0.25)])
def test_raft_small_recovers_translation(dx, dy):
    model = load_raft(RAFT_SMALL)
    tex = texture(0)
    flow = estimate_flow(model, tex[None].astype(np.float32), translate(tex, dx, dy)[None].astype(np.float32), iters=12)
    assert flow.shape == (1, 96, 128, 2)
    inner = flow[0, 10:-10, 10:-10]
    epe = (inner - torch.tensor([dx, dy])).norm(dim=-1)
    # RAFT-small on this texture: mean EPE 0.13-0.17 px (a slight under-estimate of sub-pixel motion)
    assert epe.mean() < 0.3, float(epe.mean())
    torch.testing.assert_close(inner.mean((0, 1)), torch.tensor([dx, dy]), atol=0.25, rtol=0)


@needs_weights
def test_estimate_flow_uint8_and_float_agree():
    model = load_raft(RAFT_SMALL)
    tex = texture(2, 64, 64)
    a = np.clip(tex * 255 + 0.5, 0, 255).astype(np.uint8)
    b = np.clip(translate(tex, 2.0, 1.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    from_u8 = estimate_flow(model, a[None], b[None], iters=4)
    from_float = estimate_flow(model, a[None] / np.float32(255), b[None] / np.float32(255), iters=4)
    torch.testing.assert_close(from_u8, from_float, atol=1e-3, rtol=0)
