"""What a question is, how its inputs travel, and how an answer is compared with the reference.

Both the students' self-checks (in their own kernel, fixed seed) and the grader (inputs
drawn at grading time, answers computed in a sandbox) use these pieces, so a self-check
and a hidden check judge an answer by exactly the same rule.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .inside.answers import invoke, output_arrays
from .inside.toys import TOYS
from .inside.wire import encode
from .tolerance import RUNS, SAFETY, U32, RoundingNoise, perturb_input, tolerance

SELF_CHECK_SEED = 1234  # the self-checks' visible inputs; the grader never reuses one of their cases


# ---- arguments -----------------------------------------------------------------------------
@dataclass
class AsNumpy:
    """An argument passed as a NumPy array (plain ``np.ndarray`` arguments become tensors)."""

    array: np.ndarray


@dataclass
class Toy:
    """An argument passed as a ``ToyModel`` with these weights (see ``inside/toys.py``)."""

    W: np.ndarray  # (D, D)
    c: np.ndarray  # (T, D)
    e: np.ndarray | None = None  # (K+1, D), the last row the null label


@dataclass
class ToyClassifier:
    """An argument passed as a ``ToyClassifier`` (see ``inside/toys.py``)."""

    W: np.ndarray  # (D, H)
    c: np.ndarray  # (T, H)
    V: np.ndarray  # (H, K)


TOY_KINDS = {Toy: "toy", ToyClassifier: "classifier"}  # argument class -> its kind on the wire


def toy_weights(a) -> list[np.ndarray | None]:
    """The weights of a stand-in network argument, in its constructor's order."""
    return [getattr(a, k) for k in TOYS[TOY_KINDS[type(a)]].WEIGHTS]


@dataclass
class Case:
    """One call: positional ``args``; for a module question ``args[0]`` is the constructor's
    argument list and ``state`` the weights loaded before the call."""

    args: tuple
    state: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Question:
    """One function (or ``nn.Module`` class) a student writes; one point per case.

    Tolerances are not set here: they are derived, case by case, from the arithmetic of
    the reference (``tolerance.py``)."""

    name: str  # what the notebook must define
    cases: Callable[[np.random.Generator], list[Case]]  # inputs, drawn from the generator
    reference: Callable[..., Any]  # the library's answer, same signature
    hint: str = ""  # what a wrong value usually means
    module: bool = False  # ``name`` is an nn.Module class: construct, load ``state``, call
    any_float: bool = False  # a float answer of any precision counts (metrics, not tensors)
    uses: tuple[str, ...] = ()  # other questions' functions this answer calls: graded with the reference in their place
    grad: bool = False  # the output must carry gradients to the stand-in network's parameters (a training loss)
    no_grad: bool = False  # the notebook says it must work when its caller runs without gradients: called under torch.no_grad()
    argmin: tuple[int, int] | None = None  # (labels output, scores output): a label whose score ties the best counts

    @property
    def n_cases(self) -> int:
        """Cases per grading (one point each); the same for every seed."""
        return len(self.cases(np.random.default_rng(0)))


@dataclass(frozen=True)
class Assignment:
    key: str  # a1 ... a5: what ``ddpmkit grade`` takes
    title: str
    source: str  # the solution source, relative to the repository's assignments/source
    questions: tuple[Question, ...] = field(default_factory=tuple)
    library: tuple[str, ...] = ()  # the library's functions that answer these questions: not callable in the sandbox

    def question(self, name: str) -> Question:
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(f"{self.key} has no question {name!r}; it has {', '.join(q.name for q in self.questions)}")

    @property
    def max_points(self) -> int:
        return sum(q.n_cases for q in self.questions)


def materialize(a, dtype: torch.dtype | None = None, rng: np.random.Generator | None = None):
    """The Python object a student's function receives for the argument spec ``a``; with
    ``dtype`` floating arrays are promoted (the float64 reference), with ``rng`` perturbed by
    one float32 rounding (the tolerance runs)."""

    def arr(w: np.ndarray) -> np.ndarray:
        if rng is not None:
            w = perturb_input(w, rng)
        return w.astype(np.float64) if dtype is torch.float64 and w.dtype.kind == "f" else w.copy()

    if isinstance(a, np.ndarray):
        return torch.from_numpy(arr(a))
    if isinstance(a, AsNumpy):
        return arr(a.array)
    if type(a) in TOY_KINDS:
        return TOYS[TOY_KINDS[type(a)]](*(torch.from_numpy(arr(w)) if w is not None else None for w in toy_weights(a)))
    return a


def call(q: Question, fn, case: Case, dtype: torch.dtype | None = None, rng: np.random.Generator | None = None, args=None):
    """Call ``fn`` (a function or, for a module question, a class) on ``case`` (or on ``args``,
    its materialized arguments), under ``torch.no_grad()`` when the question says callers may."""
    state = {k: materialize(v, dtype, rng) for k, v in (case.state or {}).items()}
    args = [materialize(a, dtype, rng) for a in case.args] if args is None else args
    with torch.no_grad() if q.no_grad else contextlib.nullcontext():
        if q.module and dtype is torch.float64:  # the module in float64 before its weights are loaded
            return invoke(lambda *init: fn(*init).double(), args, state, module=True)
        return invoke(fn, args, state, q.module)


