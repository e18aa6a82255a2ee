from __future__ import annotations

import numpy as np

from medtl.engine.evaluation import Evaluator, predictions_frame
from medtl.engine.loop import Predictions


def test_binary_table_columns() -> None:
    frame = predictions_frame(["a", "b"], np.array([[0.8, 0.2], [0.3, 0.7]]), ["NORMAL", "PNEUMONIA"])
    assert list(frame.columns) == ["path", "label", "score"]
    assert frame["score"].tolist() == [0.2, 0.7] and frame["label"].tolist() == ["", ""]


def test_multiclass_table_columns() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    frame = predictions_frame(["a", "b"], probs, ["glioma", "meningioma", "notumor"], ["glioma", "glioma"])
    assert list(frame.columns) == ["path", "label", "pred", "score_glioma", "score_meningioma", "score_notumor"]
    assert frame["pred"].tolist() == ["glioma", "notumor"]
    np.testing.assert_allclose(frame[["score_glioma", "score_meningioma", "score_notumor"]].to_numpy(), probs)


def test_report_has_threshold_figures_and_predicted_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 20)
    scores = np.clip(labels * 0.4 + rng.uniform(0, 0.6, 40), 0, 1)
    preds = Predictions(np.stack([1 - scores, scores], axis=1), labels, [f"p{i}" for i in range(40)])
    report = Evaluator(["NORMAL", "PNEUMONIA"]).report(preds)
    assert set(report.figures) == {"roc_curve.png", "confusion_matrix.png"}
    assert report.metrics["auroc"] > 0.8 and 0 < report.threshold < 1
    assert (report.predictions["pred"] == np.where(scores >= report.threshold, "PNEUMONIA", "NORMAL")).all()
