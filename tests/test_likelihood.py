import math

import pytest
import torch

from ddpmkit.likelihood import elbo_terms, normal_kl
from ddpmkit.schedules import NoiseSchedule


def _oracle_x0(point):
    """A network that predicts x0 exactly for the one-point data set {point}."""

    class Oracle(torch.nn.Module):
        def forward(self, x, t):
            return point.expand_as(x)

    return Oracle()


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_elbo_of_one_point_data_has_closed_form(variance):
    """Data = one point x0 and a perfect x0-predictor: every term is known in closed form.

    L_T = ½ Σ_d (ᾱ_T x0² + (1-ᾱ_T) - 1 - log(1-ᾱ_T));
    L_{t-1} = 0 with σ² = β̃ (KL of identical Gaussians), ½ D (log(β/β̃) + β̃/β - 1) with σ² = β;
    L_0 = ½ D log(2π σ_1²) (μ̂ = μ̃(x_1, x0) = x0 exactly at t = 1).
    """
    s = NoiseSchedule.create("linear", 40, beta_1=1e-3, beta_T=0.2)
    point = torch.tensor([0.7, -1.2, 0.3])
    x0 = point.expand(5, 3).clone()
    out = elbo_terms(_oracle_x0(point), s, x0, predictor="x0", variance=variance, generator=torch.Generator().manual_seed(0))
    D, abT = 3, s.alphas_cumprod[-1].item()
    prior = 0.5 * sum(abT * v**2 + (1 - abT) - 1 - math.log(1 - abT) for v in point.tolist())
    if variance == "beta_tilde":
        diffusion = 0.0
        decoder = 0.5 * D * math.log(2 * math.pi * s.posterior_variance[1].item())
    else:
        b, bt = s.betas[1:], s.posterior_variance[1:]
        diffusion = (0.5 * D * (torch.log(b / bt) + bt / b - 1)).sum().item()
        decoder = 0.5 * D * math.log(2 * math.pi * s.betas[0].item())
    assert torch.allclose(out["prior"], torch.full((5,), prior, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(out["diffusion"], torch.full((5,), diffusion, dtype=torch.float64), atol=2e-4)
    assert torch.allclose(out["decoder"], torch.full((5,), decoder, dtype=torch.float64), rtol=1e-5)
    total = prior + diffusion + decoder
    assert out["bpd"][0].item() == pytest.approx(total / (D * math.log(2)), rel=1e-4)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.5])
    lv1, lv2 = torch.tensor([-1.0, 0.2]), torch.tensor([0.5, -0.3])
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, atol=1e-6)


def test_gaussian_nll_matches_torch_distributions():
    from ddpmkit.likelihood import gaussian_nll

    g = torch.Generator().manual_seed(4)
    x, m, lv = (torch.randn(500, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    ref = -torch.distributions.Normal(m, (0.5 * lv).exp()).log_prob(x)
    torch.testing.assert_close(gaussian_nll(x, m, lv), ref, rtol=1e-12, atol=1e-12)


def test_discretized_decoder_is_a_distribution_over_the_256_levels():
    """For any mean and variance the 256 probabilities sum to 1, and each interior bin is
    the difference of two normal CDFs (compared in float64 with torch.distributions)."""
    from ddpmkit.likelihood import discretized_gaussian_log_likelihood

    levels = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1  # (256,)
    g = torch.Generator().manual_seed(0)
    for mean, logvar in [(0.0, math.log(1e-4)), (0.9, math.log(0.3)), (-1.7, math.log(1e-6)), (3.0, math.log(0.01)), (0.123, math.log(25.0))]:
        m = torch.full_like(levels, mean)
        lv = torch.full_like(levels, logvar)
        logp = discretized_gaussian_log_likelihood(levels, m, lv)
        assert torch.isfinite(logp).all() and (logp <= 0).all()
        assert abs(float(logp.exp().sum()) - 1) < 1e-12, (mean, logvar, float(logp.exp().sum()))
        normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), torch.tensor(math.exp(0.5 * logvar), dtype=torch.float64))
        inner = slice(1, 255)
        ref = normal.cdf(levels[inner] + 1 / 255) - normal.cdf(levels[inner] - 1 / 255)
        ok = ref > 1e-300
        torch.testing.assert_close(logp[inner].exp()[ok], ref[ok], rtol=1e-9, atol=1e-15)
    # a random pixel image: finite everywhere, even far in the tails
    x = torch.randint(0, 256, (4, 1, 8, 8), generator=g).double() * 2 / 255 - 1
    far = discretized_gaussian_log_likelihood(x, x + 40.0, torch.full_like(x, math.log(1e-4)))
    assert torch.isfinite(far).all()
