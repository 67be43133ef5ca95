"""Configs that honour every flag: a flag given overrides the config the run starts from
(defaults, a recipe, an image set, a resumed run), or is refused with its name."""

import dataclasses
import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ddpmkit.cli import build_parser, main
from ddpmkit.data import DATASETS
from ddpmkit.models import MLPConfig
from ddpmkit.recipes import FOLDER_RECIPES, RECIPES, for_dataset, get_recipe
from ddpmkit.schedules import ScheduleConfig
from ddpmkit.train import OVERRIDES, RunConfig, TrainConfig, apply_overrides, flag
from ddpmkit.unet import UNetConfig

# a valid value, different from every default, for each override
VALUES = {
    "iterations": 7, "batch_size": 3, "lr": 3e-3, "weight_decay": 0.01, "warmup": 5, "grad_clip": 0.5, "ema_decay": 0.9,
    "predictor": "v", "seed": 5, "device": "auto", "label_dropout": 0.2, "n_train": 100, "schedule": "quadratic", "T": 50,
    "beta_1": 2e-4, "beta_T": 0.03, "model": "concat", "hidden": [16, 16], "precision": "bf16",
}  # fmt: skip
NOT_CONFIG = {"dataset", "recipe", "cond", "image_size", "out", "resume", "download", "no_progress"}  # flags that choose the start, not a field


def test_every_override_has_a_test_value():
    assert set(VALUES) == set(OVERRIDES)


def test_every_train_flag_is_wired():
    """A train flag is either an override of a config field or one of the flags that pick the
    starting config; a new flag that is neither would be silently ignored."""
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions if a.dest == "dataset").container
    dests = {a.dest for a in train._actions if a.dest != "help"}
    assert dests == set(OVERRIDES) | NOT_CONFIG, dests ^ (set(OVERRIDES) | NOT_CONFIG)


@functools.cache
def png_folder() -> str:
    """Two classes of generated shapes as PNG files, made once per test session."""
    from PIL import Image

    from ddpmkit.images import make_shapes

    root = Path(tempfile.mkdtemp(prefix="ddpmkit-folder-"))
    for i, x in enumerate(make_shapes(4, seed=0).images):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(root / f"c{i % 2}" / f"{i}.png")
    return str(root)


STARTS = ({f"dataset:{n}": (lambda n=n: for_dataset(n)) for n in DATASETS} | {f"recipe:{n}": (lambda n=n: get_recipe(n)) for n in RECIPES}
          | {"folder": lambda: for_dataset(png_folder(), image_size=16)}
          | {f"recipe:{n}": (lambda r=r: r(png_folder())) for n, r in FOLDER_RECIPES.items()})  # fmt: skip


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("key", OVERRIDES)
def test_an_override_is_applied_or_refused_by_name(start, key):
    base = STARTS[start]()
    value = VALUES[key]
    try:
        cfg = apply_overrides(base, {key: value})
    except ValueError as e:
        assert flag(key) in str(e) or str(value) in str(e), f"the refusal must name {flag(key)}: {e}"
        return
    section, name = OVERRIDES[key]
    got = getattr(getattr(cfg, section), name)
    assert got == (tuple(value) if isinstance(value, list) else value), f"{flag(key)} was not applied"
    # nothing else moved
    for sec in ("train", "schedule", "model"):
        a, b = dataclasses.asdict(getattr(base, sec)), dataclasses.asdict(getattr(cfg, sec))
        assert {k for k in a if a[k] != b[k]} <= ({name} if sec == section else set())
    assert (cfg.dataset, cfg.cond) == (base.dataset, base.cond)


@pytest.mark.parametrize("dataset", ["mnist", "digits8x8", "shapes", "folder"])
def test_a_new_image_run_starts_at_the_cpu_sized_set_up(dataset):
    """The image recipes are trained longer, on bigger batches, on a GPU; a run started from
    a data set alone keeps the laptop's 6,000 steps of batch 64, whatever set it is."""
    cfg = for_dataset(png_folder(), image_size=16) if dataset == "folder" else for_dataset(dataset)
    assert (cfg.train.iterations, cfg.train.batch_size) == (6000, 64)
    assert get_recipe("mnist-cfg").train.batch_size == 128  # while the recipe itself keeps its own


def test_the_refusals_say_why():
    mnist = for_dataset("mnist")
    with pytest.raises(ValueError, match="--hidden configure the vector MLPs, but mnist trains a UNet"):
        apply_overrides(mnist, {"hidden": [8]})
    with pytest.raises(ValueError, match="'cosine' schedule does not read --beta-1"):
        apply_overrides(mnist, {"schedule": "cosine", "beta_1": 1e-3})
    with pytest.raises(ValueError, match="--n-train sets how many samples are drawn, but mnist is a fixed set"):
        apply_overrides(mnist, {"n_train": 10})
    with pytest.raises(ValueError, match="--lr, --T cannot change a resumed run"):
        apply_overrides(mnist, {"lr": 1e-3, "T": 10, "iterations": 5}, resumed=True)
    assert apply_overrides(mnist, {"iterations": 9}, resumed=True).train.iterations == 9
    with pytest.raises(ValueError, match="predictor='eps' cannot be used with the zero-terminal-SNR schedule"):
        apply_overrides(for_dataset("moons"), {"schedule": "zero_snr"})


