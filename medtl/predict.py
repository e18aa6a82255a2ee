"""Predict with a trained model: ``python -m medtl.predict model=<uri|dir> input=<images> output=<csv>``.

``model``: an MLflow model URI (``models:/m-...``, ``runs:/<run>/model``) or a local model folder
(one holding an ``MLmodel`` file). ``input``: a class-per-folder tree, a plain folder of images
or a manifest CSV (``path`` required, ``label`` optional). ``output``: CSV with
``path,label,score`` (binary) or ``path,label,pred,score_<class>`` (multi-class).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import hydra
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from monai.data import DataLoader, Dataset
from omegaconf import DictConfig, OmegaConf

from medtl import CONFIG_DIR
from medtl.atomic import write_csv_atomic
from medtl.data.manifest import list_images, manifest_from_tree, read_manifest
from medtl.data.readers import DicomOptions
from medtl.data.transforms import IntensityConfig, eval_transforms
from medtl.engine.evaluation import predictions_frame
from medtl.engine.loop import predict_loader, resolve_device
from medtl.errors import MedtlError, exit_on_user_error
from medtl.models.registry import WeightsInfo

__all__ = ["predict", "load_model", "input_frame", "main"]


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Load the model, read the inputs, write the predictions CSV atomically and return it."""
    for key in ("model", "input", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise MedtlError(f"set {key}=...; usage: python -m medtl.predict model=<uri|dir> input=<images> output=<csv>")
    model, meta = load_model(str(cfg.model), cfg.tracking_uri)
    frame = input_frame(str(cfg.input))
    classes = list(meta["classes"])
    weights = WeightsInfo(source=str(meta.get("encoder_weights", "")), mean=tuple(meta["mean"]),
                          std=tuple(meta["std"]), in_channels=int(meta["in_channels"]))
    transform = eval_transforms(int(meta["image_size"]), weights, IntensityConfig(**meta["intensity"]),
                                DicomOptions(**meta.get("dicom", {})))
    items = [{"image": p, "path": p} for p in frame["path"]]
    loader = DataLoader(Dataset(items, transform), batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    preds = predict_loader(model, loader, resolve_device(cfg.device), progress=cfg.progress, tta=bool(cfg.tta))
    labels = list(frame["label"]) if "label" in frame.columns else None
    out = predictions_frame(preds.paths, preds.probs, classes, labels)
    write_csv_atomic(out, Path(cfg.output))
    print(f"wrote {len(out)} predictions to {cfg.output}")
    return out


def load_model(ref: str, tracking_uri: str) -> tuple[Any, dict]:
    """Fetch an MLflow model (URI or local folder); return the module and medtl's metadata.

    Only models saved in MLflow's ``pt2`` format (``torch.export``, no pickle) are loaded.
    """
    if not Path(ref).is_dir():
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="medtl-model-") as tmp:
        local = _download(ref, tracking_uri, tmp)
        if not (local / "MLmodel").is_file():
            raise MedtlError(f"model '{ref}' has no MLmodel file; pass the model folder itself (the one with MLmodel)")
        if not list((local / "data").glob("*.pt2")):
            raise MedtlError(f"model '{ref}' is not in MLflow's pt2 format; medtl does not unpickle models, "
                             "re-log it with serialization_format='pt2'")
        meta = Model.load(str(local / "MLmodel")).metadata or {}
        if "classes" not in meta:
            raise MedtlError(f"model '{ref}' has no medtl metadata (classes, image_size...); "
                             "use a model logged by medtl.train")
        return mlflow.pytorch.load_model(str(local)), meta


def _download(ref: str, tracking_uri: str, destination: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=destination))
    except (MlflowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedtlError(f"cannot fetch model '{ref}' (tracking uri {tracking_uri}): {reason}; "
                         "pass a models:/ or runs:/ URI shown by medtl.train, or a local model folder") from exc


def input_frame(source: str) -> pd.DataFrame:
    """Rows with ``path`` (and ``label`` when the input carries one) from a CSV, a tree or a plain folder."""
    path = Path(source)
    if path.suffix.lower() == ".csv":
        return read_manifest(path, required=("path",))
    if not path.is_dir():
        raise MedtlError(f"input {path} does not exist; pass a folder of images, a class-per-folder tree or a manifest CSV")
    images = list_images(path)
    if images:
        return pd.DataFrame({"path": [str(p.resolve()) for p in images]})
    return manifest_from_tree(path)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "predict"), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
