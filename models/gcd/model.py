"""The GCD network on diffusers components (Van Hoorick et al. 2024, basilevh/gcd; ../shared/METHODS.md section 1).

Stable Video Diffusion's parts, patched as GCD patches them:

- `GCDUNet`: diffusers' `UNetSpatioTemporalConditionModel` (8 input channels: the noisy target latents and
  the VAE latents of every input frame, frame by frame) plus GCD's `SphericalEmbedder` (13 features of the
  per-frame camera delta -> Linear(13, 128)) and `aux_label_emb` (128 -> D -> D, D = the time-embedding
  width, 1280 at full size) whose output is added to the time embedding *per frame*. fps / motion bucket /
  cond_aug micro-conditioning stays (`add_embedding`). Cross-attention gets one image token per frame
  (diffusers repeats SVD's single token over the frames; GCD does not); the temporal blocks read frame 0's.
- `AutoencoderKLTemporalDecoder`: the VAE. Target latents are scaled by `vae.config.scaling_factor`; the
  conditioning latents are the posterior *mode* of the noise-augmented input frames, unscaled (as in sgm).
- an image encoder giving one token per frame: CLIP ViT-H/14 (`transformers.CLIPVisionModelWithProjection`)
  for the official weights, or `FrameEncoder`, a small conv net trained with the small model (a randomly
  initialised CLIP carries almost nothing; see docs/gcd.md for the measurement).

`GCDModel` bundles them with `GCDConfig` (sizes, conditioning constants, format version) and saves a
diffusers-style folder: `gcd.json` + `unet/`, `vae/`, `image_encoder/` (each config.json + safetensors).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from jaxtyping import Float
from torch import Tensor, nn

from models.errors import InputError

FORMAT_VERSION = 1
CONFIG_FILE = "gcd.json"
WARP_CHANNELS = 5  # VAE latents of the warped frames (4) + the warp's validity mask at latent size (1)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class GCDConfig:
    """Everything besides the three networks' own configs that a GCD model needs (saved as gcd.json)."""

    version: int = FORMAT_VERSION
    height: int = 48
    """Frame size the model works at (pixels); inputs are resized to it, outputs back to the asked size."""
    width: int = 64
    num_frames: int = 14
    image_encoder: str = "frame"  # "frame" (FrameEncoder) or "clip" (CLIPVisionModelWithProjection)
    fps_id: float = 12.0
    """fps micro-conditioning (GCD: 24 / frame stride)."""
    cond_aug: float = 0.02
    """Noise added to the input frames (pixels in [-1, 1]) before the VAE; also a micro-conditioning value."""
    motion_norm: tuple[float, float] = (180.0, 45.0)
    """(Δazimuth, Δelevation) in degrees that map to motion bucket 255 (GCD max90: (90, 30); max180: (180, 60))."""
    radius_scale: float = 1.0
    """The camera embedder's Δr = radius_scale * (r_target / r_input - 1): 1 for our models (SfM scale is
    arbitrary, so the change is relative); 15 for the official weights (Kubric cameras at ~15 m, Δr in metres)."""
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    p_mean: float = 1.0
    p_std: float = 1.6
    max_delta: tuple[float, float, float] = (180.0, 45.0, 0.3)
    """The largest |Δazimuth| (deg), |Δelevation| (deg) and |Δr / r| the model was trained for; beyond is an error."""
    mode: str = "direct"
    """The camera trajectory the model renders by default: "direct" or "gradual" (the official checkpoints are
    trained for one of them; the small model for both)."""
    vae_space: str = "rgb"
    """What the VAE codes: "rgb" (SVD, the official weights) or "opponent" (luma + `chroma_gain` x two chroma
    channels: a small 4x VAE trained for minutes drops chroma in RGB but keeps it here, docs/gcd.md)."""
    chroma_gain: float = 3.0
    warp: bool = False
    """The UNet also takes the input frames warped into the target cameras by depth (`warp.py`): their VAE latents
    and the validity mask, WARP_CHANNELS more input channels after the 8 (small models only; the official
    architecture is GCD's)."""
    notes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(d: dict) -> "GCDConfig":
        d = dict(d)
        for key in ("motion_norm", "max_delta"):
            if key in d:
                d[key] = tuple(d[key])
        known = {f for f in GCDConfig.__dataclass_fields__}
        return GCDConfig(**{k: v for k, v in d.items() if k in known})


