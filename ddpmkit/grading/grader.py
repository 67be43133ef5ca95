"""``ddpmkit grade``: grade a class's notebooks in sandboxes, compare outside them.

One submission goes through five steps, each a function with typed data between them:

1. ``probe``       the path is checked before it is opened (a regular file, not a link,
                   not too large) and read once, with a bound            -> ``Submission``
2. ``prepare``     the notebook is parsed as data (never executed here) and the cells
                   to run are chosen                                      -> ``Plan``
3. ``draw``        fresh inputs for every question (from the grading seed) and their
                   float64 references with tolerances, in this process    -> ``Expected``
4. ``run``         the sandbox runs the cells, then answers one call per case; a crash
                   or a timeout ends that question only, within one time budget for the
                   whole submission                                        -> ``Transcript``
5. ``score``       every answer is judged against its reference; one point per case
                                                                           -> feedback

The gradebook (CSV) and each student's feedback (JSON) are written atomically after every
submission, so an interrupted batch resumes with ``--resume`` and loses nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import stat
import sys
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_json
from ..common import atomic_write
from . import notebooks
from .assignments import Assignment, get_assignment, hidden_cases
from .inside.wire import FrameError, decode, encode, pack
from .sandbox import NOT_ISOLATED, Isolation, Limits, RunResult, Session, Zygote, ZygoteError, resolve_isolation
from .sanitize import sanitized_root
from .spec import REFERENCE_LOCK, Case, Expected, Question, describe_case, encode_case, expected_outputs, judge_with_hint, rule_violation

CUDA_HINT = " The grader has no GPU: use the device of your inputs (x.device) instead of .cuda() or 'cuda'."
FAILED_FILE = "not graded: the grader failed on this file"


# ---- 1. probe: the path, before anything is opened ----------------------------------------
@dataclass
class Submission:
    path: Path
    student: str
    data: bytes | None  # the file's bytes, read once; None when refused
    sha256: str | None
    refused: str | None = None  # why the file was not graded


def probe(path: Path, student: str) -> Submission:
    """Type and size first (``lstat``: a link is never followed), then one bounded read
    through a descriptor opened without following links and without blocking."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Submission(path, student, None, None, f"cannot read the submission: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return Submission(path, student, None, None, "the submission is a symbolic link; links are not followed: submit the notebook file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "not a regular file")
        return Submission(path, student, None, None, f"the submission is {kind}, not a notebook file")
    limit = notebooks.MAX_NOTEBOOK_BYTES
    if st.st_size > limit:
        return Submission(path, student, None, None,
                          f"the file is {st.st_size / 2**20:.0f} MB, over the {limit >> 20} MB limit; clear the outputs and submit again")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return Submission(path, student, None, None, f"cannot open the submission: {exc.strerror}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the two looks
            return Submission(path, student, None, None, "the submission changed while it was being read; submit it again")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, 1 << 20)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    digest = hashlib.sha256(data).hexdigest()
    if size > limit:
        return Submission(path, student, None, digest, f"the file grew over the {limit >> 20} MB limit while it was read")
    return Submission(path, student, data, digest)


# ---- 4. run: the transcript of one submission's sandboxed runs ---------------------------------
@dataclass
class CellEvent:
    label: str
    error: str
    traceback: str
    questions: list[str] = field(default_factory=list)  # the questions an answer cell defines


@dataclass
class Answer:
    """What the sandbox sent back for one case."""

    arrays: list[np.ndarray] | None = None  # the outputs (None: the call raised)
    types: list[str] = field(default_factory=list)  # Python type of each output
    module: str = ""  # __module__ of the graded function
    error: str = ""  # the exception, when the call raised
    names: list[str] = field(default_factory=list)  # callables defined, when the asked name was not
    mutated: list[int] = field(default_factory=list)  # arguments the call modified in place
    grad: str | None = None  # ok / none / zero, for a loss that must back-propagate
    too_large: int | None = None  # bytes, when the output was too large to send back


@dataclass
class Transcript:
    cells: list[CellEvent] = field(default_factory=list)  # cells that raised (first run)
    answers: dict[tuple[str, int], Answer] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # question -> why its remaining cases were not answered
    notes: list[str] = field(default_factory=list)
    helpers: dict[str, int] = field(default_factory=dict)  # question -> calls answered by a reference helper
    given: dict[str, float] = field(default_factory=dict)  # question -> seconds it was given (its share of the budget)
    output: str = ""
    output_bytes: int = 0
    status: str = "graded"
    seconds: float = 0.0


def read_answer(header: dict, arrays: list[np.ndarray]) -> Answer:
    """A typed answer from a result or call_error header, every field checked."""

    def strings(v) -> list[str]:
        return [str(x)[:200] for x in v[:200]] if isinstance(v, list) else []

    if header.get("t") == "result":
        types = strings(header.get("types"))
        mutated = [int(i) for i in header.get("mutated", []) if isinstance(i, int)] if isinstance(header.get("mutated"), list) else []
        grad = header.get("grad") if header.get("grad") in ("ok", "none", "zero") else None
        return Answer(arrays=arrays, types=types, module=str(header.get("module", ""))[:200], mutated=mutated, grad=grad)
    too_large = header.get("too_large")
    return Answer(error=str(header.get("error", "error"))[:4000], names=strings(header.get("names")),
                  too_large=too_large if isinstance(too_large, int) else None)


def _plain_ints(obj):
    """The plain integers of a JSON value description (``{"value": 7}``), at any depth."""
    if isinstance(obj, dict):
        if set(obj) == {"value"} and type(obj["value"]) is int:
            yield obj["value"]
        else:
            for v in obj.values():
                yield from _plain_ints(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _plain_ints(v)


@dataclass
class HelperBounds:
    """The sizes a helper call made during one case may ask the grader's own process for: at
    most ``SLACK`` times the largest of that case's inputs, in entries and in integer values
    (a size such as ``dim``, a step index)."""

    elements: int
    integer: int
    SLACK = 4

    @classmethod
    def of_case(cls, spec: dict, arrays: list[np.ndarray]) -> HelperBounds:
        ints = [abs(v) for v in _plain_ints(spec)] + [d for a in arrays for d in a.shape]
        ints += [int(np.abs(a).max()) for a in arrays if a.dtype.kind in "iu" and a.size]
        return cls(cls.SLACK * max([a.size for a in arrays] + [1]), cls.SLACK * max(ints + [1]))

    def refuse(self, value) -> str | None:
        """Why ``value`` (decoded arguments) is too large to compute here, or None."""
        if isinstance(value, (list, tuple)):
            return next((w for v in value if (w := self.refuse(v))), None)
        if isinstance(value, dict):
            return self.refuse(list(value.values()))
        if isinstance(value, torch.nn.Module):
            return self.refuse([p.detach() for p in value.parameters()])
        if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
            a = np.asarray(value.detach() if isinstance(value, torch.Tensor) else value)
            if a.size > self.elements:
                return f"an array of {a.size:,} entries, more than {self.elements:,}"
            if a.size == 1 and a.dtype.kind in "iu" and abs(int(a.reshape(()))) > self.integer:
                return f"the value {int(a.reshape(())):,}, more than {self.integer:,}"
        elif isinstance(value, int) and abs(value) > self.integer:
            return f"the value {value:,}, more than {self.integer:,}"
        return None


def _helper_reply(a: Assignment, name: str, header: dict, arrays: list[np.ndarray], bounds: HelperBounds) -> bytes:
    """The reference answer to a helper call the student's code made during a call, computed in
    this process only at the sizes of the case it was made in."""
    q, who = a.question(name), f"{name} (the grader's reference)"
    try:
        args, kwargs = decode(header.get("args"), arrays), decode(header.get("kwargs"), arrays)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("not a list of arguments")
    except (ValueError, TypeError) as exc:
        return pack({"t": "helper_error", "error": f"{who} could not read the arguments it was given: {exc}"})
    why = bounds.refuse([args, kwargs])
    if why:
        return pack({"t": "helper_error", "error": f"{who} was not called: one argument is {why} ({HelperBounds.SLACK} times the "
                                                   "largest in this case's inputs); call it at the sizes of the question's inputs"})
    try:
        with torch.no_grad(), REFERENCE_LOCK:
            out = q.reference(*args, **kwargs)
        out_arrays: list[np.ndarray] = []
        return pack({"t": "helper_result", "value": encode(out, out_arrays)}, out_arrays)
    except Exception as exc:  # noqa: BLE001 - the student called the helper with arguments the reference cannot take
        return pack({"t": "helper_error", "error": f"{who} could not be called with these arguments: {type(exc).__name__}: {str(exc)[:300]}"})


@dataclass
class _Cells:
    done: bool = False  # every cell ran and the harness said so
    started: bool = False  # the harness sent anything at all (else the sandbox never started)
    label: str | None = None  # the last cell started
    garbled: str | None = None  # why the frames stopped making sense, if they did


def _run_cells(session: Session, plan: notebooks.Plan, tr: Transcript, deadline: float, first: bool) -> _Cells:
    """Read the cells' frames until ``cells_done``."""
    out = _Cells()
    try:
        while (frame := session.receive(deadline)) is not None:
            out.started = True
            head, _ = frame
            t = head.get("t")
            if t == "cell":
                out.label = str(head.get("label", "?"))[:200]
            elif t == "cell_error" and first:
                i = head.get("i")
                known = isinstance(i, int) and 0 <= i < len(plan.cells)
                tr.cells.append(CellEvent(plan.cells[i]["label"] if known else "?", str(head.get("error", ""))[:4000],
                                          str(head.get("traceback", ""))[:4000], plan.cells[i]["questions"] if known else []))
            elif t == "seccomp" and not head.get("ok") and first:
                tr.notes.append(f"the process-creation filter could not be installed: {str(head.get('error'))[:200]}")
            elif t == "cells_done":
                out.done = True
                return out
    except FrameError as exc:
        out.garbled = str(exc)
    return out


def question_end(limits: Limits, n_questions: int, n_after: int, budget_end: float) -> float:
    """When the question starting now must end: after at most ``--question-timeout``, and never
    so late that the ``n_after`` questions after it have less than their guaranteed share each,
    ``min(question_timeout, timeout / (n_questions + 1))`` (the cells get the remaining share)."""
    now = time.monotonic()
    share = min(limits.question_timeout, limits.timeout / (n_questions + 1))
    left = budget_end - now
    return now + max(min(share, left), min(limits.question_timeout, left - share * n_after))


def _await_answer(session: Session, a: Assignment, q: Question, k: int, nonce: str, tr: Transcript, q_end: float,
                  bounds: HelperBounds) -> Answer | None:
    """Read frames until the answer to call (q, k) arrives, answering its helper calls; None
    when the run ended or the question's time ran out. ``FrameError`` for garbled frames."""
    while (frame := session.receive(q_end)) is not None:
        head, arrs = frame
        if head.get("nonce") != nonce:
            tr.notes.append(f"a record not sent in answer to a call was ignored ({q.name}, case {k + 1})")
        elif head.get("t") == "helper" and head.get("name") in q.uses:
            tr.helpers[q.name] = tr.helpers.get(q.name, 0) + 1
            if not session.send(_helper_reply(a, str(head["name"]), head, arrs, bounds), q_end):
                return None
        elif head.get("t") in ("result", "call_error") and head.get("q") == q.name and head.get("case") == k:
            return read_answer(head, arrs)
        else:
            tr.notes.append(f"an unexpected record during {q.name}, case {k + 1}, was ignored")
    return None


def _run_calls(session: Session, a: Assignment, questions: list[Question], cases: dict[str, list[Case]], tr: Transcript,
               limits: Limits, seed: int, budget_end: float) -> tuple[str | None, str | None]:
    """One call per case, each answered (or not) before the next. Returns (the question
    during which the run ended, why the frames stopped making sense), or (None, None)."""
    for j, q in enumerate(questions):
        qi = a.questions.index(q)  # the position in the assignment, not in this run: the same after a restart
        q_end = question_end(limits, len(a.questions), len(questions) - j - 1, budget_end)
        tr.given[q.name] = q_end - time.monotonic()
        for k, case in enumerate(cases[q.name]):
            spec, arrays = encode_case(case)
            nonce = secrets.token_hex(16)  # the answer must carry it: nothing written before this call can
            call = {"t": "call", "nonce": nonce, "q": q.name, "case": k, "module": q.module, "grad": q.grad, "no_grad": q.no_grad,
                    "uses": list(q.uses), "seed": (seed + 7919 * (qi + 1) + k) % 2**63, **spec}
            if not session.send(pack(call, arrays), q_end):
                return q.name, None
            try:
                answer = _await_answer(session, a, q, k, nonce, tr, q_end, HelperBounds.of_case(spec, arrays))
            except FrameError as exc:
                return q.name, str(exc)
            if answer is None:
                return q.name, None
            tr.answers[(q.name, k)] = answer
    return None, None


def _one_session(session: Session, a: Assignment, plan: notebooks.Plan, pending: list[Question], cases: dict[str, list[Case]],
                 tr: Transcript, limits: Limits, seed: int, budget_end: float, first: bool):
    """One run: the cells, then the calls of the pending questions. Returns (what the cells
    did, the question during which it ended, why the frames stopped making sense, the run's end)."""
    crashed, garbled, cells = None, None, _Cells()
    try:
        session.send(pack({"t": "setup", "cells": plan.cells, "seed": seed}), budget_end)
        cells = _run_cells(session, plan, tr, budget_end, first)
        garbled = cells.garbled
        if cells.done:
            crashed, garbled = _run_calls(session, a, pending, cases, tr, limits, seed, budget_end)
            if crashed is None:
                session.send(pack({"t": "end"}), time.monotonic() + 2)
    finally:
        result = session.close()
    return cells, crashed, garbled, result


def _ending(garbled: str | None, result: RunResult, limits: Limits, budget_end: float, given: float | None = None) -> str:
    """How a run ended, in words for the student."""
    if garbled:
        return f"sent the grader {garbled} (something wrote into the harness's pipe)"
    if result.timed_out and time.monotonic() >= budget_end - 0.5:
        return f"used up the submission's time budget of {limits.timeout:.0f} s"
    return result.ending(limits, given if given is not None else min(limits.question_timeout, limits.timeout))


def run(a: Assignment, plan: notebooks.Plan, cases: dict[str, list[Case]], limits: Limits, mode, seed: int,
        zygote: Zygote | None = None) -> Transcript:
    """Run the sandbox until every case has an answer or a reason why not (step 4).

    One time budget (``limits.timeout``) covers the whole submission; a question may use
    at most ``limits.question_timeout`` of it. After a crash or a timeout inside a
    question, that question's remaining cases fail with the reason and a new run takes
    the questions after it."""
    tr = Transcript()
    t0 = time.monotonic()
    budget_end = t0 + limits.timeout
    root = sanitized_root(a.library)
    pending = list(a.questions)
    first = True
    while pending:
        if time.monotonic() >= budget_end:
            for q in pending:
                tr.failures[q.name] = f"not graded: the submission's time budget of {limits.timeout:.0f} s ran out before this question"
            tr.status = "graded (time budget ran out)"
            break
        try:
            session = Session(root, limits, mode, seed, zygote)
        except ZygoteError as exc:  # fall back to a fresh sandbox: slower, the same isolation
            tr.notes.append(f"graded in a fresh sandbox ({exc})")
            zygote = None
            session = Session(root, limits, mode, seed)
        cells, crashed, garbled, result = _one_session(session, a, plan, pending, cases, tr, limits, seed, budget_end, first)
        if not cells.started and not result.timed_out:  # the sandbox itself failed: never the notebook's fault
            tail = result.output.strip().splitlines()[-1:] or ["no output"]
            if zygote is not None:
                tr.notes.append(f"a forked run could not start ({tail[0][:300]}); graded in a fresh sandbox")
                zygote = None
                continue
            for q in pending:
                tr.failures[q.name] = "not graded: the grader's sandbox could not start (not your notebook's doing); ask to be graded again"
            tr.status = f"grader error: the sandbox could not start: {tail[0][:300]}"
            break
        if first:
            tr.output, tr.output_bytes = result.output, result.output_bytes
            if result.output_bytes > limits.output_kb * 1024:
                tr.notes.append(f"the notebook printed {result.output_bytes / 2**20:.1f} MB; only the first {limits.output_kb} KB are kept")
        first = False
        ending = _ending(garbled, result, limits, budget_end, tr.given.get(crashed) if crashed else None)
        if not cells.done:  # the process ended before the calls: nothing more can run
            for q in pending:
                tr.failures[q.name] = f"not graded: the notebook {ending} while running {cells.label or 'its first cell'}"
            tr.status = f"stopped in {cells.label}: {ending}"
            break
        if crashed is None:
            break
        tr.failures[crashed] = f"{ending} while calling {crashed}"
        tr.status = "graded (with a crash or timeout)"
        pending = pending[[q.name for q in pending].index(crashed) + 1 :]
    tr.seconds = time.monotonic() - t0
    return tr


# ---- 5. score ------------------------------------------------------------------------------------
CONFUSABLES = str.maketrans({"а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j",
                             "ѕ": "s", "ԁ": "d", "ɡ": "g", "ο": "o", "α": "a", "ν": "v", "ρ": "p", "τ": "t", "ι": "i",
                             "κ": "k", "Ѕ": "S", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O",
                             "Р": "P", "С": "C", "Т": "T", "Х": "X", "Ι": "I", "Τ": "T", "ℓ": "l", "\u200b": "", "\u200c": "", "\u200d": ""})


def skeleton(name: str) -> str:
    """A name with look-alike characters mapped to the ASCII letters they imitate."""
    return unicodedata.normalize("NFKC", name).translate(CONFUSABLES)


def _lookalike(name: str, names: list[str]) -> str:
    for n in names:
        if n != name and skeleton(n) == skeleton(name):
            odd = ", ".join(f"{c!r} (U+{ord(c):04X} {unicodedata.name(c, '?')})" for c in n if not c.isascii())
            return f"; you defined {n!r}, which differs from {name!r} only by look-alike characters: {odd}. Retype the name in plain ASCII"
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    if close:
        return f"; you defined {close[0]!r}: was it renamed? The grader calls the function by the name {name!r}"
    return ""


def case_verdict(q: Question, exp: Expected, ans: Answer) -> tuple[bool, str]:
    """One point or none, and the message for the student."""
    if ans.arrays is None:
        msg = ans.error
        if "NotImplementedError" in msg and "the function you are asked to write" in msg:
            return False, f"raised {msg.removeprefix('NotImplementedError: ')} (the library's answer is not available to graded code)"
        if "NotImplementedError" in msg:
            return False, "not implemented (the cell still raises NotImplementedError)"
        if ans.too_large is not None:
            return False, f"{msg}: return only what the question asks for"
        if msg.startswith("NameError") and ans.names:
            msg += _lookalike(q.name, ans.names)
        if "cuda" in msg.lower() or "nvidia" in msg.lower():
            msg += CUDA_HINT
        if q.no_grad and "does not require grad" in msg:
            msg += (". The notebook's callers run it without gradients (inside torch.no_grad()): take the gradient inside "
                    "`with torch.enable_grad():`")
        return False, f"raised {msg}"
    if ans.module.startswith("ddpmkit"):
        return False, f"this is the library's {ans.module}.{q.name}, not your code; write the function yourself"
    broken = rule_violation(q, ans.types, ans.mutated, ans.grad)
    if broken:
        return False, broken
    try:
        return judge_with_hint(q, exp, [np.asarray(x) for x in ans.arrays], ans.types)
    except Exception as exc:  # noqa: BLE001 - malformed arrays are the submission's fault
        return False, f"the output could not be read: {exc}"


@dataclass
class QuestionResult:
    name: str
    max_points: int
    cases: list[dict] = field(default_factory=list)  # {"ok": bool, "message": str}
    notes: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return sum(c["ok"] for c in self.cases)


def score(a: Assignment, cases: dict[str, list[Case]], expected: dict[str, list[Expected]], tr: Transcript,
          plan: notebooks.Plan | None) -> dict[str, QuestionResult]:
    results = {}
    for q in a.questions:
        r = QuestionResult(q.name, len(expected[q.name]), notes=list(plan.notes.get(q.name, [])) if plan else [])
        for k, exp in enumerate(expected[q.name]):
            ans = tr.answers.get((q.name, k))
            if ans is None:
                r.cases.append({"ok": False, "message": tr.failures.get(q.name, "not graded")})
            else:
                ok, msg = case_verdict(q, exp, ans)
                r.cases.append({"ok": ok, "message": msg if ok else f"{msg} [inputs: {describe_case(q, cases[q.name][k])}]"})
        if tr.helpers.get(q.name):
            r.notes.append(f"graded with the reference {', '.join(q.uses)} in place of yours (called {tr.helpers[q.name]} times), "
                           "so a mistake there costs only its own question")
        if any("is not defined" in c["message"] for c in r.cases):
            for cell in tr.cells:
                if q.name in cell.questions:
                    r.notes.append(f"its cell failed before defining it: {cell.error}")
        results[q.name] = r
    return results


# ---- one submission ------------------------------------------------------------------------
def student_id(path: Path, assignment: Assignment) -> str:
    """``alice.ipynb`` -> alice; ``alice/a1_forward.ipynb`` -> alice."""
    stem = Path(assignment.source).stem
    return path.parent.name if path.stem == stem else path.stem


@lru_cache(maxsize=8)
def _draw_fixed(key: str, seed: int) -> tuple[dict[str, list[Case]], dict[str, list[Expected]]]:
    """``draw`` for a seed given by the instructor (``--seed``): every submission shares it,
    so it is computed once per batch (the cases and references are only read)."""
    return draw(get_assignment(key), seed)


def draw(a: Assignment, seed: int) -> tuple[dict[str, list[Case]], dict[str, list[Expected]]]:
    """Step 3: the hidden cases and their references (float64, with tolerances). One drawing at
    a time in this process: PyTorch's default dtype and global generator are shared by threads."""
    with REFERENCE_LOCK:
        rng = np.random.default_rng(seed)
        cases = {q.name: hidden_cases(q, rng) for q in a.questions}
        expected = {q.name: [expected_outputs(q, c, seed + 101 * k) for k, c in enumerate(cases[q.name])] for q in a.questions}
    return cases, expected


def grade_submission(
    assignment: Assignment,
    path: Path | Submission,
    limits: Limits | None = None,
    isolation: Isolation = "auto",
    seed: int | None = None,
    zygote: Zygote | None = None,
) -> dict:
    """Grade one notebook; returns its feedback (what ``feedback/<student>.json`` holds).
    With ``zygote`` (bubblewrap only) its runs are forked from it instead of started afresh."""
    limits = limits or Limits()
    mode = resolve_isolation(isolation)
    fixed = seed is not None
    seed = secrets.randbits(62) if seed is None else int(seed)
    t0 = time.monotonic()
    sub = path if isinstance(path, Submission) else probe(Path(path), student_id(Path(path), assignment))
    feedback = {
        "student": sub.student, "assignment": assignment.key, "submission": str(sub.path), "sha256": sub.sha256,
        "isolation": "bubblewrap" if mode == "bwrap" else NOT_ISOLATED, "seed": seed,
        "time_budget": {"submission_s": limits.timeout, "question_s": min(limits.question_timeout, limits.timeout)},
        "notes": [], "cells": [], "output": "",
        "instructor": {"flags": [], "forms": {}},  # never shown to the student: the batch keeps it apart (``INSTRUCTOR_DIR``)
    }
    cases, expected = _draw_fixed(assignment.key, seed) if fixed and assignment is get_assignment(assignment.key) else draw(assignment, seed)  # 3.
    plan, status = None, "graded"
    tr = Transcript()
    try:
        if sub.refused:
            raise notebooks.NotebookError(sub.refused)
        submitted, notes = notebooks.read_submission(sub.data)  # 2.
        _refuse_other_assignment(assignment, submitted)
        feedback["notes"] += notes
        source = notebooks.assignments_dir() / "source" / assignment.source
        release = notebooks.release_cached(source, source.stat().st_mtime_ns)
        plan = notebooks.plan_cells(release, submitted, [q.name for q in assignment.questions], notebooks.reference_forms_cached(source))
        feedback["notes"] += plan.general
        feedback["instructor"] = {"flags": list(plan.copies.values()), "forms": plan.forms}
    except notebooks.NotebookError as exc:
        for q in assignment.questions:
            tr.failures[q.name] = f"not graded: {exc}"
        status = f"unreadable: {exc}" if not sub.refused else f"refused: {exc}"
    if plan is not None:
        tr = run(assignment, plan, cases, limits, mode, seed, zygote)  # 4.
        status = tr.status
        feedback["notes"] += tr.notes
        feedback["cells"] = [{"cell": c.label, "error": c.error, "traceback": c.traceback} for c in tr.cells]
        feedback["output"] = tr.output
    results = score(assignment, cases, expected, tr, plan)  # 5.
    return _finish(feedback, results, t0, status)


def _refuse_other_assignment(assignment: Assignment, submitted) -> None:
    """A notebook whose graded cells are all another assignment's is refused by that name."""
    from .assignments import ASSIGNMENTS

    ids = {q for c in submitted.cells for q in notebooks.grading_meta(c).get("questions", [])}
    if ids and not ids & {q.name for q in assignment.questions}:
        other = [a for a in ASSIGNMENTS.values() if ids & {q.name for q in a.questions}]
        if other:
            raise notebooks.NotebookError(f"this is the notebook of {other[0].key.upper()} ({other[0].title}), not of "
                                          f"{assignment.key.upper()} ({assignment.title}): submit {Path(assignment.source).stem}.ipynb")


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
    return (["student", "points", "max_points"] + [q.name for q in assignment.questions]
            + ["status", "flags", "isolation", "sha256", "submission", "graded_at"])


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
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def row_of(feedback: dict, instructor: dict) -> dict:
    return {
        "student": feedback["student"], "points": feedback["points"], "max_points": feedback["max_points"],
        **{q: v["points"] for q, v in feedback["questions"].items()},
        "status": feedback["status"], "flags": " | ".join(instructor.get("flags", [])),
        "isolation": "bubblewrap" if feedback["isolation"] == "bubblewrap" else "none (NOT isolated)",
        "sha256": feedback["sha256"], "submission": feedback["submission"], "graded_at": feedback["graded_at"],
    }


def _fingerprint(sub: Submission) -> str:
    return sub.sha256 or f"refused:{sub.refused}"


# ---- for the instructor only: copy flags and the class similarity report ---------------------------
INSTRUCTOR_DIR = ".instructor"  # beside the feedback, one file per student: flags and normal forms, never shown to students
SIMILAR = 0.85  # pairs of answers at least this similar (Jaccard of their normal forms' 8-token shingles) are reported
MAX_PAIRS = 20  # per question


def _shingles(form: str, k: int = 8) -> set[int]:
    import re

    tokens = re.findall(r"\w+|[^\w\s]", form)
    return {hash(tuple(tokens[i : i + k])) for i in range(max(1, len(tokens) - k + 1))}


def similar_pairs(forms: dict[str, dict[str, list]], min_nodes: int) -> list[dict]:
    """The most similar pairs of students per question, by their answers' normal forms (local
    names renamed, docstrings dropped); answers under ``min_nodes`` nodes are left out."""
    rows = []
    questions = sorted({q for f in forms.values() for q in f})
    for q in questions:
        have = {s: (f[q][0], _shingles(f[q][0])) for s, f in forms.items() if q in f and f[q][1] >= min_nodes}
        pairs = []
        names = sorted(have)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                (fa, sa), (fb, sb) = have[a], have[b]
                sim = len(sa & sb) / len(sa | sb)
                if sim >= SIMILAR:
                    pairs.append({"question": q, "student_a": a, "student_b": b, "similarity": round(sim, 3), "identical": fa == fb})
        rows += sorted(pairs, key=lambda r: (-r["similarity"], r["student_a"], r["student_b"]))[:MAX_PAIRS]
    return rows


def write_similarity(a: Assignment, rows: dict[str, dict], feedback_dir: Path, out: Path) -> Path:
    """``<gradebook>-similarity.csv``, atomically: for each question, the pairs of this class's
    students whose answers are most alike. Evidence for the instructor to look at, not a verdict."""
    forms = {}
    for sid in rows:
        f = feedback_dir / INSTRUCTOR_DIR / f"{sid}.json"
        if f.is_file():
            forms[sid] = json.loads(f.read_text()).get("forms", {})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["question", "student_a", "student_b", "similarity", "identical"])
    w.writeheader()
    w.writerows(similar_pairs(forms, notebooks.MIN_COPY_NODES))
    path = out.with_name(f"{out.stem}-similarity.csv")
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))
    return path


