"""Clinical numbers: thresholds chosen on validation, reported where they were not chosen; benchmark tables."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from medtl.engine.metrics import threshold_for_specificity

from medtl.review.clinical import clinical_numbers, operating_points
from medtl.review.compare import benchmark_tables
from tests.review.test_cases import card


def table(rng: np.random.Generator, n: int, separation: float, split: str) -> pd.DataFrame:
    labels = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(labels * separation + rng.normal(0, 1, n) - separation / 2)))
    return pd.DataFrame({"case": [f"{split}/{i}.dcm" for i in range(n)], "patient": [f"p-{split}{i}" for i in range(n)],
                         "label": np.where(labels == 1, "P", "N"), "score": scores, "split": split,
                         "domain": np.where(np.arange(n) % 2, "site_a", "site_b")})


def test_test_split_is_scored_at_thresholds_chosen_on_validation() -> None:
    rng = np.random.default_rng(0)
    val, test = table(rng, 400, 2.0, "val"), table(rng, 400, 2.0, "test")
    model = card(("N", "P"), 0.5)
    points = operating_points(val, test, model, "youden").set_index("operating point")
    assert points.at["validation threshold (youden)", "threshold"] == "0.500"
    for spec in ("0.90", "0.95"):
        row = points.loc[f"specificity >= {spec} on validation"]
        exact = threshold_for_specificity((val["label"] == "P").to_numpy(int), val["score"].to_numpy(), float(spec))
        assert float(row["threshold"]) == pytest.approx(exact, abs=5e-4)
        assert (val.loc[val["label"] == "N", "score"] < exact).mean() >= float(spec)  # reached where it was chosen
        assert abs(row["specificity"] - float(spec)) < 0.06  # and close to it on another set of the same site
    numbers = clinical_numbers({"val": val, "test": test}, model)
    assert numbers.evaluated_on.startswith("the test split (400 images")
    assert numbers.ci[0] < numbers.auroc < numbers.ci[1] and 0 < numbers.calibration.ece < 0.5
    assert set(numbers.subgroups["domain"]) == {"site_a", "site_b"} and numbers.subgroups["images"].sum() == 400


def test_without_a_test_split_thresholds_are_cross_fitted_over_patients() -> None:
    rng = np.random.default_rng(1)
    val = table(rng, 300, 1.5, "val")
    numbers = clinical_numbers({"val": val}, card(("N", "P"), 0.37))
    assert numbers.evaluated_on.startswith("validation (300 images; no test split")
    thresholds = numbers.operating_points["threshold"]
    assert all(" / " in t for t in thresholds)  # one threshold per half, each chosen on the other half
    assert numbers.operating_points["images"].eq(300).all()


def test_benchmark_tables_summarise_label_efficiency_and_domain_shift_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    for experiment, params, metric in (("label_efficiency_chest_xray", {"model.strategy": "finetune",
                                                                        "data.train_fraction": "0.05"}, "val/final_auroc"),
                                       ("domain_shift_chest_xray", {"adaptation.method": "mmd"}, "target/auroc")):
        mlflow.set_experiment(experiment)
        for value in (0.8, 0.9):
            with mlflow.start_run():
                mlflow.log_params(params)
                mlflow.log_metric(metric, value)
    tables = benchmark_tables(uri)
    assert tables["label_efficiency_chest_xray"].at["finetune", "0.05"] == "0.850 ± 0.071 (n=2)"
    assert tables["domain_shift_chest_xray"].iloc[0, 0] == "0.850 ± 0.071 (n=2)"
