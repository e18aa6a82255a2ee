"""The review loop end to end: a run on files named like real patients (Kermany's ``person<ID>_...``, DICOM patient
tags) with a test split and sites; its artefacts and its HTML review carry no identifier; a review CSV goes back
into the next training run."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from medtl.data.demo import synthetic_chest, write_dx_dicom
from medtl.review.report import write_report
from medtl.train import train
from tests.conftest import compose_config

PATIENTS = [f"person{7390400 + i}" for i in range(40)]
MRNS = [f"MRN{7390400 + i}" for i in range(40)]  # the DICOM PatientID; PatientName is Demo^MRN...
KERMANY_PATTERNS = "data.patient_id_patterns=['^(person\\d+)_']"


def write_patient_named_set(folder: Path) -> Path:
    """40 patients, 1-2 synthetic DICOM radiographs each, named ``<CLASS>/person<ID>_<kind>_<n>.dcm``; every fifth
    patient in the ``test`` split; two sites. Returns the manifest."""
    rng, rows = np.random.default_rng(3), []
    for index, (patient, mrn) in enumerate(zip(PATIENTS, MRNS)):
        label = "PNEUMONIA" if index % 2 else "NORMAL"
        for n in range(2 if index % 4 == 0 else 1):
            path = folder / label / f"{patient}_{'bacteria' if index % 2 else 'normal'}_{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_dx_dicom(path, synthetic_chest(rng, 96, label == "PNEUMONIA"), mrn, index % 3 == 0, (1.0, 0.0))
            rows.append({"path": str(path.relative_to(folder)), "label": label, "patient_id": patient,
                         "split": "test" if index % 5 == 0 else "", "domain": "site_a" if index % 3 else "site_b"})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def run_overrides(manifest: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["+experiment=chest_xray", f"data.manifest={manifest}", "data.positive_class=PNEUMONIA", KERMANY_PATTERNS,
            "data.image_size=64", "data.batch_size=16", "data.cache_workers=1", "trainer.features.epochs=3",
            "trainer.progress=false", f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.system_metrics=false", *extra]


def identifiers_in(texts: list[str]) -> list[str]:
    tokens = [*PATIENTS, *MRNS, "Demo^"]
    return sorted({token for token in tokens for text in texts if token in text})


def run_texts(run_id: str, folder: Path) -> list[str]:
    """Everything MLflow holds for the run, as text: every artefact file, params, tags, metric names."""
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder)))
    run = mlflow.get_run(run_id)
    texts = [p.read_bytes().decode("latin-1") for p in local.rglob("*") if p.is_file()]
    return texts + [str(run.data.params), str(run.data.tags), str(sorted(run.data.metrics)), str(run.info.run_name)]


def test_review_loop_from_training_to_the_report_and_back(tmp_path: Path) -> None:
    manifest = write_patient_named_set(tmp_path / "site")
    metrics = train(compose_config(run_overrides(manifest, tmp_path)))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]

    # The test split is evaluated at the threshold validation chose, and logged with its predictions.
    assert {"test/auroc", "test/sensitivity", "test/specificity", "test/ece", "test/brier"} <= set(metrics)
    assert metrics["test/threshold"] == pytest.approx(metrics["val/final_threshold"])
    test = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test_predictions.csv"))
    assert len(test) == 10 and set(test["split"]) == {"test"} and set(test["domain"]) == {"site_a", "site_b"}
    assert test["case"].str.match(r"^(NORMAL|PNEUMONIA)/p-[0-9a-f]{16}_(normal|bacteria)_\d\.dcm$").all()

    # No artefact, param or tag names a patient, and the data's absolute path stays out of the tables.
    texts = run_texts(run.info.run_id, tmp_path / "artefacts")
    assert identifiers_in(texts) == []

    # The HTML review: galleries (with Grad-CAM), the clinical numbers on the test split, the form; no identifier.
    html = write_report(run=run.info.run_id, out=tmp_path / "review", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    page = html.read_text()
    assert page.count("data:image/png") >= 3 and "its Grad-CAM on the encoder" in page  # ROC, calibration, galleries
    assert "the test split (10 images; thresholds chosen on validation)" in page
    assert "specificity &gt;= 0.90 on validation" in page and "site_b" in page
    assert page.count('<tr data-case="') >= 8 and "Download review CSV" in page
    review_files = [p.read_text(errors="ignore") for p in (tmp_path / "review").iterdir()]
    assert identifiers_in([page, *review_files]) == []
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "review")}
    assert logged == {f"review/{html.name}", f"review/{html.with_suffix('.ipynb').name}"}

    # A reviewer corrects one label and marks one image unusable; the next run trains on that.
    template = pd.read_csv(tmp_path / "review" / f"{run.info.run_id}.csv", dtype=str, keep_default_na=False)
    flip = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    template.loc[0, ["verdict", "corrected_label"]] = ["disagree", flip[template.at[0, "run_label"]]]
    template.loc[1, ["verdict", "unusable"]] = ["unsure", "true"]
    template.loc[2, "verdict"] = "agree"
    reviews = tmp_path / "data_manifests" / "reviews" / f"{run.info.run_id}.csv"
    reviews.parent.mkdir(parents=True)
    template.to_csv(reviews, index=False)
    train(compose_config(run_overrides(manifest, tmp_path, f"data.reviews={reviews}")))
    second = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    assert second.info.run_id != run.info.run_id
    assert second.data.metrics["data/review_changed_labels"] == 1 and second.data.metrics["data/review_dropped"] == 1
    assert second.data.tags["medtl.reviews_sha256"] == hashlib.sha256(reviews.read_bytes()).hexdigest()
    images = sum(v for k, v in run.data.metrics.items() if k.startswith("data/n_images."))
    assert sum(v for k, v in second.data.metrics.items() if k.startswith("data/n_images.")) == images - 1


def test_review_form_in_a_browser_writes_a_review_csv_that_training_reads(tiny_overrides: list[str],
                                                                         tmp_path: Path) -> None:
    """The HTML report's form, clicked in headless Chromium: the downloaded CSV is a valid review file."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("MEDTL_REQUIRE_SERVICES") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    cfg = compose_config(tiny_overrides)
    train(cfg)
    html = write_report(out=tmp_path / "review", tracking_uri=str(cfg.tracking.uri), log_to_run=False)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=flags)
        page = browser.new_page()
        page.goto(html.as_uri())
        page.fill("#medtl-reviewer", "Dr Review")
        rows = page.locator("table.medtl-review tbody tr")
        rows.nth(0).locator("input[value=disagree]").check()
        rows.nth(0).locator("select.corrected").select_option("PNEUMONIA")
        rows.nth(1).locator("input.unusable").check()
        rows.nth(1).locator("input.comment").fill('lateral view, "not usable"')
        with page.expect_download() as download:
            page.click("#medtl-download")
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        browser.close()
    from medtl.data.reviews import read_reviews

    reviews = read_reviews(saved)
    assert saved.name.endswith(".csv") and len(reviews) == rows_count(html)
    assert reviews.at[0, "verdict"] == "disagree" and reviews.at[0, "corrected_label"] == "PNEUMONIA"
    assert bool(reviews.at[1, "unusable"]) and reviews.at[1, "comment"] == 'lateral view, "not usable"'
    assert set(reviews["reviewer"]) == {"Dr Review"} and not reviews["unusable"].iloc[2:].any()
    metrics = train(compose_config([*tiny_overrides, f"data.reviews={saved}"]))
    assert "val/final_auroc" in metrics


def rows_count(html: Path) -> int:
    return html.read_text().count('<tr data-case="')
