"""The only grading code that runs inside the sandbox, beside a student's notebook.

It is started as ``python harness.py REQ_FD RES_FD`` with two pipes to the grader. It
imports nothing from ``ddpmkit.grading`` (that folder is not in the sandbox) and decides
nothing: it runs the notebook's cells, then answers the grader's calls one at a time,
calling the student's functions on the inputs each call carries and sending the raw
outputs back as plain arrays. The grader, in its own process, compares them with the
reference.

Why a notebook cannot forge a result: the inputs never touch the disk and reach the
process only after every cell has run, one call at a time; each call carries a fresh
random nonce, and the grader accepts exactly one answer per call, carrying that nonce.
A cell can write what it likes to the pipe, but it cannot know a nonce that has not been
sent yet, and the library functions that answer the questions do not exist in callable
form in the sandbox: the only way to answer a call is to run code of one's own on its
inputs.

Frames (both directions): a 4-byte big-endian length, a JSON header whose ``arrays`` lists
``[dtype, shape, nbytes]``, then the raw bytes of those arrays. Never a pickle.
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
MAX_HEADER = 1 << 20  # bytes of one frame's JSON header
MAX_OUTPUT = 64 << 20  # bytes of arrays one answer may send back
NUMERIC = set("biuf")  # bool, signed, unsigned, float


# ---- frames ------------------------------------------------------------------------------
def pack_frame(header: dict, arrays=()) -> bytes:
    """One frame: length, JSON header (with the arrays' dtypes, shapes, sizes), raw bytes."""
    header = dict(header, arrays=[[a.dtype.str, list(a.shape), int(a.nbytes)] for a in arrays])
    body = json.dumps(header).encode()
    return struct.pack(">I", len(body)) + body + b"".join(a.tobytes() for a in arrays)


def parse_arrays(header: dict, blob: bytes) -> list:
    """The arrays a frame's header describes, read from ``blob`` (numeric dtypes only)."""
    import numpy as np

    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise TypeError("'arrays' is not a list")
    out, pos = [], 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], list)
                and all(isinstance(d, int) and 0 <= d for d in spec[1]) and isinstance(spec[2], int)):
            raise ValueError("a malformed array description")
        dt = np.dtype(spec[0])
        if dt.kind not in NUMERIC or dt.hasobject:
            raise ValueError(f"dtype {dt} is not numeric")
        n = dt.itemsize
        for d in spec[1]:
            n *= d
        if n != spec[2] or pos + n > len(blob):
            raise ValueError("array sizes do not add up")
        out.append(np.frombuffer(blob[pos : pos + n], dtype=dt).reshape(spec[1]))
        pos += n
    if pos != len(blob):
        raise ValueError("bytes left over after the arrays")
    return out


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError("the pipe closed")
        buf += chunk
    return bytes(buf)


def read_frame(fd: int) -> tuple[dict, list]:
    """Read one frame (blocking): the harness's side of the pipe."""
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    header = json.loads(_read_exact(fd, n))
    total = sum(int(s[2]) for s in header.get("arrays", []))
    return header, parse_arrays(header, _read_exact(fd, total))


