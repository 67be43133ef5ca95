"""Experiments of the part "Images": the shipped image models (loaded, or retrained in the
full profile), guided sampling, guidance and DDIM-step sweeps with their metrics, and the
2-D guidance warm-up on the moons."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..common import CHECKPOINT_FILE
from ..data import dataset_spec, load_dataset
from ..guidance import CFGModel
from ..samplers import ddim_sample, ddpm_sample, sample
from ..train import Trainer
from .sizes import BookSize, book_size


@torch.no_grad()
def guided_samples(
    model, schedule, labels: torch.Tensor, w: float, *, image_size: int = 28, steps: int = 50, seed: int = 0, batch: int = 250,
    sampler: str = "ddim", interval: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class-conditional images in [-1, 1] guided with weight ``w`` (on the timesteps of
    ``interval`` only, when given: :class:`~ddpmkit.guidance.CFGModel`), x0 clipped, by a
    registered few-step ``sampler`` (DDIM with η = 0 by default, or ``dpm-solver``) over ``steps`` steps."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(labels), batch):
        y = labels[i : i + batch]
        shape = (len(y), model.config.in_channels, image_size, image_size)
        out.append(sample(sampler, CFGModel(model, y, w, interval), schedule, shape, steps=steps, clip_x0=(-1.0, 1.0), generator=gen).x)
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


def _timed_guided_samples(model, schedule, labels, w, real, steps, seed, sampler: str = "ddim", interval=None) -> tuple[torch.Tensor, float]:
    """Guided samples (DDIM, or another few-step ``sampler``) sized like ``real``, and the seconds they took."""
    t0 = time.perf_counter()
    x = guided_samples(model, schedule, labels, w, image_size=real.shape[-1], steps=steps, seed=seed, sampler=sampler, interval=interval)
    return x, time.perf_counter() - t0


def guidance_sweep(model, schedule, classifier, real: torch.Tensor, ws, *, per_class: int = 20, steps: int = 50, seed: int = 0,
                   interval: tuple[int, int] | None = None) -> list[dict]:  # fmt: skip
    """Class accuracy (by ``classifier``), feature-space FID/KID against ``real`` and within-class
    diversity of guided samples, for each guidance weight in ``ws``, guiding every step or the
    timesteps of ``interval`` only (each row records its ``"interval"``). The samples take the
    size of the real images they are compared with."""
    labels = torch.arange(model.config.num_classes).repeat_interleave(per_class)  # every class in turn
    rows = []
    for w in ws:
        x, secs = _timed_guided_samples(model, schedule, labels, w, real, steps, seed, interval=interval)
        rows.append({"w": float(w), "interval": interval, **score_class_samples(classifier, real, x, labels),
                     "diversity": within_class_diversity(classifier, x, labels), "seconds": secs, "samples": x})  # fmt: skip
    return rows


def score_class_samples(classifier, real: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Class-conditional samples ``x`` drawn for ``labels``, measured by ``classifier``:
    ``{"n", "accuracy", "fid", "kid", "kid_std"}`` (FID/KID against ``real`` in its feature space)."""
    from ..classifier import accuracy, feature_fid_kid

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
    from ..pretrained import load_pretrained, loss_curve
    from ..recipes import get_recipe

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
    from ..pretrained import export_evaluator, load_pretrained

    size = size or book_size()
    if not size.retrain:
        clf, _, info = load_pretrained(name)
        return clf, info
    folder = retrain_dir()
    if not (folder / f"{name}.json").exists():
        export_evaluator(name, folder, progress=progress)
    clf, _, info = load_pretrained(name, directory=folder)
    return clf, info


def guidance_label(w: float, interval: tuple[int, int] | None = None) -> str:
    """How the book prints a guidance setting: ``"w = 0.25"`` or ``"w = 0.25 at t in [0, 600]"``."""
    return f"w = {w:g}" + ("" if interval is None else f" at t in [{interval[0]}, {interval[1]}]")


def choose_guidance(rows: Sequence[dict], fid_slack: float = 0.10) -> dict:
    """The guidance setting to ship, as its row: the most class-accurate swept row among those
    whose FID is within ``fid_slack`` (10%) of the best FID of all rows (ties: the smaller w,
    then guidance on every step over an interval). Rows may mix ordinary guidance with
    guidance on an interval (a row's ``"interval"``, absent or None for every step).
    Guidance trades diversity for fidelity; FID sees both, so the bar keeps the diversity
    while accuracy picks the fidelity."""
    if not rows:
        raise ValueError("choose_guidance needs at least one swept row with 'w', 'fid' and 'accuracy'")
    best = min(r["fid"] for r in rows)
    near_best = [r for r in rows if r["fid"] <= (1 + fid_slack) * best]
    return max(near_best, key=lambda r: (r["accuracy"], -r["w"], r.get("interval") is None))


