"""One parent MLflow run per ``python -m medtl.train -m ...`` sweep, each job's run its child.

Hydra calls :class:`MlflowSweepCallback` (``hydra.callbacks`` in ``conf/config.yaml``) before the first job and
after the last. The parent's id reaches the jobs through ``MEDTL_PARENT_RUN_ID`` (the basic launcher runs them in
this process; cluster launchers pass the environment on); :class:`~medtl.tracking.MlflowTracker` tags each
job's run with it, so the runs table folds a sweep into one row. At the end the parent holds the sweep's summary
(``sweep_summary.csv``: each child's swept values, status and final metrics) and its best ``final_val_auroc``.
MLflow is imported only when a sweep starts, so single runs stay quick to start.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["MlflowSweepCallback", "PARENT_RUN_ENV"]

log = logging.getLogger(__name__)
PARENT_RUN_ENV = "MEDTL_PARENT_RUN_ID"
SUMMARY_METRICS = ("final_val_auroc", "final_val_accuracy", "best_epoch", "target_auroc", "fit_seconds")


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run, and closes it with the summary table."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from medtl.tracking.mlflow_tracker import open_store

        open_store(str(config.tracking.uri))
        experiment = mlflow.set_experiment(str(config.tracking.experiment))
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []  # HydraConfig is not set yet
        swept = [o for o in overrides if "," in o or "(" in o]
        run = mlflow.MlflowClient().create_run(
            experiment.experiment_id, run_name=f"{config.experiment_name}-sweep",
            tags={"medtl.sweep": "parent", "medtl.sweep_overrides": " ".join(swept)[:500],
                  "mlflow.note.content": f"Sweep over {' '.join(swept) or 'the sweeper search space'}"})
        os.environ[PARENT_RUN_ENV] = run.info.run_id
        self.swept_keys = [o.split("=", 1)[0].lstrip("+~") for o in swept]
        log.info("sweep parent run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        parent = os.environ.pop(PARENT_RUN_ENV, None)
        if parent is None:
            return
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(parent).info.experiment_id
        children = mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                      output_format="list")
        table = summary_table(children, getattr(self, "swept_keys", []))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sweep_summary.csv"
            table.to_csv(path, index=False)
            client.log_artifact(parent, str(path))
        if "final_val_auroc" in table and table["final_val_auroc"].notna().any():
            client.log_metric(parent, "best_final_val_auroc", float(table["final_val_auroc"].max()))
        failed = any(c.info.status != "FINISHED" for c in children) or not children
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")


def summary_table(children: list, swept_keys: list[str]) -> Any:
    """One row per child run: its name, status, the swept params' values and the summary metrics."""
    import pandas as pd

    rows = []
    for child in sorted(children, key=lambda c: c.info.start_time):
        row = {"run_id": child.info.run_id, "run_name": child.info.run_name, "status": child.info.status}
        row.update({key: child.data.params.get(key, "") for key in swept_keys})
        row.update({m: child.data.metrics.get(m) for m in SUMMARY_METRICS if m in child.data.metrics})
        rows.append(row)
    return pd.DataFrame(rows)
