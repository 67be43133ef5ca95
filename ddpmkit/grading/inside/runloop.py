"""The run: a notebook's cells, then the grader's calls, one at a time (started as
``python -m ddpmkit.grading.inside REQ_FD RES_FD``, or forked from the zygote).

Cells run in IPython's own ``InteractiveShell``, as in Jupyter: magics, ``display``, ``obj?``,
``%%writefile`` and imports from the working folder (the notebook's folder) work; shell
escapes (``!cmd``, ``x = !cmd``, ``%%bash``) print that they are not run and give an empty
result. Then each call carries fresh inputs and a fresh nonce; the answer goes back as plain
arrays. Nothing here judges: the grader compares outside.

Why a notebook cannot forge a result: inputs reach the process only after every cell has run,
one call at a time, each with a nonce the grader accepts exactly once; and the library
functions that answer the questions do not exist in callable form in the sandbox.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import traceback
import types

MAX_TEXT = 2000  # characters of an error message or traceback kept per record
NO_SHELL = "shell commands are not run during grading: {}"


# ---- what a notebook may patch, put back before the run's own code runs --------------------------
def guarded_objects() -> list:
    """Modules and classes whose attributes are put back before every call, so that a notebook
    that patches them changes neither the run's code nor how its functions are called."""
    import builtins

    import numpy as np
    import torch
    import torch.nn.functional

    objs = [builtins, json, struct, os, sys, traceback, np, np.random, np.testing, np.linalg, torch, torch.nn, torch.nn.functional,
            torch.nn.Module, torch.Tensor, torch.linalg, torch.testing, torch.autograd]
    return objs + [m for name, m in sorted(sys.modules.items()) if name.startswith("ddpmkit") and m is not None]


def snapshot(objs: list) -> list:
    return [(obj, dict(vars(obj))) for obj in objs]


def restore(saved: list) -> None:
    """Attributes replaced or removed get their saved values back. Attributes added since are
    removed from classes only: a module gains attributes lawfully (NumPy's and PyTorch's lazy
    submodules, ``torch.func``), and an added module attribute cannot shadow a saved one."""
    for obj, attrs in saved:
        current = vars(obj)
        if isinstance(obj, type):
            for key in [k for k in current if k not in attrs]:
                try:
                    delattr(obj, key)
                except (AttributeError, TypeError):
                    pass
        for key, value in attrs.items():
            if current.get(key, restore) is not value:
                try:
                    setattr(obj, key, value)
                except (AttributeError, TypeError):
                    pass


def seed_everything(seed: int) -> None:
    """Seed every random generator a notebook may use, from the grading seed."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the cells, in IPython -----------------------------------------------------------------------------
def make_shell(main_module: types.ModuleType):
    """An ``InteractiveShell`` like a Jupyter kernel's, without history files and without shell
    commands: ``system``, ``getoutput`` and the script cell magics only say they were not run."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.text import SList
    from traitlets.config import Config

    class GradingShell(InteractiveShell):
        def system(self, cmd):
            print(NO_SHELL.format(cmd))

        def getoutput(self, cmd, split=True, depth=0):
            print(NO_SHELL.format(cmd))
            return SList()

        def enable_gui(self, gui=None):  # %matplotlib: figures are not shown during grading
            pass

    cfg = Config()
    cfg.HistoryManager.enabled = False
    cfg.InteractiveShell.colors = "nocolor"
    shell = GradingShell.instance(config=cfg, user_module=main_module)
    manager = shell.magics_manager  # the script magics (%%bash, %%sh, %%script, ...), loaded lazily or not
    lazy = getattr(manager, "lazy_magics", {})
    names = {n for n, where in lazy.items() if where.endswith(":ScriptMagics")}
    names |= set(getattr(manager.registry.get("ScriptMagics"), "magics", {}).get("cell", {})) | {"script"}
    for name in sorted(names):
        lazy.pop(name, None)
        shell.register_magic_function(lambda line, cell=None, _n=name: print(NO_SHELL.format(f"%%{_n} {line}".strip())), "cell", name)
    return shell


