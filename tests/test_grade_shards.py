"""Grading a class in slices (``ddpmkit grade ... --shard K/N``) and merging the slices'
gradebooks (``ddpmkit grade merge``), as a Slurm or Kubernetes job array would (issue 12 §4)."""

from __future__ import annotations

import csv
import json
import random
import shutil
import string

import nbformat
import pytest

from ddpmkit.cli import main
from ddpmkit.grading.assignments import ASSIGNMENTS
from ddpmkit.grading.grader import grade_batch, in_shard, merge_gradebooks, parse_shard, shard_record_path
from ddpmkit.grading.notebooks import assignments_dir, student_notebook
from ddpmkit.grading.sandbox import Limits, bwrap_path

MODE = "bwrap" if bwrap_path() else "none"
LIMITS = Limits(timeout=60, question_timeout=15)


def test_every_student_is_in_exactly_one_slice_whatever_the_order():
    rng = random.Random(0)
    names = ["".join(rng.choices(string.ascii_letters + string.digits + "_-.é", k=rng.randint(1, 12))) for _ in range(2000)]
    for n in (1, 2, 3, 8, 50):
        counts = [sum(in_shard(s, (k, n)) for k in range(1, n + 1)) for s in names]
        assert set(counts) == {1}
        sizes = [sum(in_shard(s, (k, n)) for s in names) for k in range(1, n + 1)]
        m = len(names)
        assert all(abs(z - m / n) <= 5 * (m * (1 / n) * (1 - 1 / n)) ** 0.5 for z in sizes)  # binomial spread: the hash is even
    assert [in_shard(s, (2, 3)) for s in names] == [in_shard(s, (2, 3)) for s in list(reversed(names))][::-1]


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "3", "1/0", "-1/2", "1/2/3", ""])
def test_bad_shard_specs_are_refused_by_name(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """Seven A1 submissions (four solved, three blank), graded whole once as the reference."""
    tmp = tmp_path_factory.mktemp("class")
    src = assignments_dir() / "source" / ASSIGNMENTS["a1"].source
    subs = []
    for i, name in enumerate(["ada", "bob", "cyd", "dee", "eve", "fay", "gus"]):
        path = tmp / "subs" / f"{name}.ipynb"
        path.parent.mkdir(exist_ok=True)
        nbformat.write(student_notebook(src, keep_solutions=i % 2 == 0), path)
        subs.append(path)
    whole = grade_batch("a1", subs, tmp / "whole.csv", limits=LIMITS, isolation=MODE, seed=3, progress=False)
    return tmp, subs, whole


def _slices(tmp, subs, n, prefix="g"):
    outs = []
    for k in range(1, n + 1):
        out = tmp / f"{prefix}-{k}.csv"
        assert main(["grade", "a1", *map(str, subs), "--out", str(out), "--shard", f"{k}/{n}", "--sandbox", MODE,
                     "--seed", "3", "--no-progress"]) == 0
        outs.append(out)
    return outs


def test_slices_merge_into_the_whole_class(klass):
    tmp, subs, whole = klass
    outs = _slices(tmp, subs, 3)
    per = [_rows(o) for o in outs]
    assert sorted(r["student"] for rows in per for r in rows) == sorted(whole)  # a partition of the class
    for o in outs:
        rec = json.loads(shard_record_path(o).read_text())
        assert rec["assignment"] == "a1" and len(rec["students"]) == len(_rows(o))
    merged = tmp / "merged.csv"
    assert main(["grade", "merge", *map(str, reversed(outs)), "--out", str(merged), "--format", "canvas"]) == 0
    rows = {r["student"]: r for r in _rows(merged)}
    keys = ["points", "q_sample", "cosine_betas", "q_posterior_mean_variance", "status", "sha256"]
    assert {s: [str(r[k]) for k in keys] for s, r in rows.items()} == {s: [str(r[k]) for k in keys] for s, r in whole.items()}
    assert (tmp / "merged-canvas.csv").exists()


def test_merge_refuses_what_would_lose_or_double_a_grade(klass, capsys):
    tmp, subs, _ = klass
    outs = _slices(tmp, subs, 2, prefix="h")
    # a slice missing from the list
    with pytest.raises(ValueError, match=r"slice\(s\) 2/2 missing"):
        merge_gradebooks(outs[:1], tmp / "m.csv")
    # a slice whose job did not finish (no completion record)
    unfinished = tmp / "unfinished.csv"
    shutil.copy(outs[1], unfinished)
    with pytest.raises(ValueError, match="did not finish"):
        merge_gradebooks([outs[0], unfinished], tmp / "m.csv")
    # a slice whose gradebook lost a row
    lines = outs[1].read_text().splitlines(keepends=True)
    short = tmp / "short.csv"
    short.write_text("".join(lines[:-1]))
    shutil.copy(shard_record_path(outs[1]), shard_record_path(short))
    if len(lines) > 1:
        with pytest.raises(ValueError, match="lacks the rows"):
            merge_gradebooks([outs[0], short], tmp / "m.csv")
    # the same slice twice
    with pytest.raises(ValueError, match="are both slice 1/2"):
        merge_gradebooks([outs[0], _copy_slice(outs[0], tmp / "dup.csv")], tmp / "m.csv")
    # not a gradebook, and a gradebook of another assignment
    bad = tmp / "notes.csv"
    bad.write_text("name,score\nada,3\n")
    with pytest.raises(ValueError, match="not a gradebook"):
        merge_gradebooks([bad], tmp / "m.csv")
    other = tmp / "a2.csv"
    other.write_text(",".join(["student", "points", "max_points", *[q.name for q in ASSIGNMENTS["a2"].questions],
                               "status", "flags", "isolation", "sha256", "submission", "graded_at"]) + "\n")
    with pytest.raises(ValueError, match="different assignments"):
        merge_gradebooks([tmp / "whole.csv", other], tmp / "m.csv")
    # two different rows for one student (plain gradebooks, no slices)
    edited = tmp / "edited.csv"
    text = (tmp / "whole.csv").read_text().splitlines(keepends=True)
    row = _rows(tmp / "whole.csv")[0]
    edited.write_text(text[0] + text[1].replace(row["graded_at"], "2000-01-01T00:00:00+00:00"))
    with pytest.raises(ValueError, match=f"student '{row['student']}' has different rows"):
        merge_gradebooks([tmp / "whole.csv", edited], tmp / "m.csv")
    assert not (tmp / "m.csv").exists()  # nothing was written by a refused merge
    # the CLI says why, and refuses grading flags on merge
    assert main(["grade", "merge", str(outs[0]), "--out", str(tmp / "m.csv")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["grade", "merge", str(outs[0]), str(outs[1]), "--out", str(tmp / "m.csv"), "--seed", "1"]) == 2
    assert "drop --seed" in capsys.readouterr().err


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _copy_slice(src, dst):
    shutil.copy(src, dst)
    shutil.copy(shard_record_path(src), shard_record_path(dst))
    return dst
