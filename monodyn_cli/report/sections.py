"""One function per part of the report: read what the workspace holds, draw it, return a `Section`.

A part that was never computed becomes a one-line note that says what to run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monodyn_cli.report import figures as F
from monodyn_cli.report.html import (
    Section,
    code_spans,
    esc,
    facts,
    figure,
    gallery,
    img,
    json_script,
    missing,
    note,
    table,
)
from monodyn_cli.report.metrics_log import fit_rows, log_runs
from monodyn_cli.workspace import MANIFEST, StageResult, Workspace

PREPROCESS_HINT = "run `monodyn preprocess`"


@dataclass
class Context:
    """What every section needs: the workspace, where the report goes, and the size limits."""

    ws: Workspace
    out_dir: Path                      # <workspace>/report: relative links start here
    n_frames: int = 8                  # thumbnails per strip
    thumb: int = 200                   # long side of a thumbnail, pixels
    embed_limit: int = 8 * 1024 ** 2   # videos are embedded when all of them together are smaller (bytes)
    _frames: np.ndarray | None = field(default=None, repr=False)

    def current(self, stage: str) -> StageResult | None:
        return self.ws.current(stage)

    def frames(self) -> np.ndarray | None:
        """The decoded frames (T, H, W, 3) uint8, memory-mapped, or None without a decode result."""
        if self._frames is None:
            res = self.current("decode")
            if res is None or not res.file("frames.npy").exists():
                return None
            self._frames = np.load(res.file("frames.npy"), mmap_mode="r")
        return self._frames

    def indices(self, n: int) -> list[int]:
        """The frame indices every strip shows (the same times in each stage), limited to [0, n-1]."""
        frames = self.frames()
        total = len(frames) if frames is not None else n
        return sorted({min(i, n - 1) for i in F.sample_indices(total, self.n_frames)})


def _stage_facts(res: StageResult, extra: list[tuple[str, object]] = ()) -> str:
    m = res.manifest
    config = m.get("config", {})
    backend = config.get("backend") or config.get("method")
    items = [("result", m.get("summary", "")), ("backend", backend), *extra, ("key", f"`{res.key}`"),
             ("time", f"{m['seconds']:.1f} s" if isinstance(m.get("seconds"), (int, float)) else None)]
    return facts(items)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---- preprocessing stages ---------------------------------------------------------------------------------------

def decode_section(ctx: Context) -> Section:
    res = ctx.current("decode")
    frames = ctx.frames()
    if res is None or frames is None:
        return missing("decode", "Decoded frames", "decode: not computed — run `monodyn preprocess VIDEO`")
    meta = _read_json(res.file("meta.json"))
    T, H, W = frames.shape[:3]
    figs = [figure(F.data_uri(F.fit_size(F.to_uint8(frames[i]), ctx.thumb)), f"frame {i}")
            for i in ctx.indices(T)]
    extra = [("frames", T), ("size", f"{W}×{H}"), ("fps", meta.get("fps")), ("source", meta.get("source"))]
    return Section("decode", "Decoded frames", _stage_facts(res, extra) + gallery(figs, strip=True),
                   summary=res.manifest.get("summary", f"{T} frames {W}x{H}"))


def segment_section(ctx: Context) -> Section:
    res = ctx.current("segment")
    if res is None or not res.file("instances.npy").exists():
        return missing("segment", "Segmentation", f"segment: not computed — {PREPROCESS_HINT}")
    frames = ctx.frames()
    inst = np.load(res.file("instances.npy"), mmap_mode="r")
    T, H, W = inst.shape[:3]
    figs = []
    for i in ctx.indices(T):
        frame = F.to_uint8(frames[i]) if frames is not None and i < len(frames) else np.zeros((H, W, 3), np.uint8)
        if frame.shape[:2] != (H, W):
            frame = np.ascontiguousarray(F.fit_size(frame, max(H, W)))[:H, :W]
        figs.append(figure(F.data_uri(F.fit_size(F.mask_overlay(frame, np.asarray(inst[i])), ctx.thumb)),
                           f"frame {i}"))
    objects = _read_json(res.file("objects.json")).get("objects", [])
    if not objects:  # no table from the stage: count what the masks hold
        objects = [{"id": int(k)} for k in np.unique(np.asarray(inst[:: max(1, T // 16)])) if k]
    legend = '<div class="legend">' + "".join(
        f'<span><span class="swatch" style="background:{F.palette_hex(o["id"])}"></span>object {o["id"]}'
        + (f' — frames {o["first_frame"]}–{o["last_frame"]}, mean area {100 * o["mean_area"]:.1f}%'
           if {"first_frame", "last_frame", "mean_area"} <= o.keys() else "") + "</span>"
        for o in objects) + "</div>"
    if not objects:
        legend = note("no moving objects were found (every pixel is background)")
    return Section("segment", "Segmentation", _stage_facts(res, [("objects", len(objects))]) + gallery(figs, strip=True)
                   + legend, summary=res.manifest.get("summary", f"{len(objects)} objects"))


def flow_section(ctx: Context) -> Section:
    res = ctx.current("flow")
    if res is None or not res.file("flow_fw.npy").exists():
        return missing("flow", "Optical flow", f"flow: not computed — {PREPROCESS_HINT}")
    flow = np.load(res.file("flow_fw.npy"), mmap_mode="r")
    valid = np.load(res.file("valid_fw.npy"), mmap_mode="r") if res.file("valid_fw.npy").exists() else None
    idx = ctx.indices(len(flow))
    picked = np.stack([np.asarray(flow[i], np.float32) for i in idx])
    max_mag = F.robust_max_flow(picked)
    figs = [figure(F.data_uri(F.fit_size(F.flow_to_rgb(picked[j], max_mag,
                                                       None if valid is None else np.asarray(valid[i])), ctx.thumb)),
                   f"{i} → {i + 1}") for j, i in enumerate(idx)]
    wheel = F.data_uri(F.flow_wheel(96), "png")
    legend = (f'<div class="legend wide">{img(wheel, "flow colour wheel")}<span>colour = direction of motion '
              f"(right = red, down = chartreuse, left = cyan, up = violet), saturation = speed; the rim is "
              f"{max_mag:.3g} px/frame, white = still"
              + (", grey = fails the forward-backward check" if valid is not None else "") + "</span></div>")
    info = _read_json(res.file("flow.json"))
    extra = [("consistent", f"{100 * info['consistent_fraction']:.0f}%" if "consistent_fraction" in info else None)]
    return Section("flow", "Optical flow (forward)", _stage_facts(res, extra) + gallery(figs, strip=True) + legend,
                   summary=res.manifest.get("summary", ""))


def _frustum(K: np.ndarray, w2c: np.ndarray, W: int, H: int, size: float) -> tuple[list, list]:
    """Camera centre (3,) and the 4 image corners at depth `size` (4, 3), in world coordinates.
    K (3, 3), w2c (4, 4) world-to-camera (OpenCV axes)."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    center = -R.T @ t
    corners = np.array([[0, 0], [W, 0], [W, H], [0, H]], np.float64)
    rays = np.stack([(corners[:, 0] - K[0, 2]) / K[0, 0], (corners[:, 1] - K[1, 2]) / K[1, 1], np.ones(4)], -1)
    world = (rays * size) @ R + center  # R^T applied to row vectors
    return center, world


