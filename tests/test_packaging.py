"""The set-up files agree with each other, and CI runs what the README says."""

import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from ddpmkit.profile import ENV_VAR, get_profile

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_pyproject_packages():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in py["dependencies"]}
    for extra in py["optional-dependencies"].values():
        wanted |= {_name(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"


def test_constraints_pin_every_package_and_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[_name(name)] = ver
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = py["dependencies"] + [r for extra in py["optional-dependencies"].values() for r in extra]
    assert {_name(r) for r in reqs} <= pins.keys()
    assert pins["jupyter-book"].startswith("1.")


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make book" in readme
    assert "\nmake test\n" in ci and "\nmake book\n" in ci


def test_profile_parsing(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "QuIcK")
    assert get_profile() == "quick"
    monkeypatch.setenv(ENV_VAR, "huge")
    with pytest.raises(ValueError, match="DDPMKIT_PROFILE"):
        get_profile()
    monkeypatch.delenv(ENV_VAR)
    assert get_profile() == "quick"


@pytest.mark.skipif(not os.environ.get("CI"), reason="the sentinel only speaks for CI runs")
def test_sentinel_ci_uses_the_smoke_profile():
    assert get_profile() == "smoke", f"CI must run in the smoke profile, got {get_profile()!r}"