# ---- the VAE's colour space ------------------------------------------------------------------------------

# luma and two opponent chroma axes (red-green, yellow-blue) of RGB in [-1, 1]; invertible
OPPONENT = ((1 / 3, 1 / 3, 1 / 3), (0.5, -0.5, 0.0), (0.25, 0.25, -0.5))


def _opponent_matrix(chroma_gain: float) -> Float[Tensor, "3 3"]:
    m = torch.tensor(OPPONENT, dtype=torch.float64)
    m[1:] *= chroma_gain
    return m


def rgb_to_opponent(x: Float[Tensor, "*B 3 H W"], chroma_gain: float) -> Float[Tensor, "*B 3 H W"]:
    """RGB -> (luma, gain x red-green, gain x yellow-blue), channels at dim -3. A grey pixel has zero chroma."""
    return torch.einsum("ij,...jhw->...ihw", _opponent_matrix(chroma_gain).to(x), x)


def opponent_to_rgb(y: Float[Tensor, "*B 3 H W"], chroma_gain: float) -> Float[Tensor, "*B 3 H W"]:
    """The inverse of `rgb_to_opponent`."""
    return torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_opponent_matrix(chroma_gain)).to(y), y)


# ---- camera embedding ------------------------------------------------------------------------------------

def spherical_features(deltas: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 13"]:
    """GCD's 13 camera features: [cos, sin] of Δazimuth and of Δelevation (radians) at 1x, 2x, 4x, then raw Δr."""
    az, el, dr = deltas[..., 0], deltas[..., 1], deltas[..., 2]
    feats = []
    for angle in (az, el):
        for k in (1.0, 2.0, 4.0):
            feats += [torch.cos(angle * k), torch.sin(angle * k)]
    return torch.stack(feats + [dr], dim=-1)


class SphericalEmbedder(nn.Module):
    """(Δaz rad, Δel rad, Δr) per frame -> 13 features -> Linear(13, dim) (sgm: conditioner.embedders.5)."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.proj = nn.Linear(13, dim)

    def forward(self, deltas: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B D"]:
        return self.proj(spherical_features(deltas))


class GCDUNet(UNetSpatioTemporalConditionModel):
    """SVD's spatio-temporal UNet with GCD's per-frame camera embedding and per-frame image tokens."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                             "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                           "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int] = 2,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 14,
        camera_embed_dim: int = 128,
    ):
        super().__init__(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                         down_block_types=down_block_types, up_block_types=up_block_types,
                         block_out_channels=block_out_channels, addition_time_embed_dim=addition_time_embed_dim,
                         projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
                         layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
                         transformer_layers_per_block=transformer_layers_per_block,
                         num_attention_heads=num_attention_heads, num_frames=num_frames)
        width = block_out_channels[0] * 4
        self.camera_embedder = SphericalEmbedder(camera_embed_dim)
        self.aux_label_emb = nn.Sequential(nn.Linear(camera_embed_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, sample: Float[Tensor, "B T C h w"], c_noise: Float[Tensor, " B"],
                tokens: Float[Tensor, "B T 1 D"], added_time_ids: Float[Tensor, "B 3"],
                deltas: Float[Tensor, "B T 3"]) -> Float[Tensor, "B T 4 h w"]:
        """One network evaluation: `c_noise` = the EDM noise input (0.25 ln σ), `deltas` = (Δaz rad, Δel rad,
        Δr) per frame, `tokens` = one image token per frame."""
        B, T = sample.shape[:2]
        emb = self.time_embedding(self.time_proj(c_noise.reshape(-1).expand(B)).to(sample.dtype))
        micro = self.add_time_proj(added_time_ids.flatten()).reshape(B, -1).to(emb.dtype)
        emb = emb + self.add_embedding(micro)
        emb = emb.repeat_interleave(T, dim=0)
        emb = emb + self.aux_label_emb(self.camera_embedder(deltas.to(emb.dtype))).reshape(B * T, -1)
        context = tokens.reshape(B * T, tokens.shape[2], tokens.shape[3]).to(sample.dtype)
        indicator = torch.zeros(B, T, dtype=sample.dtype, device=sample.device)

        up_factor = 2 ** self.num_upsamplers
        forward_size = any(s % up_factor for s in sample.shape[-2:])
        h = self.conv_in(sample.flatten(0, 1))
        skips = (h,)
        for block in self.down_blocks:
            kw = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **kw)
            skips += res
        h = self.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        for i, block in enumerate(self.up_blocks):
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            size = skips[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            kw = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size,
                      image_only_indicator=indicator, **kw)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return h.reshape(B, T, *h.shape[1:])


