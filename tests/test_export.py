"""`monodyn export` and the 3DGS PLY files it writes.

The PLY format is checked against the INRIA 3DGS layout (header byte for byte, property order, logit opacity, log
scales, SH-DC colour); the command runs through Typer's CliRunner on a workspace whose decode / sfm stages and dpdy
checkpoint are written directly (a hand-built `DynamicGaussians` with known motion bases), so exported positions
have analytic answers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.cameras import Cameras, look_at, opencv_w2c_to_opengl_c2w
from models.dpdy.config import DpDyConfig
from models.dpdy.task import save_checkpoint
from models.errors import InputError
from models.gaussians.model import DynamicGaussians, GaussianSet, MotionBases
from models.gaussians.ply import SH_C0, read_ply, write_ply
from monodyn_cli import pipeline
from monodyn_cli.app import app
from monodyn_cli.console import RichProgress
from monodyn_cli.workspace import Workspace, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
T, W, H = 4, 32, 24
N_STATIC, N_DYNAMIC = 5, 3
INRIA_PROPERTIES = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def inria_header(n: int, properties=INRIA_PROPERTIES) -> bytes:
    """What the INRIA code's `save_ply` (plyfile) writes before the vertex data."""
    return ("ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
            + "".join(f"property float {p}\n" for p in properties) + "end_header\n").encode()


