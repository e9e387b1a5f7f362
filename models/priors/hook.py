"""`NovelViewPrior`: the hook through which a prior acts on a DpDy fit (models/dpdy/task.py calls it each step).

Every `every` steps after `start` of the schedule it renders `views` novel views - input cameras orbited about
their look-at point by up to `max_degrees` (the angles a user renders), at `size` pixels - and:

1. lifts: where a render is empty (alpha < 0.5) the prior's estimate of the clean RGB-D image there (its
   `fill` estimate) becomes new static Gaussians (colour, depth mapped back through
   the render's disparity range), at most `lift` per view. No gradient reaches pixels no Gaussian covers, so
   this is how unseen parts get content at all. A point that would sit in front of what the view's input
   camera sees (its depth there < 0.9 x the fit's depth) is dropped: input views stay as they are. Nothing is
   lifted where the fit leaves over BACKDROP of that input view empty itself (an object before a backdrop).
2. distils: the loss of the image prior on the render (rgb + normalised disparity), and of the video prior on
   a short clip from one novel camera at consecutive times, times the weight, which ramps from 0 at `start`
   to `weight` at `start + RAMP` (the fit first settles on the input views).

All randomness comes from the task's generator, so a resumed fit repeats an uninterrupted one. The time spent
and the Gaussians lifted are counted in `stats` (written beside the checkpoint by DpDyMethod.fit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from models.cameras import Cameras, project, unproject
from models.dpdy.guidance import novel_cameras
from models.gaussians.model import GAUSSIAN_PARAMS
from models.gaussians.strategy import reindex_rows
from models.priors.rgbd import COVERED, DisparityRange

RAMP = 0.2  # share of the schedule over which the prior's weight rises to its full value
OCCLUDES = 0.9  # a lifted point nearer than this share of the input render's depth would hide what it saw
VIDEO_FRAMES = 4
BACKDROP = 0.05  # share of the input view the fit leaves empty above which the scene has a backdrop: no lifting


@dataclass
class PriorSchedule:
    every: int = 10
    start: float = 0.3
    weight: float = 1.0
    views: int = 1
    size: int = 64
    max_degrees: float = 90.0
    lift: int = 256
    video_weight: float = 0.1
    opacity: float = 0.7


@dataclass
class PriorStats:
    calls: int = 0
    seconds: float = 0.0
    lifted: int = 0
    names: dict = field(default_factory=dict)


class NovelViewPrior:
    """score(rgb, alpha, disparity, reference, generator, fill) -> (loss, x0 rgb, x0 disparity): an image prior
    (`ConditionedScore` or `LDM3DScore`); video(clip, generator) -> loss: optional (`VideoScore`)."""

    def __init__(self, score, schedule: PriorSchedule, video=None, name: str = ""):
        self.score, self.schedule, self.video = score, schedule, video
        self.stats = PriorStats(names={"prior": name, "video": "animatediff" if video is not None else "none"})

    def weight(self, progress: float) -> float:
        s = self.schedule
        return s.weight * min(max((progress - s.start) / RAMP, 0.0), 1.0)

    def __call__(self, task, step: int, progress: float) -> dict[str, Tensor]:
        """The prior's loss terms for this step of `task` (a DpDyTask): {} when it does not act now."""
        w = self.weight(progress)
        if w <= 0 or step % max(self.schedule.every, 1):
            return {}
        start = time.perf_counter()
        s, d, dev = self.schedule, task.data, task.device
        frames = torch.randint(0, d.T, (s.views,), generator=task.gen, device=dev)
        sign = torch.where(torch.rand(s.views, generator=task.gen, device=dev) < 0.5, -1.0, 1.0)
        degrees = sign * (0.25 + 0.75 * torch.rand(s.views, generator=task.gen, device=dev)) * s.max_degrees
        inputs = Cameras(d.K[frames], d.w2c[frames], d.W, d.H)
        center = torch.as_tensor(task.arch["center"], device=dev)
        cams = novel_cameras(inputs, center, degrees, s.size, 0.1 * task.radius)
        times = d.times[frames]
        reference = F.interpolate(torch.stack([d.image(int(f)) for f in frames]).permute(0, 3, 1, 2),
                                  size=(cams.height, cams.width), mode="area")
        out = task.model.render_cameras(cams, times)
        if s.lift > 0 and bool((out.alpha.detach() < COVERED).any()):
            if self._lift(task, cams, inputs, times, out, reference):
                out = task.model.render_cameras(cams, times)  # the new Gaussians take part in this step's loss
        rng = DisparityRange.of(out.depth, out.alpha)
        rgb = out.rgb.permute(0, 3, 1, 2)
        loss, _, _ = self.score(rgb, out.alpha[:, None].detach(), rng.normalise(out.depth)[:, None], reference,
                                task.gen)
        losses = {"prior": w * loss}
        if self.video is not None:
            losses["video_prior"] = w * s.video_weight * self._video_loss(task, frames[0], degrees[0])
        self.stats.calls += 1
        self.stats.seconds += time.perf_counter() - start
        return losses

    @torch.no_grad()
    def _lift(self, task, cams: Cameras, inputs: Cameras, times: Tensor, out, reference: Tensor) -> bool:
        """New static Gaussians where the novel renders are empty (see the module docstring); True if any."""
        s, model = self.schedule, task.model
        rng = DisparityRange.of(out.depth, out.alpha)
        _, x0_rgb, x0_disp = self.score(out.rgb.permute(0, 3, 1, 2), out.alpha[:, None],
                                        rng.normalise(out.depth)[:, None], reference, task.gen, fill=True)
        depth = rng.depth(x0_disp[:, 0])
        small = inputs.scaled(cams.width / inputs.width)
        seen = model.render_cameras(Cameras(small.K, small.w2c, cams.width, cams.height), times)
        rows = []
        room = task.cfg.max_gaussians - len(model.static) - len(model.dynamic)
        for i in range(len(cams)):
            empty = torch.nonzero(out.alpha[i] < COVERED)
            # where the fit leaves its own input view uncovered, the background colour is the content (an object
            # in front of a backdrop): empty pixels there are background, not holes
            if len(empty) == 0 or room <= 0 or float((seen.alpha[i] < COVERED).float().mean()) > BACKDROP:
                continue
            keep = min(s.lift, len(empty), room)
            pick = empty[torch.randperm(len(empty), generator=task.gen, device=empty.device)[:keep]]
            xy = pick.flip(-1).float() + 0.5
            z_pick = depth[i][pick[:, 0], pick[:, 1]]
            pts, pixel = unproject(xy, z_pick, cams.K[i], cams.w2c[i]), z_pick / cams.K[i, 0, 0]  # pixel: world size
            p_xy, z = project(pts, small.K[i], small.w2c[i])
            col, row = p_xy[:, 0].long(), p_xy[:, 1].long()
            inside = (z > 0) & (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)
            c, r = col.clamp(0, cams.width - 1), row.clamp(0, cams.height - 1)
            hides = inside & (seen.alpha[i][r, c] > COVERED) & (z < OCCLUDES * seen.depth[i][r, c])
            far = (pts - torch.as_tensor(task.arch["center"], device=pts.device)).norm(dim=-1) > 3 * task.radius
            ok = ~hides & ~far & torch.isfinite(pts).all(-1)
            if not bool(ok.any()):
                continue
            spread = math.sqrt(len(empty) / keep)  # each lifted Gaussian stands for this many pixels per side
            rows.append((pts[ok], x0_rgb[i, :, pick[ok, 0], pick[ok, 1]].T, pixel[ok] * 0.7 * spread))
            room -= int(ok.sum())
        if not rows:
            return False
        means, colors, scales = (torch.cat(parts) for parts in zip(*rows))
        self._add_static(task, means, colors, scales)
        self.stats.lifted += len(means)
        return True

    def _add_static(self, task, means: Tensor, colors: Tensor, scales: Tensor) -> None:
        n, g = len(means), task.model.static
        c = colors.clamp(0.02, 0.98)
        quats = torch.zeros(n, 4, device=means.device)
        quats[:, 0] = 1
        op = self.schedule.opacity
        rows = {"means": means, "log_scales": scales.clamp_min(1e-6).log()[:, None].repeat(1, 3), "quats": quats,
                "opacity_logits": torch.full((n,), math.log(op / (1 - op)), device=means.device),
                "color_logits": (c / (1 - c)).log()}
        reindex_rows(g, GAUSSIAN_PARAMS, task.optimizer, torch.arange(len(g), device=means.device), rows)
        strategy = task.strategies["static"]  # its statistics gain rows for the new Gaussians
        strategy.grad2d = torch.cat([strategy.grad2d, strategy.grad2d.new_zeros(n)])
        strategy.count = torch.cat([strategy.count, strategy.count.new_zeros(n)])

    def _video_loss(self, task, frame: Tensor, degrees: Tensor) -> Tensor:
        """The video prior on VIDEO_FRAMES consecutive times seen from one novel camera (that of `frame`)."""
        d, s = task.data, self.schedule
        first = int(frame.clamp(max=max(d.T - VIDEO_FRAMES, 0)))
        idx = torch.arange(first, min(first + VIDEO_FRAMES, d.T), device=task.device)
        cam = novel_cameras(Cameras(d.K[idx[:1]], d.w2c[idx[:1]], d.W, d.H),
                            torch.as_tensor(task.arch["center"], device=task.device), degrees[None], s.size,
                            0.1 * task.radius)
        clip = task.model.render_cameras(Cameras(cam.K.expand(len(idx), 3, 3), cam.w2c.expand(len(idx), 4, 4),
                                                 cam.width, cam.height), d.times[idx])
        return self.video(clip.rgb.permute(0, 3, 1, 2).clamp(0, 1), task.gen)
