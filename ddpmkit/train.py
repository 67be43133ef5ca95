"""Training: one config dataclass for a run, and a :class:`Trainer` with warmup, gradient
clipping, EMA, a progress bar, loss history, atomic checkpoints and exact resume.

A run folder holds ``config.json`` (the :class:`RunConfig`) and ``checkpoint.pt`` (model,
EMA, optimizer, RNG states, step, loss history). Resuming restores all of them, so a run
stopped at step k and resumed gives bit-for-bit the weights of an uninterrupted run.
Under torchrun the same trainer runs on every process (``ddpmkit.distributed``).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load_state, save_json, save_state
from .common import CHECKPOINT_FILE, CONFIG_FILE, METADATA_FILE, hardware, resolve_device
from .data import Conditioning, DatasetSpec, FolderConfig, dataset_spec, load_training_data
from .diffusion import Predictor, check_predictor, diffusion_loss, draw_timesteps, randn
from .models import MLPConfig
from .networks import ModelConfig, build_model, config_from_dict, config_to_dict
from .schedules import SCHEDULES, NoiseSchedule, ScheduleConfig
from .unet import UNetConfig

Precision = Literal["fp32", "bf16"]


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
    precision: Precision = "fp32"  # "bf16": the forward pass and loss under bfloat16 autocast (GPUs); weights stay fp32

    def __post_init__(self):
        for name in ("iterations", "batch_size", "n_train", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {name}={getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr!r}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"warmup, weight_decay and grad_clip must be >= 0, got {self.warmup}, {self.weight_decay}, {self.grad_clip}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (0 disables EMA), got ema_decay={self.ema_decay!r}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1), got label_dropout={self.label_dropout!r}")
        check_predictor(self.predictor)
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {', '.join(get_args(Precision))}, got precision={self.precision!r}")


@dataclass
class RunConfig:
    """Everything needed to rebuild a run: data, network, conditioning, schedule, optimization."""

    dataset: str = "swiss_roll"  # a registered data set (ddpmkit.data.DATASETS), vector or image; or an image folder's absolute path
    model: ModelConfig = field(default_factory=MLPConfig)  # the network: an MLP for vectors, a UNet for images
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # β schedule, T = 1000, 1e-4 → 0.02
    train: TrainConfig = field(default_factory=TrainConfig)  # optimization
    cond: Conditioning = "none"  # "class" (labels 0..K-1), "multi" (multi-hot) or "none"
    folder: FolderConfig | None = None  # image-folder runs only: the image size and classes (ddpmkit.data.folder_config)

    def __post_init__(self):
        """The parts must fit each other and the data set (checked again by every ``replace``)."""
        spec = self.spec
        if self.cond not in spec.conditionings:
            raise ValueError(f"cond={self.cond!r} does not fit {self.dataset}, which allows {', '.join(spec.conditionings)}")
        want = UNetConfig if spec.kind == "image" else MLPConfig
        if not isinstance(self.model, want):
            raise TypeError(f"{self.dataset} is a {spec.kind} set: its network is configured by {want.__name__}, not {type(self.model).__name__}")
        m = self.model
        size = m.in_channels if isinstance(m, UNetConfig) else m.dim
        if size != spec.shape[0]:
            unit = "channels" if spec.kind == "image" else "dimensions"
            raise ValueError(f"the network takes {size} {unit} but {self.dataset} has {spec.shape[0]}")
        if isinstance(m, UNetConfig) and spec.shape[-1] % 2 ** (len(m.channel_mults) - 1):
            raise ValueError(f"a {len(m.channel_mults)}-level UNet halves its input {len(m.channel_mults) - 1} times: the image side "
                             f"({spec.shape[-1]}) must be divisible by {2 ** (len(m.channel_mults) - 1)}")
        classes, labels = getattr(m, "num_classes", None), getattr(m, "num_labels", None)
        if (classes, labels) != (spec.num_classes if self.cond == "class" else None, spec.num_labels if self.cond == "multi" else None):
            raise ValueError(
                f"cond={self.cond!r} on {self.dataset} needs a network with num_classes="
                f"{spec.num_classes if self.cond == 'class' else None} and num_labels={spec.num_labels if self.cond == 'multi' else None}; "
                f"this one has num_classes={classes}, num_labels={labels}"
            )
        check_predictor(self.train.predictor, NoiseSchedule.from_config(self.schedule))

    @property
    def spec(self) -> DatasetSpec:
        """The data set's spec: the registered one, or the image folder's as recorded."""
        return dataset_spec(self.dataset, self.folder)

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, **({"folder": self.folder.to_dict()} if self.folder else {}), **config_to_dict(self.model),
            "cond": self.cond, "schedule": self.schedule.to_dict(), "train": asdict(self.train),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return cls(
            dataset=d["dataset"], model=config_from_dict(d.get("arch", "mlp"), d["model"]), cond=d.get("cond", "none"),
            schedule=ScheduleConfig.from_dict(d["schedule"]), train=TrainConfig(**d["train"]),
            folder=FolderConfig.from_dict(d["folder"]) if d.get("folder") else None,
        )  # fmt: skip


class EMA:
    """Exponential moving average of parameters, θ_ema ← d θ_ema + (1 - d) θ, with the
    warmed-up decay d = min(decay, (1 + step)/(10 + step))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        # one fused call for all tensors (a loop of lerp_ per tensor costs a GPU launch each)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``cfg.lr`` over ``cfg.warmup`` steps, then constant (KAIST LambdaLR)."""
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


