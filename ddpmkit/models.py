"""Time-conditioned networks for vector data (2-D toys, 64-D digits).

* :func:`timestep_embedding`: the sinusoidal embedding of Ho et al. (2020), as in the
  CS726 report (000_…) and the KAIST assignment (004_…): ``[cos(t ω_k), sin(t ω_k)]``.
* :class:`TimeLinear`: a linear layer whose output is scaled, feature by feature, by an
  MLP of the time embedding (KAIST A1's ``TimeLinear``).
* :class:`TimeLinearMLP`: a stack of TimeLinear layers in the place of KAIST A1's ``SimpleNet``
  (which the assignment leaves to the student): SiLU between layers, a plain linear output;
  :class:`ConcatMLP`: the CS726 network,
  the noisy input concatenated with the time embedding.

Every network takes ``(x, t)`` with ``x`` (B, D) and integer ``t`` of shape (B,) or (1,);
a (1,) timestep is shared by the whole batch (the samplers use this: one embedding per step).
With ``num_classes=K`` a network also takes class labels ``y`` (B,) in 0..K, where K is the
*null token* of classifier-free guidance (``y=None`` means the null token): the label enters
through ``nn.Embedding(K + 1, ·)``, added to the time gate (timelinear) or concatenated with
the time embedding (concat), the same two routes as the UNet's time + label embedding.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
from torch import nn

ModelKind = Literal["timelinear", "concat"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [cos(t ω_0..ω_{h-1}), sin(t ω_0..ω_{h-1})],
    ω_k = max_period^(-k/h), h = dim // 2 (an odd ``dim`` gets a zero last column), in the
    default floating dtype (float32 unless a float64 reference is being computed)."""
    half = dim // 2
    dtype = torch.get_default_dtype()
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)  # (h,)
    args = t.to(dtype)[:, None] * freqs[None]  # (B, h)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2h)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (KAIST A1 ``TimeEmbedding``)."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t.reshape(-1), self.freq_dim))  # (B or 1, hidden)


class TimeLinear(nn.Module):
    """y = (W x + b) ⊙ a(t): a linear layer modulated by an MLP of the time embedding."""

    def __init__(self, dim_in: int, dim_out: int, freq_dim: int = 256, num_classes: int | None = None):
        super().__init__()
        self.fc = nn.Linear(dim_in, dim_out)
        self.time_embedding = TimeEmbedding(dim_out, freq_dim)
        # class-conditional: a per-layer label embedding added to the time gate (index K = null)
        self.label_embedding = nn.Embedding(num_classes + 1, dim_out) if num_classes is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        gate = self.time_embedding(t)  # (B or 1, dim_out)
        if self.label_embedding is not None and y is not None:
            gate = gate + self.label_embedding(y)  # (B, dim_out)
        return self.fc(x) * gate  # (B, dim_out) ⊙ (B or 1, dim_out)


@dataclass
class MLPConfig:
    """A time-conditioned MLP for vector data."""

    kind: ModelKind = "timelinear"  # "timelinear" (KAIST A1) or "concat" (CS726)
    dim: int = 2  # data dimension D (2 for the toys, 64 for digits64)
    hidden: tuple[int, ...] = (128, 128, 128)  # hidden widths (KAIST A1: [128, 128, 128])
    freq_dim: int = 256  # sinusoidal features fed to each time MLP (timelinear) (KAIST: 256)
    temb_dim: int = 128  # time-embedding width concatenated to x (concat) (CS726: 128)
    num_classes: int | None = None  # class-conditional with K classes (+1 null token); None: unconditional

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        if self.kind not in get_args(ModelKind):
            raise ValueError(f"unknown model kind={self.kind!r}; choose one of {', '.join(get_args(ModelKind))}")
        for name in ("dim", "freq_dim", "temb_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {name}={getattr(self, name)!r}")
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers, got hidden={self.hidden!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got num_classes={self.num_classes!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        return cls(**{**d, "hidden": tuple(d.get("hidden", (128, 128, 128)))})


class TimeLinearMLP(nn.Module):
    """KAIST-like ``SimpleNet`` (the assignment leaves it to the student):
    [TimeLinear -> SiLU] × len(hidden) -> Linear."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        dims = [config.dim, *config.hidden]
        self.layers = nn.ModuleList(
            TimeLinear(a, b, config.freq_dim, config.num_classes) for a, b in itertools.pairwise(dims)
        )
        self.out = nn.Linear(dims[-1], config.dim)
        self.act = nn.SiLU()

    @property
    def null_label(self) -> int:
        return _null_label(self.config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = _labels(self.config, y, x.shape[0], x.device)
        for layer in self.layers:
            x = self.act(layer(x, t, y))  # (B, hidden_k)
        return self.out(x)  # (B, D)


class ConcatMLP(nn.Module):
    """CS726 network: [x, emb(t)] -> (Linear -> SiLU) × len(hidden) -> Linear."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        n_cls = config.num_classes
        self.label_embedding = nn.Embedding(n_cls + 1, config.temb_dim) if n_cls is not None else None
        dims = [config.dim + config.temb_dim * (1 if n_cls is None else 2), *config.hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], config.dim))

    @property
    def null_label(self) -> int:
        return _null_label(self.config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = timestep_embedding(t.reshape(-1), self.config.temb_dim).expand(x.shape[0], -1)  # (B, temb)
        parts = [x, emb]
        y = _labels(self.config, y, x.shape[0], x.device)
        if y is not None:
            parts.append(self.label_embedding(y))  # (B, temb)
        return self.net(torch.cat(parts, dim=-1))  # (B, D)


def _null_label(config: MLPConfig) -> int:
    if config.num_classes is None:
        raise ValueError("this MLP is not class-conditional (num_classes=None)")
    return config.num_classes


def _labels(config: MLPConfig, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Checked class labels (B,) for a conditional MLP (``None`` → the null token); None if unconditional."""
    if config.num_classes is None:
        if y is not None:
            raise ValueError("labels y were given to an unconditional MLP; build it with num_classes=K")
        return None
    if y is None:
        return torch.full((batch,), config.num_classes, dtype=torch.long, device=device)
    y = y.to(device=device, dtype=torch.long).reshape(-1).expand(batch) if y.numel() == 1 else y.to(device)
    if y.shape != (batch,) or (y < 0).any() or (y > config.num_classes).any():
        raise ValueError(
            f"class labels must have shape ({batch},) with values in [0, {config.num_classes}] "
            f"({config.num_classes} is the null token), got shape {tuple(y.shape)}"
        )
    return y
