"""Outputs that never destroy anything: a corpus of output-side cases as a careless user types them (each one line,
exit code 1, the user's files byte-identical, the workspace still passing `status`, nothing new anywhere), the
output policy's parts (temporaries, commit, abort, stale leftovers), and every option a message suggests exists."""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer.main
from conftest import preprocessed_synth
from typer.testing import CliRunner

from models.errors import InputError
from models.methods import METHODS, options_class
from monodyn_cli.app import app
from monodyn_cli.outputs import Outputs, check_output, clean_stale, stale_outputs

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A fitted workspace `ws` of the clip `s/input.mp4`, a good earlier render, the input cameras as a
    camera_path.json, and the user's own files: a folder of notes, a FIFO and a link to /dev/full."""
    root = tmp_path_factory.mktemp("site")
    ws = preprocessed_synth(root, seed=4, frames=8)
    fit = runner.invoke(app, ["fit", "-w", str(ws), "-q", "--steps", "20", "--static-points", "1500", "--dynamic-points",
                              "300", "--keyframes", "3", "--device", "cpu", "--seed", "3"])
    assert fit.exit_code == 0, fit.output
    user = root / "user"
    user.mkdir()
    res = runner.invoke(app, ["render", "-w", str(ws), "-q", "-o", str(user / "good.mp4")])
    assert res.exit_code == 0, res.output
    (user / "good-camera_path.json").rename(user / "path.json")
    (user / "notes").mkdir()
    (user / "notes" / "todo.txt").write_text("keep me\n")
    os.mkfifo(user / "pipe.mp4")
    os.mkfifo(user / "pipe.html")
    os.symlink("/dev/full", user / "full.mp4")
    os.symlink("/dev/full", user / "full.html")
    base = json.loads((user / "path.json").read_text())
    for name, change in CAMERA_PATHS.items():
        doc = copy.deepcopy(base)
        change(doc)
        (user / f"{name}.json").write_text(json.dumps(doc))
    return root


def _set(key, value, entry=0):
    def change(doc):
        target = doc["camera_path"][entry] if entry is not None else doc
        target[key] = value
    return change


def _c2w(index, value):
    def change(doc):
        doc["camera_path"][0]["camera_to_world"][index] = value
    return change


def _away(doc):
    """Every camera turned round (180 degrees about its own up axis) and moved far back: it sees nothing."""
    for e in doc["camera_path"]:
        m = np.array(e["camera_to_world"]).reshape(4, 4)
        m[:3, [0, 2]] *= -1
        m[:3, 3] += 50 * m[:3, 2]  # OpenGL: +z points backwards from the new view direction
        e["camera_to_world"] = m.reshape(-1).tolist()


def _many(doc):
    doc["camera_path"] = doc["camera_path"][:1] * 100_001


def _huge(doc):
    """Every size within the file format's bounds, but 1000 frames of 16384 x 16384 fit in no memory."""
    doc.update(render_height=16384, render_width=16384, camera_path=doc["camera_path"][:1] * 1000)


CAMERA_PATHS = {"nan": _c2w(3, float("nan")), "inf": _c2w(7, float("inf")), "huge": _c2w(0, 1e308),
                "far": _c2w(3, 1e30), "fov0": _set("fov", 0), "fov180": _set("fov", 180), "fovhuge": _set("fov", 1e308),
                "tall": _set("render_height", 100000, None), "wide": _set("render_width", 100000, None),
                "many": _many, "huge_frames": _huge, "away": _away}

