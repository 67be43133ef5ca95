"""The data sets, in one registry: what each set is (the shape of one sample, its classes or
labels, the conditioning it allows) and how to load it, for vector and image sets alike.

Vector sets are returned in their own fixed coordinates, the ones the models train on and
the metrics are computed in. The 2-D toys follow the KAIST assignment (004_…): a draw is
centred by its global mean and divided by its global standard deviation, times 2
(``normalize`` below), so its Chamfer threshold means the same here as there.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


def dataset_spec(name: str, folder: FolderConfig | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of a registered set ``name``, or, with ``folder``, of the image
    folder at the path ``name`` (built from the recorded ``folder`` alone: the folder itself
    is read only when training data is loaded)."""
    if folder is not None:
        return folder_spec(name, folder)
    if name not in DATASETS:
        raise ValueError(unknown_dataset(name))
    return DATASETS[name]


def unknown_dataset(name: str) -> str:
    """The error for a ``--dataset`` that is neither registered nor an image folder."""
    where = Path(name).expanduser()
    if where.is_dir():
        return (f"{name} is a folder of images, not a registered set: start a run on it with "
                f"ddpmkit train --dataset {name} [--image-size S] (the run records the folder's image size and classes)")
    what = "is a file, not a folder of images" if where.exists() else "is not a registered data set, and no folder exists at that path"
    return f"unknown dataset {name!r}: it {what}; choose one of {', '.join(DATASETS)}, or the path of a folder of images"


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


