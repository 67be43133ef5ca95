"""Calling an answer and reading what it returned: the run, the grader's references and the
students' self-checks all use these, so every side reads a return value the same way."""

from __future__ import annotations

import numpy as np
import torch

from .wire import NUMERIC


def invoke(fn, args: list, state: dict | None = None, module: bool = False):
    """Call ``fn`` on ``args``; for a module question ``fn`` is a class: construct it with
    ``args[0]``, load ``state`` (name -> tensor), then call it on the rest."""
    if module:
        obj = fn(*args[0])
        obj.load_state_dict(state or {})
        return obj(*args[1:])
    return fn(*args)


def output_arrays(out) -> list[np.ndarray]:
    """A return value as a list of C-ordered NumPy arrays (a tuple or list gives several)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    arrays = []
    for item in items:
        if isinstance(item, torch.Tensor):
            if item.dtype in (torch.bfloat16, torch.complex64, torch.complex128):
                raise TypeError(f"returned a tensor of dtype {item.dtype}; return the dtype of the inputs (float32)")
            item = item.detach().cpu().resolve_neg().numpy()
        a = np.asarray(item)
        if a.dtype.kind not in NUMERIC:
            raise TypeError(f"returned a {type(item).__name__}, which is not a number, array or tensor")
        arrays.append(a.copy(order="C"))
    return arrays


def scalar_types(out) -> list[str]:
    """The Python type name of each returned value (``Tensor``, ``float``, ``ndarray``, ...)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [type(item).__name__ for item in items]


def mutated_args(args: list, originals: list) -> list[int]:
    """Positions of the array arguments a call changed in place (``originals``: their values
    before the call, None for an argument that is not an array)."""
    changed = []
    for i, (a, before) in enumerate(zip(args, originals)):
        if before is not None:
            now = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            if now.shape != before.shape or not np.array_equal(now, before, equal_nan=now.dtype.kind == "f"):
                changed.append(i)
    return changed


def array_values(args: list) -> list:
    """A copy of each array argument's values (None for the others), to tell later whether a call changed them."""
    return [a.detach().cpu().numpy().copy() if isinstance(a, torch.Tensor) and not a.is_complex() and a.dtype != torch.bfloat16
            else np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in args]


def gradient_state(out, args: list) -> str:
    """Whether a loss can train the stand-in networks among ``args``: ``ok`` (back-propagating it
    reaches their parameters), ``none`` (it is not a tensor that requires grad), ``zero``."""
    from .toys import ToyModel

    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        return "none"
    out.backward()
    params = [p for a in args if isinstance(a, ToyModel) for p in a.parameters()]
    return "ok" if any(p.grad is not None and bool((p.grad != 0).any()) for p in params) else "zero"
