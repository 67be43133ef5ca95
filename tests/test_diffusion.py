import pytest
import torch

from ddpmkit.diffusion import PREDICTORS, convert, diffusion_loss, q_posterior, q_sample, training_target
from ddpmkit.schedules import NoiseSchedule


@pytest.fixture
def sched():
    return NoiseSchedule.create("linear", 100, beta_1=1e-4, beta_T=0.05)


def test_q_sample_moments(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(200_000, 2)
    t = torch.full((200_000,), 40)
    xt = q_sample(sched, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = sched.alphas_cumprod[40].item()
    assert torch.allclose(xt.mean(0), (ab**0.5) * x0[0], atol=5e-3)
    assert torch.allclose(xt.var(0), torch.full((2,), 1 - ab, dtype=torch.float64), rtol=1e-2)


def test_posterior_matches_gaussian_conjugacy(sched):
    # Independent computation: q(x_{t-1}|x0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}), q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for i in (1, 17, 99):
        t = torch.full((5,), i)
        abp, a, b = sched.alphas_cumprod_prev[i], sched.alphas[i], sched.betas[i]
        prec = 1 / (1 - abp) + a / b
        var = 1 / prec
        mean = var * (abp.sqrt() * x0 / (1 - abp) + a.sqrt() * xt / b)
        m, v, _ = q_posterior(sched, x0, xt, t)
        assert torch.allclose(m, mean, atol=1e-10) and torch.allclose(v.squeeze(), var, rtol=1e-10)


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_parameterization_round_trip(sched, predictor):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.randint(0, sched.T, (64,), generator=g)
    xt = q_sample(sched, x0, t, eps)
    out = training_target(sched, predictor, x0, eps, xt, t)
    p = convert(sched, predictor, out, xt, t)
    assert torch.allclose(p.eps, eps, atol=1e-8)
    assert torch.allclose(p.x0, x0, atol=1e-8)
    assert torch.allclose(p.mean, q_posterior(sched, x0, xt, t)[0], atol=1e-8)


def test_clipping_recomputes_eps_and_mean(sched):
    x0 = torch.full((4, 2), 3.0, dtype=torch.float64)
    eps = torch.zeros(4, 2, dtype=torch.float64)
    t = torch.full((4,), 10)
    xt = q_sample(sched, x0, t, eps)
    p = convert(sched, "x0", x0, xt, t, clip_x0=(-1.0, 1.0))
    assert torch.all(p.x0 == 1.0)
    assert torch.allclose(q_sample(sched, p.x0, t, p.eps), xt)  # ε̂ consistent with the clipped x̂0


def test_loss_is_zero_for_an_oracle(sched):
    # A "network" that returns the exact v target reconstructed from x_t given x0 (a constant data point)
    x0 = torch.ones(8, 2)
    s32 = sched.to("cpu")

    def oracle(xt, t):
        t = t.expand(xt.shape[0])
        eps = (xt - s32.sqrt_alphas_cumprod[t, None] * x0) / s32.sqrt_one_minus_alphas_cumprod[t, None]
        return eps

    assert diffusion_loss(oracle, s32, x0, "eps", torch.Generator().manual_seed(0)).item() < 1e-8


def test_unknown_predictor(sched):
    with pytest.raises(ValueError, match="predictor"):
        convert(sched, "score", torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
