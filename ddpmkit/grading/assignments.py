"""The five assignments' questions: how inputs are drawn and what the right answer is.

Every reference is the library's own code (``ddpmkit.diffusion``, ``.schedules``,
``.models``, ``.unet``, ``.guidance``, ``.metrics``, ``.samplers``, ``.likelihood``), so an assignment can never drift from
the book. Step indices are 0-based, as in the library: index ``t`` is the paper's t + 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion import convert, q_posterior
from ..diffusion import q_sample as lib_q_sample
from ..guidance import CFGModel, ClassifierGuidedModel
from ..likelihood import diffusion_kl, model_log_variance
from ..metrics import chamfer_distance
from ..models import TimeLinear as LibTimeLinear
from ..models import timestep_embedding
from ..samplers import ddim_coefficients
from ..schedules import NoiseSchedule, make_betas
from ..unet import ResBlock as LibResBlock
from ..unet import UNet, UNetConfig
from .spec import SELF_CHECK_SEED, Assignment, Case, Question, Toy, ToyClassifier, case_key, materialize

F32 = np.float32


STRATA = ("linear", "cosine", "quadratic")  # case k of every question uses schedule k mod 3: the same kinds for every student


def _betas(rng: np.random.Generator, k: int, T: int | None = None) -> np.ndarray:
    """β_1..β_T of named schedule ``STRATA[k % 3]`` (case ``k`` of its question), float64 like
    the library's; only T is drawn, so every student's hidden cases are of the same kinds."""
    return make_betas(STRATA[k % len(STRATA)], int(T or rng.integers(20, 120))).numpy()


def _normal(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def _toy(rng, D: int, T: int, K: int | None = None) -> Toy:
    """Weights of a ToyModel for D-dim inputs, T steps, and K classes (+ null) when given."""
    e = (0.5 * rng.standard_normal((K + 1, D))).astype(F32) if K else None
    return Toy(W=(rng.standard_normal((D, D)) / np.sqrt(D)).astype(F32), c=(0.5 * rng.standard_normal((T, D))).astype(F32), e=e)


def _sched(betas) -> NoiseSchedule:
    return NoiseSchedule(torch.as_tensor(betas, dtype=torch.float64))


def _state(module: torch.nn.Module, rng) -> dict[str, np.ndarray]:
    """Random weights for ``module`` (from ``rng``, through a generator of its own: never torch's
    global one, which concurrent gradings share), as arrays."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.3, generator=g)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# ---- A1: forward process and schedules ----------------------------------------------------------
def _q_sample_cases(rng):
    cases = []
    for shape in [(16, 2), (6, 1, 4, 4), (9, 3)]:
        betas = _betas(rng, len(cases))
        B = shape[0]
        t = rng.integers(0, len(betas), B)
        t[rng.integers(B)] = 0  # the first step, where 1 - abar is smallest
        cases.append(Case((_normal(rng, *shape), t, _normal(rng, *shape), betas)))
    return cases


def ref_q_sample(x0, t, noise, betas):
    return lib_q_sample(_sched(betas), x0, t, noise)


def _cosine_cases(rng):
    """A short schedule with the usual s, a medium one with a smaller s and a long one with a larger
    s: the kinds are the same for every student, T and s are drawn (so no case is a self-check's)."""
    ranges = [((5, 40), (0.008, 0.008)), ((50, 400), (0.002, 0.006)), ((800, 1200), (0.01, 0.03))]
    return [Case((int(rng.integers(*T)), float(rng.uniform(*s)) if s[0] < s[1] else s[0])) for T, s in ranges]


def ref_cosine_betas(T, s=0.008):
    return make_betas("cosine", T, cosine_s=s)


def _posterior_cases(rng):
    cases = []
    for shape in [(12, 2), (5, 1, 4, 4), (8, 3)]:
        betas = _betas(rng, len(cases))
        t = rng.integers(0, len(betas), shape[0])
        t[0] = 0  # the first step, where β̃ = 0
        cases.append(Case((_normal(rng, *shape), _normal(rng, *shape), t, betas)))
    return cases


