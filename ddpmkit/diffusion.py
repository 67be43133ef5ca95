"""Forward process, posterior, and the four network parameterizations.

Equation numbers refer to Ho et al. (2020), "Denoising Diffusion Probabilistic Models";
v-prediction is from Salimans & Ho (2022), "Progressive Distillation", §4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from .schedules import NoiseSchedule, extract

Predictor = Literal["eps", "x0", "mean", "v"]
PREDICTORS: tuple[str, ...] = get_args(Predictor)  # the one list of predictor names


def check_predictor(predictor: str, schedule: NoiseSchedule | None = None) -> None:
    """Refuse an unknown predictor, or ε-prediction on a schedule with ᾱ_T = 0 (at t = T the
    input is pure noise, so ε̂ says nothing about x0: x̂0 = (x_T - ε̂)/0; Lin et al. 2024 §3.2)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor={predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if predictor == "eps" and schedule is not None and schedule.zero_terminal_snr:
        raise ValueError(
            f"predictor='eps' cannot be used with the zero-terminal-SNR schedule {schedule.config.name!r}: "
            "x0 = (x_T - √(1-ᾱ_T) ε)/√ᾱ_T divides by √ᾱ_T = 0; choose predictor 'v', 'x0' or 'mean' (Lin et al. 2024 use v)"
        )


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on its own device), then moved to ``device``."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def draw_timesteps(T: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """``n`` timesteps uniform on {0, ..., T-1} (0-based), drawn from ``generator``, moved to ``device``."""
    if generator is None:
        return torch.randint(0, T, (n,), device=device)
    return torch.randint(0, T, (n,), generator=generator, device=generator.device).to(device)


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x0 + √(1 - ᾱ_t) ε, a draw from q(x_t | x0), eq. (4)."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise
    )


def q_posterior(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0), eqs. (6)-(7).

    μ̃_t = √ᾱ_{t-1} β_t/(1-ᾱ_t) x0 + √α_t (1-ᾱ_{t-1})/(1-ᾱ_t) x_t,   β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t
    """
    mean = extract(schedule.posterior_mean_coef1, t, x_t) * x0 + extract(schedule.posterior_mean_coef2, t, x_t) * x_t
    var = extract(schedule.posterior_variance, t, x_t)
    logvar = extract(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, var, logvar


@dataclass
class Prediction:
    """ε̂, x̂0 and μ̂ implied by one network output at (x_t, t)."""

    eps: torch.Tensor  # ε̂_θ(x_t, t)
    x0: torch.Tensor  # x̂_0(x_t, t)
    mean: torch.Tensor  # μ̂_θ(x_t, t), the mean of p_θ(x_{t-1} | x_t)


def x0_from_eps(s: NoiseSchedule, x_t, t, eps):
    """x̂0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t, eq. (15)."""
    return extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def eps_from_x0(s: NoiseSchedule, x_t, t, x0):
    """ε̂ = (x_t - √ᾱ_t x̂0)/√(1-ᾱ_t), eq. (4) solved for ε (finite at a zero terminal SNR too)."""
    return (x_t - extract(s.sqrt_alphas_cumprod, t, x_t) * x0) / extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)


def v_target(s: NoiseSchedule, x0, eps, t):
    """v = √ᾱ_t ε - √(1-ᾱ_t) x0 (Salimans & Ho 2022, §4)."""
    return extract(s.sqrt_alphas_cumprod, t, x0) * eps - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def convert(
    schedule: NoiseSchedule,
    predictor: Predictor,
    out: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_x0: tuple[float, float] | None = None,
) -> Prediction:
    """Turn a network output ``out`` of kind ``predictor`` into ε̂, x̂0 and μ̂.

    * eps:  x̂0 by eq. (15); μ̂ = (x_t - β_t/√(1-ᾱ_t) ε̂)/√α_t, eq. (11)
    * x0:   ε̂ from eq. (4); μ̂ = μ̃_t(x_t, x̂0), eq. (7)
    * v:    x̂0 = √ᾱ_t x_t - √(1-ᾱ_t) v̂,  ε̂ = √(1-ᾱ_t) x_t + √ᾱ_t v̂;  μ̂ by eq. (7)
    * mean: x̂0 = (μ̂ - c2 x_t)/c1, eq. (7) solved for x0; ε̂ from eq. (4)

    With ``clip_x0=(lo, hi)``, x̂0 is clamped and ε̂ and μ̂ are recomputed from it.
    """
    check_predictor(predictor)
    s = schedule
    if predictor == "eps":
        eps = out
        x0 = x0_from_eps(s, x_t, t, eps)
        mean = extract(s.sqrt_recip_alphas, t, x_t) * (
            x_t - extract(s.betas / s.sqrt_one_minus_alphas_cumprod, t, x_t) * eps
        )
    elif predictor == "x0":
        x0 = out
        eps = eps_from_x0(s, x_t, t, x0)
        mean = q_posterior(s, x0, x_t, t)[0]
    elif predictor == "v":
        a, b = extract(s.sqrt_alphas_cumprod, t, x_t), extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)
        x0 = a * x_t - b * out
        eps = b * x_t + a * out
        mean = q_posterior(s, x0, x_t, t)[0]
    else:  # mean
        mean = out
        x0 = (mean - extract(s.posterior_mean_coef2, t, x_t) * x_t) / extract(s.posterior_mean_coef1, t, x_t)
        eps = eps_from_x0(s, x_t, t, x0)
    if clip_x0 is not None:
        x0 = x0.clamp(*clip_x0)
        eps = eps_from_x0(s, x_t, t, x0)
        mean = q_posterior(s, x0, x_t, t)[0]
    return Prediction(eps=eps, x0=x0, mean=mean)


def training_target(
    schedule: NoiseSchedule, predictor: Predictor, x0: torch.Tensor, eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network is regressed on: ε (L_simple, eq. 14), x0, μ̃_t(x_t, x0) (eq. 7) or v."""
    check_predictor(predictor)
    if predictor == "eps":
        return eps
    if predictor == "x0":
        return x0
    if predictor == "v":
        return v_target(schedule, x0, eps, t)
    return q_posterior(schedule, x0, x_t, t)[0]


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    predictor: Predictor = "eps",
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Training loss of Algorithm 1 (Ho et al.): MSE between the network and its target.

    1. t ~ Uniform{1..T}, ε ~ N(0, I) (or the given ``t`` and ``noise``, drawn by the caller)
    2. x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε                         eq. (4)
    3. loss = ‖target - net(x_t, t)‖², mean over all entries (eq. 14 for ε)
    """
    B = x0.shape[0]
    # 1. draw timesteps and noise
    if t is None:
        t = draw_timesteps(schedule.T, B, generator, x0.device)  # (B,)
    eps = noise if noise is not None else randn(x0.shape, generator, x0.device, x0.dtype)  # (B, ...)
    # 2. forward process, eq. (4)
    x_t = q_sample(schedule, x0, t, eps)  # (B, ...)
    # 3. regress the target
    target = training_target(schedule, predictor, x0, eps, x_t, t)
    return F.mse_loss(model(x_t, t, **model_kwargs), target)
