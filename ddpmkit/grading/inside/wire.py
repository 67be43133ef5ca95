"""Frames between the grader and a run, and the one codec of the values they carry.

A frame is a 4-byte big-endian length, a JSON header whose ``arrays`` lists
``[dtype, shape, nbytes]``, then the raw bytes of those arrays: never a pickle.
``FrameReader`` is the only parser of frames, on both sides of the pipe; ``encode`` and
``decode`` are the only codec of values (tensors, NumPy arrays and scalars, Python numbers,
strings, tuples, lists, dicts, dtypes and the stand-in networks), in both directions.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import torch

from .toys import TOYS

MAX_HEADER = 1 << 20  # bytes of one frame's JSON header
MAX_OUTPUT = 64 << 20  # bytes of arrays one answer may send back
NUMERIC = frozenset("biuf")  # bool, signed, unsigned, float
MAX_DEPTH = 8  # nesting of tuples, lists and dicts in one value
MAX_ITEMS = 10_000  # values in one call's arguments
DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                                                       torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)}


class FrameError(Exception):
    """Bytes that are not a frame the reader accepts: the message says what was wrong."""


# ---- frames ------------------------------------------------------------------------------------
def pack(header: dict, arrays=()) -> bytes:
    """One frame: length, JSON header (with the arrays' dtypes, shapes, sizes), raw bytes."""
    arrays = [np.array(a, order="C", copy=None) for a in arrays]  # (ascontiguousarray would make a 0-d array 1-d)
    header = dict(header, arrays=[[a.dtype.str, list(a.shape), int(a.nbytes)] for a in arrays])
    body = json.dumps(header).encode()
    return struct.pack(">I", len(body)) + body + b"".join(a.tobytes() for a in arrays)


def _array_specs(header) -> list:
    specs = header.get("arrays", []) if isinstance(header, dict) else None
    if not isinstance(specs, list):
        raise FrameError("a frame header that is not an object with a list of arrays")
    for s in specs:
        if not (isinstance(s, list) and len(s) == 3 and isinstance(s[0], str) and isinstance(s[1], list)
                and all(type(d) is int and d >= 0 for d in s[1]) and type(s[2]) is int and s[2] >= 0):
            raise FrameError("a malformed array description")
    return specs


def parse_arrays(specs: list, blob: bytes) -> list[np.ndarray]:
    """The arrays ``specs`` describe, read from ``blob`` (numeric dtypes only)."""
    out, pos = [], 0
    for dtype, shape, nbytes in specs:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise FrameError(f"an unknown dtype {dtype[:20]!r}") from None
        if dt.kind not in NUMERIC or dt.hasobject:
            raise FrameError(f"dtype {dt} is not numeric")
        n = dt.itemsize
        for d in shape:
            n *= d
        if n != nbytes or pos + n > len(blob):
            raise FrameError("array sizes do not add up")
        out.append(np.frombuffer(blob, dtype=dt, count=n // dt.itemsize, offset=pos).reshape(shape))
        pos += n
    if pos != len(blob):
        raise FrameError("bytes left over after the arrays")
    return out


class FrameReader:
    """Bytes in (``feed``), whole frames out (``next``). Refuses, with ``FrameError``, a header
    over ``MAX_HEADER`` or a frame whose arrays exceed ``max_bytes``, before buffering them."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.buf, self._want = max_bytes, bytearray(), None

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[dict, list[np.ndarray]] | None:
        if len(self.buf) < 4:
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        if n > MAX_HEADER:
            raise FrameError(f"a frame header of {n} bytes")
        if len(self.buf) < 4 + n:
            return None
        if self._want is None:
            try:
                header = json.loads(bytes(self.buf[4 : 4 + n]))
            except (ValueError, RecursionError) as exc:
                raise FrameError(f"an unreadable frame header ({type(exc).__name__})") from None
            specs = _array_specs(header)
            total = sum(s[2] for s in specs)
            if total > self.max_bytes:
                raise FrameError(f"a frame of {total / 2**20:.0f} MB, over the {self.max_bytes >> 20} MB this side reads")
            self._want = (header, specs, total)
        header, specs, total = self._want
        if len(self.buf) < 4 + n + total:
            return None
        blob = bytes(self.buf[4 + n : 4 + n + total])
        del self.buf[: 4 + n + total]
        self._want = None
        return header, parse_arrays(specs, blob)


def read_frame(fd: int, reader: FrameReader) -> tuple[dict, list[np.ndarray]]:
    """The next frame on ``fd``, blocking: the run's side of the pipe. ``EOFError`` when it closes."""
    while (frame := reader.next()) is None:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            raise EOFError("the pipe closed")
        reader.feed(chunk)
    return frame


# ---- the codec of values -------------------------------------------------------------------------
def encode(value, arrays: list, depth: int = 0) -> dict:
    """The JSON description of ``value``; its arrays are appended to ``arrays`` (a spec names
    their position). ``TypeError`` names a value that cannot travel."""
    if depth > MAX_DEPTH:
        raise TypeError(f"a value nested more than {MAX_DEPTH} levels deep")
    if value is None or type(value) in (bool, int, float, str):
        return {"value": value}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype.is_complex:
            raise TypeError("a complex tensor cannot be passed to the grader")
        arrays.append((t.float() if t.dtype == torch.bfloat16 else t).resolve_neg().numpy().copy())
        return {"tensor": len(arrays) - 1}
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in NUMERIC:
        arrays.append(np.array(value, copy=True))
        return {"numpy" if isinstance(value, np.ndarray) else "npscalar": len(arrays) - 1}
    if isinstance(value, (bool, int, float)):  # subclasses of Python numbers (IntEnum, ...)
        return {"value": bool(value) if isinstance(value, bool) else int(value) if isinstance(value, int) else float(value)}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__ if type(value) in (tuple, list) else "tuple": [encode(v, arrays, depth + 1) for v in value]}
    if isinstance(value, dict) and all(type(k) is str for k in value):
        return {"dict": [[k, encode(v, arrays, depth + 1)] for k, v in value.items()]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": "cpu"}
    for kind, cls in TOYS.items():
        if type(value) is cls:
            return {"net": [kind, {k: encode(getattr(value, k), arrays, depth + 1) for k in cls.WEIGHTS}]}
    raise TypeError(f"a {type(value).__name__} cannot be passed to the grader (numbers, arrays, tensors, tuples and lists can)")


def decode(spec, arrays: list[np.ndarray], depth: int = 0, count: list | None = None):
    """The value ``spec`` describes (arrays copied, so the result is the caller's to change).
    ``ValueError`` for anything malformed: this is where untrusted descriptions are read."""
    count = count if count is not None else [0]
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS or not (isinstance(spec, dict) and len(spec) == 1):
        raise ValueError("a malformed or oversized value description")
    (kind, v), = spec.items()
    if kind == "value" and (v is None or type(v) in (bool, int, float, str)):
        return v
    if kind in ("tensor", "numpy", "npscalar"):
        if type(v) is not int or not 0 <= v < len(arrays):
            raise ValueError("an array reference out of range")
        a = np.array(arrays[v], copy=True)
        return torch.from_numpy(a) if kind == "tensor" else a if kind == "numpy" else a[()]
    if kind in ("tuple", "list") and isinstance(v, list):
        items = [decode(s, arrays, depth + 1, count) for s in v]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict" and isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in v):
        return {k: decode(s, arrays, depth + 1, count) for k, s in v}
    if kind == "dtype" and v in DTYPES:
        return DTYPES[v]
    if kind == "device" and v == "cpu":
        return torch.device("cpu")
    if kind == "net" and isinstance(v, list) and len(v) == 2 and v[0] in TOYS and isinstance(v[1], dict):
        cls = TOYS[v[0]]
        return cls(*(decode(v[1][k], arrays, depth + 1, count) if k in v[1] else None for k in cls.WEIGHTS))
    raise ValueError(f"a value of unknown kind {str(kind)[:20]!r}")
