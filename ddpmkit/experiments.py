"""The book's experiments, sized by the profile (``DDPMKIT_PROFILE``).

Chapters call these functions instead of carrying their own training or evaluation loops,
so the numbers in every figure come from library code that the tests also exercise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
from .train import IMAGE_SIZES, RunConfig, TrainConfig, Trainer


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
    # --- image chapters (smoke and quick load the shipped checkpoints; full retrains them)
    per_class: int = 30  # guided samples per class (MNIST) or per label set (shapes) in each sweep
    image_steps: int = 50  # DDIM steps for image sampling in the sweeps
    guidance_ws: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # guidance weights swept (CS726 convention)
    image_ddim_steps: tuple[int, ...] = (5, 10, 20, 50, 100)  # DDIM step counts in the image-sampling chapter
    ddpm_reference: int = 100  # images drawn by 1,000-step ancestral DDPM as the reference there
    n_real: int = 1000  # held-out real images for FID/KID
    classify_n: int = 200  # held-out images (and moons points) for the training-free classifier
    moons_iterations: int = 5000  # training steps of the class-conditional moons MLP
    retrain: bool = False  # True (full): train every image model by its recipe instead of loading it


SIZES: dict[str, BookSize] = {
    "smoke": BookSize(
        300, 150, (10, 50), 50, 256, (5, 20), 32, 100,
        per_class=2, image_steps=5, guidance_ws=(0.0, 2.0), image_ddim_steps=(2, 5), ddpm_reference=0,
        n_real=100, classify_n=10, moons_iterations=300,
    ),
    "quick": BookSize(5000, 2000, (10, 25, 50, 100, 200, 500, 1000), 200, 2048, (5, 10, 20, 50, 100, 250, 1000), 256, 1000),
    "full": BookSize(
        20000, 10000, (10, 25, 50, 100, 200, 500, 1000, 2000), 200, 8192, (5, 10, 20, 50, 100, 250, 1000), 2048, 1000,
        per_class=100, guidance_ws=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0), image_ddim_steps=(5, 10, 20, 50, 100, 250),
        ddpm_reference=500, n_real=1000, classify_n=1000, moons_iterations=10000, retrain=True,
    ),
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
    num_classes: int | None = None,
    **train_kwargs,
) -> RunConfig:
    """A :class:`RunConfig` with the KAIST A1 defaults, changed where asked; with
    ``num_classes`` a class-conditional run (label dropout 0.1 for guidance)."""
    sched = schedule if schedule is not None else ScheduleConfig(T=T)
    return RunConfig(
        dataset=dataset,  # type: ignore[arg-type]
        cond="none" if num_classes is None else "class",
        model=MLPConfig(dim=DIMS[dataset], num_classes=num_classes),
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
def guided_samples(
    model, schedule, labels: torch.Tensor, w: float, *, image_size: int = 28, steps: int = 50, seed: int = 0, batch: int = 250
) -> torch.Tensor:
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


def _timed_guided_samples(model, schedule, labels, w, real, steps, seed) -> tuple[torch.Tensor, float]:
    """Guided DDIM samples sized like ``real``, and the seconds they took."""
    t0 = time.perf_counter()
    x = guided_samples(model, schedule, labels, w, image_size=real.shape[-1], steps=steps, seed=seed)
    return x, time.perf_counter() - t0


def guidance_sweep(model, schedule, classifier, real: torch.Tensor, ws, *, per_class: int = 20, steps: int = 50, seed: int = 0) -> list[dict]:
    """Class accuracy (by ``classifier``), feature-space FID/KID against ``real`` and within-class
    diversity of guided samples, for each guidance weight in ``ws``. The samples take the
    size of the real images they are compared with."""
    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for w in ws:
        x, secs = _timed_guided_samples(model, schedule, labels, w, real, steps, seed)
        rows.append({"w": float(w), **score_class_samples(classifier, real, x, labels),
                     "diversity": within_class_diversity(classifier, x, labels), "seconds": secs, "samples": x})  # fmt: skip
    return rows


def score_class_samples(classifier, real: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Class-conditional samples ``x`` drawn for ``labels``, measured by ``classifier``:
    ``{"n", "accuracy", "fid", "kid", "kid_std"}`` (FID/KID against ``real`` in its feature space)."""
    from .classifier import accuracy, feature_fid_kid

    return {"n": len(x), "accuracy": accuracy(classifier, x, labels), **feature_fid_kid(classifier, real, x, kid_subset=min(100, len(x)))}


# --- image chapters ---------------------------------------------------------------------


def retrain_dir() -> Path:
    """Where the ``full`` profile keeps the image models it retrains, so that the chapters
    share one training run per recipe (and an interrupted build resumes it):
    ``$DDPMKIT_RUNS``, else ``~/.cache/ddpmkit/runs``."""
    return Path(os.environ.get("DDPMKIT_RUNS") or Path.home() / ".cache" / "ddpmkit" / "runs")


def image_model(name: str, size: BookSize | None = None, progress: bool = False):
    """``(model, schedule, info)`` for a shipped diffusion checkpoint: loaded in smoke and
    quick, retrained by its recipe (``ddpmkit.recipes``) in full, once per machine (the run
    folder in :func:`retrain_dir` is reused and resumed). ``info`` carries the config, the
    metadata (data actually used, steps, wall time, hardware) and the loss curve."""
    from .pretrained import load_pretrained, loss_curve
    from .recipes import get_recipe
    from .train import CHECKPOINT_FILE

    size = size or book_size()
    if not size.retrain:
        return load_pretrained(name)
    run_dir = retrain_dir() / name
    tr = Trainer.resume(run_dir) if (run_dir / CHECKPOINT_FILE).exists() else Trainer(get_recipe(name), run_dir)
    tr.train(progress=progress)  # returns at once when the run is complete
    info = {"config": tr.config.to_dict(), "metadata": tr.metadata(), "loss_curve": loss_curve(tr.losses)}
    return tr.sampling_model.eval(), tr.schedule, info


