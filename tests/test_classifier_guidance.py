"""Classifier guidance (Dhariwal & Nichol 2021): the step, the wrapper and the noisy classifier."""

import math

import pytest
import torch

from ddpmkit import NoiseSchedule, ddim_sample
from ddpmkit.guidance import ClassifierGuidedModel, NoisyClassifier, classifier_guided_eps, train_noisy_classifier


class LinearClassifier(torch.nn.Module):
    """logits = W x + b_t: the gradient of log softmax is W_y - Σ_k p_k W_k, known in closed form."""

    def __init__(self, W):
        super().__init__()
        self.W = torch.nn.Parameter(W)

    def forward(self, x, t):
        return x @ self.W.T + 0.1 * t.reshape(-1, 1).float()


def test_guided_eps_matches_the_closed_form_gradient():
    torch.manual_seed(0)
    s = NoiseSchedule.create("linear", 50)
    W = torch.randn(3, 2)
    eps_net = lambda x, t, y=None: 0.5 * x
    y = torch.tensor([0, 2, 1, 1])
    x = torch.randn(4, 2)
    t = torch.tensor([17])
    for scale in (0.0, 1.0, 3.5):
        got = ClassifierGuidedModel(eps_net, LinearClassifier(W), y, scale, s)(x, t)
        p = torch.softmax(x @ W.T + 0.1 * 17, dim=1)  # (4, 3)
        grad = W[y] - p @ W  # ∇_x log p(y | x)
        want = 0.5 * x - scale * math.sqrt(1 - s.alphas_cumprod[17].item()) * grad
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(classifier_guided_eps(x, grad, 0.3, 0.0), x)


def test_guidance_refuses_a_negative_scale_and_works_on_images():
    s = NoiseSchedule.create("linear", 20)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        ClassifierGuidedModel(lambda x, t: x, LinearClassifier(torch.zeros(2, 2)), torch.tensor([0]), -1.0, s)

    class PixelClassifier(torch.nn.Module):
        def forward(self, x, t):
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    x = torch.randn(3, 1, 4, 4)
    out = ClassifierGuidedModel(lambda x, t: torch.zeros_like(x), PixelClassifier(), torch.tensor([0, 0, 1]), 2.0, s)(x, torch.tensor([5]))
    assert out.shape == x.shape and (out[:2] < 0).all() and (out[2] > 0).all()  # pushed towards the wanted class


def test_classifier_guidance_moves_samples_to_the_class():
    """On two well separated Gaussians, an unconditional oracle network guided by a trained
    noisy classifier samples mostly from the requested component."""
    torch.manual_seed(0)
    s = NoiseSchedule.create("linear", 100, beta_1=1e-3, beta_T=0.1)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    y_data = torch.randint(0, 2, (4000,))
    x_data = centres[y_data] + 0.3 * torch.randn(4000, 2)
    clf = train_noisy_classifier(x_data, y_data, s, 2, iterations=400, batch_size=128, seed=0)
    assert isinstance(clf, NoisyClassifier)

    def oracle(x, t, y=None):  # exact ε for the two-component mixture (Tweedie), unconditional
        a = s.alphas_cumprod[t.reshape(-1)[0]].float()
        var = a * 0.09 + 1 - a
        logits = -((x[:, None] - a.sqrt() * centres[None]) ** 2).sum(-1) / (2 * var)  # (B, 2)
        w = torch.softmax(logits, 1)
        score = -(x - a.sqrt() * (w @ centres)) / var
        return -(1 - a).sqrt() * score

    y = torch.ones(400, dtype=torch.long)
    plain = ddim_sample(oracle, s, (400, 2), steps=50, generator=torch.Generator().manual_seed(1)).x
    guided = ddim_sample(ClassifierGuidedModel(oracle, clf, y, 3.0, s), s, (400, 2), steps=50, generator=torch.Generator().manual_seed(1)).x
    assert 0.35 < (plain[:, 0] > 0).float().mean() < 0.65  # unguided: both components
    assert (guided[:, 0] > 0).float().mean() > 0.95  # guided to label 1 (the right component)
