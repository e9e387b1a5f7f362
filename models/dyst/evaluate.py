"""DyST evaluation: contrastiveness R_cam / R_dyn and novel-view PSNR on held-out synthetic scenes, PSNR on
held-out frames of real clips.

Contrastiveness (formula inferred, ../shared/METHODS.md section 2): for one scene's 25 views,

    R_cam = mean |c_i - c_j| over pairs with the same camera (other pose)
            / mean |c_i - c_j| over pairs with different cameras
    R_dyn = mean |d_i - d_j| over pairs with the same pose (other camera)
            / mean |d_i - d_j| over pairs with different poses

with c, d the camera / dynamics latents estimated from each view itself (Euclidean distance); averaged over
scenes. Lower is better: 0 when a latent ignores everything but its own factor, ~1 when it ignores its factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.dyst.data import TrainingSet, input_frames, squash, train_frames, wrap_degrees
from models.dyst.model import DyST


def contrastiveness(latents: Float[Tensor, "N L"], factor: Int[Tensor, " N"]) -> float:
    """Mean distance between latents of views sharing `factor` / mean distance between views that do not."""
    d = torch.cdist(latents.double(), latents.double())
    same = factor[:, None] == factor[None, :]
    off = ~torch.eye(len(factor), dtype=torch.bool, device=latents.device)
    match, other = d[same & off], d[~same]
    if match.numel() == 0 or other.numel() == 0:
        raise ValueError("contrastiveness needs pairs that share the factor and pairs that do not")
    return float(match.mean() / other.mean().clamp_min(1e-12))


def decoder_gram(decode: Callable[[Tensor], Tensor], latents: Float[Tensor, "N L"], rel_step: float = 0.02
                 ) -> Float[Tensor, "L L"]:
    """G = mean over the N views of J^T J, J = d decode(latents)[n] / d latents[n] (central differences, step
    `rel_step` x the latents' std). `decode` maps (N, L) latents to (N, ...) outputs, row n from latent n alone.
    |G^(1/2) (a - b)| is how far apart two latents are *for the decoder*: directions it ignores count zero."""
    N, L = latents.shape
    eps = rel_step * float(latents.std().clamp_min(1e-6))
    cols = []
    for k in range(L):
        step = torch.zeros_like(latents)
        step[:, k] = eps
        cols.append(((decode(latents + step) - decode(latents - step)) / (2 * eps)).reshape(N, -1))
    J = torch.stack(cols, -1).double()  # (N, outputs, L)
    return torch.einsum("npl,npm->lm", J, J) / N


def decoder_contrastiveness(decode: Callable[[Tensor], Tensor], latents: Float[Tensor, "N L"],
                            factor: Int[Tensor, " N"]) -> float:
    """`contrastiveness` with distances measured through the decoder (`decoder_gram`): is the part of a latent
    that the decoder reads invariant to the other factor? (It rules out unused latent directions as the cause
    of a high ratio.)"""
    G = decoder_gram(decode, latents)
    vals, vecs = torch.linalg.eigh(G)
    root = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    return contrastiveness(latents.double() @ root, factor)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


@dataclass
class SynthReport:
    scenes: int
    r_cam: float
    r_dyn: float
    psnr_self: float  # latents estimated from the target itself
    psnr_swap: float  # camera latent from the same camera at another pose, dynamics from the same pose elsewhere
    psnr_orbit: float  # camera latent from the orbit head (another camera of the same pose + the true move)
    psnr_still: float  # baseline for the head: that other camera's latent unchanged
    psnr_inputs: float  # the 3 input views themselves, latents from themselves
    psnr_dynamic_own: float  # novel views, pixels where the objects are (this or another pose), own latents
    psnr_dynamic_other: float  # the same pixels with the dynamics latent of another pose (same camera)


def _scene_inputs(n_views: int, n_inputs: int, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 7])
    return sorted(int(i) for i in rng.choice(n_views, n_inputs, replace=False))


def grid_factors(n_poses: int, n_cams: int) -> tuple[Int[Tensor, " N"], Int[Tensor, " N"]]:
    """(pose, camera) of each of the grid's N = n_poses x n_cams views."""
    index = torch.arange(n_poses * n_cams)
    return index // n_cams, index % n_cams


def scene_latents(model: DyST, ts: TrainingSet, scene: int, device: str | torch.device = "cpu"
                  ) -> tuple[Float[Tensor, "N h w 3"], Float[Tensor, "N M D"], Float[Tensor, "N L"], Float[Tensor, "N L"]]:
    """One held-out scene as evaluated: its N views, Z from its 3 fixed input views (expanded to N), and the
    camera and dynamics latents estimated from each view itself."""
    P, C = ts.synth_rgb.shape[1:3]
    views = torch.from_numpy(np.asarray(ts.synth_rgb[scene], dtype=np.float32) / 255.0)
    views = views.reshape(P * C, ts.height, ts.width, 3).to(device)
    z = model.encode(views[_scene_inputs(P * C, model.cfg.input_views, scene)][None]).expand(P * C, -1, -1)
    cam, dyn = model.estimate(z, views)
    return views, z, cam, dyn


@torch.no_grad()
def evaluate_synth(model: DyST, ts: TrainingSet, device: str | torch.device = "cpu", max_scenes: int | None = None
                   ) -> SynthReport:
    """Every view of every held-out scene (3 fixed inputs per scene, the other 22 are novel)."""
    model.eval()
    S, P, C = ts.synth_rgb.shape[:3]
    S = S if max_scenes is None else min(S, max_scenes)
    h, w = ts.height, ts.width
    rc, rd, ps, pw, po, pst, pin, pdo, pdw = [], [], [], [], [], [], [], [], []
    pose_of, cam_of = grid_factors(P, C)
    for s in range(S):
        views, z, cam, dyn = scene_latents(model, ts, s, device)
        inputs = _scene_inputs(P * C, model.cfg.input_views, s)
        rc.append(contrastiveness(cam.cpu(), cam_of))
        rd.append(contrastiveness(dyn.cpu(), pose_of))
        novel = [i for i in range(P * C) if i not in inputs]
        pose, cams = pose_of.to(device), cam_of.to(device)
        # swap partners: the next pose with the same camera, the next camera with the same pose
        cam_src = ((pose + 1) % P) * C + cams
        dyn_src = pose * C + (cams + 1) % C
        az = torch.as_tensor(ts.synth_azimuth[s], dtype=torch.float32, device=device)
        el = torch.as_tensor(ts.synth_elevation[s], dtype=torch.float32, device=device)
        daz = torch.as_tensor(wrap_degrees((az[cams] - az[dyn_src % C]).cpu().numpy()), device=device)
        orbit_cam = model.orbit(cam[dyn_src], daz.float(), el[cams] - el[dyn_src % C])
        imgs = {
            "self": model.render_image(z, cam, dyn, h, w),
            "swap": model.render_image(z, cam[cam_src], dyn[dyn_src], h, w),
            "orbit": model.render_image(z, orbit_cam, dyn[dyn_src], h, w),
            "still": model.render_image(z, cam[dyn_src], dyn[dyn_src], h, w),
        }
        # does the decoder use the dynamics latent? pixels where the objects are, own vs another pose's latent
        other_pose = ((pose + 2) % P) * C + cams
        wrong = model.render_image(z, cam, dyn[other_pose], h, w)
        mask = ((views - views[other_pose]).abs().amax(-1) > 0.08)[novel]
        if bool(mask.any()):
            pdo.append(psnr(imgs["self"][novel][mask], views[novel][mask]))
            pdw.append(psnr(wrong[novel][mask], views[novel][mask]))
        ps.append(psnr(imgs["self"][novel], views[novel]))
        pw.append(psnr(imgs["swap"][novel], views[novel]))
        po.append(psnr(imgs["orbit"][novel], views[novel]))
        pst.append(psnr(imgs["still"][novel], views[novel]))
        pin.append(psnr(imgs["self"][inputs], views[inputs]))
    return SynthReport(S, float(np.mean(rc)), float(np.mean(rd)), float(np.mean(ps)), float(np.mean(pw)),
                       float(np.mean(po)), float(np.mean(pst)), float(np.mean(pin)),
                       float(np.mean(pdo)) if pdo else float("nan"), float(np.mean(pdw)) if pdw else float("nan"))


@torch.no_grad()
def evaluate_real(model: DyST, clips: list[np.ndarray], device: str | torch.device = "cpu") -> list[float]:
    """Per clip: PSNR on its held-out frames (t % 4 == 2, never seen in training), inputs spread over the
    training frames, latents estimated from the held-out frame itself (as in real-clip training)."""
    model.eval()
    h, w = model.cfg.height, model.cfg.width
    out = []
    for clip in clips:
        frames = squash(clip, h, w).to(device)
        train = train_frames(len(frames))
        held = np.setdiff1d(np.arange(len(frames)), train)
        if len(held) == 0:
            out.append(float("nan"))
            continue
        z = model.encode(frames[input_frames(train, model.cfg.input_views)][None]).expand(len(held), -1, -1)
        target = frames[held]
        cam, dyn = model.estimate(z, target)
        out.append(psnr(model.render_image(z, cam, dyn, h, w), target))
    return out
