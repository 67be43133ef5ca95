"""Start and drive one submission's run (``inside/``): bubblewrap where installed, resource limits always.

With bubblewrap the process sees a read-only system, the Python installation, a copy of
the ``ddpmkit`` package without the functions the students write (``sanitize.py``) and
with only ``grading/inside`` of the grader, and three RAM disks of fixed size: /tmp, its
working folder /sandbox, and /dev/shm in a /dev of its own. It has no network, no other
users' files, and runs as ``nobody`` in fresh user, PID, IPC and network namespaces.
Without bubblewrap only the limits apply, and every report says that the submission was
NOT isolated.

Either way the run installs a seccomp filter (``inside/confine.py``) that refuses new
processes, namespaces and mounts, so a fork bomb, ``os.system`` or a private tmpfs fails
inside the student's cell instead of on the machine.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .inside.confine import apply_limits
from .inside.wire import MAX_OUTPUT, FrameReader
from .sanitize import PACKAGE

Isolation = Literal["auto", "bwrap", "none"]
MAX_RESULT_BYTES = MAX_OUTPUT + (1 << 20)  # a frame from a run larger than this is refused before it is read
NOT_ISOLATED = (
    "NOT ISOLATED: submissions run without bubblewrap, with resource limits only, and can read and write "
    "whatever this user can. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and grade with --sandbox auto."
)


@dataclass
class Limits:
    """What one submission may use. The defaults let ``-j 2`` run on a 24 GiB machine with
    room to spare: two sandboxes of at most 6 GB address space and 2 x 256 MB of RAM disk."""

    timeout: float = 120.0  # wall-clock seconds for the whole submission: cells, calls and restarts
    question_timeout: float = 40.0  # wall-clock seconds one question may take (within the budget)
    memory_gb: float = 6.0  # address space; importing torch alone takes about 3.5 GB of it
    cpu_seconds: int = 600  # CPU time (the wall clock usually ends a run first)
    processes: int = 512  # RLIMIT_NPROC above the user's current count (threads count too)
    file_mb: int = 256  # largest file the run may write
    tmp_mb: int = 256  # size of the sandbox's /tmp (a RAM disk)
    work_mb: int = 256  # size of its working folder /sandbox (a RAM disk)
    shm_mb: int = 16  # size of its /dev/shm (a RAM disk of its own)
    output_kb: int = 64  # stdout + stderr kept for the feedback; the rest is counted and dropped

    def __post_init__(self):
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"the sandbox limit {name} must be > 0, got {value!r} (--{name.replace('_', '-')})")


@dataclass
class RunResult:
    returncode: int | None  # None when killed on timeout
    timed_out: bool
    seconds: float
    output: str  # the first ``output_kb`` of stdout + stderr
    output_bytes: int  # everything the run printed

    def ending(self, limits: Limits, timeout: float | None = None) -> str:
        """How the process ended, in words for a student."""
        if self.timed_out:
            return f"timed out after {timeout if timeout is not None else limits.timeout:.0f} s (an infinite loop, or far too slow)"
        rc = self.returncode
        if rc is not None and (rc < 0 or 128 < rc < 128 + 65):  # killed, or bubblewrap reporting a kill as 128 + signal
            sig = -rc if rc < 0 else rc - 128
            name = {signal.SIGSEGV: "a segmentation fault", signal.SIGKILL: "SIGKILL (usually out of memory)",
                    signal.SIGXCPU: f"using more than {limits.cpu_seconds} s of CPU", signal.SIGXFSZ: f"writing a file over {limits.file_mb} MB",
                    signal.SIGABRT: "an abort (a C library gave up, often out of memory)",
                    signal.SIGBUS: "a bus error"}.get(sig, signal.Signals(sig).name)
            return f"crashed: the process was killed by {name} (signal {sig})"
        return f"ended the process with exit code {rc} (os._exit or a crash in C code)"


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def resolve_isolation(isolation: Isolation) -> Literal["bwrap", "none"]:
    if isolation not in ("auto", "bwrap", "none"):
        raise ValueError(f"unknown isolation={isolation!r}; choose auto, bwrap or none")
    if isolation == "auto":
        return "bwrap" if bwrap_path() else "none"
    if isolation == "bwrap" and not bwrap_path():
        raise RuntimeError("isolation='bwrap' but bubblewrap is not installed; apt-get install bubblewrap, or use --sandbox none")
    return isolation


def _user_tasks() -> int:
    """Processes and threads this user already runs (RLIMIT_NPROC counts them all)."""
    uid, n = os.getuid(), 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{d}/task"))
            except OSError:
                pass
    return n


def _limit_fn(limits: Limits):
    nproc = _user_tasks() + limits.processes
    return lambda: apply_limits(limits.memory_gb, limits.cpu_seconds, limits.file_mb, nproc)


def _python_roots() -> list[Path]:
    """Folders the sandbox needs read-only: the interpreter, its packages and ddpmkit."""
    import ddpmkit

    roots = {Path(sys.base_prefix), Path(sys.prefix), Path(ddpmkit.__file__).resolve().parent}
    for p in sys.path:
        if p and Path(p).is_dir() and "site-packages" in p:
            roots.add(Path(p).resolve())
    exe = Path(sys.executable)
    roots.add(exe.parent)
    roots.add(exe.resolve().parent.parent)
    # keep the outermost folders only; never the whole home or repository
    roots = sorted(r for r in roots if r != Path("/"))
    return [r for r in roots if not any(o != r and o in r.parents for o in roots)]


def bwrap_command(root: Path, limits: Limits, argv: list[str]) -> list[str]:
    """bubblewrap around ``argv``: the system read-only, the withheld copy of ddpmkit (``root``)
    over the real package, sized RAM disks for /tmp and the working folder, nothing else."""
    cmd = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
           "--proc", "/proc", "--dev", "/dev", "--size", str(limits.shm_mb << 20), "--tmpfs", "/dev/shm",
           "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]  # /tmp first: later binds may lie under it
    for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"):
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        elif os.path.exists(p):
            cmd += ["--ro-bind", p, p]
    for r in _python_roots():
        if not str(r).startswith(("/usr/", "/etc/")):
            cmd += ["--ro-bind", str(r), str(r)]
    cmd += ["--ro-bind", str(root / "ddpmkit"), str(PACKAGE)]  # the answers are not in this copy
    cmd += ["--size", str(limits.work_mb << 20), "--tmpfs", "/sandbox", "--chdir", "/sandbox", "--remount-ro", "/"]
    return cmd + argv


def sandbox_env(home: str, seed: int, pythonpath: str | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp" if pythonpath is None else home, "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.mpl", "CUDA_VISIBLE_DEVICES": "",
        "IPYTHONDIR": ("/tmp" if pythonpath is None else home) + "/.ipython",  # not in the notebook's folder
        "PYTHONDONTWRITEBYTECODE": "1", "DDPMKIT_PROFILE": "smoke", "TQDM_DISABLE": "1",
        "PYTHONHASHSEED": "0",  # the same for every run, forked or not: reproducible set and dict orders
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


class Session:
    """One sandboxed run and its pipes, driven by one selector loop: every write to the run and
    every read from it has a deadline, so a run that stops reading, floods, or says nothing
    costs at most the time it was given.

    ``send(frame, deadline)`` queues a frame and writes it; ``receive(deadline)`` returns the
    next frame (header, arrays), or None when the run ended or the deadline passed
    (``timed_out`` says which). What the run prints is drained by the same loop; the first
    ``output_kb`` are kept."""

    def __init__(self, root: Path, limits: Limits, isolation: Literal["bwrap", "none"], seed: int, zygote: Zygote | None = None):
        self.limits, self.timed_out, self.t0 = limits, False, time.monotonic()
        self.zygote, self.proc, self.scratch = zygote, None, None
        if zygote is not None:  # a forked run: its own namespaces and RAM disks, no new interpreter
            self.pid, self.req_w, self.res_r, self.out_r, self.status_r = zygote.spawn(limits)
        else:
            self._start_process(root, limits, isolation, seed)
        self.reader, self.pending, self.closed = FrameReader(MAX_RESULT_BYTES), bytearray(), False
        self.kept, self.total = bytearray(), 0
        self.sel = selectors.DefaultSelector()
        for fd in (self.req_w, self.res_r, self.out_r):
            os.set_blocking(fd, False)
        self.sel.register(self.res_r, selectors.EVENT_READ)
        self.sel.register(self.out_r, selectors.EVENT_READ)

    def _start_process(self, root: Path, limits: Limits, isolation: str, seed: int) -> None:
        req_r, self.req_w = os.pipe()
        self.res_r, res_w = os.pipe()
        run = ["-m", "ddpmkit.grading.inside", str(req_r), str(res_w)]
        if isolation == "bwrap":
            argv = bwrap_command(root, limits, [sys.executable, "-s", "-P", "-u", *run])
            env, cwd = sandbox_env("/sandbox", seed), None
        else:
            self.scratch = Path(tempfile.mkdtemp(prefix="ddpmkit-grade-"))
            argv = [sys.executable, "-s", "-P", "-u", *run]
            env, cwd = sandbox_env(str(self.scratch), seed, pythonpath=str(root)), str(self.scratch)
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=_limit_fn(limits), start_new_session=True,  # noqa: PLW1509 - rlimits only
                                     pass_fds=(req_r, res_w))
        os.close(req_r)
        os.close(res_w)
        self.out_r = self.proc.stdout.fileno()

    def _pump(self, deadline: float, done) -> bool:
        """Write what is queued, read results and output, until ``done()`` (True), the deadline
        (False, ``timed_out``) or the run's end (False)."""
        while not done():
            if self.closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                return False
            if self.pending and self.req_w not in self.sel.get_map():
                self.sel.register(self.req_w, selectors.EVENT_WRITE)
            for key, _ in self.sel.select(min(left, 1.0)):
                self._ready(key.fd)
        return True

    def _ready(self, fd: int) -> None:
        try:
            if fd == self.req_w:
                del self.pending[: os.write(fd, self.pending[: 1 << 16])]
                if not self.pending:
                    self.sel.unregister(fd)
                return
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:  # a broken pipe: the run has gone
            self.closed, chunk = True, b""
        if fd == self.res_r and chunk:
            self.reader.feed(chunk)
        elif fd == self.out_r and chunk:
            self.total += len(chunk)
            self.kept += chunk[: max(0, self.limits.output_kb * 1024 - len(self.kept))]
        elif not chunk:
            self.sel.unregister(fd)
            self.closed = self.closed or fd == self.res_r

    def send(self, frame: bytes, deadline: float) -> bool:
        """Queue ``frame`` and write it, reading and draining meanwhile; False when the run
        ended or the deadline passed before all of it was written."""
        self.pending += frame
        return self._pump(deadline, lambda: not self.pending)

    def receive(self, deadline: float) -> tuple[dict, list] | None:
        """The next frame, or None (ended, timed out). Raises ``FrameError`` for a frame that is
        malformed or larger than the grader reads."""
        box = []

        def got() -> bool:
            if not box and (frame := self.reader.next()) is not None:
                box.append(frame)
            return bool(box)

        if self._pump(deadline, got) or got():
            return box[0]
        return None

    def close(self) -> RunResult:
        returncode = self._close_forked() if self.zygote is not None else self._close_process()
        end = time.monotonic() + 2  # what it printed last
        while self.out_r in self.sel.get_map() and time.monotonic() < end:
            for key, _ in self.sel.select(0.1):
                if key.fd == self.out_r:
                    self._ready(key.fd)
        self.sel.close()
        for fd in (self.req_w, self.res_r) if self.proc is not None else (self.req_w, self.res_r, self.out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc is not None:
            self.proc.stdout.close()  # owns out_r
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return RunResult(None if self.timed_out else returncode, self.timed_out, time.monotonic() - self.t0,
                         self.kept.decode("utf-8", "replace"), self.total)

    def _close_process(self) -> int | None:
        if not self.timed_out:  # it ended or is ending by itself: keep its real exit status
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole session: bwrap, or the run and anything it left
        except ProcessLookupError:
            pass
        self.proc.wait()
        return self.proc.returncode

    def _close_forked(self) -> int | None:
        status = _read_status(self.status_r, 0 if self.timed_out else 2)
        if status is None:
            self.zygote.kill(self.pid)
            status = _read_status(self.status_r, 10)
        os.close(self.status_r)
        return status


def _read_status(fd: int, timeout: float) -> int | None:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 4)
    return struct.unpack(">i", data)[0] if len(data) == 4 else None


