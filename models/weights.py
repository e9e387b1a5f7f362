"""Where pretrained weights come from.

Order (DESIGN.md, Weights): an explicit path the caller got from a `--*-checkpoint` option, then the
component's environment variable, then the monodyn cache folder (`$MONODYN_CACHE`, default
`~/.cache/monodyn`), then for Hugging Face models the local Hugging Face cache. Nothing is downloaded at run
time: when no copy is found the error says exactly what to download and where to put it, and that
`monodyn weights fetch NAME` (monodyn_cli/weights_fetch.py, the one place that downloads) gets it into the cache.
`KNOWN` is the one registry of every model: its name, files, official source, size and published checksum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.errors import InputError, WeightsNotFoundError


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained component: where monodyn looks for it and where `monodyn weights fetch` gets it."""
    name: str                   # short name used in messages, `monodyn doctor` and `monodyn weights`
    env: str                    # environment variable holding a path
    filenames: tuple[str, ...]  # names looked for in the cache folder; a fetch writes the first
    source: str                 # where a person gets the file (URL or Hugging Face id), for messages
    hub_id: str | None = None   # Hugging Face id loaded with from_pretrained(local_files_only=True)
    url: str | None = None      # the official direct download (None: a Hugging Face model)
    member: str | None = None   # the file inside the zip archive at `url` (RAFT ships one models.zip)
    sha256: str | None = None   # published sha256, or its published prefix (torchvision names files so)
    approx_bytes: int | None = None  # the file's size, about, for `weights list` before a fetch
    used_by: str = ""           # what needs it


RAFT_MODELS_ZIP = "https://www.dropbox.com/s/4j4z58wuv8o0mfz/models.zip?dl=1"  # the authors' download_models.sh
LPIPS_WEIGHTS = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1"
GCD_CHECKPOINTS = "https://gcd.cs.columbia.edu/checkpoints"  # listed in github.com/basilevh/gcd, Pretrained models
MB = 1 << 20