def steps_sweep(model, schedule, classifier, real: torch.Tensor, w: float, steps: Sequence[int], *,
                per_class: int, ddpm_n: int = 0, solver_steps: Sequence[int] = (), seed: int = 0,
                interval: tuple[int, int] | None = None) -> list[dict]:  # fmt: skip
    """Guided MNIST samples (weight ``w``, on the timesteps of ``interval`` only when given) by
    DDIM (η = 0) at each step count, by DPM-Solver++(2M) at each of ``solver_steps``, and by
    1,000-step ancestral DDPM on ``ddpm_n`` images as the reference: class accuracy, feature
    FID/KID and seconds. The few-step rows share labels, seeds and size."""
    labels = torch.arange(model.config.num_classes).repeat_interleave(per_class)  # every class in turn
    rows = []
    for name, sampler, counts in [("DDIM", "ddim", steps), ("DPM-Solver++", "dpm-solver", solver_steps)]:
        for S in counts:
            x, secs = _timed_guided_samples(model, schedule, labels, w, real, S, seed, sampler, interval)
            rows.append({"sampler": name, "steps": S, **score_class_samples(classifier, real, x, labels),
                         "seconds_per_image": secs / len(x), "samples": x})  # fmt: skip
    if ddpm_n:
        y = torch.arange(ddpm_n) % model.config.num_classes
        t0 = time.perf_counter()
        shape = (ddpm_n, model.config.in_channels, real.shape[-1], real.shape[-1])
        x = ddpm_sample(CFGModel(model, y, w, interval), schedule, shape, clip_x0=(-1.0, 1.0), generator=torch.Generator().manual_seed(seed)).x
        secs = time.perf_counter() - t0
        rows.append({"sampler": "DDPM", "steps": schedule.T, **score_class_samples(classifier, real, x, y),
                     "seconds_per_image": secs / ddpm_n, "samples": x})  # fmt: skip
    return rows


def shapes_guidance_sweep(model, schedule, evaluator_model, label_sets: torch.Tensor, ws, *, steps: int = 50, seed: int = 0,
                          sampler: str = "ddim") -> list[dict]:
    """Guided shapes for the multi-hot ``label_sets`` (N, 9), scored by the shapes evaluator
    (:func:`ddpmkit.classifier.multilabel_accuracy`) at each guidance weight, sampled by the
    registered ``sampler`` in ``steps`` steps."""
    from ..classifier import multilabel_accuracy

    rows = []
    for w in ws:
        t0 = time.perf_counter()
        x = guided_samples(model, schedule, label_sets, w, image_size=dataset_spec("shapes").shape[-1], steps=steps, seed=seed, sampler=sampler)
        secs = time.perf_counter() - t0
        rows.append({"w": float(w), **multilabel_accuracy(evaluator_model, x, label_sets), "seconds": secs, "samples": x})
    return rows


def nearest_label(points: np.ndarray | torch.Tensor, reference: np.ndarray, reference_labels: np.ndarray) -> np.ndarray:
    """The label of each point's nearest reference point (a 1-NN classifier for 2-D data)."""
    d = torch.cdist(torch.as_tensor(np.asarray(points), dtype=torch.float32), torch.from_numpy(reference).float())
    return reference_labels[d.argmin(1).numpy()]


def moons_guidance_sweep(trainer: Trainer, ws, *, n_per_class: int = 1000, steps: int = 100, seed: int = 0,
                         guide=CFGModel) -> list[dict]:  # fmt: skip
    """Guided samples of each moon at each w: class accuracy by 1-NN against 20,000 labelled
    real points, EMD to that class's real points (lower: closer to the class distribution)
    and the per-class spread (mean distance to the class's sample mean: a diversity measure).
    ``guide(model, y, w)`` makes the guided network: classifier-free guidance by default, or
    e.g. ``lambda m, y, s: ClassifierGuidedModel(m, classifier, y, s, schedule)``."""
    from ..metrics import emd

    ref, ref_y = load_dataset("moons", 20000, seed=99, return_labels=True)
    rows = []
    for w in ws:
        row: dict = {"w": float(w), "samples": {}}
        acc, emds, spread = [], [], []
        for c in (0, 1):
            y = torch.full((n_per_class,), c)
            gen = torch.Generator().manual_seed(seed + c)
            x = ddim_sample(guide(trainer.sampling_model, y, w), trainer.schedule, (n_per_class, 2), steps=steps, generator=gen).x
            acc.append(float((nearest_label(x, ref, ref_y) == c).mean()))
            emds.append(emd(x.numpy(), ref[ref_y == c], n=n_per_class, repeats=1, seed=seed))
            spread.append(float((x - x.mean(0)).norm(dim=1).mean()))
            row["samples"][c] = x.numpy()
        row.update(accuracy=float(np.mean(acc)), emd=float(np.mean(emds)), spread=float(np.mean(spread)))
        rows.append(row)
    return rows