class ZygoteError(RuntimeError):
    """The zygote could not start a run."""


class Zygote:
    """One sandbox with Python, NumPy, PyTorch and the withheld ddpmkit already imported,
    forking one run per submission (``inside.runloop.zygote_main``). Starting an interpreter and
    importing torch is most of a fresh sandbox's cost; a forked run skips it and still gets
    what a fresh bubblewrap gives: its own user, mount, PID, network and IPC namespaces,
    its own RAM disks for /tmp and /sandbox, a /proc that shows only itself, its limits,
    no capabilities, and the seccomp filter. The zygote never runs a notebook's code."""

    def __init__(self, root: Path, limits: Limits):
        import socket

        self.limits, self.lock = limits, threading.Lock()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = bwrap_command(root, limits, [sys.executable, "-s", "-P", "-u", "-m", "ddpmkit.grading.inside", "--zygote", str(theirs.fileno())])
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the zygote's life: what it says, for an error message
        self.proc = subprocess.Popen(argv, env=sandbox_env("/sandbox", 0), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(theirs.fileno(),))
        theirs.close()
        self.ctl = ours
        self.ctl.settimeout(120)

    def spawn(self, limits: Limits) -> tuple[int, int, int, int, int]:
        """A new run: (pid, request pipe, results pipe, output pipe, exit-status pipe)."""
        import socket

        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        st_r, st_w = os.pipe()
        msg = {"t": "spawn", "isolate": True, "cwd": "/sandbox",
               "limits": {"memory_gb": limits.memory_gb, "cpu_seconds": limits.cpu_seconds, "file_mb": limits.file_mb,
                          "tmp_mb": limits.tmp_mb, "work_mb": limits.work_mb, "shm_mb": limits.shm_mb, "nproc": _user_tasks() + limits.processes}}
        try:
            with self.lock:
                socket.send_fds(self.ctl, [json.dumps(msg).encode()], [req_r, res_w, out_w, st_w])
                reply = self.ctl.recv(4096)
            pid = int(json.loads(reply)["pid"])
        except (OSError, ValueError, KeyError) as exc:
            for fd in (req_r, req_w, res_r, res_w, out_r, out_w, st_r, st_w):
                os.close(fd)
            self.log.seek(0)
            raise ZygoteError(f"the zygote did not start a run: {exc}; {self.log.read()[-500:].decode(errors='replace')}") from None
        for fd in (req_r, res_w, out_w, st_w):
            os.close(fd)
        return pid, req_w, res_r, out_r, st_r

    def kill(self, pid: int) -> None:
        try:
            with self.lock:
                self.ctl.send(json.dumps({"t": "kill", "pid": pid}).encode())
        except OSError:
            pass

    def close(self) -> None:
        self.ctl.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()



