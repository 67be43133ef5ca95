"""Named training recipes (the exact configs behind the shipped checkpoints), and the
config a run starts from when only a data set is named.

``ddpmkit train --recipe NAME --out RUN_DIR`` trains one from scratch;
``ddpmkit train --dataset NAME`` starts from :func:`for_dataset`. Flags then override
either through :func:`ddpmkit.train.apply_overrides`.
"""

from __future__ import annotations

import dataclasses

from .data import DATASETS, dataset_spec, folder_config
from .models import MLPConfig
from .schedules import ScheduleConfig
from .train import RunConfig, TrainConfig
from .unet import UNetConfig


def _image_run(dataset: str, cond: str, model: UNetConfig, iterations: int, n_train: int, batch_size: int) -> RunConfig:
    """The training set-up shared by the image recipes: linear schedule (T = 1000,
    β 1e-4 → 0.02, Ho et al.), Adam 5e-4 with 200 warm-up steps, EMA 0.999, label dropout
    0.1 for classifier-free guidance."""
    return RunConfig(
        dataset=dataset, cond=cond, model=model,
        schedule=ScheduleConfig(name="linear", T=1000, beta_1=1e-4, beta_T=0.02),
        train=TrainConfig(
            iterations=iterations, batch_size=batch_size, lr=5e-4, warmup=200, grad_clip=1.0, ema_decay=0.999,
            predictor="eps", seed=0, n_train=n_train, checkpoint_every=500, label_dropout=0.1,
        ),
    )  # fmt: skip


def mnist_cfg() -> RunConfig:
    """Class-conditional MNIST UNet for classifier-free guidance (label dropout 0.1).

    Base width 16 (0.28 M parameters), batch 128, 18,500 steps: trained on one H200 (11 min,
    sharing it with a batch-64 run of the same recipe); 128 min on 2 CPU cores (415 ms a step,
    benchmarks/results/train_speed_cpu.json). Measured
    against that batch-64 run at 19,000 steps (DDIM-50, 500 samples, mnist-classifier): class
    accuracy 0.984 against 0.978 at w = 0.15, FID 40.5 against 40.1. The shipped model before
    it, this recipe at batch 64 and 6,000 steps (2 CPU cores), scored 0.973 at its chosen
    w = 0.5 by the 4-epoch classifier of that time (the checkpoint's notes keep its sweep).
    """
    mnist = dataset_spec("mnist")
    unet = UNetConfig(in_channels=mnist.shape[0], base_channels=16, channel_mults=(1, 2, 2), attn_levels=(2,), num_classes=mnist.num_classes)
    return _image_run("mnist", "class", unet, iterations=18500, n_train=60000, batch_size=128)


def shapes_cfg() -> RunConfig:
    """Multi-label shapes UNet (3×32×32, 9-label multi-hot through a linear layer, as the
    iCLEVR lab of the 003 report); label dropout 0.1 zeroes the whole vector for guidance.

    15,000 steps: 6 min on one H200 (24 ms a step), about 70 min on 2 CPU cores. At 3,000
    steps the label recall of guided samples stayed at 0.73; at 15,000 it is 0.97 (the
    shipped checkpoint's notes)."""
    shapes = dataset_spec("shapes")
    unet = UNetConfig(in_channels=shapes.shape[0], base_channels=16, channel_mults=(1, 2, 2), attn_levels=(2,), num_labels=shapes.num_labels)
    return _image_run("shapes", "multi", unet, iterations=15000, n_train=20000, batch_size=64)


def swiss_roll() -> RunConfig:
    """The KAIST A1 set-up on the swiss roll (the CLI's defaults)."""
    return for_dataset("swiss_roll")


def swiss_roll_cosine_v() -> RunConfig:
    """The KAIST A1 set-up with two changes, measured by ``benchmarks/bench_samplers.py``
    against it (three seeds each, 2 CPU cores): the cosine schedule (Nichol & Dhariwal 2021)
    and v-prediction (Salimans & Ho 2022). Same network, steps, batch and time to train.
    Its probability-flow ODE is well posed from t = T (v stays finite where ᾱ_T ≈ 0, ε does
    not), so DPM-Solver++ reaches in 20 calls what ancestral sampling needs 1,000 for."""
    base = for_dataset("swiss_roll")
    return dataclasses.replace(base, schedule=ScheduleConfig(name="cosine", T=base.schedule.T),  # ᾱ_t: cos² (s = 0.008)
                               train=dataclasses.replace(base.train, predictor="v"))  # v = √ᾱ ε − √(1−ᾱ) x0


