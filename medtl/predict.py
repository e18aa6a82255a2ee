"""Predict with a trained model: ``python -m medtl.predict model=<uri|dir> input=<images> output=<csv>``.

``model``: an MLflow model URI (``models:/m-...``, ``runs:/<run>/model``) or a local model folder
(one holding an ``MLmodel`` file). ``input``: a class-per-folder tree, a plain folder of images
or a manifest CSV (``path`` required, ``label`` optional). ``output``: CSV with
``path,label,score,pred`` (binary; ``pred`` at the threshold the model was validated with) or
``path,label,pred,score_<class>`` (multi-class).
``adaptation=adabn``: first re-estimate the encoder's BatchNorm statistics on the input images (AdaBN):
a model delivered from one site adapts to a folder of another site's images without training. ``pred`` is then at
the threshold validation chose under AdaBN (the card's ``adabn_threshold``, when it has one).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import logging

import hydra
import mlflow
import numpy as np
import torch
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from monai.data import DataLoader, Dataset
from omegaconf import DictConfig, OmegaConf

from medtl import CONFIG_DIR
from medtl.atomic import write_csv_atomic
from medtl.adaptation.adabn import recompute_batchnorm_statistics
from medtl.data.inventory import SKIPPED, Inventory
from medtl.data.manifest import read_manifest, scan_tree
from medtl.data.readers import DEFAULT_MAX_PIXELS
from medtl.data.dicom_series import SERIES_MARK
from medtl.data.pipelines import ImagePipeline, RadiographPipeline
from medtl.engine.evaluation import predictions_frame
from medtl.engine.loop import predict_loader, resolve_device
from medtl.config_schema import validate_predict_config
from medtl.errors import MedtlError, exit_on_user_error
from medtl.models import TransferModel, build_classifier
from medtl.models.card import ModelCard
from medtl.models.loading import STATE_DICT_FILE, check_model_folder, load_exported_model, load_state_dict

__all__ = ["predict", "load_model", "card_transforms", "adapt_batchnorm", "input_frame", "main"]

log = logging.getLogger("medtl.predict")
MIN_ADABN_IMAGES = 32


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Load the model, read the inputs, write the predictions CSV atomically and return it."""
    for key in ("model", "input", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise MedtlError(f"set {key}=...; usage: python -m medtl.predict model=<uri|dir> input=<images> output=<csv>")
    validate_predict_config(cfg)
    adaptation = str(cfg.get("adaptation", "none"))
    if adaptation not in ("none", "adabn"):
        raise MedtlError(f"adaptation={adaptation} is not available at prediction time; use none or adabn")
    model, card = load_model(str(cfg.model), cfg.tracking_uri, eager=adaptation == "adabn")
    if adaptation == "adabn":
        check_adaptable(card)
    frame, inventory = input_frame(str(cfg.input), card.pipeline())
    _report_inputs(inventory, Path(cfg.output))
    transform = card_transforms(card, max_pixels=int(cfg.get("max_pixels", DEFAULT_MAX_PIXELS)))
    items = [{"image": p, "path": p} for p in frame["path"]]
    loader = DataLoader(Dataset(items, transform), batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    device = resolve_device(cfg.device)
    if adaptation == "adabn":
        model = adapt_batchnorm(model, loader, device, cfg.progress, card)
    preds = predict_loader(model, loader, device, progress=cfg.progress,
                           tta=card.pipeline().tta_views if cfg.tta else None)
    labels = list(frame["label"]) if "label" in frame.columns else None
    out = predictions_frame(preds.paths, preds.probs, list(card.classes), labels,
                            threshold=card.operating_threshold(adabn=adaptation == "adabn"))
    write_csv_atomic(out, Path(cfg.output))
    print(f"wrote {len(out)} predictions to {cfg.output}")
    return out


def check_adaptable(card: ModelCard) -> None:
    """Stop with one line when the model has no BatchNorm statistics from its training images to re-estimate."""
    if card.source_batchnorms is not None and not card.source_batchnorms:
        raise MedtlError(f"adaptation=adabn: this model (strategy {card.strategy}) kept ImageNet BatchNorm "
                         "statistics in every encoder layer, so AdaBN has nothing to re-estimate; use adaptation=none")


def adapt_batchnorm(model: torch.nn.Module, loader: DataLoader, device: torch.device, progress: bool,
                    card: ModelCard) -> torch.nn.Module:
    """AdaBN at the new site: the model with the BatchNorm statistics it learnt on its training images (the
    card's ``source_batchnorms``) re-estimated on the inputs. :func:`check_adaptable` says first whether there are
    any (:func:`predict` asks before reading the inputs)."""
    count = len(loader.dataset)
    if count < MIN_ADABN_IMAGES:
        log.warning("adaptation=adabn: only %d input image(s); BatchNorm statistics from fewer than %d images "
                    "are noisy, predict a larger batch of the site's images at once", count, MIN_ADABN_IMAGES)
    log.info("adaptation=adabn: re-estimating BatchNorm statistics on %d input image(s)", count)
    return recompute_batchnorm_statistics(model, loader, device, progress, card.source_batchnorms)


def card_transforms(card: ModelCard, max_pixels: int = DEFAULT_MAX_PIXELS, storage_dtype: type = np.float32) -> Any:
    """The deterministic preprocessing the model was trained with, from its card: file -> ``(C, *input_shape)``."""
    pipeline = card.pipeline()
    pipeline.max_pixels = max_pixels  # the decoding budget is this machine's choice, not the model's
    return pipeline.eval_transforms(card.weights_info(), storage_dtype)


def load_model(ref: str, tracking_uri: str, eager: bool = False) -> tuple[Any, ModelCard]:
    """Fetch an MLflow model (URI or local folder); return the module and its :class:`~medtl.models.card.ModelCard`.

    Only models saved in MLflow's ``pt2`` format (``torch.export``, no pickle) are loaded, from a folder that
    holds no pickle-bearing file (:func:`medtl.models.loading.check_model_folder`). With ``eager``
    the module is rebuilt from the metadata and the tensors-only ``extra_files/state_dict.pt`` instead
    (an ``nn.Module`` whose BatchNorm layers can be re-estimated).
    """
    if not Path(ref).is_dir():
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="medtl-model-") as tmp:
        local = _download(ref, tracking_uri, tmp)
        if not (local / "MLmodel").is_file():
            raise MedtlError(f"model '{ref}' has no MLmodel file; pass the model folder itself (the one with MLmodel)")
        check_model_folder(local, ref)
        card = ModelCard.from_dict(Model.load(str(local / "MLmodel")).metadata or {}, ref)
        if eager:
            return _eager_model(local, card, ref), card
        return load_exported_model(local, ref), card


def _eager_model(local: Path, card: ModelCard, ref: str) -> TransferModel:
    """The ``nn.Module`` rebuilt from the card's architecture and the tensors-only state dict (every parameter
    trainable, so BatchNorm can be re-estimated and Grad-CAM has gradients)."""
    state_path = local / "extra_files" / STATE_DICT_FILE
    if not state_path.is_file():
        raise MedtlError(f"model '{ref}' has no eager weights (extra_files/{STATE_DICT_FILE}); adaptation=adabn "
                         "and the review's saliency maps need a model logged by this version of medtl.train: "
                         "retrain it, or use adaptation=none")
    model = build_classifier(strategy="scratch", weights=None, **card.architecture.build_kwargs())
    model.load_state_dict(load_state_dict(state_path, ref))
    return model.eval()


def _download(ref: str, tracking_uri: str, destination: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=destination))
    except (MlflowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedtlError(f"cannot fetch model '{ref}' (tracking uri {tracking_uri}): {reason}; "
                         "pass a models:/ or runs:/ URI shown by medtl.train, or a local model folder") from exc


def input_frame(source: str, pipeline: ImagePipeline | None = None) -> tuple[pd.DataFrame, Inventory]:
    """Rows with ``path`` (and ``label`` when the input carries one) from a CSV, a tree or a plain folder, and
    the inventory of every file found: each input is predicted, or skipped or refused with its reason. The
    model's ``pipeline`` says what an input is (an image file; a NIfTI file or a DICOM series for volumes)."""
    pipeline = pipeline if pipeline is not None else RadiographPipeline()
    path = Path(source)
    if path.suffix.lower() == ".csv":
        frame = read_manifest(path, required=("path",), allow_outside_root=True)
        return frame, Inventory(used=[Path(p) for p in frame["path"]])
    if not path.is_dir():
        raise MedtlError(f"input {path} does not exist; pass a folder of images, a class-per-folder tree or a manifest CSV")
    plain = pipeline.scan_folder(path)
    if plain.used:
        accounted = {str(p).partition(SERIES_MARK)[0] for p in plain.used}
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and str(p) not in accounted):
            plain.add(sub, SKIPPED, "a sub-folder of a folder of images; predict it on its own")
        return pd.DataFrame({"path": [os.path.abspath(p) for p in plain.used]}), plain
    frame, inventory = scan_tree(path, allow_outside_root=True, scan=pipeline.scan_folder)
    loose = [o for o in plain.others if not Path(o["path"]).is_dir()]  # class folders are read as such
    seen = {o["path"] for o in loose}
    inventory.others = loose + [o for o in inventory.others
                                if o["reason"] != "not inside a class folder" and o["path"] not in seen]
    return frame, inventory


def _report_inputs(inventory: Inventory, output: Path) -> None:
    """Print what happened to every input file; list the ones not predicted beside the output CSV."""
    print(f"inputs: {inventory.summary()}")
    if inventory.others:
        listing = output.with_name(output.stem + "_skipped.csv")
        write_csv_atomic(inventory.frame(), listing)
        print(f"files not predicted, with the reason: {listing}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "predict"), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
