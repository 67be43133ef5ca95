"""The grader against a battery of bad submissions to A1, each with its exact expected outcome.

One batch grades them all (two at a time, as ``-j 2``) with bubblewrap; a second, smaller
batch runs without it. A correct submission must get 9/9, and every other the exact score
its real answers earn, whatever it does to the process, the files or the grader.
"""

import ast
import csv
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest

import ddpmkit
from ddpmkit.grading import grader as grader_mod
from ddpmkit.grading.grader import grade_batch
from ddpmkit.grading.notebooks import assignments_dir, build_all, grading_meta, student_notebook
from ddpmkit.grading.sandbox import Limits, bwrap_path

SRC = assignments_dir() / "source" / "a1_forward.md"
HIDDEN = Path(ddpmkit.__file__).resolve().parent / "grading" / "assignments.py"
LIMITS = Limits(timeout=60, question_timeout=12)
needs_bwrap = pytest.mark.skipif(
    not bwrap_path() and not os.environ.get("CI"), reason="bubblewrap is not installed (CI installs it)"
)

# ---- answers ---------------------------------------------------------------------------------
Q_NO_BROADCAST = '''
def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1.0 - betas, 0)[t][:, None]  # (B, 1): right for points, wrong for images
    return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)
'''
COSINE_NO_CLIP = '''
def cosine_betas(T, s=0.008):
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    return 1.0 - (f[1:] / f[0]) / (f[:-1] / f[0])
'''
Q_FLOAT64 = '''
def q_sample(x0, t, noise, betas):
    abar = torch.cumprod(1.0 - betas, 0)[t].reshape(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
'''
Q_CUDA = '''
def q_sample(x0, t, noise, betas):
    x0 = x0.cuda()
    return x0
'''
POSTERIOR_NAN = '''
def q_posterior_mean_variance(x0, x_t, t, betas):
    return x_t, torch.full((x_t.shape[0],), float("nan"))
'''
POSTERIOR_SHAPE = '''
def q_posterior_mean_variance(x0, x_t, t, betas):
    return x_t, torch.zeros(x_t.shape[0], 1)
'''
ZEROS_EVERYWHERE = '''
def q_sample(x0, t, noise, betas):
    return torch.zeros_like(x0)

def cosine_betas(T, s=0.008):
    return torch.zeros(T, dtype=torch.float64)

def q_posterior_mean_variance(x0, x_t, t, betas):
    return torch.zeros_like(x_t), torch.zeros(x_t.shape[0])
'''


def answer(name: str, code: str) -> tuple[str, str]:
    return name, code


def submission(tmp: Path, student: str, *, replace: dict | None = None, add: list[str] = (), add_first: bool = False,
               edit=None, raw: bytes | None = None) -> Path:
    """A1 solved, then changed: answer cells replaced, cells added, or the notebook edited."""
    path = tmp / f"{student}.ipynb"
    if raw is not None:
        path.write_bytes(raw)
        return path
    nb = student_notebook(SRC, keep_solutions=True)
    for cell in nb.cells:
        for name, code in (replace or {}).items():
            if grading_meta(cell).get("id") == name:
                cell.source = code
    new = [nbformat.v4.new_code_cell(src) for src in add]
    nb.cells = (new + nb.cells) if add_first else (nb.cells + new)
    if edit:
        edit(nb)
    nbformat.write(nb, path)
    return path


def drop_answer(name):
    def edit(nb):
        nb.cells = [c for c in nb.cells if grading_meta(c).get("id") != name]
    return edit


def duplicate_answer(name, second_source):
    def edit(nb):
        i = next(i for i, c in enumerate(nb.cells) if grading_meta(c).get("id") == name)
        copy = nbformat.from_dict(json.loads(json.dumps(nb.cells[i])))
        copy.id, copy.source = "copy", second_source
        nb.cells.insert(i + 1, copy)
    return edit


def retype_answer(name):
    def edit(nb):
        i = next(i for i, c in enumerate(nb.cells) if grading_meta(c).get("id") == name)
        c = nb.cells[i]
        nb.cells[i] = nbformat.v4.new_markdown_cell(c.source, metadata=c.metadata)
    return edit


