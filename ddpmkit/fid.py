"""The FID protocol for image samples: which features, how many images, and the baseline.

Every FID this module reports comes with three things beside it:

1. **the feature space.** ``"classifier"`` (the offline default) is the penultimate layer of
   an evaluator classifier: the shipped ``mnist-classifier`` or ``shapes-evaluator``, or one
   trained on the user's folder (``ddpmkit train --recipe folder-evaluator``). Its numbers
   compare with each other, not with published FIDs. ``"inception"`` is the standard
   Inception-v3 pool features (2,048-d) through torchmetrics and torch-fidelity, the FID
   of papers (the 004 report's 28.7 on AFHQ). It runs only when the weights file is already
   on disk (:func:`inception_weights`): nothing here downloads anything.
2. **the counts**: the number of samples and of reference images. FID is biased upward for
   small sets, so two FIDs compare only at equal counts.
3. **a real-vs-real baseline**: the FID between held-out real images and the same reference
   set, with as many held-out images as samples when the data allow. No model can be
   expected to beat it at that count; a sample FID near it is as good as the count can show.

The reference and the baseline are disjoint parts of one seeded shuffle of the real images.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception-v3 (TF's pool3 features)
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
ENV_INCEPTION = "DDPMKIT_INCEPTION"  # the path of that file, when it lives elsewhere
SHIPPED_EVALUATORS = {"mnist": "mnist-classifier", "shapes": "shapes-evaluator"}  # the classifier FID's default per set


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights are not on disk (they are never downloaded here)."""


def inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$DDPMKIT_INCEPTION``, else the file in
    ``$DDPMKIT_DATA/inception/`` or in torch's hub cache; otherwise an error saying how to
    get it. Also checks that torch-fidelity, which builds the network, is installed."""
    from .images import data_root

    places = [Path(path)] if path is not None else []
    if os.environ.get(ENV_INCEPTION):
        places.append(Path(os.environ[ENV_INCEPTION]))
    places += [data_root() / "inception" / INCEPTION_FILE, Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise InceptionWeightsMissing(
            f"the Inception FID needs its weights on disk, and they are not at {', '.join(map(str, places))}. "
            f"On a machine with internet, download {INCEPTION_URL} and put it in one of those places "
            f"(or set {ENV_INCEPTION} to its path); nothing is downloaded for you. "
            "Without it, use the classifier FID (--features classifier), which runs offline")
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics builds the Inception network with it)
    except ImportError:
        raise InceptionWeightsMissing("the Inception FID needs torch-fidelity: pip install torch-fidelity") from None
    return found


@dataclass
class FIDResult:
    """One FID with what it needs beside it (the module docstring says why)."""

    fid: float  # samples against the reference images
    real_vs_real: float  # held-out real images against the same reference images
    features: str  # the feature space, in words
    n_samples: int  # generated images scored
    n_reference: int  # real images they are compared with
    n_baseline: int  # held-out real images in the baseline (= n_samples when the data allow)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"FID {self.fid:.2f} ({self.n_samples} samples against {self.n_reference} real images, {self.features}); "
                f"real-vs-real baseline {self.real_vs_real:.2f} ({self.n_baseline} held-out real images against the same {self.n_reference})")


def _metric(features: str, classifier=None, weights: str | os.PathLike | None = None):
    """(torchmetrics FrechetInceptionDistance, function mapping images in [-1, 1] to its input)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from .classifier import ClassifierFeatures

    if features == "classifier":
        if classifier is None:
            raise ValueError("the classifier FID needs an evaluator classifier (its features are the FID's space)")
        return FrechetInceptionDistance(feature=ClassifierFeatures(classifier.eval()), reset_real_features=True), lambda x: x
    if features == "inception":
        fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(inception_weights(weights)),
                                       reset_real_features=True)  # fmt: skip

        def prepare(x):  # (B, C, S, S) in [-1, 1] -> (B, 3, S, S) in [0, 1]; torchmetrics resizes to 299×299
            x = (x.clamp(-1, 1) + 1) / 2
            return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

        return fid, prepare
    raise ValueError(f"unknown features {features!r}; choose 'classifier' (offline) or 'inception' (weights on disk)")


@torch.no_grad()
def _frechet(metric, prepare, a: torch.Tensor, b: torch.Tensor, batch: int = 250) -> float:
    metric.reset()
    for x, real in ((b, True), (a, False)):
        for i in range(0, len(x), batch):
            metric.update(prepare(x[i : i + batch]), real=real)
    return float(metric.compute())


def fid_with_baseline(samples: torch.Tensor, real: torch.Tensor, *, features: str = "classifier", classifier=None,
                      weights: str | os.PathLike | None = None, n_reference: int | None = None, seed: int = 0) -> FIDResult:
    """The FID of ``samples`` against real images, with its real-vs-real baseline.

    1. Shuffle ``real`` with ``seed``; its first ``k = min(len(samples), len(real) // 2)``
       images are the baseline set, the rest (at most ``n_reference``) the reference.
    2. FID(samples, reference) and FID(baseline set, reference), in one feature space.

    ``samples`` and ``real``: (N, C, S, S) in [-1, 1], of one shape. ``features``:
    ``"classifier"`` (with ``classifier``, an :class:`~ddpmkit.classifier.ImageClassifier`)
    or ``"inception"`` (``weights``: see :func:`inception_weights`)."""
    if samples.ndim != 4 or samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and real images {tuple(real.shape)} must both be (N, C, S, S) of one image shape")
    if len(samples) < 2 or len(real) < 4:
        raise ValueError(f"an FID needs at least 2 samples and 4 real images (2 for the baseline, 2 for the reference); "
                         f"got {len(samples)} and {len(real)}")
    if not torch.isfinite(samples).all():
        raise ValueError("the samples contain NaN or infinite values; the sampler or the model diverged")
    if classifier is not None and features == "classifier":
        want = (classifier.config.in_channels, classifier.config.image_size, classifier.config.image_size)
        if tuple(real.shape[1:]) != want:
            raise ValueError(f"the evaluator classifier reads images of shape {want}, but these are {tuple(real.shape[1:])}; "
                             "use an evaluator trained at this size (ddpmkit train --recipe folder-evaluator --image-size S)")
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    k = min(len(samples), len(real) // 2)
    baseline, reference = real[perm[:k]], real[perm[k:]]
    if n_reference is not None:
        reference = reference[:n_reference]
    metric, prepare = _metric(features, classifier, weights)
    where = (f"classifier features ({classifier.num_features}-d penultimate layer)" if features == "classifier"
             else "Inception-v3 pool features (2048-d, torch-fidelity weights)")  # fmt: skip
    return FIDResult(
        fid=_frechet(metric, prepare, samples, reference), real_vs_real=_frechet(metric, prepare, baseline, reference),
        features=where, n_samples=len(samples), n_reference=len(reference), n_baseline=k,
    )  # fmt: skip
