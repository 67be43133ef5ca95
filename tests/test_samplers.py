import numpy as np
import pytest
import torch

from ddpmkit.samplers import SPACINGS, ddim_sample, ddim_timesteps, ddpm_sample
from ddpmkit.schedules import NoiseSchedule


@pytest.fixture
def sched():
    return NoiseSchedule.create("linear", 60, beta_1=1e-4, beta_T=0.1)


def test_ddim_eta1_all_steps_equals_ddpm_beta_tilde(tiny_model, sched):
    a = ddpm_sample(tiny_model, sched, (256, 2), variance="beta_tilde", generator=torch.Generator().manual_seed(3)).x
    b = ddim_sample(tiny_model, sched, (256, 2), steps=sched.T, eta=1.0, generator=torch.Generator().manual_seed(3)).x
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    c = ddpm_sample(tiny_model, sched, (256, 2), variance="beta", generator=torch.Generator().manual_seed(3)).x
    assert not torch.allclose(a, c, atol=1e-3)  # σ² = β differs from σ² = β̃


def test_deterministic_sampler_reproduces_from_saved_prior(tiny_model, sched):
    # The CS726 "reproduce" script, written out independently: z = 0 at every step, eq. (11).
    prior = np.random.default_rng(0).standard_normal((128, 2)).astype(np.float32)
    out1 = ddpm_sample(tiny_model, sched, x_T=prior, stochastic=False).x
    out2 = ddpm_sample(tiny_model, sched, x_T=prior, stochastic=False, generator=torch.Generator().manual_seed(9)).x
    assert torch.equal(out1, out2)
    x = torch.from_numpy(prior)
    s = sched.to("cpu")
    with torch.no_grad():
        for t in reversed(range(sched.T)):
            eps = tiny_model(x, torch.full((len(x),), t, dtype=torch.long))
            x = (1 / torch.sqrt(s.alphas[t])) * (x - (s.betas[t] / torch.sqrt(1 - s.alphas_cumprod[t])) * eps)
    assert torch.allclose(out1, x, atol=1e-5)


