from __future__ import annotations

import numpy as np
import pytest

from medtl.engine.domain import target_metrics
from medtl.engine.metrics import (auroc, binary_metrics, choose_threshold, multiclass_metrics, oracle_accuracy,
                                  threshold_or_default)
from medtl.engine.schedule import warmup_cosine_factor

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_auroc_matches_pair_count() -> None:
    # 16 positive/negative pairs, one mis-ordered (0.6 > 0.4): 15/16
    assert auroc(LABELS, SCORES) == pytest.approx(15 / 16)


def test_youden_threshold_and_metrics_at_it() -> None:
    threshold = choose_threshold(LABELS, SCORES, "youden")
    # J = 0.75 at both 0.7 (sens 3/4, spec 1) and 0.4 (sens 1, spec 3/4): the higher cut wins the tie, placed
    # halfway between 0.7 and the next lower score, 0.6
    assert threshold == pytest.approx(0.65)
    m = binary_metrics(LABELS, SCORES, threshold)
    assert (m.sensitivity, m.specificity, m.accuracy) == pytest.approx((0.75, 1.0, 7 / 8))


def test_sensitivity_target_threshold() -> None:
    threshold = choose_threshold(LABELS, SCORES, "sensitivity", target_sensitivity=1.0)
    assert threshold == pytest.approx(0.35)  # halfway between 0.4 (the lowest positive) and 0.3
    assert binary_metrics(LABELS, SCORES, threshold).sensitivity == 1.0


def test_oracle_accuracy_is_the_best_any_threshold_reaches() -> None:
    # 7/8 at two cuts (0.7: sens 3/4, spec 1; 0.4: sens 1, spec 3/4); the higher wins, halfway down to 0.6
    assert oracle_accuracy(LABELS, SCORES) == pytest.approx((7 / 8, 0.65))
    accuracy, threshold = oracle_accuracy(LABELS, SCORES)
    assert binary_metrics(LABELS, SCORES, threshold).accuracy == accuracy
    labels, inverted = np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1])  # ranking upside down
    accuracy, threshold = oracle_accuracy(labels, inverted)
    assert accuracy == 0.75 and binary_metrics(labels, inverted, threshold).sensitivity == 0.0  # all negative
    assert np.isnan(oracle_accuracy(np.zeros(3, dtype=int), np.array([0.1, 0.5, 0.9]))[0])


def test_a_model_without_a_threshold_is_scored_at_one_half() -> None:
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.2, 0.55, 0.45, 0.9])
    assert threshold_or_default(None) == 0.5 and threshold_or_default(0.3) == 0.3
    probs = np.stack([1 - scores, scores], axis=1)  # (N, 2)
    assert target_metrics(labels, probs, None)["accuracy_at_source_threshold"] == 0.5  # 0.55 and 0.45 wrong
    assert target_metrics(labels, probs, 0.4)["accuracy_at_source_threshold"] == 0.75


def test_multiclass_metrics() -> None:
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = multiclass_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_warmup_then_cosine() -> None:
    factors = [warmup_cosine_factor(s, warmup_steps=4, total_steps=20, min_factor=0.0) for s in range(21)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert factors[12] == pytest.approx(0.5)
    assert factors[20] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_calibration_of_perfectly_and_badly_calibrated_scores() -> None:
    from medtl.engine.metrics import calibration

    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 20000)
    labels = (rng.uniform(0, 1, 20000) < scores).astype(int)  # P(y=1 | s) = s
    good = calibration(labels, scores)
    assert good.ece < 0.02 and abs(good.brier - 1 / 6) < 0.01  # E[s(1-s)] = 1/6
    bad = calibration(labels, np.clip(scores + 0.3, 0, 1))
    assert bad.ece > 0.2 and bad.counts.sum() == 20000


def test_threshold_for_specificity_reaches_it_with_the_most_sensitivity() -> None:
    from medtl.engine.metrics import threshold_for_specificity

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    for target in (0.9, 0.95):
        threshold = threshold_for_specificity(labels, scores, target)
        assert binary_metrics(labels, scores, threshold).specificity >= target
        lower = np.nextafter(np.max(scores[(labels == 0) & (scores < threshold)]), -np.inf)
        assert binary_metrics(labels, scores, lower).specificity < target  # any lower threshold falls short
