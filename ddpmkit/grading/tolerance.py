"""Tolerances from the arithmetic: how far a correct float32 or float64 answer may lie
from the exact one.

The reference answer is computed in float64 (inputs, stand-in networks and module
weights promoted). Its tolerance comes from a first-order rounding-error model of the
same computation: the reference is run again ``RUNS`` times under a dispatch mode that
puts a relative error of one float32 unit roundoff (u = 2^-24) of random sign on

1. every floating input (a student may cast the float64 schedule to float32), and
2. the result of every floating-point operation but a constant fill (``ones``, ``full``, ...,
   exact in any precision), Gaussian, scaled by the operation's own
   error bound: |result| for an elementwise operation, |A|·|B|·√K for a product with an
   inner dimension K (matmul, linear, convolution), Σ|x|·√n for a sum or mean of n
   terms, and the norms of both sides for a Euclidean distance.

The spread of those runs around the exact answer is, entry by entry, what rounding does
to this formula with these inputs: it grows where the formula is ill-conditioned
(√(1 − ᾱ_t) at small t, cos(t·ω) at large t) and stays small elsewhere. The tolerance is
``SAFETY`` times that spread (its root mean square: with Gaussian noise, RUNS = 6 runs
leave less than a 1e-8 chance per entry that the estimate falls below 1/20 of the true
spread), plus a floor of a few units of float32 rounding of the
output's scale (for entries the runs never move, such as exact zeros). Any correct
computation, in float32 throughout, in float64 cast back, or in another algebraically
equal order, stays inside it; ``tests/test_grading_variants.py`` checks that over 200
seeds for every question.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

U32 = 2.0**-24  # unit roundoff of float32
RUNS = 6  # perturbed runs of the reference
SAFETY = 64.0  # tolerance = SAFETY x the root-mean-square deviation of the perturbed runs (+ floor)
FLOOR = 8.0  # floor: FLOOR x U32 x (|expected| + the output's largest magnitude x 1e-3)

_A = torch.ops.aten
_PRODUCTS = {_A.mm.default, _A.bmm.default, _A.addmm.default, _A.baddbmm.default}
_REDUCTIONS = {_A.sum.dim_IntList, _A.sum.default, _A.mean.dim, _A.mean.default}
# tensors of one constant: exact in any precision for the values formulas use (0, 1, a step index), so never perturbed;
# perturbing them would, e.g., turn 1 − ᾱ_{t'} = 1 − 1 = 0 into a negative number under a square root
_CONSTANTS = {_A.ones.default, _A.zeros.default, _A.full.default, _A.ones_like.default, _A.zeros_like.default,
              _A.full_like.default, _A.new_ones.default, _A.new_zeros.default, _A.new_full.default, _A.scalar_tensor.default}


def _magnitude(func, args, kwargs, out: torch.Tensor) -> torch.Tensor:
    """An error bound, per entry, for one float32 evaluation of ``func`` (in units of U32)."""
    try:
        if func in _PRODUCTS:
            if func in (_A.addmm.default, _A.baddbmm.default):
                bias, a, b = args[:3]
                mag = torch.matmul(a.abs(), b.abs()) + bias.abs()
            else:
                a, b = args[:2]
                mag = torch.matmul(a.abs(), b.abs())
            return mag * math.sqrt(a.shape[-1])
        if func is _A.convolution.default:
            x, w, b = args[:3]
            mag = torch.ops.aten.convolution(x.abs(), w.abs(), None if b is None else b.abs(), *args[3:])
            return mag * math.sqrt(w[0].numel())
        if func in _REDUCTIONS:
            x = args[0]
            mag = func(x.abs(), *args[1:], **kwargs)
            n = max(1, x.numel() // max(1, out.numel()))
            return mag * math.sqrt(n)
        if func is _A._cdist_forward.default:
            x, y = args[:2]
            sq = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :]  # |x|² + |y|²
            return sq / (2 * torch.maximum(out, (U32 * sq).sqrt())) * math.sqrt(x.shape[-1])
        if func in (_A.cumprod.default, _A.cumsum.default):
            dim = args[1] % out.dim()
            idx = torch.arange(1, out.shape[dim] + 1, dtype=out.dtype).reshape([-1 if d == dim else 1 for d in range(out.dim())])
            return out.abs() * idx.sqrt() if func is _A.cumprod.default else torch.cumsum(args[0].abs(), dim) * idx.sqrt()
    except (RuntimeError, TypeError, ValueError, IndexError):  # an unusual call signature: the elementwise bound
        return out.abs()
    return out.abs()


class RoundingNoise(TorchDispatchMode):
    """Perturb the result of every floating-point operation by N(0, 1) x U32 x its error bound."""

    def __init__(self, generator: torch.Generator, scale: float = U32):
        super().__init__()
        self.g, self.scale = generator, scale

    def noise(self, t: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=self.g, dtype=t.dtype) * mag.to(t.dtype) * self.scale

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func in _CONSTANTS or func in (_A.detach.default, _A.alias.default, _A.lift_fresh.default):
            return out
        mutable = func._schema.is_mutable

        def perturb(t):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
                return t
            mag = _magnitude(func, args, kwargs, t)
            if mutable:  # an in-place operation: perturb the tensor it wrote
                t.add_(self.noise(t, mag))
                return t
            return t + self.noise(t, mag)

        return tree_map(perturb, out)


def perturb_input(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A floating input rounded as float32 could round it: N(0, 1) x U32, relative."""
    if a.dtype.kind != "f":
        return a
    return a.astype(np.float64) * (1 + U32 * rng.standard_normal(a.shape))


def tolerance(exact: np.ndarray, runs: list[np.ndarray]) -> np.ndarray:
    """Per-entry tolerance of one float output from its exact value and the perturbed runs."""
    exact = exact.astype(np.float64)
    spread = np.sqrt(np.mean([(r.astype(np.float64) - exact) ** 2 for r in runs], axis=0)) if runs else np.zeros_like(exact)
    scale = float(np.abs(exact).max()) if exact.size else 0.0
    return SAFETY * spread + FLOOR * U32 * (np.abs(exact) + 1e-3 * scale) + 1e-300