# ---- shards: one slice of a class per job, merged afterwards ----------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 1 <= K <= N: the K-th of N slices of a class."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N with whole numbers, such as 3/8; got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


def in_shard(student: str, shard: tuple[int, int]) -> bool:
    """Whether ``student`` belongs to slice K of N. The slice is a hash of the student's id, so
    it is the same on every machine and for any order or subset of the paths given: every
    student is in exactly one slice, and a job array can pass every job the same file list."""
    k, n = shard
    return int.from_bytes(hashlib.sha256(student.encode()).digest()[:8], "big") % n == k - 1


def shard_record_path(out: Path) -> Path:
    """Where a shard's completion record lies, beside its gradebook."""
    return Path(out).with_name(f"{Path(out).stem}.shard.json")


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
    exports: tuple[str, ...] = (),
    fork: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict[str, dict]:
    """Grade ``submissions`` into the gradebook ``out`` (CSV) and ``feedback_dir`` (JSON each).

    With ``shard=(K, N)`` only the students of slice K of N are graded (:func:`in_shard`), and
    a record of the slice (its students, written atomically when the slice is done) is left
    beside ``out`` for :func:`merge_gradebooks`. Every path gets a row, whatever it is. ``resume`` skips a student whose row has the
    same submission checksum, and never retries a file that stopped the grader itself
    (its start marker is still there): that file gets a row saying so. ``seed`` fixes
    every submission's inputs; by default each draws its own. ``exports`` adds
    ``gradescope`` (results.json per student) and/or ``canvas`` (a Canvas CSV). With
    bubblewrap, runs are forked from one sandbox that has the libraries imported
    (``sandbox.Zygote``); ``fork=False`` starts a fresh sandbox for every run instead.
    """
    a = get_assignment(assignment) if isinstance(assignment, str) else assignment
    mode = _check_batch(isolation, jobs, exports)
    out = Path(out)
    feedback_dir = Path(feedback_dir) if feedback_dir else out.parent / f"{out.stem}-feedback"
    feedback_dir.mkdir(parents=True, exist_ok=True)
    rows = read_gradebook(out) if resume else {}
    ids, todo = _batch_todo(a, submissions, shard, feedback_dir, rows, resume)
    from tqdm.auto import tqdm

    limits = limits or Limits()
    zygote = Zygote(sanitized_root(a.library), limits) if fork and mode == "bwrap" and todo else None
    one = _Recorder(a, out, feedback_dir, exports, rows, threading.Lock(), limits, mode, seed, zygote)
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, sub) for sub in todo]
            for fut in tqdm(as_completed(futures), total=len(futures), desc=f"grading {a.key}", disable=not progress):
                fut.result()
    finally:
        if zygote is not None:
            zygote.close()
    _finish_batch(a, rows, out, feedback_dir, exports, shard, ids)
    return rows


