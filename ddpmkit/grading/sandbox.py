"""Run one submission's harness in a sandbox: bubblewrap where installed, resource limits always.

With bubblewrap the process sees a read-only system, the Python installation and the
``ddpmkit`` package (its ``grading`` folder replaced by an empty one), a private /tmp and
its own scratch folder; it has no network, no other users' files, and runs as ``nobody``
in fresh user, PID, IPC and network namespaces. Without bubblewrap only the limits apply,
and every report says that the submission was NOT isolated.

Either way the harness itself installs a seccomp filter that forbids new processes, so a
fork bomb or ``os.system`` fails inside the student's cell instead of on the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Isolation = Literal["auto", "bwrap", "none"]
NOT_ISOLATED = (
    "NOT ISOLATED: submissions run without bubblewrap, with resource limits only, and can read and write "
    "whatever this user can. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and grade with --sandbox auto."
)


@dataclass
class Limits:
    """What one sandboxed run may use."""

    timeout: float = 120.0  # wall-clock seconds for one run (cells and calls)
    memory_gb: float = 6.0  # address space; importing torch alone takes about 3.5 GB of it
    cpu_seconds: int = 600  # CPU time (the wall clock usually ends a run first)
    processes: int = 512  # RLIMIT_NPROC above the user's current count (threads count too)
    file_mb: int = 256  # largest file the run may write
    output_kb: int = 64  # stdout + stderr kept for the feedback; the rest is counted and dropped


@dataclass
class RunResult:
    returncode: int | None  # None when killed on timeout
    timed_out: bool
    seconds: float
    output: str  # the first ``output_kb`` of stdout + stderr
    output_bytes: int  # everything the run printed

    def ending(self, limits: Limits) -> str:
        """How the process ended, in words for a student."""
        if self.timed_out:
            return f"timed out after {limits.timeout:.0f} s (an infinite loop, or far too slow)"
        rc = self.returncode
        if rc is not None and (rc < 0 or 128 < rc < 128 + 65):  # killed, or bubblewrap reporting a kill as 128 + signal
            sig = -rc if rc < 0 else rc - 128
            name = {signal.SIGSEGV: "a segmentation fault", signal.SIGKILL: "SIGKILL (usually out of memory)",
                    signal.SIGXCPU: f"using more than {limits.cpu_seconds} s of CPU", signal.SIGXFSZ: f"writing a file over {limits.file_mb} MB",
                    signal.SIGABRT: "an abort (a C library gave up, often out of memory)", signal.SIGBUS: "a bus error"}.get(sig, signal.Signals(sig).name)
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

    def apply() -> None:
        mem = int(limits.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20, limits.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


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


def bwrap_command(workdir: Path, argv: list[str]) -> list[str]:
    import ddpmkit

    cmd = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # /tmp first: later binds may lie under it
    for p in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"):
        if os.path.islink(p):
            cmd += ["--symlink", os.readlink(p), p]
        elif os.path.exists(p):
            cmd += ["--ro-bind", p, p]
    for root in _python_roots():
        if not str(root).startswith(("/usr/", "/etc/")):
            cmd += ["--ro-bind", str(root), str(root)]
    hidden = Path(ddpmkit.__file__).resolve().parent / "grading"
    cmd += ["--tmpfs", str(hidden), "--remount-ro", str(hidden)]  # the checks: not there
    cmd += ["--bind", str(workdir), "/sandbox", "--chdir", "/sandbox", "--remount-ro", "/"]  # only /tmp and /sandbox writable
    return cmd + argv


def sandbox_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{home}/.mpl", "CUDA_VISIBLE_DEVICES": "",
        "PYTHONDONTWRITEBYTECODE": "1", "DDPMKIT_PROFILE": "smoke", "TQDM_DISABLE": "1",
    }


def run_harness(workdir: Path, limits: Limits, isolation: Literal["bwrap", "none"]) -> RunResult:
    """Run ``harness.py`` in ``workdir`` under ``limits``; kill it and its children on timeout."""
    if isolation == "bwrap":
        argv = bwrap_command(workdir, [sys.executable, "-I", "-u", "/sandbox/harness.py"])
        env, cwd = sandbox_env("/sandbox"), None
    else:
        argv, env, cwd = [sys.executable, "-I", "-u", str(workdir / "harness.py")], sandbox_env(str(workdir)), str(workdir)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_limit_fn(limits), start_new_session=True)
    kept, total = bytearray(), [0]

    def drain() -> None:  # read everything so a flood never blocks the child; keep the head
        while chunk := proc.stdout.read(65536):
            total[0] += len(chunk)
            if len(kept) < limits.output_kb * 1024:
                kept.extend(chunk[: limits.output_kb * 1024 - len(kept)])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: bwrap, or the harness and anything it left
        except ProcessLookupError:
            pass
        proc.wait()
        reader.join(timeout=5)
    return RunResult(None if timed_out else proc.returncode, timed_out, time.monotonic() - t0,
                     kept.decode("utf-8", "replace"), total[0])
