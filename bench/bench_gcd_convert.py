"""Converting an official GCD checkpoint once, and what a render then reads.

    .venv/bin/python bench/bench_gcd_convert.py --width 1.0        # SVD / GCD sizes (needs ~20 GB RAM, ~9 GB disk)
    .venv/bin/python bench/bench_gcd_convert.py --width 0.25       # UNet and CLIP at a quarter of the widths

Builds a randomly initialised GCD at the official sizes (UNet and CLIP widths times --width; the VAE at full
size), writes it as a Lightning-style `*.ckpt` in the official (sgm) layout, then times `monodyn weights
convert gcd` (read, rename, check, write fp16/fp32 folder), `GCDModel.load` of the folder (what every render
does first; safetensors are memory-mapped and every byte of the
folder is read once), and (--sample) one 1-step sample of a 14-frame
window at 384x256. The rename of sgm names is inverted with the test helpers (tests/test_gcd.py), and the bench checks
the round trip key by key.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from tables import table  # noqa: E402

from models.gcd.model import official_configs  # noqa: E402  (captured before the sizes are patched in)


def sized_configs(width: float) -> dict:
    c = official_configs()
    if width != 1.0:
        ch = tuple(int(round(v * width / 64)) * 64 for v in (320, 640, 1280, 1280))
        c["unet"].update(block_out_channels=ch, num_attention_heads=tuple(v // 64 for v in ch))
        hid = int(round(1280 * width / 64)) * 64
        c["image_encoder"].update(hidden_size=hid, intermediate_size=4 * hid, num_attention_heads=hid // 80 or 1)
    return c


def unet_prefixes(L: int, attention_down: list[bool], attention_up: list[bool]) -> dict[str, str]:
    """Our module prefixes -> sgm's for a VideoUNet with L resnets per level (the inverse of convert.unet_key)."""
    p = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
         "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
         "add_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "aux_label_emb.": "aux_label_emb.", "mid_block.resnets.0.": "middle_block.0.",
         "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.1.": "middle_block.2."}
    n = len(attention_down)
    for d in range(n):
        for j in range(L):
            i = 1 + d * (L + 1) + j
            p[f"down_blocks.{d}.resnets.{j}."] = f"input_blocks.{i}.0."
            if attention_down[d]:
                p[f"down_blocks.{d}.attentions.{j}."] = f"input_blocks.{i}.1."
        if d < n - 1:
            p[f"down_blocks.{d}.downsamplers.0.conv."] = f"input_blocks.{(d + 1) * (L + 1)}.0.op."
    for u in range(n):
        for j in range(L + 1):
            i = u * (L + 1) + j
            p[f"up_blocks.{u}.resnets.{j}."] = f"output_blocks.{i}.0."
            if attention_up[u]:
                p[f"up_blocks.{u}.attentions.{j}."] = f"output_blocks.{i}.1."
        if u < n - 1:
            p[f"up_blocks.{u}.upsamplers.0."] = f"output_blocks.{u * (L + 1) + L}.{2 if attention_up[u] else 1}."
    return p


def write_official(model, configs: dict, path: Path) -> int:
    from test_gcd import to_openclip, to_sgm_unet, to_sgm_vae

    from models.gcd.convert import convert_state_dict

    model_unet_cfg = model.unet.config
    down = [t.startswith("CrossAttn") for t in model_unet_cfg.down_block_types]
    up = [t.startswith("CrossAttn") for t in model_unet_cfg.up_block_types]
    prefixes = unet_prefixes(model_unet_cfg.layers_per_block, down, up)
    sgm = {to_sgm_unet(k, prefixes): v for k, v in model.unet.state_dict().items()}
    levels = len(configs["vae"]["block_out_channels"])
    for k, v in model.vae.state_dict().items():
        if k.startswith("quant_conv."):
            continue
        if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
            v = v[:, :, None, None]
        sgm[to_sgm_vae(k, levels)] = v
    layers = model.image_encoder.config.num_hidden_layers
    for k, v in to_openclip(model.image_encoder.state_dict(), layers).items():
        sgm[f"conditioner.embedders.0.open_clip.model.visual.{k}"] = v
    back = convert_state_dict(sgm, dict(model_unet_cfg), levels)
    assert set(back["unet"]) == set(model.unet.state_dict()), "the bench's inverse UNet mapping is wrong"
    torch.save({"state_dict": sgm, "global_step": 10000}, path)
    return sum(v.numel() for v in sgm.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0, help="UNet and CLIP widths relative to SVD's")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one, deleted)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample", action="store_true", help="also time one 1-step sample (the full-size VAE decodes "
                                                          "14 frames at 384x256: minutes on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from models.gcd import model as gcd_model
    from models.gcd.model import GCDModel
    from models.gcd.sampling import sample

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        configs = sized_configs(args.width)
        t0 = time.perf_counter()
        model = GCDModel.from_configs(configs)
        params = write_official(model, configs, tmp / "kubric_gradual_max90.ckpt")
        t_build = time.perf_counter() - t0
        del model
        ckpt_bytes = (tmp / "kubric_gradual_max90.ckpt").stat().st_size
        # the conversion through the CLI, in its own process (as a user runs it); the sizes patched in
        code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_gcd_convert as b; "
                f"from models.gcd import model as m; m.official_configs = lambda: b.sized_configs({args.width}); "
                "from monodyn_cli.app import app; sys.argv = ['monodyn', '--threads', "
                f"'{args.threads}', 'weights', 'convert', 'gcd', {str(tmp / 'kubric_gradual_max90.ckpt')!r}, "
                f"'--out', {str(tmp / 'conv')!r}, '--quiet']; app()")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        t_convert = time.perf_counter() - t0
        folder_bytes = sum(p.stat().st_size for p in (tmp / "conv").rglob("*") if p.is_file())
        gcd_model.official_configs = lambda: sized_configs(args.width)
        t0 = time.perf_counter()
        loaded = GCDModel.load(tmp / "conv")
        t_load = time.perf_counter() - t0
        frames = torch.rand(1, 14, 3, 256, 384) * 2 - 1
        deltas = torch.zeros(1, 14, 3)
        deltas[..., 0] = torch.linspace(0, 30, 14)
        t0 = time.perf_counter()
        if args.sample:
            sample(loaded, frames, deltas, steps=1)
        t_sample = time.perf_counter() - t0 if args.sample else float("nan")
    table(f"Official-layout GCD checkpoint, widths x{args.width:g} ({params / 1e9:.2f} B parameters), this CPU, "
          f"{args.threads} threads",
          ["ckpt GB", "build+write s", "convert s", "folder GB = read per render", "load s (per render)",
           "1-step sample s (14x384x256, CFG)"],
          [[ckpt_bytes / 1e9, t_build, t_convert, folder_bytes / 1e9, t_load, t_sample]])


if __name__ == "__main__":
    main()
