"""Small pretrained checkpoints shipped inside the package (``ddpmkit/checkpoints/``).

Each is a pair: ``NAME.safetensors`` (weights only; safetensors cannot carry code) and
``NAME.json`` (kind, config, metadata: data actually used, steps, seed, wall time,
hardware, and for guided models the book's chosen guidance weight). ``load_pretrained``
reads them; ``export_run`` makes one from a training run folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from . import images
from .checkpoint import load_state, save_json
from .classifier import ClassifierConfig, ImageClassifier, accuracy, multilabel_accuracy, shapes_evaluator_config, train_classifier
from .common import CHECKPOINT_FILE, CONFIG_FILE, METADATA_FILE, atomic_write, hardware
from .networks import build_model
from .schedules import NoiseSchedule
from .train import RunConfig

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MAX_BYTES = 10 * 1024 * 1024  # every shipped checkpoint stays under 10 MB


def available() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json"))


def _save_weights(state: dict, path: Path) -> None:
    """Write tensors as safetensors, atomically (the same mechanism as every checkpoint)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda f: f.write(save(tensors)))
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB, over the 10 MB limit for shipped checkpoints")


def export_run(run_dir: str | Path, name: str, extra: dict | None = None, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Write the EMA weights of a run as ``NAME.safetensors`` plus ``NAME.json``."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / CONFIG_FILE).read_text())
    meta = json.loads((run_dir / METADATA_FILE).read_text())
    state = load_state(run_dir / CHECKPOINT_FILE)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_weights(state["ema"] if state.get("ema") is not None else state["model"], out_dir / f"{name}.safetensors")
    curve = loss_curve(state["losses"].tolist())
    save_json({"kind": "diffusion", "config": cfg, "metadata": meta, "loss_curve": curve, **(extra or {})}, out_dir / f"{name}.json")
    return out_dir / f"{name}.safetensors"


def default_guidance(info: dict, w: float = 0.0) -> dict:
    """The guidance a checkpoint samples with by default, as keyword arguments of
    :class:`~ddpmkit.guidance.CFGModel` and ``guided_samples``: ``{"w": its "guidance_w"
    (else ``w``), "interval": its "guidance_interval" as (lo, hi) (else None: every step)}``."""
    interval = info.get("guidance_interval")
    return {"w": float(info.get("guidance_w", w)), "interval": None if interval is None else (int(interval[0]), int(interval[1]))}


def loss_curve(losses: list[float], window: int = 50) -> dict:
    """The training curve, kept small: the mean loss of each ``window`` consecutive steps.
    Returns ``{"step": [...], "loss": [...]}`` (step = the last step of each window)."""
    steps, means = [], []
    for i in range(0, len(losses) - window + 1, window):
        steps.append(i + window)
        means.append(round(sum(losses[i : i + window]) / window, 6))
    return {"step": steps, "loss": means}


def export_module(model: torch.nn.Module, name: str, kind: str, config: dict, metadata: dict, out_dir: Path = CHECKPOINT_DIR) -> Path:
    """Write any module's weights as ``NAME.safetensors`` plus ``NAME.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_weights(model.state_dict(), out_dir / f"{name}.safetensors")
    save_json({"kind": kind, "config": config, "metadata": metadata}, out_dir / f"{name}.json")
    return out_dir / f"{name}.safetensors"


def read_info(name: str, directory: Path = CHECKPOINT_DIR) -> dict:
    """The JSON side of a shipped checkpoint."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped checkpoint named {name!r}; available: {', '.join(available()) or 'none'}")
    return json.loads(path.read_text())


def load_pretrained(name: str, device: str = "cpu", directory: Path = CHECKPOINT_DIR):
    """Load a shipped checkpoint. Returns ``(model, schedule_or_None, info)``."""
    info = read_info(name, directory)
    weights = load_file(str(directory / f"{name}.safetensors"), device=device)
    if info["kind"] == "diffusion":
        cfg = RunConfig.from_dict(info["config"])
        model = build_model(cfg.model)
        model.load_state_dict(weights)
        return model.to(device).eval(), NoiseSchedule.from_config(cfg.schedule), info
    if info["kind"] == "classifier":
        model = ImageClassifier(ClassifierConfig.from_dict(info["config"]))
        model.load_state_dict(weights)
        return model.to(device).eval(), None, info
    raise ValueError(f"{name}.json has unknown kind {info['kind']!r}")


# --- the evaluator recipes ----------------------------------------------------------------