class FrameEncoder(ModelMixin, ConfigMixin):
    """A small conv image encoder giving one token per frame (stands in for CLIP in the small models)."""

    @register_to_config
    def __init__(self, out_dim: int = 64, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c_in, out_dim)

    def forward(self, images: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N D"]:
        """images in [-1, 1]."""
        h = self.body(images)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1))


# ---- configs ---------------------------------------------------------------------------------------------

def small_configs(height: int = 48, width: int = 64, channels: tuple[int, ...] = (32, 64),
                  vae_channels: tuple[int, ...] = (32, 64, 64), token_dim: int = 64, warp: bool = False) -> dict:
    """Configs of the small model trained here (the same classes as the official one).

    The VAE downsamples 2^(len(vae_channels) - 1) times (4x by default, as SVD's 8x is at 8x the size) and codes
    the opponent colour space: in RGB a 4x VAE of this class trained for minutes on a CPU keeps almost no
    colour (docs/gcd.md). With `warp` the UNet takes WARP_CHANNELS more inputs (`GCDModel.warp_latents`).
    With 3+ UNet levels the first one has no transformer (spatial self-attention over
    every latent pixel is the cost); the inner levels have them, as SVD's do.
    """
    n = len(channels)
    if n < 2:
        raise ValueError(f"the small GCD UNet needs at least 2 levels, got channels {channels}")
    if n == 2:
        down = ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal")
    else:
        down = ("DownBlockSpatioTemporal",) + ("CrossAttnDownBlockSpatioTemporal",) * (n - 2) + ("DownBlockSpatioTemporal",)
    up = tuple("CrossAttnUpBlockSpatioTemporal" if "CrossAttn" in b else "UpBlockSpatioTemporal" for b in reversed(down))
    return {
        "gcd": GCDConfig(height=height, width=width, vae_space="opponent", warp=warp),
        "unet": dict(in_channels=8 + (WARP_CHANNELS if warp else 0), out_channels=4, block_out_channels=channels,
                     down_block_types=down, up_block_types=up,
                     addition_time_embed_dim=32, projection_class_embeddings_input_dim=96, layers_per_block=1,
                     cross_attention_dim=token_dim, num_attention_heads=tuple(max(1, c // 32) for c in channels),
                     num_frames=14, camera_embed_dim=128),
        "vae": dict(block_out_channels=vae_channels, down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
                    layers_per_block=1, latent_channels=4, scaling_factor=1.0),
        "image_encoder": dict(out_dim=token_dim),
    }


def official_configs() -> dict:
    """SVD img2vid (14 frames) sizes, as GCD fine-tunes them, at 384x256."""
    return {
        "gcd": GCDConfig(height=256, width=384, image_encoder="clip", fps_id=24.0, motion_norm=(90.0, 30.0),
                         radius_scale=15.0, max_delta=(180.0, 60.0, 0.5)),
        "unet": dict(in_channels=8, out_channels=4, num_frames=14),  # the class defaults are SVD's
        "vae": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    layers_per_block=2, latent_channels=4, scaling_factor=0.18215),
        "image_encoder": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                              num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024,
                              hidden_act="gelu"),
    }


# ---- the bundle ------------------------------------------------------------------------------------------

