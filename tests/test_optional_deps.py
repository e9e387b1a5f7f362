"""fit / render / eval / export on a machine without PyAV, pycolmap, decord or natsort (the lent GPU hosts have
none of them): their modules import, mp4s are still written (OpenCV), and preprocess names what is missing
before it touches anything."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"av", "pycolmap", "decord", "natsort"}:
                raise ImportError(f"No module named {name!r}")
    sys.meta_path.insert(0, Block())
""")


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_method_commands_import_and_write_mp4_without_pyav(tmp_path):
    out = tmp_path / "v.mp4"
    res = run(f"""
        import importlib
        for m in ("monodyn_cli.app", "monodyn_cli.commands.fit", "monodyn_cli.commands.render",
                  "monodyn_cli.commands.eval", "monodyn_cli.exporting", "monodyn_cli.scene_loader",
                  "monodyn_cli.fits", "models.dpdy.method", "models.osn.method"):
            importlib.import_module(m)
        import numpy as np
        from monodyn_cli.video_io import write_mp4
        frames = np.zeros((5, 33, 41, 3), np.uint8)
        frames[:, :, :20] = 200
        write_mp4("{out}", frames, 10.0)
        import cv2
        cap = cv2.VideoCapture("{out}")
        ok, img = cap.read()
        print("frames", int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), img.shape, int(img[10, 5, 0]), int(img[10, 35, 0]))
    """)
    assert res.returncode == 0, res.stderr
    words = res.stdout.split()
    assert "frames 5 (34, 42, 3)" in res.stdout  # odd sizes padded to even, as with PyAV
    assert int(words[-2]) > 150 and int(words[-1]) < 50
    assert not list(tmp_path.glob(".*tmp*"))


def test_preprocess_names_the_missing_package_before_touching_anything(tmp_path):
    import numpy as np

    from monodyn_cli.video_io import write_mp4

    clip = write_mp4(tmp_path / "clip.mp4", np.full((4, 32, 32, 3), 128, np.uint8), 8.0)
    cli = "from monodyn_cli.app import main; sys.argv = ['monodyn'] + sys.argv[1:]; main()"
    for extra, missing in ((["--until", "segment"], "needs PyAV: `pip install av`"),
                           ([], "the sfm stage needs pycolmap: `pip install pycolmap`")):
        res = run(cli, "preprocess", str(clip), "-q", *extra)
        assert res.returncode == 1 and missing in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no workspace beside the input
