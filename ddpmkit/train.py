"""Training: one config dataclass for a run, and a :class:`Trainer` with warmup, gradient
clipping, EMA, a progress bar, loss history, atomic checkpoints and exact resume.

A run folder holds ``config.json`` (the :class:`RunConfig`) and ``checkpoint.pt`` (model,
EMA, optimizer, RNG states, step, loss history). Resuming restores all of them, so a run
stopped at step k and resumed gives bit-for-bit the weights of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_state, save_json, save_state
from .data import DATASETS, load_dataset
from .diffusion import Predictor, check_predictor, diffusion_loss
from .models import MLPConfig
from .models import build_model as build_mlp
from .schedules import NoiseSchedule, ScheduleConfig
from .unet import UNet, UNetConfig

IMAGE_DATASETS: tuple[str, ...] = ("mnist", "digits8x8", "shapes")
IMAGE_SIZES = {"mnist": 28, "digits8x8": 8, "shapes": 32}  # side of the square images of each set
Conditioning = Literal["none", "class", "multi"]

CONFIG_FILE, CHECKPOINT_FILE, METADATA_FILE = "config.json", "checkpoint.pt", "metadata.json"


def hardware() -> str:
    """The machine in words, for checkpoint metadata."""
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU used"


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
    label_dropout: float = 0.1  # conditional runs: P(label -> null token), for guidance (Ho & Salimans: 0.1-0.2)


@dataclass
class RunConfig:
    """Everything needed to rebuild a run: data, network, conditioning, schedule, optimization."""

    dataset: str = "swiss_roll"  # a vector set (ddpmkit.data.DATASETS) or an image set (IMAGE_DATASETS)
    model: MLPConfig | UNetConfig = field(default_factory=MLPConfig)  # the network
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # β schedule, T = 1000, 1e-4 → 0.02
    train: TrainConfig = field(default_factory=TrainConfig)  # optimization
    cond: Conditioning = "none"  # "class" (labels 0..K-1), "multi" (multi-hot) or "none"

    def to_dict(self) -> dict:
        arch = "unet" if isinstance(self.model, UNetConfig) else "mlp"
        return {
            "dataset": self.dataset, "arch": arch, "model": self.model.to_dict(), "cond": self.cond,
            "schedule": self.schedule.to_dict(), "train": asdict(self.train),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        model_cls = UNetConfig if d.get("arch", "mlp") == "unet" else MLPConfig
        return cls(
            dataset=d["dataset"], model=model_cls.from_dict(d["model"]), cond=d.get("cond", "none"),
            schedule=ScheduleConfig.from_dict(d["schedule"]), train=TrainConfig(**d["train"]),
        )  # fmt: skip


def build_model(config: MLPConfig | UNetConfig) -> nn.Module:
    """The network a run config describes: a UNet for images, an MLP for vectors."""
    return UNet(config) if isinstance(config, UNetConfig) else build_mlp(config)


def load_training_data(dataset: str, n: int, seed: int, download: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Training data for a run: ``(x, labels, source)``; ``source`` says what was used.
    Only MNIST can be downloaded, and only with ``download=True``."""
    if dataset in DATASETS:
        x, y = load_dataset(dataset, n, seed=seed, return_labels=True)
        return torch.from_numpy(x), torch.from_numpy(y), f"{dataset}: {n} points drawn with seed {seed}"
    from . import images

    if dataset == "mnist":
        d = images.load_mnist("train", download=download)
    elif dataset == "digits8x8":
        d = images.load_digits8x8()
    elif dataset == "shapes":
        d = images.make_shapes(n, seed=seed)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS + IMAGE_DATASETS)}")
    return d.images, d.labels, d.source


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
    """Trains a denoiser on a fixed data tensor (N, ...) with Algorithm 1 of Ho et al.; with
    ``cond``, labels are passed to the network and dropped to the null condition with
    probability ``label_dropout`` so that one network learns both ε(x, y) and ε(x).

    The same :class:`torch.Generator` (state saved in every checkpoint) draws the batches,
    the timesteps and the noise, so resuming is exact.
    """

    def __init__(
        self, config: RunConfig, run_dir: str | Path | None = None, data: torch.Tensor | None = None,
        download: bool = False, labels: torch.Tensor | None = None,
    ):  # fmt: skip
        tc = config.train
        check_predictor(tc.predictor)
        for name in ("iterations", "batch_size"):
            if getattr(tc, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(tc, name)}")
        if tc.lr <= 0:
            raise ValueError(f"lr must be > 0, got lr={tc.lr}")
        if config.cond not in ("none", "class", "multi"):
            raise ValueError(f"unknown cond={config.cond!r}; choose 'none', 'class' or 'multi'")
        if config.cond == "multi" and not isinstance(config.model, UNetConfig):
            raise ValueError("multi-label conditioning needs the UNet (the shapes set); the vector MLPs take class labels only")
        if config.cond == "class" and getattr(config.model, "num_classes", None) is None:
            raise ValueError("cond='class' needs a network built with num_classes=K (MLPConfig or UNetConfig)")
        self.config, self.run_dir = config, Path(run_dir) if run_dir else None
        self.device = resolve_device(tc.device)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left as it was
            torch.manual_seed(tc.seed)
            self.model = build_model(config.model).to(self.device)
        self.schedule = NoiseSchedule.from_config(config.schedule)
        self._sched_dev = self.schedule.to(self.device)
        self.data_source = "data given in memory"
        if data is None:
            data, labels, self.data_source = load_training_data(config.dataset, tc.n_train, tc.seed, download)
        self.data = data.to(self.device)  # (N, D) or (N, C, H, W)
        if config.cond != "none" and labels is None:
            raise ValueError(f"cond={config.cond!r} needs labels: pass labels=... with the in-memory data")
        self.labels = labels.to(self.device) if labels is not None and config.cond != "none" else None
        expected = (config.model.dim,) if isinstance(config.model, MLPConfig) else (config.model.in_channels,)
        if self.data.shape[1 : 1 + len(expected)] != expected:
            raise ValueError(f"data has shape {tuple(self.data.shape)} but the model expects {expected} after the batch axis")
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
        save_json(self.metadata(), self.run_dir / METADATA_FILE)

    def metadata(self) -> dict:
        """What a reader of a checkpoint needs to trust it: data actually used, steps, seed, time, machine."""
        return {
            "data": self.data_source, "steps": self.step, "seed": self.config.train.seed,
            "wall_time_s": round(self.wall_time, 1), "hardware": hardware(), "torch": torch.__version__,
            "final_loss_mean_100": float(np.mean(self.losses[-100:])) if self.losses else None,
        }  # fmt: skip

    @classmethod
    def resume(cls, run_dir: str | Path, iterations: int | None = None, download: bool = False) -> Trainer:
        """Rebuild a trainer from ``run_dir`` exactly where it stopped (optionally with a new
        total number of ``iterations``)."""
        cfg = load_run_config(run_dir)
        if iterations is not None:
            cfg.train.iterations = iterations
        tr = cls(cfg, run_dir, download=download)
        tr.load_state_dict(load_state(Path(run_dir) / CHECKPOINT_FILE, map_location=tr.device))
        return tr

    # --- training ----------------------------------------------------------------------
    def train_step(self) -> float:
        tc = self.config.train
        idx = torch.randint(0, len(self.data), (tc.batch_size,), generator=self.gen, device=self.gen.device)
        idx = idx.to(self.device)
        x0 = self.data[idx]  # (B, D) or (B, C, H, W)
        kwargs = {}
        if self.labels is not None:  # conditional: drop labels to the null condition with p = label_dropout
            y = self.labels[idx].clone()
            drop = (torch.rand(len(idx), generator=self.gen, device=self.gen.device) < tc.label_dropout).to(self.device)
            if self.config.cond == "class":
                y[drop] = self.model.null_label
            else:
                y[drop] = 0.0
            kwargs["y"] = y
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, tc)
        loss = diffusion_loss(self.model, self._sched_dev, x0, tc.predictor, self.gen, **kwargs)
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
