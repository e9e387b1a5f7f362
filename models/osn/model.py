"""The OSN scene model: one `ObjectField` (TensoRF-VM in a unit volume) per object, the object scale network,
and the per-frame object poses; rendering of any camera at any normalised time under any scale combination;
saving / loading as `config.json` + `model.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.cameras import Cameras, camera_rays
from models.fields import TensoRFVM
from models.files import atomic_write
from models.osn.composite import CompositeOutput, ObjectField, render_composite
from models.osn.config import OSNConfig
from models.osn.objects import ObjectSet, frame_from_world, frame_rays
from models.osn.scale_net import ScaleNetwork, ScaleSpace, central_configuration, valid_configurations

FORMAT = 1
N_CANDIDATES = 4096  # candidates drawn to list valid scale combinations


def field_arch(cfg: OSNConfig, o: int) -> dict:
    """TensoRF-VM constructor arguments of object o (0 = background)."""
    return {"resolution": cfg.background_resolution if o == 0 else cfg.object_resolution,
            "density_rank": cfg.density_rank, "app_rank": cfg.app_rank, "decoder": cfg.decoder, "sh_degree": 1,
            "hidden": 64, "density_shift": cfg.density_shift}


class OSNModel(nn.Module):
    def __init__(self, objects: ObjectSet, arch: list[dict], n_samples: list[int], space: ScaleSpace,
                 scale_hidden: int = 64, seed: int = 0, scale_frequencies: int = 4):
        super().__init__()
        self.objects = objects
        self.arch = arch
        self.space = space
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(seed)
            self.fields = nn.ModuleList(
                ObjectField(TensoRFVM(**a), objects.spaces[o], n_samples[o], occupancy_res=32 if o else 64,
                            near=_near(objects.spaces[o])) for o, a in enumerate(arch))
            self.scale_net = ScaleNetwork(objects.n_objects, hidden=scale_hidden, n_freqs=scale_frequencies)
        self.register_buffer("background_rgb", torch.zeros(3))
        self._valid_cache: dict = {}

    @staticmethod
    def create(objects: ObjectSet, cfg: OSNConfig, space: ScaleSpace) -> "OSNModel":
        arch = [field_arch(cfg, o) for o in range(len(objects.ids))]
        n_samples = [cfg.n_samples_background] + [cfg.n_samples_object] * objects.n_objects
        return OSNModel(objects, arch, n_samples, space, cfg.scale_hidden, cfg.seed, cfg.scale_frequencies)

    @property
    def n_objects(self) -> int:
        return self.objects.n_objects

    def full_scales(self, scales: Float[Tensor, "B K"]) -> Float[Tensor, "B O"]:
        """Prepend the background's fixed scale 1."""
        return torch.cat([torch.ones_like(scales[:, :1]), scales], dim=1)

    # -- valid configurations ------------------------------------------------------------------------------
    def valid_scales(self, seed: int = 0) -> tuple[Float[Tensor, "M K"], Float[Tensor, " M"]]:
        """Valid scale combinations (validity > 0.5) in deterministic candidate order (cached per seed)."""
        if seed not in self._valid_cache:
            self._valid_cache[seed] = valid_configurations(self.scale_net, self.space, N_CANDIDATES, seed)
        return self._valid_cache[seed]

    def default_scales(self, seed: int = 0) -> Float[Tensor, " K"]:
        """The valid combination nearest the centre of the valid set; the centre of the search box when the
        network finds none valid."""
        scales, _ = self.valid_scales(seed)
        if len(scales) == 0:
            return self.space.from_unit(torch.zeros(1, self.n_objects))[0]
        return scales[central_configuration(scales, self.space)]

    def validity(self, scales: Float[Tensor, "B K"]) -> Float[Tensor, " B"]:
        dev = self.background_rgb.device
        return self.scale_net.validity(self.space.to_unit(scales.to(dev))).cpu()

    # -- rendering -------------------------------------------------------------------------------------------
    def render_rays_world(self, origins: Float[Tensor, "N 3"], dirs: Float[Tensor, "N 3"],
                          forward: Float[Tensor, "N 3"], frame_from_world_per_object: list[Tensor]) -> CompositeOutput:
        """World rays (unit dirs) with one world->frame matrix (4,4) or (N,4,4) per object."""
        rays = []
        for F in frame_from_world_per_object:
            F = F.to(origins).expand(origins.shape[0], 4, 4)
            rays.append(frame_rays(F, origins, dirs))
        z_factor = (dirs * forward).sum(-1)
        return render_composite(list(self.fields), rays, z_factor, self.background_rgb)

    @torch.no_grad()
    def render_cameras(self, cameras: Cameras, times: Float[Tensor, " N"], scales: Float[Tensor, " K"],
                       chunk: int = 16384) -> dict[str, Tensor]:
        """Render each camera at its normalised time with object scales `scales` (objects 1..K). Returns rgb
        (N,H,W,3), depth / alpha (N,H,W), object_weights (N,H,W,O)."""
        dev = self.background_rgb.device
        full = [1.0] + [float(s) for s in scales]
        origins, dirs = camera_rays(cameras.to(dev))
        n, h, w = origins.shape[:3]
        outs = {k: [] for k in ("rgb", "depth", "alpha", "object_weights")}
        for i in range(n):
            t = float(times.reshape(-1)[i if times.numel() > 1 else 0])
            Fs = [frame_from_world(self.objects, o, full[o], t).to(dev) for o in range(len(full))]
            o_i, d_i = origins[i].reshape(-1, 3), dirs[i].reshape(-1, 3)
            fwd = cameras.w2c[i, 2, :3].to(dev).expand_as(d_i)
            parts = [self.render_rays_world(o_i[j:j + chunk], d_i[j:j + chunk], fwd[j:j + chunk], Fs)
                     for j in range(0, o_i.shape[0], chunk)]
            for k in outs:
                outs[k].append(torch.cat([getattr(p, k) for p in parts]).reshape(h, w, -1))
        return {"rgb": torch.stack(outs["rgb"]), "depth": torch.stack(outs["depth"])[..., 0],
                "alpha": torch.stack(outs["alpha"])[..., 0], "object_weights": torch.stack(outs["object_weights"])}

    # -- checkpoints -----------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": FORMAT, "objects": self.objects.to_dict(), "arch": self.arch,
                "n_samples": [f.n_samples for f in self.fields], "scale_space": self.space.to_dict(),
                "scale_hidden": self.scale_net.mlp.out.in_features, "scale_frequencies": self.scale_net.n_freqs,
                "use_occupancy": [f.use_occupancy for f in self.fields],
                "occupancy_updates": [f.occupancy.n_updates for f in self.fields]}

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
        model = OSNModel(objects, doc["arch"], doc["n_samples"], ScaleSpace.from_dict(doc["scale_space"]),
                         doc["scale_hidden"], scale_frequencies=doc.get("scale_frequencies", 4))
        for o, f in enumerate(model.fields):  # grids may have been resized: match the saved shapes first
            _resize_like(f.field, tensors, f"fields.{o}.field.")
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("objects.")})
        for f, use, n in zip(model.fields, doc["use_occupancy"], doc["occupancy_updates"]):
            f.use_occupancy, f.occupancy.n_updates = bool(use), int(n)
        return model.to(device), doc


def _near(space: dict) -> float:
    return 0.02 * float(space["radius"]) if space["kind"] == "contracted" else 0.0


def _resize_like(field: TensoRFVM, tensors: dict[str, Tensor], prefix: str) -> None:
    key = prefix + "density_lines.table"
    if key in tensors:
        res = tensors[key].shape[0] // 3
        if res != field.resolution:
            field.upsample(res)
