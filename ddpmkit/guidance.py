"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a conditional network.

Two conventions for the same thing appear in the literature:

* ε̃ = (1 + w) ε_c − w ε_u        (Ho & Salimans eq. 6, and the CS726 report 000_…; w = 0 is plain conditional)
* ε̃ = ε_u + s (ε_c − ε_u)          (GLIDE, and diffusers' ``guidance_scale``; s = 1 is plain conditional)

They are equal when s = 1 + w. :class:`CFGModel` takes ``w``; :func:`scale_to_w` converts.
The conditional and unconditional predictions come from one batched call on [x; x] with
labels [y; null], so guidance costs one network call of twice the batch per step.

*Classifier* guidance (Dhariwal & Nichol 2021) instead adds the gradient of a separately
trained noise-conditional classifier p_φ(y | x_t) to an ε-prediction:
ε̃ = ε_θ(x_t, t) − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t) (:func:`classifier_guided_eps`,
:func:`classifier_grad`, :class:`ClassifierGuidedModel`, :class:`NoisyClassifier`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .diffusion import q_sample
from .models import TimeLinear


def scale_to_w(s: float) -> float:
    """diffusers-style guidance scale s → CS726-style weight w = s − 1."""
    return s - 1.0


def w_to_scale(w: float) -> float:
    """CS726-style weight w → diffusers-style guidance scale s = 1 + w."""
    return 1.0 + w


def null_condition(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The null condition matching ``y``: the null token for class labels, zeros for multi-hot."""
    if y.dim() == 1:
        return torch.full_like(y, model.null_label)
    return torch.zeros_like(y)


def parse_interval(text: str) -> tuple[int, int] | None:
    """A guidance interval written ``LO:HI`` (timesteps, both included) → ``(lo, hi)``;
    ``all`` → None (every step). The one parser of the CLI's ``--guidance-interval`` and the
    benchmarks' specs."""
    if text.strip().lower() == "all":
        return None
    lo, sep, hi = text.partition(":")
    try:
        v = (int(lo), int(hi)) if sep else None
    except ValueError:
        v = None
    if v is None or not 0 <= v[0] <= v[1]:
        raise ValueError(f"expected LO:HI, two timesteps with 0 <= LO <= HI (e.g. 0:600), or 'all' for every step; got {text!r}")
    return v


class CFGModel(nn.Module):
    """``model(x, t, y)`` guided towards ``y`` with weight ``w``: a drop-in network for the samplers.

    Use: ``ddpm_sample(CFGModel(unet, y, w=2.0), schedule, shape)``. The output is the guided
    combination of the network's outputs; it is applied to ε-predictions (the usual case),
    and is equally an affine combination for x0- or v-predictions.

    ``interval=(lo, hi)`` guides only the timesteps lo ≤ t ≤ hi (both ends included) and
    samples plainly conditionally (w = 0) elsewhere: guidance on a limited interval
    (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
    Distribution Quality in Diffusion Models"). ``None`` guides every step.
    """

    def __init__(self, model: nn.Module, y: torch.Tensor, w: float, interval: tuple[int, int] | None = None):
        super().__init__()
        if w < 0:
            raise ValueError(f"guidance weight w must be >= 0 (w = 0 is plain conditional sampling), got w={w}")
        if interval is not None:
            if len(interval) != 2 or any(int(v) != v for v in interval) or not 0 <= interval[0] <= interval[1]:
                raise ValueError(f"guidance interval must be two whole timesteps (lo, hi) with 0 <= lo <= hi, got {interval!r}; "
                                 "use None to guide every step")  # fmt: skip
            interval = (int(interval[0]), int(interval[1]))
        self.model, self.y, self.w, self.interval = model, y, float(w), interval

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = self.y.to(x.device)
        # 0. which samples are guided: all, or those whose timestep is in the interval
        inside = None if self.interval is None else (t >= self.interval[0]) & (t <= self.interval[1])  # (1,) or (B,)
        if self.w == 0 or (inside is not None and not bool(inside.any())):
            return self.model(x, t, y)  # 1. plain conditional: one call
        # 1. one call on the doubled batch: conditional half, then unconditional half
        out = self.model(torch.cat([x, x]), t if t.numel() == 1 else torch.cat([t, t]), torch.cat([y, null_condition(self.model, y)]))
        eps_c, eps_u = out.chunk(2)  # (B, ...) each
        # 2. ε̃ = (1 + w) ε_c − w ε_u
        if inside is None or bool(inside.all()):
            return (1 + self.w) * eps_c - self.w * eps_u
        w = torch.where(inside, self.w, 0.0).to(x.dtype).view(-1, *[1] * (x.dim() - 1))  # (B, 1, ...): w inside, 0 outside
        return (1 + w) * eps_c - w * eps_u


@torch.no_grad()
def diffusion_classify(
    model: nn.Module,
    schedule,
    x0: torch.Tensor,
    classes: int,
    timesteps: list[int] | None = None,
    n_noise: int = 4,
    generator: torch.Generator | None = None,
    batch: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training-free classifier of the CS726 report (``ClassifierDDPM``, 000_…).

    For each image x0 and candidate label y, average ‖ε − ε̂_θ(x_t, t, y)‖² over the given
    timesteps and ``n_noise`` noise draws (the *same* draws for every y, so labels are
    compared on equal terms); predict the label with the smallest error. This is an
    L_simple surrogate for Bayes' rule with a uniform prior over labels: unweighted ε errors
    at a few timesteps, not the conditional ELBO (which weights every one of the T steps).

    Returns ``(predictions (N,), errors (N, classes))``.
    """
    from .diffusion import q_sample, randn

    device = next(model.parameters()).device
    s = schedule.to(device)
    ts = timesteps if timesteps is not None else [s.T // 10, s.T // 4, s.T // 2]
    x0 = x0.to(device)
    N = len(x0)
    errors = torch.zeros(N, classes, device=device)
    for t in ts:
        for _ in range(n_noise):
            eps = randn(x0.shape, generator, device)  # (N, ...)
            tt = torch.full((N,), t, device=device, dtype=torch.long)
            x_t = q_sample(s, x0, tt, eps)
            for y in range(classes):
                for i in range(0, N, batch):
                    sl = slice(i, i + batch)
                    lab = torch.full((len(x_t[sl]),), y, device=device, dtype=torch.long)
                    pred = model(x_t[sl], tt[sl][:1], lab)
                    errors[sl, y] += (pred - eps[sl]).pow(2).flatten(1).mean(1)
    errors /= len(ts) * n_noise
    return errors.argmin(1), errors


# --- classifier guidance ------------------------------------------------------------------


class NoisyClassifier(nn.Module):
    """A classifier of *noisy* inputs, p_φ(y | x_t, t): [TimeLinear -> SiLU] × len(hidden) ->
    Linear(K), the time-conditioned layers of the vector models (Dhariwal & Nichol train such
    a classifier on noisy images for classifier guidance)."""

    def __init__(self, dim: int, num_classes: int, hidden: tuple[int, ...] = (128, 128)):
        super().__init__()
        widths = [dim, *hidden]
        self.layers = nn.ModuleList(TimeLinear(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.silu(layer(x, t))  # (B, hidden_k)
        return self.head(x)  # (B, K) logits


def train_noisy_classifier(
    x0: torch.Tensor, labels: torch.Tensor, schedule, num_classes: int, *, iterations: int = 2000,
    batch_size: int = 256, lr: float = 1e-3, seed: int = 0, progress: bool = False,
) -> NoisyClassifier:  # fmt: skip
    """Train a :class:`NoisyClassifier` by cross-entropy on x_t ~ q(x_t | x0), t uniform over
    all T steps, so that it can read labels at every noise level."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = NoisyClassifier(x0.shape[1], num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in tqdm(range(iterations), desc="noisy classifier", disable=not progress):
        idx = torch.randint(0, len(x0), (batch_size,), generator=g)
        t = torch.randint(0, schedule.T, (batch_size,), generator=g)
        x_t = q_sample(schedule, x0[idx], t, torch.randn(x0[idx].shape, generator=g))  # (B, D)
        loss = F.cross_entropy(clf(x_t.float(), t), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


def classifier_guided_eps(eps: torch.Tensor, grad_log_p: torch.Tensor, sqrt_one_minus_abar: torch.Tensor | float,
                          scale: float) -> torch.Tensor:  # fmt: skip
    """One classifier-guidance step on an ε-prediction (Dhariwal & Nichol 2021, Algorithm 2):
    ε̃ = ε − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t). Since ε ≈ −√(1 − ᾱ_t) ∇ log p_t(x_t), this
    is the score of p_t(x_t) p_φ(y | x_t)^s, scaled back to an ε."""
    return eps - scale * sqrt_one_minus_abar * grad_log_p


def classifier_grad(classifier: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_{x_t} log p_φ(y | x_t) of a noise-conditional ``classifier(x, t) -> logits (B, K)``,
    one gradient per sample (the samples do not interact, so the gradient of the sum of the
    log-probabilities is each sample's own). Works inside ``torch.no_grad()``."""
    with torch.enable_grad():  # the samplers run without gradients
        x_in = x.detach().requires_grad_(True)  # (B, ...)
        log_p = F.log_softmax(classifier(x_in, t), dim=-1)  # (B, K)
        picked = log_p.gather(1, y.to(x.device).reshape(-1, 1)).sum()
        return torch.autograd.grad(picked, x_in)[0]  # (B, ...)


class ClassifierGuidedModel(nn.Module):
    """``model`` guided towards ``y`` by the gradient of ``classifier``: a drop-in network for
    the samplers. The network is called without a label (its unconditional prediction: the
    null token of a class-conditional model), so that only the classifier steers."""

    def __init__(self, model: nn.Module, classifier: nn.Module, y: torch.Tensor, scale: float, schedule):
        super().__init__()
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0 (0 is unguided sampling), got scale={scale}")
        self.model, self.classifier, self.y, self.scale = model, classifier, y, float(scale)
        self.sqrt_one_minus_abar = schedule.sqrt_one_minus_alphas_cumprod  # (T,), cast to x's dtype at use

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.model(x, t)  # 1. the unconditional prediction
        if self.scale == 0:
            return eps
        grad = classifier_grad(self.classifier, x, t, self.y)  # 2. ∇_x log p_φ(y | x_t), (B, ...)
        # 3. ε̃ = ε − s √(1 − ᾱ_t) ∇ log p_φ(y | x_t)
        coef = self.sqrt_one_minus_abar[t.reshape(-1).cpu()].to(x).reshape(-1, *[1] * (x.dim() - 1))  # (B or 1, 1, ...)
        return classifier_guided_eps(eps, grad, coef, self.scale)