def load_training_data(dataset: str, n: int, seed: int, download: bool = False,
                       folder: FolderConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Training data for a run: ``(x, labels, source)``; ``source`` says what was used.
    Only MNIST can be downloaded, and only with ``download=True``. ``folder``: ``dataset``
    is the path of an image folder (``RunConfig.folder``)."""
    spec = dataset_spec(dataset, folder)
    x, y, source = spec.load(n, seed, download)
    return x, y, (f"{dataset}: {source}" if spec.kind == "vector" else source)


# --- a folder of images -------------------------------------------------------------------
# ``ddpmkit train --dataset path/to/folder --image-size 64``: every image under the folder,
# resized (shorter side) and centre-cropped to a square, as RGB in [-1, 1]. Class subfolders
# become labels 0..K-1 in sorted order (torchvision's ImageFolder convention); images in the
# folder itself make an unconditional set.


@dataclass(frozen=True)
class FolderConfig:
    """What a run records about its image folder, so that it samples, exports and resumes
    without reading the folder again (``RunConfig.folder``; ``RunConfig.dataset`` is the path)."""

    image_size: int = 64  # side of the square training images: shorter side resized to it, then centre-cropped (004 report, AFHQ: 64)
    class_names: tuple[str, ...] = ()  # the class subfolders in label order; () : unconditional (images in the folder itself, or one subfolder)

    def __post_init__(self):
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be an integer from 8 to 1024 (pixels per side), got {self.image_size!r}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (the UNet halves it twice), got {self.image_size}")
        if len(self.class_names) == 1:
            raise ValueError("one class is no class: a folder with a single class subfolder trains unconditionally (class_names=())")

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: dict) -> FolderConfig:
        return cls(image_size=int(d["image_size"]), class_names=tuple(d.get("class_names", ())))


@dataclass(frozen=True)
class FolderScan:
    """The image files of a folder and their labels, found without opening any of them."""

    root: Path  # the folder, absolute
    files: tuple[Path, ...]  # every image file, sorted within each class
    labels: tuple[int, ...]  # one class index per file (all 0 when unconditional)
    class_names: tuple[str, ...]  # the class subfolders in label order; () when unconditional
    skipped: tuple[Path, ...]  # files without an image extension (README.txt, ...), left out


def image_extensions() -> tuple[str, ...]:
    """The file endings read as images: torchvision's ``IMG_EXTENSIONS`` and ``.gif`` (PIL reads it; the first frame)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return (*IMG_EXTENSIONS, ".gif")


def _image_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(images, other files) in ``folder``, sorted; hidden files and folders (``.DS_Store``,
    macOS's ``._x.png``) are not data and are passed over."""
    exts = image_extensions()
    found = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    found = [p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    images = [p for p in found if p.suffix.lower() in exts]
    return images, [p for p in found if p.suffix.lower() not in exts]


def scan_image_folder(path: str | os.PathLike) -> FolderScan:
    """Find the images under ``path`` and their classes, or say exactly what is wrong."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"image folder {path} does not exist")
    if not root.is_dir():
        raise ValueError(f"{path} is a file; --dataset takes a folder of images (or a registered set's name)")
    loose, other = _image_files(root, recursive=False)
    classes, empty = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs, rest = _image_files(sub, recursive=True)
        other += rest
        if imgs:
            classes.append((sub.name, imgs))
        else:
            empty.append(sub.name)
    if classes and empty:  # an empty class folder would silently drop a class and shift the labels after it
        raise ValueError(f"{path} has class subfolders without images ({', '.join(empty)}) beside ones with images; "
                         "add images to them or remove them, so that every class has examples")
    if classes and loose:
        raise ValueError(
            f"{path} holds images directly ({len(loose)}, e.g. {loose[0].name}) and class subfolders with images "
            f"({', '.join(c for c, _ in classes)}); move every image into a class subfolder for a conditional set, "
            f"or keep them all in the folder itself for an unconditional one")
    if not classes and not loose:
        raise ValueError(
            f"no images found in {path} or its subfolders (looked for {', '.join(image_extensions())}"
            + (f"; found {len(other)} other file(s), e.g. {other[0].relative_to(root)}" if other else "") + ")")
    if not classes:
        return FolderScan(root, tuple(loose), (0,) * len(loose), (), tuple(other))
    files = [f for _, imgs in classes for f in imgs]
    labels = [k for k, (_, imgs) in enumerate(classes) for _ in imgs] if len(classes) > 1 else [0] * len(files)
    names = tuple(c for c, _ in classes) if len(classes) > 1 else ()
    return FolderScan(root, tuple(files), tuple(labels), names, tuple(other))


def folder_config(path: str | os.PathLike, image_size: int | None = None) -> tuple[str, FolderConfig]:
    """``(absolute path, FolderConfig)`` for a new run on the folder at ``path`` (its classes
    are read from its subfolders; ``image_size`` defaults to ``FolderConfig``'s)."""
    scan = scan_image_folder(path)
    size = {} if image_size is None else {"image_size": image_size}
    return str(scan.root), FolderConfig(class_names=scan.class_names, **size)


def _open_rgb(file: Path):
    """The image at ``file`` as RGB; transparent parts are laid on white, not on black."""
    from PIL import Image

    with Image.open(file) as img:
        img.load()  # decode now, so that a truncated file fails here, with its name
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img).convert("RGB")
        return img.convert("RGB")


def load_image_folder(path: str | os.PathLike, folder: FolderConfig | None = None, *, progress: bool | None = None) -> images.ImageData:
    """Every image under ``path``: resized (shorter side) and centre-cropped to
    ``folder.image_size``, RGB, (N, 3, S, S) float32 in [-1, 1], with class labels (N,) from
    the subfolders (zeros when unconditional). Files that cannot be read are all named in one
    error, and nothing is loaded; the folder is never changed. ``folder`` (a run's record)
    must match the classes found, so a resumed run trains on the same labels. ``progress``:
    None shows a bar on a terminal only, True always, False never."""
    from torchvision.transforms import v2 as T
    from tqdm import tqdm as text_bar
    from tqdm.auto import tqdm as auto_bar

    scan = scan_image_folder(path)
    folder = folder or FolderConfig(class_names=scan.class_names)
    if scan.class_names != folder.class_names:
        raise ValueError(f"the classes under {path} changed since the run recorded them: the run has "
                         f"{list(folder.class_names) or 'none (unconditional)'}, the folder now has {list(scan.class_names) or 'none'}; "
                         "restore the folder or start a new run")
    size = folder.image_size
    resize = T.Compose([T.PILToTensor(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    out = torch.empty((len(scan.files), 3, size, size), dtype=torch.uint8)  # (N, 3, S, S), a quarter of float32's memory while reading
    bad = []
    # progress None: a text bar on a terminal only (none in a notebook, where stderr is no terminal); True: always; False: never
    bar = auto_bar(scan.files, desc="reading images", unit="img") if progress else text_bar(scan.files, desc="reading images", unit="img",
                                                                                             disable=None if progress is None else True)  # fmt: skip
    for i, f in enumerate(bar):
        try:
            out[i] = resize(_open_rgb(f))
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError / truncated data (OSError), bad headers
            bad.append(f"{f.relative_to(scan.root)} ({e})")
    if bad:
        raise ValueError(f"{len(bad)} of the {len(scan.files)} image files under {path} cannot be read: {'; '.join(bad[:5])}"
                         + ("; ..." if len(bad) > 5 else "") + ". Remove or re-save them; nothing was loaded or changed")
    classes = f"{len(folder.class_names)} classes ({', '.join(folder.class_names)})" if folder.class_names else "no classes"
    skipped = f"; {len(scan.skipped)} non-image file(s) left out" if scan.skipped else ""
    what = f"image folder {scan.root} ({len(scan.files)} images, {classes}, resized and centre-cropped to {size}×{size}{skipped})"
    return images.ImageData(out.float() / 127.5 - 1.0, torch.tensor(scan.labels, dtype=torch.long), what)


def _folder_loader(path: str, folder: FolderConfig, n: int, seed: int, download: bool = False):
    d = load_image_folder(path, folder)
    return d.images, d.labels, d.source


@functools.lru_cache(maxsize=64)
def folder_spec(path: str, folder: FolderConfig) -> DatasetSpec:
    """The spec of the image folder at ``path`` as ``folder`` records it (no disk access)."""
    s = folder.image_size
    return DatasetSpec((3, s, s), f"images under {path}, resized and centre-cropped to {s}×{s} RGB",
                       num_classes=len(folder.class_names) or None, loader=functools.partial(_folder_loader, path, folder),
                       fixed_size=True)  # fmt: skip
