"""Speed of the 2-D model on this machine: training and sampling.

Prints, and writes to benchmarks/results/mlp_cpu.json:
* training iterations per second with the CLI defaults (KAIST A1: batch 128, T = 1000);
* the time to sample 10,000 points over 1,000 ancestral steps;
* the time of the same 1,000 bare network forward passes (the floor a sampler can reach).

Usage: python benchmarks/bench_mlp.py [--points 10000] [--steps 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from ddpmkit.checkpoint import save_json
from ddpmkit.common import hardware
from ddpmkit.experiments.vector import run_config
from ddpmkit.samplers import ddpm_sample
from ddpmkit.schedules import NoiseSchedule
from ddpmkit.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--train-iterations", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mlp_cpu.json")
    a = p.parse_args()

    # 1. training speed (after 50 warm-up steps)
    tr = Trainer(run_config("swiss_roll", iterations=a.train_iterations + 50))
    for _ in range(50):
        tr.train_step()
    t0 = time.perf_counter()
    for _ in range(a.train_iterations):
        tr.train_step()
    train_it_s = a.train_iterations / (time.perf_counter() - t0)

    # 2. sampling vs the bare forward passes
    model = tr.model.eval()
    sched = NoiseSchedule.create("linear", a.steps)
    x = torch.randn(a.points, 2)
    t1 = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        model(x, t1)
        t0 = time.perf_counter()
        for i in range(a.steps):
            model(x, t1 + i)
        fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    ddpm_sample(model, sched, (a.points, 2), generator=torch.Generator().manual_seed(0))
    smp = time.perf_counter() - t0

    res = {
        "machine": hardware(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "points": a.points,
        "steps": a.steps,
        "train_it_per_s": train_it_s,
        "sample_seconds": smp,
        "forward_seconds": fwd,
        "sampler_overhead": smp / fwd,
    }
    print(json.dumps(res, indent=2))
    save_json(res, a.out)


if __name__ == "__main__":
    main()
