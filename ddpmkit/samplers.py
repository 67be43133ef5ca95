"""Samplers: ancestral DDPM (Algorithm 2 of Ho et al. 2020), its deterministic z = 0
variant, DDIM (Song, Meng & Ermon 2021), and DPM-Solver++(2M) (Lu et al. 2022).

Every sampler runs one vectorized loop over timesteps. All coefficients are precomputed
once on the model's device; inside the loop a step costs one network call plus a few
fused tensor operations. The network is called as ``model(x, t, **model_kwargs)`` with
``t`` of shape (1,): one timestep shared by the whole batch (models broadcast it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, get_args, get_type_hints

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import model_device
from .diffusion import Predictor, check_predictor, convert, randn
from .schedules import NoiseSchedule

Variance = Literal["beta", "beta_tilde"]
Spacing = Literal["leading", "trailing", "linspace", "quadratic"]
VARIANCES: tuple[str, ...] = get_args(Variance)
SPACINGS: tuple[str, ...] = get_args(Spacing)


@dataclass
class SampleOutput:
    """Final samples and, when recorded, the trajectory x_T, ..., x_0."""

    x: torch.Tensor  # (B, ...) the samples x_0
    trajectory: list[torch.Tensor] = field(default_factory=list)  # [(B, ...)] on the CPU, x_T first
    timesteps: list[int] = field(default_factory=list)  # 0-indexed timestep of each recorded state (-1 for x_0)


def _prior(shape, x_T, generator, device) -> torch.Tensor:
    if x_T is not None:
        return torch.as_tensor(x_T, dtype=torch.float32).to(device).clone()
    if shape is None:
        raise ValueError("give either shape=(n, ...) or the prior noise x_T")
    return randn(tuple(shape), generator, device)


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance={variance!r}; choose 'beta' (σ²=β_t) or 'beta_tilde' (σ²=β̃_t)")


@torch.no_grad()
def ddpm_sample(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    x_T: torch.Tensor | np.ndarray | None = None,
    predictor: Predictor = "eps",
    variance: Variance = "beta",
    stochastic: bool = True,
    clip_x0: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    progress: bool = False,
    model_kwargs: dict | None = None,
) -> SampleOutput:
    """Ancestral sampling, Algorithm 2 of Ho et al. (2020).

    1. x_T ~ N(0, I) (or the given prior noise ``x_T``)
    2. for t = T, ..., 1:
       a. out = net(x_t, t); convert to μ̂_θ(x_t, t)            eqs. (7), (11), (15)
       b. z ~ N(0, I) if t > 1 and ``stochastic``, else z = 0
       c. x_{t-1} = μ̂_θ(x_t, t) + σ_t z, σ²_t = β_t or β̃_t      (§3.2)
    3. return x_0

    ``stochastic=False`` is the deterministic "reproduce" sampler of the CS726 report
    (000_…): z = 0 at every step, so the same ``x_T`` always gives the same samples.
    """
    check_predictor(predictor, schedule)
    _check_variance(variance)
    device = model_device(model)
    s = schedule.to(device)  # float32 copy of every coefficient on the model's device
    sigma = (s.betas if variance == "beta" else s.posterior_variance).sqrt()  # (T,)
    kwargs = model_kwargs or {}
    ts = torch.arange(s.T, device=device).flip(0)  # T-1, ..., 0
    # 1. the prior
    x = _prior(shape, x_T, generator, device)  # (B, ...)
    out = SampleOutput(x=x)
    if record_every:
        out.trajectory.append(x.cpu()), out.timesteps.append(s.T - 1)
    # 2. the reverse chain
    for i in tqdm(range(s.T), desc="DDPM sampling", disable=not progress, leave=False):
        t = ts[i : i + 1]  # (1,) shared by the batch
        tb = t.expand(x.shape[0])  # (B,) view, for the coefficient lookups
        # 2a. network and parameterization
        pred = convert(s, predictor, model(x, t, **kwargs), x, tb, clip_x0)
        x = pred.mean
        # 2b-c. add noise except at the last step
        if stochastic and i < s.T - 1:
            x = x + sigma[s.T - 1 - i] * randn(x.shape, generator, device)
        if record_every and ((i + 1) % record_every == 0 or i == s.T - 1):
            out.trajectory.append(x.cpu()), out.timesteps.append(s.T - 2 - i)
    out.x = x
    return out


def ddim_timesteps(T: int, steps: int, spacing: Spacing = "leading") -> np.ndarray:
    """The S = ``steps`` timesteps (0-indexed, descending) visited by DDIM.

    * leading:  0, k, 2k, ... with k = T // S (DDIM paper, diffusers' default)
    * trailing: T-1, T-1-T/S, ... rounded (Lin et al. 2024, always ends at T-1)
    * linspace: round(linspace(0, T-1, S))
    * quadratic: round((T-1) (i/(S-1))²), i = 0..S-1, each raised to one above the previous
      where rounding repeats a step: dense near t = 0, where the fine detail is made (the
      DDIM paper's "quadratic" for CIFAR-10; from T-1 down to 0)
    """
    if not isinstance(steps, int) or steps < 1 or steps > T:
        raise ValueError(f"steps must be an integer in [1, T={T}], got steps={steps!r}")
    if spacing == "leading":
        ts = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64)[:steps][::-1] - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps)).astype(np.int64)
    elif spacing == "quadratic":
        ts = np.round((T - 1) * np.linspace(0.0, 1.0, steps) ** 2).astype(np.int64) if steps > 1 else np.array([T - 1])
        for i in range(1, steps):  # distinct steps: 0, 1, 2, ... where (T-1)(i/(S-1))² grows by less than one
            ts[i] = max(ts[i], ts[i - 1] + 1)
    else:
        raise ValueError(f"unknown spacing={spacing!r}; choose one of {', '.join(SPACINGS)}")
    return np.ascontiguousarray(ts[::-1]).astype(np.int64)


def ddim_coefficients(abar: torch.Tensor, abar_prev: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DDIM step from t to t' < t as x_{t'} = c_x0 x̂0 + c_eps ε̂ + σ z (Song et al. 2021):

        σ     = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})      eq. (16)
        c_x0  = √ᾱ_{t'}                                           eq. (12)
        c_eps = √(1 - ᾱ_{t'} - σ²)                                eq. (12)

    ``abar`` is ᾱ_t and ``abar_prev`` ᾱ_{t'} (1 for the step to x_0), tensors of any one shape."""
    sig = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
    return abar_prev.sqrt(), (1 - abar_prev - sig**2).clamp(min=0).sqrt(), sig


def _few_step_start(model, schedule, shape, steps, spacing, x_T, predictor, generator, record_every):
    """What every few-step sampler starts with: the predictor checked against the schedule,
    the model's device, the schedule there, the S visited steps (descending), the prior x and
    the output with x recorded when asked."""
    check_predictor(predictor, schedule)
    device = model_device(model)
    s = schedule.to(device)
    ts = torch.as_tensor(ddim_timesteps(s.T, steps, spacing), device=device)  # (S,) descending
    x = _prior(shape, x_T, generator, device)
    out = SampleOutput(x=x)
    if record_every:
        out.trajectory.append(x.cpu()), out.timesteps.append(int(ts[0]))
    return device, s, ts, x, out


@torch.no_grad()
def ddim_sample(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = "leading",
    x_T: torch.Tensor | np.ndarray | None = None,
    predictor: Predictor = "eps",
    clip_x0: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    progress: bool = False,
    model_kwargs: dict | None = None,
) -> SampleOutput:
    """DDIM sampling over S = ``steps`` timesteps, Song et al. (2021) eq. (12).

    For consecutive visited steps t > t' (ᾱ_{t'} = 1 after the last step):
    1. out = net(x_t, t); convert to ε̂ and x̂0                               eq. (15)
    2. σ_t = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})                          eq. (16)
    3. x_{t'} = √ᾱ_{t'} x̂0 + √(1-ᾱ_{t'}-σ_t²) ε̂ + σ_t z                       eq. (12)

    η = 0 is deterministic; η = 1 with S = T is ancestral DDPM with σ² = β̃_t.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got eta={eta!r}")
    device, s, ts, x, out = _few_step_start(model, schedule, shape, steps, spacing, x_T, predictor, generator, record_every)
    abar = s.alphas_cumprod[ts]  # (S,)
    abar_prev = torch.cat([s.alphas_cumprod[ts[1:]], abar.new_ones(1)])  # (S,)
    c_x0, c_eps, sig = ddim_coefficients(abar, abar_prev, eta)  # (S,) each
    kwargs = model_kwargs or {}
    for i in tqdm(range(len(ts)), desc="DDIM sampling", disable=not progress, leave=False):
        t = ts[i : i + 1]  # (1,)
        # 1. network and parameterization
        pred = convert(s, predictor, model(x, t, **kwargs), x, t.expand(x.shape[0]), clip_x0)
        # 2-3. the DDIM update, eq. (12)
        x = c_x0[i] * pred.x0 + c_eps[i] * pred.eps
        if eta > 0 and i < len(ts) - 1:
            x = x + sig[i] * randn(x.shape, generator, device)
        if record_every and ((i + 1) % record_every == 0 or i == len(ts) - 1):
            out.trajectory.append(x.cpu()), out.timesteps.append(int(ts[i + 1]) if i + 1 < len(ts) else -1)
    out.x = x
    return out


@torch.no_grad()
def dpm_solver_sample(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    steps: int = 20,
    spacing: Spacing = "trailing",
    x_T: torch.Tensor | np.ndarray | None = None,
    predictor: Predictor = "eps",
    clip_x0: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    progress: bool = False,
    model_kwargs: dict | None = None,
) -> SampleOutput:
    """DPM-Solver++(2M): the multistep second-order solver of the probability-flow ODE in
    its data-prediction form (Lu et al. 2022, "DPM-Solver++", Algorithm 2), one network
    call per visited step (S = ``steps`` calls in all).

    With α_t = √ᾱ_t, σ_t = √(1-ᾱ_t), λ_t = log(α_t/σ_t) and h_i = λ_{t_i} - λ_{t_{i-1}},
    for visited steps t_0 > t_1 > ... (then σ = 0 after the last one):
    1. x̂0_i = the network's x_0 prediction at (x_{t_i}, t_i)                  eq. (15) of Ho et al.
    2. D = x̂0_{i-1} on the first and the last step (first order, = DDIM η = 0), else
       D = (1 + 1/(2r)) x̂0_{i-1} - 1/(2r) x̂0_{i-2}, r = h_{i-1}/h_i             Alg. 2, line 6
    3. x_{t_i} = (σ_{t_i}/σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) D        Alg. 2, line 7

    α_{t_i}(e^{-h_i} - 1) is computed as α_{t_{i-1}} σ_{t_i}/σ_{t_{i-1}} - α_{t_i}, which stays
    finite when the first step starts at zero SNR (α = 0, λ = -∞). ``trailing`` spacing
    starts at t = T-1, where the prior N(0, I) is the forward process's marginal.
    """
    return _dpm_solver_2m(model, schedule, shape, steps, spacing, x_T, predictor, clip_x0, generator, record_every, progress,
                          model_kwargs, stochastic=False)  # fmt: skip


@torch.no_grad()
def dpm_solver_sde_sample(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...] | None = None,
    *,
    steps: int = 20,
    spacing: Spacing = "quadratic",
    x_T: torch.Tensor | np.ndarray | None = None,
    predictor: Predictor = "eps",
    clip_x0: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    record_every: int = 0,
    progress: bool = False,
    model_kwargs: dict | None = None,
) -> SampleOutput:
    """SDE-DPM-Solver++(2M): the same multistep solver for the reverse SDE instead of the
    ODE (Lu et al. 2022, "DPM-Solver++", §5; the midpoint form of diffusers'
    ``sde-dpmsolver++``). Steps 1–2 are those of :func:`dpm_solver_sample`; step 3 becomes

        x_{t_i} = (σ_{t_i}/σ_{t_{i-1}}) e^{-h_i} x_{t_{i-1}} + α_{t_i} (1 - e^{-2h_i}) D + σ_{t_i} √(1 - e^{-2h_i}) z

    with z ~ N(0, I). The noise it injects forgives a network whose score is too coarse for
    the ODE, as ancestral sampling does, at one call per step. e^{-h_i} is computed as
    α_{t_{i-1}} σ_{t_i} / (σ_{t_{i-1}} α_{t_i}), 0 at a zero-SNR start. The default
    ``quadratic`` spacing puts the steps near t = 0 and ends there.
    """
    return _dpm_solver_2m(model, schedule, shape, steps, spacing, x_T, predictor, clip_x0, generator, record_every, progress,
                          model_kwargs, stochastic=True)  # fmt: skip


def _dpm_solver_2m(model, schedule, shape, steps, spacing, x_T, predictor, clip_x0, generator, record_every, progress, model_kwargs,
                   stochastic: bool) -> SampleOutput:  # fmt: skip
    """The loop of :func:`dpm_solver_sample` (``stochastic=False``) and :func:`dpm_solver_sde_sample`."""
    device, s, ts, x, out = _few_step_start(model, schedule, shape, steps, spacing, x_T, predictor, generator, record_every)
    alpha = s.sqrt_alphas_cumprod[ts]  # (S,) α_t
    sigma = s.sqrt_one_minus_alphas_cumprod[ts]  # (S,) σ_t
    lam = alpha.log() - sigma.log()  # (S,) λ_t (-∞ at zero SNR)
    kwargs = model_kwargs or {}
    x0_prev, h_prev = None, None
    name = "SDE-DPM-Solver++" if stochastic else "DPM-Solver++"
    for i in tqdm(range(len(ts)), desc=f"{name} sampling", disable=not progress, leave=False):
        t = ts[i : i + 1]  # (1,)
        # 1. the data prediction at the current step
        x0 = convert(s, predictor, model(x, t, **kwargs), x, t.expand(x.shape[0]), clip_x0).x0  # (B, ...)
        last = i == len(ts) - 1
        h = lam[i + 1] - lam[i] if not last else None
        # 2. first order on the first and the last step (and after an infinite step), else the 2M correction
        if x0_prev is None or last or not torch.isfinite(h_prev / h):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # 3. the exact step of the linear part, D held fixed over [t_i, t_{i+1}]; σ = 0 after the last step
        ratio = sigma[i + 1] / sigma[i] if not last else None
        if last:
            x = d
        elif not stochastic:
            x = ratio * x + (alpha[i + 1] - alpha[i] * ratio) * d
        else:
            em = alpha[i] * sigma[i + 1] / (sigma[i] * alpha[i + 1])  # e^{-h}
            x = ratio * em * x + alpha[i + 1] * (1 - em**2) * d + sigma[i + 1] * (1 - em**2).sqrt() * randn(x.shape, generator, device)
        x0_prev, h_prev = x0, h
        if record_every and ((i + 1) % record_every == 0 or last):
            out.trajectory.append(x.cpu()), out.timesteps.append(int(ts[i + 1]) if not last else -1)
    out.x = x
    return out


# --- the registry ------------------------------------------------------------------------

# Keyword arguments every sampler takes; anything else a sampler takes is one of its options.
COMMON_ARGS = frozenset({"x_T", "predictor", "clip_x0", "generator", "record_every", "progress", "model_kwargs"})


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: a function ``fn(model, schedule, shape, **common, **options)``
    returning a :class:`SampleOutput`, and a one-line description. Its options and their
    defaults are read from ``fn``'s signature, so they are written once."""

    fn: Callable[..., SampleOutput]
    description: str

    @property
    def options(self) -> dict[str, object]:
        """The sampler's own options with their defaults, e.g. ``{"steps": 50, "eta": 0.0, ...}``."""
        fixed = self.fn.keywords if isinstance(self.fn, partial) else {}
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in COMMON_ARGS and p.name not in fixed}

    @property
    def option_types(self) -> dict[str, object]:
        """The annotated type of each option (``int``, ``float``, a ``Literal`` of choices)."""
        hints = get_type_hints(self.fn.func if isinstance(self.fn, partial) else self.fn)
        return {name: hints[name] for name in self.options}


