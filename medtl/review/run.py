"""Read a finished training run back for review: config, metrics, prediction tables, model card and model.

``load_run()`` with no arguments opens the most recent finished run (with a logged model) of the tracking store
that ``MLFLOW_TRACKING_URI`` names (``sqlite:///mlflow.db`` by default), so a notebook works right after training.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from omegaconf import DictConfig, OmegaConf

from medtl.errors import MedtlError
from medtl.models.card import ModelCard
from medtl.tracking import artifacts

__all__ = ["ReviewRun", "load_run", "find_run", "default_tracking_uri", "run_header"]

log = logging.getLogger(__name__)
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@dataclass
class ReviewRun:
    """One training run as the review kit sees it.

    Attributes:
        predictions: ``{"val" | "test" | "target": table}``, the run's prediction tables (``case`` names only).
        card: the logged model's :class:`~medtl.models.card.ModelCard` (classes, threshold, preprocessing).
    """

    run_id: str
    run_name: str
    experiment: str
    tracking_uri: str
    config: DictConfig
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    predictions: dict[str, pd.DataFrame]
    card: ModelCard
    model_uri: str
    _model: Any = field(default=None, repr=False)
    _images: dict[str, dict[str, str]] | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    def threshold(self, split: str = "val") -> float | None:
        """The threshold ``split``'s predictions were cut at: the target of a run adapted with AdaBN was scored with
        its own BatchNorm statistics, at the threshold validation chose under AdaBN; every other split at the card's."""
        return self.card.operating_threshold(adabn=split == "target" and self.card.adaptation == "adabn")

    def model(self) -> Any:
        """The eager :class:`~medtl.models.TransferModel` (every parameter trainable: Grad-CAM has gradients, for a
        linear probe too), rebuilt from the tensors-only state dict."""
        return self._model

    def image_paths(self, split: str = "val") -> dict[str, str]:
        """``{case: file}`` for the images of ``split``'s data set (the source for ``val``/``test``, the target site
        for ``target``) that exist on this machine: the case names are recomputed from the run's data config
        (:mod:`medtl.data.pseudonym`); empty when the data is not here."""
        if self._images is None:
            self._images = _resolve_cases(self.config)
        return self._images.get("target" if split == "target" else "source", {})


def find_run(run: str = "latest", experiment: str | None = None, metric: str = "val/best_auroc",
             tracking_uri: str | None = None) -> Run:
    """The MLflow run named by ``run``: an id, ``latest`` (the most recent finished run with a logged model) or
    ``best`` (the finished run with the highest ``metric``), optionally within ``experiment``."""
    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if run not in ("latest", "best"):
        try:
            return client.get_run(run)
        except mlflow.exceptions.MlflowException as exc:
            raise MedtlError(f"run={run} is not a run of the tracking store {uri}; pass a run id that medtl.train "
                             "printed, or run=latest / run=best") from exc
    candidates = _finished_runs_with_models(experiment, uri)
    if run == "best":
        candidates = [r for r in candidates if metric in r.data.metrics]
        if not candidates:
            raise MedtlError(f"run=best: no finished run in {uri} has the metric {metric}; choose another metric")
        return max(candidates, key=lambda r: r.data.metrics[metric])
    return candidates[0]


def load_run(run: str = "latest", experiment: str | None = None, metric: str = "val/best_auroc",
             tracking_uri: str | None = None) -> ReviewRun:
    """Read ``run`` (see :func:`find_run`) with its config, metrics, prediction tables and model card."""
    uri = tracking_uri or default_tracking_uri()
    found = find_run(run, experiment, metric, uri)
    run_id = found.info.run_id
    model_uri = found.data.tags.get("medtl.model_uri", "")
    if not model_uri:
        raise MedtlError(f"run {run_id} has no logged model (tracking.log_model=false or a sweep's parent); "
                         "review a run that logged its model")
    with tempfile.TemporaryDirectory(prefix="medtl-review-") as tmp:
        config = OmegaConf.load(_download(run_id, artifacts.CONFIG, tmp))
        predictions = {split: pd.read_csv(path, keep_default_na=False) for split in artifacts.PREDICTIONS
                       if (path := _download(run_id, artifacts.predictions_file(split), tmp, required=False))}
    from medtl.predict import load_model  # the eager model and its card (tensors-only weights, no pickle)

    model, card = load_model(model_uri, uri, eager=True)
    experiment_name = mlflow.MlflowClient().get_experiment(found.info.experiment_id).name
    return ReviewRun(run_id=run_id, run_name=found.info.run_name or run_id, experiment=experiment_name,
                     tracking_uri=uri, config=config, metrics=dict(found.data.metrics), params=dict(found.data.params),
                     tags=dict(found.data.tags), predictions=predictions, card=card, model_uri=model_uri, _model=model)


