"""The report page: small HTML helpers, the stylesheet, and the 3D viewer script (no external resources)."""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass


@dataclass
class Section:
    """One part of the page. `status`: "ok", "missing" (a one-line note says what to run) or "error"."""

    id: str
    title: str
    body: str
    status: str = "ok"
    summary: str = ""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def code_spans(text: str) -> str:
    """Escape `text` and render `backticked` parts as <code>."""
    parts = re.split(r"`([^`]*)`", str(text))
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(parts))


def note(text: str, cls: str = "missing") -> str:
    return f'<p class="{cls}">{code_spans(text)}</p>'


def missing(sid: str, title: str, text: str) -> Section:
    """A section for something not computed: one line, e.g. "flow: not computed — run `monodyn preprocess`"."""
    return Section(sid, title, note(text), status="missing", summary=text)


def img(uri: str, alt: str, title: str = "", cls: str = "") -> str:
    extra = (f' title="{esc(title)}"' if title else "") + (f' class="{cls}"' if cls else "")
    return f'<img src="{uri}" alt="{esc(alt)}"{extra}>'


def figure(uri: str, caption: str, alt: str = "", cls: str = "") -> str:
    return f'<figure>{img(uri, alt or caption, cls=cls)}<figcaption>{code_spans(caption)}</figcaption></figure>'


def gallery(figures: list[str], strip: bool = False) -> str:
    """Figures side by side; `strip`: one row whose figures shrink to fit (the frames of a stage)."""
    return f'<div class="gallery{" strip" if strip else ""}">' + "".join(figures) + "</div>"


def table(header: list[str], rows: list[list], cls: str = "") -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"<td class=num>{v:.4g}</td>"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"<td class=num>{v}</td>"
        return f"<td>{code_spans(v)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(items: list[tuple[str, object]]) -> str:
    """A compact key: value line under a section title."""
    return '<p class="facts">' + " · ".join(f"<b>{esc(k)}</b> {code_spans(v)}" for k, v in items
                                             if v not in (None, "")) + "</p>"


STATUS_MARK = {"ok": "✔", "missing": "–", "error": "✖"}


def page(title: str, subtitle: list[tuple[str, object]], sections: list[Section]) -> str:
    overview = table(["", "section", "result"],
                     [[STATUS_MARK.get(s.status, ""), f"{s.title}", s.summary] for s in sections], cls="overview")
    toc = " ".join(f'<a href="#{esc(s.id)}" class="{s.status}">{esc(s.title)}</a>' for s in sections)
    parts = [f'<section id="{esc(s.id)}" class="{s.status}"><h2>{esc(s.title)}</h2>{s.body}</section>'
             for s in sections]
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head><body>
<header><h1>{esc(title)}</h1>{facts(subtitle + [("generated", generated)])}<nav>{toc}</nav></header>
<main>
<section id="overview"><h2>Overview</h2>{overview}</section>
{"".join(parts)}
</main>
<footer>Written by <code>monodyn report</code>. Self-contained: every picture and small video is inside this file.</footer>
<script>{VIEWER_JS}</script>
</body></html>
"""


def json_script(element_id: str, data) -> str:
    """Data for the page's scripts, as a JSON <script> block ("</" cannot end it early)."""
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


CSS = """
:root { --fg:#1d2330; --muted:#6b7280; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#1d2330; color:#fff; padding:18px 28px 12px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .facts { color:#c9cfdb; margin:0 0 8px; }
header p.facts b { color:#fff; font-weight:600; }
header code { color:#e6edf7; background:#2c3444; }
nav a { color:#9cc2ff; margin-right:14px; text-decoration:none; font-size:13px; }
nav a.missing { color:#8b93a3; }
nav a.error { color:#ff9b9b; }
main { padding:8px 28px 28px; max-width:1400px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 18px 14px;
          margin:14px 0; }
section.missing { padding:8px 18px; }
section.missing h2 { display:inline; margin-right:10px; font-size:15px; }
section.missing p.missing { display:inline; }
h2 { font-size:17px; margin:2px 0 8px; font-weight:600; }
h3 { font-size:14px; margin:12px 0 6px; font-weight:600; }
p.missing { color:var(--muted); margin:4px 0; }
p.error { color:#b91c1c; margin:4px 0; }
p.facts { color:var(--muted); margin:0 0 8px; }
p.facts b { color:var(--fg); font-weight:600; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size:12.5px; background:#eef1f5;
       padding:1px 4px; border-radius:3px; }
.gallery { display:flex; flex-wrap:wrap; gap:8px; align-items:flex-start; }
.gallery.strip { flex-wrap:nowrap; }
.gallery.strip figure { flex:1 1 0; min-width:0; max-width:260px; }
.gallery.strip figure img { width:100%; height:auto; }
figure { margin:0; }
figure img, figure video { display:block; border:1px solid var(--line); border-radius:3px; max-width:100%; }
figcaption { font-size:12px; color:var(--muted); margin-top:2px; }
img.plot { max-width:100%; border:none; }
table { border-collapse:collapse; margin:6px 0 10px; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:3px 10px; text-align:left; vertical-align:top; }
th { background:#f0f2f6; font-weight:600; }
td.num { text-align:right; font-variant-numeric: tabular-nums; }
table.overview td:first-child { width:1.5em; text-align:center; }
.legend { display:flex; gap:16px; align-items:center; flex-wrap:wrap; font-size:12px; color:var(--muted);
          margin-top:6px; }
.legend.wide span { flex:1; min-width:240px; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:2px; vertical-align:middle; margin-right:4px; }
.viewer { display:flex; gap:14px; align-items:flex-start; flex-wrap:wrap; }
canvas.sfm { background:#111722; border-radius:6px; cursor:grab; touch-action:none; }
footer { color:var(--muted); font-size:12px; padding:0 28px 24px; }
"""

