"""The only grading code that runs inside the sandbox, next to a student's notebook.

It is copied into the submission's scratch folder and started as ``python harness.py``.
It imports nothing from ``ddpmkit.grading`` (that folder is hidden in the sandbox) and
decides nothing: it executes the notebook's cells, calls the student's functions on the
inputs the grader drew, and streams the raw outputs back as plain arrays. The grader, in
its own process, compares them with the reference. A submission that tampers with this
process can only break its own outputs; it cannot change a score.

Protocol (all files in the working directory):
  plan.json       cells to run and calls to make, written by the grader
  inputs.bin      the arrays those calls take (see ``read_arrays``)
  results.bin     written here: a stream of records, each a 4-byte big-endian length,
                  a JSON header and the raw bytes of the arrays the header describes
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import struct
import sys
import traceback

MAX_TEXT = 2000  # characters of an error message or traceback kept per record


# ---- the toy network the grader's checks pass to students' samplers ---------------------
def toy_model_class():
    import torch

    class ToyModel(torch.nn.Module):
        """ε_θ(x, t, y) = tanh(flatten(x) W + c[t] + e[y]), reshaped like x.

        A stand-in network with fixed weights, so that samplers and losses can be checked to
        the last digit. ``t`` is a 0-based step index (an int or a (B,) or (1,) tensor);
        ``y`` a (B,) label tensor where ``null_label`` (the last row of ``e``) means "no label".
        """

        def __init__(self, W, c, e=None):
            super().__init__()
            self.W, self.c, self.e = W, c, e  # (D, D), (T, D), (K+1, D) or None
            self.calls = 0

        @property
        def null_label(self) -> int:
            return self.e.shape[0] - 1

        def forward(self, x, t, y=None):
            self.calls += 1
            B = x.shape[0]
            t = torch.as_tensor(t, device=x.device).long().reshape(-1)  # (1,) or (B,)
            h = x.reshape(B, -1) @ self.W + self.c[t]  # (B, D)
            if self.e is not None and y is not None:
                h = h + self.e[torch.as_tensor(y).long()]  # (B, D)
            return torch.tanh(h).reshape(x.shape)

    return ToyModel


# ---- array transport: never pickle ---------------------------------------------------------
NUMERIC = set("biuf")  # bool, signed, unsigned, float


def read_arrays(path: str) -> dict:
    """Arrays written by ``ddpmkit.grading.grader.write_arrays``: a JSON index, then bytes."""
    import numpy as np

    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack(">I", blob[:4])
    index = json.loads(blob[4 : 4 + n])
    out, pos = {}, 4 + n
    for key, dtype, shape, nbytes in index:
        out[key] = np.frombuffer(blob[pos : pos + nbytes], dtype=np.dtype(dtype)).reshape(shape).copy()
        pos += nbytes
    return out


# ---- calling an answer and reading what it returned (the grader's self-checks use these too) ----
def invoke(fn, args: list, state: dict | None = None, module: bool = False):
    """Call ``fn`` on ``args``; for a module question ``fn`` is a class: construct it with
    ``args[0]``, load ``state`` (name -> tensor), then call it on the rest."""
    if module:
        obj = fn(*args[0])
        obj.load_state_dict(state or {})
        return obj(*args[1:])
    return fn(*args)


def output_arrays(out) -> list:
    """A return value as a list of C-ordered NumPy arrays (a tuple or list gives several)."""
    import numpy as np
    import torch

    items = list(out) if isinstance(out, (tuple, list)) else [out]
    arrays = []
    for item in items:
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().numpy()
        a = np.asarray(item)
        if a.dtype.kind not in NUMERIC:
            raise TypeError(f"returned a {type(item).__name__}, which is not a number, array or tensor")
        arrays.append(a.copy(order="C"))
    return arrays


# ---- no new processes: a seccomp filter --------------------------------------------------
def forbid_new_processes() -> None:
    """Deny fork, vfork, execve and clone without CLONE_THREAD (threads stay allowed).

    Installed before any student code runs; the kernel keeps it for the life of the
    process, so neither a fork bomb nor ``os.system`` can start anything.
    """
    arch = platform.machine()
    if arch == "x86_64":
        audit, nr = 0xC000003E, {"clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435}
    elif arch == "aarch64":
        audit, nr = 0xC00000B7, {"clone": 220, "execve": 221, "execveat": 281, "clone3": 435}
    else:
        raise OSError(f"no seccomp filter for {arch}")
    LD, JEQ, JSET, RET = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JSET|K, BPF_RET|K
    ALLOW, KILL, EPERM, ENOSYS = 0x7FFF0000, 0x80000000, 0x00050001, 0x00050026
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit), (RET, 0, 0, KILL), (LD, 0, 0, 0)]  # arch check, then nr
    for name in ("fork", "vfork", "execve", "execveat"):
        if name in nr:
            prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, ENOSYS)]  # glibc then falls back to clone
    prog += [(JEQ, 0, 3, nr["clone"]), (LD, 0, 0, 16), (JSET, 1, 0, 0x00010000), (RET, 0, 0, EPERM)]
    prog += [(RET, 0, 0, ALLOW)]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


# ---- monkeypatching undone --------------------------------------------------------------------
def guarded_objects() -> list:
    """Modules and classes whose attributes the harness puts back before every call, so that
    a notebook that patches them changes neither the harness nor how its functions are run."""
    import builtins

    import numpy as np
    import torch
    import torch.nn.functional

    objs = [builtins, json, struct, os, np, np.random, np.testing, np.linalg, torch, torch.nn, torch.nn.functional,
            torch.nn.Module, torch.Tensor, torch.linalg, torch.testing]
    return objs + [m for name, m in sorted(sys.modules.items()) if name.startswith("ddpmkit") and m is not None]


def snapshot(objs: list) -> list:
    return [(obj, dict(vars(obj))) for obj in objs]


def restore(saved: list) -> None:
    for obj, attrs in saved:
        current = vars(obj)
        for key in [k for k in current if k not in attrs]:
            try:
                delattr(obj, key)
            except (AttributeError, TypeError):
                pass
        for key, value in attrs.items():
            if current.get(key, object()) is not value:
                try:
                    setattr(obj, key, value)
                except (AttributeError, TypeError):
                    pass


# ---- the run ---------------------------------------------------------------------------------
def main() -> None:
    # 1. capture what the harness needs before any student code can replace it
    _write, _open, _dumps, _exit = os.write, os.open, json.dumps, os._exit
    _pack, _len, _str, _type = struct.pack, len, str, type
    _format_exc = traceback.format_exception
    with open("plan.json") as f:
        plan = json.load(f)
    out_fd = _open("results.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(header: dict, arrays=()) -> None:
        header["arrays"] = [[a.dtype.str, list(a.shape), a.nbytes] for a in arrays]
        body = _dumps(header).encode()
        payload = _pack(">I", _len(body)) + body + b"".join(a.tobytes() for a in arrays)
        _write(out_fd, payload)

    def error_text(exc: BaseException) -> dict:
        tb = "".join(_format_exc(_type(exc), exc, exc.__traceback__)[-6:])
        return {"error": f"{_type(exc).__name__}: {exc}"[:MAX_TEXT], "traceback": tb[-MAX_TEXT:]}

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import ddpmkit.diffusion, ddpmkit.guidance, ddpmkit.metrics, ddpmkit.models, ddpmkit.schedules, ddpmkit.unet  # noqa: E401, F401

    pristine = snapshot(guarded_objects())
    inputs = read_arrays("inputs.bin")
    ToyModel = toy_model_class()
    _from_numpy = torch.from_numpy

    # 2. no process may be started from here on
    try:
        forbid_new_processes()
        record({"t": "seccomp", "ok": True})
    except OSError as exc:
        record({"t": "seccomp", "ok": False, "error": _str(exc)})

    # 3. the notebook's cells, in order, in one namespace; an error ends its cell only
    import types

    main_module = types.ModuleType("__main__")  # the notebook's own namespace, not the harness's
    sys.modules["__main__"] = main_module
    ns = main_module.__dict__
    guarded = guarded_objects()
    theirs = pristine  # the notebook's own patches carry from cell to cell, never into the harness
    for i, cell in enumerate(plan["cells"]):
        record({"t": "cell", "i": i, "label": cell["label"]})
        restore(theirs)
        try:
            code = compile(cell["source"], f"<cell {i}: {cell['label']}>", "exec")
            exec(code, ns)
            outcome = {"t": "cell_ok", "i": i}
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
            outcome = {"t": "cell_error", "i": i, "exc": exc}
        theirs = snapshot(guarded)
        restore(pristine)
        exc = outcome.pop("exc", None)
        record({**outcome, **error_text(exc)} if exc is not None else outcome)
    restore(pristine)
    record({"t": "cells_done"})

    # 4. the calls: each output goes back as plain arrays
    def arg(spec):
        kind, value = next(iter(spec.items()))
        if kind == "tensor":
            return _from_numpy(inputs[value].copy())
        if kind == "numpy":
            return inputs[value].copy()
        if kind == "value":
            return value
        if kind == "toy":
            W, c = _from_numpy(inputs[value["W"]].copy()), _from_numpy(inputs[value["c"]].copy())
            e = _from_numpy(inputs[value["e"]].copy()) if value.get("e") else None
            return ToyModel(W, c, e)
        raise ValueError(f"unknown argument kind {kind}")

    for q in plan["calls"]:
        name = q["name"]
        for k, case in enumerate(q["cases"]):
            restore(pristine)
            record({"t": "call", "q": name, "case": k})
            try:
                fn = ns.get(name)
                if fn is None:
                    raise NameError(f"{name} is not defined")
                args = [arg(a) for a in case["args"]]
                state = {key: _from_numpy(inputs[v].copy()) for key, v in case.get("state", {}).items()}
                out = invoke(fn, args, state, bool(q.get("module")))
                restore(pristine)  # the harness's own code runs unpatched from here
                arrays = output_arrays(out)
                module = getattr(fn, "__module__", None)
                record({"t": "result", "q": name, "case": k, "module": _str(module)}, arrays)
            except BaseException as exc:  # noqa: BLE001
                restore(pristine)
                record({"t": "call_error", "q": name, "case": k, **error_text(exc)})
    record({"t": "done"})
    _exit(0)


if __name__ == "__main__":
    main()
