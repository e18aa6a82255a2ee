"""Train a transfer-learning classifier: ``python -m medtl.train +experiment=chest_xray [overrides]``.

This module only wires the pieces that the config names (``_target_`` + ``instantiate``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig

from medtl import CONFIG_MODULE
from medtl.adaptation import AdaptationMethod
from medtl.data import ImageClassificationData
from medtl.data.domains import run_loaders
from medtl.engine import Trainer
from medtl.engine.domain import DomainReport, evaluate_target
from medtl.engine.evaluation import EvaluationReport, Evaluator
from medtl.errors import exit_on_user_error
from medtl.models import TransferModel
from medtl.tracking import MlflowTracker

__all__ = ["train", "main"]

log = logging.getLogger("medtl.train")


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed -> data -> model -> adaptation -> tracking -> fit -> evaluate (source, then target) -> log;
    return the final source-validation metrics (plus ``target_*`` ones with a target domain)."""
    set_determinism(seed=cfg.seed)
    data: ImageClassificationData = instantiate(cfg.data)
    data.setup()
    check = data.run_checks()
    model: TransferModel = instantiate(cfg.model, num_classes=len(data.classes))
    adaptation: AdaptationMethod = instantiate(cfg.adaptation, num_features=model.encoder.num_features)
    trainer: Trainer = instantiate(cfg.trainer, checkpoint_path=_checkpoint_path())
    loaders = run_loaders(data, model.encoder.weights_info, not trainer.trains_on_features(model, adaptation),
                          adaptation.method_name, adaptation.needs_target, adaptation.trains_on_target_labels)
    evaluator: Evaluator = instantiate(cfg.evaluation, classes=data.classes)

    with instantiate(cfg.tracking) as tracker:
        tracker.log_config(cfg)
        tracker.log_params({**data.summary(), "weights_source": model.encoder.weights_info.source})
        tracker.log_data_check(check, data.skipped)
        fit = trainer.fit(model, loaders.train, loaders.val, score=evaluator.metrics, on_epoch_end=tracker.log_metrics,
                          adaptation=adaptation, target_loader=loaders.target_train)
        report = evaluator.report(trainer.predict(model, loaders.source_val, desc="final validation", tta=evaluator.tta))
        _log_report(tracker, report, fit.best_epoch, fit.seconds)
        metrics = dict(report.metrics)
        if loaders.target_eval is not None:
            domain = evaluate_target(model, adaptation, loaders, data.classes, report.threshold, trainer.device,
                                     trainer.progress, cfg.seed)
            _log_domain_report(tracker, domain)
            metrics.update(domain.metrics)
        model_uri = tracker.log_model(model, _input_example(model, data), _model_metadata(cfg, model, data, report))
    _print_summary(metrics, tracker.run_id, model_uri)
    return metrics


def _log_report(tracker: MlflowTracker, report: EvaluationReport, best_epoch: int, seconds: float) -> None:
    tracker.log_metrics({f"final_val_{k}": v for k, v in report.metrics.items()})
    tracker.log_metrics({"best_epoch": best_epoch, "fit_seconds": seconds})
    tracker.log_frame(report.predictions, "val_predictions.csv")
    for name, figure in report.figures.items():
        tracker.log_figure(figure, name)


def _log_domain_report(tracker: MlflowTracker, domain: DomainReport) -> None:
    tracker.log_metrics(domain.metrics)
    tracker.log_frame(domain.predictions, "target_predictions.csv")
    for name, figure in domain.figures.items():
        tracker.log_figure(figure, name)


def _input_example(model: TransferModel, data: ImageClassificationData) -> np.ndarray:
    """A ``(2, C, S, S)`` float32 batch: the exported model's input signature."""
    channels = model.encoder.weights_info.in_channels
    return np.zeros((2, channels, data.image_size, data.image_size), dtype=np.float32)


def _model_metadata(cfg: DictConfig, model: TransferModel, data: ImageClassificationData,
                    report: EvaluationReport) -> dict:
    """What ``medtl.predict`` needs to preprocess inputs, read outputs and (AdaBN) rebuild the eager model,
    stored in the MLmodel file."""
    weights = model.encoder.weights_info
    return {
        "medtl_version": 1,
        "classes": data.classes,
        "threshold": report.threshold,
        "image_size": data.image_size,
        "in_channels": weights.in_channels,
        "mean": list(weights.mean),
        "std": list(weights.std),
        "intensity": {"lower_percentile": data.intensity.lower_percentile,
                      "upper_percentile": data.intensity.upper_percentile},
        "dicom": {"voi": data.dicom.voi, "frames": data.dicom.frames},
        "encoder_weights": weights.source,
        "strategy": model.strategy.name,
        "adaptation": cfg.adaptation.method,
        "architecture": {"encoder": cfg.model.encoder, "num_classes": len(data.classes),
                         "in_channels": cfg.model.in_channels, "grey_input": cfg.model.grey_input,
                         "image_size": data.image_size},
    }


def _checkpoint_path() -> str | None:
    """``best.pt`` in the Hydra job's output folder; none through the compose API (the model is in MLflow)."""
    if HydraConfig.initialized():
        return str(Path(HydraConfig.get().runtime.output_dir) / "best.pt")
    return None


def _print_summary(metrics: dict[str, float], run_id: str | None, model_uri: str | None) -> None:
    source = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.startswith(("target_", "proxy_", "unadapted_", "adapt_")))
    print(f"\nvalidation: {source}")
    target = {k: v for k, v in metrics.items() if k.startswith(("target_", "proxy_", "unadapted_", "adapt_"))}
    if target:
        print("target: " + ", ".join(f"{k}={v:.4f}" for k, v in target.items()))
    print(f"MLflow run id: {run_id}")
    if model_uri:
        print(f"model: {model_uri}  (python -m medtl.predict model={model_uri} input=<folder> output=preds.csv)")


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns validation AUROC so ``-m`` sweepers can optimise it."""
    return train(cfg)["auroc"]


if __name__ == "__main__":
    main()