# ---- the toy network the grader's checks pass to students' samplers ---------------------
def toy_model_class():
    import torch

    class ToyModel(torch.nn.Module):
        """ε_θ(x, t, y) = tanh(flatten(x) W + c[t] + e[y]), reshaped like x.

        A stand-in network with fixed weights, so that samplers and losses can be checked to
        the last digit. It follows the conventions of every ddpmkit network: ``t`` is a
        0-based step index (a Python int, a 0-d, (1,) or (B,) tensor); ``y`` a (B,) label
        tensor, and ``y=None`` (or no ``y``) means the null label ``null_label``, the last
        row of ``e``. Its weights are parameters, so a loss can be back-propagated to them.
        """

        def __init__(self, W, c, e=None):
            super().__init__()
            self.W = torch.nn.Parameter(W)  # (D, D)
            self.c = torch.nn.Parameter(c)  # (T, D)
            self.e = torch.nn.Parameter(e) if e is not None else None  # (K+1, D) or None
            self.calls = 0

        @property
        def null_label(self) -> int:
            if self.e is None:
                raise AttributeError("this network is unconditional: it has no null label")
            return self.e.shape[0] - 1

        def forward(self, x, t, y=None):
            self.calls += 1
            B = x.shape[0]
            t = torch.as_tensor(t, device=x.device).long().reshape(-1)  # (1,) or (B,)
            h = x.reshape(B, -1) @ self.W + self.c[t]  # (B, D)
            if self.e is not None:
                if y is None:
                    y = torch.full((B,), self.null_label, dtype=torch.long, device=x.device)  # None: the null label
                y = torch.as_tensor(y, device=x.device)
                if y.dtype not in (torch.int32, torch.int64) or y.dim() != 1:
                    raise ValueError(f"class labels must be an integer tensor of shape (B,), got {tuple(y.shape)} {y.dtype}")
                h = h + self.e[y]  # (B, D)
            elif y is not None:
                raise ValueError("this network is unconditional; pass y=None")
            return torch.tanh(h).reshape(x.shape)

    return ToyModel


def toy_classifier_class():
    import torch

    class ToyClassifier(torch.nn.Module):
        """log-its of p_φ(y | x_t) = tanh(flatten(x) W + c[t]) V: a stand-in noise-conditional
        classifier with fixed weights (W (D, H), c (T, H), V (H, K)), called like the book's
        ``NoisyClassifier``: ``classifier(x, t) -> (B, K)``, ``t`` an int, (1,) or (B,)."""

        def __init__(self, W, c, V):
            super().__init__()
            self.W, self.c, self.V = torch.nn.Parameter(W), torch.nn.Parameter(c), torch.nn.Parameter(V)

        def forward(self, x, t):
            t = torch.as_tensor(t, device=x.device).long().reshape(-1)  # (1,) or (B,)
            return torch.tanh(x.reshape(x.shape[0], -1) @ self.W + self.c[t]) @ self.V  # (B, K)

    return ToyClassifier


# the stand-in networks an argument may be: its kind on the wire, and its weights in constructor order
TOY_WEIGHTS = {"toy": ("W", "c", "e"), "classifier": ("W", "c", "V")}


def toy_classes() -> dict:
    return {"toy": toy_model_class(), "classifier": toy_classifier_class()}


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