def rule_violation(q: Question, types: list[str], mutated: list[int], grad: str | None) -> str | None:
    """The notebook's rules, whatever type the answer returned: inputs are not changed in place,
    and a training loss carries gradients to the network. The message, or None."""
    if mutated:
        which = ", ".join(str(i + 1) for i in mutated)
        return f"it modified its input argument(s) {which} in place; work on copies (x = x + ..., not x += ...)"
    if q.grad and grad != "ok":  # a NumPy value or a float cannot train either
        kind = types[0] if types else "value"
        why = (f"it returned a {kind}, not a tensor that requires grad (was it detached, computed under torch.no_grad(), "
               "or turned into a float or a NumPy value?)") if grad != "zero" \
            else "back-propagating the loss gives the network's parameters no gradient"
        return f"the loss cannot train the network: {why}"
    return None


to_arrays = output_arrays  # one reading of return values, here and in the sandbox


@dataclass
class Expected:
    """The reference answer to one case, as the comparison needs it."""

    values: list[np.ndarray]  # exact values (float64 for floating outputs)
    dtypes: list[np.dtype]  # the dtype an answer must return: the reference's on the case's own inputs
    tol: list[np.ndarray | None]  # per-entry tolerance of each floating output (None: exact)


REFERENCE_LOCK = threading.RLock()  # references change torch's process-wide default dtype: one at a time


@torch.no_grad()
def expected_outputs(q: Question, case: Case, seed: int = 0) -> Expected:
    with REFERENCE_LOCK:
        return _expected_outputs(q, case, seed)


def _expected_outputs(q: Question, case: Case, seed: int) -> Expected:
    """1. the reference on the case as given: the shapes and dtypes an answer returns;
    2. the reference in float64: the values; 3. the reference under rounding noise: the
    tolerances (``tolerance.py``). ``seed`` makes the noise reproducible."""
    plain = to_arrays(call(q, q.reference, case))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # tensors the reference creates itself are float64 too
    try:
        exact = to_arrays(call(q, q.reference, case, torch.float64))
        runs = []
        for k in range(RUNS):
            g = torch.Generator().manual_seed((seed * 1000 + k) % 2**63)
            with RoundingNoise(g):
                runs.append(to_arrays(call(q, q.reference, case, torch.float64, np.random.default_rng([seed, k]))))
    finally:
        torch.set_default_dtype(before)
    tols = []
    for i, e in enumerate(exact):
        tols.append(tolerance(e, [r[i] for r in runs]) if e.dtype.kind == "f" else None)
    values = [e if e.dtype.kind == "f" else p for e, p in zip(exact, plain)]
    return Expected(values, [p.dtype for p in plain], tols)


