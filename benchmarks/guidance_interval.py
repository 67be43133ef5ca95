"""Exploration (issue 12, the MNIST bar): classifier-free guidance applied only on an interval
of timesteps (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models"), on the shipped mnist-cfg model.

Outside the interval the step is plain conditional sampling (w = 0). Each spec ``W:LO:HI``
(0-based timesteps, both ends included) draws 500 guided DDIM-50 samples, 50 per digit, with
one seeded generator, and scores them with the shipped mnist-classifier against the 1,000
held-out digits. ``W:0:999`` is ordinary guidance; it reproduces
``ddpmkit.experiments.images.guided_samples`` exactly.

Not yet a library feature: the numbers it prints are a lead, not a shipped setting.

Usage: DDPMKIT_DATA=../shared/data python benchmarks/guidance_interval.py 0.15:0:999 0.3:0:400 [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ddpmkit.experiments.images import score_class_samples
from ddpmkit.guidance import CFGModel
from ddpmkit.images import load_mnist
from ddpmkit.pretrained import load_pretrained
from ddpmkit.samplers import sample


class IntervalCFG(nn.Module):
    """Guided with weight ``w`` at timesteps ``lo <= t <= hi``, plain conditional elsewhere."""

    def __init__(self, model: nn.Module, y: torch.Tensor, w: float, lo: int, hi: int):
        super().__init__()
        self.guided, self.plain, self.lo, self.hi = CFGModel(model, y, w), CFGModel(model, y, 0.0), lo, hi

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = int(t.flatten()[0])  # the samplers pass one timestep for the whole batch
        return self.guided(x, t) if self.lo <= step <= self.hi else self.plain(x, t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", help="W:LO:HI, e.g. 0.3:0:400")
    p.add_argument("--seed", type=int, default=0, help="the sampling generator's seed")
    a = p.parse_args()
    model, schedule, _ = load_pretrained("mnist-cfg")
    clf = load_pretrained("mnist-classifier")[0]
    real = load_mnist("eval", warn=False).images[:1000]
    labels = torch.arange(10).repeat_interleave(50)  # (500,)
    for spec in a.specs:
        w, lo, hi = spec.split(":")
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(a.seed)
        xs = []
        for i in range(0, len(labels), 250):  # the batches of guided_samples, so the draws match it
            y = labels[i : i + 250]
            guided = IntervalCFG(model, y, float(w), int(lo), int(hi))
            xs.append(sample("ddim", guided, schedule, (len(y), 1, 28, 28), steps=50, clip_x0=(-1.0, 1.0), generator=gen).x)
        s = score_class_samples(clf, real, torch.cat(xs), labels)  # x: (500, 1, 28, 28)
        print(
            f"w {w}, guided for t in [{lo}, {hi}], seed {a.seed}: FID {s['fid']:.2f}, accuracy {s['accuracy']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
