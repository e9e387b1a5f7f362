"""The OSN scene model: one `GaussianSet` per object in its own frame (the background in the world), the object
scale network and the per-frame object poses; rendering of any camera at any normalised time under any scale
combination (all objects concatenated into one rasterisation, `models.osn.composite`); saving / loading as
`config.json` + `model.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.cameras import Cameras
from models.files import atomic_write
from models.gaussians.model import GaussianSet
from models.osn.composite import CompositeOutput, Placed, place, render_composite
from models.osn.objects import ObjectSet, frame_from_world
from models.osn.scale_net import ScaleNetwork, ScaleSpace, central_configuration, valid_configurations

FORMAT = 2  # 1: TensoRF fields per object; 2: Gaussian sets per object
N_CANDIDATES = 4096  # candidates drawn to list valid scale combinations


class OSNModel(nn.Module):
    def __init__(self, objects: ObjectSet, sets: list[GaussianSet], space: ScaleSpace, scale_hidden: int = 64,
                 seed: int = 0, scale_frequencies: int = 4):
        super().__init__()
        self.objects = objects
        self.space = space
        self.sets = nn.ModuleList(sets)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.scale_net = ScaleNetwork(max(objects.n_objects, 1), hidden=scale_hidden, n_freqs=scale_frequencies)
        self.register_buffer("background_rgb", torch.zeros(3))
        self._valid_cache: dict = {}
        self._pose_cache: dict = {}

    @property
    def n_objects(self) -> int:
        return self.objects.n_objects

    def full_scales(self, scales: Float[Tensor, "B K"]) -> Float[Tensor, "B O"]:
        """Prepend the background's fixed scale 1."""
        return torch.cat([scales.new_ones(scales.shape[0], 1), scales], dim=1)

    # -- valid configurations ------------------------------------------------------------------------------
    def valid_scales(self, seed: int = 0) -> tuple[Float[Tensor, "M K"], Float[Tensor, " M"]]:
        """Valid scale combinations (validity > 0.5) in deterministic candidate order (cached per seed). Without
        objects the one (empty) combination."""
        if self.n_objects == 0:
            return torch.zeros(1, 0), torch.ones(1)
        if seed not in self._valid_cache:
            self._valid_cache[seed] = valid_configurations(self.scale_net, self.space, N_CANDIDATES, seed)
        return self._valid_cache[seed]

    def default_scales(self, seed: int = 0) -> Float[Tensor, " K"]:
        """The valid combination nearest the centre of the valid set; the centre of the search box when the
        network finds none valid."""
        scales, _ = self.valid_scales(seed)
        if len(scales) == 0:
            return self.space.from_unit(torch.zeros(1, self.n_objects))[0]
        return scales[central_configuration(scales, self.space)] if self.n_objects else scales[0]

    def validity(self, scales: Float[Tensor, "B K"]) -> Float[Tensor, " B"]:
        if self.n_objects == 0:
            return torch.ones(scales.shape[0])
        dev = self.background_rgb.device
        return self.scale_net.validity(self.space.to_unit(scales.to(dev))).cpu()

    # -- placing and rendering -------------------------------------------------------------------------------
    def object_to_world(self, o: int, scale: float, time: float) -> Float[Tensor, "4 4"]:
        """Object o's frame -> world at normalised time and scale (identity for the background)."""
        dev = self.background_rgb.device
        if o == 0:
            return torch.eye(4, device=dev)
        key = (o, round(float(scale), 9), round(float(time), 9))
        if key not in self._pose_cache:
            if len(self._pose_cache) > 4096:
                self._pose_cache.clear()
            F = frame_from_world(self.objects, o, float(scale), float(time)).double()
            self._pose_cache[key] = torch.linalg.inv(F).float()
        return self._pose_cache[key].to(dev)

    def placed(self, o: int, scale: float, time: float) -> Placed:
        return place(self.sets[o], self.object_to_world(o, scale, time))

    def render(self, w2c: Float[Tensor, "4 4"], K: Float[Tensor, "3 3"], width: int, height: int, time: float,
               scales: list[float], objects: list[int] | None = None, backend: str = "auto") -> CompositeOutput:
        """One camera at normalised time with full scales (background first, = 1). `objects`: render only these
        (e.g. one object alone for the soft Z-buffer); object_weights then has one channel per listed object."""
        objects = list(range(len(self.sets))) if objects is None else objects
        placed = [self.placed(o, scales[o], time) for o in objects]
        return render_composite(placed, w2c.float(), K.float(), width, height, self.background_rgb, backend)

    @torch.no_grad()
    def render_cameras(self, cameras: Cameras, times: Float[Tensor, " N"], scales: Float[Tensor, " K"]
                       ) -> dict[str, Tensor]:
        """Render each camera at its normalised time with object scales `scales` (objects 1..K). Returns rgb
        (N,H,W,3), depth / alpha (N,H,W), object_weights (N,H,W,O)."""
        dev = self.background_rgb.device
        full = [1.0] + [float(s) for s in scales]
        cams = cameras.to(dev)
        outs = {k: [] for k in ("rgb", "depth", "alpha", "object_weights")}
        for i in range(len(cams)):
            t = float(times.reshape(-1)[i if times.numel() > 1 else 0])
            out = self.render(cams.w2c[i], cams.K[i], cams.width, cams.height, t, full)
            for k in outs:
                outs[k].append(getattr(out, k))
        return {k: torch.stack(v) for k, v in outs.items()}

    # -- checkpoints -----------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT, "objects": self.objects.to_dict(), "sizes": [len(g) for g in self.sets],
                "scale_space": self.space.to_dict(), "scale_hidden": self.scale_net.mlp.out.in_features,
                "scale_frequencies": self.scale_net.n_freqs}

    def tensors(self) -> dict[str, Tensor]:
        out = {f"objects.{k}": v.contiguous() for k, v in self.objects.tensors().items()}
        for k, v in self.state_dict().items():
            out[k] = v.detach().contiguous()
        return out

    def save(self, folder: Path, config: dict, extra: dict | None = None) -> None:
        """Write model.safetensors then config.json, each atomically (the json last: a folder with config.json is
        complete)."""
        folder = Path(folder)
        tensors = {k: v.cpu() for k, v in self.tensors().items()}
        atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, str(p)))
        doc = {"method": "osn", "config": config, **self.meta(), **(extra or {})}
        atomic_write(folder / "config.json", lambda p: p.write_text(json.dumps(doc, indent=1)))

    @staticmethod
    def load(folder: Path, device: str | torch.device = "cpu") -> tuple["OSNModel", dict]:
        folder = Path(folder)
        doc = json.loads((folder / "config.json").read_text())
        tensors = load_file(str(folder / "model.safetensors"))
        objects = ObjectSet.from_saved(doc["objects"], {k[8:]: v for k, v in tensors.items()
                                                        if k.startswith("objects.")})
        model = OSNModel(objects, [GaussianSet.empty(n) for n in doc["sizes"]],
                         ScaleSpace.from_dict(doc["scale_space"]), doc["scale_hidden"],
                         scale_frequencies=doc.get("scale_frequencies", 4))
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("objects.")})
        return model.to(device), doc
