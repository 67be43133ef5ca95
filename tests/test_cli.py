import json
import subprocess
import sys

import numpy as np
import pytest

from ddpmkit.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "ddpmkit", *map(str, args)], check=False, capture_output=True, text=True)


def test_cli_round_trip(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--out", str(run_dir), "--iterations", "60", "--T", "30", "--hidden", "32", "32",
                 "--no-progress"]) == 0
    assert (run_dir / "config.json").is_file() and (run_dir / "checkpoint.pt").is_file()
    assert main(["sample", str(run_dir), "--n", "64", "--seed", "0", "--out", str(tmp_path / "s.npy"), "--no-progress"]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (64, 2) and s.dtype == np.float32
    assert main(["sample", str(run_dir), "--n", "64", "--seed", "0", "--out", str(tmp_path / "s2.npy"), "--no-progress"]) == 0
    assert np.array_equal(s, np.load(tmp_path / "s2.npy"))  # seeded
    np.save(tmp_path / "prior.npy", np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32))
    for i in range(2):
        assert main(["sample", str(run_dir), "--sampler", "deterministic", "--prior", str(tmp_path / "prior.npy"),
                     "--out", str(tmp_path / f"r{i}.npy"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "r0.npy"), np.load(tmp_path / "r1.npy"))
    assert main(["sample", str(run_dir), "--sampler", "ddim", "--steps", "5", "--n", "8", "--out", str(tmp_path / "d.npy"), "--no-progress"]) == 0
    for i in range(2):  # the few-step ODE solver: deterministic given the prior
        assert main(["sample", str(run_dir), "--sampler", "dpm-solver", "--steps", "6", "--prior", str(tmp_path / "prior.npy"),
                     "--out", str(tmp_path / f"p{i}.npy"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "p0.npy"), np.load(tmp_path / "p1.npy")) and np.isfinite(np.load(tmp_path / "p0.npy")).all()
    assert main(["data", "moons", "--n", "100", "--seed", "1", "--out", str(tmp_path / "real.npy")]) == 0
    assert np.load(tmp_path / "real.npy").shape == (100, 2)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "s.npy"), "--dataset", "moons"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"emd", "chamfer", "chamfer_mean", "kde_nll"} <= metrics.keys()
    # resume continues the same run
    assert main(["train", "--out", str(run_dir), "--resume", "--iterations", "80", "--no-progress"]) == 0
    assert "\"step\": 80" in capsys.readouterr().out


def test_console_entry_point_help():
    p = run("--help")
    assert p.returncode == 0 and "ddpmkit train --dataset swiss_roll" in p.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "spiral", "--out", "x"], "unknown dataset 'spiral'"),
        (["sample", "no/such/run", "--out", "x.npy"], "run directory no/such/run does not exist"),
        (["data", "moons", "--n", "0", "--out", "x.npy"], "must be a positive integer"),
        (["sample", "RUN", "--n", "-3", "--out", "x.npy"], "must be a positive integer"),
    ],
)
def test_cli_errors_are_clear(args, message):
    p = run(*args)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_conditional_vector_run(tmp_path, capsys):
    run = str(tmp_path / "moons")
    assert main(["train", "--dataset", "moons", "--cond", "class", "--iterations", "20", "--T", "20", "--out", run, "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "moons" / "config.json").read_text())
    assert cfg["cond"] == "class" and cfg["model"]["num_classes"] == 2 and cfg["train"]["label_dropout"] == 0.1
    out = tmp_path / "m.npy"
    assert main(["sample", run, "--label", "1", "--guidance", "1", "--n", "8", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (8, 2)
    capsys.readouterr()
    assert main(["sample", run, "--label", "2", "--n", "8", "--out", str(out), "--no-progress"]) == 2
    assert "--label must lie in [0, 1]" in capsys.readouterr().err
    assert main(["train", "--dataset", "swiss_roll", "--cond", "class", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "--cond class does not fit swiss_roll, which allows none" in capsys.readouterr().err


def test_grade_gives_every_path_a_row_and_a_summary(tmp_path):
    """A FIFO, a missing file and an untouched notebook: three rows, exit 0, one summary line."""
    import csv
    import os
    import shutil

    from ddpmkit.grading.notebooks import assignments_dir

    shutil.copy(assignments_dir() / "a1_forward.ipynb", tmp_path / "alice.ipynb")
    os.mkfifo(tmp_path / "bob.ipynb")
    out = tmp_path / "grades.csv"
    proc = run("grade", "a1", tmp_path / "alice.ipynb", tmp_path / "bob.ipynb", tmp_path / "carol.ipynb", "--out", out,
               "--no-progress", "--format", "canvas", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("mean 0.00 points; 2 could not be graded (see their status)")
    with open(out, newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert rows["bob"]["status"].startswith("refused: the submission is a FIFO") and "No such file" in rows["carol"]["status"]
    assert rows["alice"]["status"] == "graded" and (tmp_path / "grades-canvas.csv").is_file()
