import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from avemo.contract import LABELS
from avemo.train.metrics import emotion_f1


def _reference(labels, probs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on undefined F1 and uses 0.0, as we do
        return {
            name: {
                "wF1": f1_score(labels[:, k], probs[:, k] >= 0.5, average="weighted"),
                "mF1": f1_score(labels[:, k], probs[:, k] >= 0.5, average="macro"),
            }
            for k, name in enumerate(LABELS)
        }


@pytest.mark.parametrize(
    "make_labels",
    [
        lambda rng, n: (rng.random((n, 6)) < 0.3).astype(float),
        lambda rng, n: np.zeros((n, 6)),
        lambda rng, n: np.ones((n, 6)),
    ],
    ids=["random", "all-negative", "all-positive"],
)
@pytest.mark.parametrize(
    "make_probs", [lambda rng, n: rng.random((n, 6)), lambda rng, n: np.zeros((n, 6))], ids=["rand", "zeros"]
)
def test_matches_sklearn(make_labels, make_probs):
    rng = np.random.default_rng(3)
    labels, probs = make_labels(rng, 57), make_probs(rng, 57)
    got = emotion_f1(labels, probs)
    want = _reference(labels, probs)
    for name in LABELS:
        for key in ("wF1", "mF1"):
            assert got[name][key] == pytest.approx(want[name][key], abs=1e-12)
    assert got["average"]["mF1"] == pytest.approx(np.mean([want[n]["mF1"] for n in LABELS]))


def test_threshold_is_inclusive_at_half():
    labels = np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], float)
    probs = np.array([[0.5, 0, 0, 0, 0, 0], [0.49, 0, 0, 0, 0, 0]])
    assert emotion_f1(labels, probs)["happy"]["mF1"] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must both be"):
        emotion_f1(np.zeros((3, 6)), np.zeros((3, 5)))