def ref_posterior(x0, x_t, t, betas):
    mean, var, _ = q_posterior(_sched(betas), x0, x_t, t)
    return mean, var.reshape(-1)


A1 = Assignment(
    key="a1",
    title="Forward process and noise schedules",
    source="a1_forward.md",
    library=("ddpmkit.diffusion.q_sample", "ddpmkit.diffusion.q_posterior", "ddpmkit.schedules.make_betas",
             "ddpmkit.schedules.NoiseSchedule.__init__"),
    questions=(
        Question("q_sample", _q_sample_cases, ref_q_sample, hint="x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise"),
        Question("cosine_betas", _cosine_cases, ref_cosine_betas),
        Question("q_posterior_mean_variance", _posterior_cases, ref_posterior),
    ),
)


# ---- A2: DDPM on 2-D data --------------------------------------------------------------------
def _timelinear_cases(rng):
    cases = []
    for d_in, d_out, B in [(2, 16, 8), (16, 16, 5), (16, 2, 7)]:
        T = 100
        state = _state(LibTimeLinear(d_in, d_out), rng)
        cases.append(Case(([d_in, d_out], _normal(rng, B, d_in), rng.integers(0, T, B)), state=state))
    return cases



class _RefTimeLinear(LibTimeLinear):
    """The library's TimeLinear with the assignment's constructor (dim_in, dim_out)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__(dim_in, dim_out)


def _loss_cases(rng):
    cases = []
    for B in (32, 7, 64):
        betas = _betas(rng, len(cases))
        cases.append(Case((_toy(rng, 2, len(betas)), _normal(rng, B, 2), rng.integers(0, len(betas), B), _normal(rng, B, 2), betas)))
    return cases


def ref_ddpm_loss(model, x0, t, noise, betas):
    x_t = lib_q_sample(_sched(betas), x0, t, noise)
    return F.mse_loss(model(x_t, t), noise)


def ref_p_sample(model, x_t, t: int, z, betas, predictor="eps"):
    """One step of Algorithm 2: x_{t-1} = μ̂_θ(x_t, t) + σ_t z, σ_t² = β_t, no noise at t = 0.
    ``t`` as the notebook allows it: a Python or NumPy int, a 0-d or (1,) tensor."""
    return _p_step(model, x_t, int(t), torch.as_tensor(z), _sched(betas).to(dtype=x_t.dtype), predictor)


def _p_step(model, x_t, t: int, z, s: NoiseSchedule, predictor="eps"):
    tt = torch.full((x_t.shape[0],), int(t), dtype=torch.long)  # (B,)
    mean = convert(s, predictor, model(x_t, tt), x_t, tt).mean  # (B, ...)
    return mean + s.betas[int(t)].sqrt() * z if int(t) > 0 else mean


def _p_sample_cases(rng):
    cases = []
    for t_kind in ("mid", "zero", "last"):
        betas = _betas(rng, len(cases))
        T = len(betas)
        t = {"mid": int(rng.integers(1, T - 1)), "zero": 0, "last": T - 1}[t_kind]
        cases.append(Case((_toy(rng, 2, T), _normal(rng, 10, 2), t, _normal(rng, 10, 2), betas)))
    return cases


def ref_p_sample_loop(model, x_T, zs, betas):
    s = _sched(betas).to(dtype=x_T.dtype)  # one schedule for the whole chain
    x = x_T
    for t in reversed(range(len(betas))):
        x = _p_step(model, x, t, zs[t], s)
    return x


def _loop_cases(rng):
    cases = []
    for B in (8, 3, 16):
        betas = _betas(rng, len(cases), T=int(rng.integers(10, 30)))
        T = len(betas)
        cases.append(Case((_toy(rng, 2, T), _normal(rng, B, 2), _normal(rng, T, B, 2), betas)))
    return cases


def _chamfer_cases(rng):
    return [Case((_normal(rng, n, 2), _normal(rng, m, 2) + 0.5)) for n, m in [(50, 50), (40, 70), (128, 9)]]


def ref_chamfer(x, y):
    return chamfer_distance(x.numpy(), y.numpy(), reduction="sum")


A2 = Assignment(
    key="a2",
    title="DDPM on 2-D data",
    source="a2_ddpm_2d.md",
    library=("ddpmkit.models.TimeLinear.forward", "ddpmkit.diffusion.q_sample", "ddpmkit.diffusion.diffusion_loss",
             "ddpmkit.diffusion.convert", "ddpmkit.diffusion.q_posterior", "ddpmkit.samplers.ddpm_sample",
             "ddpmkit.metrics.chamfer_distance", "ddpmkit.metrics._nn_sq_dists"),
    questions=(
        Question("TimeLinear", _timelinear_cases, _RefTimeLinear, module=True,
                 hint="the gate multiplies the linear layer's output: fc(x) * time_embedding(t)"),
        Question("ddpm_loss", _loss_cases, ref_ddpm_loss, grad=True, hint="the loss is the mean over every entry of (noise - eps_theta(x_t, t))^2"),
        Question("p_sample", _p_sample_cases, ref_p_sample, hint="no noise is added at t = 0; sigma_t^2 = beta_t"),
        Question("p_sample_loop", _loop_cases, ref_p_sample_loop, uses=("p_sample",), hint="use zs[t] at step t, for t = T-1 down to 0"),
        Question("chamfer", _chamfer_cases, ref_chamfer, any_float=True,
                 hint="sum, not mean, of squared nearest-neighbour distances, in both directions"),
    ),
)


# ---- A3: the conditional UNet ------------------------------------------------------------------
def _sinusoid_cases(rng):
    return [Case((rng.integers(0, 1000, B), dim)) for B, dim in [(5, 16), (8, 64), (3, 33)]]


def ref_sinusoid(t, dim):
    """``t`` (B,) (an int or 0-d tensor counts as B = 1); ``dim`` an int of any kind."""
    return timestep_embedding(torch.as_tensor(t).reshape(-1), int(dim))


class _RefConditionEmbedding(torch.nn.Module):
    """The UNet's embedding of (t, y), through ``UNet.embed`` itself."""

    def __init__(self, base: int, num_classes: int):
        super().__init__()
        self.unet = UNet(UNetConfig(base_channels=base, channel_mults=(1,), attn_levels=(), num_classes=num_classes))
        self.time_mlp, self.class_emb = self.unet.time_mlp, self.unet.class_emb

    def forward(self, t, y=None):
        return self.unet.embed(t, y, t.shape[0])


