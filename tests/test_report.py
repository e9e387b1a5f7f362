"""`monodyn report`: one self-contained HTML page from a workspace.

The workspace is written directly in the stage output formats (decode, segment, flow, sfm, depth results through
`Workspace.run_stage`, two fit folders, a render, an evaluation, an OSN scale plot), so the test needs no stage to
run and takes about a second.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from monodyn_cli.app import app
from monodyn_cli.report.metrics_log import (
    fit_rows,
    log_runs,
    parse_log,
    read_metrics_jsonl,
)
from monodyn_cli.workspace import Workspace, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
T, H, W = 6, 36, 48
SECTIONS = ("decode", "segment", "flow", "sfm", "depth", "fit", "renders", "eval", "osn")


def _frames() -> np.ndarray:
    """(T, H, W, 3) uint8: a colour gradient with a white square moving 3 px per frame."""
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 // W, y * 255 // H, np.full_like(x, 90)], -1).astype(np.uint8)
    frames = np.repeat(base[None], T, 0)
    for t in range(T):
        frames[t, 10:20, 5 + 3 * t:15 + 3 * t] = 255
    return frames


def _write_stages(ws: Workspace, stages: tuple[str, ...]) -> None:
    frames = _frames()
    inst = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        inst[t, 10:20, 5 + 3 * t:15 + 3 * t] = 1

    def decode(ctx):
        np.save(ctx.out / "frames.npy", frames)
        np.save(ctx.out / "timestamps.npy", np.arange(T) / 10.0)
        (ctx.out / "meta.json").write_text(json.dumps({"num_frames": T, "width": W, "height": H, "fps": 10.0}))
        ctx.extra["summary"] = f"{T} frames {W}x{H} @ 10 fps"

    def segment(ctx):
        np.save(ctx.out / "instances.npy", inst)
        (ctx.out / "objects.json").write_text(json.dumps({"objects": [
            {"id": 1, "first_frame": 0, "last_frame": T - 1, "mean_area": 0.06}]}))

    def flow(ctx):
        f = np.zeros((T - 1, H, W, 2), np.float16)
        f[inst[:-1] == 1] = (3, 0)
        np.save(ctx.out / "flow_fw.npy", f)
        np.save(ctx.out / "valid_fw.npy", np.ones((T - 1, H, W), bool))
        (ctx.out / "flow.json").write_text(json.dumps({"consistent_fraction": 1.0, "median_magnitude_px": 0.0}))

    def sfm(ctx):
        K = [[[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]]] * T
        w2c = []
        for t in range(T):  # cameras on the x axis looking along +y (world z up), OpenCV axes
            R = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
            c = np.array([0.1 * t, 0, 0])
            w2c.append(np.block([[R, (-R @ c)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]).tolist())
        (ctx.out / "cameras.json").write_text(json.dumps({"width": W, "height": H, "K": K, "w2c": w2c}))
        rng = np.random.default_rng(0)
        np.save(ctx.out / "points3d.npy", (rng.normal(size=(300, 3)) * 0.3 + (0, 2, 0)).astype(np.float32))
        np.save(ctx.out / "points_rgb.npy", rng.integers(0, 255, (300, 3)).astype(np.uint8))
        np.save(ctx.out / "registered.npy", np.ones(T, bool))
        (ctx.out / "sfm.json").write_text(json.dumps({"mode": "colmap", "num_points": 300, "focal_px": 40.0}))

    def depth(ctx):
        np.save(ctx.out / "depth.npy", np.linspace(1, 3, T * H * W).reshape(T, H, W).astype(np.float16))
        (ctx.out / "depth_meta.json").write_text(json.dumps({"backend": "test", "units": "world units"}))

    runs = {"decode": decode, "segment": segment, "flow": flow, "sfm": sfm, "depth": depth}
    results = {}
    for name in stages:
        inputs = {k: v for k, v in results.items() if k == "decode"}
        results[name] = ws.run_stage(name, 1, {"backend": "test"}, inputs, runs[name])


def _write_fits(ws: Workspace) -> None:
    """dpdy fit A with metrics.jsonl (and a half-written last line); fit B with only run-log step lines; an OSN
    fit whose scale plot `monodyn osn scales` wrote."""
    fit = ws.root / "fit"
    a, b = fit / "dpdy" / "aaaaaaaaaaaaaaaa", fit / "dpdy" / "bbbbbbbbbbbbbbbb"
    for folder in (a, b):
        folder.mkdir(parents=True)
        write_json_atomic(folder / "manifest.json", {"stage": "fit", "method": "dpdy", "key": folder.name,
                                                     "seconds": 12.5, "tag": ""})
    rows = [{"step": s, "seconds": s / 10, "loss": 1.0 / s, "psnr": 10 + s / 10, "rgb": 0.5 / s}
            for s in range(10, 310, 10)]
    (a / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 310, "lo')
    (ws.root / "logs").mkdir(exist_ok=True)
    (ws.root / "logs" / "20260101-120000-fit.log").write_text(
        "12:00:00 monodyn fit: fit --method dpdy --steps 200\n"
        "12:00:20 step 100 loss=0.2 psnr=18.5 rgb=0.1\n"
        "12:00:41 step 200 loss=0.1 psnr=21.25 rgb=0.05\n"
        f"12:00:41 fit dpdy: done {b.name} in 41.0s\n")
    osn = fit / "osn" / "cccccccccccccccc"
    osn.mkdir(parents=True)
    write_json_atomic(osn / "manifest.json", {"stage": "fit", "method": "osn", "key": osn.name})
    write_json_atomic(fit / "current.json", {"dpdy": a.name, "osn": osn.name, "latest": "dpdy"})
    (ws.root / "osn").mkdir()
    cv2.imwrite(str(ws.root / "osn" / f"scales-{osn.name[:8]}.png"), np.full((60, 120, 3), 200, np.uint8))


def _write_render_and_eval(ws: Workspace) -> None:
    (ws.root / "renders").mkdir()
    video = cv2.VideoWriter(str(ws.root / "renders" / "dpdy-orbit90.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10,
                            (W, H))
    for frame in _frames():
        video.write(frame[..., ::-1])
    video.release()
    run = ws.root / "eval" / "holdout-dpdy-20260101-120500"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "protocol": "holdout", "method": "dpdy", "checkpoint": str(ws.root / "fit/dpdy/dddd"), "fit_seconds": 30.0,
        "views": {"holdout": {"psnr": 24.5, "ssim": 0.81, "mpsnr": 22.0, "floor_psnr": 18.0}},
        "lpips": "skipped: no weights"}))
    cv2.imwrite(str(run / "holdout.png"), np.concatenate([_frames()[0], _frames()[1]], axis=1)[..., ::-1])


@pytest.fixture(scope="module")
def full_ws(tmp_path_factory) -> Path:
    ws = Workspace(tmp_path_factory.mktemp("report") / "clip.monodyn")
    ws.ensure(source="clip.mp4")
    _write_stages(ws, ("decode", "segment", "flow", "sfm", "depth"))
    _write_fits(ws)
    _write_render_and_eval(ws)
    return ws.root


@pytest.fixture(scope="module")
def report_html(full_ws) -> str:
    result = runner.invoke(app, ["report", str(full_ws), "-q"])
    assert result.exit_code == 0, result.output
    return (full_ws / "report" / "report.html").read_text()


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}" class="(\w+)">(.*?)</section>', html, re.DOTALL)
    assert m, f"no section {sid}"
    return m.group(1), m.group(2)


def test_every_section_is_drawn(full_ws, report_html):
    for sid in SECTIONS:
        status, _ = _section(report_html, sid)
        assert status == "ok", sid
    assert [p.name for p in (full_ws / "report").iterdir()] == ["report.html"]  # the temp file was renamed
    # the 3D viewer's data: every camera, the points
    data = json.loads(re.search(r'<script type="application/json" id="sfm-data">(.*?)</script>', report_html,
                                re.DOTALL).group(1))
    assert len(data["cameras"]) == T and len(data["points"]) > 0 and len(data["points"]) % 3 == 0
    # both fits have curves: one from metrics.jsonl, one from the run log's step lines
    _, fit = _section(report_html, "fit")
    assert "metrics.jsonl" in fit and "logs/20260101-120000-fit.log" in fit and "21.25" in fit
    _, ev = _section(report_html, "eval")
    assert "holdout" in ev and "24.5" in ev and "floor_psnr" in ev


def test_report_is_self_contained_and_its_images_decode(report_html):
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)["\']', report_html)
    assert refs and not [r for r in refs if re.match(r"(https?:)?//", r)]
    assert "http://" not in report_html and "https://" not in report_html
    images = re.findall(r'(?:src|poster)="data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)"', report_html)
    assert len(images) >= 4 * 5 + 6  # frame, mask, flow, depth strips; legends, curves, eval strip, OSN, poster
    for fmt, data in images:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.size > 0, fmt
    videos = re.findall(r'<source src="data:video/mp4;base64,([A-Za-z0-9+/=]+)"', report_html)
    assert len(videos) == 1 and base64.b64decode(videos[0])[4:8] == b"ftyp"


def test_missing_stages_say_what_to_run(tmp_path):
    ws = Workspace(tmp_path / "clip.monodyn")
    ws.ensure(source="clip.mp4")
    _write_stages(ws, ("decode",))
    result = runner.invoke(app, ["report", str(ws.root), "-q", "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    assert _section(html, "decode")[0] == "ok"
    for sid, text in [("flow", "flow: not computed — run <code>monodyn preprocess</code>"),
                      ("sfm", "sfm: not computed"), ("segment", "segment: not computed"),
                      ("depth", "depth: not computed"), ("fit", "fit: none yet"), ("renders", "renders: none yet"),
                      ("eval", "eval: none yet")]:
        status, body = _section(html, sid)
        assert status == "missing" and text in body, sid
        assert body.count("<p") == 1 and "\n" not in body, sid  # one line
    assert 'id="osn"' not in html  # no OSN fit: no OSN section


def test_big_videos_are_linked_not_embedded(full_ws, tmp_path):
    out = full_ws / "report" / "linked.html"
    result = runner.invoke(app, ["report", str(full_ws), "-q", "--embed-mb", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    out.unlink()
    assert '<source src="../renders/dpdy-orbit90.mp4"' in html and "data:video" not in html


def test_not_a_workspace_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a monodyn workspace" in result.output and "monodyn preprocess" in result.output


def test_metrics_from_jsonl_and_from_log_lines(full_ws):
    rows = read_metrics_jsonl(full_ws / "fit" / "dpdy" / "aaaaaaaaaaaaaaaa" / "metrics.jsonl")
    assert len(rows) == 30 and rows[-1]["step"] == 300  # the half-written line is skipped
    run = parse_log(full_ws / "logs" / "20260101-120000-fit.log")
    assert run.method == "dpdy" and run.key == "bbbbbbbbbbbbbbbb"
    assert run.rows == [{"step": 100, "seconds": 20.0, "loss": 0.2, "psnr": 18.5, "rgb": 0.1},
                        {"step": 200, "seconds": 41.0, "loss": 0.1, "psnr": 21.25, "rgb": 0.05}]
    rows, source = fit_rows(full_ws / "fit" / "dpdy" / "bbbbbbbbbbbbbbbb", "dpdy", log_runs(full_ws / "logs"))
    assert [r["step"] for r in rows] == [100, 200] and source == "logs/20260101-120000-fit.log"


def test_command_module_imports_stay_light():
    code = ("import sys, monodyn_cli.commands.report; "
            "print(sorted(m for m in ('numpy', 'torch', 'cv2', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium (apt-get install chromium)")
def test_headless_chromium_screenshot_is_not_blank(report_html, full_ws, tmp_path):
    png = tmp_path / "report.png"
    start = time.time()
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1280,2400",
                    (full_ws / "report" / "report.html").resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert png.exists(), f"no screenshot after {time.time() - start:.0f}s"
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (2400, 1280)
    assert img.std() > 20  # not one flat colour
    colours = np.unique((img[::4, ::4] // 32).reshape(-1, 3), axis=0)
    assert len(colours) > 40  # pictures, not only text on a background
    # the SfM canvas was drawn by the page's script: its area holds more than its dark background
    dark = (np.abs(img.astype(int) - (34, 23, 17)).sum(-1) < 12).mean()  # #111722 in BGR
    assert dark > 0.02
