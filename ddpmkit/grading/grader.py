"""``ddpmkit grade``: grade a class's notebooks in sandboxes, compare outside them.

For each submission:

1. read the notebook as data (never executed here); a broken file is a clear message
2. draw fresh inputs for every question (a new seed per submission) and compute the
   reference answers here, in the grader's process
3. run the released setup cells and the student's cells in the sandbox
   (``sandbox.run_harness``), which calls the student's functions on those inputs and
   streams the outputs back as plain arrays
4. compare each output with its reference (``spec.compare``); one point per case
5. if the process died in the middle of a question (a crash, ``os._exit``, a timeout),
   that question gets the reason and the sandbox runs again for the questions after it

The gradebook (CSV) and each student's feedback (JSON) are written atomically after every
submission, so an interrupted batch resumes with ``--resume`` and loses nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import shutil
import struct
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..checkpoint import _atomic_write, save_json
from . import notebooks
from .assignments import Assignment, get_assignment, reference_outputs
from .harness import NUMERIC
from .sandbox import NOT_ISOLATED, Isolation, Limits, resolve_isolation, run_harness
from .spec import encode_cases, judge, to_arrays, write_arrays

MAX_RESULTS_BYTES = 256 << 20  # a results stream larger than this is not read
CUDA_HINT = " The grader has no GPU: use the device of your inputs (x.device) instead of .cuda() or 'cuda'."


# ---- the results stream --------------------------------------------------------------------
def parse_records(blob: bytes) -> tuple[list[dict], bool]:
    """Records of ``harness.record``; stops at the first malformed one. Returns (records, intact)."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            return out, False
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        try:
            head = json.loads(blob[pos + 4 : pos + 4 + n])
            arrays = []
            p = pos + 4 + n
            for dtype, shape, nbytes in head.get("arrays", []):
                dt = np.dtype(dtype)
                if dt.kind not in NUMERIC or dt.hasobject or p + nbytes > len(blob):
                    return out, False
                a = np.frombuffer(blob[p : p + nbytes], dtype=dt).reshape([int(s) for s in shape])
                arrays.append(a)
                p += nbytes
        except (ValueError, TypeError, KeyError):
            return out, False
        head["_arrays"] = arrays
        out.append(head)
        pos = p
    return out, True


@dataclass
class QuestionResult:
    name: str
    max_points: int
    cases: list[dict] = field(default_factory=list)  # {"ok": bool, "message": str}
    notes: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(c["ok"] for c in self.cases)

    def fail_rest(self, message: str) -> None:
        while len(self.cases) < self.max_points:
            self.cases.append({"ok": False, "message": message})


def _case_message(head: dict, expected: list[np.ndarray], q) -> tuple[bool, str]:
    if head["t"] == "call_error":
        msg = head.get("error", "error")
        if "NotImplementedError" in msg:
            return False, "not implemented (the cell still raises NotImplementedError)"
        if "cuda" in msg.lower() or "nvidia" in msg.lower():
            msg += CUDA_HINT
        return False, f"raised {msg}"
    module = head.get("module") or ""
    if module.startswith("ddpmkit"):
        return False, f"this is the library's {module}.{q.name}, not your code; write the function yourself"
    try:
        return judge(q, expected, [np.asarray(a) for a in head["_arrays"]])
    except Exception as exc:  # malformed arrays are the submission's fault
        return False, f"the output could not be read: {exc}"


# ---- one submission ------------------------------------------------------------------------
def student_id(path: Path, assignment: Assignment) -> str:
    """``alice.ipynb`` -> alice; ``alice/a1_forward.ipynb`` -> alice."""
    stem = Path(assignment.source).stem
    return path.parent.name if path.stem == stem else path.stem