def sfm_section(ctx: Context) -> Section:
    res = ctx.current("sfm")
    if res is None or not res.file("cameras.json").exists():
        return missing("sfm", "Cameras and points (SfM)", f"sfm: not computed — {PREPROCESS_HINT}")
    cams = _read_json(res.file("cameras.json"))
    K = np.asarray(cams["K"], np.float64).reshape(-1, 3, 3)
    w2c = np.asarray(cams["w2c"], np.float64).reshape(-1, 4, 4)
    W, H = int(cams["width"]), int(cams["height"])
    n = len(w2c)
    K = np.broadcast_to(K, (n, 3, 3)) if len(K) == 1 else K
    registered = (np.load(res.file("registered.npy")) if res.file("registered.npy").exists()
                  else np.ones(n, bool))
    points = np.load(res.file("points3d.npy")).reshape(-1, 3) if res.file("points3d.npy").exists() else np.zeros((0, 3))
    colors = (np.load(res.file("points_rgb.npy")).reshape(-1, 3) if res.file("points_rgb.npy").exists()
              else np.full((len(points), 3), 200, np.uint8))
    centers = np.stack([-R.T @ t for R, t in zip(w2c[:, :3, :3], w2c[:, :3, 3])])
    # framing: the cameras and the bulk of the points (far outliers are left out)
    if len(points):
        med = np.median(points, 0)
        dist = np.linalg.norm(points - med, axis=1)
        keep = dist <= np.percentile(dist, 97) * 1.5
        points, colors = points[keep], colors[keep]
    if len(points) > 6000:
        pick = np.random.default_rng(0).choice(len(points), 6000, replace=False)
        points, colors = points[pick], colors[pick]
    lo, hi = centers.min(0), centers.max(0)
    if len(points):  # the box of the cameras and of the bulk of the points
        lo, hi = np.minimum(lo, np.percentile(points, 3, 0)), np.maximum(hi, np.percentile(points, 97, 0))
    center = (lo + hi) / 2
    radius = float(max(np.linalg.norm(hi - lo) / 2, 1e-3))
    spread = np.linalg.norm(centers - centers.mean(0), axis=1).max() if n > 1 else 0.0
    size = float(np.clip(spread * 0.15, radius * 0.03, radius * 0.08))
    shown = set(F.sample_indices(n, 12))  # a frustum for a few cameras, a dot for every one
    cam_list = []
    for i in range(n):
        c, f = _frustum(K[i], w2c[i], W, H, size)
        cam = {"c": np.round(c, 4).tolist(), "reg": bool(registered[i])}
        if i in shown:
            cam["f"] = np.round(f, 4).tolist()
        cam_list.append(cam)
    # look from behind the cameras (towards the middle of the scene), a little from the side
    view = center - centers.mean(0)
    if np.linalg.norm(view[:2]) < 1e-6 * radius:
        view = w2c[0, 2, :3]
    yaw = float(np.arctan2(view[0], view[1])) + 0.35
    data = {"points": np.round(points, 4).reshape(-1).tolist(), "colors": colors.astype(int).reshape(-1).tolist(),
            "cameras": cam_list, "center": np.round(center, 4).tolist(), "radius": radius, "yaw": yaw}
    info = _read_json(res.file("sfm.json"))
    extra = [("mode", info.get("mode")), ("registered", f"{int(registered.sum())}/{n}"),
             ("points", info.get("num_points", len(points))),
             ("focal", f"{info['focal_px']:.1f} px" if isinstance(info.get("focal_px"), (int, float)) else None)]
    body = _stage_facts(res, extra)
    if info.get("reason"):
        body += note(f"note: {info['reason']}", "facts")
    viewer = (json_script("sfm-data", data) + '<div class="viewer"><canvas class="sfm" data-src="sfm-data" '
              'width="760" height="460"></canvas><div class="legend" style="flex-direction:column;align-items:'
              'flex-start;max-width:320px">'
              f"<span>{n} cameras (coloured by time: blue = first frame, red = last; a frustum for every few"
              + ("; grey = interpolated, not registered" if not registered.all() else "")
              + f"), the white line is the camera path; {len(points)} points in their colours.</span>"
              f"<span>{code_spans(info.get('world', ''))}</span></div></div>")
    objects = _read_json(res.file("objects.json")).get("objects", {})
    if objects:
        rows = [[k, "yes" if o.get("ok") else "no", o.get("source", o.get("reason", ""))] for k, o in objects.items()]
        viewer += "<h3>Per-object SfM</h3>" + table(["object", "registered", "how / why not"], rows)
    return Section("sfm", "Cameras and points (SfM)", body + viewer, summary=res.manifest.get("summary", ""))


