"""Training under torchrun (issue 12 §4): 2 gloo processes on the CPU give the single-process
run with the same global batch, within float tolerance, and a run resumes with another
number of processes. Also bf16 autocast and the refusal of a batch that does not divide."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ddpmkit.checkpoint import load_state

ARGS = ["--dataset", "moons", "--cond", "class", "--batch-size", "64", "--hidden", "32", "32", "--T", "50", "--no-progress"]


def _run(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """``ddpmkit train ARGS`` on one process, or under torchrun on ``nproc`` (gloo on the CPU)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "ddpmkit", "train", *args], check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _train(out, iterations: int, nproc: int = 1, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    args = ["--out", str(out), "--iterations", str(iterations)] + (["--resume", "--no-progress"] if resume else [*ARGS, *extra])
    p = _run(nproc, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _close(a: dict, b: dict, atol: float = 1e-6) -> float:
    worst = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    worst = max(worst, max((a["ema"][k] - b["ema"][k]).abs().max().item() for k in a["ema"]))
    assert worst < atol, worst
    assert torch.allclose(a["losses"], b["losses"], atol=1e-5) and a["step"] == b["step"]
    assert torch.equal(a["generator"], b["generator"])  # the same global draws, whatever the number of processes
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _train(tmp / "one", 40)
    out = _train(tmp / "two", 40, 2)
    return tmp, out


def test_two_gloo_processes_equal_one_process(runs):
    tmp, out = runs
    _close(load_state(tmp / "one" / "checkpoint.pt"), load_state(tmp / "two" / "checkpoint.pt"))
    assert json.loads(out.stdout.strip().splitlines()[-1])["world_size"] == 2  # one line: rank 0 alone prints
    assert len([ln for ln in out.stdout.splitlines() if ln.startswith("{")]) == 1
    meta = json.loads((tmp / "two" / "metadata.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 40
    assert json.loads((tmp / "one" / "metadata.json").read_text())["world_size"] == 1


def test_resume_with_another_number_of_processes(runs):
    tmp, _ = runs
    _train(tmp / "straight", 60)  # 60 steps in one go, one process
    _train(tmp / "two", 60, resume=True)  # started on 2 processes, finished on 1
    _close(load_state(tmp / "straight" / "checkpoint.pt"), load_state(tmp / "two" / "checkpoint.pt"))
    _train(tmp / "one", 60, 2, resume=True)  # started on 1 process, finished on 2
    _close(load_state(tmp / "straight" / "checkpoint.pt"), load_state(tmp / "one" / "checkpoint.pt"))
    assert json.loads((tmp / "one" / "metadata.json").read_text())["world_size"] == 2


def test_a_global_batch_must_divide_among_the_processes(tmp_path):
    p = _run(2, "--out", str(tmp_path / "r"), "--iterations", "2", *ARGS, "--batch-size", "63")
    assert p.returncode != 0 and "--batch-size 63 is the global batch; it must divide evenly among 2 processes" in p.stderr
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_bf16_autocast_trains_and_is_recorded(tmp_path):
    _train(tmp_path / "fp32", 30)
    _train(tmp_path / "bf16", 30, 1, "--precision", "bf16")
    a, b = load_state(tmp_path / "fp32" / "checkpoint.pt"), load_state(tmp_path / "bf16" / "checkpoint.pt")
    assert torch.isfinite(b["losses"]).all() and all(v.dtype == torch.float32 for v in b["model"].values())  # weights stay fp32
    assert 0 < (a["losses"] - b["losses"]).abs().max() < 0.05 * a["losses"].abs().max()  # bf16 arithmetic: close, not equal
    assert json.loads((tmp_path / "bf16" / "metadata.json").read_text())["precision"] == "bf16"
