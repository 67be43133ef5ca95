import math

import numpy as np
import pytest
import torch

from ddpmkit.schedules import NoiseSchedule, make_betas


def test_linear_endpoints_and_alpha_bar():
    s = NoiseSchedule.create("linear", 1000)
    assert s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # independent: ᾱ_T = Π (1 - β_t) with numpy
    b = np.linspace(1e-4, 0.02, 1000)
    assert s.alphas_cumprod[-1].item() == pytest.approx(np.prod(1 - b), rel=1e-12)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)


def test_quadratic_and_sigmoid_shapes():
    q = make_betas("quadratic", 10, 1e-4, 0.02)
    assert q[0].item() == pytest.approx(1e-4) and q[-1].item() == pytest.approx(0.02)
    assert np.allclose(np.sqrt(q.numpy()), np.linspace(1e-2, math.sqrt(0.02), 10))
    sg = make_betas("sigmoid", 11, 1e-4, 0.02)
    assert sg[5].item() == pytest.approx((1e-4 + 0.02) / 2)  # σ(0) = 1/2 at the middle
    assert torch.all(sg[1:] > sg[:-1])


def test_cosine_matches_closed_form():
    T, s_ = 1000, 0.008
    s = NoiseSchedule.create("cosine", T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2
    for t in (1, 10, 500, 900):
        assert s.alphas_cumprod[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)  # clipped at the end
    assert s.betas[-1].item() == pytest.approx(0.999)


def test_derived_quantities():
    s = NoiseSchedule.create("linear", 50, beta_1=1e-3, beta_T=0.1)
    ab, abp, b = s.alphas_cumprod, s.alphas_cumprod_prev, s.betas
    assert abp[0].item() == 1.0 and torch.equal(abp[1:], ab[:-1])
    assert torch.allclose(s.posterior_variance, b * (1 - abp) / (1 - ab))
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()))
    assert torch.allclose(s.snr, ab / (1 - ab))
    f32 = s.to("cpu")
    assert f32.betas.dtype == torch.float32 and s.betas.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"name": "linear", "T": 0}, "T"),
        ({"name": "linear", "T": 10, "beta_1": 0.0}, "beta_1"),
        ({"name": "linear", "T": 10, "beta_T": 1.5}, "beta_T"),
        ({"name": "wiggly", "T": 10}, "name"),
        ({"name": "custom", "T": 3, "betas": [0.1, 0.2]}, "betas"),
        ({"name": "custom", "T": 2, "betas": [0.1, 1.2]}, "betas"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        NoiseSchedule.create(**kwargs)
