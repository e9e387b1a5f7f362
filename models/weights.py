"""Where pretrained weights come from.

Order (DESIGN.md, Weights): an explicit path the caller got from a `--*-checkpoint` option, then the
component's environment variable, then the monodyn cache folder (`$MONODYN_CACHE`, default
`~/.cache/monodyn`), then for Hugging Face models the local Hugging Face cache. Nothing is downloaded at run
time: when no copy is found the error says exactly what to download and where to put it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import WeightsNotFoundError


@dataclass(frozen=True)
class WeightSpec:
    name: str                   # short name used in messages and `monodyn doctor`
    env: str                    # environment variable holding a path
    filenames: tuple[str, ...]  # names looked for in the cache folder
    source: str                 # where a person gets the file (URL or Hugging Face id)
    hub_id: str | None = None   # Hugging Face id loaded with from_pretrained(local_files_only=True)


KNOWN: dict[str, WeightSpec] = {s.name: s for s in [
    WeightSpec("raft-small", "MONODYN_RAFT_CHECKPOINT", ("raft-small.pth", "raft-small.safetensors"),
               "models.zip of the official RAFT repository (princeton-vl/RAFT, download_models.sh)"),
    WeightSpec("raft-things", "MONODYN_RAFT_CHECKPOINT", ("raft-things.pth", "raft-things.safetensors"),
               "models.zip of the official RAFT repository (princeton-vl/RAFT, download_models.sh)"),
    WeightSpec("sam-vit_b", "MONODYN_SAM_VIT_B", ("sam_vit_b_01ec64.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
    WeightSpec("sam-vit_l", "MONODYN_SAM_VIT_L", ("sam_vit_l_0b3195.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    WeightSpec("sam-vit_h", "MONODYN_SAM_VIT_H", ("sam_vit_h_4b8939.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    WeightSpec("sam2-video", "MONODYN_SAM2", ("sam2",), "Hugging Face facebook/sam2.1-hiera-tiny",
               hub_id="facebook/sam2.1-hiera-tiny"),
    WeightSpec("depth-anything", "MONODYN_DEPTH_ANYTHING", ("depth-anything",),
               "Hugging Face depth-anything/Depth-Anything-V2-Small-hf",
               hub_id="depth-anything/Depth-Anything-V2-Small-hf"),
    WeightSpec("ldm3d", "MONODYN_LDM3D", ("ldm3d-4c",), "Hugging Face Intel/ldm3d-4c (the 4-channel RGB-D LDM3D)",
               hub_id="Intel/ldm3d-4c"),
    WeightSpec("animatediff-base", "MONODYN_ANIMATEDIFF_BASE", ("stable-diffusion-v1-5",),
               "Hugging Face stable-diffusion-v1-5/stable-diffusion-v1-5 (AnimateDiff's image model)",
               hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5"),
    WeightSpec("animatediff", "MONODYN_ANIMATEDIFF", ("animatediff-motion-adapter-v1-5-2",),
               "Hugging Face guoyww/animatediff-motion-adapter-v1-5-2 (AnimateDiff's motion adapter)",
               hub_id="guoyww/animatediff-motion-adapter-v1-5-2"),
    # LPIPS v0.1 = linear calibration layers (LPIPS repository, lpips/weights/v0.1/) + ImageNet backbone
    WeightSpec("lpips-alex-lin", "MONODYN_LPIPS_ALEX", ("lpips-alex.pth", "alex.pth"),
               "lpips/weights/v0.1/alex.pth of the LPIPS repository (richzhang/PerceptualSimilarity)"),
    WeightSpec("alexnet", "MONODYN_ALEXNET", ("alexnet-owt-7be5be79.pth",),
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    WeightSpec("lpips-vgg-lin", "MONODYN_LPIPS_VGG", ("lpips-vgg.pth", "vgg.pth"),
               "lpips/weights/v0.1/vgg.pth of the LPIPS repository (richzhang/PerceptualSimilarity)"),
    WeightSpec("vgg16", "MONODYN_VGG16", ("vgg16-397923af.pth",),
               "https://download.pytorch.org/models/vgg16-397923af.pth"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("MONODYN_CACHE", Path.home() / ".cache" / "monodyn")).expanduser()


def find_weights(spec: WeightSpec, explicit: str | Path | None = None) -> Path | None:
    """The first existing candidate path, or None. An explicit path that does not exist is an error."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"{spec.name} checkpoint not found: {path}")
        return path
    env = os.environ.get(spec.env)
    if env:
        path = Path(env).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"{spec.env}={env} does not exist (it should point at the {spec.name} weights)")
        return path
    for name in spec.filenames:
        path = cache_dir() / name
        if path.exists():
            return path
    return None


def require_weights(spec: WeightSpec, explicit: str | Path | None = None, option: str | None = None) -> Path:
    """Like `find_weights` but raises a WeightsNotFoundError that says what to download and where to put it."""
    path = find_weights(spec, explicit)
    if path is None:
        how = f"pass {option} PATH, " if option else ""
        raise WeightsNotFoundError(
            f"{spec.name} weights not found: download {spec.source} and {how}set {spec.env}=PATH, "
            f"or place it at {cache_dir() / spec.filenames[0]}")
    return path


def hub_source(spec: WeightSpec, explicit: str | Path | None = None, option: str | None = None) -> str:
    """A local path or a Hugging Face id that `from_pretrained(..., local_files_only=True)` can load.

    Only checks that a local copy exists; the caller loads it with local_files_only=True and should turn an
    OSError into `offline_error(spec)`.
    """
    path = find_weights(spec, explicit)
    if path is not None:
        return str(path)
    if spec.hub_id and hf_cached(spec.hub_id):
        return spec.hub_id
    raise offline_error(spec, option)


def offline_error(spec: WeightSpec, option: str | None = None) -> WeightsNotFoundError:
    how = f"pass {option} PATH (a folder saved with save_pretrained), " if option else ""
    return WeightsNotFoundError(
        f"{spec.name} weights not found and this machine cannot download them: on a machine with internet run "
        f"`huggingface-cli download {spec.hub_id}`, copy the folder here, then {how}set {spec.env}=PATH or place "
        f"it at {cache_dir() / spec.filenames[0]}")


def hf_cached(hub_id: str) -> bool:
    """Whether a Hugging Face model id has a snapshot in the local hub cache (no network access)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(hub_id, local_files_only=True)
        return True
    except Exception:
        return False
