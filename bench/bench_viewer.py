"""Benchmark of `monodyn view`: how fast the server sends a time step, and how fast a browser draws the splats.

    .venv/bin/python bench/bench_viewer.py WORKSPACE [--method dpdy] [--seconds 5]

The server side is the time of one `Viewer.show(frame)` (the Gaussians at that time, packed and queued to viser),
median over every input frame. The browser side needs a Chromium (`apt-get install chromium`): headless, it counts
requestAnimationFrame callbacks for --seconds, first with the clip paused, then playing at 30 frames/s. Headless
Chromium draws WebGL in software (SwiftShader) on the CPU: a desktop browser with a GPU is far faster.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tables import table  # noqa: E402  (bench/ is the script's folder)

from monodyn_cli.fits import current_checkpoint  # noqa: E402
from monodyn_cli.scene_loader import load_scene  # noqa: E402
from monodyn_cli.viewer import Viewer  # noqa: E402
from monodyn_cli.workspace import Workspace  # noqa: E402

COUNT_FRAMES = """async (ms) => { let n = 0; const t0 = performance.now();
  await new Promise(done => { const tick = () => { n++; performance.now() - t0 < ms ? requestAnimationFrame(tick)
  : done(); }; requestAnimationFrame(tick); }); return n / ((performance.now() - t0) / 1000); }"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--method", default="dpdy")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    method, ckpt = current_checkpoint(ws, args.method)
    scene, _ = load_scene(ws)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = Viewer(ws, method, ckpt, scene, port=port)
    try:
        viewer.update_seconds.clear()
        for t in range(viewer.T):
            viewer.show(t)
        server_ms = 1000 * statistics.median(viewer.update_seconds)
        static = len(viewer.gaussians.static) if viewer.gaussians.static is not None else 0
        moving = len(viewer.gaussians.moving(0.0))
        browser = _browser_fps(viewer, args.seconds)
    finally:
        viewer.stop()
    table(f"monodyn view: {args.workspace.name} ({method}, {scene.width}x{scene.height}, {viewer.T} frames)",
          ["static Gaussians", "moving Gaussians", "server ms / time step", "server steps/s",
           "browser frames/s paused", "browser frames/s playing"],
          [[static, moving, server_ms, 1000 / server_ms, *browser]])


def _browser_fps(viewer: Viewer, seconds: float) -> tuple:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        return "no chromium", "no chromium"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--use-angle=swiftshader",
                                                                    "--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport={"width": 900, "height": 600})
        page.goto(viewer.url)
        page.wait_for_selector("canvas", timeout=60_000)
        page.wait_for_timeout(3000)
        paused = page.evaluate(COUNT_FRAMES, seconds * 1000)
        viewer.fps.value, viewer.play.value = 30, True
        start, played = time.perf_counter(), [0]

        def play() -> None:
            while time.perf_counter() - start < seconds + 3:
                time.sleep(viewer.step())
                played[0] += 1

        import threading

        player = threading.Thread(target=play)
        player.start()
        playing = page.evaluate(COUNT_FRAMES, seconds * 1000)
        player.join()
        browser.close()
    return paused, playing


if __name__ == "__main__":
    main()
