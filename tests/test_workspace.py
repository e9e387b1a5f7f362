"""The stage cache: hits, misses, --force, crash repair, locking, and the user's input left untouched."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import pattern_frames, write_video

from monodyn_cli import pipeline
from monodyn_cli.workspace import Progress, Workspace, WorkspaceBusyError, stage_key

CALLS: list[str] = []


def _writer(name: str):
    def run(ctx, cfg):
        CALLS.append(name)
        value = cfg["value"] + sum(json.loads(r.file("out.json").read_text())["v"] for r in ctx.inputs.values())
        (ctx.out / "out.json").write_text(json.dumps({"v": value}))
        return ["out.json"]
    return run


A = pipeline.StageSpec("a", 1, (), _writer("a"))
B = pipeline.StageSpec("b", 1, ("a",), _writer("b"))
C = pipeline.StageSpec("c", 1, ("b",), _writer("c"))


def _chain(ws, va=1, vb=10, vc=100, force=None, progress=None):
    reqs = [pipeline.StageRequest(A, {"value": va}), pipeline.StageRequest(B, {"value": vb}),
            pipeline.StageRequest(C, {"value": vc})]
    return pipeline.run_chain(ws, reqs, progress or Progress(), force=force)


def test_key_depends_on_everything_and_is_canonical():
    k = stage_key("flow", 1, {"a": 1, "b": 2}, {"decode": "x"})
    assert k == stage_key("flow", 1, {"b": 2, "a": 1}, {"decode": "x"}) and len(k) == 16
    assert len({k, stage_key("flow", 2, {"a": 1, "b": 2}, {"decode": "x"}),
                stage_key("flow", 1, {"a": 1, "b": 3}, {"decode": "x"}),
                stage_key("flow", 1, {"a": 1, "b": 2}, {"decode": "y"}),
                stage_key("segment", 1, {"a": 1, "b": 2}, {"decode": "x"})}) == 5


def test_hit_miss_and_force(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    CALLS.clear()
    res = _chain(ws)
    assert CALLS == ["a", "b", "c"] and json.loads(res["c"].file("out.json").read_text())["v"] == 111
    CALLS.clear()
    res = _chain(ws)
    assert CALLS == [] and all(r.cached for r in res.values())
    CALLS.clear()
    res = _chain(ws, vb=20)  # config change in b: b and its dependant c rerun, a is cached
    assert CALLS == ["b", "c"] and json.loads(res["c"].file("out.json").read_text())["v"] == 121
    CALLS.clear()
    _chain(ws, vb=20, force=["b"])
    assert CALLS == ["b", "c"]
    assert ws.current("c").key == res["c"].key


def test_folder_without_manifest_is_redone(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    res = _chain(ws)
    (res["b"].path / "manifest.json").unlink()  # what a kill before the manifest rename leaves
    (res["b"].path / "out.json").write_text("{trunc")
    CALLS.clear()
    res2 = _chain(ws)
    assert CALLS == ["b"]  # b redone; c's key is unchanged (same inputs) so it stays cached
    assert json.loads(res2["b"].file("out.json").read_text())["v"] == 11
    assert [r for r in ws.entries() if r["manifest"] is None] == []


@pytest.mark.parametrize("damage", ["deleted output", "truncated output", "truncated manifest"])
def test_damaged_results_are_not_served_from_cache(tmp_path, damage):
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    res = _chain(ws)
    out, manifest = res["b"].file("out.json"), res["b"].file("manifest.json")
    if damage == "deleted output":
        out.unlink()
    elif damage == "truncated output":
        out.write_text(out.read_text()[:3])
    else:
        manifest.write_text(manifest.read_text()[:20])
    assert ws.current("b") is None  # status and loaders see it as not done
    warnings = []

    class Warn(Progress):
        def warn(self, message):
            warnings.append(message)

    CALLS.clear()
    res2 = _chain(ws, progress=Warn())
    assert CALLS == ["b"] and json.loads(res2["b"].file("out.json").read_text())["v"] == 11
    assert len(warnings) == 1 and "damaged" in warnings[0] and str(res["b"].path) in warnings[0]


def test_status_tells_a_running_stage_from_a_crashed_one(tmp_path):
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    (ws.root / "decode" / "0123456789abcdef").mkdir(parents=True)  # a result without manifest
    crashed = CliRunner().invoke(app, ["status", str(ws.root)])
    assert "crashed" in crashed.output and "running (pid" not in crashed.output
    with ws.lock():
        running = CliRunner().invoke(app, ["status", str(ws.root)])
        assert f"running (pid {os.getpid()}" in running.output
        with pytest.raises(Exception, match="a monodyn run .* is working in it"):
            ws.require("sfm")


def _slow_stage_process(root: str, started) -> None:
    ws = Workspace(Path(root))

    def run(ctx):
        (ctx.out / "part.npy").write_bytes(b"x" * 1000)
        started.set()
        time.sleep(30)
        return ["part.npy"]
    with ws.lock():
        ws.run_stage("slow", 1, {}, {}, run)


def test_killed_run_leaves_a_workspace_the_next_run_repairs(tmp_path):
    root = tmp_path / "ws"
    Workspace(root).ensure()
    started = mp.get_context("fork").Event()
    proc = mp.get_context("fork").Process(target=_slow_stage_process, args=(str(root), started))
    proc.start()
    assert started.wait(20)
    # while it runs, the workspace is locked against a second writer
    with pytest.raises(WorkspaceBusyError):
        with Workspace(root).lock():
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    ws = Workspace(root)
    crashed = [r for r in ws.entries() if r["manifest"] is None]
    assert len(crashed) == 1 and ws.current("slow") is None
    with ws.lock():  # the lock died with the process
        res = ws.run_stage("slow", 1, {}, {}, lambda ctx: (ctx.out / "part.npy").write_bytes(b"ok") and ["part.npy"])
    assert res.file("part.npy").read_bytes() == b"ok" and not res.cached
    assert [r for r in ws.entries() if r["manifest"] is None] == []


def test_preprocess_never_modifies_the_input(tmp_path):
    from typer.testing import CliRunner

    from monodyn_cli.app import app

    video = write_video(tmp_path / "clip.mp4", pattern_frames(6))
    before = hashlib.sha256(video.read_bytes()).hexdigest(), video.stat().st_mtime_ns
    listing = sorted(os.listdir(tmp_path))
    result = CliRunner().invoke(app, ["preprocess", str(video), "--workspace", str(tmp_path / "ws"), "-q"])
    assert result.exit_code == 0, result.output
    assert (hashlib.sha256(video.read_bytes()).hexdigest(), video.stat().st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == sorted(listing + ["ws"])
    frames = np.load(tmp_path / "ws" / "decode" / Workspace(tmp_path / "ws").current("decode").key / "frames.npy",
                     mmap_mode="r")
    assert frames.shape == (6, 48, 64, 3)
