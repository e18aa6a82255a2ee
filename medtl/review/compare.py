"""Runs side by side: overlaid ROC curves, AUROC with CIs, sensitivity at fixed specificity, calibration, and the
label-efficiency and domain-shift benchmark tables when the tracking store holds those runs."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from medtl.errors import MedtlError
from medtl.review.clinical import ClinicalNumbers, clinical_numbers, held_out_split, label_indices
from medtl.review.run import ReviewRun, default_tracking_uri, find_run, load_run

__all__ = ["load_runs", "comparison_table", "roc_curves", "calibrations", "benchmark_tables"]

_NUMBERS: dict[str, ClinicalNumbers] = {}  # run id -> its clinical numbers (a finished run's tables do not change)


def load_runs(runs: list[str] | str | None = None, experiment: str | None = None, tracking_uri: str | None = None,
              max_runs: int = 6) -> list[ReviewRun]:
    """Runs to compare: the given ids; a sweep's parent id (its children); or, with none, the most recent finished
    runs (with a model) of the experiment of the latest one, at most ``max_runs``."""
    uri = tracking_uri or default_tracking_uri()
    ids = [runs] if isinstance(runs, str) else list(runs or [])
    if len(ids) == 1:
        children = _children(ids[0], uri)
        ids = children or ids
    if not ids:
        latest = find_run("latest", experiment, tracking_uri=uri)
        found = mlflow.MlflowClient().search_runs([latest.info.experiment_id], "attributes.status = 'FINISHED'",
                                                  order_by=["attributes.start_time DESC"], max_results=200)
        ids = [r.info.run_id for r in found if r.data.tags.get("medtl.model_uri")][:max_runs]
    return [load_run(run_id, tracking_uri=uri) for run_id in ids]


def comparison_table(runs: list[ReviewRun]) -> pd.DataFrame:
    """One row per run: AUROC with its 95% CI, sensitivity at 90% and 95% specificity, ECE and Brier score, on
    the data that did not choose the thresholds (see :mod:`medtl.review.clinical`)."""
    rows = []
    for run in runs:
        numbers = _numbers(run)
        row = {"run": run.run_name, "run id": run.run_id[:8], "strategy": run.card.strategy,
               "adaptation": run.card.adaptation, "AUROC": numbers.auroc,
               "95% CI": f"{numbers.ci[0]:.3f} to {numbers.ci[1]:.3f}", "evaluated on": _where(numbers)}
        if run.card.binary:
            points = numbers.operating_points.set_index("operating point")
            for name in points.index[1:]:
                row[f"sensitivity at {name.split()[2]} specificity"] = points.at[name, "sensitivity"]
            row.update({"ECE": numbers.calibration.ece, "Brier": numbers.calibration.brier})
        rows.append(row)
    return pd.DataFrame(rows)


def roc_curves(runs: list[ReviewRun]) -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float]]]:
    """``{run name: (labels, scores, AUROC CI)}`` of each binary run, for
    :func:`~medtl.review.clinical.roc_figure_with_ci`."""
    curves = {}
    for run in (r for r in runs if r.card.binary):
        shown = held_out_split(run.predictions)
        shown = shown if shown is not None else run.predictions["val"]
        curves[_unique(run, curves)] = (label_indices(shown, run.classes), shown["score"].to_numpy(float),
                                        _numbers(run).ci)
    return curves


def calibrations(runs: list[ReviewRun]) -> dict:
    """``{run name: Calibration}`` of each binary run, for :func:`~medtl.review.clinical.reliability_figure`."""
    found: dict = {}
    for run in (r for r in runs if r.card.binary):
        found[_unique(run, found)] = _numbers(run).calibration
    return found


def benchmark_tables(tracking_uri: str | None = None) -> dict[str, pd.DataFrame]:
    """Mean ± sd over seeds of the benchmark runs in the store: ``label_efficiency_<experiment>`` (validation AUROC by
    strategy and training fraction) and ``domain_shift_<experiment>`` (target AUROC by adaptation method)."""
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    tables = {}
    for experiment in mlflow.MlflowClient().search_experiments():
        if experiment.name.startswith("label_efficiency_"):
            pivot = ("params.model.strategy", "params.data.train_fraction", "metrics.val/final_auroc")
        elif experiment.name.startswith("domain_shift_"):
            pivot = ("params.adaptation.method", None, "metrics.target/auroc")
        else:
            continue
        runs = mlflow.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
        if len(runs) and pivot[2] in runs.columns:
            tables[experiment.name] = _mean_sd(runs, *pivot)
    return tables


def _mean_sd(runs: pd.DataFrame, rows: str, columns: str | None, value: str) -> pd.DataFrame:
    keys = [rows] + ([columns] if columns and columns in runs.columns else [])
    stats = runs.groupby(keys)[value].agg(["mean", "std", "count"])
    text = stats.apply(lambda r: f"{r['mean']:.3f} ± {0.0 if np.isnan(r['std']) else r['std']:.3f} (n={int(r['count'])})",
                       axis=1)
    table = text.unstack() if len(keys) == 2 else text.to_frame(value.removeprefix("metrics."))
    table.index.name = rows.removeprefix("params.")
    return table


def _children(parent: str, uri: str) -> list[str]:
    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.MlflowClient().get_run(parent)
    except mlflow.exceptions.MlflowException as exc:
        raise MedtlError(f"runs={parent} is not a run of {uri}; pass run ids or a sweep's parent run id") from exc
    found = mlflow.MlflowClient().search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return [r.info.run_id for r in found if r.data.tags.get("medtl.model_uri")]


def _numbers(run: ReviewRun) -> ClinicalNumbers:
    """:func:`clinical_numbers` of ``run``, computed once per run (its bootstrap is the slow part)."""
    if run.run_id not in _NUMBERS:
        _NUMBERS[run.run_id] = clinical_numbers(run.predictions, run.card)
    return _NUMBERS[run.run_id]


def _where(numbers: ClinicalNumbers) -> str:
    return "test" if numbers.evaluated_on.startswith("the test") else "validation (cross-fitted)"


def _unique(run: ReviewRun, taken: dict) -> str:
    return run.run_name if run.run_name not in taken else f"{run.run_name} ({run.run_id[:6]})"
