"""requirements.lock: complete, inside pyproject.toml's ranges, and `monodyn doctor` reports drift from it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from monodyn_cli import lockfile
from monodyn_cli.app import app


def _declared() -> list[Requirement]:
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["decord"]]


def test_the_lock_pins_every_declared_dependency_inside_its_range():
    pins = lockfile.read_lock()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        if name == "decord" and name not in pins:  # optional, locked only where wheels exist
            continue
        assert name in pins, f"{req.name} is a dependency but requirements.lock does not pin it: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"


def test_read_lock_skips_comments_and_foreign_markers(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\n\nTyping_Extensions==4.0  # trailing\nfoo==1.0 ; sys_platform == 'nonexistent'\n"
                    "bar==2.0 ; python_version >= '3'\n")
    assert lockfile.read_lock(lock) == {"typing-extensions": "4.0", "bar": "2.0"}


def test_drift_names_changed_and_missing_packages(tmp_path):
    typer_version = metadata.version("typer")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"typer=={typer_version}\nrich==0.0.1\nno-such-package-xyz==1.0\n")
    assert lockfile.drift(lock) == [lockfile.Drift("no-such-package-xyz", "1.0", None),
                                    lockfile.Drift("rich", "0.0.1", metadata.version("rich"))]


def test_doctor_reports_drift(tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text("rich==0.0.1\n")
    monkeypatch.setattr(lockfile, "LOCK", lock)
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1 package(s) differ from requirements.lock" in result.output
    assert "locked 0.0.1" in result.output


def test_this_environment_is_the_locked_one():
    """`make test` installs from the lock, so the suite must be running on exactly it."""
    assert lockfile.drift() == [], "the environment differs from requirements.lock: run `make install`"
