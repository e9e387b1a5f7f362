"""One conformance suite over every registered method (models/methods.py), present and future: options are
declared where the CLI finds them, bad options are one-line InputErrors, a fit killed and resumed equals the
uninterrupted one (so the same seed gives the same weights), a checkpoint of another format is refused, and
renders have the Method boundary's shapes and are deterministic. A new method must add its recipe below."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.errors import InputError
from models.methods import METHODS, options_class
from models.registry import NoRenderOptions, check_render_output, get_method
from models.scene import Scene
from monodyn_cli.options import base_type, parse_options
from monodyn_cli.synth import SynthConfig, generate_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_scene(frames: int = 6) -> Scene:
    """The synthetic input view as preprocessing gives it (frames, cameras, masks, flow, sparse depth)."""
    sc = generate_scene(SynthConfig(seed=2, frames=frames, width=64, height=48, objects=1, heldout_azimuths=(),
                                    fixed_cameras=0))
    v = sc.view("input")
    depth = np.asarray(v.depth, np.float32).copy()
    keep = np.zeros_like(depth, bool)
    keep.reshape(-1)[::16] = True
    depth[~keep | (np.asarray(v.instances) > 0)] = 0
    return Scene(frames=np.asarray(v.rgb), timestamps=np.arange(frames) / 12.0, cameras=v.cameras,
                 instances=np.asarray(v.instances), flow_fw=np.asarray(v.flow_fw), flow_bw=np.asarray(v.flow_bw),
                 valid_fw=np.asarray(v.valid_fw), valid_bw=np.asarray(v.valid_bw), depth=depth,
                 center=np.asarray(sc.meta["scene_centre"], np.float32),
                 radius=float(np.median(v.depth[np.isfinite(v.depth)])))


def osn_scene() -> Scene:
    from models.osn.synthetic import scene_from_ground_truth

    sc = generate_scene(SynthConfig(seed=14, frames=8, width=32, height=24, objects=2, heldout_azimuths=(),
                                    fixed_cameras=0))
    v, room = sc.view("input"), sc.meta["room"]
    aabb = [[-room["half_size"], -room["half_size"], 0.0], [room["half_size"], room["half_size"], room["height"]]]
    return scene_from_ground_truth(v.rgb, v.instances, v.depth, v.cameras, sc.object_poses(), aabb=aabb)[0]


# per-video methods: (scene, tiny fit options, step to kill at: after a checkpoint, before the end)
FIT_RECIPES = {
    "dpdy": (small_scene, dict(steps=45, checkpoint_every=20, static_points=1500, dynamic_points=300, keyframes=3,
                               device="cpu", refine_every=20), 30),
    "osn": (osn_scene, dict(steps=40, checkpoint_every=20, bootstrap_fraction=0.4, round_steps=10, scale_steps=5,
                            final_scale_steps=20, scale_candidates=64, background_points=800, object_points=200,
                            keyframes=2, zbuffer_pixels=2000, refine_every=10, device="cpu"), 30),
}
PRETRAINED = {"gcd", "dyst"}  # load their shipped small models; the tiny render recipe is the default options
PER_VIDEO = sorted(n for n in METHODS if n not in PRETRAINED)


def test_every_method_has_a_recipe_here():
    assert set(METHODS) == set(FIT_RECIPES) | PRETRAINED


@pytest.mark.parametrize("name", sorted(METHODS))
def test_options_are_declared_where_the_cli_reads_them(name):
    impl = get_method(name)
    assert impl.name == name and isinstance(impl.version, int)
    assert options_class(name, "Config") is impl.Config
    assert (options_class(name, "RenderOptions") or NoRenderOptions) is impl.RenderOptions
    assert (impl.Config is None) == (name in PRETRAINED)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_options_are_input_errors(name):
    impl = get_method(name)
    for cls in (impl.Config, impl.RenderOptions):
        if cls is None:
            continue
        with pytest.raises(InputError, match="unknown option --no-such-option"):
            parse_options(cls, ["--no-such-option", "1"])
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            base = base_type(hints[f.name])
            if base in (int, float):
                for bad in ("nan", "abc") if base is float else ("1.5", "abc"):
                    with pytest.raises(InputError, match=f"--{f.name.replace('_', '-')}"):
                        parse_options(cls, [f"--{f.name.replace('_', '-')}", bad])
    if impl.Config is not None:
        for field in ("steps",):
            with pytest.raises(InputError, match="--steps"):
                impl.Config(steps=0).validate()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Each per-video method fitted straight through, and killed then resumed (same options)."""
    out = {}
    for name in PER_VIDEO:
        make_scene, options, kill_at = FIT_RECIPES[name]
        impl, scene = get_method(name), make_scene()
        cfg = impl.Config(**options)
        root = tmp_path_factory.mktemp(name)
        impl.fit(scene, cfg, root / "full", lambda *a, **k: None)

        class Killed(Exception):
            pass

        def kill(step, total=None, **metrics):
            if step >= kill_at:
                raise Killed

        with pytest.raises(Killed):
            impl.fit(scene, cfg, root / "killed", kill)
        assert (root / "killed" / "train_state.pt").exists()
        impl.fit(scene, cfg, root / "killed", lambda *a, **k: None, resume=True)
        out[name] = (impl, scene, root)
    return out


@pytest.mark.parametrize("name", PER_VIDEO)
def test_killed_and_resumed_fit_equals_the_uninterrupted_one(fitted, name):
    _, _, root = fitted[name]
    a, b = load_file(str(root / "full" / "model.safetensors")), load_file(str(root / "killed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (root / "killed" / "train_state.pt").exists()


@pytest.mark.parametrize("name", PER_VIDEO)
def test_checkpoint_round_trip_renders_and_refuses_other_formats(fitted, name, tmp_path):
    impl, scene, root = fitted[name]
    cams, times = scene.cameras[torch.tensor([0, 3])], scene.times[[0, 3]]
    renderer = impl.load(root / "full", scene, impl.RenderOptions(), "cpu")
    first = check_render_output(renderer.render(cams, times), 2, scene.height, scene.width, name)
    again = impl.load(root / "killed", scene, impl.RenderOptions(), "cpu").render(cams, times)
    assert torch.equal(first.rgb, again.rgb) and float(first.rgb.min()) >= 0 and float(first.rgb.max()) <= 1
    # another checkpoint format: one line that says to refit
    import shutil

    other = tmp_path / "other"
    shutil.copytree(root / "full", other)
    doc = json.loads((other / "config.json").read_text())
    doc["version" if "version" in doc else "format"] = impl.version + 1
    (other / "config.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="refit"):
        impl.load(other, scene, impl.RenderOptions(), "cpu")
    (other / "config.json").write_text("{trunc")
    with pytest.raises(InputError, match="refit"):
        impl.load(other, scene, impl.RenderOptions(), "cpu")


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_pretrained_methods_render_the_boundary_shapes_deterministically(name):
    impl = get_method(name)
    scene = small_scene(frames=6)
    try:
        renderer = impl.load(None, scene, impl.RenderOptions(), "cpu")
    except InputError as e:  # the shipped small model is part of the repository; its absence is a failure
        pytest.fail(f"{name}: the shipped model does not load: {e}")
    cams, times = scene.cameras[torch.tensor([0, 2, 4])], scene.times[[0, 2, 4]]
    a = check_render_output(renderer.render(cams, times), 3, scene.height, scene.width, name)
    b = renderer.render(cams, times)
    assert torch.equal(a.rgb, b.rgb)
    assert math.isfinite(float(a.rgb.sum())) and float(a.rgb.min()) >= 0 and float(a.rgb.max()) <= 1