def random_gaussians(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    return {"means": rng.normal(size=(n, 3)).astype(np.float32),
            "quats": (quats / np.linalg.norm(quats, axis=1, keepdims=True)).astype(np.float32),
            "scales": np.exp(rng.uniform(-6, 1, size=(n, 3))).astype(np.float32),
            "opacities": rng.uniform(0.01, 0.99, size=n).astype(np.float32),
            "colors": rng.uniform(0, 1, size=(n, 3)).astype(np.float32)}


# ---- the PLY file ----------------------------------------------------------------------------------------------

def test_ply_is_the_inria_layout_and_round_trips(tmp_path):
    g = random_gaussians(50)
    path = tmp_path / "g.ply"
    write_ply(path, **g)
    data = path.read_bytes()
    header = inria_header(50)
    assert data[:len(header)] == header and len(data) == len(header) + 50 * 17 * 4

    raw = np.frombuffer(data[len(header):], dtype=np.dtype([(p, "<f4") for p in INRIA_PROPERTIES]))
    p = g["opacities"].astype(np.float64)
    np.testing.assert_allclose(raw["opacity"], np.log(p / (1 - p)), rtol=1e-6)       # logit
    np.testing.assert_allclose(np.stack([raw[f"scale_{i}"] for i in range(3)], 1), np.log(g["scales"]), rtol=1e-6)
    np.testing.assert_allclose(np.stack([raw[f"f_dc_{i}"] for i in range(3)], 1), (g["colors"] - 0.5) / SH_C0,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.stack([raw[a] for a in "xyz"], 1), g["means"])
    np.testing.assert_allclose(np.stack([raw[f"rot_{i}"] for i in range(4)], 1), g["quats"], atol=1e-7)  # wxyz
    assert not np.stack([raw[a] for a in ("nx", "ny", "nz")]).any()

    back = read_ply(path)
    for key in ("means", "quats", "scales", "opacities", "colors"):
        assert back[key].dtype == np.float32 and back[key].shape == g[key].shape
        np.testing.assert_allclose(back[key], g[key], rtol=2e-6, atol=1e-6, err_msg=key)
    assert back["raw"].dtype.names == tuple(INRIA_PROPERTIES)


def test_ply_takes_tensors_normalises_quats_and_keeps_extremes_finite(tmp_path):
    g = {k: torch.from_numpy(v) for k, v in random_gaussians(4).items()}
    g["quats"] = g["quats"] * torch.tensor([[2.0], [0.5], [3.0], [0.0]])  # the last one is zero: identity
    g["opacities"] = torch.tensor([0.0, 1.0, 0.5, 0.25], requires_grad=True)
    write_ply(tmp_path / "t.ply", **g)
    back = read_ply(tmp_path / "t.ply")
    assert np.isfinite(back["raw"]["opacity"]).all()
    np.testing.assert_allclose(back["opacities"], [0.0, 1.0, 0.5, 0.25], atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(back["quats"], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(back["quats"][:3], torch.nn.functional.normalize(g["quats"][:3], dim=1).numpy(),
                               atol=1e-6)
    np.testing.assert_array_equal(back["quats"][3], [1, 0, 0, 0])

    write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0),
              np.zeros((0, 3)))
    assert (tmp_path / "empty.ply").read_bytes() == inria_header(0) and len(read_ply(tmp_path / "empty.ply")["means"]) == 0
    bad = random_gaussians(3)
    bad["means"][1, 2] = np.nan
    with pytest.raises(InputError, match="1 of 3 Gaussians have non-finite means"):
        write_ply(tmp_path / "nan.ply", **bad)
    with pytest.raises(ValueError, match=r"colors must have shape \(N, 3\)"):
        write_ply(tmp_path / "shape.ply", **{**random_gaussians(3), "colors": np.zeros((3, 4))})


def test_read_ply_reads_an_inria_file_with_higher_sh_bands(tmp_path):
    props = INRIA_PROPERTIES[:9] + [f"f_rest_{i}" for i in range(45)] + INRIA_PROPERTIES[9:]
    rec = np.zeros(2, np.dtype([(p, "<f4") for p in props]))
    rec["x"], rec["y"], rec["z"] = [1, 2], [3, 4], [5, 6]
    rec["f_dc_0"], rec["f_rest_7"] = [0.0, 1.0], [0.3, 0.4]
    rec["opacity"] = [0.0, 2.0]
    rec["scale_0"] = [-1.0, 0.0]
    rec["rot_0"], rec["rot_3"] = [2.0, 1.0], [0.0, 1.0]
    path = tmp_path / "inria.ply"
    path.write_bytes(inria_header(2, props) + rec.tobytes())
    g = read_ply(path)
    np.testing.assert_allclose(g["means"], [[1, 3, 5], [2, 4, 6]])
    np.testing.assert_allclose(g["colors"][:, 0], [0.5, 0.5 + SH_C0])
    np.testing.assert_allclose(g["opacities"], [0.5, 1 / (1 + math.exp(-2))], rtol=1e-6)
    np.testing.assert_allclose(g["scales"][:, 0], [math.exp(-1), 1.0], rtol=1e-6)
    np.testing.assert_allclose(g["quats"], [[1, 0, 0, 0], [0.5 ** 0.5, 0, 0, 0.5 ** 0.5]], atol=1e-6)
    np.testing.assert_allclose(g["raw"]["f_rest_7"], [0.3, 0.4])

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(tmp_path / "notes.txt")
    path.write_bytes(inria_header(3, props) + rec.tobytes())
    with pytest.raises(InputError, match="truncated: 2 of 3"):
        read_ply(path)


# ---- a workspace with a dpdy fit -------------------------------------------------------------------------------

def rotz(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def tiny_model() -> DynamicGaussians:
    """Basis 0 turns about z by 30 degrees per frame and moves 0.5 along x per frame; basis 1 rises 0.1 per frame.
    Dynamic Gaussian 0 follows basis 0, Gaussian 1 basis 1, Gaussian 2 an even blend."""
    gen = torch.Generator().manual_seed(0)

    def gaussians(n):
        return GaussianSet(torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen) * 0.3 - 3,
                           torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1),
                           torch.randn(n, generator=gen), torch.randn(n, 3, generator=gen))

    frames = torch.arange(T, dtype=torch.float32)
    half = torch.deg2rad(30.0 * frames) / 2
    rotations = torch.zeros(2, T, 4)
    rotations[0, :, 0], rotations[0, :, 3] = torch.cos(half), torch.sin(half)
    rotations[1, :, 0] = 1
    translations = torch.zeros(2, T, 3)
    translations[0, :, 0] = 0.5 * frames
    translations[1, :, 2] = 0.1 * frames
    logits = torch.tensor([[40.0, -40.0], [-40.0, 40.0], [0.0, 0.0]])
    return DynamicGaussians(gaussians(N_STATIC), gaussians(N_DYNAMIC), MotionBases(rotations, translations), logits,
                            torch.tensor([1, 1, 2]))


def tiny_cameras() -> Cameras:
    eyes = torch.stack([torch.tensor([4.0 * math.sin(a), -4.0 * math.cos(a), 1.0]) for a in np.linspace(-0.3, 0.3, T)])
    f = 30.0
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]).expand(T, 3, 3).clone()
    return Cameras(K, look_at(eyes, torch.zeros(T, 3)), W, H)