KNOWN: dict[str, WeightSpec] = {s.name: s for s in [
    WeightSpec("raft-small", "MONODYN_RAFT_CHECKPOINT", ("raft-small.pth", "raft-small.safetensors"),
               "models.zip of the official RAFT repository (princeton-vl/RAFT, download_models.sh)",
               url=RAFT_MODELS_ZIP, member="models/raft-small.pth", approx_bytes=4 * MB,
               used_by="preprocess --flow raft"),
    WeightSpec("raft-things", "MONODYN_RAFT_CHECKPOINT", ("raft-things.pth", "raft-things.safetensors"),
               "models.zip of the official RAFT repository (princeton-vl/RAFT, download_models.sh)",
               url=RAFT_MODELS_ZIP, member="models/raft-things.pth", approx_bytes=21 * MB,
               used_by="preprocess --flow raft (when raft-small is absent)"),
    WeightSpec("sam-vit_b", "MONODYN_SAM_VIT_B", ("sam_vit_b_01ec64.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
               url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth", approx_bytes=358 * MB,
               used_by="preprocess --segment sam"),
    WeightSpec("sam-vit_l", "MONODYN_SAM_VIT_L", ("sam_vit_l_0b3195.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
               url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth", approx_bytes=1192 * MB,
               used_by="preprocess --segment sam --sam-model vit_l"),
    WeightSpec("sam-vit_h", "MONODYN_SAM_VIT_H", ("sam_vit_h_4b8939.pth",),
               "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
               url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth", approx_bytes=2446 * MB,
               used_by="preprocess --segment sam --sam-model vit_h"),
    WeightSpec("sam2-video", "MONODYN_SAM2", ("sam2",), "Hugging Face facebook/sam2.1-hiera-tiny",
               hub_id="facebook/sam2.1-hiera-tiny", approx_bytes=149 * MB, used_by="preprocess --segment sam2"),
    WeightSpec("depth-anything", "MONODYN_DEPTH_ANYTHING", ("depth-anything",),
               "Hugging Face depth-anything/Depth-Anything-V2-Small-hf",
               hub_id="depth-anything/Depth-Anything-V2-Small-hf", approx_bytes=95 * MB,
               used_by="preprocess --depth depth-anything"),
    # Hugging Face snapshots are whole repositories: the sizes are of everything huggingface_hub downloads, about
    WeightSpec("ldm3d", "MONODYN_LDM3D", ("ldm3d-4c",), "Hugging Face Intel/ldm3d-4c (the 4-channel RGB-D LDM3D)",
               hub_id="Intel/ldm3d-4c", approx_bytes=5_000 * MB, used_by="fit --method dpdy --prior ldm3d"),
    WeightSpec("animatediff-base", "MONODYN_ANIMATEDIFF_BASE", ("stable-diffusion-v1-5",),
               "Hugging Face stable-diffusion-v1-5/stable-diffusion-v1-5 (AnimateDiff's image model)",
               hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5", approx_bytes=40_000 * MB,
               used_by="fit --method dpdy --video-prior animatediff"),
    WeightSpec("animatediff", "MONODYN_ANIMATEDIFF", ("animatediff-motion-adapter-v1-5-2",),
               "Hugging Face guoyww/animatediff-motion-adapter-v1-5-2 (AnimateDiff's motion adapter)",
               hub_id="guoyww/animatediff-motion-adapter-v1-5-2", approx_bytes=1_700 * MB,
               used_by="fit --method dpdy --video-prior animatediff"),
    # the official checkpoint, then the folder `monodyn weights convert gcd` makes of it (what render loads)
    WeightSpec("gcd", "MONODYN_GCD", ("gcd/kubric_gradual_max90.ckpt", "gcd/kubric_gradual_max90"),
               f"{GCD_CHECKPOINTS}/kubric_gradual_max90.ckpt (or kubric_direct_max90, kubric_gradual_max180, "
               "kubric_direct_max180; listed in the README of github.com/basilevh/gcd, 'Pretrained models')",
               url=f"{GCD_CHECKPOINTS}/kubric_gradual_max90.ckpt", approx_bytes=20_000 * MB,
               used_by="render --method gcd (after `monodyn weights convert gcd`)"),
    # LPIPS v0.1 = linear calibration layers (LPIPS repository, lpips/weights/v0.1/) + ImageNet backbone
    WeightSpec("lpips-alex-lin", "MONODYN_LPIPS_ALEX", ("lpips-alex.pth", "alex.pth"),
               "lpips/weights/v0.1/alex.pth of the LPIPS repository (richzhang/PerceptualSimilarity)",
               url=f"{LPIPS_WEIGHTS}/alex.pth", approx_bytes=6 * 1024, used_by="eval (LPIPS, with alexnet)"),
    WeightSpec("alexnet", "MONODYN_ALEXNET", ("alexnet-owt-7be5be79.pth",),
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
               url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", sha256="7be5be79",
               approx_bytes=233 * MB, used_by="eval (LPIPS backbone)"),
    WeightSpec("lpips-vgg-lin", "MONODYN_LPIPS_VGG", ("lpips-vgg.pth", "vgg.pth"),
               "lpips/weights/v0.1/vgg.pth of the LPIPS repository (richzhang/PerceptualSimilarity)",
               url=f"{LPIPS_WEIGHTS}/vgg.pth", approx_bytes=7 * 1024, used_by="LPIPS with the VGG backbone (metrics.load_lpips)"),
    WeightSpec("vgg16", "MONODYN_VGG16", ("vgg16-397923af.pth",),
               "https://download.pytorch.org/models/vgg16-397923af.pth",
               url="https://download.pytorch.org/models/vgg16-397923af.pth", sha256="397923af",
               approx_bytes=528 * MB, used_by="LPIPS with the VGG backbone"),
]}


def spec_named(name: str) -> WeightSpec:
    """The registry entry called `name`; an unknown name is an InputError that lists the known ones."""
    if name not in KNOWN:
        raise InputError(f"unknown weights {name!r}: choose from {', '.join(KNOWN)}")
    return KNOWN[name]


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
            f"{spec.name} weights not found: run `monodyn weights fetch {spec.name}`, or download {spec.source} and "
            f"{how}set {spec.env}=PATH, "
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
        f"{spec.name} weights not found: run `monodyn weights fetch {spec.name}`; without internet here, run "
        f"`huggingface-cli download {spec.hub_id}` on a machine with it, copy the folder here, then {how}set "
        f"{spec.env}=PATH or place "
        f"it at {cache_dir() / spec.filenames[0]}")


def hf_cached(hub_id: str) -> bool:
    """Whether a Hugging Face model id has a snapshot in the local hub cache (no network access)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(hub_id, local_files_only=True)
        return True
    except Exception:
        return False


def locate(spec: WeightSpec) -> tuple[Path | str | None, str]:
    """Where `spec` is found without a --*-checkpoint option: (path or hub id, how it was found), or (None, why
    not). Never downloads; a broken environment variable is reported, not raised."""
    try:
        path = find_weights(spec)
    except WeightsNotFoundError as e:
        return None, str(e)
    if path is not None:
        how = f"${spec.env}" if os.environ.get(spec.env) else "monodyn cache"
        return path, how
    if spec.hub_id and hf_cached(spec.hub_id):
        return spec.hub_id, "Hugging Face cache"
    return None, "not found"
