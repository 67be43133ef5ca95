"""Training speed of the image recipes on one device, and how long each whole recipe takes.

For each recipe (mnist-cfg, shapes-cfg, and folder-64 on a folder of 3 classes at 64×64) and
each precision (fp32; bf16 autocast too on CUDA), the real ``Trainer`` runs warm-up steps, then
``--steps`` timed optimizer steps, the configurations interleaved and repeated ``--repeats``
times. Each step ends in ``loss.item()``, so the GPU has finished it before the clock reads.
Speed does not depend on the pixels: the data are random images of the recipe's shape.

Prints, and writes to ``benchmarks/results/train_speed_<device type>.json``: the median ms per
step, the spread over repeats, the peak GPU memory, and the recipe's full run
(``iterations × ms/step``) in minutes.

    python benchmarks/bench_train_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpmkit.checkpoint import save_json
from ddpmkit.common import hardware, resolve_device
from ddpmkit.data import dataset_spec
from ddpmkit.recipes import folder_64, get_recipe
from ddpmkit.train import Trainer


def random_folder(root: Path, classes: int = 3, per_class: int = 16, size: int = 64) -> Path:
    """A folder of random RGB PNGs in ``classes`` class subfolders (the folder-64 recipe's input)."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{k}" / f"{i}.png")
    return root


def trainer_for(name: str, folder: Path, device: str, precision: str) -> Trainer:
    cfg = folder_64(str(folder)) if name == "folder-64" else get_recipe(name)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device, precision=precision))
    if name == "folder-64":
        return Trainer(cfg)  # reads the folder: the recipe's own data path
    data = torch.rand(512, *dataset_spec(cfg.dataset).shape) * 2 - 1  # (N, C, H, W)
    if cfg.cond == "class":
        labels = torch.randint(0, cfg.model.num_classes, (512,))  # (N,)
    else:
        labels = (torch.rand(512, cfg.model.num_labels) < 0.3).float()  # (N, L) multi-hot
    return Trainer(cfg, data=data, labels=labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--recipes", nargs="+", default=["mnist-cfg", "shapes-cfg", "folder-64"])
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (CUDA kernels, cuDNN autotuning)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="default benchmarks/results/train_speed_<device type>.json")
    a = p.parse_args()

    device = resolve_device(a.device)
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]  # bf16 autocast is for GPUs
    out = a.out or Path(__file__).parent / "results" / f"train_speed_{device.type}.json"
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_folder(Path(tmp) / "folder")
        trainers = {(r, pr): trainer_for(r, folder, str(device), pr) for r in a.recipes for pr in precisions}
        ms: dict[tuple[str, str], list[float]] = {k: [] for k in trainers}
        peak: dict[tuple[str, str], float] = {}
        for tr in trainers.values():
            for _ in range(a.warmup):
                tr.train_step()
        for _ in range(a.repeats):  # interleaved: a slow spell of the machine hits every configuration
            for key, tr in trainers.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                losses = [tr.train_step() for _ in range(a.steps)]
                ms[key].append(1000 * (time.perf_counter() - t0) / a.steps)
                if device.type == "cuda":
                    peak[key] = max(peak.get(key, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
                assert all(np.isfinite(losses)), f"{key}: non-finite loss"

    rows = []
    for (recipe, prec), times in ms.items():
        cfg = trainers[(recipe, prec)].config
        med = statistics.median(times)
        rows.append({
            "recipe": recipe, "precision": prec, "batch": cfg.train.batch_size, "image": list(trainers[(recipe, prec)].data.shape[1:]),
            "parameters": sum(q.numel() for q in trainers[(recipe, prec)].model.parameters()),
            "ms_per_step_median": round(med, 2), "ms_per_step_repeats": [round(t, 2) for t in times],
            "iterations": cfg.train.iterations, "full_run_min": round(cfg.train.iterations * med / 60_000, 1),
            "peak_gpu_mib": round(peak[(recipe, prec)]) if peak else None,
        })  # fmt: skip
    res = {"machine": hardware(), "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": datetime.date.today().isoformat(), "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "results": rows}  # fmt: skip
    print(json.dumps(res, indent=2))
    save_json(res, out)


if __name__ == "__main__":
    main()
