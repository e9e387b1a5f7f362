"""The paper's latent analysis: principal components of a clip's camera and dynamics latents, and images
decoded while one latent moves along one component (the other latent held at the clip's middle frame)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from models.dyst.model import DyST


@dataclass
class PCA:
    mean: Float[Tensor, " L"]
    components: Float[Tensor, "K L"]  # unit rows, by decreasing variance
    scores: Float[Tensor, "T K"]  # each frame's coordinates
    std: Float[Tensor, " K"]  # standard deviation along each component
    explained: Float[Tensor, " K"]  # share of the total variance


def pca(latents: Float[Tensor, "T L"], k: int | None = None) -> PCA:
    """PCA by SVD of the centred latents (k components, default all)."""
    x = latents.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    k = min(k or vh.shape[0], vh.shape[0])
    var = s ** 2 / max(len(x) - 1, 1)
    comps = vh[:k]
    # a sign convention, so plots do not flip between runs: the largest entry of each component is positive
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * sign
    return PCA(mean.float(), comps.float(), ((x - mean) @ comps.T).float(), var[:k].sqrt().float(),
               (var[:k] / var.sum().clamp_min(1e-24)).float())


@torch.no_grad()
def sweep(model: DyST, z: Float[Tensor, "1 M D"], base_camera: Float[Tensor, " L"], base_dynamics: Float[Tensor, " L"],
          which: str, p: PCA, component: int, frames: int, height: int, width: int, amount: float = 2.0
          ) -> Float[Tensor, "F H W 3"]:
    """Images with the `which` ('camera' or 'dynamics') latent at its clip mean + s * std * component, s going
    -amount -> +amount -> -amount over `frames` frames (a loop)."""
    u = torch.linspace(0, 2 * torch.pi, frames + 1, device=z.device)[:-1]
    s = -amount * torch.cos(u)
    moved = p.mean.to(z.device) + (s * p.std[component].to(z.device))[:, None] * p.components[component].to(z.device)
    cam = base_camera.expand(frames, -1)
    dyn = base_dynamics.expand(frames, -1)
    if which == "camera":
        cam = moved
    else:
        dyn = moved
    return model.render_image(z.expand(frames, -1, -1), cam, dyn, height, width)