def sampler_options() -> dict[str, tuple[object, list[str]]]:
    """Every option any registered sampler takes: ``{name: (type, [samplers that take it])}``
    (the CLI makes one flag of each)."""
    out: dict[str, tuple[object, list[str]]] = {}
    for sampler, spec in SAMPLERS.items():
        for name, tp in spec.option_types.items():
            out.setdefault(name, (tp, []))[1].append(sampler)
    return out


SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, fn: Callable[..., SampleOutput], description: str) -> None:
    """Add a sampler to :data:`SAMPLERS`: the CLI's ``--sampler``, :func:`sample` and the
    contract tests (``tests/test_contracts.py``) pick it up at once."""
    if name in SAMPLERS:
        raise ValueError(f"a sampler named {name!r} is already registered")
    SAMPLERS[name] = SamplerSpec(fn, description)


register_sampler("ddpm", partial(ddpm_sample, stochastic=True), "ancestral sampling, Algorithm 2 of Ho et al. (2020), T steps")
register_sampler("deterministic", partial(ddpm_sample, stochastic=False), "Algorithm 2 with z = 0 (the CS726 'reproduce' sampler), T steps")
register_sampler("ddim", ddim_sample, "DDIM (Song et al. 2021) over a subsequence of steps; η = 0 is deterministic")
register_sampler("dpm-solver", dpm_solver_sample, "DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE, second order, one call per step")
register_sampler("dpm-solver-sde", dpm_solver_sde_sample,
                 "SDE-DPM-Solver++(2M) (Lu et al. 2022): the same solver for the reverse SDE, noise at every step, one call per step")


def sample(sampler: str, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, shape: tuple[int, ...] | None = None,
           **kwargs) -> SampleOutput:  # fmt: skip
    """Run the registered ``sampler`` by name: ``sample("ddim", model, schedule, (n, 2), steps=20)``.

    ``kwargs`` are the arguments every sampler takes (``x_T``, ``predictor``, ``clip_x0``,
    ``generator``, ``record_every``, ``progress``, ``model_kwargs``) and the sampler's own
    options (:attr:`SamplerSpec.options`). An option the sampler does not take is refused.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler={sampler!r}; choose one of {', '.join(SAMPLERS)}")
    spec = SAMPLERS[sampler]
    unknown = sorted(set(kwargs) - COMMON_ARGS - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) or "no options"
        raise ValueError(f"sampler {sampler!r} does not take {', '.join(unknown)} (it takes {takes}); drop it or choose another sampler")
    return spec.fn(model, schedule, shape, **kwargs)
