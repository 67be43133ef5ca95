"""Seeded data sets for vector diffusion: six 2-D toys and a 64-D set.

Every set is returned in its own fixed coordinates, the ones the models train on and the
metrics are computed in. The 2-D toys follow the KAIST assignment (004_…): a draw is
centred by its global mean and divided by its global standard deviation, times 2
(``normalize`` below), so its Chamfer threshold means the same here as there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn import datasets as skd

DatasetName = Literal["swiss_roll", "moons", "circles", "eight_gaussians", "checkerboard", "s_curve", "digits64"]
DATASETS: tuple[str, ...] = ("swiss_roll", "moons", "circles", "eight_gaussians", "checkerboard", "s_curve", "digits64")
DIMS = {name: 2 for name in DATASETS} | {"digits64": 64}
NUM_CLASSES = {"moons": 2, "circles": 2, "eight_gaussians": 8, "digits64": 10}  # sets with class labels


def normalize(x: np.ndarray, scale: float = 2.0) -> np.ndarray:
    """KAIST ``normalize``: (x - mean) / std * scale, with one global mean and std."""
    return (x - x.mean()) / x.std() * scale


def _check(name: str, n: int) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive integer, got n={n!r}")


def load_dataset(name: DatasetName, n: int, seed: int = 0, *, return_labels: bool = False):
    """Draw ``n`` points of data set ``name`` with ``seed``: float32 array of shape (n, D).

    * swiss_roll: ``make_swiss_roll(noise=0, hole=True)``, columns x and z (KAIST)
    * moons (labels 0/1), circles (labels 0/1), s_curve (columns x and z): scikit-learn
    * eight_gaussians: 8 unit-circle centres, std 0.1 (labels 0..7)
    * checkerboard: uniform on the dark squares of a 4×4 board
    * digits64: scikit-learn's 8×8 digits flattened, pixels 0..16 mapped to [-1, 1], drawn
      with replacement (the 64-D case of the CS726 report; labels 0..9)

    With ``return_labels=True``, returns ``(x, y)``; y is an int64 label array (zeros
    where the set has no classes).
    """
    _check(name, n)
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    if name == "swiss_roll":
        x, _ = skd.make_swiss_roll(n, noise=0.0, random_state=seed, hole=True)
        x = x[:, [0, 2]]
    elif name == "moons":
        x, y = skd.make_moons(n, noise=0.05, random_state=seed)
    elif name == "circles":
        x, y = skd.make_circles(n, noise=0.03, factor=0.5, random_state=seed)
    elif name == "s_curve":
        x, _ = skd.make_s_curve(n, noise=0.0, random_state=seed)
        x = x[:, [0, 2]]
    elif name == "eight_gaussians":
        y = rng.integers(0, 8, n)
        ang = 2 * np.pi * y / 8
        x = np.stack([np.cos(ang), np.sin(ang)], 1) + 0.1 * rng.standard_normal((n, 2))
    elif name == "checkerboard":
        u = rng.uniform(0, 4, (4 * n, 2))
        keep = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
        x = u[keep][:n] - 2.0
    else:  # digits64
        d = skd.load_digits()
        idx = rng.integers(0, len(d.data), n)
        x, y = d.data[idx] / 16.0 * 2.0 - 1.0, d.target[idx]
        return (x.astype(np.float32), y.astype(np.int64)) if return_labels else x.astype(np.float32)
    x = normalize(np.asarray(x, dtype=np.float64)).astype(np.float32)
    return (x, np.asarray(y, dtype=np.int64)) if return_labels else x
