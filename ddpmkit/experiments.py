"""The book's experiments, sized by the profile (``DDPMKIT_PROFILE``).

Chapters call these functions instead of carrying their own training or evaluation loops,
so the numbers in every figure come from library code that the tests also exercise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from .data import DIMS, load_dataset
from .diffusion import Predictor
from .likelihood import elbo_terms
from .metrics import evaluate_samples
from .models import MLPConfig
from .profile import Profile, get_profile
from .samplers import ddim_sample, ddpm_sample
from .schedules import ScheduleConfig
from .train import RunConfig, TrainConfig, Trainer


@dataclass(frozen=True)
class BookSize:
    """How much compute a chapter spends, per profile."""

    iterations: int  # training steps of the main runs (quick = the KAIST A1 5,000)
    sweep_iterations: int  # training steps of each run inside a sweep
    T_values: tuple[int, ...]  # diffusion lengths for the T sweep (CS726 Figure 1)
    schedule_T: int  # T of the schedule comparison (CS726 used 200)
    n_eval: int  # samples drawn for each metric (KAIST: 2,048)
    ddim_steps: tuple[int, ...]  # DDIM step counts in the sampling chapter
    elbo_points: int  # held-out points for the ELBO
    T_main: int  # T of the main runs (Ho et al.: 1,000)


SIZES: dict[str, BookSize] = {
    "smoke": BookSize(300, 150, (10, 50), 50, 256, (5, 20), 32, 100),
    "quick": BookSize(5000, 2000, (10, 25, 50, 100, 200, 500, 1000), 200, 2048, (5, 10, 20, 50, 100, 250, 1000), 256, 1000),
    "full": BookSize(20000, 10000, (10, 25, 50, 100, 200, 500, 1000, 2000), 200, 8192, (5, 10, 20, 50, 100, 250, 1000), 2048, 1000),
}


def book_size(profile: Profile | None = None) -> BookSize:
    """The :class:`BookSize` of the active (or given) profile."""
    return SIZES[profile or get_profile()]


def run_config(
    dataset: str = "swiss_roll",
    *,
    iterations: int = 5000,
    T: int = 1000,
    schedule: ScheduleConfig | None = None,
    predictor: Predictor = "eps",
    seed: int = 0,
    **train_kwargs,
) -> RunConfig:
    """A :class:`RunConfig` with the KAIST A1 defaults, changed where asked."""
    sched = schedule if schedule is not None else ScheduleConfig(T=T)
    return RunConfig(
        dataset=dataset,  # type: ignore[arg-type]
        model=MLPConfig(dim=DIMS[dataset]),
        schedule=sched,
        train=TrainConfig(iterations=iterations, predictor=predictor, seed=seed, checkpoint_every=iterations, **train_kwargs),
    )


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
    sampling wall time and ``finite_fraction``. A chain that diverged (any non-finite
    sample) gets NaN metrics instead of an error, so that a sweep can report it.
    """
    model, sched, cfg = trainer.sampling_model, trainer.schedule, trainer.config
    gen = torch.Generator().manual_seed(seed)
    shape = (n, cfg.model.dim)
    t0 = time.perf_counter()
    if sampler == "ddim":
        x = ddim_sample(model, sched, shape, steps=steps or sched.T, eta=eta, predictor=cfg.train.predictor, generator=gen, clip_x0=clip_x0).x
    elif sampler in ("ddpm", "deterministic"):
        x = ddpm_sample(model, sched, shape, predictor=cfg.train.predictor, generator=gen, stochastic=sampler == "ddpm", clip_x0=clip_x0).x
    else:
        raise ValueError(f"unknown sampler={sampler!r}; choose 'ddpm', 'deterministic' or 'ddim'")
    seconds = time.perf_counter() - t0
    samples = x.numpy()
    ref = load_dataset(cfg.dataset, n, seed=ref_seed)
    finite = float(np.isfinite(samples).all(axis=1).mean())
    if finite < 1.0:
        nan = float("nan")
        metrics = {"n_samples": n, "n_reference": n, "emd": nan, "chamfer": nan, "chamfer_mean": nan, "kde_nll": nan}
    else:
        metrics = evaluate_samples(samples, ref)
    return {**metrics, "samples": samples, "sample_seconds": seconds, "finite_fraction": finite}


