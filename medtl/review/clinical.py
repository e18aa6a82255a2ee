"""The numbers a clinician asks for, on data that did not choose the threshold.

Operating points (the validation-chosen threshold, and the thresholds reaching 90% and 95% specificity) are
always chosen on validation. They are reported on the run's ``test`` split when it has one; without one, on
validation with each image judged at thresholds chosen on the *other* half of the validation patients (2-fold
cross-fitting), never at a threshold its own label helped choose.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medtl.engine.metrics import (Calibration, auroc, binary_metrics, bootstrap_ci, calibration, choose_threshold,
                                  multiclass_metrics, threshold_for_specificity, threshold_or_default)
from medtl.models.card import ModelCard

__all__ = ["SPECIFICITIES", "ClinicalNumbers", "held_out_split", "clinical_numbers", "clinical_figures", "operating_points", "roc_figure_with_ci",
           "reliability_figure", "subgroup_metrics", "label_indices"]

SPECIFICITIES = (0.90, 0.95)
SUBGROUP_COLUMNS = ("domain", "site")


@dataclass
class ClinicalNumbers:
    """AUROC with its bootstrap 95% CI, operating points, calibration and subgroups of one evaluated set."""

    evaluated_on: str
    n_images: int
    auroc: float
    ci: tuple[float, float]
    operating_points: pd.DataFrame
    calibration: Calibration | None
    subgroups: pd.DataFrame | None

    def summary(self) -> str:
        """The headline numbers as Markdown."""
        lines = [f"Evaluated on {self.evaluated_on}.",
                 f"**AUROC {self.auroc:.3f}** (95% bootstrap CI {self.ci[0]:.3f} to {self.ci[1]:.3f})"]
        if self.calibration is not None:
            lines.append(f"Expected calibration error (10 bins) {self.calibration.ece:.3f}; "
                         f"Brier score {self.calibration.brier:.3f}")
        return "\n\n".join(lines)


def label_indices(table: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Class indices of the table's ``label`` names (the rows must all be labelled)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(label)] for label in table["label"]], dtype=int)


def held_out_split(predictions: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The run's ``test`` predictions when it has a non-empty test split, else ``None``."""
    test = predictions.get("test")
    return test if test is not None and len(test) else None


def clinical_numbers(predictions: dict[str, pd.DataFrame], card: ModelCard, method: str = "youden",
                     seed: int = 0) -> ClinicalNumbers:
    """The numbers of a run's ``test`` predictions (thresholds from ``val``), else of ``val`` cross-fitted."""
    val, held_out = predictions["val"], held_out_split(predictions)
    shown = held_out if held_out is not None else val
    classes = list(card.classes)
    labels = label_indices(shown, classes)
    where = (f"the test split ({len(shown):,} images; thresholds chosen on validation)" if held_out is not None else
             f"validation ({len(shown):,} images; no test split: each image judged at thresholds chosen on the "
             "other half of the validation patients)")
    if not card.binary:
        probs = shown[[f"score_{c}" for c in classes]].to_numpy()
        metrics = multiclass_metrics(labels, probs)
        table = pd.DataFrame([{"operating point": "most probable class", "accuracy": metrics["accuracy"],
                               "balanced accuracy": metrics["balanced_accuracy"], "images": len(shown)}])
        return ClinicalNumbers(where, len(shown), metrics["auroc"], bootstrap_ci(labels, probs, seed=seed), table,
                               None, subgroup_metrics(shown, card, None))
    scores = shown["score"].to_numpy(dtype=float)
    points = operating_points(val, held_out, card, method)
    return ClinicalNumbers(where, len(shown), auroc(labels, scores), bootstrap_ci(labels, scores, seed=seed), points,
                           calibration(labels, scores), subgroup_metrics(shown, card, card.threshold))


def operating_points(val: pd.DataFrame, test: pd.DataFrame | None, card: ModelCard, method: str) -> pd.DataFrame:
    """Sensitivity, specificity, PPV and NPV at the validation-chosen threshold and at 90% / 95% specificity,
    each threshold chosen on validation and applied to ``test`` (or cross-fitted on validation without one)."""
    rules = {f"validation threshold ({method})": lambda y, s: card.threshold if test is not None else
             choose_threshold(y, s, method)}
    rules.update({f"specificity >= {spec:.2f} on validation": (lambda y, s, spec=spec: threshold_for_specificity(y, s, spec))
                  for spec in SPECIFICITIES})
    classes = list(card.classes)
    rows = []
    for name, rule in rules.items():
        if test is not None:
            labels, scores = label_indices(test, classes), test["score"].to_numpy(float)
            threshold = rule(label_indices(val, classes), val["score"].to_numpy(float))
            predicted, shown_threshold = scores >= threshold, f"{threshold:.3f}"
        else:
            labels, scores, predicted, shown_threshold = _cross_fitted(val, classes, rule)
        rows.append({"operating point": name, "threshold": shown_threshold, **_rates(labels, predicted)})
    return pd.DataFrame(rows)


