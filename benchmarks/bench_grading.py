"""Grading throughput: 30 submissions of A1 graded with ``-j 2`` (the issue's set-up).

The submissions are a realistic mix: a third complete, a third half done, a third with
the untouched student notebook. Two ways of running them are compared in one run,
interleaved and repeated: every run forked from one sandbox with the libraries imported
(the default, ``fork``) and a fresh sandbox per run (``fresh``, as before the zygote).
Prints, and writes to benchmarks/results/grading_cpu.json: the best wall time of each,
submissions per minute, their ratio, and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import nbformat

from ddpmkit.checkpoint import save_json
from ddpmkit.common import hardware
from ddpmkit.grading.grader import grade_batch
from ddpmkit.grading.notebooks import assignments_dir, grading_meta, student_notebook
from ddpmkit.grading.sandbox import resolve_isolation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--submissions", type=int, default=30)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--sandbox", choices=["auto", "bwrap", "none"], default="auto")
    p.add_argument("--repeats", type=int, default=2, help="runs of each way, interleaved")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grading_cpu.json")
    a = p.parse_args()

    src = assignments_dir() / "source" / "a1_forward.md"
    solved, empty = student_notebook(src, keep_solutions=True), student_notebook(src)
    half = student_notebook(src, keep_solutions=True)
    for cell, blank in zip(half.cells, empty.cells):
        if grading_meta(cell).get("id") == "cosine_betas":
            cell.source = blank.source
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(a.submissions):
            path = Path(tmp) / f"student{i:02d}.ipynb"
            nbformat.write([solved, half, empty][i % 3], path)
            paths.append(path)
        times: dict[str, list[float]] = {"fresh": [], "fork": []}
        for _ in range(a.repeats):
            for way in ("fresh", "fork"):
                t0 = time.perf_counter()
                rows = grade_batch("a1", paths, Path(tmp) / f"grades-{way}.csv", jobs=a.jobs, isolation=a.sandbox,
                                   fork=way == "fork", progress=False)
                times[way].append(time.perf_counter() - t0)
    wall = min(times["fork"])
    points = sorted(int(r["points"]) for r in rows.values())
    res = {
        "submissions": a.submissions, "jobs": a.jobs, "sandbox": resolve_isolation(a.sandbox),
        "wall_seconds": round(wall, 1), "submissions_per_minute": round(60 * a.submissions / wall, 1),
        "seconds_per_submission": round(wall / a.submissions, 2), "points": {str(k): points.count(k) for k in sorted(set(points))},
        "fresh_sandbox_wall_seconds": round(min(times["fresh"]), 1),
        "fresh_sandbox_submissions_per_minute": round(60 * a.submissions / min(times["fresh"]), 1),
        "speedup_fork_over_fresh": round(min(times["fresh"]) / wall, 2), "repeats": a.repeats,
        "all_wall_seconds": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "hardware": hardware(), "cpus": os.cpu_count(), "date": datetime.date.today().isoformat(),
    }
    print(res)
    save_json(res, a.out)


if __name__ == "__main__":
    main()