@dataclass
class _Recorder:
    """Grades one submission of a batch and records it: a start marker, then its feedback, then
    its gradebook row, each written atomically; the marker goes when the row is there."""

    a: Assignment
    out: Path
    feedback_dir: Path
    exports: tuple[str, ...]
    rows: dict
    lock: threading.Lock
    limits: Limits
    mode: str
    seed: int | None
    zygote: Zygote | None

    def __call__(self, sub: Submission) -> dict:
        marker = self.feedback_dir / f".{sub.student}.started"
        atomic_write(marker, lambda f: f.write(_fingerprint(sub).encode()))
        try:
            try:
                fb = grade_submission(self.a, sub, self.limits, self.mode, self.seed, self.zygote)
            except Exception as exc:  # noqa: BLE001 - never lose the batch to one file: the row says what happened
                fb = _failed_feedback(self.a, sub, self.mode, self.seed, exc)
            private = fb.pop("instructor", {})
            with self.lock:  # feedback first, then the gradebook row: a crash never leaves a row without its feedback
                save_json(fb, self.feedback_dir / f"{fb['student']}.json")
                save_json(private, self.feedback_dir / INSTRUCTOR_DIR / f"{fb['student']}.json")
                for name in self.exports:
                    EXPORTS[name](self.a, fb, self.out, self.feedback_dir)
                self.rows[fb["student"]] = row_of(fb, private)
                write_gradebook(self.out, self.a, self.rows)
        except BaseException:
            marker.unlink(missing_ok=True)  # an interruption of the grader, not the file's doing: retry it next time
            raise
        marker.unlink(missing_ok=True)
        return fb


