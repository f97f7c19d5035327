"""scripts/experiments/study_scale.py: variance components of a paired difference and the scale they predict."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import RunConfusions
from scripts.experiments import study_scale


def run(correct: np.ndarray) -> RunConfusions:
    """A run of E evaluation seeds x U units, 2 classes, 10 samples per unit and class, with
    `correct` (E, U) right answers per class."""
    confusion = np.zeros((*correct.shape, 2, 2))
    for k in range(2):
        confusion[..., k, k] = correct
        confusion[..., k, 1 - k] = 10 - correct
    return RunConfusions([f"s{u}" for u in range(correct.shape[1])], confusion, frozenset())


def test_components_separate_evaluation_noise_from_pre_training_seeds() -> None:
    rng = np.random.default_rng(0)
    base = [run(np.full((3, 20), 5)) for _ in range(4)]
    # encoder: +1 correct per class everywhere (UAR +0.1), and evaluation seeds that differ by +-1
    noisy = [run(np.full((3, 20), 6) + np.array([[-1], [0], [1]])) for _ in range(4)]
    c = study_scale.components(base, noisy, subjects=20)
    assert c["mean"] == pytest.approx(0.1)
    assert c["eval"] == pytest.approx(0.01)  # var of (0.0, 0.1, 0.2)
    assert c["pre"] == pytest.approx(0.0) and c["subject"] == pytest.approx(0.0, abs=1e-12)
    # runs that differ by pre-training seed only
    shifted = [run(np.full((3, 20), 6 + r % 2)) for r in range(4)]
    assert study_scale.components(base, shifted, subjects=20)["pre"] == pytest.approx(np.var([0.1, 0.2] * 2, ddof=1))
    # subjects that differ: the unit bootstrap sees them
    varied = [run(np.tile(rng.integers(4, 9, size=20), (3, 1))) for _ in range(4)]
    assert study_scale.components(base, varied, subjects=20)["subject"] > 0.001


def test_the_half_width_shrinks_as_the_model_says() -> None:
    c = {"subject": 0.04, "pre": 0.01, "eval": 0.02}
    assert study_scale.predicted_half_width(c, 100, 5, 2, 30) == pytest.approx(
        2 * np.sqrt(0.04 / 100 + 0.01 / 5 + 0.02 * 0.3 / 10))
