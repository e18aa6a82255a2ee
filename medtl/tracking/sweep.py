"""One parent MLflow run per ``python -m medtl.train -m ...`` sweep, each job's run its child.

Hydra calls :class:`MlflowSweepCallback` (``hydra.callbacks`` in ``conf/config.yaml``) before the first job and
after the last. The parent's id reaches the jobs through ``MEDTL_PARENT_RUN_ID`` (the basic launcher runs them in
this process; cluster launchers pass the environment on); :class:`~medtl.tracking.MlflowTracker` tags each
job's run with it, so the runs table folds a sweep into one row. At the end the parent holds the sweep's summary
(``sweep_summary.csv``: each child's swept values, status and final metrics) and the best ``val/best_auroc`` (and
``target/auroc``) of its children, in the same columns as theirs.
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
SUMMARY_METRICS = ("val/best_auroc", "val/final_auroc", "val/final_accuracy", "val/best_epoch", "target/auroc",
                   "train/epochs", "train/seconds")
BEST_OF_CHILDREN = ("val/best_auroc", "target/auroc")  # the parent row shows the sweep's best under the same column
GROUP_PARAMS = {"adaptation": "adaptation.method", "model": "model.encoder"}  # a config group's choice, as a param


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run, and closes it with the summary table."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from medtl.tracking.mlflow_tracker import get_or_create_experiment, open_store

        open_store(str(config.tracking.uri))
        experiment_id = get_or_create_experiment(str(config.tracking.experiment))
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []  # HydraConfig is not set yet
        swept = [o for o in overrides if "," in o or "(" in o]
        searched = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}  # Optuna's search space
        swept += [f"{key}={value}" for key, value in searched.items() if f"{key}=" not in " ".join(swept)]
        run = mlflow.MlflowClient().create_run(
            experiment_id, run_name=f"{config.experiment_name}-sweep",
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
        for metric in BEST_OF_CHILDREN:
            if metric in table and table[metric].notna().any():
                client.log_metric(parent, metric, float(table[metric].max()))
        failed = any(c.info.status != "FINISHED" for c in children) or not children
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")


def summary_table(children: list, swept_keys: list[str]) -> Any:
    """One row per child run: its name, status, the swept params' values and the summary metrics."""
    import pandas as pd

    rows = []
    for child in sorted(children, key=lambda c: c.info.start_time):
        row = {"run_id": child.info.run_id, "run_name": child.info.run_name, "status": child.info.status}
        params = child.data.params
        row.update({key: params.get(key, params.get(GROUP_PARAMS.get(key, ""), "")) for key in swept_keys})
        row.update({m: child.data.metrics.get(m) for m in SUMMARY_METRICS if m in child.data.metrics})
        rows.append(row)
    return pd.DataFrame(rows)
