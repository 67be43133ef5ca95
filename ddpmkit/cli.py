"""The ``ddpmkit`` command line: train, sample, draw data, evaluate.

Run ``ddpmkit --help`` or ``ddpmkit COMMAND --help`` for options and examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  ddpmkit train --dataset swiss_roll --out runs/swiss      # KAIST A1 set-up, ~25 s on 2 CPU cores
  ddpmkit sample runs/swiss --n 2048 --seed 0 --out samples.npy
  ddpmkit data swiss_roll --n 2048 --seed 1 --out real.npy
  ddpmkit evaluate samples.npy --dataset swiss_roll         # EMD, Chamfer, KDE NLL as JSON
  ddpmkit sample runs/swiss --sampler ddim --steps 50 --out fast.npy
  ddpmkit sample runs/swiss --sampler deterministic --prior prior.npy --out reproduced.npy
"""


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer (> 0), got {v}")
    return v


def _dataset(s: str) -> str:
    from .data import DATASETS

    if s not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {s!r}; choose one of {', '.join(DATASETS)}")
    return s


def _train_dataset(s: str) -> str:
    from .data import DATASETS
    from .train import IMAGE_DATASETS

    if s not in DATASETS + IMAGE_DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {s!r}; choose one of {', '.join(DATASETS + IMAGE_DATASETS)}")
    return s


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .diffusion import PREDICTORS
    from .schedules import SCHEDULES

    p = argparse.ArgumentParser(
        prog="ddpmkit", description="Train, sample and evaluate DDPMs (the DDPM course companion).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a DDPM on a vector data set", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--dataset", type=_train_dataset, default="swiss_roll",
                   help=f"one of {', '.join(DATASETS)}, mnist, digits8x8, shapes (default swiss_roll)")
    t.add_argument("--recipe", default=None,
                   help="a named recipe (mnist-cfg, shapes-cfg, swiss-roll, mnist-classifier, shapes-evaluator): "
                        "its whole config; --iterations/--seed/--device still apply")
    t.add_argument("--cond", choices=("none", "class", "multi"), default=None,
                   help="conditioning (default: class for mnist/digits8x8, multi for shapes, none for vector sets; "
                        "class works for moons, circles, eight_gaussians, digits64)")
    t.add_argument("--out", required=True, type=Path, help="run folder to create (config.json, checkpoint.pt)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--download", action="store_true", help="mnist: let torchvision download the data set into $DDPMKIT_DATA (needs internet)")
    t.add_argument("--iterations", type=_positive_int, default=None, help="optimizer steps (default 5000)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 to disable")
    t.add_argument("--ema-decay", type=float, default=0.995, help="0 to disable EMA")
    t.add_argument("--predictor", choices=PREDICTORS, default="eps")
    t.add_argument("--model", choices=("timelinear", "concat"), default="timelinear")
    t.add_argument("--hidden", type=_positive_int, nargs="+", default=[128, 128, 128])
    t.add_argument("--schedule", choices=[s for s in SCHEDULES if s != "custom"], default="linear")
    t.add_argument("--T", type=_positive_int, default=1000, help="diffusion steps")
    t.add_argument("--beta-1", type=float, default=1e-4)
    t.add_argument("--beta-T", type=float, default=0.02)
    t.add_argument("--label-dropout", type=float, default=0.1, help="conditional runs: P(label -> null token), for guidance")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="sample from a trained run", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run", type=Path, help="run folder written by ddpmkit train, or a shipped checkpoint name (e.g. mnist-cfg)")
    s.add_argument("--label", default=None,
                   help="image models: a class index (e.g. 7), or comma-separated shape labels ('red square,blue circle'); "
                        "default: all classes in turn")
    s.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance weight w, eps = (1+w) eps_c - w eps_u (default: the checkpoint's chosen w, else 0)")
    s.add_argument("--n", type=_positive_int, default=2048, help="number of samples")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True, help=".npy file for the (n, dim) or (n, C, H, W) samples; .png writes an image grid")
    s.add_argument("--sampler", choices=("ddpm", "deterministic", "ddim"), default="ddpm")
    s.add_argument("--variance", choices=("beta", "beta_tilde"), default="beta", help="σ² of ancestral DDPM")
    s.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM η")
    s.add_argument("--spacing", choices=("leading", "trailing", "linspace"), default="leading")
    s.add_argument("--prior", type=Path, default=None, help=".npy prior noise x_T of shape (n, dim) (overrides --n)")
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")

    x = sub.add_parser("export", help="ship a run's EMA weights as ddpmkit/checkpoints/NAME.safetensors + NAME.json")
    x.add_argument("run", type=Path, help="run folder written by ddpmkit train")
    x.add_argument("--name", required=True, help="checkpoint name, e.g. mnist-cfg")
    x.add_argument("--guidance", type=float, default=None, help="the guidance weight w that sampling uses by default")
    x.add_argument("--note", action="append", default=[], help="KEY=VALUE facts to record (e.g. measured accuracy); repeatable")

    d = sub.add_parser("data", help="draw points from a data set")
    d.add_argument("dataset", type=_dataset)
    d.add_argument("--n", type=_positive_int, default=2048)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--out", type=Path, required=True)

    e = sub.add_parser("evaluate", help="EMD, Chamfer and KDE NLL of samples against a data set, as JSON")
    e.add_argument("samples", type=Path, help=".npy array of shape (n, dim)")
    e.add_argument("--dataset", type=_dataset, required=True)
    e.add_argument("--reference", type=Path, default=None, help=".npy reference points (default: a fresh draw)")
    e.add_argument("--n-ref", type=_positive_int, default=2048, help="size of the fresh reference draw")
    e.add_argument("--seed", type=int, default=1, help="seed of the reference draw (training uses 0)")
    e.add_argument("--bandwidth", type=float, default=0.1, help="KDE bandwidth for the NLL")

    g = sub.add_parser("grade", help="grade notebooks in sandboxes: per-question points, feedback JSON, CSV gradebook",
                       epilog="example: ddpmkit grade a1 submissions/*.ipynb --out grades.csv -j 2")
    g.add_argument("assignment", help="a1, a2, a3 or a4 (or a source name such as a1_forward)")
    g.add_argument("submissions", nargs="+", type=Path, help="notebooks: NAME.ipynb, or NAME/<assignment>.ipynb")
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
    return p