RECIPES = {"mnist-cfg": mnist_cfg, "shapes-cfg": shapes_cfg, "swiss-roll": swiss_roll, "swiss-roll-cosine-v": swiss_roll_cosine_v}
# the evaluator classifiers are recipes of the CLI too (``ddpmkit train --recipe NAME --out DIR``
# writes DIR/NAME.safetensors + .json): see ddpmkit.classifier
CLASSIFIER_RECIPES = ("mnist-classifier", "shapes-evaluator", "folder-evaluator")  # folder-evaluator: with --dataset FOLDER


def folder_64(dataset: str, cond: str | None = None, image_size: int = 64) -> RunConfig:
    """The 004 report's AFHQ set-up (its best FID, 28.7) for any folder of images: 64×64,
    linear schedule (T = 1000, β 1e-4 → 0.02), x0-prediction, batch 16, Adam 2e-4 with 200
    warm-up steps, 50,000 steps, seed 63. Ours adds EMA 0.999 for sampling and label dropout
    0.1 when the folder has classes (for guidance). The UNet: base width 64, four levels
    (64, 32, 16, 8 pixels), attention at 16×16, 2 residual blocks per level, dropout 0.1.
    Sized for a GPU (50,000 steps), not for a laptop."""
    base = for_dataset(dataset, cond, image_size=image_size)
    unet = dataclasses.replace(base.model, base_channels=64, channel_mults=(1, 2, 2, 2), attn_levels=(2,), num_res_blocks=2, dropout=0.1)
    schedule = ScheduleConfig(name="linear", T=1000, beta_1=1e-4, beta_T=0.02)
    train = dataclasses.replace(base.train, iterations=50_000, batch_size=16, lr=2e-4, warmup=200, predictor="x0", seed=63,
                                checkpoint_every=2000, ema_decay=0.999)  # the report samples and saves every 2,000 steps
    return dataclasses.replace(base, model=unet, schedule=schedule, train=train)


# recipes for a folder of images: ``ddpmkit train --recipe NAME --dataset FOLDER [--image-size S]``
FOLDER_RECIPES = {"folder-64": folder_64}


def for_dataset(dataset: str, cond: str | None = None, image_size: int | None = None) -> RunConfig:
    """The config a run on ``dataset`` starts from: the KAIST A1 MLP for a vector set, the
    mnist-cfg recipe's UNet fitted to an image set (its channels, classes or labels, and two
    levels for 8×8 images). ``cond`` defaults to the set's (``DatasetSpec.default_cond``).

    ``dataset`` may be the path of a folder of images (``ddpmkit.data.scan_image_folder``):
    the run then records the folder's absolute path, ``image_size`` and its classes."""
    folder = None
    if dataset not in DATASETS:
        dataset, folder = folder_config(dataset, image_size) if _is_folder(dataset) else (dataset, None)
    elif image_size is not None:
        raise ValueError(f"--image-size resizes the images of a folder; {dataset} is a registered set of fixed shape "
                         f"{'×'.join(map(str, dataset_spec(dataset).shape))}: drop --image-size")
    spec = dataset_spec(dataset, folder)
    cond = cond or spec.default_cond
    if cond not in spec.conditionings:
        raise ValueError(f"--cond {cond} does not fit {dataset}, which allows {', '.join(spec.conditionings)}")
    classes = spec.num_classes if cond == "class" else None
    if spec.kind == "vector":
        return RunConfig(dataset=dataset, cond=cond, model=MLPConfig(dim=spec.shape[0], num_classes=classes))
    base = mnist_cfg()
    # a new image set trains at the CPU-sized set-up (mnist-cfg's before its GPU run): 6,000 steps of batch 64
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, iterations=6000, batch_size=64))
    unet = dataclasses.replace(base.model, in_channels=spec.shape[0], num_classes=classes, num_labels=spec.num_labels if cond == "multi" else None)
    if spec.shape[-1] <= 8:  # two levels: 8 -> 4 pixels at the bottom
        unet = dataclasses.replace(unet, channel_mults=(1, 2), attn_levels=(1,))
    return dataclasses.replace(base, dataset=dataset, cond=cond, model=unet, folder=folder)


def _is_folder(path: str) -> bool:
    from pathlib import Path

    return Path(path).expanduser().is_dir()


def get_recipe(name: str) -> RunConfig:
    if name in FOLDER_RECIPES:
        raise ValueError(f"the {name} recipe trains on a folder of images: pass it with --dataset PATH")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join((*RECIPES, *FOLDER_RECIPES, *CLASSIFIER_RECIPES))}")
    return RECIPES[name]()