def scalar_types(out) -> list:
    """The Python type name of each returned value (``Tensor``, ``float``, ``ndarray``, ...)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [type(item).__name__ for item in items]


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


# ---- resource limits, capabilities, and a private namespace for each forked run ---------------
def apply_limits(memory_gb: float, cpu_seconds: int, file_mb: int, nproc: int) -> None:
    """The rlimits of one run (address space, CPU, file size, no core, processes)."""
    import resource

    mem = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_private_namespaces(tmp_mb: int, work_mb: int) -> None:
    """Give a process forked from the zygote what a fresh bubblewrap gives a run: its own
    user, mount, PID, network and IPC namespaces, new RAM disks of fixed size on /tmp and
    /sandbox, and a /proc that shows only itself. Returns in a new child, PID 1 of its own
    PID namespace (its parent waits for it and exits with its status); no capability is
    left when it returns."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    NEWNS, NEWUSER, NEWPID, NEWNET, NEWIPC = 0x20000, 0x10000000, 0x20000000, 0x40000000, 0x08000000
    NOSUID, NODEV, NOEXEC, BIND, REC, PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
    _check(libc.unshare(NEWUSER | NEWNS | NEWPID | NEWNET | NEWIPC), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _check(libc.mount(b"none", b"/", None, REC | PRIVATE, None), "mount --make-rprivate /")
    # read-only binds that lie under /tmp (a virtual environment in /tmp/...) must survive the new /tmp
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    keep = sorted(p for p in points if p.startswith("/tmp/"))
    keep = [p for p in keep if not any(p != o and p.startswith(o + "/") for o in keep)]
    _check(libc.mount(b"tmpfs", b"/sandbox", b"tmpfs", NOSUID | NODEV, f"size={work_mb}m,mode=0700".encode()), "mount tmpfs /sandbox")
    for i, p in enumerate(keep):
        hold = f"/sandbox/.keep{i}"
        os.mkdir(hold) if os.path.isdir(p) else open(hold, "w").close()
        _check(libc.mount(p.encode(), hold.encode(), None, BIND | REC, None), f"bind {p}")
    _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", NOSUID | NODEV, f"size={tmp_mb}m,mode=0700".encode()), "mount tmpfs /tmp")
    for i, p in enumerate(keep):
        hold = f"/sandbox/.keep{i}"
        if os.path.isdir(hold):
            os.makedirs(p)
        else:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").close()
        _check(libc.mount(hold.encode(), p.encode(), None, BIND | REC, None), f"bind back {p}")
        _check(libc.umount2(hold.encode(), 2), f"umount {hold}")  # MNT_DETACH
        os.rmdir(hold) if os.path.isdir(hold) else os.unlink(hold)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run: wait until its /proc is in place
        os.close(go_w)
        os.read(go_r, 1)
        os.close(go_r)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the parent
        drop_capabilities(libc)
        return
    os.close(go_r)
    os.mkdir("/tmp/.self")  # /proc with only the run's own entry, as /proc/self
    _check(libc.mount(f"/proc/{pid}".encode(), b"/tmp/.self", None, BIND | REC, None), "bind /proc/PID")
    _check(libc.mount(b"tmpfs", b"/proc", b"tmpfs", NOSUID | NODEV | NOEXEC, b"size=64k,mode=0755"), "cover /proc")
    os.mkdir("/proc/self")
    _check(libc.mount(b"/tmp/.self", b"/proc/self", None, BIND | REC, None), "bind /proc/self")
    _check(libc.umount2(b"/tmp/.self", 2), "umount")
    os.rmdir("/tmp/.self")
    os.write(go_w, b"1")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)  # killed by signal s: 128 + s, as bubblewrap reports it