def _grade(a) -> int:
    from .grading.grader import grade_batch
    from .grading.sandbox import Limits

    given = {"timeout": a.timeout, "question_timeout": a.question_timeout, "memory_gb": a.memory_gb}
    limits = dataclasses.replace(Limits(), **{k: v for k, v in given.items() if v is not None})
    rows = grade_batch(a.assignment, a.submissions, a.out, feedback_dir=a.feedback, jobs=a.jobs, resume=a.resume,
                       limits=limits, isolation=a.sandbox, seed=a.seed, progress=not a.no_progress, exports=tuple(a.format))
    total = sum(int(r["points"]) for r in rows.values())
    odd = sum(str(r["status"]).startswith(("refused", "unreadable", "grader error")) for r in rows.values())
    print(f"graded {len(rows)} submission(s) into {a.out}; mean {total / max(len(rows), 1):.2f} points"
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
    from .data import DIMS
    from .models import MLPConfig
    from .recipes import CLASSIFIER_RECIPES
    from .schedules import ScheduleConfig
    from .train import RunConfig, TrainConfig, Trainer

    if a.recipe in CLASSIFIER_RECIPES:
        return _train_classifier(a)
    if a.resume:
        tr = Trainer.resume(a.out, a.iterations, download=a.download)
    elif (a.out / "checkpoint.pt").exists():
        raise ValueError(f"{a.out} already holds a run; pass --resume to continue it or choose another --out")
    elif a.recipe or a.dataset not in DIMS:
        from .recipes import get_recipe

        cfg = get_recipe(a.recipe) if a.recipe else _image_config(a)
        if a.iterations:
            cfg.train.iterations = a.iterations
        cfg.train.seed, cfg.train.device = a.seed, a.device
        tr = Trainer(cfg, a.out, download=a.download)
    else:
        from .data import NUM_CLASSES

        if a.cond == "multi":
            raise ValueError("--cond multi needs the shapes set; vector data sets take --cond class or none")
        if a.cond == "class" and a.dataset not in NUM_CLASSES:
            raise ValueError(f"--cond class needs a labelled data set ({', '.join(NUM_CLASSES)}); {a.dataset} has no classes")
        n_cls = NUM_CLASSES[a.dataset] if a.cond == "class" else None
        cfg = RunConfig(
            dataset=a.dataset, cond=a.cond or "none",
            model=MLPConfig(kind=a.model, dim=DIMS[a.dataset], hidden=tuple(a.hidden), num_classes=n_cls),
            schedule=ScheduleConfig(name=a.schedule, T=a.T, beta_1=a.beta_1, beta_T=a.beta_T),
            train=TrainConfig(
                iterations=a.iterations or 5000, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                warmup=a.warmup, grad_clip=a.grad_clip, ema_decay=a.ema_decay, predictor=a.predictor,
                seed=a.seed, device=a.device, label_dropout=a.label_dropout,
            ),
        )  # fmt: skip
        tr = Trainer(cfg, a.out)
    tr.train(progress=not a.no_progress)
    last = tr.losses[-100:]
    print(json.dumps({"run": str(a.out), "step": tr.step, "final_loss": float(sum(last) / max(1, len(last))), "wall_time_s": round(tr.wall_time, 2)}))
    return 0


def _train_classifier(a) -> int:
    """The evaluator recipes (mnist-classifier, shapes-evaluator): train, report held-out
    accuracy, save ``OUT/NAME.safetensors`` + ``OUT/NAME.json``."""
    from .classifier import export_evaluator

    path, meta = export_evaluator(a.recipe, a.out, seed=a.seed, download=a.download, progress=not a.no_progress)
    print(json.dumps({"written": str(path), "held_out": meta["held_out"]}))
    return 0


def _export(a) -> int:
    from .pretrained import export_run

    extra: dict = {}
    if a.guidance is not None:
        extra["guidance_w"] = a.guidance
    for kv in a.note:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--note must look like KEY=VALUE, got {kv!r}")
        extra.setdefault("notes", {})[k] = v
    path = export_run(a.run, a.name, extra)
    print(f"wrote {path} and {path.with_suffix('.json')} ({path.stat().st_size / 2**20:.2f} MB)")
    return 0


def _image_config(a):
    """An image run from --dataset/--cond: the mnist-cfg recipe's network, resized to the data."""
    from .images import SHAPE_LABELS
    from .recipes import mnist_cfg

    cfg = mnist_cfg()
    cfg.dataset = a.dataset
    cfg.cond = a.cond or ("multi" if a.dataset == "shapes" else "class")
    m = cfg.model
    m.in_channels = 3 if a.dataset == "shapes" else 1
    m.num_classes = 10 if cfg.cond == "class" else None
    m.num_labels = len(SHAPE_LABELS) if cfg.cond == "multi" else None
    if a.dataset == "digits8x8":
        m.channel_mults, m.attn_levels = (1, 2), (1,)
    return cfg


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

    from .images import SHAPE_LABELS

    if cfg.cond == "class":
        if a.label is None:
            return torch.arange(n) % cfg.model.num_classes
        try:
            y = int(a.label)
        except ValueError:
            raise ValueError(f"--label must be a class index for this model, got {a.label!r}") from None
        if not 0 <= y < cfg.model.num_classes:
            raise ValueError(f"--label must lie in [0, {cfg.model.num_classes - 1}], got {y}")
        return torch.full((n,), y, dtype=torch.long)
    if cfg.cond == "multi":
        hot = torch.zeros(n, len(SHAPE_LABELS))
        names = [x.strip() for x in (a.label or "").split(",") if x.strip()]
        for name in names:
            if name not in SHAPE_LABELS:
                raise ValueError(f"unknown shape label {name!r}; choose from {', '.join(SHAPE_LABELS)}")
            hot[:, SHAPE_LABELS.index(name)] = 1.0
        if not names:
            raise ValueError("this model is multi-label: pass --label 'red square,blue circle'")
        return hot
    if a.label is not None:
        raise ValueError("this model is unconditional; drop --label")
    return None


def _sample(a) -> int:
    import numpy as np
    import torch

    from .checkpoint import save_npy
    from .guidance import CFGModel
    from .samplers import ddim_sample, ddpm_sample
    from .train import IMAGE_SIZES
    from .unet import UNetConfig

    model, sched, cfg, info = _load_for_sampling(a)
    image = isinstance(cfg.model, UNetConfig)
    if image:
        side = IMAGE_SIZES[cfg.dataset]
        shape: tuple[int, ...] = (a.n, cfg.model.in_channels, side, side)
        clip = (-1.0, 1.0)
    else:
        shape, clip = (a.n, cfg.model.dim), None
    x_T = None
    if a.prior is not None:
        if not a.prior.is_file():
            raise FileNotFoundError(f"prior noise file {a.prior} does not exist")
        x_T = np.load(a.prior)
        if x_T.shape[1:] != shape[1:]:
            raise ValueError(f"--prior must have shape (n, {', '.join(map(str, shape[1:]))}), got {x_T.shape}")
    y = _labels(a, cfg, a.n if x_T is None else len(x_T))
    if y is not None:
        model = CFGModel(model, y, a.guidance if a.guidance is not None else float(info.get("guidance_w", 0.0)))
    elif a.guidance is not None:
        raise ValueError("--guidance needs a conditional model (trained with --cond class or multi)")
    gen = torch.Generator().manual_seed(a.seed)
    common = {"x_T": x_T, "predictor": cfg.train.predictor, "generator": gen, "progress": not a.no_progress, "clip_x0": clip}
    if a.sampler == "ddim":
        out = ddim_sample(model, sched, shape, steps=a.steps, eta=a.eta, spacing=a.spacing, **common)
    else:
        out = ddpm_sample(model, sched, shape, variance=a.variance, stochastic=a.sampler == "ddpm", **common)
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

    from .data import DIMS, load_dataset
    from .metrics import evaluate_samples

    if not a.samples.is_file():
        raise FileNotFoundError(f"samples file {a.samples} does not exist")
    x = np.load(a.samples)
    ref = np.load(a.reference) if a.reference else load_dataset(a.dataset, a.n_ref, a.seed)
    if x.ndim != 2 or x.shape[1] != DIMS[a.dataset]:
        raise ValueError(f"samples must have shape (n, {DIMS[a.dataset]}) for {a.dataset}, got {x.shape}")
    res = {"dataset": a.dataset, **evaluate_samples(x, ref, bandwidth=a.bandwidth)}
    print(json.dumps(res, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .train import NonFiniteLossError

    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return {"train": _train, "sample": _sample, "data": _data, "evaluate": _evaluate, "export": _export,
                "grade": _grade, "assign": _assign}[a.command](a)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError, RuntimeError) as e:
        print(f"ddpmkit {a.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