def _embedding_cases(rng):
    cases = []
    for base, K, B, null in [(8, 10, 6, False), (16, 3, 4, True), (8, 5, 9, False)]:
        state = _state(_RefConditionEmbedding(base, K), rng)
        state = {k: v for k, v in state.items() if k.startswith(("time_mlp.", "class_emb."))}
        y = rng.integers(0, K + 1, B)  # K is the null label
        args = ([base, K], rng.integers(0, 1000, B)) + (() if null else (y,))
        cases.append(Case(args, state=state))
    return cases


class _RefConditionEmbeddingLoad(_RefConditionEmbedding):
    def load_state_dict(self, state, strict=True):  # the UNet's own names minus its other layers
        return super().load_state_dict({f"unet.{k}": v for k, v in state.items()} | state, strict=False)


class _RefResBlock(LibResBlock):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__(c_in, c_out, emb_dim, groups, dropout=0.0)


def _resblock_cases(rng):
    cases = []
    for c_in, c_out, E, g, B in [(8, 8, 16, 4, 2), (8, 16, 32, 8, 3), (4, 8, 8, 2, 2)]:
        state = _state(_RefResBlock(c_in, c_out, E, g), rng)
        cases.append(Case(([c_in, c_out, E, g], _normal(rng, B, c_in, 6, 6), _normal(rng, B, E)), state=state))
    return cases


def _reverse_cases(rng):
    cases = []
    for predictor in ("eps", "x0", "mean"):
        for shape, last in [((4, 1, 4, 4), False), ((6, 2), True)]:
            betas = _betas(rng, len(cases))
            t = 0 if last else int(rng.integers(1, len(betas)))  # index 0: the last step, no noise
            cases.append(Case((_normal(rng, *shape), _normal(rng, *shape), t, _normal(rng, *shape), betas, predictor)))
    return cases