def depth_section(ctx: Context) -> Section:
    res = ctx.current("depth")
    if res is None:
        return missing("depth", "Depth", f"depth: not computed — {PREPROCESS_HINT}")
    if not res.file("depth.npy").exists():
        backend = res.manifest.get("config", {}).get("backend")
        return missing("depth", "Depth", f"depth: the {backend} backend wrote no depth maps — run `monodyn "
                                         "preprocess --depth BACKEND --force depth` with another backend")
    depth = np.load(res.file("depth.npy"), mmap_mode="r")
    frames = ctx.frames()
    idx = ctx.indices(len(depth))
    picked = np.stack([np.asarray(depth[i], np.float32) for i in idx])
    near, far = F.depth_range(picked)
    figs = []
    for j, i in enumerate(idx):
        frame = F.to_uint8(frames[i]) if frames is not None and frames.shape[1:3] == picked.shape[1:3] else None
        figs.append(figure(F.data_uri(F.fit_size(F.colorize_depth(picked[j], near, far, frame), ctx.thumb)),
                           f"frame {i}"))
    known = float((picked > 0).mean())
    bar = F.data_uri(F.colorbar(200, 12), "png")
    meta = _read_json(res.file("depth_meta.json"))
    legend = (f'<div class="legend"><span>far {far:.3g}</span>{img(bar, "depth colour bar")}<span>near {near:.3g}'
              f"</span><span>{code_spans(meta.get('units', ''))}"
              + (f"; sparse: {100 * known:.1f}% of pixels known, drawn as dots over the frame" if known < 0.3 else "")
              + "</span></div>")
    return Section("depth", "Depth", _stage_facts(res) + gallery(figs, strip=True) + legend,
                   summary=res.manifest.get("summary", ""))