# (name, args with {ws} {clip} {user} {root}, words the one line must contain)
CASES = [
    ("render over the input clip", ["render", "-w", "{ws}", "-o", "{clip}"], "the input"),
    ("render over state.json", ["render", "-w", "{ws}", "-o", "{ws}/state.json"], "mp4"),
    ("render into a stage folder", ["render", "-w", "{ws}", "-o", "{ws}/decode/x.mp4"], "own state"),
    ("render beside state.json", ["render", "-w", "{ws}", "-o", "{ws}/x.mp4"], "files of the workspace"),
    ("render to a FIFO", ["render", "-w", "{ws}", "-o", "{user}/pipe.mp4"], "FIFO"),
    ("render to /dev/full", ["render", "-w", "{ws}", "-o", "{user}/full.mp4"], "device"),
    ("render to /dev/full directly", ["render", "-w", "{ws}", "-o", "/dev/full"], "mp4"),
    ("render to a folder", ["render", "-w", "{ws}", "-o", "{user}/notes"], "mp4"),
    ("render over its camera path", ["render", "-w", "{ws}", "--camera-path", "{user}/x-camera_path.json", "-o",
                                     "{user}/x.mp4"], "the input"),
    ("export into the workspace root", ["export", "-w", "{ws}", "-o", "{ws}"], "itself"),
    ("export into a stage folder", ["export", "-w", "{ws}", "-o", "{ws}/sfm"], "own state"),
    ("export over the clip's folder", ["export", "-w", "{ws}", "-o", "{root}/s"], "holds the input"),
    ("export over a user folder", ["export", "-w", "{ws}", "-o", "{user}/notes"], "did not write"),
    ("export over a file", ["export", "-w", "{ws}", "-o", "{user}/good.mp4"], "not a folder"),
    ("report over state.json", ["report", "{ws}", "-o", "{ws}/state.json"], "files of the workspace"),
    ("report to a FIFO", ["report", "{ws}", "-o", "{user}/pipe.html"], "FIFO"),
    ("report to /dev/full", ["report", "{ws}", "-o", "{user}/full.html"], "device"),
    ("report to a folder", ["report", "{ws}", "-o", "{user}/notes"], "folder"),
    ("report over the clip", ["report", "{ws}", "-o", "{clip}"], "the input"),
    ("synth into a workspace", ["synth", "{ws}", "--force"], "workspace"),
    ("synth over a user folder", ["synth", "{user}/notes", "--force"], "did not write"),
    ("train gcd into a workspace", ["train", "gcd", "-o", "{ws}"], "itself"),
    ("train gcd steps 0", ["train", "gcd", "--steps", "0"], "--steps"),
    ("train gcd minutes nan", ["train", "gcd", "--minutes", "nan"], "--minutes"),
    ("train dyst steps 0", ["train", "dyst", "--steps", "0", "--no-real"], "--steps"),
    ("train dyst into stage state", ["train", "dyst", "-o", "{ws}/fit/x", "--no-real", "--scenes", "1"], "own state"),
    ("dyst eval json over state", ["dyst", "eval", "-o", "{ws}/state.json"], "files of the workspace"),
    ("camera path nan", ["render", "-w", "{ws}", "--camera-path", "{user}/nan.json", "-o", "{user}/good.mp4"], "nan"),
    ("camera path inf", ["render", "-w", "{ws}", "--camera-path", "{user}/inf.json", "-o", "{user}/good.mp4"], "inf"),
    ("camera path 1e308", ["render", "-w", "{ws}", "--camera-path", "{user}/huge.json"], "rotation"),
    ("camera path far", ["render", "-w", "{ws}", "--camera-path", "{user}/far.json"], "position"),
    ("camera path fov 0", ["render", "-w", "{ws}", "--camera-path", "{user}/fov0.json"], "fov"),
    ("camera path fov 180", ["render", "-w", "{ws}", "--camera-path", "{user}/fov180.json"], "fov"),
    ("camera path fov 1e308", ["render", "-w", "{ws}", "--camera-path", "{user}/fovhuge.json"], "fov"),
    ("camera path tall", ["render", "-w", "{ws}", "--camera-path", "{user}/tall.json"], "render_height"),
    ("camera path wide", ["render", "-w", "{ws}", "--camera-path", "{user}/wide.json"], "render_width"),
    ("camera path 100001 entries", ["render", "-w", "{ws}", "--camera-path", "{user}/many.json"], "100000"),
    ("camera path beyond memory", ["render", "-w", "{ws}", "--camera-path", "{user}/huge_frames.json"], "memory"),
    ("frames and scale beyond memory", ["render", "-w", "{ws}", "--frames", "100000", "--scale", "4", "--depth",
                                        "--side-by-side"], "memory"),
    ("render looking away", ["render", "-w", "{ws}", "--camera-path", "{user}/away.json", "-o",
                             "{root}/new/deep/away.mp4"], "--allow-empty"),
    ("render looking away over a good render", ["render", "-w", "{ws}", "--camera-path", "{user}/away.json", "-o",
                                                "{user}/good.mp4", "--png", "--depth"], "empty"),
    ("orbit 1e30", ["render", "-w", "{ws}", "--orbit", "1e30"], "--orbit"),
    ("orbit 1e308", ["render", "-w", "{ws}", "--orbit", "1e308"], "--orbit"),
    ("scale 0.001", ["render", "-w", "{ws}", "--scale", "0.001"], "--scale"),
    ("degrees without bullet time", ["render", "-w", "{ws}", "--degrees", "40"], "--bullet-time"),
    ("time with bullet time", ["render", "-w", "{ws}", "--bullet-time", "0.5", "--time", "0.2"], "--time"),
    ("time without a path", ["render", "-w", "{ws}", "--time", "0.2"], "--orbit"),
    ("frames with a camera path", ["render", "-w", "{ws}", "--camera-path", "{user}/path.json", "--frames", "9"],
     "--frames"),
    ("holdout with gt", ["eval", "-w", "{ws}", "--protocol", "holdout", "--gt", "{root}/s"], "--gt"),
    ("cameras without synth", ["eval", "-w", "{ws}", "--cameras", "heldout_az30"], "--cameras"),
    ("damaged fit", ["render", "-w", "{root}/damaged"], "--force"),
    ("report without a workspace", ["report"], "first argument"),
    ("dyst pca without a workspace", ["dyst", "pca"], "first argument"),
]


