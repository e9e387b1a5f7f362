"""What `monodyn export` writes: the fitted Gaussians as standard 3DGS .ply files (one per frame + the static set) and the cameras.

Output folder (default `<workspace>/export/<method>-<fit key>/`):
    frame_00000.ply ...  every Gaussian at the normalised time of that input frame (3DGS binary PLY, SH degree 0;
                         models/gaussians/ply.py); with --dynamic-only the dynamic ones only
    static.ply           the static Gaussians only (they never move)
    transforms.json      nerfstudio cameras of the input frames (OpenGL camera-to-world), time per frame
    images/00000.png ... the input frames transforms.json and the COLMAP model name (hard links to the sfm stage's)
    colmap/sparse/0/     the sfm stage's COLMAP model (cameras.bin, images.bin, points3D.bin), when it has one
    export.json          what was exported from which fit (written last)

The whole folder is written under a temporary name beside the output and renamed into place when complete
(monodyn_cli/outputs.py): a failed or killed export leaves no partial folder, and an earlier export is replaced
only by a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from models.errors import InputError
from models.gaussians.ply import write_ply
from models.methods import GAUSSIAN_METHODS, METHODS
from models.registry import get_method
from monodyn_cli import paths
from monodyn_cli.console import RichProgress, human_bytes, stdout
from monodyn_cli.fits import current_checkpoint
from monodyn_cli.outputs import Outputs, empty_folder
from monodyn_cli.scene_loader import load_scene, resolve_workspace
from monodyn_cli.workspace import load_manifest

TABLE_ROWS = 12  # longer summaries show the first and last rows


def run(workspace, method, output, frames, every, static_only, dynamic_only, quiet) -> None:
    if static_only and dynamic_only:
        raise InputError("--static-only and --dynamic-only exclude each other: choose one (or neither for both)")
    if static_only and (frames is not None or every is not None):
        raise InputError("--frames/--every choose per-frame files, which --static-only does not write")
    if method not in METHODS:
        get_method(method)  # the registry's error for an unknown name, with the list of methods
    if method == "osn":  # Gaussians too, but one scene per valid scale combination: not exported yet
        raise InputError("export writes the dpdy fit's Gaussians; OSN's scenes (one per valid scale combination) are "
                         "not exported yet: use `monodyn render --method osn --scale-samples N` for their views")
    if method not in GAUSSIAN_METHODS:
        raise InputError(f"export writes 3D Gaussians and needs a Gaussian method ({', '.join(GAUSSIAN_METHODS)}); "
                         f"{method} is not one: use `monodyn render` for its views")
    ws = resolve_workspace(workspace)
    method, ckpt = current_checkpoint(ws, method)
    scene, input_keys = load_scene(ws)
    progress = RichProgress(quiet)
    fit_sfm = (load_manifest(ckpt) or {}).get("inputs", {}).get("sfm")
    if fit_sfm and fit_sfm != input_keys.get("sfm"):
        progress.warn(f"the {method} fit {ckpt.name} was made with sfm result {fit_sfm}, but the workspace's current "
                      f"one is {input_keys.get('sfm')}: the exported cameras may not match the Gaussians (refit, "
                      "or rerun `monodyn preprocess` with the fit's settings)")
    T = scene.num_frames
    indices = [] if static_only else parse_frames(frames, every, T)
    out = Path(output) if output is not None else ws.root / "export" / f"{method}-{ckpt.name}"
    with Outputs(ws.root) as outputs:
        stage = outputs.folder(out, replaceable=_earlier_export)
        written, n_static, n_dynamic, objects, colmap, seconds = _export(ws, scene, method, ckpt, stage, indices,
                                                                         dynamic_only, static_only, progress)
        outputs.commit()
    _summary(written, n_static, n_dynamic, objects, colmap, out, seconds)


def _earlier_export(folder: Path) -> bool:
    """An export folder may replace an empty one or an earlier export (its export.json is written last)."""
    return empty_folder(folder) or (folder / "export.json").is_file()


def _export(ws, scene, method, ckpt, out: Path, indices, dynamic_only, static_only, progress):
    """Write the whole export into `out` (a temporary folder the caller renames into place)."""
    renderer = get_method(method).load(ckpt, scene, None, "cpu")
    model = getattr(renderer, "model", None)
    if not hasattr(model, "gaussians_at"):
        raise InputError(f"the {method} checkpoint {ckpt} holds no Gaussian model; export needs a Gaussian method")
    times = scene.times
    written: list[tuple[str, str, int, int]] = []  # (file, time, Gaussians, bytes)
    start = time.perf_counter()
    with torch.no_grad():
        g0 = model.gaussians_at(0.0)
        dynamic = g0["is_dynamic"] > 0.5
        n_static, n_dynamic = int((~dynamic).sum()), int(dynamic.sum())
        if not dynamic_only:
            name = _write_gaussians(out / "static.ply", g0, ~dynamic)
            written.append((name, "all", n_static, (out / name).stat().st_size))
        with progress.task("export", len(indices)) as advance:
            for t in indices:
                g = model.gaussians_at(float(times[t]))
                keep = g["is_dynamic"] > 0.5 if dynamic_only else torch.ones_like(g["is_dynamic"], dtype=torch.bool)
                name = _write_gaussians(out / f"frame_{t:05d}.ply", g, keep)
                written.append((name, f"{float(times[t]):.4f}", int(keep.sum()), (out / name).stat().st_size))
                advance(1)

    images = _export_images(ws, scene, out)
    paths.write_transforms_json(out / "transforms.json", scene.cameras, images, [float(v) for v in times],
                                extra={"monodyn_export": {"method": method, "fit": ckpt.name,
                                                          "time": "normalised to [0, 1]"}})
    colmap = _export_colmap(ws, out)
    objects = {}
    if n_dynamic and hasattr(model, "instance_ids"):
        ids, counts = np.unique(model.instance_ids.cpu().numpy(), return_counts=True)
        objects = {str(int(i)): int(c) for i, c in zip(ids, counts)}
    seconds = time.perf_counter() - start
    (out / "export.json").write_text(json.dumps({
        "method": method, "fit": ckpt.name, "checkpoint": str(ckpt), "format": "3DGS binary PLY, SH degree 0",
        "files": [w[0] for w in written], "frames": indices, "times": [float(times[t]) for t in indices],
        "gaussians": {"static": n_static, "dynamic": n_dynamic}, "dynamic_per_object": objects,
        "contents": "dynamic only" if dynamic_only else "static only" if static_only else "static + dynamic",
        "cameras": ["transforms.json"] + (["colmap/sparse/0"] if colmap else []), "seconds": round(seconds, 2),
        "created": time.time()}, indent=2))
    return written, n_static, n_dynamic, objects, colmap, seconds


def parse_frames(text: str | None, every: int | None, T: int) -> list[int]:
    """Input frame indices from --frames (e.g. "0,10,20-30", ranges inclusive) or --every N; default: all T."""
    if text is not None and every is not None:
        raise InputError("--frames and --every both choose frames: give one")
    if every is not None:
        if every < 1:
            raise InputError(f"--every must be at least 1, got {every}")
        return list(range(0, T, every))
    if text is None:
        return list(range(T))
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--frames expects frame indices like 0,10,20-30, got {text!r}") from None
        for value in (a, b):
            if not 0 <= value < T:
                raise InputError(f"--frames: frame {value} is out of range; the clip has {T} frames (0..{T - 1})")
        if b < a:
            raise InputError(f"--frames: range {part} runs backwards; write {b}-{a}")
        out.update(range(a, b + 1))
    return sorted(out)


def _write_gaussians(path: Path, g: dict, keep) -> str:
    write_ply(path, g["means"][keep], g["quats"][keep], g["scales"][keep], g["opacities"][keep], g["colors"][keep])
    return path.name


def _export_images(ws, scene, out: Path) -> list[str]:
    """images/<t:05d>.png for transforms.json and the COLMAP model: hard links to the sfm stage's PNGs (copies
    across file systems), or written from the decoded frames."""
    sfm = ws.current("sfm")
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    names = [f"{t:05d}.png" for t in range(scene.num_frames)]
    for t, name in enumerate(names):
        dst = folder / name
        src = None if sfm is None else sfm.path / "images" / name
        if src is not None and src.exists():
            _link_or_copy(src, dst)
        else:
            _imwrite_png(dst, np.ascontiguousarray(np.asarray(scene.frames[t])[..., ::-1]))
    return [f"images/{n}" for n in names]


def _imwrite_png(path: Path, bgr: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise InputError(f"could not encode {path.name} as PNG")
    path.write_bytes(data.tobytes())


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _export_colmap(ws, out: Path) -> bool:
    """Copy the current sfm stage's colmap/sparse/0; False when it has none."""
    sfm = ws.current("sfm")
    src = None if sfm is None else sfm.path / "colmap" / "sparse" / "0"
    if src is None or not src.is_dir() or not any(src.iterdir()):
        return False
    dst = out / "colmap" / "sparse" / "0"
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        shutil.copyfile(f, dst / f.name)
    return True