def student_frames(exc: BaseException) -> str:
    """The traceback of ``exc`` through the notebook's own code only (cells and the modules it
    wrote), then the exception: the frames of NumPy, PyTorch and the grader are left out."""
    libs = tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(__file__))})
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(libs)]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "".join(lines)[-MAX_TEXT:]


def error_text(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:MAX_TEXT], "traceback": student_frames(exc)}


def run_cells(shell, cells: list[dict], send, guarded: list, pristine: list) -> None:
    """Each cell in order; an error ends its cell only. The notebook's patches carry from cell
    to cell, never into the run's own code."""
    theirs = pristine
    for i, cell in enumerate(cells):
        send({"t": "cell", "i": i, "label": cell["label"]})
        restore(theirs)
        try:
            result = shell.run_cell(cell["source"], store_history=True)
            exc = result.error_before_exec or result.error_in_exec
        except BaseException as e:  # noqa: BLE001 - whatever escapes IPython ends this cell only
            exc = e
        theirs = snapshot(guarded)
        restore(pristine)
        send({"t": "cell_error", "i": i, **error_text(exc)} if exc is not None else {"t": "cell_ok", "i": i})


# ---- the calls ---------------------------------------------------------------------------------------
def make_helper(name: str, nonce: str, read, send):
    """The grader's reference for ``name``, callable from the notebook's code during one call:
    the arguments travel to the grader and its answer comes back (``wire`` codec both ways)."""
    from .wire import decode, encode

    def reference_helper(*args, **kwargs):
        arrays: list = []
        send({"t": "helper", "nonce": nonce, "name": name, "args": encode(list(args), arrays), "kwargs": encode(dict(kwargs), arrays)},
             arrays)
        head, arrs = read()
        if head.get("t") != "helper_result":
            raise RuntimeError(str(head.get("error", "the grader's reference helper failed")))
        return decode(head.get("value"), arrs)

    reference_helper.__name__ = reference_helper.__qualname__ = name
    return reference_helper


def result_record(head: dict, fn, args: list, before: list, out) -> tuple[dict, list]:
    """What goes back for one answered call: its outputs as arrays, their Python types, the
    arguments it changed in place, and whether a loss carries gradients to the network."""
    from .answers import gradient_state, mutated_args, output_arrays, scalar_types
    from .wire import MAX_OUTPUT

    grad = gradient_state(out, args) if head.get("grad") else None
    outs = output_arrays(out)
    size = sum(a.nbytes for a in outs)
    if size > MAX_OUTPUT:
        return {"t": "call_error", "too_large": size,
                "error": f"the output is {size / 2**20:.0f} MB, more than the grader reads back ({MAX_OUTPUT >> 20} MB)"}, []
    return {"t": "result", "module": str(getattr(fn, "__module__", None)), "types": scalar_types(out),
            "mutated": mutated_args(args, before), "grad": grad}, outs


