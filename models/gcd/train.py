"""Training GCD models: `models.fitting.run_fit` tasks for the VAE and for the diffusion model.

Data: paired clips in memory (the CLI makes them from `monodyn synth` scenes): `inputs` and `targets`
(P,T,H,W,3) uint8 (the same T times seen from the input and from the output camera) and `deltas` (P,T,3):
(Δazimuth deg, Δelevation deg, Δr / r) per frame.

1. `VAETask`: the small AutoencoderKLTemporalDecoder on short snippets of all frames (MSE + L1 + a tiny KL,
   in the model's VAE colour space); at the end its latent scaling factor is set to 1 / std of the latents.
2. `DiffusionTask`: the UNet (+ the small image encoder) with GCD's loss: one σ per video with
   log σ ~ N(p_mean, p_std²), EDM v-parameterisation weighting (σ² + 1) / σ², and the focal top-k loss
   (per frame, the kept fraction ramps 1.0 -> 0.1 over the first half of the run; loss = 0.9 top-k mean +
   0.1 mean); conditioning dropout p = 0.1 per frame on the image token and the concatenated latents. The
   VAE is frozen; target and conditioning latents are computed once (one noise-augmentation draw per clip).
   A model with `cfg.warp` also conditions on the input frames warped into the output cameras (`warp_pairs`,
   made once per pair with perturbed depth); the concatenation dropout drops them with the input latents.

All randomness comes from a generator in the task state, so a run resumed from a kill gives the same weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor

from models.files import atomic_write
from models.gcd.model import GCDModel
from models.parallel import Parallel


def to_pixels(frames: UInt8[np.ndarray, "*B H W 3"]) -> Float[Tensor, "*B 3 H W"]:
    """uint8 frames (channels last) -> float in [-1, 1], channels first."""
    x = torch.from_numpy(np.array(frames)).float() / 127.5 - 1  # a copy: memory-mapped sets are read-only
    return x.movedim(-1, -3)


def focal_loss(err: Float[Tensor, "BT K"], keep: float) -> Float[Tensor, " BT"]:
    """GCD's focal top-k: mean of the largest `keep` fraction of each row (0.9) + the row mean (0.1)."""
    if keep >= 1.0:
        return err.mean(dim=1)
    k = max(1, int(err.shape[1] * keep))
    return 0.9 * err.topk(k, dim=1).values.mean(dim=1) + 0.1 * err.mean(dim=1)


