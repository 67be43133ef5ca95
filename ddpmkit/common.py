"""What several modules share: the run folder's file names, atomic writes, the device of a
model, and the machine in words. Nothing here imports another ``ddpmkit`` module.
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

# A run folder (``ddpmkit train --out DIR``) holds these three files.
CONFIG_FILE = "config.json"  # the RunConfig, as JSON
CHECKPOINT_FILE = "checkpoint.pt"  # model, EMA, optimizer, RNG states, step, loss history
METADATA_FILE = "metadata.json"  # data actually used, steps, seed, wall time, hardware


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then move it over
    ``path`` with ``os.replace`` (atomic on POSIX): a crash leaves the old file or the new
    one, never half of one. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_device(model) -> torch.device:
    """The device of a module's first parameter (CPU for a parameterless callable)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; a CUDA device without CUDA is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use --device cpu")
    return torch.device(device)


def hardware() -> str:
    """The machine in words, for checkpoint metadata and benchmark results."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, no GPU used"
