"""The data sets, in one registry: what each set is (the shape of one sample, its classes or
labels, the conditioning it allows) and how to load it, for vector and image sets alike.

Vector sets are returned in their own fixed coordinates, the ones the models train on and
the metrics are computed in. The 2-D toys follow the KAIST assignment (004_…): a draw is
centred by its global mean and divided by its global standard deviation, times 2
(``normalize`` below), so its Chamfer threshold means the same here as there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from sklearn import datasets as skd

from . import images

Conditioning = Literal["none", "class", "multi"]  # unconditional, class labels 0..K-1, multi-hot labels
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)
DatasetName = str  # a key of DATASETS


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set."""

    shape: tuple[int, ...]  # one sample: (D,) for vectors, (C, H, W) for images
    description: str  # one line, with the source
    num_classes: int | None = None  # class labels 0..K-1; None: the set has no classes
    num_labels: int | None = None  # multi-hot labels of length L; None: no multi-label annotations
    label_names: tuple[str, ...] = ()  # the names of the L multi-hot labels (``sample --label`` takes them)
    generate: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None  # vector sets: (n, seed) -> (x, y)
    loader: Callable[[int, int, bool], tuple[torch.Tensor, torch.Tensor, str]] | None = None  # image sets: (n, seed, download) -> (x, y, source)
    fixed_size: bool = False  # True: the loader returns the whole set and ignores n (MNIST, 8×8 digits)

    def __post_init__(self):
        if (self.generate is None) == (self.loader is None):
            raise ValueError("a DatasetSpec needs exactly one of generate (vector sets) or loader (image sets)")
        if self.num_labels is not None and len(self.label_names) != self.num_labels:
            raise ValueError(f"a multi-label set needs one name per label: {self.num_labels} labels, {len(self.label_names)} names")

    def load(self, n: int, seed: int, download: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Training data: ``(x (N, *shape) float32, labels, source in words)``."""
        if self.loader is not None:
            return self.loader(n, seed, download)
        x, y = self.generate(n, seed)
        x, y = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.int64))
        return x, y, f"{n} points drawn with seed {seed}"

    @property
    def kind(self) -> Literal["vector", "image"]:
        return "vector" if len(self.shape) == 1 else "image"

    @property
    def conditionings(self) -> tuple[str, ...]:
        """The ``cond`` values a run on this set may use."""
        return ("none",) + ("class",) * (self.num_classes is not None) + ("multi",) * (self.num_labels is not None)

    @property
    def default_cond(self) -> str:
        """Image sets train conditionally by default (for guidance); vector sets do not."""
        return self.conditionings[-1] if self.kind == "image" else "none"


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, spec: DatasetSpec) -> None:
    """Add a data set: ``ddpmkit train --dataset``, the trainer and the contract tests
    (``tests/test_contracts.py``) pick it up at once."""
    if name in DATASETS:
        raise ValueError(f"a data set named {name!r} is already registered")
    DATASETS[name] = spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered :class:`DatasetSpec` of ``name``, or an error listing the names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def vector_datasets() -> tuple[str, ...]:
    """Names of the registered vector sets (those ``ddpmkit data`` and ``evaluate`` take)."""
    return tuple(n for n, s in DATASETS.items() if s.kind == "vector")


def normalize(x: np.ndarray, scale: float = 2.0) -> np.ndarray:
    """KAIST ``normalize``: (x - mean) / std * scale, with one global mean and std."""
    return (x - x.mean()) / x.std() * scale


# --- vector sets: each generator draws raw points (n, D) and labels (n,) with a seed ---------


def _swiss_roll(n: int, seed: int):
    x, _ = skd.make_swiss_roll(n, noise=0.0, random_state=seed, hole=True)
    return normalize(x[:, [0, 2]]), np.zeros(n)  # columns x and z (KAIST)


def _moons(n: int, seed: int):
    x, y = skd.make_moons(n, noise=0.05, random_state=seed)
    return normalize(x), y


def _circles(n: int, seed: int):
    x, y = skd.make_circles(n, noise=0.03, factor=0.5, random_state=seed)
    return normalize(x), y


def _s_curve(n: int, seed: int):
    x, _ = skd.make_s_curve(n, noise=0.0, random_state=seed)
    return normalize(x[:, [0, 2]]), np.zeros(n)  # columns x and z


def _eight_gaussians(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    ang = 2 * np.pi * y / 8
    return normalize(np.stack([np.cos(ang), np.sin(ang)], 1) + 0.1 * rng.standard_normal((n, 2))), y


def _checkerboard(n: int, seed: int):
    u = np.random.default_rng(seed).uniform(0, 4, (4 * n, 2))
    keep = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
    return normalize(u[keep][:n] - 2.0), np.zeros(n)


def _digits64(n: int, seed: int):
    d = skd.load_digits()
    idx = np.random.default_rng(seed).integers(0, len(d.data), n)
    return d.data[idx] / 16.0 * 2.0 - 1.0, d.target[idx]  # pixels 0..16 mapped to [-1, 1], not normalized


for _name, _gen, _k, _what in (
    ("swiss_roll", _swiss_roll, None, "make_swiss_roll(noise=0, hole=True), columns x and z (KAIST A1)"),
    ("moons", _moons, 2, "scikit-learn's two moons, noise 0.05, labels 0/1"),
    ("circles", _circles, 2, "scikit-learn's two circles, noise 0.03, factor 0.5, labels 0/1"),
    ("eight_gaussians", _eight_gaussians, 8, "8 unit-circle centres, std 0.1, labels 0..7"),
    ("checkerboard", _checkerboard, None, "uniform on the dark squares of a 4×4 board"),
    ("s_curve", _s_curve, None, "scikit-learn's S curve, columns x and z"),
):
    register_dataset(_name, DatasetSpec((2,), _what, num_classes=_k, generate=_gen))
register_dataset("digits64", DatasetSpec((64,), "scikit-learn's 8×8 digits flattened, in [-1, 1], drawn with replacement (CS726's 64-D set)",
                                         num_classes=10, generate=_digits64))  # fmt: skip


def load_dataset(name: DatasetName, n: int, seed: int = 0, *, return_labels: bool = False):
    """Draw ``n`` points of the vector set ``name`` with ``seed``: float32 array of shape (n, D).

    With ``return_labels=True``, returns ``(x, y)``; y is an int64 label array (zeros
    where the set has no classes). See ``DATASETS[name].description`` for each set.
    """
    spec = dataset_spec(name)
    if spec.kind != "vector":
        raise ValueError(f"load_dataset draws vector sets ({', '.join(vector_datasets())}); {name!r} is an image set: use load_images")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    x, y = spec.generate(n, seed)
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    return (x, y) if return_labels else x


# --- image sets ---------------------------------------------------------------------------


def _mnist(n: int, seed: int, download: bool = False):
    d = images.load_mnist("train", download=download)
    return d.images, d.labels, d.source


def _digits8x8(n: int, seed: int, download: bool = False):
    d = images.load_digits8x8()
    return d.images, d.labels, d.source


def _shapes(n: int, seed: int, download: bool = False):
    d = images.make_shapes(n, seed=seed)
    return d.images, d.labels, d.source


register_dataset("mnist", DatasetSpec((1, 28, 28), "MNIST through torchvision from $DDPMKIT_DATA (the training split, or 9,000 test images)",
                                      num_classes=10, loader=_mnist, fixed_size=True))  # fmt: skip
register_dataset("digits8x8", DatasetSpec((1, 8, 8), "scikit-learn's 1,797 8×8 digits as images", num_classes=10, loader=_digits8x8, fixed_size=True))
register_dataset("shapes", DatasetSpec((3, 32, 32), "generated 1-3 coloured shapes, 9 multi-hot labels (an iCLEVR stand-in, 003 report)",
                                       num_labels=len(images.SHAPE_LABELS), label_names=images.SHAPE_LABELS, loader=_shapes))  # fmt: skip


def load_training_data(dataset: str, n: int, seed: int, download: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Training data for a run: ``(x, labels, source)``; ``source`` says what was used.
    Only MNIST can be downloaded, and only with ``download=True``."""
    spec = dataset_spec(dataset)
    x, y, source = spec.load(n, seed, download)
    return x, y, (f"{dataset}: {source}" if spec.kind == "vector" else source)