class VAETask:
    """Reconstruction training of the temporal-decoder VAE on `snippet`-frame pieces of the clips."""

    def __init__(self, model: GCDModel, frames: UInt8[np.ndarray, "N T H W 3"], *, lr: float = 1e-3,
                 batch: int = 2, snippet: int = 4, kl: float = 1e-6, seed: int = 0, total_steps: int = 1000,
                 parallel: Parallel | None = None):
        self.parallel = parallel or Parallel()
        self.parallel.check_batch(batch)
        self.model, self.frames = model.to(self.parallel.device), frames
        self.batch, self.snippet, self.kl, self.total = batch, snippet, kl, total_steps
        self.opt = torch.optim.Adam(model.vae.parameters(), lr=lr)
        self.lr = lr
        self.gen = torch.Generator().manual_seed(seed)

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        vae, par = self.model.vae.train(), self.parallel
        N, T = self.frames.shape[:2]
        clips = torch.randint(0, N, (self.batch,), generator=self.gen)
        starts = torch.randint(0, T - self.snippet + 1, (self.batch,), generator=self.gen)
        x_all = torch.stack([to_pixels(self.frames[int(c), int(s):int(s) + self.snippet])
                             for c, s in zip(clips, starts, strict=True)])
        coded_all = self.model.to_vae_space(x_all)  # the loss is taken there: in the opponent space chroma weighs more
        sample = coded_all.new_empty(0)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        self.opt.zero_grad(set_to_none=True)
        total, mse = 0.0, 0.0
        for pos in par.shards(self.batch):
            x, coded = x_all[pos].to(par.device), coded_all[pos].to(par.device)
            with par.autocast():
                dist = vae.encode(coded.flatten(0, 1)).latent_dist
                if not sample.numel():  # the posterior noise of the whole global batch, drawn once
                    sample = torch.randn((self.batch * self.snippet, *dist.mean.shape[1:]), generator=self.gen)
                eps = sample.view(self.batch, self.snippet, *dist.mean.shape[1:])[pos].flatten(0, 1).to(par.device)
                z = dist.mean + dist.std * eps
                rec = vae.decode(z, num_frames=self.snippet).sample.reshape(x.shape).float()
                loss = F.mse_loss(rec, coded) + 0.1 * (rec - coded).abs().mean() + self.kl * dist.kl().mean()
            (loss / par.accumulate).backward()
            total += float(loss.detach()) / par.accumulate
            with torch.no_grad():
                mse += float(F.mse_loss(self.model.from_vae_space(rec), x)) / par.accumulate
        par.average_gradients(list(vae.parameters()))
        self.opt.step()
        psnr = 10 * math.log10(4.0 / max(mse, 1e-10))  # RGB pixels span 2
        return {"loss": total, "psnr": psnr}

    def state_dict(self) -> dict:
        return {"vae": self.model.vae.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.vae.load_state_dict(state["vae"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def save(self, out: Path, step: int, seconds: float) -> None:
        scale = latent_scale(self.model, self.frames)
        self.model.vae.register_to_config(scaling_factor=scale)
        self.model.vae.save_pretrained(Path(out) / "vae", safe_serialization=True)
        atomic_write(Path(out) / "stage.json", lambda p: p.write_text(json.dumps(
            {"stage": "vae", "steps": step, "seconds": seconds, "scaling_factor": scale})))


@torch.no_grad()
def latent_scale(model: GCDModel, frames: np.ndarray, clips: int = 16) -> float:
    """1 / std of the VAE latents (posterior mode) over a few clips: SVD's 0.18215 for our VAE."""
    model.vae.eval()
    dev = next(model.vae.parameters()).device
    z = torch.cat([model.encode_latents(to_pixels(frames[i:i + 1]).to(dev)).cpu() for i in range(min(clips, len(frames)))])
    return float(1.0 / z.std().clamp(min=1e-6))


@torch.no_grad()
def encode_pairs(model: GCDModel, inputs: np.ndarray, targets: np.ndarray, seed: int = 0,
                 progress=None) -> tuple[Tensor, Tensor]:
    """(scaled target latents (P,T,4,h,w), unscaled conditioning latents of the noise-augmented inputs)."""
    model.vae.eval()
    dev = next(model.vae.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    zs, cs = [], []
    for i in range(len(inputs)):
        x = to_pixels(inputs[i:i + 1])
        x = (x + model.cfg.cond_aug * torch.randn(x.shape, generator=gen)).to(dev)
        zs.append(model.encode_latents(to_pixels(targets[i:i + 1]).to(dev)).cpu() * model.latent_scale)
        cs.append(model.encode_latents(x).cpu())
        if progress is not None:
            progress(i + 1)
    return torch.cat(zs), torch.cat(cs)


@torch.no_grad()
def warp_pairs(model: GCDModel, inputs: np.ndarray, depth: np.ndarray, K: np.ndarray, w2c_in: np.ndarray,
               w2c_out: np.ndarray, seed: int = 0, progress=None) -> Tensor:
    """`GCDModel.warp_latents` (P,T,5,h,w) of each pair's input frames warped into its output cameras by the
    exact depth made estimator-like (`perturb_depth`: scale and smooth errors, holes; one draw per pair)."""
    from models.gcd.warp import perturb_depth, warp_frames

    model.vae.eval()
    dev = next(model.vae.parameters()).device
    gen = torch.Generator().manual_seed(seed + 1)
    cfg, out = model.cfg, []
    for i in range(len(inputs)):
        d = perturb_depth(torch.from_numpy(np.asarray(depth[i], np.float32)), gen)
        k = torch.from_numpy(np.array(K[i]))
        H, W = d.shape[-2:]
        warped, mask = warp_frames(to_pixels(inputs[i]), d, k, torch.from_numpy(np.array(w2c_in[i])), k,
                                   torch.from_numpy(np.array(w2c_out[i])), (H, W), (0, 0, H, W), (cfg.height, cfg.width))
        out.append(model.warp_latents(warped[None].to(dev), mask[None].to(dev)).cpu())
        if progress is not None:
            progress(i + 1)
    return torch.cat(out)


class DiffusionTask:
    """GCD's diffusion training of the UNet and the image encoder (the VAE is frozen).

    Every random draw (clips, dropout, σ, noise) is made for the global batch; each process computes its shards
    of it (`Parallel`), so N processes give the gradient one process would on the whole batch."""

    def __init__(self, model: GCDModel, inputs: np.ndarray, deltas: np.ndarray, target_latents: Tensor,
                 cond_latents: Tensor, *, lr: float = 4e-4, batch: int = 1, dropout: float = 0.1,
                 focus_top: float = 0.1, focus_share: float = 0.5, seed: int = 0, warmup: int = 100,
                 parallel: Parallel | None = None):
        self.parallel = parallel or Parallel()
        self.parallel.check_batch(batch)
        self.model, self.inputs = model.to(self.parallel.device), inputs
        self.deltas = torch.as_tensor(np.array(deltas), dtype=torch.float32)  # a copy: the set is memory-mapped
        self.z, self.c = target_latents, cond_latents
        self.batch, self.dropout, self.focus_top, self.focus_share = batch, dropout, focus_top, focus_share
        self.params = list(model.unet.parameters()) + list(model.image_encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.lr, self.warmup = lr, warmup
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self) -> dict[str, Tensor]:
        """The random choices of one global batch: clips, dropout masks, σ per clip, noise."""
        g, B = self.gen, self.batch
        idx = torch.randint(0, len(self.z), (B,), generator=g)
        T = self.z.shape[1]
        keep_tokens = (torch.rand(B, T, generator=g) >= self.dropout).float()
        keep_concat = (torch.rand(B, T, generator=g) >= self.dropout).float()
        sigma = (self.model.cfg.p_mean + self.model.cfg.p_std * torch.randn(B, generator=g)).exp()
        noise = torch.randn((B, *self.z.shape[1:]), generator=g)
        return {"idx": idx, "keep_tokens": keep_tokens, "keep_concat": keep_concat, "sigma": sigma, "noise": noise}

    def loss(self, draw: dict[str, Tensor], progress: float) -> tuple[Tensor, dict]:
        """GCD's loss on the clips of `draw` (a global batch or a shard of it; the mean over its clips)."""
        m, dev = self.model, self.parallel.device
        idx = draw["idx"]
        z0, concat, d = self.z[idx].to(dev), self.c[idx].to(dev), self.deltas[idx].to(dev)
        B, T = z0.shape[:2]
        tokens = m.image_tokens(to_pixels(self.inputs[idx.numpy()]).to(dev))
        tokens = tokens * draw["keep_tokens"].to(dev)[..., None, None]
        concat = concat * draw["keep_concat"].to(dev)[..., None, None, None]
        sigma = draw["sigma"].to(dev)
        noised = z0 + sigma.view(B, 1, 1, 1, 1) * draw["noise"].to(dev)
        pred = m.denoise(noised, sigma, tokens, concat, m.micro_conditioning(d), d).float()
        w = ((sigma ** 2 + 1) / sigma ** 2).view(B, 1)
        err = ((pred - z0) ** 2).reshape(B * T, -1)
        frac = min(1.0, progress / self.focus_share) if self.focus_share > 0 else 1.0
        keep_frac = 1.0 - frac * (1.0 - self.focus_top)
        per_frame = focal_loss(err, keep_frac).view(B, T)
        loss = (w * per_frame).mean()
        return loss, {"mse": float(err.detach().mean()), "sigma": float(sigma.mean())}

    def gradients(self, step: int, progress: float) -> dict[str, float]:
        """Draw a global batch, compute this process's shards' gradients and average them over the processes."""
        par = self.parallel
        self.model.unet.train()
        self.model.image_encoder.train()
        draw = self.draw()
        self.opt.zero_grad(set_to_none=True)
        info = {"loss": 0.0, "mse": 0.0, "sigma": 0.0}
        for pos in par.shards(self.batch):
            with par.autocast():
                loss, more = self.loss({k: v[pos] for k, v in draw.items()}, progress)
            (loss / par.accumulate).backward()
            for k, v in (("loss", float(loss.detach())), *more.items()):
                info[k] += v / par.accumulate
        par.average_gradients(self.params)
        return info

    def train_step(self, step: int, progress: float) -> dict[str, float]:
        lr = self.lr * min(1.0, (step + 1) / self.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        info = self.gradients(step, progress)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return info

    def state_dict(self) -> dict:
        return {"unet": self.model.unet.state_dict(), "enc": self.model.image_encoder.state_dict(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.unet.load_state_dict(state["unet"])
        self.model.image_encoder.load_state_dict(state["enc"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])

    def save(self, out: Path, step: int, seconds: float) -> None:
        self.model.cfg.notes = {**self.model.cfg.notes, "diffusion_steps": step,
                                "diffusion_seconds": round(seconds, 1)}
        self.model.eval().save(Path(out), dtype=torch.float16)