def train_evaluator(recipe: str, seed: int = 0, download: bool = False, progress: bool = True,
                    dataset: str | None = None, image_size: int | None = None) -> tuple[ImageClassifier, dict]:
    """Run an evaluator recipe and score it on held-out data. Returns ``(model, metadata)``.

    * ``mnist-classifier``: MNIST's training split (or, offline, the test split minus its
      fixed 1,000 held-out images), scored on the held-out images;
    * ``shapes-evaluator``: 20,000 generated shapes (seed ``seed``), scored on 1,000 drawn
      with another seed;
    * ``folder-evaluator``: the folder of images ``dataset`` at ``image_size``, a fixed 10%
      held out (:func:`folder_evaluator_data`): its classes when it has class subfolders,
      otherwise which of 4 rotations (0°, 90°, 180°, 270°) an image was turned by, a task
      that needs no labels and whose features still see shapes (Gidaris et al. 2018).
    """
    if (dataset is not None or image_size is not None) and recipe != "folder-evaluator":
        raise ValueError(f"the {recipe} recipe trains on its own data set; --dataset and --image-size are for folder-evaluator")

    if recipe == "mnist-classifier":
        cfg = ClassifierConfig(seed=seed)
        train, held = images.load_mnist("train", download=download), images.load_mnist("eval", download=download)
    elif recipe == "shapes-evaluator":
        cfg = shapes_evaluator_config(seed=seed)
        train, held = images.make_shapes(20000, seed=seed), images.make_shapes(1000, seed=seed + 10_000)
    elif recipe == "folder-evaluator":
        if dataset is None:
            raise ValueError("the folder-evaluator recipe trains on a folder of images: pass --dataset PATH/TO/FOLDER")
        train, held, outputs = folder_evaluator_data(dataset, image_size, seed)
        cfg = ClassifierConfig(in_channels=3, image_size=train.images.shape[-1], num_outputs=outputs, seed=seed,
                               epochs=max(4, -(-4000 // len(train.images))))  # at least ~4,000 images seen  # fmt: skip
    else:
        raise ValueError(f"unknown evaluator recipe {recipe!r}; choose 'mnist-classifier', 'shapes-evaluator' or 'folder-evaluator'")
    t0 = time.perf_counter()
    clf = train_classifier(train.images, train.labels, cfg, progress=progress)
    scores = multilabel_accuracy(clf, held.images, held.labels) if cfg.multilabel else {"accuracy": accuracy(clf, held.images, held.labels)}
    meta = {"data": train.source, "evaluated_on": held.source, "held_out": scores, "seed": seed,
            "wall_time_s": round(time.perf_counter() - t0, 1), "hardware": hardware()}  # fmt: skip
    return clf, meta


def folder_evaluator_data(dataset: str, image_size: int | None, seed: int) -> tuple[images.ImageData, images.ImageData, int]:
    """(training part, held-out part, number of outputs) for the folder evaluator: a seeded
    10% of the folder (at least one image) is held out. Class labels when the folder has
    classes; otherwise each image turned by a seeded multiple of 90° and labelled by it."""
    from .data import folder_config, load_image_folder

    path, folder = folder_config(dataset, image_size)
    d = load_image_folder(path, folder)
    x, y, outputs = d.images, d.labels, len(folder.class_names)
    g = torch.Generator().manual_seed(seed)
    if not folder.class_names:
        y = torch.randint(0, 4, (len(x),), generator=g)
        x = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(x, y)])  # (N, 3, S, S)
        outputs = 4
    if len(x) < 2:
        raise ValueError(f"{path} holds {len(x)} image; an evaluator needs at least 2 (one to train on, one to score)")
    perm = torch.randperm(len(x), generator=g)
    k = max(1, len(x) // 10)
    task = "classes" if folder.class_names else "rotation by 0/90/180/270 degrees (no classes in the folder)"
    held = images.ImageData(x[perm[:k]], y[perm[:k]], f"{k} held-out images of {d.source}; task: {task}")
    train = images.ImageData(x[perm[k:]], y[perm[k:]], f"{len(x) - k} images of {d.source}; task: {task}")
    return train, held, outputs


def export_evaluator(recipe: str, out_dir, seed: int = 0, download: bool = False, progress: bool = True,
                     dataset: str | None = None, image_size: int | None = None):
    """Train an evaluator recipe and write ``OUT_DIR/RECIPE.safetensors`` + ``.json`` (the
    shipped-checkpoint format). Returns ``(weights path, metadata)``."""
    clf, meta = train_evaluator(recipe, seed=seed, download=download, progress=progress, dataset=dataset, image_size=image_size)
    return export_module(clf, recipe, "classifier", clf.config.to_dict(), meta, out_dir=out_dir), meta