def grade_submission(
    assignment: Assignment,
    path: Path,
    limits: Limits | None = None,
    isolation: Isolation = "auto",
    seed: int | None = None,
) -> dict:
    """Grade one notebook; returns its feedback (what ``feedback/<student>.json`` holds)."""
    limits = limits or Limits()
    mode = resolve_isolation(isolation)
    seed = secrets.randbits(63) if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    results = {q.name: QuestionResult(q.name, 0) for q in assignment.questions}
    t0 = time.monotonic()
    feedback = {
        "student": student_id(path, assignment), "assignment": assignment.key, "submission": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None,
        "isolation": "bubblewrap" if mode == "bwrap" else NOT_ISOLATED, "seed": seed, "notes": [], "cells": [], "output": "",
    }
    # 2. inputs and references, here
    cases = {q.name: q.cases(rng) for q in assignment.questions}
    expected = {q.name: [to_arrays(reference_outputs(q, c)) for c in cases[q.name]] for q in assignment.questions}
    for q in assignment.questions:
        results[q.name].max_points = len(cases[q.name])
    # 1. the notebook, as data
    try:
        submitted, notes = notebooks.read_submission(path)
        feedback["notes"] += notes
    except notebooks.NotebookError as exc:
        for r in results.values():
            r.fail_rest(f"not graded: {exc}")
        return _finish(feedback, results, t0, status=f"unreadable: {exc}")
    release = notebooks.student_notebook(notebooks.assignments_dir() / "source" / assignment.source)
    plan = notebooks.plan_cells(release, submitted, [q.name for q in assignment.questions])
    feedback["notes"] += plan.general
    for name, n in plan.notes.items():
        results[name].notes += n
    # 3-5. run, compare, rerun after a crash
    pending = [q for q in assignment.questions]
    status = "graded"
    first_run = True  # cell errors are reported from the first run; a rerun repeats them
    while pending:
        arrays: dict[str, np.ndarray] = {}
        calls = [{"name": q.name, "module": q.module, "cases": encode_cases(q, cases[q.name], arrays)} for q in pending]
        work = Path(tempfile.mkdtemp(prefix="ddpmkit-grade-"))
        try:
            (work / "plan.json").write_text(json.dumps({"cells": plan.cells, "calls": calls}))
            (work / "inputs.bin").write_bytes(write_arrays(arrays))
            shutil.copy(Path(__file__).with_name("harness.py"), work / "harness.py")
            run = run_harness(work, limits, mode)
            res = work / "results.bin"
            blob = b""
            if res.is_file() and not res.is_symlink() and res.stat().st_size <= MAX_RESULTS_BYTES:
                blob = res.read_bytes()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if not feedback["output"]:
            feedback["output"] = run.output
            if run.output_bytes > limits.output_kb * 1024:
                feedback["notes"].append(f"the notebook printed {run.output_bytes / 2**20:.1f} MB; only the first {limits.output_kb} KB are kept")
        records, intact = parse_records(blob)
        if not intact:
            feedback["notes"].append("the results stream was cut or corrupted; only its intact part was read")
        by_q = {q.name: q for q in pending}
        current, in_cells, done, cell_label = None, True, False, None
        for head in records:
            t = head.get("t")
            if t == "seccomp" and not head.get("ok"):
                feedback["notes"].append(f"the process-creation filter could not be installed: {head.get('error')}")
            elif t == "cell":
                cell_label = head.get("label")
            elif t == "cell_error" and first_run:
                feedback["cells"].append({"cell": plan.cells[head["i"]]["label"] if isinstance(head.get("i"), int) and head["i"] < len(plan.cells) else "?",
                                          "error": head.get("error", ""), "traceback": head.get("traceback", "")})
            elif t == "cells_done":
                in_cells = False
            elif t == "call" and head.get("q") in by_q:
                current = head["q"]
            elif t in ("result", "call_error") and head.get("q") in by_q and not in_cells:
                q = by_q[head["q"]]
                r = results[q.name]
                k = head.get("case")
                if k == len(r.cases) and k < len(expected[q.name]):
                    ok, msg = _case_message(head, expected[q.name][k], q)
                    r.cases.append({"ok": ok, "message": msg})
                current = None if len(r.cases) == r.max_points else current
            elif t == "done":
                done = True
        first_run = False
        if done:
            break
        # the process ended early: say where, and go on with the questions after it
        ending = run.ending(limits)
        if in_cells:
            for q in pending:
                results[q.name].fail_rest(f"not graded: the notebook {ending} while running {cell_label or 'its first cell'}")
            status = f"stopped in {cell_label}: {ending}"
            break
        if current is None:  # between questions
            current = next((q.name for q in pending if len(results[q.name].cases) < results[q.name].max_points), None)
            if current is None:
                break
        results[current].fail_rest(f"{ending} while calling {current}")
        status = "graded (with a crash or timeout)"
        idx = [q.name for q in pending].index(current)
        pending = [q for q in pending[idx + 1 :]]
    # a question whose function never got defined: point at the cell that failed
    for r in results.values():
        if any("is not defined" in c["message"] for c in r.cases):
            for cell in feedback["cells"]:
                if cell["cell"].startswith("answer:") and r.name in cell["cell"].split(" ")[0].split(":", 1)[1].split(","):
                    r.notes.append(f"its cell failed before defining it: {cell['error']}")
    return _finish(feedback, results, t0, status)