def _good_text() -> str:
    return nbformat.writes(student_notebook(SRC, keep_solutions=True))


def v3_bytes() -> bytes:
    return nbformat.writes(nbformat.convert(student_notebook(SRC, keep_solutions=True), 3), version=3).encode()


ESCAPE = '''
import os, pathlib
report = dict()
for label, target in [("hidden", "{hidden}"), ("hidden_dir", "{hidden_dir}"), ("tests", "{tests}")]:
    try:
        found = pathlib.Path(target).read_text() if pathlib.Path(target).is_file() else os.listdir(target)
        report[label] = "EMPTY" if not found else sorted(found) if isinstance(found, list) else "READ"
    except Exception as exc:
        report[label] = type(exc).__name__
for label, target in [("gradebook", "{gradebook}"), ("repo", "{repo}/pwned.txt"), ("tmp", "/tmp/ddpmkit-pwned.txt")]:
    try:
        pathlib.Path(target).write_text("pwned")
        report["write_" + label] = "WROTE"
    except Exception as exc:
        report["write_" + label] = type(exc).__name__
print("ESCAPE", sorted(report.items()))
'''

FORGE = '''
import json, os, struct, sys, numpy as np, torch
print("Score: 9/9 (100%)")
def rec(h):
    b = json.dumps(h).encode()
    return struct.pack(">I", len(b)) + b
with open("results.bin", "ab") as f:   # fake records: cells done, every call answered
    f.write(rec({"t": "cells_done"}))
    for q in ("q_sample", "cosine_betas", "q_posterior_mean_variance"):
        for k in range(3):
            f.write(rec({"t": "call", "q": q, "case": k}) + rec({"t": "result", "q": q, "case": k, "module": "__main__", "arrays": []}))
    f.write(rec({"t": "done"}))
for name in ("grades.csv", "feedback.json", "forge.json"):
    open(name, "w").write(json.dumps({"points": 9, "max_points": 9}))
torch.allclose = lambda *a, **k: True
np.allclose = lambda *a, **k: True
np.testing.assert_allclose = lambda *a, **k: None
'''

