"""Named training recipes: the exact configs behind the shipped checkpoints.

``ddpmkit train --recipe NAME --out RUN_DIR`` trains one from scratch.
"""

from __future__ import annotations

from .models import MLPConfig
from .schedules import ScheduleConfig
from .train import RunConfig, TrainConfig
from .unet import UNetConfig


def mnist_cfg() -> RunConfig:
    """Class-conditional MNIST UNet for classifier-free guidance (label dropout 0.1).

    Sized for a 2-core CPU: base width 16 (0.28 M parameters), 0.26 s per batch-64 step.
    """
    return RunConfig(
        dataset="mnist",
        cond="class",
        model=UNetConfig(in_channels=1, base_channels=16, channel_mults=(1, 2, 2), attn_levels=(2,), num_classes=10),
        schedule=ScheduleConfig(name="linear", T=1000, beta_1=1e-4, beta_T=0.02),
        train=TrainConfig(
            iterations=6000, batch_size=64, lr=5e-4, warmup=200, grad_clip=1.0, ema_decay=0.999,
            predictor="eps", seed=0, n_train=60000, checkpoint_every=500, label_dropout=0.1,
        ),  # fmt: skip
    )


def shapes_cfg() -> RunConfig:
    """Multi-label shapes UNet (3×32×32, 9-label multi-hot through a linear layer, as the
    iCLEVR lab of the 003 report); label dropout 0.1 zeroes the whole vector for guidance."""
    return RunConfig(
        dataset="shapes",
        cond="multi",
        model=UNetConfig(in_channels=3, base_channels=16, channel_mults=(1, 2, 2), attn_levels=(2,), num_labels=9),
        schedule=ScheduleConfig(name="linear", T=1000, beta_1=1e-4, beta_T=0.02),
        train=TrainConfig(
            iterations=3000, batch_size=64, lr=5e-4, warmup=200, grad_clip=1.0, ema_decay=0.999,
            predictor="eps", seed=0, n_train=20000, checkpoint_every=500, label_dropout=0.1,
        ),  # fmt: skip
    )


def swiss_roll() -> RunConfig:
    """The KAIST A1 set-up on the swiss roll (the CLI's defaults)."""
    return RunConfig(dataset="swiss_roll", model=MLPConfig())


RECIPES = {"mnist-cfg": mnist_cfg, "shapes-cfg": shapes_cfg, "swiss-roll": swiss_roll}
# the evaluator classifiers are recipes of the CLI too (``ddpmkit train --recipe NAME --out DIR``
# writes DIR/NAME.safetensors + .json): see ddpmkit.classifier
CLASSIFIER_RECIPES = ("mnist-classifier", "shapes-evaluator")


def get_recipe(name: str) -> RunConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join((*RECIPES, *CLASSIFIER_RECIPES))}")
    return RECIPES[name]()
