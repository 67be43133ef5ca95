"""Training: one config dataclass for a run, and a :class:`Trainer` with warmup, gradient
clipping, EMA, a progress bar, loss history, atomic checkpoints and exact resume.

A run folder holds ``config.json`` (the :class:`RunConfig`) and ``checkpoint.pt`` (model,
EMA, optimizer, RNG states, step, loss history). Resuming restores all of them, so a run
stopped at step k and resumed gives bit-for-bit the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_state, save_json, save_state
from .data import DIMS, DatasetName, load_dataset
from .diffusion import Predictor, check_predictor, diffusion_loss
from .models import MLPConfig, build_model
from .schedules import NoiseSchedule, ScheduleConfig

CONFIG_FILE, CHECKPOINT_FILE = "config.json", "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and no checkpoint was written."""


@dataclass
class TrainConfig:
    """Optimization settings. Defaults are the KAIST A1 set-up (004_…)."""

    iterations: int = 5000  # optimizer steps (KAIST A1: 5,000)
    batch_size: int = 128  # points per step (KAIST A1: 128)
    lr: float = 1e-3  # peak learning rate (KAIST A1: 1e-3)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0: plain Adam)
    warmup: int = 200  # linear LR warmup steps (KAIST: 200)
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema_decay: float = 0.995  # EMA of the weights used for sampling (0 disables)
    predictor: Predictor = "eps"  # what the network predicts: eps, x0, mean or v
    seed: int = 0  # seeds the model init, the data draw and the training noise
    n_train: int = 32768  # size of the fixed training set drawn from the data set
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    checkpoint_every: int = 1000  # steps between checkpoints (the last step always saves)


@dataclass
class RunConfig:
    """Everything needed to rebuild a run: data, network, schedule, optimization."""

    dataset: DatasetName = "swiss_roll"  # which data set (see ddpmkit.data.DATASETS)
    model: MLPConfig = field(default_factory=MLPConfig)  # the network
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # β schedule, T = 1000, 1e-4 → 0.02
    train: TrainConfig = field(default_factory=TrainConfig)  # optimization

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "model": self.model.to_dict(), "schedule": self.schedule.to_dict(), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(
            dataset=d["dataset"], model=MLPConfig.from_dict(d["model"]),
            schedule=ScheduleConfig.from_dict(d["schedule"]), train=TrainConfig(**d["train"]),
        )  # fmt: skip


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use --device cpu")
    return torch.device(device)


