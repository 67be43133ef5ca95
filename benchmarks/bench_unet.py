"""Speed of the MNIST UNet (the mnist-cfg recipe's network) on this machine.

Prints, and writes to benchmarks/results/unet_cpu.json: training iterations per second
(batch 64, 28×28, class-conditional) and images per second when sampling with DDIM
(50 steps) with and without classifier-free guidance.
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
from ddpmkit.guidance import CFGModel
from ddpmkit.recipes import mnist_cfg
from ddpmkit.samplers import ddim_sample
from ddpmkit.schedules import NoiseSchedule
from ddpmkit.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-iterations", type=int, default=30)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unet_cpu.json")
    a = p.parse_args()

    cfg = mnist_cfg()
    data = torch.rand(512, 1, 28, 28) * 2 - 1  # speed does not depend on the pixels
    tr = Trainer(cfg, data=data, labels=torch.randint(0, 10, (512,)))
    for _ in range(3):
        tr.train_step()
    t0 = time.perf_counter()
    for _ in range(a.train_iterations):
        tr.train_step()
    train_it_s = a.train_iterations / (time.perf_counter() - t0)

    model, sched = tr.model.eval(), NoiseSchedule.from_config(cfg.schedule)
    y = torch.arange(a.images) % 10
    res = {"machine": hardware(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": datetime.date.today().isoformat(), "batch": cfg.train.batch_size, "train_it_per_s": train_it_s}  # fmt: skip
    for name, net in (("conditional", CFGModel(model, y, 0.0)), ("guided", CFGModel(model, y, 2.0))):  # w=0: one call
        t0 = time.perf_counter()
        ddim_sample(net, sched, (a.images, 1, 28, 28), steps=a.steps, generator=torch.Generator().manual_seed(0))
        res[f"images_per_s_{name}_ddim{a.steps}"] = a.images / (time.perf_counter() - t0)
    print(json.dumps(res, indent=2))
    save_json(res, a.out)


if __name__ == "__main__":
    main()
