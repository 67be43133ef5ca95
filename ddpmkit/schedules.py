"""Noise schedules β_1..β_T and every quantity derived from them.

Index convention: tensors are 0-indexed, so entry ``i`` holds the paper's timestep
``t = i + 1`` of Ho et al. (2020). Everything is computed once, in float64, and kept as
named tensors; :meth:`NoiseSchedule.to` makes a float32 copy on the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

ScheduleName = str  # a key of SCHEDULES (the registry below is the one list of names)


@dataclass
class ScheduleConfig:
    """How to build a :class:`NoiseSchedule`; stored with every run. Checked on creation."""

    name: ScheduleName = "linear"  # a registered schedule: one of SCHEDULES
    T: int = 1000  # number of diffusion steps (Ho et al. use 1000)
    beta_1: float = 1e-4  # first variance, linear/quadratic/sigmoid/zero_snr (Ho et al.)
    beta_T: float = 0.02  # last variance, linear/quadratic/sigmoid/zero_snr (Ho et al.)
    cosine_s: float = 0.008  # offset s of the cosine schedule (Nichol & Dhariwal 2021)
    max_beta: float = 0.999  # cosine betas are clipped here (Nichol & Dhariwal 2021)
    betas: tuple[float, ...] | None = None  # user-given betas, only with name="custom"

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule name={self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1:
            raise ValueError(f"T must be an integer >= 1, got T={self.T!r}")
        params = SCHEDULES[self.name].params
        for arg in ("beta_1", "beta_T"):
            if arg in params and not (0.0 < float(getattr(self, arg)) < 1.0):
                raise ValueError(f"{arg} must lie in (0, 1), got {arg}={getattr(self, arg)!r}")
        if "max_beta" in params and not (0.0 < self.max_beta < 1.0):
            raise ValueError(f"max_beta must lie in (0, 1), got max_beta={self.max_beta!r}")
        if "cosine_s" in params and self.cosine_s < 0:
            raise ValueError(f"cosine_s must be >= 0, got cosine_s={self.cosine_s!r}")
        if "betas" in params:
            if self.betas is None:
                raise ValueError(f"name={self.name!r} needs betas=[...] (one value per step)")
            if len(self.betas) != self.T:
                raise ValueError(f"betas has {len(self.betas)} values but T={self.T}; give exactly T betas")
        elif self.betas is not None:
            raise ValueError(f"betas=[...] is only read by the 'custom' schedule, not by name={self.name!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas) if self.betas is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleConfig:
        d = dict(d)
        if d.get("betas") is not None:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# --- the registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleSpec:
    """A registered schedule: how to compute β_1..β_T from a config, and which fields it reads."""

    betas: Callable[[ScheduleConfig], torch.Tensor]  # config -> float64 (T,) betas
    params: tuple[str, ...]  # the ScheduleConfig fields it reads besides T
    description: str  # one line, with the source


SCHEDULES: dict[str, ScheduleSpec] = {}


def register_schedule(name: str, params: tuple[str, ...], description: str):
    """Decorator: add ``fn(config) -> betas`` to :data:`SCHEDULES` under ``name``. A registered
    schedule is reachable from ``ScheduleConfig``, ``make_betas``, the CLI's ``--schedule`` and
    the contract tests (``tests/test_contracts.py``) at once."""

    def add(fn):
        if name in SCHEDULES:
            raise ValueError(f"a schedule named {name!r} is already registered")
        SCHEDULES[name] = ScheduleSpec(fn, params, description)
        return fn

    return add


def _ramp(T: int) -> torch.Tensor:
    """(t-1)/(T-1) for t = 1..T, float64 (zero when T = 1)."""
    return torch.linspace(0.0, 1.0, T, dtype=torch.float64) if T > 1 else torch.zeros(1, dtype=torch.float64)


@register_schedule("linear", ("beta_1", "beta_T"), "β_t = β_1 + (t-1)/(T-1) (β_T - β_1) (Ho et al. 2020)")
def _linear(c: ScheduleConfig) -> torch.Tensor:
    return c.beta_1 + _ramp(c.T) * (c.beta_T - c.beta_1)


@register_schedule("quadratic", ("beta_1", "beta_T"), "β_t = (√β_1 + (t-1)/(T-1) (√β_T - √β_1))² (KAIST 'quad')")
def _quadratic(c: ScheduleConfig) -> torch.Tensor:
    return (math.sqrt(c.beta_1) + _ramp(c.T) * (math.sqrt(c.beta_T) - math.sqrt(c.beta_1))) ** 2


@register_schedule("cosine", ("cosine_s", "max_beta"), "ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β clipped (Nichol & Dhariwal eq. 17)")
def _cosine(c: ScheduleConfig) -> torch.Tensor:
    t = torch.arange(c.T + 1, dtype=torch.float64)
    f = torch.cos((t / c.T + c.cosine_s) / (1 + c.cosine_s) * math.pi / 2) ** 2
    abar = f / f[0]
    return torch.clamp(1.0 - abar[1:] / abar[:-1], max=c.max_beta)


@register_schedule("sigmoid", ("beta_1", "beta_T"), "β_t = β_1 + (β_T - β_1) σ(-6 + 12 (t-1)/(T-1)) (CS726 report)")
def _sigmoid(c: ScheduleConfig) -> torch.Tensor:
    return c.beta_1 + (c.beta_T - c.beta_1) * torch.sigmoid(-6.0 + 12.0 * _ramp(c.T))


@register_schedule("custom", ("betas",), "the given betas")
def _custom(c: ScheduleConfig) -> torch.Tensor:
    return torch.as_tensor(c.betas, dtype=torch.float64).flatten()


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1: shift and scale √ᾱ_t so that √ᾱ_T = 0 (SNR 0 at the last step: x_T is
    pure noise, as sampling assumes) while √ᾱ_1 is kept; returns the new betas (β_T = 1).
    Applies to any schedule's betas."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.numel() < 2:
        raise ValueError("the zero-terminal-SNR rescaling needs T >= 2 (it keeps ᾱ_1 and zeroes ᾱ_T)")
    sqrt_abar = torch.cumprod(1.0 - betas, 0).sqrt()  # (T,)
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)  # 1. shift to 0 at T, 2. scale to keep t = 1
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # 3. back to α_t = ᾱ_t/ᾱ_{t-1}
    return 1.0 - alphas


@register_schedule("zero_snr", ("beta_1", "beta_T"), "linear rescaled to zero terminal SNR (Lin et al. 2024, Alg. 1); needs v, x0 or mean prediction")
def _zero_snr(c: ScheduleConfig) -> torch.Tensor:
    return rescale_zero_terminal_snr(_linear(c))


def make_betas(
    name: ScheduleName,
    T: int,
    beta_1: float = 1e-4,
    beta_T: float = 0.02,
    *,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
    betas: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Return β_1..β_T as a float64 tensor of shape (T,), from the registered schedule ``name``:

    * linear:    β_t = β_1 + (t-1)/(T-1) (β_T - β_1)                      (Ho et al. 2020)
    * quadratic: β_t = (√β_1 + (t-1)/(T-1) (√β_T - √β_1))²                 (KAIST "quad")
    * cosine:    ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2),
                 β_t = min(1 - ᾱ(t)/ᾱ(t-1), max_beta)                      (Nichol & Dhariwal eq. 17)
    * sigmoid:   β_t = β_1 + (β_T - β_1) σ(-6 + 12 (t-1)/(T-1))             (CS726 report)
    * zero_snr:  linear, rescaled so that ᾱ_T = 0                           (Lin et al. 2024)
    * custom:    the given ``betas``.

    Every β_t lies in (0, 1); only the last may equal 1 (a zero terminal SNR).
    """
    if betas is not None:
        betas = tuple(float(b) for b in torch.as_tensor(betas, dtype=torch.float64).flatten().tolist())
    config = ScheduleConfig(name=name, T=T, beta_1=beta_1, beta_T=beta_T, cosine_s=cosine_s, max_beta=max_beta, betas=betas)
    out = SCHEDULES[name].betas(config)
    if not torch.isfinite(out).all() or (out <= 0).any() or (out[:-1] >= 1).any() or out[-1] > 1:
        raise ValueError(
            f"betas must lie in (0, 1) (only the last may be 1); got min {out.min().item():.3g}, max {out.max().item():.3g}"
        )
    return out


