"""Image data sets: MNIST (through torchvision, with an offline fallback), scikit-learn's
8×8 digits and a generated multi-label "shapes" set (a folder of images: ``ddpmkit.data.load_image_folder``).

Every loader returns an :class:`ImageData`: float32 images in [-1, 1] of shape
(N, C, H, W), labels, and a plain-words description of the data actually used.
Nothing is downloaded unless ``download=True`` is passed.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_DATA = "DDPMKIT_DATA"
MNIST_HELD_OUT = 1000  # test images kept out for evaluation when only the test split exists


class MissingTrainingSplitWarning(UserWarning):
    """MNIST's training split is not on disk; the test split stands in for it."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64 class indices, or (N, L) float32 multi-hot
    source: str  # what was actually used, in words (goes into checkpoint metadata)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$DDPMKIT_DATA``, else ``~/.cache/ddpmkit/data``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DATA)
    return Path(env) if env else Path.home() / ".cache" / "ddpmkit" / "data"


def _to_unit(x: np.ndarray | torch.Tensor, scale: float) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32) / scale * 2.0 - 1.0


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not, with torchvision's reader
    (``read_sn3_pascalvincent_tensor``); a corrupt or truncated file is named in the error."""
    import tempfile

    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    def read(p: str) -> np.ndarray:
        try:
            return read_sn3_pascalvincent_tensor(p, strict=True).numpy()
        except (AssertionError, KeyError, RuntimeError, ValueError) as e:  # torchvision asserts on bad headers and sizes
            raise ValueError(f"{path} is not a readable IDX file (truncated or corrupt?): {e or type(e).__name__}") from None

    if path.suffix != ".gz":
        return read(str(path))
    with gzip.open(path, "rb") as f, tempfile.NamedTemporaryFile(suffix=path.stem) as tmp:
        tmp.write(f.read())
        tmp.flush()
        return read(tmp.name)


def _find(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).is_file():
            return raw / name
    return None


def load_mnist(split: str = "train", root: str | os.PathLike | None = None, download: bool = False, warn: bool = True) -> ImageData:
    """MNIST digits, (N, 1, 28, 28) in [-1, 1] with labels 0..9.

    1. If torchvision finds (or, with ``download=True``, fetches) the full data set under
       ``root/MNIST/raw``, ``split="train"`` is the 60,000 training images and
       ``split="eval"`` the 10,000 test images.
    2. Otherwise, if only the test split's two files are there (as in CI), a fixed 1,000 of
       its images (seeded permutation) are kept out as ``eval`` and the other 9,000 are
       ``train``, with a :class:`MissingTrainingSplitWarning` (``warn=False`` for a caller
       that tells its reader itself, as the book's prose does; ``ImageData.source`` records
       the substitution either way).
    3. With no files at all, ``FileNotFoundError`` says where to put them.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got split={split!r}")
    import torchvision

    root = data_root(root)
    try:
        ds = torchvision.datasets.MNIST(str(root), train=split == "train", download=download)
        what = "MNIST training split (60,000 images)" if split == "train" else "MNIST test split (10,000 images)"
        return ImageData(_to_unit(ds.data[:, None], 255.0), ds.targets.long(), what)
    except RuntimeError as e:
        if download:
            warnings.warn(f"could not download MNIST into {root} ({e}); looking for the test split on disk", stacklevel=2)
    raw = root / "MNIST" / "raw"
    img_p, lab_p = _find(raw, "t10k-images-idx3-ubyte"), _find(raw, "t10k-labels-idx1-ubyte")
    if img_p is None or lab_p is None:
        raise FileNotFoundError(
            f"MNIST not found under {raw}. Put the files train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there "
            f"(or at least the two t10k files), set {ENV_DATA} to the folder that holds MNIST/raw, "
            f"or pass download=True (ddpmkit train --download) on a machine with internet."
        )
    images, labels = read_idx(img_p), read_idx(lab_p)
    if len(images) != len(labels):
        raise ValueError(f"{img_p.name} has {len(images)} images but {lab_p.name} has {len(labels)} labels")
    perm = np.random.default_rng(0).permutation(len(images))
    idx = perm[:MNIST_HELD_OUT] if split == "eval" else perm[MNIST_HELD_OUT:]
    if warn:
        warnings.warn(
            f"MNIST's training split is missing from {raw}; using the test split instead: "
            f"{len(images) - MNIST_HELD_OUT} of its images for training and a fixed {MNIST_HELD_OUT} held out "
            f"for evaluation (ImageData.source records this).",
            MissingTrainingSplitWarning,
            stacklevel=2,
        )
    what = (
        f"MNIST test split minus {MNIST_HELD_OUT} held-out images ({len(idx)} images; training split missing)"
        if split == "train"
        else f"{MNIST_HELD_OUT} held-out images of the MNIST test split (training split missing)"
    )
    return ImageData(_to_unit(images[idx][:, None], 255.0), torch.as_tensor(labels[idx], dtype=torch.long), what)


def load_digits8x8() -> ImageData:
    """scikit-learn's 1,797 8×8 digits, (N, 1, 8, 8) in [-1, 1]: always available offline."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return ImageData(_to_unit(d.images[:, None], 16.0), torch.as_tensor(d.target, dtype=torch.long), "scikit-learn 8x8 digits (1,797 images)")


SHAPE_COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.15, 0.3, 1.0)}
SHAPE_KINDS = ("square", "circle", "triangle")
SHAPE_LABELS = tuple(f"{c} {k}" for c in SHAPE_COLOURS for k in SHAPE_KINDS)  # 9 multi-hot labels


def _shape_mask(kind: str, cy: float, cx: float, r: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if kind == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    # triangle pointing up: inside y >= cy - r, y <= cy + r and |x - cx| <= (y - (cy - r)) / 2
    return (yy <= cy + r) & (yy >= cy - r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)


def make_shapes(n: int, seed: int = 0, size: int = 32) -> ImageData:
    """A multi-label stand-in for iCLEVR (003_…): 1–3 coloured shapes on a grey canvas.

    Each object is one of ``SHAPE_LABELS`` (3 colours × 3 shapes); no label repeats within
    an image and objects sit in distinct cells of a 2×2 grid, so they never overlap. Labels
    are multi-hot vectors of length 9.
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got n={n!r}")
    rng = np.random.default_rng(seed)
    imgs = np.full((n, 3, size, size), 0.5, dtype=np.float32)
    labels = np.zeros((n, len(SHAPE_LABELS)), dtype=np.float32)
    cell = size / 2
    for i in range(n):
        k = int(rng.integers(1, 4))
        which = rng.choice(len(SHAPE_LABELS), k, replace=False)
        cells = rng.choice(4, k, replace=False)
        for lab, c in zip(which, cells):
            colour = SHAPE_COLOURS[list(SHAPE_COLOURS)[lab // 3]]
            kind = SHAPE_KINDS[lab % 3]
            r = rng.uniform(0.28, 0.38) * cell
            cy = (c // 2 + 0.5) * cell + rng.uniform(-1.5, 1.5)
            cx = (c % 2 + 0.5) * cell + rng.uniform(-1.5, 1.5)
            m = _shape_mask(kind, cy, cx, r, size)
            for ch in range(3):
                imgs[i, ch][m] = colour[ch]
            labels[i, lab] = 1.0
    return ImageData(torch.from_numpy(imgs) * 2 - 1, torch.from_numpy(labels), f"generated shapes ({n} images, seed {seed})")