def _check_batch(isolation: Isolation, jobs: int, exports: tuple[str, ...]) -> str:
    """The isolation the batch runs with, after refusing what cannot apply."""
    mode = resolve_isolation(isolation)
    if mode == "none":
        print("WARNING: " + NOT_ISOLATED, file=sys.stderr)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    unknown = set(exports) - set(EXPORTS)
    if unknown:
        raise ValueError(f"unknown export {', '.join(sorted(unknown))}; choose among {', '.join(EXPORTS)}")
    return mode


def _batch_todo(a: Assignment, submissions: list[Path], shard, feedback_dir: Path, rows: dict, resume: bool):
    """(student -> path for this batch or slice, the submissions still to grade). ``resume`` skips
    a student whose row has the same checksum and refuses a file that stopped the grader before."""
    ids: dict[str, Path] = {}
    for p in map(Path, submissions):
        sid = student_id(p, a)
        if sid in ids:
            raise ValueError(f"{ids[sid]} and {p} both belong to student {sid!r}; rename one of them")
        ids[sid] = p
    if shard is not None:
        ids = {sid: p for sid, p in ids.items() if in_shard(sid, shard)}
    todo = []
    for sid, p in ids.items():
        sub = probe(p, sid)
        marker = feedback_dir / f".{sid}.started"
        if resume and sid in rows and rows[sid].get("sha256") == (sub.sha256 or ""):
            continue
        if resume and marker.exists() and marker.read_text().strip() == _fingerprint(sub):
            sub.refused = ("the grader itself stopped while grading this file in an earlier run (out of memory, or killed); "
                           "it was not retried: grade it alone to see why")
        todo.append(sub)
    return ids, todo


