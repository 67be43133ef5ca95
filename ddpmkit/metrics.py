"""Sample-quality metrics for vector data.

* :func:`emd`: exact earth mover's distance (optimal transport, POT's ``ot.emd2``) with
  Euclidean ground cost, i.e. the 1-Wasserstein distance between two equal-weight point
  clouds, averaged over several random subsamples as in the CS726 evaluation (000_…).
* :func:`chamfer_distance`: the KAIST (004_…) Chamfer distance, the *sum* over both sets
  of squared distances to the nearest neighbour in the other set; ``reduction="mean"``
  gives the per-point version (the two means added).
* :func:`kde_nll`: negative log-likelihood of held-out data under a Gaussian kernel
  density estimate built on the samples (the CS726 NLL), in nats per point.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array of shape (n, dim), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values; the sampler or the model diverged")
    return a


def _check_pair(x, y):
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def emd(x, y, *, n: int = 1000, repeats: int = 5, seed: int = 0) -> float:
    """Mean over ``repeats`` subsamples of ``n`` points each of the exact EMD between x and y.

    Ground cost: the Euclidean distance ‖x_i - y_j‖ (so the result is W₁, in data units).
    Weights: uniform, 1/n per point.
    """
    import ot

    x, y = _check_pair(x, y)
    rng = np.random.default_rng(seed)
    k = min(n, len(x), len(y))
    vals = []
    for _ in range(repeats):
        xs = x[rng.choice(len(x), k, replace=False)]
        ys = y[rng.choice(len(y), k, replace=False)]
        M = ot.dist(xs, ys, metric="euclidean")  # (k, k)
        w = np.full(k, 1.0 / k)
        vals.append(float(ot.emd2(w, w, M, numItermax=1_000_000)))
    return float(np.mean(vals))


def _nn_sq_dists(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """For each row of a, the squared distance to its nearest row of b. (Na,)"""
    out = []
    for i in range(0, len(a), chunk):
        out.append(torch.cdist(a[i : i + chunk], b).pow(2).min(dim=1).values)
    return torch.cat(out)


def chamfer_distance(x, y, reduction: Literal["sum", "mean"] = "sum") -> float:
    """Σ_i min_j ‖x_i - y_j‖² + Σ_j min_i ‖x_i - y_j‖² (``sum``, the KAIST definition), or
    the same with each sum replaced by a mean (``mean``)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction={reduction!r}; choose 'sum' or 'mean'")
    x, y = _check_pair(x, y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    d1, d2 = _nn_sq_dists(tx, ty), _nn_sq_dists(ty, tx)
    red = torch.sum if reduction == "sum" else torch.mean
    return float(red(d1) + red(d2))


def kde_nll(data, samples, bandwidth: float = 0.1) -> float:
    """-1/N Σ_i log p̂(data_i), p̂(x) = 1/M Σ_j N(x; samples_j, h² I), h = ``bandwidth``.

    In nats per point (lower is better); the CS726 report calls h the temperature.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got bandwidth={bandwidth!r}")
    data, samples = _check_pair(data, samples)
    D, M = data.shape[1], samples.shape[0]
    td, ts = torch.from_numpy(data), torch.from_numpy(samples)
    logs = []
    for i in range(0, len(td), 1024):
        sq = torch.cdist(td[i : i + 1024], ts).pow(2)  # (b, M)
        logs.append(torch.logsumexp(-sq / (2 * bandwidth**2), dim=1))
    log_p = torch.cat(logs) - math.log(M) - 0.5 * D * math.log(2 * math.pi * bandwidth**2)
    return float(-log_p.mean())


def evaluate_samples(samples, reference, *, emd_n: int = 1000, emd_repeats: int = 5, bandwidth: float = 0.1, seed: int = 0) -> dict:
    """All vector metrics at once: EMD, Chamfer (sum and mean), KDE NLL of the reference."""
    return {
        "n_samples": int(np.asarray(samples).shape[0]),
        "n_reference": int(np.asarray(reference).shape[0]),
        "emd": emd(samples, reference, n=emd_n, repeats=emd_repeats, seed=seed),
        "chamfer": chamfer_distance(samples, reference, "sum"),
        "chamfer_mean": chamfer_distance(samples, reference, "mean"),
        "kde_nll": kde_nll(reference, samples, bandwidth),
    }
