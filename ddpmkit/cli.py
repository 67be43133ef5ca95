"""The ``ddpmkit`` command line: train, sample, draw data, evaluate.

Run ``ddpmkit --help`` or ``ddpmkit COMMAND --help`` for options and examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

EXAMPLES = """examples:
  ddpmkit train --dataset swiss_roll --out runs/swiss      # KAIST A1 set-up, ~25 s on 2 CPU cores
  ddpmkit sample runs/swiss --n 2048 --seed 0 --out samples.npy
  ddpmkit data swiss_roll --n 2048 --seed 1 --out real.npy
  ddpmkit evaluate samples.npy --dataset swiss_roll         # EMD, Chamfer, KDE NLL as JSON
  ddpmkit sample runs/swiss --sampler ddim --steps 50 --out fast.npy
  ddpmkit sample runs/swiss --sampler deterministic --prior prior.npy --out reproduced.npy
  ddpmkit train --dataset path/to/images --image-size 64 --out runs/mine   # a folder of images; class subfolders are labels
  ddpmkit fid samples.npy --dataset shapes                  # image FID with its counts and a real-vs-real baseline
"""


def _interval(s: str) -> tuple[int, int] | None:
    """``--guidance-interval``: ``LO:HI`` or ``all`` (:func:`ddpmkit.guidance.parse_interval`)."""
    from .guidance import parse_interval

    try:
        return parse_interval(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer (> 0), got {v}")
    return v


def _dataset(s: str) -> str:
    from .data import vector_datasets

    if s not in vector_datasets():
        raise argparse.ArgumentTypeError(f"unknown vector dataset {s!r}; choose one of {', '.join(vector_datasets())}")
    return s


def _train_dataset(s: str) -> str:
    from .data import DATASETS, unknown_dataset

    if s not in DATASETS and not Path(s).expanduser().is_dir():
        raise argparse.ArgumentTypeError(unknown_dataset(s))
    return s


def _default(section: str, name: str):
    """The default of a run-config field, read from its dataclass (never restated here)."""
    from .models import MLPConfig
    from .schedules import ScheduleConfig
    from .train import TrainConfig

    cls = {"train": TrainConfig, "schedule": ScheduleConfig, "model": MLPConfig}[section]
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpmkit", description="Train, sample and evaluate DDPMs (the DDPM course companion).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    from . import __version__

    p.add_argument("--version", action="version", version=f"ddpmkit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_sample, _add_data_commands, _add_grading):
        add(sub)
    return p


def _add_train(sub) -> None:
    """``ddpmkit train``: one flag per overridable config field, defaults read from the configs."""
    from .data import CONDITIONINGS, DATASETS, FolderConfig
    from .diffusion import PREDICTORS
    from .models import ModelKind
    from .recipes import CLASSIFIER_RECIPES, FOLDER_RECIPES, RECIPES
    from .schedules import SCHEDULES

    t = sub.add_parser("train", help="train a DDPM on a data set (vector or image)", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A run starts from the data set's config (or a --recipe, or the saved run with --resume); "
                                   "every flag given overrides that config, and a flag the run cannot honour is refused.")
    t.add_argument("--dataset", type=_train_dataset, default=None,
                   help=f"one of {', '.join(DATASETS)} (default swiss_roll, or the recipe's); or a folder of images "
                        "(class subfolders become labels; any size, resized and centre-cropped to --image-size)")
    t.add_argument("--image-size", type=_positive_int, default=None,
                   help=f"a folder of images: side of the square training images (default {FolderConfig.__dataclass_fields__['image_size'].default}, "
                        "or the recipe's)")
    t.add_argument("--recipe", default=None, choices=(*RECIPES, *FOLDER_RECIPES, *CLASSIFIER_RECIPES),
                   help=f"a named recipe: its whole config, then the flags given ({', '.join(FOLDER_RECIPES)} with --dataset FOLDER)")
    labelled = ", ".join(n for n, sp in DATASETS.items() if sp.kind == "vector" and sp.num_classes)
    image_defaults = ", ".join(f"{sp.default_cond} for {n}" for n, sp in DATASETS.items() if sp.kind == "image")
    t.add_argument("--cond", choices=CONDITIONINGS, default=None,
                   help=f"conditioning (default: {image_defaults}, none for vector sets; class works for {labelled} too)")
    t.add_argument("--out", required=True, type=Path, help="run folder to create (config.json, checkpoint.pt)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped (only --iterations/--device may change; "
                   "on another kind of device, CPU or CUDA, the random draws restart from a seed, with a warning)")
    t.add_argument("--download", action="store_true", help="mnist: let torchvision download the data set into $DDPMKIT_DATA (needs internet)")
    t.add_argument("--iterations", type=_positive_int, default=None, help=f"optimizer steps (default {_default('train', 'iterations')})")
    t.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {_default('train', 'batch_size')}")
    t.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {_default('train', 'lr')})")
    t.add_argument("--weight-decay", type=float, default=None, help=f"AdamW weight decay (default {_default('train', 'weight_decay')})")
    t.add_argument("--warmup", type=int, default=None, help=f"linear warm-up steps (default {_default('train', 'warmup')})")
    t.add_argument("--grad-clip", type=float, default=None, help=f"max gradient norm, 0 to disable (default {_default('train', 'grad_clip')})")
    t.add_argument("--ema-decay", type=float, default=None, help=f"0 to disable EMA (default {_default('train', 'ema_decay')})")
    t.add_argument("--predictor", choices=PREDICTORS, default=None, help=f"what the network predicts (default {_default('train', 'predictor')})")
    t.add_argument("--model", choices=get_args(ModelKind), default=None, help=f"vector sets: the MLP (default {_default('model', 'kind')})")
    widths = " ".join(map(str, _default("model", "hidden")))
    t.add_argument("--hidden", type=_positive_int, nargs="+", default=None, help=f"vector sets: MLP widths (default {widths})")
    t.add_argument("--schedule", choices=[n for n, sp in SCHEDULES.items() if "betas" not in sp.params], default=None,
                   help=f"β schedule (default {_default('schedule', 'name')})")
    t.add_argument("--T", type=_positive_int, default=None, help=f"diffusion steps (default {_default('schedule', 'T')})")
    t.add_argument("--beta-1", type=float, default=None, help=f"first β (default {_default('schedule', 'beta_1')})")
    t.add_argument("--beta-T", type=float, default=None, help=f"last β (default {_default('schedule', 'beta_T')})")
    t.add_argument("--label-dropout", type=float, default=None,
                   help=f"conditional runs: P(label -> null token), for guidance (default {_default('train', 'label_dropout')})")
    t.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help=f"bf16: forward pass and loss under bfloat16 autocast, for GPUs (default {_default('train', 'precision')})")
    t.add_argument("--n-train", type=_positive_int, default=None,
                   help=f"size of the fixed training draw; not for mnist/digits8x8, which use the whole set (default {_default('train', 'n_train')})")
    t.add_argument("--seed", type=int, default=None, help=f"default {_default('train', 'seed')}")
    t.add_argument("--device", default=None, help=f"cpu, cuda, cuda:N or auto (default {_default('train', 'device')})")
    t.add_argument("--no-progress", action="store_true")


def _add_sample(sub) -> None:
    """``ddpmkit sample``: one flag per option of any registered sampler."""
    from .samplers import SAMPLERS, sampler_options

    s = sub.add_parser("sample", help="sample from a trained run", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run", type=Path, help="run folder written by ddpmkit train, or a shipped checkpoint name (e.g. mnist-cfg)")
    s.add_argument("--label", default=None,
                   help="image models: a class index (e.g. 7), or comma-separated shape labels ('red square,blue circle'); "
                        "default: all classes in turn")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w, eps = (1+w) eps_c - w eps_u (default: the checkpoint's chosen w, else 0)")
    s.add_argument("--guidance-interval", type=_interval, default=False, metavar="LO:HI",
                   help="guide only the timesteps LO <= t <= HI, plain conditional elsewhere (Kynkaanniemi et al. 2024); "
                        "'all' guides every step (default: the checkpoint's chosen interval, else all)")
    s.add_argument("--n", type=_positive_int, default=2048, help="number of samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help=".npy file for the (n, dim) or (n, C, H, W) samples; .png writes an image grid")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddpm", help="; ".join(f"{k}: {v.description}" for k, v in SAMPLERS.items()))
    for name, (tp, users) in sampler_options().items():  # one flag per sampler option, typed by its annotation
        defaults = "; ".join(f"{u}: {SAMPLERS[u].options[name]}" for u in users)
        kind = {"choices": get_args(tp)} if get_origin(tp) is Literal else {"type": tp}
        s.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"{', '.join(users)} (default {defaults})", **kind)
    s.add_argument("--prior", type=Path, default=None, help=".npy prior noise x_T of shape (n, dim) (overrides --n)")
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")


def _add_data_commands(sub) -> None:
    """``ddpmkit export``, ``data``, ``fid`` and ``evaluate``."""
    from .data import vector_datasets

    x = sub.add_parser("export", help="ship a run's EMA weights as ddpmkit/checkpoints/NAME.safetensors + NAME.json")
    x.add_argument("run", type=Path, help="run folder written by ddpmkit train")
    x.add_argument("--name", required=True, help="checkpoint name, e.g. mnist-cfg")
    x.add_argument("--guidance", type=float, default=None, help="the guidance weight w that sampling uses by default")
    x.add_argument("--guidance-interval", type=_interval, default=None, metavar="LO:HI",
                   help="the timesteps that sampling guides by default (with --guidance; default: every step)")
    x.add_argument("--note", action="append", default=[], help="KEY=VALUE facts to record (e.g. measured accuracy); repeatable")

    d = sub.add_parser("data", help="draw points from a data set")
    d.add_argument("dataset", type=_dataset, help=f"a vector set: {', '.join(vector_datasets())}")
    d.add_argument("--n", type=_positive_int, default=2048)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--out", type=Path, required=True)

    f = sub.add_parser("fid", help="FID of image samples with its real-vs-real baseline and counts, as JSON",
                       description="The FID protocol (ddpmkit.fid): classifier features offline by default, Inception features when "
                                   "their weights are on disk; the counts and a real-vs-real baseline beside every FID.")
    f.add_argument("samples", type=Path, help=".npy of shape (n, C, S, S) in [0, 1] (as ddpmkit sample writes it), or a folder of images")
    f.add_argument("--dataset", type=_train_dataset, required=True, help="the real images: mnist, shapes, digits8x8, or a folder of images")
    f.add_argument("--image-size", type=_positive_int, default=None, help="a folder of real images: the side they are resized and cropped to "
                                                                          "(default: the samples')")
    f.add_argument("--features", choices=("classifier", "inception"), default="classifier",
                   help="classifier (default, offline): an evaluator's penultimate layer; inception: Inception-v3, weights on disk")
    f.add_argument("--classifier", default=None,
                   help="the evaluator: a shipped name or a .safetensors written by ddpmkit train --recipe folder-evaluator "
                        "(default: mnist-classifier for mnist, shapes-evaluator for shapes)")
    f.add_argument("--inception-weights", type=Path, default=None, help="the Inception weights file (default: see ddpmkit.fid.inception_weights)")
    f.add_argument("--n-real", type=_positive_int, default=None, help="at most this many reference images (default: all)")
    f.add_argument("--seed", type=int, default=0, help="the shuffle that splits the real images into baseline and reference")

    e = sub.add_parser("evaluate", help="EMD, Chamfer and KDE NLL of samples against a data set, as JSON")
    e.add_argument("samples", type=Path, help=".npy array of shape (n, dim)")
    e.add_argument("--dataset", type=_dataset, required=True)
    e.add_argument("--reference", type=Path, default=None, help=".npy reference points (default: a fresh draw)")
    e.add_argument("--n-ref", type=_positive_int, default=2048, help="size of the fresh reference draw")
    e.add_argument("--seed", type=int, default=1, help="seed of the reference draw (training uses 0)")
    e.add_argument("--bandwidth", type=float, default=0.1, help="KDE bandwidth for the NLL")


def _add_grading(sub) -> None:
    """``ddpmkit grade`` and ``assign``."""
    g = sub.add_parser("grade", help="grade notebooks in sandboxes: per-question points, feedback JSON, CSV gradebook",
                       epilog="examples: ddpmkit grade a1 submissions/*.ipynb --out grades.csv -j 2\n"
                              "  a job array: ddpmkit grade a1 submissions/*.ipynb --shard $K/8 --out grades-$K.csv\n"
                              "  then:        ddpmkit grade merge grades-*.csv --out grades.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("assignment", help="a1 ... a5 (or a source name such as a1_forward), or merge: combine slices' gradebooks")
    g.add_argument("submissions", nargs="+", type=Path,
                   help="notebooks: NAME.ipynb, or NAME/<assignment>.ipynb (with merge: the slices' gradebooks)")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="grade only slice K of N of the students (by a hash of each student's name, the same on every machine)")
    g.add_argument("--out", type=Path, required=True, help="the CSV gradebook (written atomically after each submission)")
    g.add_argument("--feedback", type=Path, default=None, help="folder of per-student JSON feedback (default: <out>-feedback/)")
    g.add_argument("-j", "--jobs", type=_positive_int, default=1, help="submissions graded at once")
    g.add_argument("--resume", action="store_true", help="skip students whose row in --out has the same submission checksum")
    g.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto", help="auto: bubblewrap when installed")
    g.add_argument("--timeout", type=float, default=None, help="wall-clock seconds for one whole submission (default: Limits.timeout)")
    g.add_argument("--question-timeout", type=float, default=None, help="wall-clock seconds for one question (default: Limits.question_timeout)")
    g.add_argument("--memory-gb", type=float, default=None, help="address-space limit per run; torch needs about 3.5 GB (default: Limits.memory_gb)")
    g.add_argument("--format", action="append", choices=["gradescope", "canvas"], default=[],
                   help="also write Gradescope results.json files (<feedback>/gradescope/<student>/results.json) "
                        "and/or a Canvas gradebook CSV (<out>-canvas.csv); repeatable")
    g.add_argument("--seed", type=int, default=None, help="fix the hidden inputs (default: new ones per submission)")
    g.add_argument("--no-progress", action="store_true")

    n = sub.add_parser("assign", help="generate the student notebooks assignments/*.ipynb from assignments/source/*.md")
    n.add_argument("--check", action="store_true", help="only report stale notebooks (exit 1 if any)")


def _merge(a) -> int:
    from .grading.grader import merge_gradebooks

    given = [f for f, v in (("--shard", a.shard), ("--resume", a.resume), ("--seed", a.seed), ("--feedback", a.feedback),
                            ("--timeout", a.timeout), ("--question-timeout", a.question_timeout), ("--memory-gb", a.memory_gb),
                            ("--jobs", a.jobs != 1), ("--sandbox", a.sandbox != "auto"),
                            ("--format gradescope", "gradescope" in a.format)) if v]
    if given:
        raise ValueError(f"grade merge combines gradebooks and grades nothing: drop {', '.join(given)} "
                         "(it takes the gradebooks, --out and --format canvas)")
    rows = merge_gradebooks(a.submissions, a.out, exports=tuple(a.format))
    print(f"merged {len(a.submissions)} gradebook(s) into {a.out}: {len(rows)} student(s)")
    return 0


def _grade(a) -> int:
    from .grading.grader import grade_batch, parse_shard
    from .grading.sandbox import Limits

    if a.assignment == "merge":
        return _merge(a)
    shard = parse_shard(a.shard) if a.shard is not None else None

    given = {"timeout": a.timeout, "question_timeout": a.question_timeout, "memory_gb": a.memory_gb}
    limits = dataclasses.replace(Limits(), **{k: v for k, v in given.items() if v is not None})
    rows = grade_batch(a.assignment, a.submissions, a.out, feedback_dir=a.feedback, jobs=a.jobs, resume=a.resume,
                       limits=limits, isolation=a.sandbox, seed=a.seed, progress=not a.no_progress, exports=tuple(a.format),
                       shard=shard)
    total = sum(int(r["points"]) for r in rows.values())
    odd = sum(str(r["status"]).startswith(("refused", "unreadable", "grader error")) for r in rows.values())
    where = f" (slice {shard[0]}/{shard[1]})" if shard else ""
    print(f"graded {len(rows)} submission(s){where} into {a.out}; mean {total / max(len(rows), 1):.2f} points"
          + (f"; {odd} could not be graded (see their status)" if odd else ""))
    return 0


def _assign(a) -> int:
    from .grading.notebooks import build_all

    stale = build_all(check=a.check)
    if a.check:
        print("stale: " + ", ".join(stale) if stale else "every student notebook is up to date")
        return 1 if stale else 0
    print("wrote " + ", ".join(stale) if stale else "every student notebook is up to date")
    return 0


def _train(a) -> int:
    from .common import CHECKPOINT_FILE
    from .recipes import CLASSIFIER_RECIPES, FOLDER_RECIPES, for_dataset, get_recipe
    from .train import OVERRIDES, Trainer, apply_overrides, flag

    overrides = {k: getattr(a, k) for k in OVERRIDES if getattr(a, k) is not None}
    if a.recipe in CLASSIFIER_RECIPES:
        return _train_classifier(a, overrides)
    if a.resume:
        given = [f for f, v in (("--recipe", a.recipe), ("--dataset", a.dataset), ("--cond", a.cond), ("--image-size", a.image_size))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} cannot change a resumed run; drop them (the run keeps its saved config)")
        tr = Trainer.resume(a.out, download=a.download, **overrides)  # refuses any override a resumed run cannot take
        cfg = tr.config
    elif (a.out / CHECKPOINT_FILE).exists():
        raise ValueError(f"{a.out} already holds a run; pass --resume to continue it or choose another --out")
    elif a.recipe in FOLDER_RECIPES:
        if a.dataset is None:
            raise ValueError(f"the {a.recipe} recipe trains on a folder of images: pass --dataset PATH/TO/FOLDER")
        size = {} if a.image_size is None else {"image_size": a.image_size}
        cfg = apply_overrides(FOLDER_RECIPES[a.recipe](a.dataset, a.cond, **size), overrides)
    elif a.recipe:
        if a.image_size is not None:
            raise ValueError(f"--image-size resizes a folder of images; the {a.recipe} recipe trains on a registered set: drop --image-size")
        cfg = get_recipe(a.recipe)
        for name, value, have in (("--dataset", a.dataset, cfg.dataset), ("--cond", a.cond, cfg.cond)):
            if value is not None and value != have:
                raise ValueError(f"the {a.recipe} recipe trains on {cfg.dataset} with cond={cfg.cond}; {name} {value} would change "
                                 f"what the recipe is. Drop {name}, or start from the data set (--dataset without --recipe)")
        cfg = apply_overrides(cfg, overrides)
    else:
        cfg = apply_overrides(for_dataset(a.dataset or "swiss_roll", a.cond, a.image_size), overrides)
    if a.download and cfg.dataset != "mnist":
        raise ValueError(f"{flag('download')} only fetches MNIST; {cfg.dataset} needs no download")
    if not a.resume:
        tr = Trainer(cfg, a.out, download=a.download)
    tr.train(progress=not a.no_progress)
    last = tr.losses[-100:]
    if tr.world.main:
        print(json.dumps({"run": str(a.out), "step": tr.step, "final_loss": float(sum(last) / max(1, len(last))),
                          "wall_time_s": round(tr.wall_time, 2), "world_size": tr.world.size}))
    return 0


def _train_classifier(a, overrides: dict) -> int:
    """The evaluator recipes (mnist-classifier, shapes-evaluator): train, report held-out
    accuracy, save ``OUT/NAME.safetensors`` + ``OUT/NAME.json``. Their config is a
    ``ClassifierConfig``; of the run flags only ``--seed`` applies."""
    from .pretrained import export_evaluator
    from .train import flag

    folder = a.recipe == "folder-evaluator"
    refused = [flag(k) for k in overrides if k != "seed"]
    refused += [f for f, v in (("--cond", a.cond), ("--resume", a.resume)) if v]
    refused += [f for f, v in (("--dataset", a.dataset), ("--image-size", a.image_size)) if v and not folder]
    if refused:
        takes = "--dataset, --image-size and --seed" if folder else "only --seed and --download"
        raise ValueError(f"the evaluator recipe {a.recipe} takes {takes} (its config is a ClassifierConfig); drop {', '.join(refused)}")
    path, meta = export_evaluator(a.recipe, a.out, seed=overrides.get("seed", 0), download=a.download, progress=not a.no_progress,
                                  dataset=a.dataset, image_size=a.image_size)
    print(json.dumps({"written": str(path), "held_out": meta["held_out"]}))
    return 0


def _export(a) -> int:
    from .common import CONFIG_FILE
    from .pretrained import export_run

    extra: dict = {}
    if a.guidance is not None:
        extra["guidance_w"] = a.guidance
    if a.guidance_interval is not None:
        if a.guidance is None:
            raise ValueError("--guidance-interval needs --guidance, the weight to apply inside the interval")
        config = a.run / CONFIG_FILE
        T = json.loads(config.read_text())["schedule"]["T"] if config.is_file() else None  # a missing run: export_run says so
        if T is not None and a.guidance_interval[1] >= T:
            raise ValueError(f"--guidance-interval {a.guidance_interval[0]}:{a.guidance_interval[1]} reaches past the run's last timestep, "
                             f"{T - 1}; use HI <= {T - 1}")  # fmt: skip
        extra["guidance_interval"] = list(a.guidance_interval)
    for kv in a.note:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--note must look like KEY=VALUE, got {kv!r}")
        extra.setdefault("notes", {})[k] = v
    path = export_run(a.run, a.name, extra)
    print(f"wrote {path} and {path.with_suffix('.json')} ({path.stat().st_size / 2**20:.2f} MB)")
    return 0


def _load_for_sampling(a):
    """(model, schedule, RunConfig, info) from a run folder or a shipped checkpoint name."""
    from .pretrained import available, load_pretrained
    from .train import RunConfig, load_run

    if a.run.is_dir():
        model, sched, cfg = load_run(a.run, device=a.device, ema=not a.raw)
        return model, sched, cfg, {}
    if str(a.run) in available():
        model, sched, info = load_pretrained(str(a.run), device=a.device)
        return model, sched, RunConfig.from_dict(info["config"]), info
    raise FileNotFoundError(
        f"run directory {a.run} does not exist, and no shipped checkpoint is named {str(a.run)!r} "
        f"(shipped: {', '.join(available()) or 'none'}); create a run with: ddpmkit train --out {a.run}"
    )


def _labels(a, cfg, n: int):
    import torch


    if cfg.cond == "class":
        if a.label is None:
            return torch.arange(n) % cfg.model.num_classes
        names = cfg.folder.class_names if cfg.folder else ()
        try:
            y = names.index(a.label) if a.label in names else int(a.label)
        except ValueError:
            named = f" or one of its classes ({', '.join(names)})" if names else ""
            raise ValueError(f"--label must be a class index for this model{named}, got {a.label!r}") from None
        if not 0 <= y < cfg.model.num_classes:
            raise ValueError(f"--label must lie in [0, {cfg.model.num_classes - 1}], got {y}")
        return torch.full((n,), y, dtype=torch.long)
    if cfg.cond == "multi":
        known = cfg.spec.label_names
        hot = torch.zeros(n, len(known))
        names = [x.strip() for x in (a.label or "").split(",") if x.strip()]
        for name in names:
            if name not in known:
                raise ValueError(f"unknown label {name!r} of {cfg.dataset}; choose from {', '.join(known)}")
            hot[:, known.index(name)] = 1.0
        if not names:
            raise ValueError(f"this model is multi-label: pass --label '{known[0]},{known[-1]}' (labels: {', '.join(known)})")
        return hot
    if a.label is not None:
        raise ValueError("this model is unconditional; drop --label")
    return None


def _sample(a) -> int:
    import numpy as np
    import torch

    from .checkpoint import save_npy
    from .guidance import CFGModel
    from .pretrained import default_guidance
    from .samplers import sample, sampler_options

    model, sched, cfg, info = _load_for_sampling(a)
    spec = cfg.spec
    image = spec.kind == "image"
    shape = (a.n, *spec.shape)
    clip = (-1.0, 1.0) if image else None  # images live in [-1, 1]
    x_T = None
    if a.prior is not None:
        if not a.prior.is_file():
            raise FileNotFoundError(f"prior noise file {a.prior} does not exist")
        x_T = np.load(a.prior)
        if x_T.shape[1:] != shape[1:]:
            raise ValueError(f"--prior must have shape (n, {', '.join(map(str, shape[1:]))}), got {x_T.shape}")
    y = _labels(a, cfg, a.n if x_T is None else len(x_T))
    if y is not None:
        guidance = default_guidance(info)  # the checkpoint's chosen w and interval, else w = 0 on every step
        if a.guidance is not None:
            guidance["w"] = a.guidance
        if a.guidance_interval is not False:  # given: LO:HI, or None for 'all'
            guidance["interval"] = a.guidance_interval
        if guidance["interval"] is not None and guidance["interval"][1] >= sched.T:
            raise ValueError(f"--guidance-interval {guidance['interval'][0]}:{guidance['interval'][1]} reaches past this model's "
                             f"last timestep, {sched.T - 1}; use HI <= {sched.T - 1}")  # fmt: skip
        model = CFGModel(model, y, **guidance)
    elif a.guidance is not None or a.guidance_interval is not False:
        flag = "--guidance" if a.guidance is not None else "--guidance-interval"
        raise ValueError(f"{flag} needs a conditional model (trained with --cond class or multi)")
    gen = torch.Generator().manual_seed(a.seed)
    options = {k: getattr(a, k) for k in sampler_options() if getattr(a, k) is not None}
    out = sample(a.sampler, model, sched, shape, x_T=x_T, predictor=cfg.train.predictor, generator=gen,
                 progress=not a.no_progress, clip_x0=clip, **options)  # refuses an option the sampler does not take
    x = out.x.cpu()
    if image:
        x = ((x.clamp(-1, 1) + 1) / 2)  # pixel values in [0, 1]
    if str(a.out).endswith(".png"):
        if not image:
            raise ValueError("a .png grid needs an image model; use .npy for vector samples")
        import math

        import torchvision

        a.out.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(x, str(a.out), nrow=math.ceil(math.sqrt(len(x))), padding=2)
    else:
        save_npy(x.numpy().astype(np.float32), a.out)
    print(f"wrote {tuple(x.shape)} samples to {a.out}")
    return 0


def _data(a) -> int:
    from .checkpoint import save_npy
    from .data import load_dataset

    save_npy(load_dataset(a.dataset, a.n, a.seed), a.out)
    print(f"wrote {a.n} points of {a.dataset} (seed {a.seed}) to {a.out}")
    return 0


def _evaluate(a) -> int:
    import numpy as np

    from .data import dataset_spec, load_dataset
    from .metrics import evaluate_samples

    if not a.samples.is_file():
        raise FileNotFoundError(f"samples file {a.samples} does not exist")
    x = np.load(a.samples)
    ref = np.load(a.reference) if a.reference else load_dataset(a.dataset, a.n_ref, a.seed)
    dim = dataset_spec(a.dataset).shape[0]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"samples must have shape (n, {dim}) for {a.dataset}, got {x.shape}")
    res = {"dataset": a.dataset, **evaluate_samples(x, ref, bandwidth=a.bandwidth)}
    print(json.dumps(res, indent=2))
    return 0


def _fid_real(a, side: int, n_samples: int):
    """The real images for ``ddpmkit fid``: (N, C, S, S) in [-1, 1], and what they are."""
    from . import images
    from .data import DATASETS, folder_config, load_image_folder

    if a.dataset in DATASETS:
        if a.image_size is not None:
            raise ValueError(f"--image-size resizes a folder of real images; {a.dataset} has a fixed size: drop it")
        n_shapes = max(2000, (a.n_real or 0) + n_samples)  # enough for the reference and a baseline as large as the samples
        loaders = {"mnist": lambda: images.load_mnist("eval", warn=False), "digits8x8": images.load_digits8x8,
                   "shapes": lambda: images.make_shapes(n_shapes, seed=20_000)}  # a seed neither training nor the evaluator used
        if a.dataset not in loaders:
            raise ValueError(f"{a.dataset} is a vector set: score its samples with ddpmkit evaluate")
        d = loaders[a.dataset]()
        return d.images, d.source
    d = load_image_folder(*folder_config(a.dataset, a.image_size or side))
    return d.images, d.source


def _fid_samples(a):
    """The samples for ``ddpmkit fid``, in [-1, 1]."""
    import numpy as np
    import torch

    from .data import folder_config, load_image_folder

    if a.samples.is_dir():
        from PIL import Image

        from .data import scan_image_folder

        with Image.open(scan_image_folder(a.samples).files[0]) as first:
            side = a.image_size or min(first.size)  # the samples' own size unless --image-size says otherwise
        path, folder = folder_config(a.samples, side)
        return load_image_folder(path, folder).images
    if not a.samples.is_file():
        raise FileNotFoundError(f"samples {a.samples} do not exist (a .npy file from ddpmkit sample, or a folder of images)")
    x = torch.from_numpy(np.load(a.samples).astype(np.float32))
    if x.ndim != 4:
        raise ValueError(f"samples must be images of shape (n, C, S, S), got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"samples must be pixel values in [0, 1], as ddpmkit sample writes them; these range over "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x * 2 - 1


def _fid(a) -> int:
    from .data import DATASETS
    from .fid import SHIPPED_EVALUATORS, fid_with_baseline

    fake = _fid_samples(a)
    real, source = _fid_real(a, fake.shape[-1], len(fake))
    clf, name = None, None
    if a.features == "classifier":
        name = a.classifier or SHIPPED_EVALUATORS.get(a.dataset)
        if name is None and a.dataset in DATASETS:
            raise ValueError(f"no evaluator ships for {a.dataset}: pass --classifier FILE.safetensors (an evaluator for "
                             f"{'×'.join(map(str, real.shape[1:]))} images), or use --features inception with its weights on disk")
        if name is None:
            raise ValueError(f"the classifier FID of {a.dataset} needs an evaluator: train one with ddpmkit train --recipe folder-evaluator "
                             f"--dataset {a.dataset} --image-size {real.shape[-1]} --out DIR and pass --classifier DIR/folder-evaluator.safetensors "
                             "(or use --features inception with its weights on disk)")
        clf = _load_evaluator(name)
    elif a.classifier is not None:
        raise ValueError("--classifier chooses the classifier FID's features; drop it, or use --features classifier")
    if a.inception_weights is not None and a.features != "inception":
        raise ValueError("--inception-weights is for --features inception; drop it")
    res = fid_with_baseline(fake, real, features=a.features, classifier=clf, weights=a.inception_weights, n_reference=a.n_real, seed=a.seed)
    print(json.dumps({"dataset": a.dataset, "real": source, "evaluator": name, **res.to_dict()}, indent=2))
    return 0


def _load_evaluator(name: str):
    """An evaluator classifier: a shipped name, or a ``.safetensors`` with its ``.json`` beside it."""
    from .pretrained import available, load_pretrained

    if name in available():
        clf, _, info = load_pretrained(name)
    else:
        path = Path(name)
        if path.suffix != ".safetensors" or not path.is_file() or not path.with_suffix(".json").is_file():
            raise FileNotFoundError(f"--classifier {name}: not a shipped evaluator ({', '.join(available())}) and not a .safetensors file "
                                    "with its .json beside it (ddpmkit train --recipe folder-evaluator --out DIR writes both)")
        clf, _, info = load_pretrained(path.stem, directory=path.parent)
    if info["kind"] != "classifier":
        raise ValueError(f"--classifier {name} is a {info['kind']} model, not an evaluator classifier")
    return clf


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .train import NonFiniteLossError

    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return {"train": _train, "sample": _sample, "data": _data, "evaluate": _evaluate, "fid": _fid, "export": _export,
                "grade": _grade, "assign": _assign}[a.command](a)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError, RuntimeError) as e:
        print(f"ddpmkit {a.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        from .distributed import teardown

        teardown()  # leave torchrun's process group, when a trainer joined one


if __name__ == "__main__":
    sys.exit(main())
