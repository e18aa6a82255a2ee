"""``python -m medtl.review run=<id> out=<dir>``: execute the review notebook for a run (papermill) and write it as a
self-contained HTML report (nbconvert: images embedded, code hidden) that opens in any browser; log it to the run.

The notebooks need the ``notebooks`` extra (``pip install 'medtl[notebooks]'``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from medtl.atomic import write_text_atomic
from medtl.errors import MedtlError
from medtl.tracking import artifacts

__all__ = ["NOTEBOOKS", "write_report"]

log = logging.getLogger("medtl.review")
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def write_report(run: str = "latest", out: str | Path = "review", tracking_uri: str | None = None,
                 experiment: str | None = None, metric: str = "val/best_auroc", cases_per_group: int = 8,
                 log_to_run: bool = True, timeout_s: int = 1800) -> Path:
    """Execute ``review_cases.ipynb`` for ``run`` and write ``<out>/review_<run id>.html`` (returned), the executed
    notebook beside it and a blank review CSV ``<out>/<run id>.csv``; with ``log_to_run`` log both under ``review/``."""
    papermill, exporter = _notebook_tools()
    from medtl.review.run import default_tracking_uri, find_run

    uri = tracking_uri or default_tracking_uri()
    run_id = find_run(run, experiment, metric, uri).info.run_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    html_path, notebook_path = out / f"review_{run_id}.html", out / f"review_{run_id}.ipynb"
    with tempfile.TemporaryDirectory(prefix="medtl-review-") as tmp:
        executed = Path(tmp) / notebook_path.name
        parameters = {"run": run_id, "tracking_uri": uri, "cases_per_group": int(cases_per_group),
                      "review_csv": str((out / f"{run_id}.csv").resolve())}
        try:
            papermill.execute_notebook(str(NOTEBOOKS / "review_cases.ipynb"), str(executed), parameters=parameters,
                                       kernel_name="python3", cwd=os.getcwd(), progress_bar=False,
                                       execution_timeout=int(timeout_s))
        except papermill.PapermillExecutionError as exc:
            raise MedtlError(f"the review notebook failed for run {run_id}: {exc.ename}: {exc.evalue}; "
                             f"the partly executed notebook is not kept (rerun it in Jupyter to see the cell)") from exc
        body, _ = exporter.from_filename(str(executed))
        write_text_atomic(html_path, body)
        write_text_atomic(notebook_path, executed.read_text())
    if log_to_run:
        _log_to_run(run_id, uri, [html_path, notebook_path])
    return html_path


def _notebook_tools():  # type: ignore[no-untyped-def]
    """papermill and an HTML exporter that hides code, or one line naming the extra to install."""
    try:
        import papermill
        from nbconvert import HTMLExporter
    except ImportError as exc:
        raise MedtlError(f"the review report needs papermill and nbconvert ({exc.name} is missing): "
                         "pip install 'medtl[notebooks]'") from exc
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    return papermill, exporter


def _log_to_run(run_id: str, uri: str, files: list[Path]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifacts.REVIEW)
    log.info("logged the review to run %s under %s/", run_id, artifacts.REVIEW)