def elbo_bpd(trainer: Trainer, n: int, seed: int = 2) -> dict:
    """Mean ELBO terms (nats per point) and bits/dim of ``n`` held-out points."""
    cfg = trainer.config
    x0 = torch.from_numpy(load_dataset(cfg.dataset, n, seed=seed))
    terms = elbo_terms(trainer.sampling_model, trainer.schedule, x0, predictor=cfg.train.predictor, generator=torch.Generator().manual_seed(seed))
    return {k: float(v.mean()) for k, v in terms.items()}


# The CS726 report's schedule experiment (000_…): the original linear schedule, gentler and
# harsher linear ones, and the cosine and sigmoid shapes.
CS726_SCHEDULES: dict[str, dict] = {
    "original (linear 1e-4→0.02)": dict(name="linear", beta_1=1e-4, beta_T=0.02),
    "very gradual (linear 1e-5→0.005)": dict(name="linear", beta_1=1e-5, beta_T=0.005),
    "fast (linear 1e-3→0.05)": dict(name="linear", beta_1=1e-3, beta_T=0.05),
    "wide range (linear 1e-5→0.1)": dict(name="linear", beta_1=1e-5, beta_T=0.1),
    "quadratic 1e-4→0.02": dict(name="quadratic", beta_1=1e-4, beta_T=0.02),
    "cosine (s=0.008)": dict(name="cosine"),
    "sigmoid 1e-4→0.02": dict(name="sigmoid", beta_1=1e-4, beta_T=0.02),
}


def sweep(configs: dict[str, RunConfig], n_eval: int, elbo_points: int = 0, progress: bool = False, **sample_kwargs) -> list[dict]:
    """Train and score each named config; one row of metrics per config (with its
    ``samples`` and ``trainer``)."""
    from tqdm.auto import tqdm

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


def table(rows: Sequence[dict], columns: Sequence[str], formats: dict[str, str] | None = None) -> str:
    """A plain-text table of ``rows`` (for printing in a chapter)."""
    formats = formats or {}
    cells = [[formats.get(c, "{}").format(r[c]) if not isinstance(r[c], float) or c in formats else f"{r[c]:.4g}" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def load_benchmark(name: str) -> dict:
    """The committed result ``benchmarks/results/NAME.json`` of a benchmark script."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark result at {path}; run `make bench` to produce it")
    return json.loads(path.read_text())


@torch.no_grad()
def guided_samples(model, schedule, labels: torch.Tensor, w: float, *, image_size: int = 28, steps: int = 50, seed: int = 0, batch: int = 250) -> torch.Tensor:
    """Class-conditional images in [-1, 1] guided with weight ``w`` (DDIM, η = 0, x0 clipped)."""
    from .guidance import CFGModel

    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(labels), batch):
        y = labels[i : i + batch]
        shape = (len(y), model.config.in_channels, image_size, image_size)
        out.append(ddim_sample(CFGModel(model, y, w), schedule, shape, steps=steps, clip_x0=(-1.0, 1.0), generator=gen).x)
    return torch.cat(out)


@torch.no_grad()
def within_class_diversity(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise distance between the classifier features of images that share a label
    (higher: more varied samples of each class)."""
    feats = classifier.features(images)
    vals = []
    for c in labels.unique():
        f = feats[labels == c]
        if len(f) > 1:
            d = torch.cdist(f, f)
            vals.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(vals).mean())


def guidance_sweep(model, schedule, classifier, real: torch.Tensor, ws, *, per_class: int = 20, steps: int = 50, seed: int = 0) -> list[dict]:
    """Class accuracy (by ``classifier``), feature-space FID/KID against ``real`` and within-class
    diversity of guided samples, for each guidance weight in ``ws``. The samples take the
    size of the real images they are compared with."""
    from .classifier import accuracy, feature_fid_kid

    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for w in ws:
        t0 = time.perf_counter()
        x = guided_samples(model, schedule, labels, w, image_size=real.shape[-1], steps=steps, seed=seed)
        secs = time.perf_counter() - t0
        m = feature_fid_kid(classifier, real, x, kid_subset=min(100, len(x)))
        rows.append({"w": float(w), "accuracy": accuracy(classifier, x, labels), **m,
                     "diversity": within_class_diversity(classifier, x, labels), "seconds": secs, "samples": x})  # fmt: skip
    return rows
