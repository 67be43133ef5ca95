"""Small image classifiers trained by ``ddpmkit`` recipes, and the image metrics built on them.

The MNIST classifier serves three purposes (issue 3 of the course): the class accuracy of
conditional samples, FID and KID computed in *its* feature space, and the baseline for the
training-free diffusion classifier. The same network with ``multilabel=True``, 3 channels
and 9 sigmoid outputs is the *shapes evaluator*: it reads which of the 9 colour-shape
labels an image shows, as the iCLEVR evaluator of the 003 report does. This FID is **not** Inception-FID: the Inception
weights cannot be downloaded offline, and Inception features of 28×28 digits mean little
anyway. Numbers from this FID are comparable with each other, not with published FIDs.
"""

from __future__ import annotations

import warnings
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
    epochs: int = 20  # passes over the training images (MNIST offline: 0.988 held-out accuracy at 20, 0.985 at 12, 0.974 at 4)
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0  # initial weights and batch order
    in_channels: int = 1  # 1 for MNIST, 3 for the shapes set
    image_size: int = 28  # input side (28 MNIST, 32 shapes); must be divisible by 4
    num_outputs: int = 10  # classes (softmax) or labels (sigmoid)
    multilabel: bool = False  # True: independent sigmoid per label (the shapes evaluator)

    def __post_init__(self):
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2× poolings), got {self.image_size}")

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return cls(**{**d, "channels": tuple(d["channels"])})


def shapes_evaluator_config(seed: int = 0) -> ClassifierConfig:
    """The shapes evaluator recipe: 3×32×32 in, 9 sigmoid outputs (one per colour-shape label)."""
    from .images import SHAPE_LABELS

    return ClassifierConfig(
        in_channels=3, image_size=32, num_outputs=len(SHAPE_LABELS), multilabel=True,
        epochs=3, batch_size=64, lr=2e-3, seed=seed,
    )  # fmt: skip


class ImageClassifier(nn.Module):
    """[Conv3-ReLU-Conv3-ReLU-MaxPool] × 2 → Linear(features) → ReLU → Linear(num_outputs).

    Inputs are images in [-1, 1] of shape (B, in_channels, image_size, image_size).
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        config = config or ClassifierConfig()  # the defaults
        self.config = config
        c1, c2, side = *config.channels, config.image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, config.features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(config.features, config.num_outputs))
        self.num_features = config.features  # read by torchmetrics for a custom feature extractor

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features. (B, features)"""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, num_outputs) logits


class ClassifierFeatures(nn.Module):
    """Adapter: torchmetrics calls ``feature(imgs)`` and reads ``num_features``; the
    classifier's penultimate layer in float64 (the feature space of every classifier FID)."""

    def __init__(self, clf: ImageClassifier):
        super().__init__()
        self.clf, self.num_features = clf, clf.num_features

    def forward(self, x):
        return self.clf.features(x).double()


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig | None = None, progress: bool = True
) -> ImageClassifier:
    """Train the classifier with Adam and light random shifts (±2 pixels); cross-entropy on
    class indices, or binary cross-entropy on multi-hot labels when ``config.multilabel``."""
    config = config or ClassifierConfig()  # the defaults
    g = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ImageClassifier(config)
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
                logits = model(x)  # (B, num_outputs)
                if config.multilabel:
                    loss = F.binary_cross_entropy_with_logits(logits, labels[idx].float())
                else:
                    loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: ImageClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Predicted classes (N,), or for a multi-label model the multi-hot prediction (N, L)
    (each label present when its sigmoid exceeds 0.5)."""
    model.eval()
    logits = torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])
    return (logits > 0).float() if model.config.multilabel else logits.argmax(1)


def accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    if model.config.multilabel:
        raise ValueError("accuracy() is for class labels; use multilabel_accuracy() for a multi-label model")
    return float((predict(model, images) == labels.to(torch.long)).float().mean())


def multilabel_accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """How well images show their multi-hot ``labels`` (N, L), read by a multi-label model.

    * ``label_recall``: the 003 report's iCLEVR metric: of the requested labels, the fraction
      the evaluator detects (its ``eval``: correct top-k over requested objects, k = #requested);
      here "detects" means sigmoid > 0.5;
    * ``exact``: the fraction of images whose predicted label set equals the requested one
      (no missing and no extra objects);
    * ``per_label``: accuracy of each of the L yes/no decisions, averaged over images and labels.
    """
    if not model.config.multilabel:
        raise ValueError("multilabel_accuracy() needs a multi-label model (ClassifierConfig(multilabel=True))")
    from torchmetrics.functional.classification import multilabel_accuracy as accuracy_of
    from torchmetrics.functional.classification import multilabel_exact_match, multilabel_recall

    pred, y = predict(model, images), labels.long()  # (N, L) each
    L = y.shape[1]
    return {
        "label_recall": float(multilabel_recall(pred, y, num_labels=L, average="micro", threshold=0.5)),
        "exact": float(multilabel_exact_match(pred, y, num_labels=L, threshold=0.5)),
        "per_label": float(accuracy_of(pred, y, num_labels=L, average="micro", threshold=0.5)),
    }


@torch.no_grad()
def feature_fid_kid(model: ImageClassifier, real: torch.Tensor, fake: torch.Tensor, kid_subset: int = 100) -> dict:
    """FID and KID between ``real`` and ``fake`` images (both in [-1, 1]) in the classifier's
    feature space, computed by torchmetrics. Returns ``{"fid", "kid", "kid_std"}``; KID's
    random subsets are drawn with a fixed seed, so the result is reproducible."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    model.eval()
    feat = ClassifierFeatures(model)
    subset = min(kid_subset, len(real), len(fake))
    fid = FrechetInceptionDistance(feature=feat, reset_real_features=True)
    with warnings.catch_warnings():  # torchmetrics warns that KID keeps its features in memory: known, and small here
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save", category=UserWarning)
        kid = KernelInceptionDistance(feature=feat, subset_size=subset, reset_real_features=True)
    for metric in (fid, kid):
        for i in range(0, len(real), 500):
            metric.update(real[i : i + 500], real=True)
        for i in range(0, len(fake), 500):
            metric.update(fake[i : i + 500], real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG: seed it
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
