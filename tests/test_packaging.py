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


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject.toml lists the packages by hand (ddpmkit.assignments is mapped from assignments/):
    a new subpackage must be added there, or the wheel would lack it."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ddpmkit").rglob("*.py") if "__pycache__" not in p.parts}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_version_is_written_once():
    import ddpmkit

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in py["project"] and py["project"]["dynamic"] == ["version"]
    assert py["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ddpmkit.__version__"}
    from importlib.metadata import version

    assert version("ddpmkit") == ddpmkit.__version__


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install`` of the wheel into a fresh virtual environment that sees the test
    environment's third-party packages (torch, ...) but not this checkout."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("ddpmkit", "assignments"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src))
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co.; its .pth files (the editable ddpmkit) are not read
    wheel = next((tmp / "dist").glob("ddpmkit-*.whl"))
    run(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", "-q", str(wheel))
    return venv


def test_installed_package_grades_and_checks_from_any_folder(installed, tmp_path):
    import subprocess

    from ddpmkit.grading.notebooks import assignments_dir, notebook_text, student_notebook

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *cmd: subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    where = run(str(installed / "bin" / "python"), "-c", "import ddpmkit; print(ddpmkit.__file__)")
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr  # not this checkout
    ddpmkit = str(installed / "bin" / "ddpmkit")
    check = run(ddpmkit, "assign", "--check")
    assert check.returncode == 0 and "up to date" in check.stdout, check.stdout + check.stderr
    write = run(ddpmkit, "assign")
    assert write.returncode == 2 and "installed package" in write.stderr
    sub = tmp_path / "alice.ipynb"
    sub.write_text(notebook_text(student_notebook(assignments_dir() / "source" / "a1_forward.md", keep_solutions=True)))
    graded = run(ddpmkit, "grade", "a1", str(sub), "--out", "grades.csv", "--no-progress")
    assert graded.returncode == 0, graded.stdout + graded.stderr
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    assert len(rows) == 2 and "alice" in rows[1]
    # the solution sources travel in the wheel, but never into the sandbox
    probe = "from ddpmkit.grading.sanitize import sanitized_root; r = sanitized_root(()); print(sorted(p.name for p in (r / 'ddpmkit').iterdir()))"
    listing = run(str(installed / "bin" / "python"), "-c", probe)
    assert "assignments" not in listing.stdout and "'schedules.py'" in listing.stdout, listing.stdout + listing.stderr


def test_readme_layout_names_every_module():
    """The README's layout table names every module and subpackage of ddpmkit, and nothing that is gone."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :].split("\n## ", 1)[0]
    pkg = ROOT / "ddpmkit"
    for p in pkg.rglob("*.py"):
        if p.stem not in ("__init__", "__main__") and "__pycache__" not in p.parts:
            assert f"`{p.stem}`" in layout or f"`{p.stem}." in layout, f"README layout does not name {p.relative_to(ROOT)}"
    for d in (d for d in pkg.iterdir() if d.is_dir() and d.name != "__pycache__"):
        assert f"`ddpmkit/{d.name}/`" in layout, f"README layout does not name ddpmkit/{d.name}/"
    named = set(re.findall(r"`([a-z_]+)`", layout.split("| `ddpmkit/` |", 1)[1].split("\n", 1)[0]))
    stems = {p.stem for p in pkg.glob("*.py")} | {"build_model"}
    assert named <= stems, f"README names modules that do not exist: {named - stems}"


def test_cli_reports_the_one_version(capsys):
    import ddpmkit
    from ddpmkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ddpmkit {ddpmkit.__version__}"