def _finished_runs_with_models(experiment: str | None, uri: str) -> list[Run]:
    client = mlflow.MlflowClient()
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise MedtlError(f"experiment={experiment} is not in the tracking store {uri}; "
                             f"choose one of {[e.name for e in client.search_experiments()]}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=500) if ids else []
    runs = [r for r in runs if r.data.tags.get("medtl.model_uri")]
    if not runs:
        raise MedtlError(f"no finished medtl run with a logged model in {uri}"
                         f"{f' (experiment {experiment})' if experiment else ''}; train one first "
                         "(make demo, or python -m medtl.train +experiment=chest_xray) or set MLFLOW_TRACKING_URI")
    return runs


def _download(run_id: str, name: str, folder: str, required: bool = True) -> str | None:
    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=folder)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        if not required:
            return None
        raise MedtlError(f"run {run_id} has no artefact {name}; was it written by medtl.train?") from exc


def _resolve_cases(config: DictConfig) -> dict[str, dict[str, str]]:
    """``{"source": {case: path}, "target": {case: path}}`` from the run's data config; empty (with a log line saying
    why) when it cannot be read here. Source and target are kept apart: the same relative name may exist in both."""
    from hydra.utils import instantiate

    try:
        data = instantiate(OmegaConf.merge(config.data, {"check": False, "reviews": None}))
        data.setup()  # as the run did (a target's labels are checked against the source's classes)
        names = data.case_names()
    except Exception as exc:  # noqa: BLE001 - the images are optional for a review: say why and go on
        log.warning("the run's images are not available here (%s); galleries show the cases without images",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return {}
    target = getattr(data, "target_frame", None)
    sets = {"source": data.all_rows["path"], "target": target["path"] if target is not None else []}
    return {name: {names.case(str(p)): str(p) for p in paths if Path(p).is_file()} for name, paths in sets.items()}


def run_header(review: ReviewRun) -> str:
    """A Markdown summary of the run for the top of a review: what was trained on what, and its warnings."""
    card = review.card
    threshold = f"{card.threshold:.3f}" if card.threshold is not None else "most probable class"
    metrics = ", ".join(f"{name} {review.metrics[key]:.3f}" for key, name in
                        (("val/final_auroc", "validation AUROC"), ("test/auroc", "test AUROC"),
                         ("target/auroc", "target AUROC")) if key in review.metrics)
    warnings = [v for k, v in sorted(review.tags.items()) if k.startswith("medtl.warning.")]
    lines = [f"**Run** {review.run_name} (`{review.run_id}`, experiment {review.experiment})",
             f"**Model** {card.architecture.encoder}, {card.strategy}"
             f"{'' if card.adaptation == 'none' else f', adapted with {card.adaptation}'}; weights {card.encoder_weights}",
             f"**Data** {review.tags.get('medtl.dataset', card.data_root)}; classes {', '.join(card.classes)}; "
             f"{_input_size(card)}; decision threshold {threshold} (chosen on validation)",
             f"**Metrics** {metrics or 'none logged'}"]
    lines += ["**Data check warnings**"] + [f"- {w}" for w in warnings] if warnings else []
    return "\n\n".join(lines)


def _input_size(card: ModelCard) -> str:
    """``224 px`` for images; ``64 x 64 x 56 voxels of 3 mm`` for volumes."""
    pipeline = card.pipeline()
    if pipeline.spatial_dims == 2:
        return f"{card.preprocessing.image_size} px"
    spacing = getattr(pipeline, "spacing", None)
    return f"{' x '.join(map(str, pipeline.input_shape))} voxels" + (f" of {spacing[0]:g} mm" if spacing else "")