def make_workspace(root: Path, fitted: bool = True) -> Path:
    from models.sfm.colmap import fixed_camera_reconstruction, write_images

    ws = root / "ws"
    Workspace(ws).ensure()
    frames = (np.random.default_rng(0).uniform(size=(T, H, W, 3)) * 255).astype(np.uint8)
    cams = tiny_cameras()

    def decode(ctx, _cfg):
        np.save(ctx.out / "frames.npy", frames)
        np.save(ctx.out / "timestamps.npy", np.arange(T) / 10.0)
        return ["frames.npy", "timestamps.npy"]

    def sfm(ctx, _cfg):  # what the sfm stage writes, from known cameras
        names = write_images(frames, ctx.out / "images")
        (ctx.out / "cameras.json").write_text(json.dumps(cams.to_dict()))
        (ctx.out / "sfm.json").write_text(json.dumps({"mode": "colmap", "bounds": {"center": [0, 0, 0], "radius": 1.0}}))
        sparse = ctx.out / "colmap" / "sparse" / "0"
        sparse.mkdir(parents=True)
        fixed_camera_reconstruction(names, cams.K[0].numpy(), cams.w2c.numpy(), W, H).write(sparse)
        return None

    spec = lambda name, depends, run: pipeline.StageSpec(name, 1, depends, run)  # noqa: E731
    pipeline.run_chain(Workspace(ws), [pipeline.StageRequest(spec("decode", (), decode), {"test": 1}),
                                       pipeline.StageRequest(spec("sfm", ("decode",), sfm), {"test": 1})],
                       RichProgress(True))
    if fitted:
        model = tiny_model()
        key = "0123456789abcdef"
        ckpt = ws / "fit" / "dpdy" / key
        ckpt.mkdir(parents=True)
        arch = {"sizes": model.sizes(), "center": [0, 0, 0], "radius": 1.0, "background": "black", "width": W,
                "height": H}
        save_checkpoint(ckpt, model, DpDyConfig(), arch, 0, 0.0)
        write_json_atomic(ckpt / "manifest.json", {  # as monodyn_cli.commands.fit.fit_cached writes it
            "stage": "fit", "method": "dpdy", "version": 1, "key": key, "inputs": {}, "config": {}, "seconds": 0.0,
            "tag": "", "outputs": sorted(p.name for p in ckpt.iterdir())})
        write_json_atomic(ws / "fit" / "current.json", {"dpdy": key, "latest": "dpdy"})
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("export"))


