"""Turn validation predictions into metrics, an operating threshold, a predictions table and figures."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medtl.engine.loop import Predictions
from medtl.engine.metrics import binary_metrics, calibration, choose_threshold, multiclass_metrics, oracle_accuracy
from medtl.tracking.plots import confusion_figure, roc_figure

__all__ = ["EvaluationReport", "Evaluator", "predictions_frame"]


@dataclass
class EvaluationReport:
    metrics: dict[str, float]
    threshold: float | None
    predictions: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)


class Evaluator:
    """Metrics for a task with ``classes``; binary tasks score the last class (the positive one).

    Args:
        threshold: ``youden`` or ``sensitivity`` (the highest threshold reaching ``target_sensitivity``).
        tta: average the final evaluation over flipped and shifted views (per-epoch validation stays plain).
        external: ``{name: manifest CSV or class tree}``: labelled sets of other sites, scored at the validation
            threshold after training (:mod:`medtl.data.external`).
        external_adabn: score each external set a second time with BatchNorm statistics of its own images.
    """

    def __init__(self, classes: list[str], threshold: str = "youden", target_sensitivity: float = 0.95,
                 tta: bool = False, external: dict[str, str] | None = None, external_adabn: bool = False) -> None:
        self.classes = [str(c) for c in classes]
        self.method, self.target_sensitivity, self.tta = threshold, target_sensitivity, tta
        self.external, self.external_adabn = dict(external or {}), external_adabn
        self.binary = len(classes) == 2

    def metrics(self, preds: Predictions) -> dict[str, float]:
        """AUROC plus accuracy (and, binary, sensitivity/specificity at a threshold chosen on ``preds``)."""
        if not self.binary:
            return multiclass_metrics(preds.labels, preds.probs)
        scores = preds.probs[:, 1]
        threshold = choose_threshold(preds.labels, scores, self.method, self.target_sensitivity)
        return binary_metrics(preds.labels, scores, threshold).as_dict()

    def report(self, preds: Predictions, threshold: float | None = None, split: str = "val") -> EvaluationReport:
        """Final metrics (with calibration: ``ece``, ``brier``), the predictions table and the ROC /
        confusion-matrix figures. Validation chooses the threshold; a held-out ``split`` (``test``) is scored at
        the ``threshold`` validation chose, and its figures are named after it (``test_roc_curve.png``). A held-out
        binary split also gets ``oracle_accuracy`` / ``oracle_threshold``: the best any threshold does on its own
        labels (a bound, not an operating point: the gap to ``accuracy`` is what the threshold did not transfer)."""
        if threshold is None or not self.binary:
            metrics = self.metrics(preds)
        else:
            metrics = binary_metrics(preds.labels, preds.probs[:, 1], threshold).as_dict()
            metrics["oracle_accuracy"], metrics["oracle_threshold"] = oracle_accuracy(preds.labels, preds.probs[:, 1])
        threshold = metrics.get("threshold") if self.binary else None
        if self.binary:
            fit = calibration(preds.labels, preds.probs[:, 1])
            metrics.update({"ece": fit.ece, "brier": fit.brier})
        frame = predictions_frame(preds.paths, preds.probs, self.classes,
                                  [self.classes[i] for i in preds.labels], threshold)
        predicted = (preds.probs[:, 1] >= threshold).astype(int) if self.binary else preds.probs.argmax(1)
        prefix, title = ("", "Validation") if split == "val" else (f"{split}_", split.capitalize())
        figures = {f"{prefix}confusion_matrix.png": confusion_figure(preds.labels, predicted, self.classes,
                                                                     f"{title} confusion matrix")}
        if self.binary:
            figures[f"{prefix}roc_curve.png"] = roc_figure(preds.labels, preds.probs[:, 1], self.classes[1], threshold,
                                                           title=f"{title} ROC")
        return EvaluationReport(metrics, threshold, frame, figures)


def predictions_frame(paths: list[str], probs: np.ndarray, classes: list[str], labels: list[str] | None = None,
                      threshold: float | None = None) -> pd.DataFrame:
    """The predictions table shared by training and ``medtl.predict``.

    Binary: ``path, label, score`` (positive-class probability), plus ``pred`` when a
    ``threshold`` is given. Multi-class: ``path, label, pred, score_<class>`` for each class.
    ``label`` is the ground-truth class name, empty when unknown.
    """
    frame = pd.DataFrame({"path": paths, "label": labels if labels is not None else [""] * len(paths)})
    if len(classes) == 2:
        frame["score"] = probs[:, 1]
        if threshold is not None:
            frame["pred"] = np.where(probs[:, 1] >= threshold, classes[1], classes[0])
        return frame
    frame["pred"] = [classes[i] for i in probs.argmax(axis=1)]
    for index, name in enumerate(classes):
        frame[f"score_{name}"] = probs[:, index]
    return frame