def _summary(written, n_static: int, n_dynamic: int, objects: dict, colmap: bool, out: Path, seconds: float) -> None:
    table = Table(title=f"exported {len(written)} .ply file{'s' if len(written) != 1 else ''} in {seconds:.1f}s")
    for col, justify in (("file", "left"), ("time", "right"), ("Gaussians", "right"), ("size", "right")):
        table.add_column(col, justify=justify)
    rows = written
    if len(rows) > TABLE_ROWS:
        half = TABLE_ROWS // 2
        rows = written[:half] + [(f"... {len(written) - 2 * half + 1} more", "", "", None)] + written[-half + 1:]
    for name, t, n, size in rows:
        table.add_row(name, t, f"{n:,}" if n != "" else "", human_bytes(size) if size is not None else "")
    stdout.print(table)
    per_object = ", ".join(f"object {k}: {v:,}" for k, v in objects.items())
    stdout.print(f"{n_static:,} static + {n_dynamic:,} dynamic Gaussians" + (f" ({per_object})" if per_object else ""))
    stdout.print("cameras: transforms.json (nerfstudio)" + (", colmap/sparse/0 (COLMAP)" if colmap else
                                                            " (the sfm stage has no COLMAP model)"))
    stdout.print(f"wrote {out}", markup=False)