def cli(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"monodyn {' '.join(map(str, args))}\n{result.output}"
    return result.output


def one_error_line(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*")]


# ---- the command -----------------------------------------------------------------------------------------------

def test_export_writes_ply_per_frame_static_and_cameras(workspace):
    out_text = cli("export", "-w", workspace, "-q")
    out = workspace / "export" / "dpdy-0123456789abcdef"
    assert str(out) in out_text.replace("\n", "") and "frame_00003.ply" in out_text and "static.ply" in out_text
    assert sorted(p.name for p in out.glob("*.ply")) == ["frame_00000.ply", "frame_00001.ply", "frame_00002.ply",
                                                         "frame_00003.ply", "static.ply"]
    assert no_temp_files(out)
    for name in ("frame_00000.ply", "static.ply"):  # the 3DGS layout, header byte for byte
        n = N_STATIC + N_DYNAMIC if name.startswith("frame") else N_STATIC
        assert (out / name).read_bytes().startswith(inria_header(n))

    model = tiny_model()
    static = read_ply(out / "static.ply")
    np.testing.assert_allclose(static["means"], model.static.means.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(static["scales"], model.static.scales.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(static["opacities"], model.static.opacities.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(static["colors"], model.static.colors.detach().numpy(), atol=1e-6)
    x = model.dynamic.means.detach().numpy().astype(np.float64)
    q0 = model.dynamic.quats.detach().numpy()[0]
    for t in range(T):
        g = read_ply(out / f"frame_{t:05d}.ply")
        np.testing.assert_allclose(g["means"][:N_STATIC], static["means"])  # static rows first, unmoved
        dyn = g["means"][N_STATIC:]
        # Gaussian 0 rides basis 0 (turn 30 deg/frame about z, then 0.5/frame along x); Gaussian 1 rises 0.1/frame
        np.testing.assert_allclose(dyn[0], rotz(30 * t) @ x[0] + [0.5 * t, 0, 0], atol=1e-5)
        np.testing.assert_allclose(dyn[1], x[1] + [0, 0, 0.1 * t], atol=1e-5)
        qb = np.array([math.cos(math.radians(15 * t)), 0, 0, math.sin(math.radians(15 * t))])
        q = quat_mul(qb, q0)
        assert min(np.abs(g["quats"][N_STATIC] - q).max(), np.abs(g["quats"][N_STATIC] + q).max()) < 1e-5
        np.testing.assert_allclose(g["scales"][N_STATIC:], model.dynamic.scales.detach().numpy(), rtol=1e-5)
    first, last = read_ply(out / "frame_00000.ply")["means"], read_ply(out / "frame_00003.ply")["means"]
    assert np.linalg.norm(last[N_STATIC] - first[N_STATIC]) > 1.0  # the moving Gaussian moved

    doc = json.loads((out / "transforms.json").read_text())
    cams = tiny_cameras()
    assert doc["w"] == W and doc["h"] == H and doc["fl_x"] == pytest.approx(30.0) and len(doc["frames"]) == T
    for t, fr in enumerate(doc["frames"]):
        assert fr["file_path"] == f"images/{t:05d}.png" and (out / fr["file_path"]).stat().st_size > 0
        assert fr["time"] == pytest.approx(t / (T - 1))
        np.testing.assert_allclose(fr["transform_matrix"], opencv_w2c_to_opengl_c2w(cams.w2c[t].double()).numpy(),
                                   atol=1e-5)  # OpenGL camera-to-world in the file
    import pycolmap

    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert rec.num_images() == T
    info = json.loads((out / "export.json").read_text())
    assert info["frames"] == list(range(T)) and info["gaussians"] == {"static": N_STATIC, "dynamic": N_DYNAMIC}
    assert info["dynamic_per_object"] == {"1": 2, "2": 1}

    cli("export", "-w", workspace, "-q")  # again: the same files, replaced whole
    assert no_temp_files(out) and len(list(out.glob("*.ply"))) == 5


def test_export_frame_selection_and_sets(workspace, tmp_path):
    cli("export", "-w", workspace, "-q", "--frames", "1,3", "--dynamic-only", "-o", tmp_path / "dyn")
    assert sorted(p.name for p in (tmp_path / "dyn").glob("*.ply")) == ["frame_00001.ply", "frame_00003.ply"]
    assert len(read_ply(tmp_path / "dyn" / "frame_00003.ply")["means"]) == N_DYNAMIC
    cli("export", "-w", workspace, "-q", "--every", "2", "-o", tmp_path / "every")
    assert sorted(p.name for p in (tmp_path / "every").glob("*.ply")) == ["frame_00000.ply", "frame_00002.ply",
                                                                          "static.ply"]
    cli("export", "-w", workspace, "-q", "--frames", "0-2", "-o", tmp_path / "range")
    assert len(list((tmp_path / "range").glob("frame_*.ply"))) == 3
    cli("export", "-w", workspace, "-q", "--static-only", "-o", tmp_path / "static")
    assert [p.name for p in (tmp_path / "static").glob("*.ply")] == ["static.ply"]
    assert (tmp_path / "static" / "transforms.json").exists()


def test_export_warns_when_the_fit_used_another_sfm_result(tmp_path):
    ws = make_workspace(tmp_path)
    manifest = next((ws / "fit" / "dpdy").glob("*/manifest.json"))
    write_json_atomic(manifest, {**json.loads(manifest.read_text()), "inputs": {"sfm": "feedfeedfeedfeed"}})
    out = cli("export", "-w", ws, "-q", "--static-only")
    assert "warning:" in out and "feedfeedfeedfeed" in out and "may not match" in out


def test_export_killed_midway_leaves_no_partial_file(workspace, tmp_path, monkeypatch):
    from monodyn_cli import exporting as export_cmd

    calls = []

    def dying_write(path, *args):
        calls.append(path)
        if len(calls) == 3:  # static.ply, frame 0, then killed while writing frame 1
            Path(path).write_bytes(b"ply\nformat binary_little_endian 1.0\n")
            raise KeyboardInterrupt
        write_ply(path, *args)

    monkeypatch.setattr(export_cmd, "write_ply", dying_write)
    result = runner.invoke(app, ["export", "-w", str(workspace), "-q", "-o", str(tmp_path / "out")])
    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no temporary folder left


def test_export_errors_are_one_line(workspace, tmp_path):
    assert "frame 7 is out of range; the clip has 4 frames (0..3)" in one_error_line(
        "export", "-w", workspace, "--frames", "0,7")
    assert "--frames expects frame indices" in one_error_line("export", "-w", workspace, "--frames", "a")
    assert "--every must be at least 1" in one_error_line("export", "-w", workspace, "--every", "0")
    assert "choose one" in one_error_line("export", "-w", workspace, "--static-only", "--dynamic-only")
    line = one_error_line("export", "-w", workspace, "--method", "osn")
    assert "not exported yet" in line and "--scale-samples" in line
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert "cannot write to" in one_error_line("export", "-w", workspace, "-o", blocker / "sub")
    assert "exists and is not a folder" in one_error_line("export", "-w", workspace, "-o", blocker)
    bare = make_workspace(tmp_path / "bare", fitted=False)
    assert "no fitted dpdy" in one_error_line("export", "-w", bare)
    assert not (bare / "export").exists()


def test_export_error_in_a_real_shell(tmp_path):
    ws = make_workspace(tmp_path, fitted=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "monodyn_cli", "export", "-w", str(ws)], capture_output=True,
                          text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "no fitted dpdy" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