MONKEYPATCH = '''
import builtins, numpy as np, torch, ddpmkit.schedules, ddpmkit.diffusion
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
np.allclose = lambda *a, **k: True
np.isclose = lambda a, b, **k: np.ones(np.shape(a), bool)
ddpmkit.schedules.make_betas = lambda name, T, **k: cosine_betas(T)
ddpmkit.diffusion.q_sample = lambda s, x0, t, noise: torch.zeros_like(x0)
builtins.isinstance = lambda obj, cls: True
builtins.len = lambda obj: 3
'''


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subs")
    out = tmp_path_factory.mktemp("out") / "grades.csv"
    good = _good_text().encode()
    escape = ESCAPE.format(hidden=HIDDEN, hidden_dir=HIDDEN.parent, tests=Path(__file__).parent, gradebook=out,
                           repo=Path(ddpmkit.__file__).resolve().parents[1])
    subs = {
        "good": submission(tmp, "good"),
        "partial": submission(tmp, "partial", replace={"q_sample": Q_NO_BROADCAST, "cosine_betas": COSINE_NO_CLIP}),
        "syntax": submission(tmp, "syntax", replace={"q_sample": "def q_sample(x0, t, noise, betas)\n    return x0\n"}),
        "loop": submission(tmp, "loop", replace={"cosine_betas": "def cosine_betas(T, s=0.008):\n    while True:\n        pass\n"}),
        "exit": submission(tmp, "exit", replace={"q_posterior_mean_variance": "import os\ndef q_posterior_mean_variance(x0, x_t, t, betas):\n    os._exit(3)\n"}),
        "segfault": submission(tmp, "segfault", replace={"q_sample": "import ctypes\ndef q_sample(x0, t, noise, betas):\n    return ctypes.string_at(0)\n"}),
        "exit_top": submission(tmp, "exit_top", add=["import os\nos._exit(0)"], add_first=False),
        "membomb": submission(tmp, "membomb", add=["hog = []\nwhile True:\n    hog.append(bytearray(2**28))"]),
        "forkbomb": submission(tmp, "forkbomb", add=["import os\nwhile True:\n    os.fork()"]),
        "subprocess": submission(tmp, "subprocess", add=["import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped > /tmp/ddpmkit-sub.txt'])"]),
        "flood": submission(tmp, "flood", add=["import sys\nfor _ in range(40):\n    sys.stdout.write('x' * 2**20)"]),
        "corrupt": submission(tmp, "corrupt", raw=os.urandom(4096)),
        "truncated": submission(tmp, "truncated", raw=good[: len(good) // 2]),
        "oldformat": submission(tmp, "oldformat", raw=v3_bytes()),
        "ancient": submission(tmp, "ancient", raw=json.dumps({"nbformat": 2, "worksheets": []}).encode()),
        "deleted": submission(tmp, "deleted", edit=drop_answer("q_sample")),
        "duplicated": submission(tmp, "duplicated", edit=duplicate_answer("q_sample", Q_FLOAT64)),
        "retyped": submission(tmp, "retyped", edit=retype_answer("q_sample")),
        "monkeypatch": submission(tmp, "monkeypatch", replace={"cosine_betas": COSINE_NO_CLIP}, add=[MONKEYPATCH]),
        "forged": submission(tmp, "forged", replace={"q_sample": ZEROS_EVERYWHERE, "cosine_betas": "", "q_posterior_mean_variance": ""}, add=[FORGE]),
        "escape": submission(tmp, "escape", add=[escape]),
        "nan": submission(tmp, "nan", replace={"q_posterior_mean_variance": POSTERIOR_NAN}),
        "shape": submission(tmp, "shape", replace={"q_posterior_mean_variance": POSTERIOR_SHAPE}),
        "dtype": submission(tmp, "dtype", replace={"q_sample": Q_FLOAT64}),
        "cuda": submission(tmp, "cuda", replace={"q_sample": Q_CUDA}),
    }
    rows = grade_batch("a1", list(subs.values()), out, jobs=2, limits=LIMITS, isolation="bwrap" if bwrap_path() else "auto", progress=False)
    fb = {name: json.loads((out.parent / "grades-feedback" / f"{name}.json").read_text()) for name in subs}
    return {"rows": rows, "fb": fb, "out": out, "subs": subs}


def points(fb: dict) -> dict:
    return {q: v["points"] for q, v in fb["questions"].items()}


def messages(fb: dict, q: str) -> str:
    return " | ".join(c["message"] for c in fb["questions"][q]["cases"]) + " | " + " | ".join(fb["questions"][q]["notes"])


FULL = {"q_sample": 3, "cosine_betas": 3, "q_posterior_mean_variance": 3}


@needs_bwrap
class TestBattery:
    def test_correct_submission_gets_full_marks(self, battery):
        fb = battery["fb"]["good"]
        assert (fb["points"], fb["max_points"]) == (9, 9)
        assert fb["isolation"] == "bubblewrap" and fb["status"] == "graded"

    def test_partly_correct_gets_exactly_its_partial_score(self, battery):
        fb = battery["fb"]["partial"]
        # images do not broadcast against (B, 1): case 2 of q_sample fails; no clipping: every cosine case fails
        assert points(fb) == {"q_sample": 2, "cosine_betas": 0, "q_posterior_mean_variance": 3}
        assert [c["ok"] for c in fb["questions"]["q_sample"]["cases"]] == [True, False, True]
        assert "raised RuntimeError" in fb["questions"]["q_sample"]["cases"][1]["message"]
        assert "differs" in messages(fb, "cosine_betas")

    def test_syntax_error_costs_only_its_question(self, battery):
        fb = battery["fb"]["syntax"]
        assert points(fb) == {**FULL, "q_sample": 0}
        assert "q_sample is not defined" in messages(fb, "q_sample") and "SyntaxError" in messages(fb, "q_sample")

    def test_infinite_loop_times_out_and_the_rest_is_graded(self, battery):
        fb = battery["fb"]["loop"]
        assert points(fb) == {**FULL, "cosine_betas": 0}
        assert "timed out after 12 s" in messages(fb, "cosine_betas") and "while calling cosine_betas" in messages(fb, "cosine_betas")

    def test_os_exit_in_a_function(self, battery):
        fb = battery["fb"]["exit"]
        assert points(fb) == {**FULL, "q_posterior_mean_variance": 0}
        assert "exit code 3" in messages(fb, "q_posterior_mean_variance")

    def test_segfault(self, battery):
        fb = battery["fb"]["segfault"]
        assert points(fb) == {**FULL, "q_sample": 0}
        assert "segmentation fault" in messages(fb, "q_sample")

    def test_os_exit_at_top_level_stops_grading_with_the_cell_named(self, battery):
        fb = battery["fb"]["exit_top"]
        assert fb["points"] == 0
        assert all("exit code 0" in messages(fb, q) and "while running added cell" in messages(fb, q) for q in FULL)

    def test_memory_bomb_fails_its_cell_only(self, battery):
        fb = battery["fb"]["membomb"]
        assert points(fb) == FULL
        assert any(c["error"].startswith("MemoryError") for c in fb["cells"])

    def test_fork_bomb_and_subprocess_are_refused(self, battery):
        for name in ("forkbomb", "subprocess"):
            fb = battery["fb"][name]
            assert points(fb) == FULL, name
            assert any(c["error"].startswith("PermissionError") for c in fb["cells"]), name
        assert not Path("/tmp/ddpmkit-sub.txt").exists()

    def test_output_flood_is_truncated(self, battery):
        fb = battery["fb"]["flood"]
        assert points(fb) == FULL
        assert len(fb["output"]) <= LIMITS.output_kb * 1024
        assert any("printed 40.0 MB" in n for n in fb["notes"])

    @pytest.mark.parametrize("name, words", [("corrupt", "not UTF-8"), ("truncated", "ends early"), ("ancient", "nbformat 2 is too old")])
    def test_unreadable_notebooks(self, battery, name, words):
        fb = battery["fb"][name]
        assert fb["points"] == 0 and fb["status"].startswith("unreadable") and words in fb["status"]
        assert all(words in messages(fb, q) for q in FULL)

    def test_old_format_is_converted(self, battery):
        fb = battery["fb"]["oldformat"]
        assert points(fb) == FULL and any("nbformat 3" in n for n in fb["notes"])

    def test_deleted_duplicated_retyped_cells(self, battery):
        fb = battery["fb"]["deleted"]
        assert points(fb) == {**FULL, "q_sample": 0} and "answer cell was deleted" in messages(fb, "q_sample")
        fb = battery["fb"]["duplicated"]  # the second copy returns float64: the last definition counts
        assert points(fb) == {**FULL, "q_sample": 0} and "appears 2 times" in messages(fb, "q_sample")
        assert "dtype float64, expected float32" in messages(fb, "q_sample")
        fb = battery["fb"]["retyped"]
        assert points(fb) == FULL and "turned into a markdown cell" in messages(fb, "q_sample")

    def test_monkeypatching_changes_nothing(self, battery):
        fb = battery["fb"]["monkeypatch"]
        assert points(fb) == {**FULL, "cosine_betas": 0}

    def test_forged_outputs_and_scores_earn_nothing(self, battery):
        fb = battery["fb"]["forged"]
        assert points(fb) == {"q_sample": 0, "cosine_betas": 0, "q_posterior_mean_variance": 0}
        assert battery["rows"]["forged"]["points"] == 0
        assert "Score: 9/9" in fb["output"]

    def test_hidden_checks_and_outside_files_are_out_of_reach(self, battery):
        fb = battery["fb"]["escape"]
        assert points(fb) == FULL
        line = next(ln for ln in fb["output"].splitlines() if ln.startswith("ESCAPE"))
        report = dict(ast.literal_eval(line.removeprefix("ESCAPE ")))
        # the checks are not there; the repository and the gradebook cannot be written;
        # /tmp is the sandbox's own (written there, gone afterwards)
        assert report["hidden"] == "FileNotFoundError" and report["tests"] == "FileNotFoundError", report
        assert report["hidden_dir"] == ["__init__.py", "inside"], report  # of the grader, only what runs in the sandbox
        assert report["write_gradebook"] != "WROTE", report  # (the repository's path may lie under the private /tmp)
        assert not (Path(ddpmkit.__file__).resolve().parents[1] / "pwned.txt").exists()
        assert not Path("/tmp/ddpmkit-pwned.txt").exists()
        assert "pwned" not in battery["out"].read_text()

    def test_nan_shape_dtype_cuda(self, battery):
        fb = battery["fb"]["nan"]
        assert points(fb) == {**FULL, "q_posterior_mean_variance": 0} and "NaN values" in messages(fb, "q_posterior_mean_variance")
        fb = battery["fb"]["shape"]
        assert points(fb) == {**FULL, "q_posterior_mean_variance": 0} and "shape (12, 1), expected (12,)" in messages(fb, "q_posterior_mean_variance")
        fb = battery["fb"]["dtype"]
        assert points(fb) == {**FULL, "q_sample": 0} and "dtype float64, expected float32" in messages(fb, "q_sample")
        fb = battery["fb"]["cuda"]
        assert points(fb) == {**FULL, "q_sample": 0} and "The grader has no GPU" in messages(fb, "q_sample")

    def test_gradebook_has_one_row_per_submission(self, battery):
        with open(battery["out"], newline="") as f:
            rows = {r["student"]: r for r in csv.DictReader(f)}
        assert set(rows) == set(battery["subs"])
        assert rows["good"]["points"] == "9" and rows["partial"]["points"] == "5" and rows["partial"]["q_sample"] == "2"
        assert all(r["isolation"] == "bubblewrap" for r in rows.values())


def test_without_bubblewrap_limits_still_hold_and_the_report_says_so(tmp_path, capsys):
    subs = [submission(tmp_path, "good"), submission(tmp_path, "forkbomb", add=["import os\nwhile True:\n    os.fork()"]),
            submission(tmp_path, "exit", replace={"q_posterior_mean_variance": "import os\ndef q_posterior_mean_variance(x0, x_t, t, betas):\n    os._exit(3)\n"})]
    rows = grade_batch("a1", subs, tmp_path / "g.csv", limits=LIMITS, isolation="none", progress=False)
    assert "NOT ISOLATED" in capsys.readouterr().err
    assert {s: int(r["points"]) for s, r in rows.items()} == {"good": 9, "forkbomb": 9, "exit": 6}
    assert all(r["isolation"] == "none (NOT isolated)" for r in rows.values())


def test_resume_skips_graded_submissions_and_a_crash_keeps_the_gradebook(tmp_path, monkeypatch):
    subs = [submission(tmp_path, n) for n in ("ann", "bob", "cy")]
    out = tmp_path / "g.csv"
    real = grader_mod.grade_submission

    def crash_on_bob(a, p, *args, **kw):
        if p.student == "bob":
            raise KeyboardInterrupt
        return real(a, p, *args, **kw)

    monkeypatch.setattr(grader_mod, "grade_submission", crash_on_bob)
    with pytest.raises(KeyboardInterrupt):
        grade_batch("a1", subs, out, limits=LIMITS, progress=False)
    before = set(grader_mod.read_gradebook(out))  # a whole file with the finished rows, no half row
    assert "ann" in before and "bob" not in before
    assert not list(tmp_path.glob(".g.csv.*"))

    graded = []
    monkeypatch.setattr(grader_mod, "grade_submission", lambda a, p, *args, **kw: graded.append(p.student) or real(a, p, *args, **kw))
    rows = grade_batch("a1", subs, out, resume=True, limits=LIMITS, progress=False)
    assert set(graded) == {"ann", "bob", "cy"} - before
    assert {s: int(r["points"]) for s, r in rows.items()} == {"ann": 9, "bob": 9, "cy": 9}


def test_two_files_of_one_student_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    a = submission(tmp_path, "ann")
    b = tmp_path / "x" / "ann.ipynb"
    shutil.copy(a, b)
    with pytest.raises(ValueError, match="both belong to student 'ann'"):
        grade_batch("a1", [a, b], tmp_path / "g.csv", isolation="none", progress=False)


def test_student_notebooks_are_fresh():
    assert build_all(check=True) == [], "a student notebook is stale: run `ddpmkit assign`"