@pytest.mark.parametrize(("make", "match"), [
    (lambda: TrainConfig(lr=0), "lr must be > 0"),
    (lambda: TrainConfig(ema_decay=1.0), "ema_decay must lie in"),
    (lambda: TrainConfig(batch_size=0), "batch_size must be an integer >= 1"),
    (lambda: TrainConfig(predictor="noise"), "unknown predictor"),
    (lambda: ScheduleConfig(T=0), "T must be an integer >= 1"),
    (lambda: ScheduleConfig(beta_T=1.5), "beta_T must lie in"),
    (lambda: ScheduleConfig(name="custom"), "needs betas"),
    (lambda: ScheduleConfig(betas=(0.1, 0.2), T=2), "only read by the 'custom' schedule"),
    (lambda: MLPConfig(hidden=()), "hidden must be one or more"),
    (lambda: MLPConfig(kind="resnet"), "unknown model kind"),
    (lambda: UNetConfig(groups=3), "divisible by groups=3"),
    (lambda: UNetConfig(attn_levels=(5,)), "attn_levels must name levels"),
    (lambda: RunConfig(dataset="mnist"), "mnist is a image set"),
    (lambda: RunConfig(dataset="digits64"), "the network takes 2 dimensions but digits64 has 64"),
])  # fmt: skip
def test_configs_check_themselves_when_made(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_replace_checks_again():
    with pytest.raises(ValueError, match="lr must be > 0"):
        dataclasses.replace(TrainConfig(), lr=-1.0)


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_image_run_honours_every_given_flag(tmp_path, capsys):
    """The run the issue tried: every flag ends up in config.json (digits8x8: always on disk)."""
    run = tmp_path / "d"
    code, _, err = _cli(["train", "--dataset", "digits8x8", "--T", "200", "--lr", "1e-2", "--batch-size", "16", "--schedule", "cosine",
                         "--iterations", "2", "--ema-decay", "0.9", "--predictor", "v", "--out", str(run), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["schedule"]["T"] == 200 and cfg["schedule"]["name"] == "cosine" and cfg["arch"] == "unet"
    assert (cfg["train"]["lr"], cfg["train"]["batch_size"], cfg["train"]["iterations"]) == (1e-2, 16, 2)
    assert (cfg["train"]["ema_decay"], cfg["train"]["predictor"]) == (0.9, "v")
    code, _, err = _cli(["train", "--out", str(run), "--resume", "--lr", "1"], capsys)
    assert code == 2 and "--lr cannot change a resumed run" in err
    code, _, err = _cli(["train", "--out", str(run), "--resume", "--iterations", "3", "--no-progress"], capsys)
    assert code == 0 and json.loads((run / "config.json").read_text())["train"]["iterations"] == 3


@pytest.mark.parametrize(("args", "match"), [
    (["--recipe", "shapes-cfg", "--dataset", "mnist"], "the shapes-cfg recipe trains on shapes with cond=multi; --dataset mnist would change"),
    (["--recipe", "mnist-cfg", "--hidden", "8"], "--hidden configure the vector MLPs"),
    (["--recipe", "mnist-classifier", "--lr", "0.1"], "takes only --seed and --download (its config is a ClassifierConfig); drop --lr"),
    (["--dataset", "moons", "--download"], "--download only fetches MNIST"),
    (["--dataset", "shapes", "--cond", "class"], "--cond class does not fit shapes, which allows none, multi"),
    (["--dataset", "moons", "--schedule", "cosine", "--beta-T", "0.1"], "does not read --beta-T"),
])  # fmt: skip
def test_cli_refuses_what_a_run_cannot_honour(args, match, tmp_path, capsys):
    code, _, err = _cli(["train", *args, "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 2 and match in err, err
    assert not (tmp_path / "r").exists(), "a refused run must not leave a folder behind"


def test_zero_terminal_snr_end_to_end(tmp_path, capsys):
    """The registered zero-SNR schedule through the CLI: v-prediction trains, trailing DDIM and
    ancestral sampling start from pure noise at t = T and stay finite."""
    run = str(tmp_path / "z")
    code, _, err = _cli(["train", "--dataset", "moons", "--schedule", "zero_snr", "--predictor", "v", "--T", "50",
                         "--iterations", "40", "--out", run, "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    for extra in (["--sampler", "ddim", "--steps", "10", "--spacing", "trailing"], ["--sampler", "ddpm"]):
        code, _, err = _cli(["sample", run, "--n", "64", "--out", str(tmp_path / "x.npy"), "--no-progress", *extra], capsys)
        assert code == 0, err
        assert np.isfinite(np.load(tmp_path / "x.npy")).all()
    code, _, err = _cli(["sample", run, "--n", "4", "--steps", "5", "--out", str(tmp_path / "y.npy"), "--no-progress"], capsys)
    assert code == 2 and "sampler 'ddpm' does not take steps (it takes variance)" in err


def test_grading_limits_check_themselves(tmp_path, capsys):
    from ddpmkit.grading.sandbox import Limits

    with pytest.raises(ValueError, match="question_timeout must be > 0"):
        Limits(question_timeout=0)
    code, _, err = _cli(["grade", "a1", str(tmp_path / "x.ipynb"), "--out", str(tmp_path / "g.csv"), "--timeout", "-5"], capsys)
    assert code == 2 and "the sandbox limit timeout must be > 0, got -5.0 (--timeout)" in err
    assert not (tmp_path / "g.csv").exists()


def test_sample_labels_come_from_the_data_set(tmp_path, capsys):
    out = str(tmp_path / "s.png")
    code, _, err = _cli(["sample", "shapes-cfg", "--label", "purple hexagon", "--n", "1", "--out", out, "--no-progress"], capsys)
    assert code == 2 and "unknown label 'purple hexagon' of shapes; choose from red square, red circle" in err
    code, _, err = _cli(["sample", "shapes-cfg", "--n", "1", "--out", out, "--no-progress"], capsys)
    assert code == 2 and "this model is multi-label: pass --label 'red square,blue triangle'" in err
