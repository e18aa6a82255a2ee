"""medtl.predict on hostile folders: each file is predicted, or listed with its reason; an unreadable one
stops the run with one line and no half-written CSV."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides
from tests.hostile.corpus import CASES, build_corpus

TIMEOUT = 300


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("predict_model")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    train(compose_config(["+experiment=chest_xray", *small_demo_overrides(demo_cache), "data.image_size=32",
                          "data.check=false", "trainer.features.epochs=2", "trainer.progress=false",
                          f"tracking.uri={uri}", f"trainer.checkpoint_dir={tmp / 'ck'}"]))
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    return run.data.tags["medtl.model_uri"], uri


def _predict(model: tuple[str, str], folder: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtl.predict", f"model={model[0]}", f"input={folder}",
                           f"output={output}", f"tracking_uri={model[1]}", "progress=false"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=output.parent)


def test_every_input_is_predicted_or_listed(model_uri, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    build_corpus(folder, tmp_path / "outside")
    for case in CASES:  # keep the readable images and everything the listing skips or refuses
        if case.read not in ("ok", "-"):
            (folder / case.name).unlink()
    (folder / "series").mkdir()
    result = _predict(model_uri, folder, tmp_path / "preds.csv")
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = pd.read_csv(tmp_path / "preds.csv")
    listed = pd.read_csv(tmp_path / "preds_skipped.csv")
    entries = len(os.listdir(folder))
    # predict reads links that leave its input folder (the input is the user's choice; training refuses them)
    assert len(predicted) == sum(c.read == "ok" for c in CASES) + 1
    assert predicted["path"].str.endswith("escapes.png").sum() == 1
    assert len(predicted) + len(listed) == entries  # no silent drop
    assert set(listed["status"]) == {"skipped", "refused"} and listed["reason"].str.len().gt(0).all()
    assert f"inputs: {entries} file(s) found: {len(predicted)} used" in result.stdout


def test_an_unreadable_input_stops_with_one_line_and_no_csv(model_uri, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    build_corpus(folder, tmp_path / "outside")
    result = _predict(model_uri, folder, tmp_path / "preds.csv")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("medtl: error:")]
    assert len(errors) == 1 and str(folder) in errors[0]
    assert not (tmp_path / "preds.csv").exists()