def snapshot(*roots: Path) -> dict:
    """Every path below `roots` with its kind and, for files, a hash of the bytes."""
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[str(p)] = ("dir" if p.is_dir() else "special", None)
    return out


def test_the_corpus_covers_the_reported_cases():
    assert len(CASES) >= 40


def _damaged(root: Path) -> Path:
    """A copy of the workspace whose current fit lost its weights."""
    damaged = root / "damaged"
    if not damaged.exists():
        shutil.copytree(root / "ws", damaged, symlinks=True)
        next(damaged.glob("fit/dpdy/*/model.safetensors")).unlink()
    return damaged


@pytest.mark.parametrize("name,args,words", CASES, ids=[c[0] for c in CASES])
def test_output_case_gives_one_line_and_changes_nothing(site, name, args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder: no workspace found by accident, and nothing may appear here
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "cache"))
    _damaged(site)
    subs = {"ws": site / "ws", "clip": site / "s" / "input.mp4", "user": site / "user", "root": site}
    if name == "render over its camera path":
        shutil.copy(site / "user" / "path.json", site / "user" / "x-camera_path.json")
    before = snapshot(site, tmp_path)
    result = runner.invoke(app, [a.format(**subs) for a in args])
    out = result.output.strip()
    assert result.exit_code == 1, out
    *warnings, line = out.splitlines()  # a render that leaves the scene may warn first (one line each)
    assert line.startswith("error:") and all(w.startswith("warning:") for w in warnings), out
    assert "Traceback" not in out and words.lower() in line.lower(), out
    assert snapshot(site, tmp_path) == before  # the user's files byte-identical, nothing new anywhere
    _assert_suggested_options_exist(args, line)
    status = runner.invoke(app, ["status", str(site / "ws")])
    assert status.exit_code == 0, status.output
    assert not re.search(r"crashed|damaged|incomplete|temporary", status.output), status.output


