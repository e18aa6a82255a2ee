"""Target-domain evaluation: proxy A-distance, metrics at the source threshold, the embedding picture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medtl.adaptation import create_adaptation
from medtl.data.domains import RunLoaders
from medtl.engine.domain import evaluate_target, proxy_a_distance, target_metrics
from medtl.models.classifier import build_classifier
from medtl.tracking.plots import domain_embedding_figure, embed_2d


def test_proxy_a_distance_is_near_zero_for_one_distribution_and_two_for_separated_ones() -> None:
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert proxy_a_distance(source, target) < 0.3
    assert proxy_a_distance(source, target + 5.0) > 1.9
    assert 0.4 < proxy_a_distance(source, target + np.r_[1.0, np.zeros(15)]) < 1.2  # Bayes error 0.31: PAD ~0.77
    assert np.isnan(proxy_a_distance(source[:4], target[:4]))


def test_target_metrics_use_the_source_threshold() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.2, 0.6, 0.7, 0.9])  # ranking is perfect; the source threshold 0.5 is not
    probs = np.stack([1 - scores, scores], axis=1)
    metrics = target_metrics(labels, probs, source_threshold=0.5)
    assert metrics["auroc"] == 1.0
    assert metrics["accuracy_at_source_threshold"] == 0.75
    assert metrics["specificity_at_source_threshold"] == 0.5
    assert metrics["sensitivity_at_source_threshold"] == 1.0
    assert metrics["oracle_accuracy"] == 1.0  # the target's own best threshold: the ranking was never the problem
    three = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.2 / 3
    assert target_metrics(np.array([0, 1, 2, 1]), three, None)["accuracy"] == 0.75


def test_embedding_is_deterministic_and_the_figure_names_domains_and_classes() -> None:
    rng = np.random.default_rng(1)
    source, target = rng.normal(size=(40, 32)), rng.normal(size=(30, 32)) + 3
    points = embed_2d(np.concatenate([source, target]), seed=0)
    assert points.shape == (70, 2)
    np.testing.assert_allclose(points, embed_2d(np.concatenate([source, target]), seed=0))
    figure = domain_embedding_figure(source, target, np.repeat([0, 1], 20), np.full(30, -1), ["NORMAL", "PNEUMONIA"])
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["source: NORMAL", "source: PNEUMONIA", "target: unlabelled"]


@pytest.mark.parametrize("n", [5, 12])
def test_small_sets_still_embed(n: int) -> None:
    assert embed_2d(np.random.default_rng(0).normal(size=(n, 8))).shape == (n, 2)


def _image_loader(n: int, seed: int) -> torch.utils.data.DataLoader:
    """``n`` items ``{"image": (1, 32, 32), "label": 0/1, "path": str}`` in batches of 4."""
    generator = torch.Generator().manual_seed(seed)
    items = [{"image": torch.rand(1, 32, 32, generator=generator) + 0.5 * (i % 2), "label": i % 2,
              "path": f"case{i}.png"} for i in range(n)]
    return torch.utils.data.DataLoader(items, batch_size=4)


@pytest.mark.parametrize(("method", "where", "threshold"), [
    ("adabn", "validation threshold under AdaBN", 0.3),  # AdaBN hands over another model: validation's, under AdaBN
    ("none", "source threshold", 0.7),  # the unadapted model: the source threshold
])
def test_target_roc_names_the_threshold_its_operating_point_was_chosen_at(method: str, where: str,
                                                                           threshold: float) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "scratch", 2, weights=None)  # (B, 1, 32, 32) -> (B, 2)
    loaders = RunLoaders(train=_image_loader(8, 0), val=_image_loader(8, 1), source_val=_image_loader(8, 2),
                         target_eval=_image_loader(8, 3), target_test=_image_loader(8, 4))
    report = evaluate_target(model, create_adaptation(method), loaders, ["NORMAL", "PNEUMONIA"],
                             source_threshold=0.7, device=torch.device("cpu"), progress=False, adapted_threshold=0.3)
    axes = report.figures["target_roc_curve.png"].axes[0]
    assert axes.get_title() == f"Target ROC ({where})"
    assert f"threshold {threshold:.3f}" in [t.get_text() for t in axes.get_legend().get_texts()]
    expected = np.where(report.predictions["score"] >= threshold, "PNEUMONIA", "NORMAL")
    assert (report.predictions["pred"] == expected).all()  # the table cuts where the plot marks
