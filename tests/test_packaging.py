"""A built wheel, installed into a fresh environment, finds its configs and runs the demo (no checkout needed)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import mlflow
import pytest

from tests.conftest import SMALL_DEMO

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv holding only the medtl wheel; torch and the other dependencies come from this environment."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO / "medtl", source / "medtl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, timeout=300)
    wheel = next((work / "dist").glob("medtl-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., no re-download
    return venv


def test_wheel_ships_configs_and_console_scripts(wheel_env: Path, tmp_path: Path) -> None:
    python = wheel_env / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import medtl; print(medtl.__file__, medtl.CONFIG_DIR.is_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120, check=True).stdout.split()
    assert Path(where[0]).is_relative_to(wheel_env) and where[1] == "True"
    for script in ("medtl-train", "medtl-predict", "medtl-check", "medtl-review"):
        assert (wheel_env / "bin" / script).is_file()
    shipped = subprocess.run([str(python), "-c", "from medtl import CONFIG_DIR; from medtl.review.report import NOTEBOOKS; "
                              "print(sorted(p.name for p in NOTEBOOKS.glob('*.ipynb')), "
                              "(CONFIG_DIR / 'review' / 'review.yaml').is_file())"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120, check=True).stdout
    assert shipped.strip() == "['compare_runs.ipynb', 'review_cases.ipynb'] True"  # python -m medtl.review works


def test_wheel_runs_the_demo_and_predicts(wheel_env: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [str(wheel_env / "bin" / "medtl-train"), "+experiment=chest_xray", f"data.demo_dir={tmp_path / 'demo'}",
         f"data.demo.n_patients={SMALL_DEMO.n_patients}", f"data.demo.image_size={SMALL_DEMO.image_size}",
         "data.image_size=48", "trainer.max_epochs=1", "trainer.features.epochs=3", "trainer.progress=false",
         f"tracking.uri={uri}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.metrics["val/final_auroc"] > 0.5
    images = next((tmp_path / "demo").glob("*/*.csv"))  # the demo manifest: predict reads CSVs too
    predicted = subprocess.run(
        [str(wheel_env / "bin" / "medtl-predict"), f"model={run.data.tags['medtl.model_uri']}", f"input={images}",
         f"output={tmp_path / 'preds.csv'}", f"tracking_uri={uri}", "progress=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert (tmp_path / "preds.csv").read_text().count("\n") > 10
