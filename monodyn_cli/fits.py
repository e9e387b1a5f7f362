"""The fit cache: `<workspace>/fit/<method>/<key>/`, and which fit of each method `render`/`export` use.

A fit folder holds the method's checkpoint (`config.json` + `*.safetensors`), `metrics.jsonl` (one JSON
object per logged step: step, seconds and the method's metrics, for curves) and `manifest.json`, written
last. The key hashes the method, its checkpoint format, its options and the stage results used, so the same
command is instant the second time. A killed fit leaves a folder without a manifest: `--resume` continues
from its last checkpoint, a plain rerun starts it over.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from models.errors import InputError
from monodyn_cli.workspace import MANIFEST, Workspace, load_manifest, output_sizes, read_json, stage_key, write_json_atomic

FIT_VERSION = 1
METRICS = "metrics.jsonl"  # written by models.fitting.run_fit


def fit_cached(ws: Workspace, method: str, impl, cfg, scene, input_keys: dict[str, str], progress, resume: bool,
               force: bool, log, tag: str = "") -> Path:
    """Run (or reuse) a fit; returns its checkpoint folder. `tag` separates e.g. held-out-evaluation fits,
    which never become the fit that render and export use."""
    config = dataclasses.asdict(cfg)
    key = stage_key(f"fit-{method}{tag}", FIT_VERSION * 1000 + impl.version, config, input_keys)
    out = ws.root / "fit" / method / key
    if not force and load_manifest(out) is not None:
        log(f"fit {method}: cached {key}")
        if not tag:
            _set_current_fit(ws, method, key)
        return out
    if out.exists() and (force or not resume):
        trash = out.with_name(f".trash-{key}-{os.getpid()}")
        os.replace(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a damaged manifest (outputs missing) is redone, not trusted
    start = time.perf_counter()
    total = getattr(cfg, "steps", None)
    with progress.task(f"fit {method}", total) as advance:
        last = [0]

        def report(step: int, total_steps: int | None = None, **metrics) -> None:
            advance(step - last[0], **metrics)  # metrics.jsonl is written by models.fitting.run_fit alone
            last[0] = step
            if step % 100 == 0 and metrics:
                log(f"step {step} " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        try:
            impl.fit(scene, cfg, out, report, resume=resume)
        except Exception:
            from models.fitting import STATE_FILE

            # a fit that failed before its first resume state leaves nothing to continue: remove its folder, so
            # that status does not offer --resume for it (a kill, or one with a state, is kept for --resume)
            if made and not (out / STATE_FILE).exists():
                shutil.rmtree(out, ignore_errors=True)
            raise
    seconds = time.perf_counter() - start
    outputs = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST)
    manifest = {"stage": "fit", "method": method, "version": FIT_VERSION, "format": impl.version, "key": key,
                "inputs": input_keys, "config": config, "seconds": round(seconds, 2), "tag": tag,
                "created": time.time(), "outputs": outputs, "sizes": output_sizes(out, outputs)}
    write_json_atomic(out / MANIFEST, manifest)
    if not tag:
        _set_current_fit(ws, method, key)
    log(f"fit {method}: done {key} in {seconds:.1f}s")
    return out


def _current(ws: Workspace) -> dict:
    path = ws.root / "fit" / "current.json"
    return read_json(path) if path.exists() else {}


def _set_current_fit(ws: Workspace, method: str, key: str) -> None:
    current = _current(ws)
    current.update({method: key, "latest": method})
    write_json_atomic(ws.root / "fit" / "current.json", current)


def latest_method(ws: Workspace) -> str | None:
    """The method fitted last in this workspace (None if none)."""
    return _current(ws).get("latest")


def current_checkpoint(ws: Workspace, method: str | None) -> tuple[str, Path]:
    """The checkpoint `monodyn render`/`export` use: of `method`, or of the method fitted last."""
    current = _current(ws)
    method = method or current.get("latest")
    if not method or method not in current:
        raise InputError(f"no fitted {method or 'method'} in {ws.root}: run `monodyn fit --method "
                         f"{method or 'dpdy'}` first")
    ckpt = ws.root / "fit" / method / current[method]
    if load_manifest(ckpt) is None:
        raise InputError(f"the {method} checkpoint {ckpt} is {fit_state(ckpt, method)[1]}")
    return method, ckpt


def fit_state(folder: Path, method: str) -> tuple[str, str]:
    """(state, what it is and what to do) of a fit folder without a complete manifest, the one wording that both
    `status` and the commands that need the fit use."""
    from models.fitting import STATE_FILE  # (imports torch: only when a fit is not complete)

    if (folder / MANIFEST).exists():
        return "damaged", (f"damaged (a file missing or truncated): `monodyn fit --method {method} --force` redoes "
                           "it")
    if (folder / STATE_FILE).exists():
        return "incomplete", f"incomplete (the fit was stopped): `monodyn fit --method {method} --resume` continues it"
    return "incomplete", f"incomplete (the fit was stopped early): `monodyn fit --method {method}` redoes it"
