"""The training pipeline behind ``python -m medtl.train``: it only wires the pieces that the config names
(``_target_`` + ``instantiate``). ``medtl.train`` checks the config first and imports this afterwards.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf

import medtl
from medtl.adaptation import AdaptationMethod, list_adaptations
from medtl.adaptation.adabn import recompute_batchnorm_statistics, source_statistics_batchnorms
from medtl.data import ImageClassificationData
from medtl.data.domains import run_loaders
from medtl.data.external import ExternalSet, read_external_sets
from medtl.data.shortcuts import feature_collection_probe
from medtl.engine import Trainer
from medtl.engine.domain import DomainReport, evaluate_target
from medtl.engine.evaluation import EvaluationReport, Evaluator
from medtl.engine.state import RunFolder, TrainingState, find_run_folder, prune_finished_runs
from medtl.errors import MedtlError
from medtl.models import TransferModel, list_encoders
from medtl.models.card import Architecture, ModelCard, Preprocessing
from medtl.objectives import SourceObjective, bind_objective, shortcut_plan
from medtl.engine.loop import FitResult, Predictions, TTAViews
from medtl.engine.metrics import bootstrap_ci
from medtl.tracking import MlflowTracker
from medtl.tracking.mlflow_tracker import check_server
from medtl.tracking.artifacts import predictions_file
from medtl.tracking.replica import ReplicaTracker
from medtl.tracking.run_info import model_card as model_card_text, run_description, run_inputs, run_tags

__all__ = ["run_training", "resume_point", "final_validation", "model_card"]

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from medtl.data.check import CheckReport

log = logging.getLogger("medtl.train")


def run_training(cfg: DictConfig) -> dict[str, float]:
    """Seed -> data -> model -> adaptation -> tracking -> fit -> evaluate (source validation, the source's test
    split, the target) -> log; return the run's summary metrics under their MLflow names (``val/final_auroc``,
    ``val/best_auroc``, ``train/epochs``..., ``test/*`` with a test split, ``target/*`` with a target domain).
    With ``trainer.resume`` the run continues from its folder's ``last.pt``, in its own MLflow run."""
    cfg, folder, resumed = resume_point(cfg)
    _check_names(cfg)
    trainer: Trainer = instantiate(cfg.trainer)  # joins torchrun's process group under trainer=ddp
    runtime = trainer.runtime
    tracker = _tracker(cfg, runtime.is_main, folder)
    set_determinism(seed=cfg.seed)
    data: ImageClassificationData = instantiate(cfg.data)
    data.setup()
    check = data.run_checks(runtime.on_main(data.inspect))  # read once, by rank 0
    model: TransferModel = instantiate(cfg.model, num_classes=len(data.classes),
                                       input_shape=list(data.pipeline.input_shape))
    adaptation: AdaptationMethod = instantiate(cfg.adaptation, num_features=model.encoder.num_features)
    objective: SourceObjective = instantiate(cfg.objective, num_features=model.encoder.num_features)
    bind_objective(objective, data.frame, len(data.classes))
    _say_shortcut_plan(check, objective, cfg, runtime.is_main)
    loaders = run_loaders(data, model.encoder.weights_info, not trainer.trains_on_features(model, adaptation),
                          adaptation.method_name, adaptation.needs_target, adaptation.trains_on_target_labels)
    evaluator: Evaluator = instantiate(cfg.evaluation, classes=data.classes)
    external = read_external_sets(evaluator.external, data)  # read before training: a bad set stops the run now

    with tracker:
        trainer.run_folder = _open_run_folder(cfg, tracker, folder) if runtime.is_main else None
        if resumed is None:
            tracker.log_config(cfg, trains_on_features=trainer.trains_on_features(model, adaptation))
            tracker.log_metrics({f"data/{k}": v for k, v in data.summary().items()})
            tracker.log_metrics({f"data/{k}": v for ext in external for k, v in ext.summary().items()})
            tracker.describe({**run_tags(cfg), "medtl.weights_source": model.encoder.weights_info.source},
                             run_description(cfg, data.summary()))
            tracker.log_datasets(run_inputs(cfg, data))
            tracker.log_data_check(check, data.skipped, data.case_names())
            _log_reviews(tracker, data)
        else:
            tracker.log_missing_epochs(resumed.history)
        fit = trainer.fit(model, loaders.train, loaders.val, score=evaluator.metrics, on_epoch_end=tracker.log_metrics,
                          adaptation=adaptation, target_loader=loaders.target_train, resume=resumed, objective=objective)
        tta = data.pipeline.tta_views if evaluator.tta else None
        collection_of = _validation_collections(data)
        final = trainer.predict(model, loaders.source_val, desc="final validation", tta=tta,
                                features=collection_of is not None)
        report = evaluator.report(final)
        metrics = _log_report(tracker, report, fit, data)
        metrics.update(_collection_probe(tracker, final, collection_of))
        metrics.update(_adabn_validation(tracker, trainer, evaluator, model, loaders.source_val, tta))
        adabn_threshold = metrics.get("val/adabn_threshold")  # AdaBN's scores are thresholded as AdaBN validated
        if loaders.source_test is not None:  # scored at the threshold validation chose
            test = trainer.predict(model, loaders.source_test, desc="test", tta=tta)
            metrics.update(_log_held_out(tracker, evaluator.report(test, report.threshold, "test"), data))
        for site in external:  # other sites' labelled sets, at the same threshold
            metrics.update(_evaluate_external(tracker, trainer, evaluator, model, data, site,
                                              report.threshold, adabn_threshold))
        if loaders.target_eval is not None:
            domain = evaluate_target(model, adaptation, loaders, data.classes, report.threshold, trainer.device,
                                     trainer.progress, cfg.seed, adapted_threshold=adabn_threshold)
            _log_domain_report(tracker, domain, data)
            metrics.update(domain.metrics)
        example = data.pipeline.input_example(model.encoder.weights_info.in_channels)
        model_uri = tracker.log_model(model, example, model_card(cfg, model, data, report, adabn_threshold).to_dict())
        registered = tracker.register(model_uri, _card(cfg, data, report, final, check))
        if trainer.run_folder is not None:
            trainer.run_folder.finish()
    if runtime.is_main:
        prune_finished_runs(trainer.run_folder.path.parent, cfg.trainer.keep_checkpoints)
        _print_summary(metrics, tracker.run_id, registered or model_uri)
    runtime.close()
    return metrics


def _validation_collections(data: ImageClassificationData) -> dict[str, str] | None:
    """Validation path -> its collection (the data check's frame column), or ``None`` with fewer than two."""
    val = data.frame.query("split == 'val'")
    if "collection" not in val.columns or val["collection"].nunique() < 2:
        return None
    return dict(zip(val["path"], val["collection"].astype(str)))


def _collection_probe(tracker: MlflowTracker, final: Predictions,
                      collection_of: dict[str, str] | None) -> dict[str, float]:
    """``val/collection_probe_auroc``: how well the trained encoder's features (``final.features``, from the final
    validation pass) tell a validation image's collection (``collection_of``: path -> collection) within its class
    (:func:`medtl.data.shortcuts.feature_collection_probe`); nothing with fewer than two collections."""
    if collection_of is None or final.features is None:
        return {}
    probe = feature_collection_probe(final.features, final.labels, [collection_of.get(p, "") for p in final.paths])
    metrics = {} if probe is None else {"val/collection_probe_auroc": probe}
    tracker.log_metrics(metrics)
    return metrics


def _say_shortcut_plan(check: CheckReport | None, objective: SourceObjective, cfg: DictConfig, is_main: bool) -> None:
    """Log what this run does about a shortcut the data check found (or that it does nothing, and what would)."""
    settings = {"data.intensity.equalize": OmegaConf.select(cfg, "data.intensity.equalize"),
                "data.pipeline.crop.foreground": OmegaConf.select(cfg, "data.pipeline.crop.foreground"),
                "data.augment.counterfactual_histogram": OmegaConf.select(cfg, "data.augment.counterfactual_histogram"),
                "data.sampling": "balanced" if OmegaConf.select(cfg, "data.sampling") == "balanced" else None}
    plan = shortcut_plan(check, objective, [f"{k}={v}".lower() for k, v in settings.items() if v],
                         OmegaConf.select(cfg, "shortcut_decision"))
    if plan and is_main:
        log.warning(plan)


def _tracker(cfg: DictConfig, is_main: bool, folder: RunFolder | None) -> MlflowTracker | ReplicaTracker:
    """Rank 0's MLflow run (its server checked now, before any data is read); the other ranks track nothing."""
    if not is_main:
        return ReplicaTracker(str(cfg.tracking.uri))
    tracker: MlflowTracker = instantiate(cfg.tracking, resume_run_id=folder.info()["run_id"] if folder else None)
    check_server(tracker.uri)
    return tracker


def final_validation(metrics: dict[str, float]) -> dict[str, float]:
    """The final validation metrics of :func:`run_training`'s result without their prefix: ``{"auroc": ...}``."""
    return {k.removeprefix("val/final_"): v for k, v in metrics.items() if k.startswith("val/final_")}


def _card(cfg: DictConfig, data: ImageClassificationData, report: EvaluationReport, final: Predictions,
          check: CheckReport | None) -> str:
    """The registered model's card: the run's description, validation metrics with a bootstrap CI, warnings."""
    scores = final.probs[:, 1] if final.probs.shape[1] == 2 else final.probs
    ci = bootstrap_ci(final.labels, scores, seed=cfg.seed)
    warnings = data.case_names().scrub_all(check.warnings) if check is not None else []
    return model_card_text(cfg, data.summary(), report.metrics, ci, warnings)


def resume_point(cfg: DictConfig) -> tuple[DictConfig, RunFolder | None, TrainingState | None]:
    """For ``trainer.resume=<run folder | run id>``: the run's own config (other overrides given now are
    ignored, so the continued run is the same run), its folder and the state its ``last.pt`` holds."""
    if not cfg.trainer.get("resume"):
        return cfg, None, None
    folder = find_run_folder(str(cfg.trainer.resume), str(cfg.trainer.checkpoint_dir))
    if (folder.path / RunFolder.FINISHED).is_file():
        raise MedtlError(f"trainer.resume={cfg.trainer.resume}: run {folder.info()['run_id']} already finished; "
                         "its model is in MLflow, nothing is left to resume")
    saved = OmegaConf.load(folder.path / RunFolder.CONFIG)
    saved.trainer.resume = str(folder.path)
    state = folder.load_last()
    log.info("resuming MLflow run %s from %s (%s)", folder.info()["run_id"], folder.path,
             f"after epoch {state.epoch - 1}" if state else "no epoch was completed: from the start")
    return saved, folder, state


def _open_run_folder(cfg: DictConfig, tracker: MlflowTracker, folder: RunFolder | None) -> RunFolder:
    """This run's checkpoint folder (the resumed one, or a new one named by the MLflow run id), tagged on the run."""
    root = folder.path.parent if folder else cfg.trainer.checkpoint_dir
    created = RunFolder.create(root, tracker.run_id, tracker.uri, OmegaConf.to_yaml(cfg))
    tracker.set_tag("medtl.run_folder", str(created.path))
    log.info("checkpoints in %s (after a kill: python -m medtl.train trainer.resume=%s)", created.path, tracker.run_id)
    return created


def _check_names(cfg: DictConfig) -> None:
    """Encoder and adaptation names against their registries, before any data is read."""
    encoder = str(cfg.model.get("encoder", ""))
    if cfg.model.get("_target_") == "medtl.models.build_classifier" and not encoder.startswith("timm/") \
            and encoder not in list_encoders():
        raise MedtlError(f"model.encoder='{encoder}' is not a registered encoder; choose one of {list_encoders()} "
                         "or timm/<name> with the timm extra")
    method = str(cfg.adaptation.get("method", "none"))
    if cfg.adaptation.get("_target_") == "medtl.adaptation.build_adaptation" and method not in list_adaptations():
        raise MedtlError(f"adaptation.method='{method}' is not a registered method; choose one of "
                         f"{list_adaptations()}")


def _log_report(tracker: MlflowTracker, report: EvaluationReport, fit: FitResult,
                data: ImageClassificationData) -> dict[str, float]:
    """Log and return the run's summary metrics: the final evaluation (``val/final_*``), the best epoch's score
    (``val/best_auroc``, ``val/best_epoch``) and the training time and epochs actually trained."""
    metrics = {f"val/final_{k}": v for k, v in report.metrics.items()}
    metrics.update({"val/best_auroc": fit.best_score, "val/best_epoch": fit.best_epoch,
                    "train/epochs": len(fit.history), "train/seconds": fit.seconds})
    tracker.log_metrics(metrics)
    tracker.log_frame(data.case_table(report.predictions), predictions_file("val"))
    tracker.log_figures(report.figures)
    return metrics


def _log_held_out(tracker: MlflowTracker, report: EvaluationReport, data: ImageClassificationData) -> dict[str, float]:
    """The ``test`` split's metrics (``test/*``, at the validation threshold), predictions and figures."""
    metrics = {f"test/{k}": v for k, v in report.metrics.items()}
    tracker.log_metrics(metrics)
    tracker.log_frame(data.case_table(report.predictions), predictions_file("test"))
    tracker.log_figures(report.figures)
    return metrics


def _evaluate_external(tracker: MlflowTracker, trainer: Trainer, evaluator: Evaluator, model: TransferModel,
                       data: ImageClassificationData, site: ExternalSet, threshold: float | None,
                       adabn_threshold: float | None) -> dict[str, float]:
    """An external set scored at the validation ``threshold``: metrics ``external/<name>/*``, predictions, figures;
    with ``evaluation.external_adabn`` also ``external/<name>/adabn_*``, ``external_<name>_adabn_predictions.csv``
    and its plots, the model with BatchNorm statistics of the set's own images at ``adabn_threshold`` (what
    ``medtl.predict ... adaptation=adabn`` does at that site; labels unused)."""
    loader = site.loader(data, model.encoder.weights_info)
    tta = data.pipeline.tta_views if evaluator.tta else None
    report = evaluator.report(trainer.predict(model, loader, desc=site.split, tta=tta), threshold, site.split)
    metrics = {f"external/{site.name}/{k}": v for k, v in report.metrics.items()}
    tracker.log_frame(site.case_table(report.predictions), predictions_file(site.split))
    tracker.log_figures(report.figures)
    adaptable = source_statistics_batchnorms(model) if evaluator.external_adabn else []
    if evaluator.external_adabn and not adaptable:
        log.warning("evaluation.external_adabn: every encoder BatchNorm layer kept its ImageNet statistics "
                    "(model.strategy=%s); AdaBN has nothing to re-estimate, external/%s/adabn_* not logged",
                    model.strategy.name, site.name)
    if adaptable:
        adapted = recompute_batchnorm_statistics(model, loader, trainer.device, trainer.progress, adaptable)
        preds = trainer.predict(adapted, loader, desc=f"{site.split} (AdaBN)", tta=tta)
        adabn = evaluator.report(preds, threshold if adabn_threshold is None else adabn_threshold,
                                 f"{site.split}_adabn")
        metrics.update({f"external/{site.name}/adabn_{k}": v for k, v in adabn.metrics.items()})
        tracker.log_frame(site.case_table(adabn.predictions), predictions_file(f"{site.split}_adabn"))
        tracker.log_figures(adabn.figures)  # plots/external_<name>_adabn_roc_curve.png, ..._confusion_matrix.png
    tracker.log_metrics(metrics)
    return metrics


def _adabn_validation(tracker: MlflowTracker, trainer: Trainer, evaluator: Evaluator, model: TransferModel,
                      loader: DataLoader, tta: TTAViews | None) -> dict[str, float]:
    """``val/adabn_auroc``, ``val/adabn_accuracy`` and ``val/adabn_threshold``: validation scored as ``medtl.predict
    adaptation=adabn`` scores a site, with the validation images' own BatchNorm statistics, and the threshold chosen
    there as the validation threshold is. The statistics the model trained with come from augmented batches, so a
    site's own statistics move the scores even at the training site; AdaBN's predictions anywhere are thresholded
    where AdaBN was validated. Nothing for a multi-class task or without BatchNorm statistics from training."""
    adaptable = source_statistics_batchnorms(model)
    if not evaluator.binary or not adaptable:
        return {}
    adapted = recompute_batchnorm_statistics(model, loader, trainer.device, trainer.progress, adaptable)
    scored = evaluator.metrics(trainer.predict(adapted, loader, desc="validation (AdaBN)", tta=tta))
    metrics = {f"val/adabn_{name}": float(scored[name]) for name in ("auroc", "accuracy", "threshold")}
    tracker.log_metrics(metrics)
    return metrics


def _log_domain_report(tracker: MlflowTracker, domain: DomainReport, data: ImageClassificationData) -> None:
    tracker.log_metrics(domain.metrics)
    tracker.log_frame(data.case_table(domain.predictions, getattr(data, "target_frame", None)),
                      predictions_file("target"))
    tracker.log_figures(domain.figures)


def _log_reviews(tracker: MlflowTracker, data: ImageClassificationData) -> None:
    """What ``data.reviews`` changed: counts as metrics, the file's name and SHA-256 as tags."""
    if data.review_summary is None:
        return
    tracker.log_metrics(data.review_summary.metrics())
    tracker.set_tag("medtl.reviews", data.review_summary.file)
    tracker.set_tag("medtl.reviews_sha256", data.review_summary.sha256)


def model_card(cfg: DictConfig, model: TransferModel, data: ImageClassificationData,
               report: EvaluationReport, adabn_threshold: float | None = None) -> ModelCard:
    """The typed card the logged model carries: what ``medtl.predict`` needs to preprocess inputs and read outputs,
    what the review kit shows, and the architecture that rebuilds the eager model (AdaBN, Grad-CAM)."""
    weights = model.encoder.weights_info
    preprocessing = Preprocessing(
        image_size=data.image_size, in_channels=weights.in_channels, mean=tuple(weights.mean), std=tuple(weights.std),
        lower_percentile=data.intensity.lower_percentile, upper_percentile=data.intensity.upper_percentile,
        dicom_voi=data.dicom.voi, dicom_frames=data.dicom.frames, pipeline=data.pipeline.to_card())
    slices = OmegaConf.to_container(cfg.model.slices) if cfg.model.get("slices") is not None else {}
    architecture = Architecture(encoder=str(cfg.model.encoder), num_classes=len(data.classes),
                                in_channels=int(cfg.model.in_channels), grey_input=str(cfg.model.grey_input),
                                image_size=data.image_size, input_shape=tuple(data.pipeline.input_shape),
                                slices=slices if data.pipeline.spatial_dims == 3 else {})
    return ModelCard(classes=tuple(data.classes), threshold=report.threshold, preprocessing=preprocessing,
                     architecture=architecture, strategy=model.strategy.name, adaptation=str(cfg.adaptation.method),
                     encoder_weights=weights.source, data_root=data.source_root.name if data.source_root else "",
                     medtl_release=medtl.__version__, source_batchnorms=tuple(source_statistics_batchnorms(model)),
                     adabn_threshold=adabn_threshold)


def _print_summary(metrics: dict[str, float], run_id: str | None, model_uri: str | None) -> None:
    print("\nvalidation: " + ", ".join(f"{k.removeprefix('val/final_')}={v:.4f}" for k, v in metrics.items()
                                     if k.startswith("val/final_")))
    for prefix in ("test/", "target/", *sorted({"/".join(k.split("/")[:2]) + "/" for k in metrics
                                                if k.startswith("external/")})):
        held_out = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        if held_out:
            print(f"{prefix[:-1]}: " + ", ".join(f"{k}={v:.4f}" for k, v in held_out.items()))
    print(f"MLflow run id: {run_id}")
    if model_uri:
        print(f"model: {model_uri}  (python -m medtl.predict model={model_uri} input=<folder> output=preds.csv)")