_CPU_GENERATOR_STATE = torch.Generator().get_state().numel()  # bytes of a CPU (Mersenne Twister) state


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
        tc = config.train  # the configs checked themselves when they were made
        self.config, self.run_dir = config, Path(run_dir) if run_dir else None
        self.device = resolve_device(tc.device)
        self.world = distributed.setup(self.device)  # rank 0 of 1, unless started by torchrun: then join its process group
        if self.world.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)  # one GPU per process
        if tc.batch_size % self.world.size:
            raise ValueError(f"--batch-size {tc.batch_size} is the global batch; it must divide evenly among "
                             f"{self.world.size} processes (each takes an equal part)")
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left as it was
            torch.manual_seed(tc.seed)
            self.model = build_model(config.model).to(self.device)
        self.net = self.model  # what the loss calls: the model, wrapped for gradient averaging under torchrun
        if self.world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.schedule = NoiseSchedule.from_config(config.schedule)
        self._sched_dev = self.schedule.to(self.device)
        self.data_source = "data given in memory"
        if data is None:
            data, labels, self.data_source = load_training_data(config.dataset, tc.n_train, tc.seed, download, config.folder)
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
        self.gen = torch.Generator(device=self.device).manual_seed(self._draw_seed(0))
        self.step, self.losses, self.wall_time = 0, [], 0.0

    def _draw_seed(self, step: int) -> int:
        """The seed of the generator that draws batches, timesteps and noise: ``seed + 1`` at the
        start (``seed`` itself initialises the weights), ``seed + 1 + step`` when a run resumed on
        another kind of device has to restart its draws."""
        return self.config.train.seed + 1 + step

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "generator_device": self.gen.device.type,  # a CPU and a CUDA generator keep different states
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float32),
            "wall_time": self.wall_time,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema and state.get("ema") is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        saved = state.get("generator_device", "cpu" if state["generator"].numel() == _CPU_GENERATOR_STATE else "cuda")
        if saved == self.gen.device.type:
            self.gen.set_state(state["generator"].cpu())  # a generator's state is a CPU byte tensor, on CUDA too
        else:  # resumed on another kind of device: its generator cannot take the saved state, so the
            # draws go on from a seed fixed by the run and the step (the run continues, not bit for bit)
            self.gen.manual_seed(self._draw_seed(int(state["step"])))
            warnings.warn(f"resumed on {self.device.type} a run saved on {saved}: its random draws continue from a new seed "
                          f"(seed + 1 + step), so the result differs from an uninterrupted run", stacklevel=2)
        self.step = int(state["step"])
        self.losses = state["losses"].tolist()
        self.wall_time = float(state.get("wall_time", 0.0))

    def save(self) -> None:
        """Write ``config.json`` and ``checkpoint.pt`` atomically into the run folder (rank 0
        only, the other processes wait for it)."""
        if self.run_dir is None:
            return
        if self.world.main:
            save_json(self.config.to_dict(), self.run_dir / CONFIG_FILE)
            save_state(self.state_dict(), self.run_dir / CHECKPOINT_FILE)
            save_json(self.metadata(), self.run_dir / METADATA_FILE)
        distributed.barrier()

    def metadata(self) -> dict:
        """What a reader of a checkpoint needs to trust it: data actually used, steps, seed, time, machine."""
        return {
            "data": self.data_source, "steps": self.step, "seed": self.config.train.seed,
            "wall_time_s": round(self.wall_time, 1), "hardware": hardware(), "torch": torch.__version__,
            "final_loss_mean_100": float(np.mean(self.losses[-100:])) if self.losses else None,
            "world_size": self.world.size, "precision": self.config.train.precision,
        }  # fmt: skip

    @classmethod
    def resume(cls, run_dir: str | Path, *, download: bool = False, **overrides) -> Trainer:
        """Rebuild a trainer from ``run_dir`` exactly where it stopped; ``overrides`` may set a
        new total of ``iterations`` or another ``device`` (see :data:`RESUMABLE`)."""
        cfg = apply_overrides(load_run_config(run_dir), overrides, resumed=True)
        tr = cls(cfg, run_dir, download=download)
        tr.load_state_dict(load_state(Path(run_dir) / CHECKPOINT_FILE, map_location=tr.device))
        return tr

    # --- training ----------------------------------------------------------------------
    def train_step(self) -> float:
        tc = self.config.train
        B, T = tc.batch_size, self.schedule.T
        # 1. the global batch, drawn alike on every process: indices, label dropout, timesteps, noise
        idx = torch.randint(0, len(self.data), (B,), generator=self.gen, device=self.gen.device)
        idx = idx.to(self.device)
        kwargs = {}
        if self.labels is not None:  # conditional: drop labels to the null condition with p = label_dropout
            y = self.labels[idx].clone()
            drop = (torch.rand(B, generator=self.gen, device=self.gen.device) < tc.label_dropout).to(self.device)
            if self.config.cond == "class":
                y[drop] = self.model.null_label
            else:
                y[drop] = 0.0
            kwargs["y"] = y
        t = draw_timesteps(T, B, self.gen, self.device)  # (B,)
        noise = randn((B, *self.data.shape[1:]), self.gen, self.device)  # (B, ...)
        # 2. this process's part of it (all of it for one process)
        part = slice(self.world.rank * B // self.world.size, (self.world.rank + 1) * B // self.world.size)
        kwargs = {k: v[part] for k, v in kwargs.items()}
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, tc)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            loss = diffusion_loss(self.net, self._sched_dev, self.data[idx[part]], tc.predictor, t=t[part], noise=noise[part], **kwargs)
        value = distributed.mean(loss.detach())  # the global batch's loss, the same on every process
        if not torch.isfinite(value):
            last = self.run_dir / CHECKPOINT_FILE if self.run_dir else None
            where = f"the last good checkpoint {last} is untouched" if last and last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss became {value.item()} at step {self.step}; {where}. "
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
        return value.item()

    def train(self, progress: bool = True) -> list[float]:
        """Train until ``config.train.iterations`` steps, checkpointing along the way."""
        tc = self.config.train
        bar = tqdm(total=tc.iterations, initial=self.step, desc="training", disable=not (progress and self.world.main), dynamic_ncols=True)
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


