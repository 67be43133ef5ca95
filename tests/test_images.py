"""UNet conditioning paths, guidance identities and the image loaders (issue 3 foundations)."""

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.guidance import CFGModel, scale_to_w, w_to_scale
from ddpmkit.images import (
    MNIST_HELD_OUT,
    SHAPE_LABELS,
    MissingTrainingSplitWarning,
    load_digits8x8,
    load_mnist,
    make_shapes,
    read_idx,
)  # fmt: skip
from ddpmkit.samplers import ddim_sample
from ddpmkit.schedules import NoiseSchedule
from ddpmkit.unet import UNet, UNetConfig

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


def small(**kw) -> UNetConfig:
    return UNetConfig(base_channels=16, channel_mults=(1, 2), attn_levels=(1,), **kw)


@pytest.mark.parametrize("size", [8, 28, 32, 64])
@pytest.mark.parametrize("cond", ["none", "class", "multi"])
def test_unet_shapes_for_every_conditioning_path(size, cond):
    torch.manual_seed(0)
    channels = 1 if size in (8, 28) else 3
    kw = {"none": {}, "class": {"num_classes": 10}, "multi": {"num_labels": 9}}[cond]
    cfg = UNetConfig(in_channels=channels, base_channels=16, channel_mults=(1, 2, 2), attn_levels=(2,), **kw)
    net = UNet(cfg)
    x = torch.randn(3, channels, size, size)
    y = {"none": None, "class": torch.tensor([0, 9, 10]), "multi": torch.eye(9)[:3]}[cond]
    for t in (torch.tensor([7]), torch.tensor([1, 2, 3])):  # shared and per-sample timesteps
        out = net(x, t, y)
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_conditioning_changes_the_output_and_null_is_default():
    torch.manual_seed(0)
    net = UNet(small(num_classes=10)).eval()
    with torch.no_grad():  # the embedding of a fresh net is random, so labels must matter
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([5])
        a, b = net(x, t, torch.tensor([1, 1])), net(x, t, torch.tensor([2, 2]))
        assert not torch.allclose(a, b)
        assert torch.equal(net(x, t), net(x, t, torch.full((2,), 10)))  # y=None is the null token
    multi = UNet(small(num_labels=9)).eval()
    with torch.no_grad():
        assert torch.equal(multi(x, t), multi(x, t, torch.zeros(2, 9)))


