"""The variational bound (ELBO) of Ho et al. (2020), eq. (5), per sample.

    L = L_T + Σ_{t=2}^{T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) ‖ N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t)),  x_t ~ q(x_t | x0)
    L_0     = -log p_θ(x0 | x_1)

The data here are continuous (2-D points, standardized vectors), so the decoder p_θ(x0|x1)
is the Gaussian N(μ̂_θ(x_1, 1), σ_1²) and L_0 is a negative log *density*: the bound is on
-log p(x0) in nats, and can be negative. Each L_{t-1} uses one draw of x_t (an unbiased
estimate of its expectation). For σ²_t = β̃_t the decoder variance β̃_1 = 0 is replaced by
β̃_2, the clipped value of Nichol & Dhariwal (2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .common import model_device
from .diffusion import Predictor, convert, q_posterior, q_sample, randn
from .samplers import Variance, _check_variance
from .schedules import NoiseSchedule


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x, mean, logvar) -> torch.Tensor:
    """-log N(x; mean, e^logvar), elementwise."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        logvar: torch.Tensor) -> torch.Tensor:
    """log p(x) of pixel values on the 256-level grid {-1, -1 + 2/255, ..., 1} under the
    discretized Gaussian decoder of Ho et al. (2020), eq. (13), elementwise:

        p(x) = ∫_{δ−(x)}^{δ+(x)} N(u; mean, e^logvar) du,
        δ+(x) = +∞ if x = 1 else x + 1/255,
        δ−(x) = −∞ if x = −1 else x − 1/255.

    The 256 probabilities sum to 1. Each log is taken stably: log Φ at the edges, and the
    difference of two normal CDFs in whichever tail keeps it away from 1 − 1.
    """
    std = (0.5 * logvar).exp()
    upper = (x + 1 / 255 - mean) / std  # standardized bin edges
    lower = (x - 1 / 255 - mean) / std
    log_ndtr = torch.special.log_ndtr
    # 1. interior bins: log(Φ(u) − Φ(l)), computed in the tail the bin lies in
    lo, up = log_ndtr(lower), log_ndtr(upper)  # log Φ(l), log Φ(u)
    lo_c, up_c = log_ndtr(-lower), log_ndtr(-upper)  # log Φ(−l), log Φ(−u)
    left = up + torch.log1p(-torch.exp(lo - up))  # log(Φ(u) − Φ(l))
    right = lo_c + torch.log1p(-torch.exp(up_c - lo_c))  # log(Φ(−l) − Φ(−u))
    inner = torch.where(upper + lower < 0, left, right)
    # 2. the two edge bins extend to ±∞
    edge_low, edge_high = up, lo_c  # log Φ(u) for x = −1, log Φ(−l) for x = 1
    inner = torch.where(x > 1 - 1 / 255, edge_high, inner)
    return torch.where(x < -1 + 1 / 255, edge_low, inner)


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def model_log_variance(schedule: NoiseSchedule, variance: Variance) -> torch.Tensor:
    """log σ_t² of p_θ(x_{t-1} | x_t), (T,): σ_t² = β_t or β̃_t (β̃ clipped at t = 1, where it is 0)."""
    _check_variance(variance)
    return schedule.betas.log() if variance == "beta" else schedule.posterior_log_variance_clipped


def diffusion_kl(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 mean_hat: torch.Tensor, logvar_model: torch.Tensor) -> torch.Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x0) ‖ N(mean_hat, e^logvar_model)) per sample, in nats, (B,):
    the posterior of eqs. (6-7) against the model's step, summed over dimensions.
    ``logvar_model`` is one log-variance (0-d) or one per sample (B,)."""
    m_q, _, logvar_q = q_posterior(schedule, x0, x_t, t)  # (B, ...), _, (B, 1, ...)
    logvar_p = logvar_model.reshape(-1, *[1] * (x0.dim() - 1)) if logvar_model.dim() else logvar_model  # (B, 1, ...)
    return _sum_dims(normal_kl(m_q, logvar_q, mean_hat, logvar_p.expand_as(x0)))  # (B,)


@torch.no_grad()
def elbo_terms(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    *,
    predictor: Predictor = "eps",
    variance: Variance = "beta_tilde",
    generator: torch.Generator | None = None,
    progress: bool = False,
    model_kwargs: dict | None = None,
) -> dict[str, torch.Tensor]:
    """The bound's terms for each sample of ``x0`` (B, ...), in nats; also bits per dimension.

    Returns a dict of (B,) float64 tensors: ``prior`` (L_T), ``diffusion`` (Σ L_{t-1}),
    ``decoder`` (L_0), ``total`` (their sum, the negative ELBO) and ``bpd``
    (total / (D ln 2), D the number of dimensions of one sample).
    """
    device = model_device(model)
    s64 = schedule.to(device, torch.float64)
    s = schedule.to(device)
    x0 = x0.to(device=device, dtype=torch.float32)
    x0d = x0.double()
    B, D = x0.shape[0], x0[0].numel()
    kwargs = model_kwargs or {}
    logvar_model = model_log_variance(s64, variance)  # (T,)
    # L_T: KL(N(√ᾱ_T x0, 1-ᾱ_T) ‖ N(0, 1))
    T = s.T
    mT = s64.sqrt_alphas_cumprod[-1] * x0d
    prior = _sum_dims(normal_kl(mT, torch.log1p(-s64.alphas_cumprod[-1]).expand_as(mT), torch.zeros_like(mT), torch.zeros_like(mT)))
    diffusion = torch.zeros(B, dtype=torch.float64, device=device)
    decoder = torch.zeros(B, dtype=torch.float64, device=device)
    for i in tqdm(range(T), desc="ELBO", disable=not progress, leave=False):
        t = torch.full((B,), i, device=device, dtype=torch.long)  # (B,)
        x_t = q_sample(s, x0, t, randn(x0.shape, generator, device))  # (B, ...)
        mean_hat = convert(s, predictor, model(x_t, t[:1], **kwargs), x_t, t).mean.double()
        if i == 0:  # L_0 = -log N(x0; μ̂_θ(x_1, 1), σ_1²)
            decoder = _sum_dims(gaussian_nll(x0d, mean_hat, logvar_model[0].expand_as(x0d)))
        else:
            diffusion += diffusion_kl(s64, x0d, x_t.double(), t, mean_hat, logvar_model[i])
    total = prior + diffusion + decoder
    return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total, "bpd": total / (D * math.log(2))}