def _failed_feedback(a: Assignment, sub: Submission, mode: str, seed: int | None, exc: Exception) -> dict:
    """The feedback of a file the grader itself failed on: every case says so."""
    return _finish({"student": sub.student, "assignment": a.key, "submission": str(sub.path), "sha256": sub.sha256,
                    "isolation": "bubblewrap" if mode == "bwrap" else NOT_ISOLATED, "seed": seed, "notes": [], "cells": [], "output": ""},
                   {q.name: QuestionResult(q.name, q.n_cases, [{"ok": False, "message": FAILED_FILE}] * q.n_cases) for q in a.questions},
                   time.monotonic(), f"grader error: {type(exc).__name__}: {str(exc)[:300]}")


def _finish_batch(a: Assignment, rows: dict, out: Path, feedback_dir: Path, exports: tuple[str, ...], shard, ids: dict) -> None:
    """The gradebook, the similarity report and the exports of the whole batch; a slice's record last."""
    write_gradebook(out, a, rows)
    write_similarity(a, rows, feedback_dir, out)
    if "canvas" in exports:
        write_canvas(a, rows, out)
    if shard is not None:  # the slice is complete: say so, last
        save_json({"assignment": a.key, "shard": list(shard), "students": sorted(ids), "gradebook": out.name,
                   "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}, shard_record_path(out))


def merge_gradebooks(gradebooks: list[Path], out: Path, *, exports: tuple[str, ...] = ()) -> dict[str, dict]:
    """Combine the gradebooks of the slices of one class into ``out``, written atomically.

    Refused, naming the files, when: a file is not a gradebook of one assignment; they are of
    different assignments; a student has two different rows; and, for slices graded with
    ``--shard``, when a slice's record is missing (its job did not finish), a slice of 1..N is
    missing or given twice, or a slice's gradebook lacks a row for one of its students."""
    from .assignments import ASSIGNMENTS

    paths = [Path(g) for g in gradebooks]
    if not paths:
        raise ValueError("give the gradebooks to merge")
    keys = set()
    books: dict[Path, dict[str, dict]] = {}
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: no such gradebook")
        with open(p, newline="") as f:
            header = next(csv.reader(f), [])
        match = [k for k, a in ASSIGNMENTS.items() if header == gradebook_columns(a)]
        if not match:
            raise ValueError(f"{p} is not a gradebook written by `ddpmkit grade` (its columns match no assignment)")
        keys.add(match[0])
        books[p] = read_gradebook(p)
    if len(keys) > 1:
        raise ValueError(f"the gradebooks are of different assignments ({', '.join(sorted(keys))}); merge each assignment alone")
    a = ASSIGNMENTS[keys.pop()]
    records = {p: shard_record_path(p) for p in paths}
    if any(r.exists() for r in records.values()):
        _check_shards(a, books, records)
    merged: dict[str, dict] = {}
    source: dict[str, Path] = {}
    for p, rows in books.items():
        for sid, row in rows.items():
            if sid in merged and merged[sid] != row:
                raise ValueError(f"student {sid!r} has different rows in {source[sid]} and {p}; grade them once, or drop one file")
            merged[sid], source[sid] = row, p
    write_gradebook(Path(out), a, merged)
    if "canvas" in exports:
        write_canvas(a, merged, Path(out))
    return merged


def _check_shards(a: Assignment, books: dict[Path, dict[str, dict]], records: dict[Path, Path]) -> None:
    seen: dict[int, Path] = {}
    total = None
    for p, rec_path in records.items():
        if not rec_path.exists():
            raise ValueError(f"{p} has no completion record ({rec_path.name}): its slice did not finish; grade it again with the same --shard")
        rec = json.loads(rec_path.read_text())
        k, n = rec["shard"]
        if rec.get("assignment") != a.key:
            raise ValueError(f"{rec_path} is a slice of {rec.get('assignment')!r}, not of {a.key!r}")
        if total is not None and n != total:
            raise ValueError(f"{p} is slice {k}/{n} but another file is a slice of {total}; merge the slices of one run")
        total = n
        if k in seen:
            raise ValueError(f"{seen[k]} and {p} are both slice {k}/{n}")
        seen[k] = p
        missing = sorted(set(rec["students"]) - set(books[p]))
        if missing:
            raise ValueError(f"{p} (slice {k}/{n}) lacks the rows of {len(missing)} of its students ({', '.join(missing[:5])}); "
                             "grade the slice again")
    absent = sorted(set(range(1, total + 1)) - set(seen))
    if absent:
        raise ValueError(f"slice(s) {', '.join(f'{k}/{total}' for k in absent)} missing: give every slice's gradebook "
                         "(or finish the jobs that did not)")


# ---- exports -------------------------------------------------------------------------------------
def gradescope_results(fb: dict) -> dict:
    """Gradescope's autograder ``results.json``: one test per question, visible to the student."""
    tests = []
    for name, qv in fb["questions"].items():
        lines = [f"case {i + 1}: {'ok' if c['ok'] else c['message']}" for i, c in enumerate(qv["cases"])] + qv["notes"]
        tests.append({"name": name, "score": qv["points"], "max_score": qv["max_points"], "output": "\n".join(lines),
                      "visibility": "visible"})
    notes = fb.get("notes", []) + [f"cell {c['cell']}: {c['error']}" for c in fb.get("cells", [])]
    return {"score": fb["points"], "tests": tests, "visibility": "visible", "stdout_visibility": "hidden",
            "output": "\n".join([f"status: {fb['status']}", f"isolation: {fb['isolation']}"] + notes)}


def _export_gradescope(a: Assignment, fb: dict, out: Path, feedback_dir: Path) -> None:
    save_json(gradescope_results(fb), feedback_dir / "gradescope" / fb["student"] / "results.json")


def write_canvas(a: Assignment, rows: dict[str, dict], out: Path) -> None:
    """A CSV that Canvas's gradebook imports: Student, ID, SIS User ID, Section, then the
    assignment's column with its points (Canvas matches rows by SIS User ID)."""
    col = f"{a.title} ({a.key})"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", col])
    w.writerow(["    Points Possible", "", "", "", "", a.max_points])
    for sid in sorted(rows):
        w.writerow([sid, "", sid, sid, "", rows[sid]["points"]])
    atomic_write(out.with_name(f"{out.stem}-canvas.csv"), lambda f: f.write(buf.getvalue().encode()))


EXPORTS = {"gradescope": _export_gradescope, "canvas": lambda a, fb, out, d: None}
