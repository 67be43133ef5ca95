"""Sample quality against the number of network evaluations (NFE), for every sampler.

Two parts, both written to benchmarks/results/samplers_cpu.json (the sampling chapters show it):

1. 2-D: two swiss-roll runs, each trained with 3 seeds, interleaved: the default run
   (``ddpmkit train --dataset swiss_roll``, the KAIST A1 set-up: linear schedule,
   ε-prediction) and the recipe ``swiss-roll-cosine-v`` (cosine schedule, v-prediction, all
   else equal). Each trained model draws 2,048 samples with each sampler at each NFE (one
   sampling seed per run); the KAIST Chamfer distance (sum) and the EMD against 2,048 fresh
   data points are reported as the median over the 3 seeds, with the training time.
   Targets (issue 12): a few-step solver with Chamfer < 15 at <= 20 NFE (DPM-Solver++(2M) for
   the ODE, SDE-DPM-Solver++(2M) for the reverse SDE, each at its default spacing: trailing
   and quadratic); Chamfer <= 8 with under 20 s of training.
2. MNIST: the shipped mnist-cfg model with its default guidance (its weight, on the timesteps
   of its interval: a guided step is one network call on a doubled batch, and NFE counts steps), ``--per-class`` samples per digit with each
   sampler, feature FID in the course classifier's space against held-out digits, beside
   the FID of as many other real held-out digits (the real-vs-real baseline; 500 and 500,
   since only the 1,000 held-out test digits are on disk). Target: DPM-Solver at 10 steps
   within 10% of DDIM-50.

Usage: DDPMKIT_DATA=../shared/data python benchmarks/bench_samplers.py [--seeds 3] [--per-class 50] [--skip-mnist | --skip-2d] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpmkit.checkpoint import save_json
from ddpmkit.common import hardware
from ddpmkit.experiments.vector import sample_and_score, train
from ddpmkit.recipes import get_recipe

# (sampler, steps): every sampler at the network-evaluation counts it is used with
GRID_2D = ([("ddpm", 1000)] + [("ddim", n) for n in (5, 10, 20, 50, 100)] + [("dpm-solver", n) for n in (5, 10, 15, 20, 50)]
           + [("dpm-solver-sde", n) for n in (5, 10, 15, 20, 50)])  # each sampler at its default spacing
GRID_MNIST = [("ddim", n) for n in (10, 20, 50)] + [("dpm-solver", n) for n in (5, 10, 20)] + [("dpm-solver-sde", n) for n in (5, 10, 20)]


RUNS = ("swiss-roll", "swiss-roll-cosine-v")  # the default run (the recipe of the CLI's defaults) and the new recipe


def two_d(seeds: int, n: int, progress: bool) -> dict:
    per_run: dict[str, list[dict]] = {name: [] for name in RUNS}
    for seed in tqdm(range(seeds), desc="training (2-D)", disable=not progress):
        for name in RUNS:  # interleaved, so that both see the same machine load
            cfg = get_recipe(name)
            t0 = time.perf_counter()
            tr = train(replace(cfg, train=replace(cfg.train, seed=seed, checkpoint_every=cfg.train.iterations)))
            train_s = time.perf_counter() - t0
            rows = []
            for sampler, steps in GRID_2D:
                m = sample_and_score(tr, n, sampler=sampler, steps=steps, seed=100 + seed)
                rows.append({"sampler": sampler, "nfe": steps, "chamfer": m["chamfer"], "emd": m["emd"], "seconds": m["sample_seconds"]})
            per_run[name].append({"seed": seed, "train_seconds": train_s, "rows": rows})
    out = {}
    for name, runs in per_run.items():
        table = []
        for k, (sampler, steps) in enumerate(GRID_2D):
            per_seed = [r["rows"][k] for r in runs]
            table.append({"sampler": sampler, "nfe": steps, "chamfer_median": statistics.median(r["chamfer"] for r in per_seed),
                          "chamfer_per_seed": [r["chamfer"] for r in per_seed], "emd_median": statistics.median(r["emd"] for r in per_seed),
                          "seconds_median": statistics.median(r["seconds"] for r in per_seed)})
        cfg = get_recipe(name)
        out[name] = {"schedule": cfg.schedule.name, "predictor": cfg.train.predictor, "iterations": cfg.train.iterations,
                     "train_seconds": [r["train_seconds"] for r in runs], "rows": table}
    return out


def mnist(per_class: int, progress: bool) -> dict:
    from ddpmkit.classifier import feature_fid_kid
    from ddpmkit.experiments.images import guided_samples, score_class_samples
    from ddpmkit.images import load_mnist
    from ddpmkit.pretrained import default_guidance, load_pretrained

    model, schedule, info = load_pretrained("mnist-cfg")
    clf, _, _ = load_pretrained("mnist-classifier")
    held = load_mnist("eval", warn=False).images
    n = 10 * per_class
    if 2 * n > len(held):
        raise ValueError(f"{n} samples need {2 * n} held-out digits (two disjoint sets of {n}); there are {len(held)}: lower --per-class")
    real, other = held[:n], held[n : 2 * n]  # two disjoint sets of held-out digits: the reference, and the baseline
    guidance = default_guidance(info)  # the checkpoint's chosen w, and the timesteps it guides (None: all)
    labels = torch.arange(10).repeat_interleave(per_class)
    rows = []
    for sampler, steps in tqdm(GRID_MNIST, desc="MNIST samplers", disable=not progress):
        t0 = time.perf_counter()
        x = guided_samples(model, schedule, labels, **guidance, steps=steps, sampler=sampler)
        secs = time.perf_counter() - t0
        s = score_class_samples(clf, real, x, labels)
        rows.append({"sampler": sampler, "nfe": steps, "fid": s["fid"], "accuracy": s["accuracy"], "seconds_per_image": secs / n})
    baseline = feature_fid_kid(clf, real, other, kid_subset=min(100, n))["fid"]  # real against real, the same n
    return {"w": guidance["w"], "interval": guidance["interval"], "n": n, "real_vs_real_fid": baseline, "rows": rows,
            "checkpoint_steps": info["metadata"]["steps"],
            "machine": hardware(), "torch": torch.__version__, "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat()}


def report_mnist(per_class: int) -> dict:
    m = mnist(per_class, progress=True)
    print(f"MNIST mnist-cfg, w = {m['w']}, guided t: {m['interval'] or 'all'}, {m['n']} samples; real vs real FID {m['real_vs_real_fid']:.2f}")
    for r in m["rows"]:
        print(f"{r['sampler']:12s} {r['nfe']:5d} FID {r['fid']:8.2f}  accuracy {r['accuracy']:.3f}  {r['seconds_per_image']:.3f} s/image")
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the 2-D run (the median is reported)")
    p.add_argument("--points", type=int, default=2048, help="2-D samples per sampler and seed (KAIST: 2,048)")
    p.add_argument("--per-class", type=int, default=50, help="MNIST samples per digit (500 in all: the 1,000 held-out digits make two sets of 500)")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--skip-2d", action="store_true", help="re-measure only the MNIST part and replace it in --out (the 2-D part kept)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "samplers_cpu.json")
    a = p.parse_args()
    if a.skip_2d and a.skip_mnist:
        p.error("--skip-2d and --skip-mnist leave nothing to measure: drop one")
    if a.skip_2d:
        if not a.out.exists():
            p.error(f"--skip-2d replaces the MNIST part of an existing {a.out}, and there is none: run without --skip-2d")
        result = json.loads(a.out.read_text())
        result["mnist"] = report_mnist(a.per_class)
        save_json(result, a.out)
        print(json.dumps({"written": str(a.out), "replaced": "mnist"}))
        return
    runs = two_d(a.seeds, a.points, progress=True)
    for name, run in runs.items():
        print(f"\n{name} ({run['schedule']} schedule, {run['predictor']}-prediction): median over {a.seeds} training seeds, "
              f"{a.points} samples; training {statistics.median(run['train_seconds']):.1f} s (median)")
        print(f"{'sampler':12s} {'NFE':>5s} {'Chamfer':>9s} {'EMD':>7s}")
        for r in run["rows"]:
            print(f"{r['sampler']:12s} {r['nfe']:5d} {r['chamfer_median']:9.2f} {r['emd_median']:7.3f}")
    result = {"machine": hardware(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": datetime.date.today().isoformat(),
              "two_d": {"dataset": "swiss_roll", "seeds": a.seeds, "points": a.points, "runs": runs}}
    if not a.skip_mnist:
        result["mnist"] = report_mnist(a.per_class)
    save_json(result, a.out)
    print(json.dumps({"written": str(a.out)}))


if __name__ == "__main__":
    main()
