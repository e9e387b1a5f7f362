"""A corpus of bad inputs and odd options, as a hostile but realistic user types them: each gives exit code 1
with one line that names the problem (exit 2 only for values the command line itself cannot parse), no
traceback, and nothing new beside the input."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from monodyn_cli.app import app

runner = CliRunner()

# (name, args with {clip} {txt} {empty} {loop} {emptydir} {nows}, words the message must contain)
CASES = [
    ("missing file", ["preprocess", "{dir}/nope.mp4"], "no such file"),
    ("text file", ["preprocess", "{txt}"], "not a video"),
    ("empty mp4", ["preprocess", "{empty}"], "not a video"),
    ("symlink loop", ["preprocess", "{loop}"], "symlink loop"),
    ("folder without images", ["preprocess", "{emptydir}"], "no images"),
    ("blank video", ["preprocess", "{clip}"], "is blank"),
    ("fps nan", ["preprocess", "{clip}", "--fps", "nan"], "--fps"),
    ("fps inf", ["preprocess", "{clip}", "--fps", "inf"], "--fps"),
    ("fps zero", ["preprocess", "{clip}", "--fps", "0"], "--fps"),
    ("fps negative", ["preprocess", "{clip}", "--fps", "-3"], "--fps"),
    ("max frames zero", ["preprocess", "{clip}", "--max-frames", "0"], "--max-frames"),
    ("max side one", ["preprocess", "{clip}", "--max-side", "1"], "--max-side"),
    ("end before start", ["preprocess", "{clip}", "--start", "5", "--end", "2"], "--end"),
    ("fov 175", ["preprocess", "{clip}", "--fov", "175"], "--fov"),
    ("fov nan", ["preprocess", "{clip}", "--fov", "nan"], "--fov"),
    ("negative focal", ["preprocess", "{clip}", "--focal", "-1"], "--focal"),
    ("unknown segmenter", ["preprocess", "{clip}", "--segment", "foo"], "--segment"),
    ("sam without prompts", ["preprocess", "{clip}", "--segment", "sam"], "--point"),
    ("bad point", ["preprocess", "{clip}", "--segment", "sam", "--point", "abc"], "--point"),
    ("unknown flow", ["preprocess", "{clip}", "--flow", "foo"], "--flow"),
    ("unknown depth", ["preprocess", "{clip}", "--depth", "foo"], "--depth"),
    ("unknown until", ["preprocess", "{clip}", "--until", "foo"], "--until"),
    ("unknown force", ["preprocess", "{clip}", "--force", "foo"], "--force"),
    ("unknown decoder", ["preprocess", "{clip}", "--decoder", "foo"], "--decoder"),
    ("sfm max frames 1", ["preprocess", "{clip}", "--sfm-max-frames", "1"], "--sfm-max-frames"),
    ("object area 2", ["preprocess", "{clip}", "--min-object-area", "2"], "--min-object-area"),
    ("unknown method", ["fit", "--method", "nosuch"], "unknown method"),
    ("steps zero", ["fit", "--steps", "0"], "--steps"),
    ("steps negative", ["fit", "--steps", "-5"], "--steps"),
    ("steps text", ["fit", "--steps", "abc"], "--steps"),
    ("minutes nan", ["fit", "--minutes", "nan"], "--minutes"),
    ("unknown fit option", ["fit", "--no-such-option", "3"], "unknown option"),
    ("fit without workspace", ["fit", "-w", "{nows}"], "not a monodyn workspace"),
    ("orbit nan", ["render", "-m", "dpdy", "--orbit", "nan"], "--orbit"),
    ("frames zero", ["render", "-m", "dpdy", "--frames", "0"], "--frames"),
    ("scale zero", ["render", "-m", "dpdy", "--scale", "0"], "--scale"),
    ("time two", ["render", "-m", "dpdy", "--time", "2"], "--time"),
    ("two paths", ["render", "-m", "dpdy", "--orbit", "30", "--dolly", "0.5"], "one camera path"),
    ("fps negative render", ["render", "-m", "dpdy", "--fps", "-1"], "--fps"),
    ("dolly past the centre", ["render", "-m", "dpdy", "--dolly", "1.5"], "--dolly"),
    ("osn scales nan", ["render", "-m", "osn", "--scales", "1,nan"], "--scales"),
    ("render without workspace", ["render", "-w", "{nows}", "-m", "dpdy"], "not a monodyn workspace"),
    ("unknown protocol", ["eval", "--protocol", "foo"], "--protocol"),
    ("every zero", ["eval", "--every", "0"], "--every"),
    ("export both", ["export", "--static-only", "--dynamic-only"], "exclude each other"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import numpy as np

    from monodyn_cli.video_io import write_mp4

    d = tmp_path_factory.mktemp("inputs")
    write_mp4(d / "clip.mp4", np.full((4, 32, 32, 3), 100, np.uint8), 8.0)
    (d / "notes.txt").write_text("not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    os.symlink(d / "loop_b.mp4", d / "loop_a.mp4")
    os.symlink(d / "loop_a.mp4", d / "loop_b.mp4")
    (d / "emptydir").mkdir()
    (d / "nows").mkdir()
    return d


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name,args,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(files, name, args, words, monkeypatch):
    monkeypatch.chdir(files / "nows")  # no workspace here: commands must not find one by accident
    subs = {"dir": files, "clip": files / "clip.mp4", "txt": files / "notes.txt", "empty": files / "empty.mp4",
            "loop": files / "loop_a.mp4", "emptydir": files / "emptydir", "nows": files / "nows"}
    before = sorted(p.name for p in files.iterdir())
    result = runner.invoke(app, [a.format(**subs) for a in args])
    out = result.output.strip()
    assert result.exit_code in (1, 2), out
    assert "Traceback" not in out and words.lower() in out.lower(), out
    if result.exit_code == 1:
        assert len(out.splitlines()) == 1 and out.startswith("error:"), out
    assert sorted(p.name for p in files.iterdir()) == before  # nothing beside the input
    assert sorted(p.name for p in (files / "nows").iterdir()) == []