class GCDModel(nn.Module):
    """UNet + VAE + image encoder + GCDConfig, with the denoiser (EDM, v-parameterisation) and conditioning."""

    def __init__(self, cfg: GCDConfig, unet: GCDUNet, vae: AutoencoderKLTemporalDecoder, image_encoder: nn.Module):
        super().__init__()
        self.cfg, self.unet, self.vae, self.image_encoder = cfg, unet, vae, image_encoder

    @staticmethod
    def from_configs(configs: dict, seed: int = 0) -> "GCDModel":
        """Randomly initialised (deterministic for `seed`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cfg = configs["gcd"]
            unet = GCDUNet(**configs["unet"])
            vae = AutoencoderKLTemporalDecoder(**configs["vae"])
            if cfg.image_encoder == "clip":
                from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

                enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs["image_encoder"]))
            else:
                enc = FrameEncoder(**configs["image_encoder"])
        return GCDModel(cfg, unet, vae, enc)

    # -- files
    def save(self, folder: Path, dtype: torch.dtype | None = None) -> Path:
        """A diffusers-style folder: gcd.json, unet/, vae/, image_encoder/ (config.json + safetensors each)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("unet", "vae", "image_encoder"):
            module = getattr(self, name)
            if dtype is not None:
                module = _copy_as(module, dtype)
            module.save_pretrained(folder / name, safe_serialization=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.cfg.to_json(), indent=1))
        return folder

    @staticmethod
    def load(folder: Path) -> "GCDModel":
        folder = Path(folder)
        path = folder / CONFIG_FILE
        if not path.exists():
            raise InputError(f"{folder} is not a GCD model folder (no {CONFIG_FILE}); give a folder written by "
                             f"`monodyn train gcd` or an official *.ckpt file")
        try:
            cfg = GCDConfig.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError):
            raise InputError(f"{path} is corrupt (not the JSON config `monodyn train gcd` writes): train the model "
                             "again or re-download it") from None
        if cfg.version != FORMAT_VERSION:
            raise InputError(f"{folder} is GCD model format {cfg.version}, this monodyn reads format "
                             f"{FORMAT_VERSION}: retrain with `monodyn train gcd` or re-download the model")
        if cfg.vae_space not in ("rgb", "opponent"):
            raise InputError(f"{path}: vae_space must be \"rgb\" or \"opponent\", got {cfg.vae_space!r}")
        unet = GCDUNet.from_pretrained(folder / "unet", torch_dtype=torch.float32, low_cpu_mem_usage=False)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae", torch_dtype=torch.float32, low_cpu_mem_usage=False)
        if cfg.image_encoder == "clip":
            from transformers import CLIPVisionModelWithProjection

            enc = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", torch_dtype=torch.float32)
        else:
            enc = FrameEncoder.from_pretrained(folder / "image_encoder", torch_dtype=torch.float32, low_cpu_mem_usage=False)
        return GCDModel(cfg, unet, vae, enc).eval()

    # -- conditioning
    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def image_tokens(self, frames: Float[Tensor, "B T 3 H W"]) -> Float[Tensor, "B T 1 D"]:
        """One token per clean input frame (pixels in [-1, 1])."""
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1)
        if self.cfg.image_encoder == "clip":
            size = int(self.image_encoder.config.image_size)  # 224 for ViT-H/14
            x = F.interpolate((x + 1) / 2, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
            out = self.image_encoder(pixel_values=(x - mean) / std).image_embeds
        else:
            out = self.image_encoder(x)
        return out.reshape(B, T, 1, -1)

    def to_vae_space(self, pixels: Float[Tensor, "*B 3 H W"]) -> Float[Tensor, "*B 3 H W"]:
        """RGB in [-1, 1] -> what the VAE codes (`GCDConfig.vae_space`)."""
        return rgb_to_opponent(pixels, self.cfg.chroma_gain) if self.cfg.vae_space == "opponent" else pixels

    def from_vae_space(self, x: Float[Tensor, "*B 3 H W"]) -> Float[Tensor, "*B 3 H W"]:
        return opponent_to_rgb(x, self.cfg.chroma_gain) if self.cfg.vae_space == "opponent" else x

    def encode_latents(self, frames: Float[Tensor, "B T 3 H W"], sample: bool = False,
                       generator: torch.Generator | None = None) -> Float[Tensor, "B T 4 h w"]:
        """VAE latents (posterior mode, or a sample), unscaled, of RGB frames in [-1, 1]."""
        B, T = frames.shape[:2]
        dist = self.vae.encode(self.to_vae_space(frames.flatten(0, 1))).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z.reshape(B, T, *z.shape[1:])

    def decode_latents(self, z: Float[Tensor, "B T 4 h w"]) -> Float[Tensor, "B T 3 H W"]:
        """Unscaled latents -> pixels in [-1, 1] (the temporal decoder sees each clip's frames together)."""
        B, T = z.shape[:2]
        x = self.from_vae_space(self.vae.decode(z.flatten(0, 1), num_frames=T).sample)
        return x.reshape(B, T, *x.shape[1:])

    def conditioning(self, frames: Float[Tensor, "B T 3 H W"], generator: torch.Generator | None = None
                     ) -> tuple[Float[Tensor, "B T 1 D"], Float[Tensor, "B T 4 h w"]]:
        """(per-frame image tokens, per-frame VAE latents of the noise-augmented frames)."""
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        return self.image_tokens(frames), self.encode_latents(frames + self.cfg.cond_aug * noise)

    def warp_latents(self, warped: Float[Tensor, "B T 3 H W"], mask: Float[Tensor, "B T H W"]
                     ) -> Float[Tensor, "B T 5 h w"]:
        """The warp conditioning: VAE latents (posterior mode, unscaled) of the warped frames in [-1, 1] with
        invalid pixels at 0, and the fraction of valid pixels under each latent pixel."""
        z = self.encode_latents(warped * mask[:, :, None])
        m = F.adaptive_avg_pool2d(mask.flatten(0, 1)[:, None].to(z.dtype), z.shape[-2:])
        return torch.cat([z, m.reshape(*z.shape[:2], 1, *z.shape[-2:])], dim=2)

    def micro_conditioning(self, deltas_deg: Float[Tensor, "B T 3"]) -> Float[Tensor, "B 3"]:
        """[fps_id, motion bucket, cond_aug] per clip; the motion bucket is the camera move's size (GCD):
        255 * |(Δaz, Δel)| / |motion_norm| of the largest move in the clip, in degrees."""
        move = deltas_deg[..., :2].norm(dim=-1).amax(dim=1)
        bucket = (255.0 * move / math.hypot(*self.cfg.motion_norm)).round().clamp(0, 255)
        B = deltas_deg.shape[0]
        fps = torch.full((B,), self.cfg.fps_id, device=deltas_deg.device)
        aug = torch.full((B,), self.cfg.cond_aug, device=deltas_deg.device)
        return torch.stack([fps, bucket, aug], dim=1)

    def embed_deltas(self, deltas_deg: Float[Tensor, "B T 3"]) -> Float[Tensor, "B T 3"]:
        """(Δaz deg, Δel deg, Δr relative) -> the camera embedder's input (radians, radius_scale * Δr)."""
        return torch.stack([torch.deg2rad(deltas_deg[..., 0]), torch.deg2rad(deltas_deg[..., 1]),
                            self.cfg.radius_scale * deltas_deg[..., 2]], dim=-1)

    def denoise(self, x: Float[Tensor, "B T 4 h w"], sigma: Float[Tensor, " B"], tokens: Float[Tensor, "B T 1 D"],
                concat: Float[Tensor, "B T C h w"], micro: Float[Tensor, "B 3"], deltas_deg: Float[Tensor, "B T 3"]
                ) -> Float[Tensor, "B T 4 h w"]:
        """EDM denoiser with v-parameterisation (σ_data = 1): D(x) = c_skip x + c_out F(c_in x, c_noise).
        `concat`: the input frames' latents, then (`cfg.warp`) the `warp_latents` (B T 9 h w in all)."""
        s = sigma.reshape(-1, 1, 1, 1, 1)
        c_skip, c_out, c_in = 1 / (s ** 2 + 1), -s / (s ** 2 + 1).sqrt(), 1 / (s ** 2 + 1).sqrt()
        c_noise = 0.25 * sigma.log()
        out = self.unet(torch.cat([c_in * x, concat], dim=2), c_noise, tokens, micro, self.embed_deltas(deltas_deg))
        return c_skip * x + c_out * out


def _copy_as(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def gradual_deltas(end: Float[Tensor, "*B 3"], num_frames: int) -> Float[Tensor, "*B T 3"]:
    """GCD's gradual trajectory: frame t is lerp(0, end, t / (T - 1)) (frame 0 = the input view, last = end)."""
    w = torch.linspace(0.0, 1.0, num_frames, device=end.device)
    return end[..., None, :] * w[:, None]


def with_warp_inputs(model: GCDModel) -> GCDModel:
    """The same model taking the warp conditioning too (`GCDConfig.warp`): the UNet's first convolution gets
    WARP_CHANNELS more input channels with zero weights, so the new model starts out computing exactly what
    `model` computes and training can start from it."""
    if model.cfg.warp:
        return model
    import copy

    config = dict(model.unet.config)
    config["in_channels"] = int(config["in_channels"]) + WARP_CHANNELS
    unet = GCDUNet.from_config(config)
    state = dict(model.unet.state_dict())
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], WARP_CHANNELS, *w.shape[2:])], dim=1)
    unet.load_state_dict(state)
    cfg = copy.deepcopy(model.cfg)
    cfg.warp = True
    return GCDModel(cfg, unet.to(w), model.vae, model.image_encoder)