def evaluator(name: str, size: BookSize | None = None, progress: bool = False):
    """``(classifier, info)`` for an evaluator recipe (mnist-classifier, shapes-evaluator):
    loaded in smoke and quick, retrained in full (once; kept in :func:`retrain_dir`)."""
    from .classifier import export_evaluator
    from .pretrained import load_pretrained

    size = size or book_size()
    if not size.retrain:
        clf, _, info = load_pretrained(name)
        return clf, info
    folder = retrain_dir()
    if not (folder / f"{name}.json").exists():
        export_evaluator(name, folder, progress=progress)
    clf, _, info = load_pretrained(name, directory=folder)
    return clf, info


def choose_guidance(rows: Sequence[dict], min_accuracy: float = 0.95) -> float:
    """The smallest swept w whose class accuracy reaches ``min_accuracy`` (guidance trades
    diversity for fidelity, so the least guidance that meets the bar keeps the most
    diversity); the most accurate w if none does."""
    ok = [r["w"] for r in rows if r["accuracy"] >= min_accuracy]
    return min(ok) if ok else max(rows, key=lambda r: r["accuracy"])["w"]


def ddim_steps_sweep(model, schedule, classifier, real: torch.Tensor, w: float, steps: Sequence[int], *,
                     per_class: int, ddpm_n: int = 0, seed: int = 0) -> list[dict]:  # fmt: skip
    """Guided MNIST samples by DDIM (η = 0) at each step count, and by 1,000-step ancestral
    DDPM on ``ddpm_n`` images as the reference: class accuracy, feature FID/KID and seconds."""
    from .guidance import CFGModel

    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for S in steps:
        x, secs = _timed_guided_samples(model, schedule, labels, w, real, S, seed)
        rows.append({"sampler": "DDIM", "steps": S, **score_class_samples(classifier, real, x, labels),
                     "seconds_per_image": secs / len(x), "samples": x})  # fmt: skip
    if ddpm_n:
        y = torch.arange(ddpm_n) % 10
        t0 = time.perf_counter()
        shape = (ddpm_n, model.config.in_channels, real.shape[-1], real.shape[-1])
        x = ddpm_sample(CFGModel(model, y, w), schedule, shape, clip_x0=(-1.0, 1.0), generator=torch.Generator().manual_seed(seed)).x
        secs = time.perf_counter() - t0
        rows.append({"sampler": "DDPM", "steps": schedule.T, **score_class_samples(classifier, real, x, y),
                     "seconds_per_image": secs / ddpm_n, "samples": x})  # fmt: skip
    return rows


def shapes_guidance_sweep(model, schedule, evaluator_model, label_sets: torch.Tensor, ws, *, steps: int = 50, seed: int = 0) -> list[dict]:
    """Guided shapes for the multi-hot ``label_sets`` (N, 9), scored by the shapes evaluator
    (:func:`ddpmkit.classifier.multilabel_accuracy`) at each guidance weight."""
    from .classifier import multilabel_accuracy

    rows = []
    for w in ws:
        t0 = time.perf_counter()
        x = guided_samples(model, schedule, label_sets, w, image_size=IMAGE_SIZES["shapes"], steps=steps, seed=seed)
        secs = time.perf_counter() - t0
        rows.append({"w": float(w), **multilabel_accuracy(evaluator_model, x, label_sets), "seconds": secs, "samples": x})
    return rows


def nearest_label(points: np.ndarray | torch.Tensor, reference: np.ndarray, reference_labels: np.ndarray) -> np.ndarray:
    """The label of each point's nearest reference point (a 1-NN classifier for 2-D data)."""
    d = torch.cdist(torch.as_tensor(np.asarray(points), dtype=torch.float32), torch.from_numpy(reference).float())
    return reference_labels[d.argmin(1).numpy()]


def moons_guidance_sweep(trainer: Trainer, ws, *, n_per_class: int = 1000, steps: int = 100, seed: int = 0) -> list[dict]:
    """Guided samples of each moon at each w: class accuracy by 1-NN against 20,000 labelled
    real points, EMD to that class's real points (lower: closer to the class distribution)
    and the per-class spread (mean distance to the class's sample mean: a diversity measure)."""
    from .guidance import CFGModel
    from .metrics import emd

    ref, ref_y = load_dataset("moons", 20000, seed=99, return_labels=True)
    rows = []
    for w in ws:
        row: dict = {"w": float(w), "samples": {}}
        acc, emds, spread = [], [], []
        for c in (0, 1):
            y = torch.full((n_per_class,), c)
            gen = torch.Generator().manual_seed(seed + c)
            x = ddim_sample(CFGModel(trainer.sampling_model, y, w), trainer.schedule, (n_per_class, 2), steps=steps, generator=gen).x
            acc.append(float((nearest_label(x, ref, ref_y) == c).mean()))
            emds.append(emd(x.numpy(), ref[ref_y == c], n=n_per_class, repeats=1, seed=seed))
            spread.append(float((x - x.mean(0)).norm(dim=1).mean()))
            row["samples"][c] = x.numpy()
        row.update(accuracy=float(np.mean(acc)), emd=float(np.mean(emds)), spread=float(np.mean(spread)))
        rows.append(row)
    return rows