def drop_capabilities(libc=None) -> None:
    """No capability in any set (the bounding set too)."""
    libc = libc or ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP until the kernel's last capability
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")


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
def seed_everything(seed: int) -> None:
    """Seed every random generator a notebook may use, from the grading seed."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main(req_fd: int, res_fd: int) -> None:
    # 1. capture what the harness needs before any student code can replace it
    _write, _exit, _str, _type, _len, _isinstance = os.write, os._exit, str, type, len, isinstance
    _pack, _read_frame, _format_exc = pack_frame, read_frame, traceback.format_exception

    def send(header: dict, arrays=()) -> None:
        data = memoryview(_pack(header, arrays))
        while data:
            data = data[_write(res_fd, data):]

    def error_text(exc: BaseException) -> dict:
        tb = "".join(_format_exc(_type(exc), exc, exc.__traceback__)[-6:])
        return {"error": f"{_type(exc).__name__}: {exc}"[:MAX_TEXT], "traceback": tb[-MAX_TEXT:]}

    setup, _ = _read_frame(req_fd)  # the cells and the seed; no inputs yet
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import ddpmkit  # noqa: F401  (the sandbox's copy: the functions that answer questions raise)

    seed_everything(int(setup["seed"]))
    pristine = snapshot(guarded_objects())
    TOYS = toy_classes()
    ToyModel, toy_kinds = TOYS["toy"], tuple(TOYS.items())
    _from_numpy, _Tensor, _ndarray, _equal = torch.from_numpy, torch.Tensor, np.ndarray, np.array_equal

    # 2. no process may be started from here on
    try:
        forbid_new_processes()
        send({"t": "seccomp", "ok": True})
    except OSError as exc:
        send({"t": "seccomp", "ok": False, "error": _str(exc)})

    # 3. the notebook's cells, in order, in one namespace; an error ends its cell only
    import types

    main_module = types.ModuleType("__main__")  # the notebook's own namespace, not the harness's
    sys.modules["__main__"] = main_module
    ns = main_module.__dict__
    guarded = guarded_objects()
    theirs = pristine  # the notebook's own patches carry from cell to cell, never into the harness
    for i, cell in enumerate(setup["cells"]):
        send({"t": "cell", "i": i, "label": cell["label"]})
        restore(theirs)
        try:
            exec(compile(cell["source"], f"<cell {i}: {cell['label']}>", "exec"), ns)  # noqa: S102 - the notebook, sandboxed
            outcome = {"t": "cell_ok", "i": i}
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
            outcome = {"t": "cell_error", "i": i, **error_text(exc)}
        theirs = snapshot(guarded)
        restore(pristine)
        send(outcome)
    restore(pristine)
    send({"t": "cells_done"})

    # 4. the calls, one at a time, each answered with plain arrays
    def arg(spec, arrays):
        kind, value = next(iter(spec.items()))
        if kind == "tensor":
            return _from_numpy(arrays[value].copy())
        if kind == "numpy":
            return arrays[value].copy()
        if kind == "value":
            return value
        if kind in TOY_WEIGHTS:
            w = [_from_numpy(arrays[value[k]].copy()) if value.get(k) is not None else None for k in TOY_WEIGHTS[kind]]
            return TOYS[kind](*w)
        raise ValueError(f"unknown argument kind {kind}")

    def encode(values, arrays_out):
        """Arguments of a helper call, as the grader reads them."""
        specs = []
        for v in values:
            toy = None
            for kind, cls in toy_kinds:
                if _isinstance(v, cls):
                    toy = kind
            if toy is not None:
                ws = {}
                for k in TOY_WEIGHTS[toy]:
                    w = getattr(v, k)
                    ws[k] = None if w is None else _len(arrays_out)
                    if w is not None:
                        arrays_out.append(w.detach().cpu().numpy().copy())
                specs.append({toy: ws})
            elif _isinstance(v, _Tensor):
                specs.append({"tensor": _len(arrays_out)})
                arrays_out.append(v.detach().cpu().numpy().copy())
            elif _isinstance(v, _ndarray):
                specs.append({"numpy": _len(arrays_out)})
                arrays_out.append(v.copy())
            else:
                specs.append({"value": v})
        return specs

    def helper(name: str, nonce: str):
        def reference_helper(*args, **kwargs):
            arrays_out: list = []
            send({"t": "helper", "nonce": nonce, "name": name, "args": encode(args, arrays_out),
                  "kwargs": dict(zip(kwargs, encode(list(kwargs.values()), arrays_out)))}, arrays_out)
            head, arrays = _read_frame(req_fd)
            if head.get("t") != "helper_result":
                raise RuntimeError(head.get("error", "the grader's reference helper failed"))
            outs = [_from_numpy(a.copy()) for a in arrays]
            return tuple(outs) if head.get("tuple") else outs[0]

        reference_helper.__name__ = reference_helper.__qualname__ = name
        return reference_helper

    while True:
        head, arrays = _read_frame(req_fd)
        if head.get("t") != "call":
            break
        name, k, nonce = head["q"], head["case"], head["nonce"]
        restore(pristine)
        seed_everything(int(head["seed"]))
        saved = {u: ns[u] for u in head.get("uses", []) if u in ns}
        try:
            fn = ns.get(name)
            if fn is None:
                names = sorted(n for n, v in ns.items() if callable(v) and not n.startswith("__"))[:200]
                send({"t": "call_error", "nonce": nonce, "q": name, "case": k, "error": f"NameError: {name} is not defined",
                      "names": [n[:100] for n in names]})
                continue
            args = [arg(a, arrays) for a in head["args"]]
            state = {key: _from_numpy(arrays[v].copy()) for key, v in head.get("state", {}).items()}
            for u in head.get("uses", []):  # the reference in place of the student's helper (one bug, one question)
                ns[u] = helper(u, nonce)
            try:
                out = invoke(fn, args, state, bool(head.get("module")))
            finally:
                for u in head.get("uses", []):
                    ns.pop(u, None)
                ns.update(saved)
            restore(pristine)  # the harness's own code runs unpatched from here
            grad = None
            if head.get("grad"):
                models = [a for a in args if _isinstance(a, ToyModel)]
                if not (_isinstance(out, _Tensor) and out.requires_grad):
                    grad = "none"
                else:
                    out.backward()
                    grad = "ok" if any(p.grad is not None and bool((p.grad != 0).any()) for m in models for p in m.parameters()) else "zero"
            mutated = []
            for i, (a, spec) in enumerate(zip(args, head["args"])):
                kind, value = next(iter(spec.items()))
                if kind in ("tensor", "numpy") and not _equal(np.asarray(a.detach() if _isinstance(a, _Tensor) else a), arrays[value]):
                    mutated.append(i)
            out_arrays = output_arrays(out)
            size = sum(a.nbytes for a in out_arrays)
            if size > MAX_OUTPUT:
                send({"t": "call_error", "nonce": nonce, "q": name, "case": k, "too_large": size,
                      "error": f"the output is {size / 2**20:.0f} MB, more than the grader reads back ({MAX_OUTPUT >> 20} MB)"})
                continue
            send({"t": "result", "nonce": nonce, "q": name, "case": k, "module": _str(getattr(fn, "__module__", None)),
                  "types": scalar_types(out), "mutated": mutated, "grad": grad}, out_arrays)
        except BaseException as exc:  # noqa: BLE001
            restore(pristine)
            ns.update(saved)
            send({"t": "call_error", "nonce": nonce, "q": name, "case": k, **error_text(exc)})
    _exit(0)


# ---- the zygote: the libraries imported once, one forked run per submission --------------------
def zygote_main(ctl_fd: int) -> None:
    """Import NumPy, PyTorch and ddpmkit once, then fork one run per ``spawn`` request on the
    control socket. Each request carries the run's pipes (requests, results, output, exit
    status); the run enters its own namespaces and RAM disks, applies its limits and runs
    ``main``. The zygote itself never runs a line of a notebook."""
    import socket
    import threading
    import time

    import numpy  # noqa: F401
    import torch

    torch.set_num_threads(1)
    torch.ones(4, 4) @ torch.ones(4, 4)  # PyTorch reads the CPU's description on first use: here, while /proc is whole
    import ddpmkit  # noqa: F401

    ctl = socket.socket(fileno=ctl_fd)
    lock = threading.Lock()
    status_fds: dict[int, int] = {}

    def reap() -> None:  # every run's exit status goes to its own status pipe
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                time.sleep(0.01)
                continue
            with lock:
                fd = status_fds.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, struct.pack(">i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                os.close(fd)

    threading.Thread(target=reap, daemon=True).start()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 8)
        except OSError:
            break
        if not msg:
            break
        cmd = json.loads(msg)
        if cmd.get("t") == "spawn" and len(fds) == 4:
            with lock:  # registered before the reaper can see it
                pid = os.fork()
                if pid == 0:
                    _run_child(cmd, ctl, *fds)
                for fd in fds[:3]:
                    os.close(fd)
                status_fds[pid] = fds[3]
            ctl.send(json.dumps({"pid": pid}).encode())
        elif cmd.get("t") == "kill":
            try:
                os.kill(int(cmd["pid"]), 9)
            except (ProcessLookupError, ValueError):
                pass
        else:
            for fd in fds:
                os.close(fd)
    os._exit(0)


def _run_child(cmd: dict, ctl, req_r: int, res_w: int, out_w: int, status_w: int) -> None:
    """In a forked child of the zygote: become a run. Never returns."""
    try:
        ctl.close()
        os.close(status_w)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.close(out_w)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.setsid()
        lim = cmd["limits"]
        if cmd.get("isolate"):
            enter_private_namespaces(int(lim["tmp_mb"]), int(lim["work_mb"]))  # returns in the run, PID 1 of its namespace
        os.chdir(cmd["cwd"])
        apply_limits(float(lim["memory_gb"]), int(lim["cpu_seconds"]), int(lim["file_mb"]), int(lim["nproc"]))
        main(req_r, res_w)
    except BaseException as exc:  # noqa: BLE001 - nothing may return into the zygote's loop
        try:
            os.write(2, f"harness: the run could not start: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    os._exit(70)


if __name__ == "__main__":
    if sys.argv[1] == "--zygote":
        zygote_main(int(sys.argv[2]))
    else:
        main(int(sys.argv[1]), int(sys.argv[2]))