def _finish(feedback: dict, results: dict[str, QuestionResult], t0: float, status: str) -> dict:
    feedback["questions"] = {
        r.name: {"points": r.points, "max_points": r.max_points, "cases": r.cases, "notes": r.notes} for r in results.values()
    }
    feedback["points"] = sum(r.points for r in results.values())
    feedback["max_points"] = sum(r.max_points for r in results.values())
    feedback["status"] = status
    feedback["seconds"] = round(time.monotonic() - t0, 2)
    feedback["graded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return feedback


# ---- a batch ---------------------------------------------------------------------------------
def gradebook_columns(assignment: Assignment) -> list[str]:
    return ["student", "points", "max_points"] + [q.name for q in assignment.questions] + ["status", "isolation", "sha256", "submission", "graded_at"]


def read_gradebook(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def write_gradebook(path: Path, assignment: Assignment, rows: dict[str, dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=gradebook_columns(assignment), extrasaction="ignore")
    w.writeheader()
    for student in sorted(rows):
        w.writerow(rows[student])
    _atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def row_of(feedback: dict) -> dict:
    return {
        "student": feedback["student"], "points": feedback["points"], "max_points": feedback["max_points"],
        **{q: v["points"] for q, v in feedback["questions"].items()},
        "status": feedback["status"], "isolation": "bubblewrap" if feedback["isolation"] == "bubblewrap" else "none (NOT isolated)",
        "sha256": feedback["sha256"], "submission": feedback["submission"], "graded_at": feedback["graded_at"],
    }


def grade_batch(
    assignment: str | Assignment,
    submissions: list[Path],
    out: Path,
    *,
    feedback_dir: Path | None = None,
    jobs: int = 1,
    resume: bool = False,
    limits: Limits | None = None,
    isolation: Isolation = "auto",
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Grade ``submissions`` into the gradebook ``out`` (CSV) and ``feedback_dir`` (JSON each).

    ``resume`` skips a student whose row in ``out`` has the same submission checksum.
    ``seed`` fixes every submission's inputs (for tests); by default each draws its own.
    """
    a = get_assignment(assignment) if isinstance(assignment, str) else assignment
    mode = resolve_isolation(isolation)
    if mode == "none":
        print("WARNING: " + NOT_ISOLATED, file=sys.stderr)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out = Path(out)
    feedback_dir = Path(feedback_dir) if feedback_dir else out.parent / f"{out.stem}-feedback"
    paths = [Path(p) for p in submissions]
    ids: dict[str, Path] = {}
    for p in paths:
        sid = student_id(p, a)
        if sid in ids:
            raise ValueError(f"{ids[sid]} and {p} both belong to student {sid!r}; rename one of them")
        ids[sid] = p
    rows = read_gradebook(out) if resume else {}
    todo = []
    for sid, p in ids.items():
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        if resume and sid in rows and rows[sid].get("sha256") == digest:
            continue
        todo.append(p)
    lock = threading.Lock()

    def one(p: Path) -> dict:
        fb = grade_submission(a, p, limits, mode, seed)
        with lock:  # feedback first, then the gradebook row: a crash never leaves a row without its feedback
            save_json(fb, feedback_dir / f"{fb['student']}.json")
            rows[fb["student"]] = row_of(fb)
            write_gradebook(out, a, rows)
        return fb

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, p) for p in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"grading {a.key}", disable=not progress):
            fut.result()
    if not todo:
        write_gradebook(out, a, rows)
    return rows
