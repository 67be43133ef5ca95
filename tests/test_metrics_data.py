import math

import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from ddpmkit.data import load_dataset
from ddpmkit.metrics import chamfer_distance, emd, evaluate_samples, kde_nll


def test_chamfer_by_hand():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0]])
    assert chamfer_distance(x, y) == pytest.approx(1 + 2 + 1)  # (1, 2) from x, (1) from y
    assert chamfer_distance(x, y, "mean") == pytest.approx(1.5 + 1.0)


def test_emd_of_a_translation_is_its_length():
    x = load_dataset("moons", 300, seed=0)
    assert emd(x, x + np.array([0.3, 0.4]), n=300, repeats=1) == pytest.approx(0.5, abs=1e-9)
    assert emd(x, x, n=300, repeats=2) == pytest.approx(0.0, abs=1e-12)


def test_kde_nll_of_a_point_on_its_kernel():
    h, D = 0.2, 3
    assert kde_nll(np.zeros((1, D)), np.zeros((1, D)), bandwidth=h) == pytest.approx(0.5 * D * math.log(2 * math.pi * h * h))


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        chamfer_distance(np.array([[np.nan, 0.0]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dimensions"):
        emd(np.zeros((3, 2)), np.zeros((3, 3)))


def test_swiss_roll_follows_the_kaist_generator():
    x = load_dataset("swiss_roll", 500, seed=4)
    ref, _ = make_swiss_roll(500, noise=0.0, random_state=4, hole=True)
    ref = ref[:, [0, 2]]
    ref = (ref - ref.mean()) / ref.std() * 2
    assert np.allclose(x, ref, atol=1e-5)
    assert x.dtype == np.float32


def test_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("spiral", 10)
    with pytest.raises(ValueError, match="positive"):
        load_dataset("moons", 0)


def test_real_data_scores_well_against_itself():
    m = evaluate_samples(load_dataset("swiss_roll", 2048, 2), load_dataset("swiss_roll", 2048, 1))
    assert m["chamfer"] < 5 and m["emd"] < 0.3
