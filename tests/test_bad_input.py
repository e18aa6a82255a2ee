"""Bad input stops with one line naming the file or key and the fix; no traceback, no run left behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from medtl.data.pseudonym import pseudonym, pseudonym_key

from medtl.errors import MedtlError
from medtl.train import train
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]


def run_train(overrides: list[str]) -> None:
    train(compose_config(["+experiment=chest_xray", "data.image_size=32", "trainer.max_epochs=1",
                          "trainer.progress=false", *overrides]))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match=f"data root {tmp_path / 'nope'} is not a folder"):
        run_train([f"data.root={tmp_path / 'nope'}"])


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(MedtlError, match="holds no images"):
        run_train([f"data.root={tmp_path}"])


def test_single_class(tmp_path: Path, write_png) -> None:
    for i in range(10):
        write_png(tmp_path / "NORMAL" / f"img{i}.png", seed=i)
    with pytest.raises(MedtlError, match=r"data.positive_class='PNEUMONIA' is not among the labels \['NORMAL'\]"):
        run_train([f"data.root={tmp_path}"])


def test_manifest_without_required_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,X\n")
    with pytest.raises(MedtlError, match="has no column 'patient_id'"):
        run_train([f"data.manifest={manifest}"])


def test_unreadable_image_is_named_and_no_run_is_left(tmp_path: Path, write_png) -> None:
    for label in ("NORMAL", "PNEUMONIA"):
        for i in range(6):
            write_png(tmp_path / "data" / label / f"{label}{i}.png", seed=i)
    bad = tmp_path / "data" / "NORMAL" / "NORMAL3.png"
    bad.write_bytes(b"\x89PNG broken")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(MedtlError, match=r"cannot read image .*NORMAL3\.png"):
        run_train([f"data.root={tmp_path / 'data'}", "data.val_fraction=0.34", f"tracking.uri={uri}"])
    mlflow.set_tracking_uri(uri)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "medtl.train", "+experiment=chest_xray", f"data.root={tmp_path / 'missing'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"medtl: error: data root {tmp_path / 'missing'} is not a folder; "
                     "set data.root to a class-per-folder tree"]
    assert "Traceback" not in result.stdout + result.stderr


def test_crash_after_start_marks_run_failed(tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from medtl.engine import loop

    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash mid-training")

    monkeypatch.setattr(loop.Trainer, "_train_epoch", explode)
    cfg = compose_config(tiny_overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_on_error_skip_trains_without_the_file_and_lists_it(tmp_path: Path, write_png) -> None:
    for label in ("NORMAL", "PNEUMONIA"):
        for i in range(8):
            write_png(tmp_path / "data" / label / f"{label}{i}.png", seed=i + (100 if label == "NORMAL" else 0))
    bad = tmp_path / "data" / "NORMAL" / "NORMAL3.png"
    bad.write_bytes(b"\x89PNG broken")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_train([f"data.root={tmp_path / 'data'}", "data.val_fraction=0.34", "data.on_error=skip",
               f"tracking.uri={uri}", "tracking.log_model=false"])
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["data/skipped_files"] == 1
    assert run.data.metrics["data_check/unreadable"] == 1
    skipped = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/skipped_files.csv")
    # listed by its case: the file's stem is its patient id here (no patient_id_patterns), so it is pseudonymised
    assert f"NORMAL/{pseudonym(pseudonym_key(), 'NORMAL3')}.png,unreadable" in skipped and "NORMAL3" not in skipped
    assert sum(int(v) for k, v in run.data.metrics.items() if k.startswith("data/n_images.")) == 15