def test_generator_makes_sampling_reproducible(tiny_model, sched):
    a = ddpm_sample(tiny_model, sched, (64, 2), generator=torch.Generator().manual_seed(5)).x
    b = ddpm_sample(tiny_model, sched, (64, 2), generator=torch.Generator().manual_seed(5)).x
    c = ddpm_sample(tiny_model, sched, (64, 2), generator=torch.Generator().manual_seed(6)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_golden_numbers(tiny_model, sched):
    """Whole sampling loops with fixed seeds and fixed weights (torch 2.14.1, CPU)."""
    a = ddpm_sample(tiny_model, sched, (1000, 2), generator=torch.Generator().manual_seed(0)).x
    b = ddim_sample(tiny_model, sched, (1000, 2), steps=10, generator=torch.Generator().manual_seed(0)).x
    got = [a.mean().item(), a.std().item(), b.mean().item(), b.std().item()]
    assert np.allclose(got, GOLDEN, atol=1e-4), got


GOLDEN = [0.785524, 6.577779, 0.413492, 3.764863]  # DDPM mean/std, DDIM-10 mean/std (torch 2.14.1, CPU)


def test_trajectory_recording(tiny_model, sched):
    out = ddpm_sample(tiny_model, sched, (16, 2), record_every=10, generator=torch.Generator().manual_seed(0))
    assert len(out.trajectory) == 1 + sched.T // 10
    assert out.timesteps[0] == sched.T - 1 and out.timesteps[-1] == -1
    assert torch.equal(out.trajectory[-1], out.x)
    d = ddim_sample(tiny_model, sched, (16, 2), steps=6, record_every=1, generator=torch.Generator().manual_seed(0))
    assert len(d.trajectory) == 7 and d.timesteps[-1] == -1


def test_ddim_timesteps_spacings():
    assert ddim_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert ddim_timesteps(1000, 10, "trailing").tolist() == list(range(999, 98, -100))
    assert ddim_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(1000, 5, "quadratic").tolist() == [999, 562, 250, 62, 0]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(100, 0)
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(100, 10, "middle")


def test_x0_clipping_bounds_final_samples(tiny_model, sched):
    out = ddim_sample(tiny_model, sched, (64, 2), steps=10, clip_x0=(-0.5, 0.5), generator=torch.Generator().manual_seed(0))
    assert out.x.abs().max() <= 0.5 + 1e-6


def test_bad_sampler_arguments(tiny_model, sched):
    with pytest.raises(ValueError, match="variance"):
        ddpm_sample(tiny_model, sched, (4, 2), variance="huge")
    with pytest.raises(ValueError, match="shape"):
        ddpm_sample(tiny_model, sched)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(tiny_model, sched, (4, 2), eta=-1)


def test_dpm_solver_is_second_order_on_the_probability_flow_ode():
    """For Gaussian data N(0, s²) the exact ε is linear, ε*(x, t) = √(1-ᾱ) x / (ᾱ s² + 1 - ᾱ), and the
    probability-flow ODE maps x_T to x_T · s / √(ᾱ_T s² + 1 - ᾱ_T). DDIM (η = 0) is its first-order
    solver: doubling the steps halves its error. DPM-Solver++(2M) converges faster, and at 40 steps
    is 10x closer than DDIM."""
    import math

    from ddpmkit.samplers import sample
    from ddpmkit.schedules import NoiseSchedule, make_betas

    s, s2 = NoiseSchedule(make_betas("linear", 1000)), 0.25
    abar = s.alphas_cumprod

    def eps_star(x, t):
        a = abar[t.reshape(-1)].float().reshape(-1, 1)
        return (1 - a).sqrt() * x / (a * s2 + 1 - a)

    exact = math.sqrt(s2 / (abar[-1].item() * s2 + 1 - abar[-1].item()))
    err = {(name, n): abs(sample(name, eps_star, s, x_T=torch.ones(1, 1), steps=n, spacing="trailing").x.item() - exact)
           for name in ("ddim", "dpm-solver") for n in (10, 20, 40)}
    assert 1.7 < err["ddim", 20] / err["ddim", 40] < 2.3  # first order
    assert err["dpm-solver", 10] / err["dpm-solver", 20] > 3.5 and err["dpm-solver", 20] / err["dpm-solver", 40] > 3.5
    assert err["dpm-solver", 40] < err["ddim", 40] / 10


@pytest.mark.parametrize("T", [1, 2, 10, 50, 1000])
def test_every_spacing_visits_distinct_steps_in_range(T):
    """For every number of steps S = 1..T: S distinct steps, descending, inside [0, T-1];
    quadratic and trailing start at T-1, quadratic, leading and linspace end at 0, and
    S = T visits every step."""
    for spacing in SPACINGS:
        for S in range(1, T + 1):
            ts = ddim_timesteps(T, S, spacing)
            assert len(ts) == S and (np.diff(ts) < 0).all() and 0 <= ts.min() and ts.max() <= T - 1, (spacing, S, ts)
            if spacing in ("quadratic", "trailing"):
                assert ts[0] == T - 1
            if spacing != "trailing" and S > 1:
                assert ts[-1] == 0
        assert ddim_timesteps(T, T, spacing).tolist() == list(range(T - 1, -1, -1))


def test_quadratic_spacing_is_denser_near_zero():
    ts = ddim_timesteps(1000, 20, "quadratic")
    gaps = -np.diff(ts)  # from t = 999 down to 0
    assert (np.diff(gaps) <= 0).all() and gaps[0] > 10 * gaps[-1]


def test_sde_dpm_solver_samples_the_data_distribution_with_the_exact_score():
    """With Gaussian data N(m, s²) and its exact ε, SDE-DPM-Solver++(2M) converges to
    N(m, s²): at 200 and 1,000 steps the mean and standard deviation of 100,000 samples lie
    within 4 standard errors, and the error of the standard deviation falls as the steps
    grow from 10 to 50 (quadratic spacing). Its noise is seeded: one seed, one result."""
    from ddpmkit.samplers import sample
    from ddpmkit.schedules import NoiseSchedule, make_betas

    s, m, s2 = NoiseSchedule(make_betas("linear", 1000)), 0.7, 0.25
    abar = s.alphas_cumprod

    def eps_star(x, t):  # the exact ε of N(m, s²) data: ε = √(1-ᾱ)(x - √ᾱ m)/(ᾱ s² + 1 - ᾱ)
        a = abar[t.reshape(-1)].float().reshape(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s2 + 1 - a)

    n = 100_000
    se_mean, se_std = (s2 / n) ** 0.5, (s2 / (2 * n)) ** 0.5
    std_err = {}
    for steps in (10, 20, 50, 200, 1000):
        x = sample("dpm-solver-sde", eps_star, s, (n, 1), steps=steps, generator=torch.Generator().manual_seed(steps)).x
        std_err[steps] = abs(x.std().item() - s2**0.5)
        if steps >= 200:
            assert abs(x.mean().item() - m) < 4 * se_mean and std_err[steps] < 4 * se_std, (steps, x.mean(), x.std())
    assert std_err[10] > std_err[20] > max(std_err[50], 4 * se_std)  # at 10 and 20 steps the error is the solver's, not the noise
    a = sample("dpm-solver-sde", eps_star, s, (8, 1), steps=10, generator=torch.Generator().manual_seed(1)).x
    b = sample("dpm-solver-sde", eps_star, s, (8, 1), steps=10, generator=torch.Generator().manual_seed(1)).x
    c = sample("dpm-solver-sde", eps_star, s, (8, 1), steps=10, generator=torch.Generator().manual_seed(2)).x
    assert torch.equal(a, b) and not torch.equal(a, c)