def ref_reverse_step(out, x_t, t, z, betas, predictor):
    return ref_p_sample(lambda x, tt: out, x_t, t, z, betas, predictor)


A3 = Assignment(
    key="a3",
    title="The conditional UNet",
    source="a3_unet.md",
    library=("ddpmkit.models.timestep_embedding", "ddpmkit.unet.UNet.embed", "ddpmkit.unet.ResBlock.forward",
             "ddpmkit.diffusion.convert", "ddpmkit.diffusion.q_posterior", "ddpmkit.samplers.ddpm_sample"),
    questions=(
        Question("sinusoidal_embedding", _sinusoid_cases, ref_sinusoid,
                 hint="[cos(t w_k), sin(t w_k)] with w_k = 10000^(-k/h), h = dim // 2; an odd dim gets a zero last column"),
        Question("ConditionEmbedding", _embedding_cases, _RefConditionEmbeddingLoad, module=True, uses=("sinusoidal_embedding",),
                 hint="time_mlp(sinusoidal_embedding(t, base)) + class_emb(y), with y = num_classes (the null label) when y is None"),
        Question("ResBlock", _resblock_cases, _RefResBlock, module=True,
                 hint="add emb(silu(emb)) as a per-channel bias after the first convolution"),
        Question("reverse_step", _reverse_cases, ref_reverse_step,
                 hint="turn the prediction into the posterior mean (eqs. 7, 11, 15), then add sqrt(beta_t) z"),
    ),
)


# ---- A4: guidance ---------------------------------------------------------------------------------
def _cfg_cases(rng):
    cases = []
    for shape, w in [((6, 2), 0.0), ((4, 1, 3, 3), 2.0), ((5, 4), float(rng.uniform(0.2, 5)))]:
        T, K, D = 50, 3, int(np.prod(shape[1:]))
        y = rng.integers(0, K, shape[0])
        cases.append(Case((_toy(rng, D, T, K), _normal(rng, *shape), rng.integers(0, T, 1), y, w)))
    return cases


def ref_cfg_eps(model, x, t, y, w):
    """``t`` as the networks take it (a Python or NumPy int, a 0-d, (1,) or (B,) tensor); ``y``
    a (B,) tensor or array; ``w`` a number of any kind."""
    return CFGModel(model, torch.as_tensor(y), float(w))(x, torch.as_tensor(t).long().reshape(-1))


def _guided_cases(rng):
    cases = []
    for B, D, w in [(6, 2, 1.0), (4, 4, 3.0), (5, 2, 0.0)]:
        betas = _betas(rng, len(cases), T=int(rng.integers(10, 25)))
        T, K = len(betas), 4
        cases.append(Case((_toy(rng, D, T, K), _normal(rng, B, D), rng.integers(0, K, B), w, _normal(rng, T, B, D), betas)))
    return cases


def ref_guided_sample(model, x_T, y, w, zs, betas):
    return ref_p_sample_loop(CFGModel(model, y, w), x_T, zs, betas)


def _classify_cases(rng):
    cases = []
    for B, D, J, K in [(8, 2, 3, 2), (5, 4, 2, 4), (6, 2, 4, 3)]:
        betas = _betas(rng, len(cases), T=100)
        cases.append(Case((_toy(rng, D, 100, K), _normal(rng, B, D), rng.integers(0, 100, J), _normal(rng, J, B, D), betas)))
    return cases


@torch.no_grad()
def ref_classify(model, x0, ts, noises, betas):
    """The training-free classifier (``guidance.diffusion_classify``) on given noise draws."""
    s, K, B = _sched(betas), model.null_label, x0.shape[0]
    errors = torch.zeros(B, K, dtype=x0.dtype)
    for t, eps in zip(ts.tolist(), noises):
        tt = torch.full((B,), t, dtype=torch.long)
        x_t = lib_q_sample(s, x0, tt, eps)
        for y in range(K):
            errors[:, y] += (model(x_t, tt[:1], torch.full((B,), y)) - eps).pow(2).flatten(1).mean(1)
    errors /= len(ts)
    return errors.argmin(1), errors


