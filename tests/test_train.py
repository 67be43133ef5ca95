import os
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from ddpmkit.checkpoint import CheckpointError, load_state
from ddpmkit.data import load_dataset
from ddpmkit.metrics import chamfer_distance
from ddpmkit.models import MLPConfig
from ddpmkit.samplers import ddpm_sample
from ddpmkit.schedules import ScheduleConfig
from ddpmkit.train import CHECKPOINT_FILE, NonFiniteLossError, RunConfig, TrainConfig, Trainer, load_run


def small_config(iterations=40, **train_kwargs) -> RunConfig:
    return RunConfig(
        dataset="moons",
        model=MLPConfig(hidden=(32, 32)),
        schedule=ScheduleConfig(T=50),
        train=TrainConfig(iterations=iterations, batch_size=32, n_train=512, checkpoint_every=10, warmup=5, **train_kwargs),
    )


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_equals_uninterrupted_run(tmp_path):
    full = Trainer(small_config(40), tmp_path / "a")
    full.train(progress=False)
    half = Trainer(small_config(20), tmp_path / "b")
    half.train(progress=False)
    resumed = Trainer.resume(tmp_path / "b", iterations=40)
    assert resumed.step == 20
    resumed.train(progress=False)
    assert torch.equal(_params(full.model), _params(resumed.model))
    assert torch.equal(_params(full.ema.model), _params(resumed.ema.model))
    assert full.losses == resumed.losses
    assert full.opt.param_groups[0]["lr"] == resumed.opt.param_groups[0]["lr"]


def test_crash_during_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    tr = Trainer(small_config(10), tmp_path)
    tr.train(progress=False)
    good = load_state(tmp_path / CHECKPOINT_FILE)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr("ddpmkit.checkpoint.torch.save", broken_save)
    tr.config.train.iterations = 20
    with pytest.raises(KeyboardInterrupt):
        tr.train(progress=False)
    again = load_state(tmp_path / CHECKPOINT_FILE)
    assert again["step"] == good["step"] == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sigkill_during_save_keeps_last_good_checkpoint(tmp_path):
    """A real kill (no cleanup can run) in the middle of writing the next checkpoint."""
    Trainer(small_config(10), tmp_path).train(progress=False)
    script = f"""
import os, signal, torch
import ddpmkit.checkpoint as c
from ddpmkit.train import Trainer
def dying_save(obj, f):
    f.write(b"partial"); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
c.torch.save = dying_save
Trainer.resume({str(tmp_path)!r}, iterations=20).train(progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert load_state(tmp_path / CHECKPOINT_FILE)["step"] == 10
    assert Trainer.resume(tmp_path).step == 10


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing"):
        load_state(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    Trainer(small_config(10), tmp_path).train(progress=False)
    data = (tmp_path / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(tmp_path / CHECKPOINT_FILE)


def test_nan_loss_stops_and_never_overwrites(tmp_path):
    tr = Trainer(small_config(10), tmp_path)
    tr.train(progress=False)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    tr.data[:] = float("nan")
    tr.config.train.iterations = 20
    with pytest.raises(NonFiniteLossError, match="step 10.*untouched"):
        tr.train(progress=False)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_bad_train_config():
    with pytest.raises(ValueError, match="predictor"):
        Trainer(small_config(predictor="score"))
    with pytest.raises(ValueError, match="lr"):
        Trainer(small_config(lr=0.0))


def test_short_training_learns_the_swiss_roll(tmp_path):
    """2,500 steps of the KAIST set-up (half the default) reach Chamfer ~22 (measured); an untrained model scores about 2e8."""
    cfg = RunConfig(train=TrainConfig(iterations=2500, checkpoint_every=2500))
    Trainer(cfg, tmp_path).train(progress=False)
    model, sched, _ = load_run(tmp_path)
    x = ddpm_sample(model, sched, (2048, 2), generator=torch.Generator().manual_seed(0)).x.numpy()
    cd = chamfer_distance(x, load_dataset("swiss_roll", 2048, 1))
    assert cd < 40, cd


def test_trainer_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Trainer(small_config(5))
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(_params(a.model), _params(Trainer(small_config(5)).model))  # still seeded


def test_ema_matches_torch_averaged_model():
    """The teaching EMA (warmed-up decay min(d, (1+k)/(10+k))) equals torch's AveragedModel
    given the same decay rule, step by step."""
    from torch.optim.swa_utils import AveragedModel

    from ddpmkit.train import EMA

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    ours, decay = EMA(net, 0.99), 0.99
    avg_fn = lambda avg, p, n: avg + (p - avg) * (1 - min(decay, (1 + (n - 1)) / (10 + (n - 1))))
    theirs = AveragedModel(net, avg_fn=avg_fn)
    theirs.n_averaged.fill_(1)  # AveragedModel copies the first weights on its first update; ours starts from them
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(50):
        opt.zero_grad()
        net(torch.randn(16, 3)).pow(2).mean().backward()
        opt.step()
        ours.update(net, step)
        theirs.update_parameters(net)
    for a, b in zip(ours.model.parameters(), theirs.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
