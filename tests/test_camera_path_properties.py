"""Property tests over the fields of a nerfstudio camera_path.json, as test_option_properties.py does for options:
whatever a field holds (nan, inf, 1e308, 0, negatives, text, null, a wrong shape), `load_camera_path` either
refuses the file with one line naming it or returns cameras that can be rendered: finite, rigid poses, a fov in
(0, 180), sizes within bounds, times in [0, 1]."""

from __future__ import annotations

import json
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.errors import InputError
from monodyn_cli.paths import MAX_RENDER_SIDE, MIN_RENDER_SIDE, load_camera_path

ODD = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 0, -1, 1e-300, 1e30, "abc", None, [], True]
FIELDS = {
    "camera_to_world": st.integers(0, 15),  # which of the 16 numbers changes
    "fov": st.sampled_from(ODD + [1e-3, 45.0, 179.9, 180, 181]),
    "render_time": st.sampled_from(ODD + [0.5, 1.0, 1.1]),
    "render_height": st.sampled_from(ODD + [7, 8, 480, 16384, 16385, 100000, 480.5]),
    "render_width": st.sampled_from(ODD + [7, 8, 640, 16385]),
    "aspect": st.sampled_from(ODD + [1.5]),
}


def good_entry(angle: float) -> dict:
    c, s = math.cos(angle), math.sin(angle)
    return {"camera_to_world": [c, 0, s, 2 * s, 0, 1, 0, 0, -s, 0, c, 2 * c, 0, 0, 0, 1], "fov": 50.0,
            "aspect": 4 / 3, "render_time": 0.25}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(FIELDS)), data=st.data(), entries=st.integers(1, 3), odd=st.sampled_from(ODD),
       drop_width=st.booleans())
def test_any_field_value_is_refused_in_one_line_or_renderable(tmp_path, field, data, entries, odd, drop_width):
    doc = {"camera_type": "perspective", "render_height": 48, "render_width": 64,
           "camera_path": [good_entry(0.3 * i) for i in range(entries)]}
    if drop_width:
        del doc["render_width"]  # then the first entry's aspect decides it
    where = doc if field in ("render_height", "render_width") else doc["camera_path"][-1]
    if field == "camera_to_world":
        where["camera_to_world"][data.draw(FIELDS[field])] = odd
    else:
        where[field] = data.draw(FIELDS[field])
    path = tmp_path / "camera_path.json"
    path.write_text(json.dumps(doc))  # nan/inf as the JSON extensions Python (and nerfstudio) write
    try:
        cams, times = load_camera_path(path)
    except InputError as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
        return
    assert len(cams) == entries and MIN_RENDER_SIDE <= cams.height <= MAX_RENDER_SIDE
    assert MIN_RENDER_SIDE <= cams.width <= MAX_RENDER_SIDE
    assert bool(torch.isfinite(cams.K).all() and torch.isfinite(cams.w2c).all())
    R = cams.w2c[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand_as(R), atol=0.05)
    assert bool((cams.K[:, 1, 1] > 0).all()) and bool(((times >= 0) & (times <= 1)).all())


def test_a_path_file_with_too_many_entries_is_refused(tmp_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"render_height": 48, "render_width": 64, "camera_path": [good_entry(0)] * 100_001}))
    try:
        load_camera_path(path)
    except InputError as e:
        assert "100001" in str(e) and "100000" in str(e)
    else:
        raise AssertionError("a 100001-entry path was accepted")
