"""The notebooks run top to bottom (papermill) against runs trained on demo data, with no parameters, as
``jupyter nbconvert --execute`` would right after a training; they are committed without outputs."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from medtl.review.report import NOTEBOOKS
from medtl.train import train
from tests.conftest import compose_config

REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["review_cases.ipynb", "compare_runs.ipynb"])
def test_notebooks_are_committed_without_outputs_and_linked_from_notebooks(name: str) -> None:
    notebook = json.loads((NOTEBOOKS / name).read_text())
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in notebook["cells"]
               if cell["cell_type"] == "code")
    assert (REPO_NOTEBOOKS / name).resolve() == (NOTEBOOKS / name).resolve()
    assert any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in notebook["cells"])


def test_both_notebooks_run_after_training_with_no_parameters(tiny_overrides: list[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for strategy in ("linear_probe", "scratch"):
        train(compose_config([*tiny_overrides, f"model.strategy={strategy}", "trainer.max_epochs=1"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    outputs = {}
    for name in ("review_cases.ipynb", "compare_runs.ipynb"):
        executed = tmp_path / f"executed_{name}"
        papermill.execute_notebook(str(NOTEBOOKS / name), str(executed), kernel_name="python3", cwd=str(tmp_path),
                                   progress_bar=False)
        outputs[name] = nbformat.read(executed, as_version=4)
    review_text = _text(outputs["review_cases.ipynb"])
    assert "chest_xray-scratch" in review_text  # no parameters: the most recent finished run
    assert _images(outputs["review_cases.ipynb"]) >= 3
    compare_text = _text(outputs["compare_runs.ipynb"])
    assert "chest_xray-linear_probe" in compare_text and "chest_xray-scratch" in compare_text
    assert "sensitivity at 0.90 specificity" in compare_text and _images(outputs["compare_runs.ipynb"]) == 2
    assert "No label-efficiency or domain-shift benchmark runs" in compare_text


def _text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(str(output.get("data", {}).get("text/html", "")) + str(output.get("data", {}).get("text/plain", ""))
                     + str(output.get("data", {}).get("text/markdown", "")) + str(output.get("text", ""))
                     for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))