class EMA:
    """Exponential moving average of parameters, θ_ema ← d θ_ema + (1 - d) θ, with the
    warmed-up decay d = min(decay, (1 + step)/(10 + step))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1.0 - d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr`` over ``cfg.warmup`` steps, then constant (KAIST LambdaLR)."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


class Trainer:
    """Trains a denoiser on a fixed data tensor ``data`` (N, ...) with Algorithm 1 of Ho et al.

    The same :class:`torch.Generator` (state saved in every checkpoint) draws the batches,
    the timesteps and the noise, so resuming is exact.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path | None = None, data: torch.Tensor | None = None):
        tc = config.train
        check_predictor(tc.predictor)
        for name in ("iterations", "batch_size"):
            if getattr(tc, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(tc, name)}")
        if tc.lr <= 0:
            raise ValueError(f"lr must be > 0, got lr={tc.lr}")
        self.config, self.run_dir = config, Path(run_dir) if run_dir else None
        self.device = resolve_device(tc.device)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left as it was
            torch.manual_seed(tc.seed)
            self.model = build_model(config.model).to(self.device)
        self.schedule = NoiseSchedule.from_config(config.schedule)
        self._sched_dev = self.schedule.to(self.device)
        if data is None:
            data = torch.from_numpy(load_dataset(config.dataset, tc.n_train, seed=tc.seed))
        self.data = data.to(self.device)  # (N, D)
        if self.data.shape[1:] != (config.model.dim,):
            raise ValueError(f"data has shape {tuple(self.data.shape)} but the model expects dim={config.model.dim}")
        opt_cls = torch.optim.AdamW if tc.weight_decay > 0 else torch.optim.Adam
        self.opt = opt_cls(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 1)
        self.step, self.losses, self.wall_time = 0, [], 0.0

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float32),
            "wall_time": self.wall_time,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema and state.get("ema") is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"].cpu() if self.device.type == "cpu" else state["generator"])
        self.step = int(state["step"])
        self.losses = state["losses"].tolist()
        self.wall_time = float(state.get("wall_time", 0.0))

    def save(self) -> None:
        """Write ``config.json`` and ``checkpoint.pt`` atomically into the run folder."""
        if self.run_dir is None:
            return
        save_json(self.config.to_dict(), self.run_dir / CONFIG_FILE)
        save_state(self.state_dict(), self.run_dir / CHECKPOINT_FILE)

    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None) -> "Trainer":
        """Rebuild a trainer from ``run_dir`` exactly where it stopped (optionally with a new
        total number of ``iterations``)."""
        cfg = load_run_config(run_dir)
        if iterations is not None:
            cfg.train.iterations = iterations
        tr = cls(cfg, run_dir)
        tr.load_state_dict(load_state(Path(run_dir) / CHECKPOINT_FILE, map_location=tr.device))
        return tr

    # --- training ----------------------------------------------------------------------
    def train_step(self) -> float:
        tc = self.config.train
        idx = torch.randint(0, len(self.data), (tc.batch_size,), generator=self.gen, device=self.gen.device)
        x0 = self.data[idx.to(self.device)]  # (B, D)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, tc)
        loss = diffusion_loss(self.model, self._sched_dev, x0, tc.predictor, self.gen)
        if not torch.isfinite(loss):
            last = self.run_dir / CHECKPOINT_FILE if self.run_dir else None
            where = f"the last good checkpoint {last} is untouched" if last and last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {self.step}; {where}. "
                f"Lower the learning rate (--lr, now {tc.lr}) or keep gradient clipping on (--grad-clip)."
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        if self.ema:
            self.ema.update(self.model, self.step)
        self.step += 1
        return loss.item()

    def train(self, progress: bool = True) -> list[float]:
        """Train until ``config.train.iterations`` steps, checkpointing along the way."""
        tc = self.config.train
        bar = tqdm(total=tc.iterations, initial=self.step, desc="training", disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        while self.step < tc.iterations:
            loss = self.train_step()
            self.losses.append(loss)
            bar.update(1)
            if self.step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4f}")
            if self.step % tc.checkpoint_every == 0 or self.step == tc.iterations:
                self.wall_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        bar.close()
        return self.losses

    @property
    def sampling_model(self) -> nn.Module:
        """The EMA network when EMA is on, else the raw one."""
        return self.ema.model if self.ema else self.model


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; create one with: ddpmkit train --out {run_dir}")
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}: it is not a ddpmkit run folder (ddpmkit train --out DIR makes one)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def load_run(run_dir: str | Path, device: str = "cpu", ema: bool = True) -> tuple[nn.Module, NoiseSchedule, RunConfig]:
    """The trained network (EMA weights by default), its schedule and config, from a run folder."""
    cfg = load_run_config(run_dir)
    state = load_state(Path(run_dir) / CHECKPOINT_FILE, map_location=device)
    model = build_model(cfg.model).to(device)
    model.load_state_dict(state["ema"] if ema and state.get("ema") is not None else state["model"])
    return model.eval(), NoiseSchedule.from_config(cfg.schedule), cfg


def train_run(config: RunConfig, run_dir: str | Path | None = None, progress: bool = True) -> Trainer:
    """Train a fresh run (convenience for the book and the CLI)."""
    tr = Trainer(config, run_dir)
    tr.train(progress=progress)
    return tr
