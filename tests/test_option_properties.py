"""Property tests over every numeric option of every command: nan, inf and non-numbers are always refused with
one line naming the option; 0, negatives and huge values are refused the same way or accepted, never a crash.
Checked at the layer each command validates with, before any work: stage configs (preprocess), method
configs and render options (fit, eval, render), and the render command's own options."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from models.errors import InputError
from models.methods import METHODS, options_class
from monodyn_cli.app import app
from monodyn_cli.commands.preprocess import stage_configs
from monodyn_cli.options import base_type, parse_options
from monodyn_cli.stages.configs import STAGE_CONFIGS

ALWAYS_BAD = ["nan", "NaN", "inf", "-inf", "abc", "1e", ""]
MAYBE_BAD = ["0", "-1", "-5.5", "1e308", "99999999999", "0.0001"]


def numeric_fields(cls) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, base_type(hints[f.name])) for f in dataclasses.fields(cls)
            if base_type(hints[f.name]) in (int, float) and f.metadata.get("cli", True)]


METHOD_OPTIONS = [(name, kind, field) for name in sorted(METHODS) for kind in ("Config", "RenderOptions")
                  if (cls := options_class(name, kind)) is not None for field, _ in numeric_fields(cls)]
STAGE_OPTIONS = [(stage, field, tp) for stage, cls in STAGE_CONFIGS.items() for field, tp in numeric_fields(cls)]


def _convert(text: str, tp):
    return tp(float(text)) if tp is int and text.lstrip("-").replace(".", "").isdigit() else tp(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(METHOD_OPTIONS), value=st.sampled_from(ALWAYS_BAD + MAYBE_BAD))
def test_method_options(option, value):
    name, kind, field = option
    cls = options_class(name, kind)
    flag = "--" + field.replace("_", "-")
    try:
        opts = parse_options(cls, [flag, value])
        if hasattr(opts, "validate"):
            opts.validate()
    except InputError as e:
        assert "\n" not in str(e) and (flag in str(e) or field in str(e)), str(e)
        return
    assert value not in ALWAYS_BAD, f"{name} {flag} {value!r} was accepted"


@settings(max_examples=150, deadline=None)
@given(option=st.sampled_from(STAGE_OPTIONS), value=st.sampled_from(ALWAYS_BAD + MAYBE_BAD))
def test_stage_options(option, value):
    stage, field, tp = option
    try:
        parsed = tp(value) if tp is float else int(value)
    except ValueError:
        return  # the command line refuses it (exit 2) before a config exists
    try:
        stage_configs({f"{stage}__{field}": parsed})
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith("--"), str(e)
        return
    assert value not in ALWAYS_BAD, f"{stage}.{field} = {value!r} was accepted"


RENDER = ["--orbit", "--bullet-time", "--dolly", "--degrees", "--time", "--frames", "--fps", "--scale", "--stabilize"]


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nows")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(RENDER), value=st.sampled_from(ALWAYS_BAD + MAYBE_BAD))
def test_render_options(empty_dir, flag, value):
    result = CliRunner().invoke(app, ["render", "-w", str(empty_dir), "-m", "dpdy", flag, value])
    out = result.output.strip()
    assert result.exit_code in (1, 2) and "Traceback" not in out, out
    if result.exit_code == 1:
        assert len(out.splitlines()) == 1, out
        if value in ALWAYS_BAD:
            assert flag in out, out  # refused for the value, not for the missing workspace
