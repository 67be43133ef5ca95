"""Experiments on vector data (parts "Foundations" and "DDPM on 2-D data"): a run config
with the KAIST A1 defaults, training in memory, sampling and scoring, the ELBO, and sweeps."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import load_dataset
from ..likelihood import elbo_terms
from ..metrics import evaluate_samples
from ..recipes import for_dataset
from ..samplers import SAMPLERS, sample
from ..schedules import ScheduleConfig
from ..train import RunConfig, Trainer


def run_config(dataset: str = "swiss_roll", *, T: int | None = None, schedule: ScheduleConfig | None = None,
               num_classes: int | None = None, **train_kwargs) -> RunConfig:  # fmt: skip
    """The data set's starting config (:func:`ddpmkit.recipes.for_dataset`: the KAIST A1
    set-up), with ``T`` or a whole ``schedule`` and any :class:`TrainConfig` field changed;
    ``num_classes`` asks for a class-conditional run (it must be the set's number of classes).
    Runs here live in memory, so the only checkpoint is the last step."""
    cfg = for_dataset(dataset, "class" if num_classes is not None else None)
    if num_classes is not None and num_classes != cfg.model.num_classes:
        raise ValueError(f"{dataset} has {cfg.model.num_classes} classes, not num_classes={num_classes}")
    sched = schedule if schedule is not None else replace(cfg.schedule, T=T) if T is not None else cfg.schedule
    train = replace(cfg.train, **train_kwargs)
    return replace(cfg, schedule=sched, train=replace(train, checkpoint_every=train.iterations))


def train(config: RunConfig, progress: bool = False) -> Trainer:
    """Train a run in memory (no run folder) and return its trainer."""
    tr = Trainer(config)
    tr.train(progress=progress)
    return tr


def sample_and_score(
    trainer: Trainer,
    n: int,
    *,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    ref_seed: int = 1,
    clip_x0: tuple[float, float] | None = None,
) -> dict:
    """Draw ``n`` samples with the EMA network and score them against a fresh data draw.

    Returns the metrics of :func:`ddpmkit.metrics.evaluate_samples` plus the samples, the
    sampling wall time, ``finite_fraction`` and ``diverged`` (the number of chains whose sample is
    not finite). When any chain diverged the metrics are NaN instead of an error, so that a
    sweep can report it.
    """
    model, sched, cfg = trainer.sampling_model, trainer.schedule, trainer.config
    gen = torch.Generator().manual_seed(seed)
    shape = (n, cfg.model.dim)
    t0 = time.perf_counter()
    given = {"steps": steps or sched.T, "eta": eta}
    options = {k: v for k, v in given.items() if k in SAMPLERS[sampler].options}  # what this sampler takes
    x = sample(sampler, model, sched, shape, predictor=cfg.train.predictor, generator=gen, clip_x0=clip_x0, **options).x
    seconds = time.perf_counter() - t0
    samples = x.numpy()
    ref = load_dataset(cfg.dataset, n, seed=ref_seed)
    finite_rows = np.isfinite(samples).all(axis=1)  # (n,) one flag per chain
    finite = float(finite_rows.mean())
    if finite < 1.0:
        nan = float("nan")
        metrics = {"n_samples": n, "n_reference": n, "emd": nan, "chamfer": nan, "chamfer_mean": nan, "kde_nll": nan}
    else:
        metrics = evaluate_samples(samples, ref)
    return {**metrics, "samples": samples, "sample_seconds": seconds, "finite_fraction": finite, "diverged": int((~finite_rows).sum())}


def elbo_bpd(trainer: Trainer, n: int, seed: int = 2) -> dict:
    """Mean ELBO terms (nats per point) and bits/dim of ``n`` held-out points."""
    cfg = trainer.config
    x0 = torch.from_numpy(load_dataset(cfg.dataset, n, seed=seed))
    terms = elbo_terms(trainer.sampling_model, trainer.schedule, x0, predictor=cfg.train.predictor, generator=torch.Generator().manual_seed(seed))
    return {k: float(v.mean()) for k, v in terms.items()}


# The CS726 report's schedule experiment (000_…): the original linear schedule, gentler and
# harsher linear ones, and the cosine and sigmoid shapes.
CS726_SCHEDULES: dict[str, dict] = {
    "original (linear 1e-4→0.02)": {"name": "linear", "beta_1": 1e-4, "beta_T": 0.02},
    "very gradual (linear 1e-5→0.005)": {"name": "linear", "beta_1": 1e-5, "beta_T": 0.005},
    "fast (linear 1e-3→0.05)": {"name": "linear", "beta_1": 1e-3, "beta_T": 0.05},
    "wide range (linear 1e-5→0.1)": {"name": "linear", "beta_1": 1e-5, "beta_T": 0.1},
    "quadratic 1e-4→0.02": {"name": "quadratic", "beta_1": 1e-4, "beta_T": 0.02},
    "cosine (s=0.008)": {"name": "cosine"},
    "sigmoid 1e-4→0.02": {"name": "sigmoid", "beta_1": 1e-4, "beta_T": 0.02},
}


def sweep(configs: dict[str, RunConfig], n_eval: int, elbo_points: int = 0, progress: bool = False, **sample_kwargs) -> list[dict]:
    """Train and score each named config; one row of metrics per config (with its
    ``samples`` and ``trainer``)."""
    rows = []
    for name, cfg in tqdm(configs.items(), desc="sweep", disable=not progress, leave=False):
        t0 = time.perf_counter()
        tr = train(cfg)
        train_s = time.perf_counter() - t0
        m = sample_and_score(tr, n_eval, **sample_kwargs)
        row = {"name": name, "train_seconds": train_s, **m, "trainer": tr}
        row["alpha_bar_T"] = float(tr.schedule.alphas_cumprod[-1])
        if elbo_points:
            row.update({f"elbo_{k}": v for k, v in elbo_bpd(tr, elbo_points).items()})
        rows.append(row)
    return rows
