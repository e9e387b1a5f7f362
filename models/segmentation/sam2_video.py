"""Promptable video segmentation with SAM 2 (transformers' `Sam2VideoModel`, e.g. facebook/sam2.1-hiera-tiny).

Each prompt (a point or a box on one frame) is one object with id = prompt index + 1. Prompts are added
frame by frame in time order (SAM 2 segments each on its frame), then the model's memory propagates every
object forward from the earliest prompt frame to the end and backward from it to frame 0; objects prompted
later are still segmented before their prompt frame, from the memory of that frame.

transformers' processor for this model resizes frames with torchvision when available; here the few steps
it does (resize to the model's square input, scale to [0, 1], normalise with the ImageNet mean and
standard deviation, scale prompt coordinates to the resized frame) are done directly in torch so that no
torchvision is needed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8
from torch import Tensor

from models.errors import InputError
from models.segmentation import Prompt, masks_to_ids, validate_prompts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_sam2_video(checkpoint: str | None = None, device: str | torch.device = "cpu"):
    """A Sam2VideoModel in eval mode from a local folder or the Hugging Face cache (never downloads).

    checkpoint: a folder saved with `save_pretrained` / a hub snapshot, or None for the KNOWN["sam2-video"]
    search order (environment variable, monodyn cache, Hugging Face cache).
    """
    from transformers import Sam2VideoModel

    from models.weights import KNOWN, hub_source, offline_error

    spec = KNOWN["sam2-video"]
    source = hub_source(spec, checkpoint, option="--sam2-checkpoint")
    try:
        model = Sam2VideoModel.from_pretrained(source, local_files_only=True)
    except OSError:
        raise offline_error(spec, "--sam2-checkpoint") from None
    except (ValueError, KeyError) as e:
        raise InputError(f"{source} is not a SAM 2 video model ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()


def prepare_frames(frames: UInt8[np.ndarray, "T H W 3"], size: int) -> Float[Tensor, "T 3 S S"]:
    """Frames as the model takes them: resized to size x size (bilinear, antialiased; the aspect ratio is
    not kept, as in the official processor), [0, 1], normalised with the ImageNet mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    out = torch.empty((len(x), 3, size, size))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for i in range(0, len(x), 16):  # chunks keep the float copy of a long video at full size small
        chunk = F.interpolate(x[i:i + 16], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i:i + 16] = (chunk - mean) / std
    return out


def _point_inputs(p: Prompt, sx: float, sy: float) -> dict[str, Tensor]:
    """A prompt as SAM 2 point inputs in model pixels: box corners get labels 2 / 3, a click label 1."""
    coords, labels = [], []
    if p.box is not None:
        coords += [(p.box[0], p.box[1]), (p.box[2], p.box[3])]
        labels += [2, 3]
    if p.point is not None:
        coords.append(p.point)
        labels.append(1)
    xy = torch.tensor(coords, dtype=torch.float32) * torch.tensor([sx, sy])
    return {"point_coords": xy.view(1, 1, -1, 2), "point_labels": torch.tensor(labels, dtype=torch.int32).view(1, 1, -1)}


@torch.no_grad()
def segment_video_sam2(model, frames: UInt8[np.ndarray, "T H W 3"], prompts: list[Prompt],
                       advance: Callable[[int], None] = lambda n=1: None) -> UInt8[np.ndarray, "T H W"]:
    """Instance ids (T, H, W) uint8 for the prompted objects (prompt i -> id i + 1).

    Runs on the model's device. Overlapping objects go to the one with the larger mask logit. `advance` is
    called once per frame propagated.
    """
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    t_count, h, w = frames.shape[:3]
    validate_prompts(prompts, t_count, h, w)
    if not prompts:
        raise InputError("SAM 2 needs at least one prompt (--point X,Y[@FRAME] or --box X0,Y0,X1,Y1[@FRAME])")
    if len(prompts) > 255:
        raise InputError(f"{len(prompts)} prompts: at most 255 objects fit the uint8 id maps")
    device = next(model.parameters()).device
    size = int(model.config.image_size)
    session = Sam2VideoInferenceSession(video=prepare_frames(frames, size), video_height=h, video_width=w,
                                        inference_device=device, video_storage_device="cpu", dtype=torch.float32)
    ids = np.zeros((t_count, h, w), np.uint8)

    def keep(output) -> None:
        """Frame output -> id map (the propagation passes visit every frame with every object)."""
        up = F.interpolate(output.pred_masks.float(), size=(h, w), mode="bilinear", align_corners=False)
        scores = np.full((len(prompts), h, w), -np.inf, np.float32)
        for row, obj_id in enumerate(output.object_ids):
            scores[obj_id - 1] = up[row, 0].cpu().numpy()
        ids[output.frame_idx] = masks_to_ids(scores > 0, scores)

    for f in sorted({p.frame for p in prompts}):
        obj_ids = [i + 1 for i, p in enumerate(prompts) if p.frame == f]
        for obj_id in obj_ids:
            obj_idx = session.obj_id_to_idx(obj_id)
            session.add_point_inputs(obj_idx, f, _point_inputs(prompts[obj_id - 1], size / w, size / h))
            session.remove_mask_inputs(obj_idx, f)
        session.obj_with_new_inputs = list(obj_ids)
        keep(model(inference_session=session, frame_idx=f))
    start = min(p.frame for p in prompts)
    for reverse in (False, True):
        for output in model.propagate_in_video_iterator(session, start_frame_idx=start, reverse=reverse):
            keep(output)
            advance(1)
    return ids
