"""Do the camera paths show the scene on every clip? Real fits, real renders, alpha coverage per frame.

For each case: `monodyn preprocess` and `monodyn fit --method dpdy` (CLI subprocesses, cached in the work folder),
then every path `monodyn render` offers is built with `build_path` and rendered in-process; a frame's coverage
is the share of its pixels with accumulated alpha above 0.5. Prints one table: per case and path the lowest and
the mean frame coverage, and whether `path_warning` fired (orbit 180 is there to show that it does).

    .venv/bin/python bench/bench_paths.py                          # every clip + two synthetic scenes
    .venv/bin/python bench/bench_paths.py --cases duck --max-side 320 --fit-args "--minutes 2"

Cases: the clips in ../shared/data/clips by name, synth-moving and synth-static (`monodyn synth`, 24 frames).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_pipeline import run  # noqa: E402
from bench.tables import table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "data" / "clips"
PATHS = {"orbit 40": ("orbit", {"orbit_degrees": 40}), "bullet 0.5/40": ("bullet-time", {"bullet_time_at": 0.5, "degrees": 40}),
         "spiral": ("spiral", {}), "dolly 0.3": ("dolly", {"dolly_amount": 0.3}), "stabilize 0": ("stabilize", {"stabilize": 0}),
         "camera_path.json": ("camera-path", {}), "orbit 180": ("orbit", {"orbit_degrees": 180})}


def monodyn(*args, cwd: Path) -> None:
    run(list(args), cwd)  # bench_pipeline's runner (its seconds and memory are not needed here)


def prepare(case: str, work: Path, max_side: int, max_frames: int, fit_args: list[str]) -> Path:
    """Preprocess and fit `case` once (both cached by monodyn); the workspace."""
    if case.startswith("synth"):
        source = work / case / "input.mp4"
        if not source.exists():
            monodyn("synth", work / case, "--frames", 24, "--width", 160, "--height", 120, "--camera",
                    case.split("-")[1], "--heldout-azimuths", "", "--fixed-cameras", 0, cwd=work)
    else:
        source = CLIPS / case
    ws = work / f"{case}-{max_side}.monodyn"
    monodyn("preprocess", source, "-w", ws, "--max-side", max_side, "--max-frames", max_frames, cwd=work)
    monodyn("fit", "-w", ws, "--method", "dpdy", *fit_args, cwd=work)
    return ws


def coverage_row(ws: Path, frames: int, work: Path) -> list:
    from models.registry import get_method
    from monodyn_cli import paths
    from monodyn_cli.fits import current_checkpoint
    from monodyn_cli.scene_loader import load_scene
    from monodyn_cli.workspace import Workspace

    scene, _ = load_scene(Workspace(ws))
    impl = get_method("dpdy")
    renderer = impl.load(current_checkpoint(Workspace(ws), "dpdy")[1], scene, impl.RenderOptions(), "cpu")
    json_file = work / f"{ws.stem}-camera_path.json"  # a path made elsewhere and loaded back: an orbit the other way
    paths.save_camera_path(json_file, paths.build_path(scene, "orbit", frames, orbit_degrees=-40)[0])
    cells = []
    for kind, kw in PATHS.values():
        kw = {"camera_path": json_file} if kind == "camera-path" else kw
        path, _ = paths.build_path(scene, kind, frames, **kw)
        cov = []
        with torch.no_grad():
            for i in range(len(path.cameras)):
                alpha = renderer.render(path.cameras[i], path.times[i:i + 1]).alpha
                cov.append(float((alpha > 0.5).float().mean()))
        cov = torch.tensor(cov)
        warned = " (warned)" if paths.path_warning(scene, path, kind) else ""
        cells.append(f"{cov.min():.2f} / {cov.mean():.2f}{warned}")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_cases = sorted(p.name for p in CLIPS.iterdir()) if CLIPS.is_dir() else []
    ap.add_argument("--cases", default=",".join([*default_cases, "synth-moving", "synth-static"]))
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_paths"))
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--max-frames", type=int, default=24)
    ap.add_argument("--frames", type=int, default=12, help="frames rendered per path")
    ap.add_argument("--fit-args", default="--minutes 1", help="extra `monodyn fit` arguments (the budget)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases.split(","):
        start = time.perf_counter()
        try:
            ws = prepare(case, args.work, args.max_side, args.max_frames, shlex.split(args.fit_args))
            rows.append([case, *coverage_row(ws, args.frames, args.work)])
        except RuntimeError as e:  # one broken case must not lose the others' rows
            rows.append([case, str(e).splitlines()[-1], *[""] * (len(PATHS) - 1)])
        print(f"{case}: {time.perf_counter() - start:.0f}s {rows[-1][1:]}", file=sys.stderr)
    table(f"alpha coverage per frame (min / mean; share of pixels with alpha > 0.5), dpdy {args.fit_args}, "
          f"--max-side {args.max_side} --max-frames {args.max_frames}", ["case", *PATHS], rows)


if __name__ == "__main__":
    main()