# ---- fits -------------------------------------------------------------------------------------------------------

def fit_section(ctx: Context) -> Section:
    fit_root = ctx.ws.root / "fit"
    folders = sorted(p for p in fit_root.glob("*/*") if p.is_dir() and not p.name.startswith(".")) \
        if fit_root.is_dir() else []
    if not folders:
        return missing("fit", "Fit", "fit: none yet — run `monodyn fit --method dpdy` (or `--method osn`)")
    current = _read_json(fit_root / "current.json")
    runs = log_runs(ctx.ws.root / "logs")
    curves, rows = [], []
    for folder in sorted(folders, key=lambda p: p.stat().st_mtime):
        method = folder.parent.name
        manifest = _read_json(folder / MANIFEST)
        data, source = fit_rows(folder, method, runs)
        status = "done" if manifest else ("running or killed" if data else "incomplete")
        tag = manifest.get("tag") or ""
        used = "✔" if current.get(method) == folder.name else ""
        label = f"{method} {folder.name[:8]}{' ' + tag if tag else ''}"
        last = data[-1] if data else {}
        seconds = manifest.get("seconds", last.get("seconds"))
        rows.append([label, used, status, int(last["step"]) if "step" in last else "",
                     f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "",
                     float(last["loss"]) if isinstance(last.get("loss"), (int, float)) else "",
                     float(last["psnr"]) if isinstance(last.get("psnr"), (int, float)) else "",
                     source or "no curve logged"])
        if data:
            curves.append({"label": label, "rows": data})
    body = table(["fit", "used by render", "status", "last step", "time", "last loss", "last PSNR", "curve from"],
                 rows)
    if curves:
        body += img(F.curves_png(curves), "loss and PSNR curves", cls="plot")
        keys = sorted({k for c in curves for r in c["rows"] for k in r} - {"step", "seconds", "loss", "psnr"})
        if keys:
            body += note(f"other logged terms (in metrics.jsonl): {', '.join(keys)}", "facts")
    else:
        body += note("no training curve was logged for these fits")
    n_done = sum(r[2] == "done" for r in rows)
    return Section("fit", "Fit", body, summary=f"{len(rows)} fit(s), {n_done} finished")


# ---- renders, evaluation, OSN ------------------------------------------------------------------------------------

VIDEO_SUFFIXES = (".mp4", ".webm")


def render_section(ctx: Context) -> Section:
    root = ctx.ws.root
    videos = sorted({*(p for s in VIDEO_SUFFIXES for p in (root / "renders").glob(f"**/*{s}")),
                     *(p for s in VIDEO_SUFFIXES for p in root.glob(f"*{s}"))}, key=lambda p: p.stat().st_mtime)
    if not videos:
        return missing("renders", "Renders", "renders: none yet — run `monodyn render --orbit 90`")
    total = sum(p.stat().st_size for p in videos)
    embed = total <= ctx.embed_limit
    figs = []
    for p in videos:
        poster = F.video_poster(p)
        poster_attr = f' poster="{F.data_uri(poster)}"' if poster is not None else ""
        width = f' width="{poster.shape[1]}"' if poster is not None else ' width="320"'
        mime = "video/webm" if p.suffix == ".webm" else "video/mp4"
        src = F.bytes_uri(p.read_bytes(), mime) if embed else esc(os.path.relpath(p, ctx.out_dir))
        size = p.stat().st_size / 1024 ** 2
        caption = f"`{p.relative_to(root)}` ({size:.1f} MB)"
        figs.append(f'<figure><video controls loop muted playsinline preload="metadata"{width}{poster_attr}>'
                    f'<source src="{src}" type="{mime}"></video><figcaption>{code_spans(caption)}</figcaption>'
                    "</figure>")
    how = ("embedded in this file" if embed else
           f"linked relative to this file (together {total / 1024 ** 2:.0f} MB, over the "
           f"{ctx.embed_limit / 1024 ** 2:.0f} MB embedding limit: keep the workspace folder beside the report)")
    return Section("renders", "Renders", facts([("videos", len(videos)), ("", how)]) + gallery(figs),
                   summary=f"{len(videos)} video(s)")


