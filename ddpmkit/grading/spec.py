"""What a question is, how its inputs travel, and how an answer is compared with the reference.

Both the students' self-checks (in their own kernel, fixed seed) and the grader (inputs
drawn at grading time, answers computed in a sandbox) use these pieces, so a self-check
and a hidden check judge an answer by exactly the same rule.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .harness import invoke, output_arrays, toy_model_class

ToyModel = toy_model_class()


# ---- arguments -----------------------------------------------------------------------------
@dataclass
class AsNumpy:
    """An argument passed as a NumPy array (plain ``np.ndarray`` arguments become tensors)."""

    array: np.ndarray


@dataclass
class Toy:
    """An argument passed as a ``ToyModel`` with these weights (see ``harness.toy_model_class``)."""

    W: np.ndarray  # (D, D)
    c: np.ndarray  # (T, D)
    e: np.ndarray | None = None  # (K+1, D), the last row the null label


@dataclass
class Case:
    """One call: positional ``args``; for a module question ``args[0]`` is the constructor's
    argument list and ``state`` the weights loaded before the call."""

    args: tuple
    state: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class Question:
    """One function (or ``nn.Module`` class) a student writes; one point per case."""

    name: str  # what the notebook must define
    cases: Callable[[np.random.Generator], list[Case]]  # inputs, drawn from the generator
    reference: Callable[..., Any]  # the library's answer, same signature
    rtol: float = 1e-5  # relative tolerance of torch.allclose
    atol: float = 1e-6  # absolute tolerance
    hint: str = ""  # what a wrong value usually means
    module: bool = False  # ``name`` is an nn.Module class: construct, load ``state``, call
    any_float: bool = False  # a float answer of any precision counts (metrics, not tensors)


@dataclass(frozen=True)
class Assignment:
    key: str  # a1 ... a4: what ``ddpmkit grade`` takes
    title: str
    source: str  # the solution source, relative to the repository's assignments/source
    questions: tuple[Question, ...] = field(default_factory=tuple)

    def question(self, name: str) -> Question:
        for q in self.questions:
            if q.name == name:
                return q
        raise KeyError(f"{self.key} has no question {name!r}; it has {', '.join(q.name for q in self.questions)}")

    @property
    def max_points(self) -> int:
        return sum(len(q.cases(np.random.default_rng(0))) for q in self.questions)


def materialize(a):
    """The Python object a student's function receives for the argument spec ``a``."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a.copy())
    if isinstance(a, AsNumpy):
        return a.array.copy()
    if isinstance(a, Toy):
        return ToyModel(*(torch.from_numpy(w.copy()) if w is not None else None for w in (a.W, a.c, a.e)))
    return a


def call(q: Question, fn, case: Case):
    """Call ``fn`` (a function or, for a module question, a class) on ``case``."""
    state = {k: torch.from_numpy(v.copy()) for k, v in (case.state or {}).items()}
    return invoke(fn, [materialize(a) for a in case.args], state, q.module)


to_arrays = output_arrays  # one reading of return values, here and in the sandbox


def compare(expected: list[np.ndarray], got: list[np.ndarray], rtol: float, atol: float) -> tuple[bool, str]:
    """Same number of outputs, then per output: shape, dtype, finite, values. The first
    failure is the message, written for a student: what differs and how."""
    if len(got) != len(expected):
        return False, f"returned {len(got)} value(s), expected {len(expected)}"
    names = [f"output {i}" if len(expected) > 1 else "the output" for i in range(len(expected))]
    for which, e, g in zip(names, expected, got):  # 1. structure of every output first
        if g.shape != e.shape:
            return False, f"{which} has shape {tuple(g.shape)}, expected {tuple(e.shape)} (check broadcasting and reshapes)"
        if g.dtype != e.dtype:
            return False, f"{which} has dtype {g.dtype}, expected {e.dtype} (keep the inputs' dtype; cast a float64 schedule with .to(x.dtype))"
        if g.dtype.kind == "f" and not np.isfinite(g).all():
            bad = ~np.isfinite(g)
            kind = "NaN" if np.isnan(g).any() else "infinite"
            return False, f"{which} has {kind} values at {int(bad.sum())} of {g.size} entries (a division by zero or the log of 0?)"
    for which, e, g in zip(names, expected, got):  # 2. then the values
        close = np.isclose(g, e, rtol=rtol, atol=atol) if g.dtype.kind == "f" else g == e
        if not close.all():
            err = np.abs(g.astype(np.float64) - e.astype(np.float64))
            idx = np.unravel_index(int(np.argmax(err)), err.shape) if err.ndim else ()
            return False, (
                f"{which} differs at {int((~close).sum())} of {g.size} entries; the largest error is "
                f"{float(err.max()):.3g} at index {tuple(int(j) for j in idx)} (got {float(g[idx]):.6g}, expected {float(e[idx]):.6g})"
            )
    return True, "matches"


def judge(q: Question, expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, str]:
    """``compare`` with the question's tolerances and hint; a scalar answer may come back as
    a 0-d or a one-element array."""
    if not q.module and len(expected) == 1 and len(got) == 1 and expected[0].ndim == 0 and got[0].size == 1:
        got = [got[0].reshape(())]
    if q.any_float:
        got = [g.astype(e.dtype) if g.dtype.kind == e.dtype.kind == "f" else g for e, g in zip(expected, got)]
    ok, msg = compare(expected, got, q.rtol, q.atol)
    if not ok and q.hint:
        msg += f". Hint: {q.hint}"
    return ok, msg


# ---- transport of inputs to the sandbox: a JSON index and raw bytes, never a pickle ----------
def encode_cases(q: Question, cases: list[Case], arrays: dict[str, np.ndarray]) -> list[dict]:
    """The JSON plan of ``cases``; every array goes into ``arrays`` under a fresh key."""

    def put(a: np.ndarray) -> str:
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(a)
        return key

    def spec(a):
        if isinstance(a, np.ndarray):
            return {"tensor": put(a)}
        if isinstance(a, AsNumpy):
            return {"numpy": put(a.array)}
        if isinstance(a, Toy):
            return {"toy": {"W": put(a.W), "c": put(a.c), "e": put(a.e) if a.e is not None else None}}
        json.dumps(a)  # a plain value must be JSON
        return {"value": a}

    return [
        {"args": [spec(a) for a in c.args], **({"state": {k: put(v) for k, v in c.state.items()}} if c.state else {})}
        for c in cases
    ]


def write_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """The byte format ``harness.read_arrays`` reads."""
    index = [[k, a.dtype.str, list(a.shape), a.nbytes] for k, a in arrays.items()]
    head = json.dumps(index).encode()
    return struct.pack(">I", len(head)) + head + b"".join(a.tobytes() for a in arrays.values())