A4 = Assignment(
    key="a4",
    title="Classifier-free guidance",
    source="a4_guidance.md",
    library=("ddpmkit.guidance.CFGModel.forward", "ddpmkit.guidance.diffusion_classify", "ddpmkit.samplers.ddpm_sample",
             "ddpmkit.samplers.ddim_sample", "ddpmkit.diffusion.convert", "ddpmkit.diffusion.q_sample"),
    questions=(
        Question("cfg_eps", _cfg_cases, ref_cfg_eps, hint="(1 + w) eps(x, t, y) - w eps(x, t, null), null = model.null_label"),
        Question("guided_sample", _guided_cases, ref_guided_sample, uses=("cfg_eps",),
                 hint="the ancestral loop of A2 with the guided eps at every step"),
        Question("classify", _classify_cases, ref_classify, argmin=(0, 1),
                 hint="average the squared error over the given (t, noise) pairs; the same noise for every label"),
    ),
)

# ---- A5: DDIM, the bound's KL terms, classifier guidance -----------------------------------------
def _ddim_cases(rng):
    """A jump with η = 0, one step with η = 1 (DDPM with β̃), a jump with η in (0, 1), the step to x_0."""
    cases = []
    for shape, kind in [((8, 2), "jump0"), ((5, 1, 3, 3), "ddpm"), ((7, 3), "jump"), ((6, 2), "last")]:
        betas = _betas(rng, len(cases))
        T = len(betas)
        t = int(rng.integers(1, T)) if kind != "last" else int(rng.integers(0, T // 4 + 1))
        t_prev = {"jump0": int(rng.integers(-1, t)), "ddpm": t - 1, "jump": int(rng.integers(-1, t)), "last": -1}[kind]
        eta = {"jump0": 0.0, "ddpm": 1.0, "jump": float(rng.uniform(0.1, 0.9)), "last": float(rng.uniform(0, 1))}[kind]
        D = int(np.prod(shape[1:]))
        cases.append(Case((_toy(rng, D, T), _normal(rng, *shape), t, t_prev, eta, _normal(rng, *shape), betas)))
    return cases


def ref_ddim_step(model, x_t, t: int, t_prev: int, eta: float, z, betas):
    """x_{t'} = √ᾱ_{t'} x̂0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z, Song et al. (2021) eqs. (12, 16)."""
    s = _sched(betas).to(dtype=x_t.dtype)
    tt = torch.full((x_t.shape[0],), int(t), dtype=torch.long)  # (B,)
    pred = convert(s, "eps", model(x_t, tt), x_t, tt)
    abar_prev = s.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones((), dtype=x_t.dtype)
    c_x0, c_eps, sig = ddim_coefficients(s.alphas_cumprod[t], abar_prev, eta)
    return c_x0 * pred.x0 + c_eps * pred.eps + sig * z


def _kl_cases(rng):
    cases = []
    for shape, variance in [((9, 2), "beta_tilde"), ((4, 1, 4, 4), "beta"), ((7, 3), "beta_tilde")]:
        betas = _betas(rng, len(cases))
        # L_{t-1} for t >= 1 (0-based): t = 0 is the decoder L_0. At the first few t the KL is ill-conditioned in
        # float32 (1 - abar_{t-1} is a difference of nearly equal numbers), and its tolerance grows accordingly
        t = rng.integers(1, len(betas), shape[0])
        x0, noise = _normal(rng, *shape), _normal(rng, *shape)
        x_t = lib_q_sample(_sched(betas), torch.from_numpy(x0), torch.from_numpy(t), torch.from_numpy(noise)).numpy()
        eps_hat = (noise + 0.3 * _normal(rng, *shape)).astype(F32)  # a network's imperfect prediction
        cases.append(Case((x0, x_t, t, eps_hat, betas, variance)))
    return cases


def ref_kl_term(x0, x_t, t, eps_hat, betas, variance):
    """KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t)) per sample, summed over dimensions, in nats."""
    s = _sched(betas).to(dtype=x0.dtype)
    mean_hat = convert(s, "eps", eps_hat, x_t, t).mean
    return diffusion_kl(s, x0, x_t, t, mean_hat, model_log_variance(s, variance)[t])


def _toy_classifier(rng, D: int, T: int, K: int, H: int = 8) -> ToyClassifier:
    return ToyClassifier(W=(rng.standard_normal((D, H)) / np.sqrt(D)).astype(F32), c=(0.5 * rng.standard_normal((T, H))).astype(F32),
                         V=rng.standard_normal((H, K)).astype(F32))


def _cg_cases(rng):
    cases = []
    for shape, scale in [((6, 2), float(rng.uniform(0.5, 3))), ((4, 1, 3, 3), 0.0), ((5, 4), float(rng.uniform(3, 10)))]:
        betas = _betas(rng, len(cases))
        T, K, D = len(betas), int(rng.integers(2, 5)), int(np.prod(shape[1:]))
        cases.append(Case((_toy(rng, D, T), _toy_classifier(rng, D, T, K), _normal(rng, *shape), rng.integers(0, T, 1),
                           rng.integers(0, K, shape[0]), scale, betas)))
    return cases


def ref_classifier_guided_eps(model, classifier, x, t, y, scale, betas):
    """ε̃ = ε_θ(x_t, t) − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t), Dhariwal & Nichol (2021)."""
    return ClassifierGuidedModel(model, classifier, y, scale, _sched(betas))(x, t)


A5 = Assignment(
    key="a5",
    title="DDIM, the bound, and classifier guidance",
    source="a5_ddim_bound.md",
    library=("ddpmkit.samplers.ddim_sample", "ddpmkit.samplers.ddim_coefficients", "ddpmkit.diffusion.convert",
             "ddpmkit.diffusion.q_posterior", "ddpmkit.likelihood.normal_kl", "ddpmkit.likelihood.diffusion_kl",
             "ddpmkit.likelihood.elbo_terms", "ddpmkit.guidance.classifier_guided_eps", "ddpmkit.guidance.classifier_grad",
             "ddpmkit.guidance.ClassifierGuidedModel.forward"),
    questions=(
        Question("ddim_step", _ddim_cases, ref_ddim_step,
                 hint="x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); abar_prev = 1 when t_prev = -1; sigma from eq. (16)"),
        Question("kl_term", _kl_cases, ref_kl_term,
                 hint="KL of two Gaussians per entry, 0.5 (log(s2/s1) + (s1 + (m1 - m2)^2) / s2 - 1), summed over all but the batch dim"),
        Question("classifier_guided_eps", _cg_cases, ref_classifier_guided_eps, no_grad=True,
                 hint="the gradient of log_softmax(logits)[y] with respect to x, times -scale * sqrt(1 - abar_t), added to eps"),
    ),
)

ASSIGNMENTS: dict[str, Assignment] = {a.key: a for a in (A1, A2, A3, A4, A5)}


def get_assignment(key: str) -> Assignment:
    """The assignment named ``key`` (a1 ... a5, or its source file's stem)."""
    for a in ASSIGNMENTS.values():
        if key in (a.key, a.source.removesuffix(".md")):
            return a
    raise ValueError(f"unknown assignment {key!r}; choose one of {', '.join(ASSIGNMENTS)}")


def hidden_cases(q: Question, rng: np.random.Generator, tries: int = 50) -> list[Case]:
    """The grader's cases: drawn from ``rng``, and never one of the self-check's visible cases
    (a case that collides is drawn again), so memorised self-check answers earn nothing."""
    visible = {case_key(c) for c in q.cases(np.random.default_rng(SELF_CHECK_SEED))}
    cases = q.cases(rng)
    for k, c in enumerate(cases):
        for _ in range(tries):
            if case_key(c) not in visible:
                break
            c = q.cases(rng)[k]
        else:
            raise RuntimeError(f"{q.name}: case {k} keeps matching a self-check case; widen its input ranges")
        cases[k] = c
    return cases


__all__ = ["ASSIGNMENTS", "get_assignment", "hidden_cases", "materialize"]
