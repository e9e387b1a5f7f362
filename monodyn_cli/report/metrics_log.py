"""Training curves of a fit: `<fit folder>/metrics.jsonl`, or, for fits made before that file existed, the
`step N key=value ...` lines of the workspace's run logs (`logs/<time>-<command>.log`, see console.RunLog)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

_STEP = re.compile(r"^(\d\d):(\d\d):(\d\d) step (\d+)((?: [A-Za-z_][\w.]*=\S+)*)\s*$")
_DONE = re.compile(r"^\d\d:\d\d:\d\d fit (\S+): done ([0-9a-f]+)\b")
_METHOD = re.compile(r"(?:--method|-m)[ =](\S+)")


def read_metrics_jsonl(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; a half-written last line (a fit still running, or killed) is skipped."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


@dataclass
class LogRun:
    """The step lines of one run log: the method (from the command line), the fit key (from its "done" line,
    None for a killed run) and the rows ({"step", "seconds" since the first line, metrics...})."""

    log: Path
    method: str | None
    key: str | None
    rows: list[dict] = field(default_factory=list)


def _value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def parse_log(path: Path) -> LogRun:
    lines = Path(path).read_text(errors="replace").splitlines()
    method = None
    if lines:
        m = _METHOD.search(lines[0])
        method = m.group(1) if m else None
    run = LogRun(Path(path), method, None)
    start = None
    for line in lines:
        done = _DONE.match(line)
        if done:
            run.method, run.key = done.group(1), done.group(2)
            continue
        m = _STEP.match(line)
        if not m:
            continue
        clock = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        if start is None:
            first = re.match(r"^(\d\d):(\d\d):(\d\d)", lines[0])
            start = int(first.group(1)) * 3600 + int(first.group(2)) * 60 + int(first.group(3)) if first else clock
        row = {"step": int(m.group(4)), "seconds": float((clock - start) % 86400)}
        for item in m.group(5).split():
            k, _, v = item.partition("=")
            row[k] = _value(v)
        run.rows.append(row)
    return run


def log_runs(logs_dir: Path) -> list[LogRun]:
    """Every run log in `logs_dir` with step lines, oldest first."""
    if not Path(logs_dir).is_dir():
        return []
    runs = [parse_log(p) for p in sorted(Path(logs_dir).glob("*.log"))]
    return [r for r in runs if r.rows]


def fit_rows(folder: Path, method: str, runs: list[LogRun]) -> tuple[list[dict], str]:
    """The curve of the fit in `folder` (named by its key) and where it came from ("metrics.jsonl" or a log name).

    Log runs are matched by the key in their "done" line; a run without one (killed, or still running) is used
    for a fit folder of its method that has no manifest yet."""
    jsonl = Path(folder) / "metrics.jsonl"
    if jsonl.exists():
        rows = read_metrics_jsonl(jsonl)
        if rows:
            return rows, "metrics.jsonl"
    key = Path(folder).name
    matched = [r for r in runs if r.key == key]
    if not matched and not (Path(folder) / "manifest.json").exists():
        matched = [r for r in runs if r.key is None and r.method == method][-1:]
    if not matched:
        return [], ""
    by_step = {row["step"]: row for run in matched for row in run.rows}  # a resumed fit: the later run wins
    return [by_step[s] for s in sorted(by_step)], ", ".join(f"logs/{r.log.name}" for r in matched)