def case_key(case: Case) -> str:
    """A fingerprint of a case's inputs (to tell a hidden case from a visible one)."""
    import hashlib

    h = hashlib.sha256()

    def add(a):
        if isinstance(a, np.ndarray):
            h.update(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
        elif isinstance(a, (AsNumpy,)):
            add(a.array)
        elif type(a) in TOY_KINDS:
            h.update(TOY_KINDS[type(a)].encode())
            for w in toy_weights(a):
                add(w) if w is not None else h.update(b"-")
        else:
            h.update(repr(a).encode())

    for a in case.args:
        add(a)
    for k, v in sorted((case.state or {}).items()):
        h.update(k.encode())
        add(v)
    return h.hexdigest()


SCALARS = ("float", "int", "bool")  # Python types an answer may return where a tensor is asked for


LOWER_PRECISIONS = (("float16", 2.0**-11), ("bfloat16", 2.0**-8))  # unit roundoffs, finest first


def _digits_off(err: np.ndarray, e: np.ndarray) -> str:
    """The largest error relative to the output's scale, in words."""
    scale = float(np.abs(e).max()) if e.size else 0.0
    return f"{100 * float(err.max()) / (scale + 1e-300):.2g}%"


def judge(q: Question, exp: Expected, got: list[np.ndarray], types: list[str] | None = None) -> tuple[bool, str]:
    """Same number of outputs, then per output: kind, shape, dtype, finite, values. The
    first failure is the message, written for a student: what differs and how."""
    types = types or ["ndarray"] * len(got)
    n = len(exp.values)
    if not q.module and n == 1 and len(got) == 1 and exp.values[0].ndim == 0 and got[0].size == 1:
        got = [got[0].reshape(())]  # a scalar may come back as a one-element array
    if len(got) != n:
        return False, f"returned {len(got)} value(s), expected {n}"
    names = [f"output {i}" if n > 1 else "the output" for i in range(n)]
    for i, (which, e, g) in enumerate(zip(names, exp.values, got)):  # 1. kind and structure of every output first
        dt = exp.dtypes[i]
        if not q.any_float and i < len(types) and types[i] in SCALARS:
            return False, (f"{which} is a Python {types[i]}, expected a tensor of dtype {dt} and shape {tuple(e.shape)} "
                           "(keep the torch result; do not call .item() or float() on it)")
        if g.shape != e.shape:
            return False, f"{which} has shape {tuple(g.shape)}, expected {tuple(e.shape)} (check broadcasting and reshapes)"
        if q.any_float and g.dtype.kind in "fiub" and dt.kind == "f":
            pass  # a metric: a float of any precision (or an exact integer) counts
        elif g.dtype != dt:
            return False, f"{which} has dtype {g.dtype}, expected {dt} (keep the inputs' dtype; cast a float64 schedule with .to(x.dtype))"
        if g.dtype.kind == "f" and not np.isfinite(g).all():
            bad = ~np.isfinite(g)
            kind = "NaN" if np.isnan(g).any() else "infinite"
            return False, f"{which} has {kind} values at {int(bad.sum())} of {g.size} entries (a division by zero or the log of 0?)"
    for i, (which, e, g) in enumerate(zip(names, exp.values, got)):  # 2. then the values
        tol = exp.tol[i]
        if tol is None:
            close = g == e
            if q.argmin and i == q.argmin[0]:  # a label whose score is within tolerance of the best one counts
                j = q.argmin[1]
                s, st = exp.values[j], exp.tol[j]
                idx = np.clip(g.astype(np.int64), 0, s.shape[-1] - 1)[..., None]
                in_range = (g >= 0) & (g < s.shape[-1])
                close = close | (in_range & (np.take_along_axis(s, idx, -1)[..., 0] - s.min(-1) <= 2 * st.max(-1)))
            if not close.all():
                k = np.unravel_index(int(np.argmax(~close)), close.shape) if close.ndim else ()
                return False, (f"{which} differs at {int((~close).sum())} of {g.size} entries; the first is at index "
                               f"{tuple(int(j) for j in k)} (got {g[k].item()}, expected {e[k].item()})")
            continue
        err = np.abs(g.astype(np.float64) - e)
        ratio = err / tol
        if (ratio <= 1).all():
            continue
        k = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.ndim else ()
        where = f"at index {tuple(int(j) for j in k)} " if ratio.ndim else ""
        head = (f"{which} differs at {int((ratio > 1).sum())} of {g.size} entries; the worst {where}is "
                f"{float(g[k]):.8g}, expected {float(e[k]):.8g} (error {float(err[k]):.2g}, allowed {float(tol[k]):.2g})")
        worst = float(ratio.max())
        for name, unit in LOWER_PRECISIONS:  # within what that precision's rounding does to this case's formula?
            if worst <= unit / U32 / SAFETY * 4:
                return False, head + (f". The error is within what {name} rounding does to this computation (at most "
                                      f"{worst:.0f} times the float32 tolerance): most likely a precision problem ({name} "
                                      "arithmetic, a rounded constant such as 3.14) rather than a wrong formula")
        return False, head + f". The values are off by {_digits_off(err, e)} of the output's scale: a wrong value, not rounding"
        return False, head
    return True, "matches"


def judge_with_hint(q: Question, exp: Expected, got: list[np.ndarray], types: list[str] | None = None) -> tuple[bool, str]:
    ok, msg = judge(q, exp, got, types)
    if not ok and q.hint and "Python" not in msg:
        msg += f". Hint: {q.hint}"
    return ok, msg


def describe_case(q: Question, case: Case) -> str:
    """A case's inputs in a line a student can act on: each argument's name, shape and dtype,
    and its first values (a step index, a weight, a size)."""
    import inspect

    try:  # a module question: the constructor's arguments, then forward's
        params = [p for p in inspect.signature(q.reference.forward if q.module else q.reference).parameters if p != "self"]
    except (TypeError, ValueError):
        params = []
    names = ["constructor arguments", *params] if q.module else params
    parts = []
    for i, a in enumerate(case.args):
        name = names[i] if i < len(names) else f"argument {i + 1}"
        arr = a.array if isinstance(a, AsNumpy) else a
        if isinstance(arr, np.ndarray):
            head = ", ".join(f"{v:.4g}" if arr.dtype.kind == "f" else str(v) for v in arr.reshape(-1)[:4])
            more = ", ..." if arr.size > 4 else ""
            parts.append(f"{name}: {tuple(arr.shape)} {arr.dtype} [{head}{more}]")
        elif type(a) in TOY_KINDS:
            parts.append(f"{name}: the stand-in {TOY_KINDS[type(a)]} network")
        else:
            parts.append(f"{name}: {a!r}"[:80])
    return "; ".join(parts)


# ---- transport of inputs to the sandbox: the wire's one codec, never a pickle --------------------
def encode_case(case: Case) -> tuple[dict, list[np.ndarray]]:
    """The JSON description of one call and the arrays it carries: each argument as the
    student's function receives it (``materialize``), through ``inside.wire.encode``."""
    arrays: list[np.ndarray] = []
    args = [encode(materialize(a), arrays) for a in case.args]
    state = encode({k: materialize(v) for k, v in case.state.items()}, arrays) if case.state else None
    return {"args": args, "state": state}, arrays