# --- overrides: one flag, one field ---------------------------------------------------------

# Every override a run accepts (the CLI's flags without the dashes), and the field it sets.
OVERRIDES: dict[str, tuple[str, str]] = {
    "iterations": ("train", "iterations"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"), "warmup": ("train", "warmup"), "grad_clip": ("train", "grad_clip"),
    "ema_decay": ("train", "ema_decay"), "predictor": ("train", "predictor"), "seed": ("train", "seed"),
    "device": ("train", "device"), "label_dropout": ("train", "label_dropout"), "n_train": ("train", "n_train"),
    "schedule": ("schedule", "name"), "T": ("schedule", "T"), "beta_1": ("schedule", "beta_1"), "beta_T": ("schedule", "beta_T"),
    "model": ("model", "kind"), "hidden": ("model", "hidden"), "precision": ("train", "precision"),
}  # fmt: skip
RESUMABLE = ("iterations", "device")  # what a resumed run may change: on the same kind of device it continues bit for bit


def flag(name: str) -> str:
    """The CLI flag of an override: ``beta_1`` -> ``--beta-1``."""
    return "--" + name.replace("_", "-")


def apply_overrides(config: RunConfig, overrides: dict, *, resumed: bool = False) -> RunConfig:
    """``config`` with each given override applied through ``dataclasses.replace`` (so every
    config checks itself again). An override this run cannot honour is refused, by name:
    an unknown one, an MLP setting on a UNet run, a schedule parameter the chosen schedule
    does not read, or anything but ``--iterations``/``--device`` on a resumed run."""
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; the run config takes {', '.join(OVERRIDES)}")
    if resumed:
        fixed = [flag(k) for k in overrides if k not in RESUMABLE]
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change a resumed run (it continues exactly where it stopped, "
                             f"with its saved config); resume with only {', '.join(map(flag, RESUMABLE))}, or start a new run in another --out")
    parts: dict[str, dict] = {"train": {}, "schedule": {}, "model": {}}
    for key, value in overrides.items():
        section, field_name = OVERRIDES[key]
        parts[section][field_name] = tuple(value) if isinstance(value, list) else value
    if parts["model"] and isinstance(config.model, UNetConfig):
        given = [flag(k) for k in overrides if OVERRIDES[k][0] == "model"]
        raise ValueError(f"{', '.join(given)} configure the vector MLPs, but {config.dataset} trains a UNet; "
                         "change the UNet through a recipe (ddpmkit.recipes) instead")
    if "n_train" in overrides and config.spec.fixed_size:
        raise ValueError(f"{flag('n_train')} sets how many samples are drawn, but {config.dataset} is a fixed set that trains on all of its images")
    schedule_name = parts["schedule"].get("name", config.schedule.name)
    unread = [flag(k) for k in overrides if OVERRIDES[k][0] == "schedule" and OVERRIDES[k][1] not in ("name", "T")
              and OVERRIDES[k][1] not in _schedule_params(schedule_name)]  # fmt: skip
    if unread:
        raise ValueError(f"the {schedule_name!r} schedule does not read {', '.join(unread)}; drop it or choose a schedule that does")
    return replace(config, train=replace(config.train, **parts["train"]), schedule=replace(config.schedule, **parts["schedule"]),
                   model=replace(config.model, **parts["model"]))  # fmt: skip


def _schedule_params(name: str) -> tuple[str, ...]:
    return SCHEDULES[name].params if name in SCHEDULES else ()


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