def test_an_empty_render_is_written_only_with_allow_empty(site, tmp_path):
    out = tmp_path / "away.mp4"
    result = runner.invoke(app, ["render", "-w", str(site / "ws"), "-q", "--camera-path", str(site / "user" / "away.json"),
                                 "-o", str(out), "--allow-empty"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["away-camera_path.json", "away.mp4"]


def test_a_render_replaces_an_earlier_one_whole_and_its_png_folder(site, tmp_path):
    args = ["render", "-w", str(site / "ws"), "-q", "--frames", "3", "--png", "-o", str(tmp_path / "r.mp4")]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "r" / "00009.png").write_bytes(b"old frame")  # a frame of a longer earlier render
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    (tmp_path / "r" / "mine.txt").write_text("not a frame")
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "did not write" in result.output
    assert (tmp_path / "r" / "mine.txt").exists() and not list(tmp_path.glob(".*"))


def test_status_and_render_give_the_same_advice_for_a_damaged_fit(site):
    damaged = _damaged(site)
    render = runner.invoke(app, ["render", "-w", str(damaged)])
    status = runner.invoke(app, ["status", str(damaged)])
    advice = "`monodyn fit --method dpdy --force` redoes it"
    assert advice in render.output and advice in " ".join(status.output.split()), (render.output, status.output)


def test_a_fit_that_fails_before_any_state_leaves_no_folder(site, tmp_path):
    from monodyn_cli.fits import fit_cached
    from monodyn_cli.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.ensure()

    class Failing:
        version = 1

        def fit(self, scene, cfg, out, report, resume=False):
            (out / "half.bin").write_bytes(b"x")
            raise InputError("the scene has no moving objects")

    @dataclasses.dataclass
    class Cfg:
        steps: int = 5

    with pytest.raises(InputError):
        fit_cached(ws, "osn", Failing(), Cfg(), None, {}, _Quiet(), resume=False, force=False, log=lambda s: None)
    assert list((tmp_path / "ws" / "fit" / "osn").iterdir()) == []


class _Quiet:
    from contextlib import contextmanager

    @contextmanager
    def task(self, *a):
        yield lambda *a, **k: None


# ---- the policy's parts ---------------------------------------------------------------------------------------

def test_outputs_commit_renames_abort_removes_and_made_folders_go(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    with pytest.raises(RuntimeError), Outputs() as outputs:
        outputs.file(target).write_text("half")
        raise RuntimeError("failed midway")
    assert list(tmp_path.iterdir()) == []  # the temporary and both folders this run made are gone
    with Outputs() as outputs:
        tmp = outputs.file(target)
        assert tmp.exists() and tmp.parent == target.parent and not target.exists()  # reserved before any work
        tmp.write_text("whole")
        outputs.commit()
    assert target.read_text() == "whole" and [p.name for p in target.parent.iterdir()] == ["x.txt"]


def test_a_folder_output_replaces_an_earlier_one_only_when_whole(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "export.json").write_text("{}")
    (target / "old.ply").write_text("old")
    ok = lambda p: (p / "export.json").exists()  # noqa: E731
    with pytest.raises(KeyboardInterrupt), Outputs() as outputs:
        (outputs.folder(target, replaceable=ok) / "new.ply").write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["export.json", "old.ply"]
    with Outputs() as outputs:
        (outputs.folder(target, replaceable=ok) / "new.ply").write_text("new")
        outputs.commit()
    assert sorted(p.name for p in target.iterdir()) == ["new.ply"] and len(list(tmp_path.iterdir())) == 1


def test_stale_temporaries_of_a_dead_run_are_listed_then_cleaned(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "workspace.json").write_text("{}")
    dead = 99999999  # no such process
    far = tmp_path / "elsewhere" / f".render.tmp-{dead}-0123abcd.mp4"
    far.parent.mkdir()
    far.write_bytes(b"half a video")
    inside = ws / "renders" / f".x.tmp-{dead}-89abcdef.mp4"
    inside.parent.mkdir()
    inside.write_bytes(b"half")
    (ws / f".outputs-{dead}-00000000.json").write_text(json.dumps({"temporaries": [str(far)],
                                                                    "folders": [str(far.parent)]}))
    alive = ws / "renders" / f".y.tmp-{os.getpid()}-89abcdef.mp4"  # a run still writing: never touched
    alive.write_bytes(b"busy")
    assert stale_outputs(ws) == sorted([far, inside])
    status = runner.invoke(app, ["status", str(ws)])
    assert "2 temporary file(s) of killed runs" in status.output and str(far) in status.output.replace("\n", "")
    assert clean_stale(ws) == sorted([far, inside])
    assert not far.parent.exists() and not inside.exists() and alive.exists()
    assert not list(ws.glob(".outputs-*")) and stale_outputs(ws) == []


def test_check_output_follows_links_and_hard_links_to_inputs(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"video")
    os.symlink(clip, tmp_path / "link.mp4")
    os.link(clip, tmp_path / "hard.mp4")
    for name in ("clip.mp4", "link.mp4", "hard.mp4"):
        with pytest.raises(InputError, match="the input"):
            check_output(tmp_path / name, inputs=[clip])
    assert check_output(tmp_path / "other.mp4", inputs=[clip]) == tmp_path / "other.mp4"


def test_user_text_is_not_rich_markup(capsys):
    from monodyn_cli.console import error

    error("no workspace [bold]x[/bold] in ws:abc: or :smile:")
    assert "no workspace [bold]x[/bold] in ws:abc: or :smile:" in capsys.readouterr().err


def test_an_unexpected_error_names_no_exception_class(monkeypatch, tmp_path):
    from monodyn_cli import exporting

    def broken(*a, **k):
        raise AttributeError("'NoneType' object has no attribute 'frames'")

    monkeypatch.setattr(exporting, "resolve_workspace", broken)
    result = runner.invoke(app, ["export", "-w", str(tmp_path)])
    assert result.exit_code == 1 and "AttributeError" not in result.output and "NoneType" not in result.output
    assert "--debug" in result.output


# ---- every option a message suggests exists ---------------------------------------------------------------------

def _command_options() -> dict[tuple[str, ...], set[str]]:
    """Every command path (("render",), ("train", "gcd"), ...) with its options; fit, render and eval also take
    their methods' options."""
    found = {}

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        found[path] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}

    walk(typer.main.get_command(app), ())
    for command, kind in (("fit", "Config"), ("eval", "Config"), ("render", "RenderOptions")):
        for method in METHODS:
            cls = options_class(method, kind)
            for f in dataclasses.fields(cls) if cls else ():
                flag = "--" + f.name.replace("_", "-")
                found[(command,)] |= {flag, "--no-" + f.name.replace("_", "-"), f.metadata.get("option", flag)}
    return found


OPTIONS = _command_options()
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _command_of(words: list[str]) -> tuple[str, ...]:
    path: tuple[str, ...] = ()
    for w in words:
        if (*path, w) not in OPTIONS:
            break
        path = (*path, w)
    return path


def _assert_suggested_options_exist(args: list[str], line: str) -> None:
    """Every --option in a message exists on the command run, or on the command the message names in backticks."""
    named = [_command_of(m.split()) for m in re.findall(r"`monodyn ([^`]*)`", line)]
    allowed = OPTIONS[_command_of(args)] | {o for c in named for o in OPTIONS[c]}
    for flag in FLAG.findall(line):
        assert flag in allowed, f"{line!r} suggests {flag}, which {' '.join(_command_of(args))} does not have"


def _messages(path: Path):
    """Every string literal of a source file, f-strings with their fields as X, adjacent literals joined."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_every_option_a_message_names_with_its_command_exists():
    """Messages and docstrings name commands as `monodyn CMD ... --option`: each option must exist on CMD."""
    wrong = []
    for path in sorted([*ROOT.glob("monodyn_cli/**/*.py"), *ROOT.glob("models/**/*.py")]):
        for text in _messages(path):
            for snippet in re.findall(r"`monodyn ([^`]*)`", text):
                words = snippet.split()
                command = _command_of(words)
                if not command:
                    continue
                wrong += [f"{path.relative_to(ROOT)}: `monodyn {snippet}` ({flag})" for flag in FLAG.findall(snippet)
                          if flag not in OPTIONS[command]]
    assert not wrong, "\n".join(wrong)


def test_every_option_any_message_names_exists_somewhere():
    """An option named anywhere in a message (without its command) is at least an option of some command."""
    every = set().union(*OPTIONS.values()) | {"--flag", "--no-flag", "--name", "--kebab-case"}  # options.py's examples
    sources = [p for p in [*ROOT.glob("monodyn_cli/**/*.py"), *ROOT.glob("models/**/*.py")] if p.name != "html.py"]  # CSS
    wrong = sorted({f"{path.relative_to(ROOT)}: {flag}" for path in sources for text in _messages(path)
                    for flag in FLAG.findall(text) if flag not in every and not flag.endswith("-")})
    assert not wrong, "\n".join(wrong)


def test_make_demo_renders_where_the_output_policy_allows(site):
    """`make demo` passes `--output` inside its workspace: that path must be one the policy accepts (it once
    refused `build/demo/orbit90.mp4` and the README's first command failed)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo_ws = re.search(r"^DEMO\s*:=\s*(\S+)", makefile, re.M).group(1)
    out = re.search(r"render .*--output \$\(DEMO\)(\S*)", makefile).group(1)
    assert demo_ws == "build/demo"
    check_output(Path(str(site / "ws") + out), workspace=site / "ws")
