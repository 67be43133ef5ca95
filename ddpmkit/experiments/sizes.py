"""How much compute each profile spends in each chapter, plain-text tables, and the
committed benchmark results the chapters print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..profile import Profile, get_profile


@dataclass(frozen=True, kw_only=True)
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
    image_steps: int = 50  # sampler steps in the image sweeps (DDIM; SDE-DPM-Solver++ in the shapes sweep)
    guidance_ws: tuple[float, ...] = (0.0, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)  # guidance weights swept (CS726 convention; fine near 0: best FID)
    interval_ws: tuple[float, ...] = (0.2, 0.25, 0.3, 0.4)  # guidance weights swept on guidance_interval only
    guidance_interval: tuple[int, int] = (0, 600)  # timesteps guided in that sweep: all but the highest noise levels (T = 1,000)
    shapes_ws: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0, 8.0)  # guidance weights of the shapes sweep (9 labels need more)
    image_ddim_steps: tuple[int, ...] = (5, 10, 20, 50, 100)  # DDIM step counts in the image-sampling chapter
    image_solver_steps: tuple[int, ...] = (5, 10, 20)  # DPM-Solver++(2M) step counts there
    ddpm_reference: int = 100  # images drawn by 1,000-step ancestral DDPM as the reference there
    n_real: int = 1000  # held-out real images for FID/KID
    classify_n: int = 200  # held-out images (and moons points) for the training-free classifier
    moons_iterations: int = 5000  # training steps of the class-conditional moons MLP
    retrain: bool = False  # True (full): train every image model by its recipe instead of loading it


SIZES: dict[str, BookSize] = {
    "smoke": BookSize(
        iterations=300, sweep_iterations=150, T_values=(10, 50), schedule_T=50, n_eval=256, ddim_steps=(5, 20), elbo_points=32,
        T_main=100, per_class=2, image_steps=5, guidance_ws=(0.0, 2.0), interval_ws=(2.0,), shapes_ws=(0.0, 6.0),
        image_ddim_steps=(2, 5), image_solver_steps=(2, 5),
        ddpm_reference=0, n_real=100, classify_n=10, moons_iterations=300,
    ),
    "quick": BookSize(
        iterations=5000, sweep_iterations=2000, T_values=(10, 25, 50, 100, 200, 500, 1000), schedule_T=200, n_eval=2048,
        ddim_steps=(5, 10, 20, 50, 100, 250, 1000), elbo_points=256, T_main=1000,
    ),
    "full": BookSize(
        iterations=20000, sweep_iterations=10000, T_values=(10, 25, 50, 100, 200, 500, 1000, 2000), schedule_T=200, n_eval=8192,
        ddim_steps=(5, 10, 20, 50, 100, 250, 1000), elbo_points=2048, T_main=1000,
        per_class=100, guidance_ws=(0.0, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0, 6.0), image_ddim_steps=(5, 10, 20, 50, 100, 250),
        ddpm_reference=500, n_real=1000, classify_n=1000, moons_iterations=10000, retrain=True,
    ),
}  # fmt: skip


def book_size(profile: Profile | None = None) -> BookSize:
    """The :class:`BookSize` of the active (or given) profile."""
    return SIZES[profile or get_profile()]


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
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark result at {path}; run `make bench` to produce it")
    return json.loads(path.read_text())