def test_bad_labels_are_clear_errors():
    net = UNet(small(num_classes=10))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        net(x, t, torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="shape"):
        UNet(small(num_labels=9))(x, t, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(small())(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="not both"):
        UNet(small(num_classes=3, num_labels=3))


def test_guidance_identities():
    torch.manual_seed(0)
    net = UNet(small(num_classes=10)).eval()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([50]), torch.tensor([3, 1, 4, 1])
    with torch.no_grad():
        eps_c, eps_u = net(x, t, y), net(x, t)
        # w = 0 gives the conditional prediction
        assert torch.allclose(CFGModel(net, y, 0.0)(x, t), eps_c, atol=1e-6)
        # the null label as the condition gives the unconditional prediction, at any w
        assert torch.allclose(CFGModel(net, torch.full((4,), 10), 3.0)(x, t), eps_u, atol=1e-5)
        # (1 + w) ε_c − w ε_u equals ε_u + s (ε_c − ε_u) with s = 1 + w
        w = 2.5
        guided = CFGModel(net, y, w)(x, t)
        assert torch.allclose(guided, eps_u + w_to_scale(w) * (eps_c - eps_u), atol=1e-5)
    assert scale_to_w(w_to_scale(1.7)) == pytest.approx(1.7)
    with pytest.raises(ValueError, match="w must be >= 0"):
        CFGModel(net, y, -1.0)


@pytest.mark.parametrize("seed", range(5))
def test_guidance_interval_guides_exactly_the_timesteps_inside_it(seed):
    """Per sample, an interval (lo, hi) gives the guided output at lo <= t <= hi and the plain
    conditional one elsewhere, for batches of shared and of mixed timesteps."""
    g = torch.Generator().manual_seed(seed)
    net = UNet(small(num_classes=10)).eval()
    x, y = torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    lo = int(torch.randint(0, 60, (1,), generator=g))
    hi = lo + int(torch.randint(0, 40, (1,), generator=g))
    w = float(torch.rand(1, generator=g)) * 3
    with torch.no_grad():
        inner = CFGModel(net, y, w, interval=(lo, hi))
        for t in [torch.tensor([lo]), torch.tensor([hi]), torch.tensor([max(lo - 1, 0)]), torch.tensor([hi + 1])]:  # (1,): shared
            want = CFGModel(net, y, w if lo <= int(t) <= hi else 0.0)(x, t)
            assert torch.equal(inner(x, t), want)
        t = torch.tensor([lo, hi, hi + 1, max(lo - 1, 0), (lo + hi) // 2, 99])  # (6,): mixed
        guided, plain = CFGModel(net, y, w)(x, t), CFGModel(net, y, 0.0)(x, t)
        inside = ((t >= lo) & (t <= hi)).view(-1, 1, 1, 1)
        assert torch.allclose(inner(x, t), torch.where(inside, guided, plain), atol=1e-5)


def test_guidance_interval_covering_every_step_is_ordinary_guidance_and_one_covering_none_is_w_0():
    net, sched = UNet(small(num_classes=10)).eval(), NoiseSchedule.create("cosine", 100)
    y = torch.arange(4)

    def draw(**kw):
        return ddim_sample(CFGModel(net, y, 2.0, **kw), sched, (4, 1, 8, 8), steps=5, generator=torch.Generator().manual_seed(0)).x

    ordinary, plain = draw(), ddim_sample(CFGModel(net, y, 0.0), sched, (4, 1, 8, 8), steps=5, generator=torch.Generator().manual_seed(0)).x
    assert torch.equal(draw(interval=(0, 99)), ordinary) and torch.equal(draw(interval=(0, 10**6)), ordinary)
    assert torch.equal(draw(interval=(100, 200)), plain)  # DDIM's 5 steps all lie below t = 100
    assert not torch.equal(draw(interval=(0, 40)), ordinary) and not torch.equal(draw(interval=(0, 40)), plain)


@pytest.mark.parametrize("interval", [(5, 4), (-1, 3), (0.5, 3), (1, 2, 3), (2,)])
def test_bad_guidance_intervals_are_clear_errors(interval):
    with pytest.raises(ValueError, match="guidance interval must be two whole timesteps"):
        CFGModel(UNet(small(num_classes=10)), torch.arange(2), 1.0, interval=interval)


def test_guided_ddim_sampling_runs_on_images():
    torch.manual_seed(0)
    net = UNet(small(num_classes=10)).eval()
    out = ddim_sample(CFGModel(net, torch.arange(4), 2.0), NoiseSchedule.create("cosine", 100), (4, 1, 28, 28),
                      steps=3, clip_x0=(-1, 1), generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.x.shape == (4, 1, 28, 28) and out.x.abs().max() <= 1 + 1e-5


@pytest.fixture
def test_split_only(tmp_path):
    if not SHARED_MNIST.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared MNIST test split at {SHARED_MNIST}")
        pytest.skip("../shared/data/MNIST/raw is not beside this checkout")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED_MNIST / f, raw / f)
    return tmp_path


def test_mnist_offline_uses_the_test_split_and_warns(test_split_only):
    with pytest.warns(MissingTrainingSplitWarning, match="training split is missing"):
        train = load_mnist("train", root=test_split_only)
    with pytest.warns(MissingTrainingSplitWarning):
        ev = load_mnist("eval", root=test_split_only)
    with pytest.warns(MissingTrainingSplitWarning):
        ev2 = load_mnist("eval", root=test_split_only)
    assert train.images.shape == (10_000 - MNIST_HELD_OUT, 1, 28, 28) and ev.images.shape == (MNIST_HELD_OUT, 1, 28, 28)
    assert torch.equal(ev.images, ev2.images)  # the held-out 1,000 are fixed
    assert train.images.min() == -1 and train.images.max() == 1
    assert set(ev.labels.tolist()) == set(range(10))
    assert "training split missing" in train.source
    # disjoint: no held-out image appears in the training part
    tr_keys = {bytes(im.numpy().tobytes()) for im in train.images[:, 0, 10:18, 10:18]}
    shared = sum(bytes(im.numpy().tobytes()) in tr_keys for im in ev.images[:, 0, 10:18, 10:18])
    assert shared < 5  # a few blank centre patches may coincide; whole images never do


def test_mnist_env_var_root(test_split_only, monkeypatch):
    monkeypatch.setenv("DDPMKIT_DATA", str(test_split_only))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingTrainingSplitWarning)
        assert load_mnist("eval").images.shape[0] == MNIST_HELD_OUT


def test_mnist_missing_says_where_to_put_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw.*t10k-images-idx3-ubyte.gz.*download=True"):
        load_mnist("train", root=tmp_path)


def test_read_idx_rejects_truncated_files(tmp_path, test_split_only):
    import gzip

    with gzip.open(test_split_only / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") as f:
        data = f.read()
    (tmp_path / "short-idx1-ubyte").write_bytes(data[:500])
    with pytest.raises(ValueError, match="short-idx1-ubyte is not a readable IDX file"):
        read_idx(tmp_path / "short-idx1-ubyte")
    (tmp_path / "junk.gz").write_bytes(gzip.compress(b"\x00\x00\x99\x01" + bytes(8)))
    with pytest.raises(ValueError, match="junk.gz is not a readable IDX file"):
        read_idx(tmp_path / "junk.gz")
    labels = read_idx(test_split_only / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8 and labels[:5].tolist() == list(data[8:13])


def test_digits8x8_and_shapes():
    d = load_digits8x8()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.min() == -1 and d.images.max() == 1
    s = make_shapes(50, seed=3)
    assert s.images.shape == (50, 3, 32, 32) and s.labels.shape == (50, len(SHAPE_LABELS))
    assert ((s.labels.sum(1) >= 1) & (s.labels.sum(1) <= 3)).all()
    assert torch.equal(s.images, make_shapes(50, seed=3).images)
    # a labelled red shape puts pure-red pixels in the image; an image without red has none
    red = (s.images[:, 0] > 0.9) & (s.images[:, 1] < -0.7) & (s.images[:, 2] < -0.7)
    has_red_label = s.labels[:, :3].sum(1) > 0
    assert torch.equal(red.flatten(1).any(1), has_red_label)


def test_mnist_fallback_can_be_quiet_and_kid_does_not_warn(test_split_only):
    """The book states the MNIST substitution in its prose and asks for no warning; the
    feature FID/KID prints none either (torchmetrics' buffer notice is expected)."""
    from ddpmkit.classifier import ClassifierConfig, ImageClassifier, feature_fid_kid

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        held = load_mnist("eval", root=test_split_only, warn=False)
        assert "training split missing" in held.source
        torch.manual_seed(0)
        feature_fid_kid(ImageClassifier(ClassifierConfig(features=8)).eval(), held.images[:40], held.images[40:80], kid_subset=20)
    with pytest.warns(MissingTrainingSplitWarning):
        load_mnist("eval", root=test_split_only)