class NoiseSchedule:
    """All quantities of a DDPM schedule, as named tensors (float64 unless moved with ``to``).

    Attributes (shape (T,), entry i is the paper's t = i + 1):
        betas                       β_t
        alphas                      α_t = 1 - β_t
        alphas_cumprod              ᾱ_t = Π_{s<=t} α_s
        alphas_cumprod_prev         ᾱ_{t-1}, with ᾱ_0 = 1
        sqrt_alphas_cumprod         √ᾱ_t                  (eq. 4 mean)
        sqrt_one_minus_alphas_cumprod √(1 - ᾱ_t)          (eq. 4 std)
        sqrt_recip_alphas_cumprod   1/√ᾱ_t                (eq. 15: x0 from ε)
        sqrt_recipm1_alphas_cumprod √(1/ᾱ_t - 1)
        sqrt_recip_alphas           1/√α_t                (eq. 11)
        posterior_variance          β̃_t = (1 - ᾱ_{t-1})/(1 - ᾱ_t) β_t   (eq. 7)
        posterior_log_variance_clipped log β̃_t with β̃_1 replaced by β̃_2 (β̃_1 = 0)
        posterior_mean_coef1        √ᾱ_{t-1} β_t / (1 - ᾱ_t)           (eq. 7, coefficient of x0)
        posterior_mean_coef2        √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)      (eq. 7, coefficient of x_t)
        snr                         ᾱ_t / (1 - ᾱ_t)
    """

    def __init__(self, betas: torch.Tensor, config: ScheduleConfig | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        self.config = config or ScheduleConfig(name="custom", T=betas.numel(), betas=tuple(betas.tolist()))
        self.T = int(betas.numel())
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.sqrt_recip_alphas = self.alphas.rsqrt()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        pv_clip = self.posterior_variance.clone()
        if self.T > 1:
            pv_clip[0] = self.posterior_variance[1]
        else:
            pv_clip[0] = betas[0]
        self.posterior_log_variance_clipped = pv_clip.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = self.alphas.sqrt() * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    TENSORS = (
        "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "sqrt_recip_alphas", "posterior_variance", "posterior_log_variance_clipped",
        "posterior_mean_coef1", "posterior_mean_coef2", "snr",
    )  # fmt: skip

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        betas = make_betas(
            config.name, config.T, config.beta_1, config.beta_T,
            cosine_s=config.cosine_s, max_beta=config.max_beta, betas=config.betas,
        )  # fmt: skip
        return cls(betas, config)

    @classmethod
    def create(cls, name: ScheduleName = "linear", T: int = 1000, **kwargs) -> NoiseSchedule:
        """``NoiseSchedule.create("cosine", T=1000)``; keyword arguments as in :class:`ScheduleConfig`."""
        if "betas" in kwargs and kwargs["betas"] is not None:
            kwargs["betas"] = tuple(float(b) for b in torch.as_tensor(kwargs["betas"]).flatten().tolist())
        return cls.from_config(ScheduleConfig(name=name, T=T, **kwargs))

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ᾱ_T = 0: x_T is pure noise (Lin et al. 2024); ε-prediction cannot serve it."""
        return bool(self.alphas_cumprod[-1] == 0)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    @property
    def dtype(self) -> torch.dtype:
        return self.betas.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> NoiseSchedule:
        """A copy with every tensor cast (from the float64 values) and moved to ``device``."""
        new = object.__new__(NoiseSchedule)
        new.config, new.T = self.config, self.T
        for name in self.TENSORS:
            setattr(new, name, getattr(self, name).to(device=device, dtype=dtype))
        return new

    def __repr__(self) -> str:
        c = self.config
        return f"NoiseSchedule(name={c.name!r}, T={self.T}, alpha_bar_T={self.alphas_cumprod[-1].item():.3e})"


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gather ``a[t]`` and reshape to (B, 1, ..., 1) so that it broadcasts against ``x``."""
    out = a[t.to(a.device)].to(device=x.device, dtype=x.dtype)
    return out.reshape(t.shape[0], *([1] * (x.dim() - 1)))
