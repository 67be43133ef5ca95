"""Atomic, safe checkpoint files.

Writes go to a temporary file in the same folder, are flushed and fsynced, then moved over
the target with ``os.replace`` (atomic on POSIX): a crash leaves either the old file or the
new one, never half of one. Loads use ``torch.load(weights_only=True)``, which refuses any
pickle that would build objects other than tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .common import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or unsafe."""


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_state`, refusing arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (ddpmkit train --out {path.parent})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain "
            f"containers (weights_only=True rejected it). Only load checkpoints you trust. ({e})"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from e


def save_npy(array, path: str | os.PathLike) -> None:
    """``np.save`` atomically (no half-written arrays after a crash)."""
    import numpy as np

    atomic_write(Path(path), lambda f: np.save(f, np.asarray(array)))
