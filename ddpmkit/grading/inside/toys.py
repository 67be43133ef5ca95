"""The stand-in networks the grader's checks pass to students' functions.

Fixed weights, so samplers and losses are checked to the last digit; they follow the
conventions of every ddpmkit network (``t`` a 0-based step index: a Python or NumPy int, a
0-d, (1,) or (B,) tensor; ``y`` a (B,) label tensor, ``None`` the null label).
"""

from __future__ import annotations

import torch


def _steps(t, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, device=x.device).long().reshape(-1)  # (1,) or (B,)


class ToyModel(torch.nn.Module):
    """ε_θ(x, t, y) = tanh(flatten(x) W + c[t] + e[y]), reshaped like x.

    ``y=None`` (or no ``y``) means the null label ``null_label``, the last row of ``e``. Its
    weights are parameters, so a loss can be back-propagated to them."""

    WEIGHTS = ("W", "c", "e")  # constructor order, as on the wire

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
        h = x.reshape(B, -1) @ self.W + self.c[_steps(t, x)]  # (B, D)
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


class ToyClassifier(torch.nn.Module):
    """Logits of p_φ(y | x_t) = tanh(flatten(x) W + c[t]) V: a stand-in noise-conditional
    classifier, called like the book's ``NoisyClassifier``: ``classifier(x, t) -> (B, K)``."""

    WEIGHTS = ("W", "c", "V")

    def __init__(self, W, c, V):
        super().__init__()
        self.W, self.c, self.V = torch.nn.Parameter(W), torch.nn.Parameter(c), torch.nn.Parameter(V)  # (D, H), (T, H), (H, K)

    def forward(self, x, t):
        return torch.tanh(x.reshape(x.shape[0], -1) @ self.W + self.c[_steps(t, x)]) @ self.V  # (B, K)


TOYS = {"toy": ToyModel, "classifier": ToyClassifier}  # kind on the wire -> class
