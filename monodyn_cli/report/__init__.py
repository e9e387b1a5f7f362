"""`monodyn report`: one self-contained HTML page of what a workspace holds (stages, fits, renders, evaluations).

    build_report(ws, output) -> Path       # <workspace>/report/report.html by default

figures.py draws the pictures (numpy images -> base64 data URIs), sections.py reads the workspace part by part,
html.py assembles the page, metrics_log.py reads training curves (metrics.jsonl, or the run logs' step lines).
"""

from __future__ import annotations

from pathlib import Path

from monodyn_cli.workspace import Progress, Workspace


def build_report(ws: Workspace, output: Path | None = None, progress: Progress | None = None,
                 n_frames: int = 8, thumb: int = 200, embed_limit_mb: float = 8.0, debug: bool = False) -> Path:
    """Write the report of `ws` to `output` (default <workspace>/report/report.html) by the output policy
    (monodyn_cli/outputs.py: checked first, written to a temporary name, renamed when whole); return its path.

    A part that fails to draw (an unreadable file) becomes a one-line error in its section and a warning, unless
    `debug`."""
    from monodyn_cli.outputs import Outputs

    progress = progress or Progress()
    output = Path(output) if output is not None else ws.root / "report" / "report.html"
    with Outputs(ws.root) as outputs:
        tmp = outputs.file(output)
        page = _page(ws, output, progress, n_frames, thumb, embed_limit_mb, debug)
        tmp.write_text(page, encoding="utf-8")
        outputs.commit()
    return output


def _page(ws: Workspace, output: Path, progress: Progress, n_frames: int, thumb: int, embed_limit_mb: float,
          debug: bool) -> str:
    from models.errors import MonodynError
    from monodyn_cli.report import html, sections

    ctx = sections.Context(ws, output.parent, n_frames=n_frames, thumb=thumb,
                           embed_limit=int(embed_limit_mb * 1024 ** 2))
    builders = [("decode", "Decoded frames", sections.decode_section),
                ("segment", "Segmentation", sections.segment_section),
                ("flow", "Optical flow", sections.flow_section),
                ("sfm", "Cameras and points (SfM)", sections.sfm_section),
                ("depth", "Depth", sections.depth_section),
                ("fit", "Fit", sections.fit_section),
                ("renders", "Renders", sections.render_section),
                ("eval", "Evaluation", sections.eval_section),
                ("osn", "OSN object scales", sections.osn_section)]
    parts = []
    with progress.task("report", len(builders)) as advance:
        for sid, title, build in builders:
            try:
                section = build(ctx)
            except Exception as e:
                if debug:
                    raise
                why = str(e) if isinstance(e, (MonodynError, OSError)) else "run `monodyn report --debug` for the details"
                text = f"{sid}: could not be drawn ({why})"
                progress.warn(f"report section {text}")
                section = html.Section(sid, title, html.note(text, "error"), status="error", summary=text)
            if section is not None:
                parts.append(section)
            advance(1)
    info = sections._read_json(ws.root / "workspace.json")
    subtitle = [("workspace", f"`{ws.root.resolve()}`"), ("source", f"`{info['source']}`" if info.get("source") else None)]
    return html.page(f"monodyn report — {ws.root.resolve().name}", subtitle, parts)


__all__ = ["build_report"]
