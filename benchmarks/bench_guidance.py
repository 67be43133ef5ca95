"""Guidance settings of the shipped mnist-cfg model, measured for the choice of its default
(issue 12's MNIST bar: class accuracy >= 0.98 at a setting whose FID is within 10% of the best).

Each spec is ``W`` (guidance on every step) or ``W:LO:HI`` (on the timesteps LO <= t <= HI
only, plain conditional elsewhere: Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
Interval Improves Sample and Distribution Quality in Diffusion Models"). For each spec and
each of ``--seeds`` it draws 500 guided DDIM-50 samples, 50 per digit, exactly as
``ddpmkit.experiments.images.guided_samples`` does; the draws of all seeds are pooled and
scored with the shipped mnist-classifier: class accuracy, and feature FID against the 1,000
held-out digits. ``choose_guidance`` then picks the most accurate spec whose FID is within
10% of the best. Draws are cached in ``--cache`` (one file per spec and seed), so several
processes can share the sampling (one per seed, say) and a last one scores them all.

The default of ``ddpmkit/checkpoints/mnist-cfg.json`` was chosen by this script on draws not
used to pick the candidates (see the README and issue 12's closing notes).

Usage: DDPMKIT_DATA=../shared/data python benchmarks/bench_guidance.py 0 0.1 0.15 0.2 0.25:0:600 --seeds 2 3 [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpmkit.checkpoint import save_json
from ddpmkit.common import hardware
from ddpmkit.experiments.images import choose_guidance, guidance_label, guided_samples, score_class_samples
from ddpmkit.guidance import parse_interval
from ddpmkit.images import load_mnist
from ddpmkit.pretrained import load_pretrained

PER_CLASS = 50  # samples per digit and seed: 500 a draw
BAR_ACCURACY, FID_SLACK = 0.98, 0.10  # issue 12's bar


def parse_spec(spec: str) -> tuple[float, tuple[int, int] | None]:
    """``"0.25"`` → (0.25, None); ``"0.25:0:600"`` → (0.25, (0, 600)) (the interval read by
    :func:`ddpmkit.guidance.parse_interval`)."""
    w, sep, rest = spec.partition(":")
    try:
        return float(w), parse_interval(rest) if sep else None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"a spec is W or W:LO:HI (e.g. 0.2 or 0.25:0:600), got {spec!r}: {e}") from None


def checked_spec(spec: str) -> str:
    """The argparse type of a spec: refused before any sampling when it does not parse."""
    parse_spec(spec)
    return spec


def draw(model, schedule, spec: str, seed: int, cache: Path) -> torch.Tensor:
    """The 500 samples of ``spec`` at ``seed``: from the cache, else drawn and cached (atomically)."""
    path = cache / f"{spec}_seed{seed}.pt"
    if path.is_file():
        return torch.load(path)
    w, interval = parse_spec(spec)
    labels = torch.arange(10).repeat_interleave(PER_CLASS)  # (500,)
    x = guided_samples(model, schedule, labels, w, steps=50, seed=seed, interval=interval)  # (500, 1, 28, 28)
    tmp = path.with_suffix(".tmp")
    torch.save(x, tmp)
    tmp.replace(path)
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", type=checked_spec, help="W or W:LO:HI, e.g. 0.15 or 0.25:0:600")
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3], help="sampling seeds; their draws are pooled")
    p.add_argument("--cache", type=Path, default=Path("runs/bench_guidance"), help="folder of cached draws")
    p.add_argument("--sample-only", action="store_true", help="draw and cache, do not score (for parallel processes)")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: print only)")
    a = p.parse_args()
    model, schedule, info = load_pretrained("mnist-cfg")
    a.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    draws = {(spec, seed): draw(model, schedule, spec, seed, a.cache) for spec in tqdm(a.specs, desc="specs") for seed in a.seeds}
    if a.sample_only:
        print(f"cached {len(draws)} draws in {a.cache} ({time.perf_counter() - t0:.0f} s)")
        return
    clf = load_pretrained("mnist-classifier")[0]
    real = load_mnist("eval", warn=False).images[:1000]
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    rows = []
    for spec in a.specs:
        w, interval = parse_spec(spec)
        pooled = score_class_samples(clf, real, torch.cat([draws[spec, s] for s in a.seeds]), labels.repeat(len(a.seeds)))
        per_seed = {s: score_class_samples(clf, real, draws[spec, s], labels) for s in a.seeds}
        rows.append({"spec": spec, "w": w, "interval": interval, "n": pooled["n"], "accuracy": pooled["accuracy"], "fid": pooled["fid"],
                     "per_seed": {str(s): {"accuracy": r["accuracy"], "fid": r["fid"]} for s, r in per_seed.items()}})  # fmt: skip
    best = min(r["fid"] for r in rows)
    chosen = choose_guidance(rows, fid_slack=FID_SLACK)
    for r in rows:
        seeds = "; ".join(f"seed {s}: {v['accuracy']:.3f} / {v['fid']:.2f}" for s, v in r["per_seed"].items())
        print(
            f"{guidance_label(r['w'], r['interval']):26s} n {r['n']}: accuracy {r['accuracy']:.3f}, FID {r['fid']:.2f} "
            f"({r['fid'] / best - 1:+.1%})  [{seeds}]"
        )
    met = chosen["accuracy"] >= BAR_ACCURACY
    print(
        f"chosen: {guidance_label(chosen['w'], chosen['interval'])}, accuracy {chosen['accuracy']:.3f}, FID {chosen['fid']:.2f} "
        f"({chosen['fid'] / best - 1:+.1%} over the best); bar (accuracy >= {BAR_ACCURACY} within {FID_SLACK:.0%}) {'met' if met else 'NOT met'}"
    )
    if a.out:
        save_json({"checkpoint_steps": info["metadata"]["steps"], "seeds": a.seeds, "sampler": "ddim", "steps": 50, "held_out": len(real),
                   "rows": rows, "best_fid": best, "chosen": chosen["spec"], "bar_met": met, "machine": hardware(),
                   "torch": torch.__version__, "date": datetime.date.today().isoformat()}, a.out)  # fmt: skip
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