def one_call(head: dict, arrays: list, ns: dict, pristine: list, read, send) -> None:
    """Answer one call: decode its inputs, put the references of ``uses`` in place of the
    notebook's helpers, call the answer (under ``torch.no_grad()`` when the question says a
    caller may), and send back the outputs or the error."""
    import contextlib

    import torch

    from .answers import array_values, invoke
    from .wire import decode

    name, reply = head["q"], {"nonce": head["nonce"], "q": head["q"], "case": head["case"]}
    restore(pristine)
    seed_everything(int(head["seed"]))
    uses = [u for u in head.get("uses", []) if isinstance(u, str)]
    saved = {u: ns[u] for u in uses if u in ns}
    fn = ns.get(name)
    if fn is None:
        names = sorted(n for n, v in ns.items() if callable(v) and not n.startswith("_"))[:200]
        return send({**reply, "t": "call_error", "error": f"NameError: {name} is not defined", "names": [n[:100] for n in names]})
    try:
        args = decode({"list": head["args"]}, arrays)
        before = array_values(args)
        state = decode(head["state"], arrays) if head.get("state") else {}
        for u in uses:
            ns[u] = make_helper(u, head["nonce"], read, send)
        try:
            with torch.no_grad() if head.get("no_grad") else contextlib.nullcontext():
                out = invoke(fn, args, state, bool(head.get("module")))
        finally:
            restore(pristine)  # the run's own code runs unpatched from here
            for u in uses:
                ns.pop(u, None)
            ns.update(saved)
        record, outs = result_record(head, fn, args, before, out)
        send({**reply, **record}, outs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt included
        restore(pristine)
        ns.update(saved)
        send({**reply, "t": "call_error", **error_text(exc)})


# ---- the run ---------------------------------------------------------------------------------------------
def main(req_fd: int, res_fd: int) -> None:
    # 1. what the run needs, captured before any of the notebook's code
    from .confine import install_seccomp
    from .wire import FrameReader, pack, read_frame

    _write, _exit, reader = os.write, os._exit, FrameReader(1 << 30)

    def send(header: dict, arrays=()) -> None:
        data = memoryview(pack(header, arrays))
        while data:
            data = data[_write(res_fd, data):]

    def read():
        return read_frame(req_fd, reader)

    setup, _ = read()  # the cells and the seed; no inputs yet
    import torch

    torch.set_num_threads(1)
    import ddpmkit  # noqa: F401  (the sandbox's copy: the functions that answer questions raise)

    seed_everything(int(setup["seed"]))
    main_module = types.ModuleType("__main__")  # the notebook's own namespace
    sys.modules["__main__"] = main_module
    shell = make_shell(main_module)
    sys.path.insert(0, os.getcwd())  # the working folder plays the notebook's folder
    pristine = snapshot(guarded_objects())
    # 2. no process, namespace or mount may be created from here on
    try:
        install_seccomp()
        send({"t": "seccomp", "ok": True})
    except OSError as exc:
        send({"t": "seccomp", "ok": False, "error": str(exc)})
    # 3. the notebook's cells; 4. the calls, one at a time
    run_cells(shell, setup["cells"], send, guarded_objects(), pristine)
    restore(pristine)
    send({"t": "cells_done"})
    while (frame := read())[0].get("t") == "call":
        one_call(*frame, main_module.__dict__, pristine, read, send)
    _exit(0)


# ---- the zygote: the libraries imported once, one forked run per submission ------------------------
def zygote_main(ctl_fd: int) -> None:
    """Import NumPy, PyTorch, IPython and ddpmkit once, then fork one run per ``spawn`` request on
    the control socket. Each request carries the run's pipes (requests, results, output, exit
    status); the run closes every other descriptor, enters its own namespaces and RAM disks,
    applies its limits and runs ``main``. The zygote never runs a line of a notebook."""
    import socket
    import threading

    import numpy  # noqa: F401
    import torch
    from IPython.core.interactiveshell import InteractiveShell  # noqa: F401

    torch.set_num_threads(1)
    torch.ones(4, 4) @ torch.ones(4, 4)  # PyTorch reads the CPU's description on first use: here, while /proc is whole
    import ddpmkit  # noqa: F401

    ctl, lock, status_fds = socket.socket(fileno=ctl_fd), threading.Lock(), {}
    threading.Thread(target=_reap, args=(lock, status_fds), daemon=True).start()
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
                    _run_child(cmd, *fds)
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


def _reap(lock, status_fds: dict) -> None:
    """Every run's exit status goes to its own status pipe."""
    import time

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


def _run_child(cmd: dict, req_r: int, res_w: int, out_w: int, status_w: int) -> None:
    """In a forked child of the zygote: become a run. Never returns."""
    from .confine import apply_limits, close_other_fds, enter_private_namespaces

    try:
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        close_other_fds((req_r, res_w))  # the zygote's socket, this run's status pipe, every other run's pipes
        os.setsid()
        lim = cmd["limits"]
        if cmd.get("isolate"):
            enter_private_namespaces(int(lim["tmp_mb"]), int(lim["work_mb"]), int(lim["shm_mb"]))  # returns in the run
        os.chdir(cmd["cwd"])
        apply_limits(float(lim["memory_gb"]), int(lim["cpu_seconds"]), int(lim["file_mb"]), int(lim["nproc"]))
        main(req_r, res_w)
    except BaseException as exc:  # noqa: BLE001 - nothing may return into the zygote's loop
        try:
            os.write(2, f"harness: the run could not start: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    os._exit(70)