# A small orbit viewer for the SfM section: points and camera frusta from a JSON block, drawn on a canvas.
# Drag to rotate, wheel to zoom. World z is up (the sfm stage's convention).
VIEWER_JS = r"""
(function () {
  document.querySelectorAll('canvas.sfm').forEach(function (canvas) {
    var data = JSON.parse(document.getElementById(canvas.dataset.src).textContent);
    var ctx = canvas.getContext('2d');
    var yaw = data.yaw, pitch = 0.45, zoom = 1.0;
    var c = data.center, r = data.radius;
    function project(p) {
      var x = p[0] - c[0], y = p[1] - c[1], z = p[2] - c[2];
      var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
      var x1 = cy * x - sy * y, y1 = sy * x + cy * y;
      var X = x1, Y = z * cp + y1 * sp, D = y1 * cp - z * sp;  // looking down by `pitch`
      var dist = 3.0 * r, s = Math.min(canvas.width, canvas.height) * 0.62 * zoom / r * dist / (dist + D);
      return [canvas.width / 2 + X * s, canvas.height / 2 - Y * s, D];
    }
    function line(a, b) { ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); }
    function draw() {
      ctx.fillStyle = '#111722'; ctx.fillRect(0, 0, canvas.width, canvas.height);
      var P = data.points, C = data.colors, n = P.length / 3;
      for (var i = 0; i < n; i++) {
        var q = project([P[3 * i], P[3 * i + 1], P[3 * i + 2]]);
        ctx.fillStyle = 'rgb(' + C[3 * i] + ',' + C[3 * i + 1] + ',' + C[3 * i + 2] + ')';
        ctx.fillRect(q[0] - 1, q[1] - 1, 2.2, 2.2);
      }
      var cams = data.cameras, m = cams.length;
      ctx.lineWidth = 1.2; ctx.strokeStyle = 'rgba(255,255,255,0.5)';
      ctx.beginPath();
      for (var j = 0; j + 1 < m; j++) line(project(cams[j].c), project(cams[j + 1].c));
      ctx.stroke();
      for (var k = 0; k < m; k++) {
        var t = m > 1 ? k / (m - 1) : 0, cam = cams[k];
        ctx.strokeStyle = cam.reg ? 'hsl(' + Math.round(220 - 220 * t) + ',90%,60%)' : '#888';
        var o = project(cam.c);
        ctx.fillStyle = ctx.strokeStyle; ctx.fillRect(o[0] - 2, o[1] - 2, 4, 4);
        if (!cam.f) continue;
        var q4 = cam.f.map(project);
        ctx.beginPath();
        for (var e = 0; e < 4; e++) { line(o, q4[e]); line(q4[e], q4[(e + 1) % 4]); }
        ctx.stroke();
      }
      ctx.fillStyle = '#cbd5e1'; ctx.font = '12px sans-serif';
      ctx.fillText('drag: rotate · wheel: zoom', 10, canvas.height - 10);
    }
    var drag = null;
    canvas.addEventListener('pointerdown', function (e) { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
    canvas.addEventListener('pointerup', function () { drag = null; });
    canvas.addEventListener('pointermove', function (e) {
      if (!drag) return;
      yaw += (e.clientX - drag[0]) * 0.01;
      pitch = Math.max(-1.5, Math.min(1.5, pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY]; draw();
    });
    canvas.addEventListener('wheel', function (e) {
      e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); draw();
    }, {passive: false});
    draw();
  });
})();
"""