def eval_section(ctx: Context) -> Section:
    eval_root = ctx.ws.root / "eval"
    runs = sorted((p for p in eval_root.glob("*/summary.json")), key=lambda p: p.parent.name) \
        if eval_root.is_dir() else []
    if not runs:
        return missing("eval", "Evaluation", "eval: none yet — run `monodyn eval`")
    body = ""
    for path in runs:
        summary = _read_json(path)
        folder = path.parent
        views = summary.get("views", {})
        cols = sorted({k for s in views.values() for k in s})
        order = ["psnr", "ssim", "lpips", "mpsnr", "mssim", "mlpips"]
        cols.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
        rows = [[name, *(s.get(c, "") for c in cols)] for name, s in views.items()]
        body += f"<h3>{esc(folder.name)}</h3>" + facts(
            [("protocol", summary.get("protocol")), ("method", summary.get("method")),
             ("fit", f"`{Path(summary['checkpoint']).name}`" if summary.get("checkpoint") else None),
             ("fit time", f"{summary['fit_seconds']:.0f} s" if isinstance(summary.get("fit_seconds"), (int, float))
              else None), ("LPIPS", summary.get("lpips"))])
        body += table(["view", *cols], rows)
        strips = sorted(folder.glob("*.png"))
        figs = []
        for strip in strips:
            import cv2

            im = cv2.imread(str(strip))
            if im is None:
                continue
            figs.append(figure(F.data_uri(F.fit_size(im[..., ::-1], 640)),
                               f"{strip.stem}: ground truth (left) | rendered (right)"))
        body += gallery(figs)
    return Section("eval", "Evaluation", body, summary=f"{len(runs)} evaluation run(s)")


def osn_section(ctx: Context) -> Section | None:
    """The scale-validity plots of the OSN fit render uses (None when the workspace has no OSN fit)."""
    fit_root = ctx.ws.root / "fit"
    key = _read_json(fit_root / "current.json").get("osn")
    pngs = sorted((ctx.ws.root / "osn").glob("scales-*.png"), key=lambda p: p.stat().st_mtime)
    if key is None and not pngs:
        return None
    figs = []
    current_png = ctx.ws.root / "osn" / f"scales-{key[:8]}.png" if key else None
    if current_png is not None and not current_png.exists() and (fit_root / "osn" / key / MANIFEST).exists():
        try:
            current_png = _plot_osn_scales(fit_root / "osn" / key, ctx.out_dir / f".scales-{key[:8]}.png")
        except Exception:  # the model could not be loaded here: say how to get the plot
            figs.append(note("could not compute the scale plot here; run `monodyn osn scales` and build the report "
                             "again", "error"))
            current_png = None
    import cv2

    for p in ([current_png] if current_png is not None and current_png.exists() else []) + \
             [p for p in pngs if p != current_png][-3:]:
        im = cv2.imread(str(p))
        if im is not None:
            which = "current fit" if p == current_png else p.name
            figs.append(figure(F.data_uri(im[..., ::-1], "png"), f"validity against scale ({which})"))
        if p.parent == ctx.out_dir:
            p.unlink(missing_ok=True)
    body = note("validity of each object's scale with the others at the default (dashed: the 0.5 threshold); "
                "with two or more objects, the map over the first two objects' scales", "facts") + gallery(figs)
    return Section("osn", "OSN object scales", body, summary="scale-validity plots")


def _plot_osn_scales(ckpt: Path, png: Path) -> Path:
    from models.osn.method import load_model
    from models.osn.report import scale_report
    from monodyn_cli.report.figures import plot_osn_scales

    return plot_osn_scales(scale_report(load_model(ckpt)), png)
