"""A small MNIST classifier trained by a ``ddpmkit`` recipe, and the image metrics built on it.

It serves three purposes (issue 3 of the course): the class accuracy of conditional
samples, FID and KID computed in *its* feature space, and the baseline for the
training-free diffusion classifier. This FID is **not** Inception-FID: the Inception
weights cannot be downloaded offline, and Inception features of 28×28 digits mean little
anyway. Numbers from this FID are comparable with each other, not with published FIDs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class ClassifierConfig:
    """The classifier recipe."""

    channels: tuple[int, int] = (32, 64)  # conv widths of the two stages
    features: int = 128  # width of the penultimate layer (the FID/KID feature space)
    epochs: int = 4  # passes over the training images
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # initial weights and batch order

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}


class MNISTClassifier(nn.Module):
    """[Conv3-ReLU-Conv3-ReLU-MaxPool] × 2 → Linear(features) → ReLU → Linear(10).

    Inputs are images in [-1, 1] of shape (B, 1, 28, 28).
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, config.features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(config.features, 10))
        self.num_features = config.features  # read by torchmetrics for a custom feature extractor

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features. (B, features)"""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, 10) logits


class _Features(nn.Module):
    """Adapter: torchmetrics calls ``feature(imgs)`` and reads ``num_features``."""

    def __init__(self, clf: MNISTClassifier):
        super().__init__()
        self.clf, self.num_features = clf, clf.num_features

    def forward(self, x):
        return self.clf.features(x).double()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig = ClassifierConfig(), progress: bool = True) -> MNISTClassifier:
    """Train the classifier with Adam and light random shifts (±2 pixels)."""
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MNISTClassifier(config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = len(images)
    steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
    bar = tqdm(total=steps, desc="classifier", disable=not progress)
    model.train()
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            x = images[idx]  # (B, 1, 28, 28)
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            with torch.random.fork_rng(devices=[]):  # dropout draws from a seeded stream
                torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
                loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: MNISTClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted classes. (N,)"""
    model.eval()
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def accuracy(model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    return float((predict(model, images) == labels.to(torch.long)).float().mean())


@torch.no_grad()
def feature_fid_kid(model: MNISTClassifier, real: torch.Tensor, fake: torch.Tensor, kid_subset: int = 100) -> dict:
    """FID and KID between ``real`` and ``fake`` images (both in [-1, 1]) in the classifier's
    feature space, computed by torchmetrics. Returns ``{"fid", "kid", "kid_std"}``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    model.eval()
    feat = _Features(model)
    subset = min(kid_subset, len(real), len(fake))
    fid = FrechetInceptionDistance(feature=feat, reset_real_features=True)
    kid = KernelInceptionDistance(feature=feat, subset_size=subset, reset_real_features=True)
    for metric in (fid, kid):
        for i in range(0, len(real), 500):
            metric.update(real[i : i + 500], real=True)
        for i in range(0, len(fake), 500):
            metric.update(fake[i : i + 500], real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