def _cross_fitted(val: pd.DataFrame, classes: list[str], rule: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Each validation image called at the threshold ``rule`` picks on the other half of the patients."""
    labels, scores = label_indices(val, classes), val["score"].to_numpy(float)
    patients = val["patient"] if "patient" in val.columns else val["case"]
    fold = np.array([hashlib.sha256(str(p).encode()).digest()[0] % 2 for p in patients])  # a patient's half
    predicted, thresholds = np.zeros(len(val), dtype=bool), []
    for held in (0, 1):
        chooser = fold != held
        if len(np.unique(labels[chooser])) < 2:  # too few patients to cross-fit: say so in the threshold column
            threshold = rule(labels, scores)
            return labels, scores, scores >= threshold, f"{threshold:.3f} (chosen on all validation: optimistic)"
        threshold = rule(labels[chooser], scores[chooser])
        predicted[~chooser] = scores[~chooser] >= threshold
        thresholds.append(threshold)
    return labels, scores, predicted, " / ".join(f"{t:.3f}" for t in thresholds)


def _rates(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    positives, negatives = labels == 1, labels == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
                "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
                "PPV": float(positives[predicted].mean()) if predicted.any() else float("nan"),
                "NPV": float(negatives[~predicted].mean()) if (~predicted).any() else float("nan"),
                "images": int(len(labels))}


def subgroup_metrics(table: pd.DataFrame, card: ModelCard, threshold: float | None) -> pd.DataFrame | None:
    """Per ``domain``/``site`` (when the data has such a column): images, prevalence or accuracy, AUROC and, binary,
    sensitivity and specificity at the validation ``threshold``. ``None`` without a subgroup column."""
    column = next((c for c in SUBGROUP_COLUMNS if c in table.columns and table[c].astype(str).ne("").any()), None)
    if column is None:
        return None
    rows, classes = [], list(card.classes)
    for group, part in table.groupby(column):
        labels = label_indices(part, classes)
        if card.binary:
            scores = part["score"].to_numpy(float)
            at = binary_metrics(labels, scores, threshold_or_default(threshold))
            rows.append({column: group, "images": len(part), "prevalence": float(labels.mean()), "AUROC": at.auroc,
                         "sensitivity": at.sensitivity, "specificity": at.specificity})
        else:
            metrics = multiclass_metrics(labels, part[[f"score_{c}" for c in classes]].to_numpy())
            rows.append({column: group, "images": len(part), "AUROC": metrics["auroc"], "accuracy": metrics["accuracy"]})
    return pd.DataFrame(rows)


def roc_figure_with_ci(curves: dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float]]],
                       title: str = "ROC", points: pd.DataFrame | None = None) -> Figure:
    """ROC curves ``{name: (labels, scores, ci)}``, each labelled with its AUROC and 95% CI; the operating
    ``points`` (sensitivity, specificity) of a single curve are marked."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, (labels, scores, ci) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name}: AUROC {auroc(labels, scores):.3f} ({ci[0]:.3f}-{ci[1]:.3f})")
    for row, marker in zip((points.to_dict("records") if points is not None else []), "osD"):
        ax.plot(1 - row["specificity"], row["sensitivity"], marker, ms=8, label=row["operating point"])
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=7.5)
    fig.tight_layout()
    return fig


def reliability_figure(fits: dict[str, Calibration], title: str = "Calibration") -> Figure:
    """Reliability diagram: observed frequency of the positive class against mean predicted score per bin."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, fit in fits.items():
        filled = fit.counts > 0
        ax.plot(fit.predicted[filled], fit.observed[filled], "o-", label=f"{name}: ECE {fit.ece:.3f}, Brier {fit.brier:.3f}")
        centres = (fit.bin_edges[:-1] + fit.bin_edges[1:]) / 2
        hist.bar(centres, fit.counts, width=np.diff(fit.bin_edges) * 0.9, alpha=0.5, label=name)
    ax.set(ylabel="observed positive fraction", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7.5)
    hist.set(xlabel="predicted score", ylabel="images")
    fig.tight_layout()
    return fig


def clinical_figures(predictions: dict[str, pd.DataFrame], card: ModelCard, numbers: ClinicalNumbers) -> list[Figure]:
    """The ROC curve (with the AUROC's CI and the operating points) and the reliability diagram of the set
    :func:`clinical_numbers` evaluated (binary tasks; none for more classes)."""
    if not card.binary:
        return []
    held_out = held_out_split(predictions)
    shown, name = (held_out, "test") if held_out is not None else (predictions["val"], "validation")
    labels, scores = label_indices(shown, list(card.classes)), shown["score"].to_numpy(float)
    roc = roc_figure_with_ci({name: (labels, scores, numbers.ci)}, f"ROC on {name}", numbers.operating_points)
    return [roc, reliability_figure({name: numbers.calibration}, f"Calibration on {name}")]
