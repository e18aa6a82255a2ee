"""The params a run logs to MLflow: the few dozen keys a person compares, named as they are set on the
command line (``model.strategy``, ``trainer.lr``...). Plumbing (``_target_``, cache folders, worker counts,
the demo generator's settings when real data is used) stays out: the whole resolved config is the run's
``config.yaml`` artefact. Keys that did not shape this run are left out too: a linear probe trained on cached
features logs ``trainer.features.epochs`` (the epochs its head trained for), not ``trainer.max_epochs``; the
adaptation's settings appear only when a method is on.

Light on purpose (OmegaConf only): ``medtl.train`` imports it before torch and MLflow.

Every key overridden on the command line is logged as well (``tracking.extra_params``), so a sweep's swept
values are always columns of the runs table.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["compared_params", "override_keys", "path_name", "ALWAYS", "ENCODER_TRAINING", "HEAD_ON_FEATURES",
           "FINETUNE", "ADAPTATION", "SOUP"]

ALWAYS = ("experiment_name", "seed", "model.encoder", "model.strategy", "model.weights", "model.in_channels",
          "model.dropout", "data.image_size", "data.batch_size", "data.positive_class", "data.classes",
          "data.val_fraction", "data.train_fraction", "data.max_images", "data.label_map", "trainer.lr",
          "trainer.optimizer.weight_decay", "evaluation.threshold", "evaluation.tta", "data.intensity.equalize",
          "data.pipeline.crop.foreground")
ENCODER_TRAINING = ("trainer.max_epochs", "trainer.warmup_epochs", "trainer.early_stopping_patience",
                    "data.augment.prob", "data.augment.rotate_deg", "data.augment.scale", "data.augment.translate",
                    "data.augment.noise_std", "data.augment.gamma", "data.augment.blur",
                    "data.augment.clip_highlights", "data.augment.counterfactual_histogram",
                    "trainer.ema_decay", "trainer.ema_warmup", "trainer.mixing", "data.sampling")
FINETUNE = ("model.encoder_lr_mult", "model.bn", "model.layer_decay", "model.unfreeze_every", "model.frozen_stages",
            "trainer.linear_probe_first", "trainer.interpolate_probe")  # pretrained encoder
HEAD_ON_FEATURES = ("trainer.features.epochs", "trainer.features.patience", "trainer.features.batch_size")
# trainer=soup: the models it averages (their runs hold how they trained) and how its BatchNorm statistics are made
SOUP = ("trainer.ingredients", "trainer.batchnorm")
ADAPTATION = ("adaptation.weight", "adaptation.entropy_weight", "data.target_eval_fraction")
DEMO = ("data.demo.n_patients", "data.demo.image_size", "data.demo.seed")


def compared_params(cfg: DictConfig, trains_on_features: bool, dataset: str,
                    extra: Iterable[str] = ()) -> dict[str, Any]:
    """``{command-line key: value}`` for this run; ``dataset`` is the data set's name (``data.name``).

    Args:
        cfg: the resolved run config.
        trains_on_features: whether the head trains on cached encoder features (the trainer's own decision).
        dataset: a name for the training data, without paths (see :func:`medtl.tracking.run_info.dataset_name`).
        extra: more keys to log (the command line's overrides, ``tracking.extra_params``).
    """
    method = str(OmegaConf.select(cfg, "adaptation.method", default="none"))
    keys, unused = _keys_that_shaped(cfg, trains_on_features, dataset.endswith("-demo"), method)
    extra = [key for key in extra if key not in unused]  # set on the command line, but this run did not use it
    params: dict[str, Any] = {"data.name": dataset, "adaptation.method": method,
                              "objective.method": str(OmegaConf.select(cfg, "objective.method", default="erm"))}
    optimizer = str(OmegaConf.select(cfg, "trainer.optimizer._target_", default="")).rsplit(".", 1)[-1]
    params.update({"trainer.optimizer": optimizer} if optimizer else {})
    if method != "none":
        params["data.target"] = _target_name(cfg)
    for key in [*keys, *extra]:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and not OmegaConf.is_config(value) and not key.startswith("hydra"):
            params.setdefault(key, value)
        elif OmegaConf.is_config(value) and len(value):
            params.setdefault(key, OmegaConf.to_container(value, resolve=True))
    return params


def path_name(source: str) -> str:
    """A data folder's or manifest's name without its parents: ``brain_mri/train``, ``site_b``, ``kermany``."""
    path = Path(source)
    return path.stem if path.suffix else (path.name if path.name not in ("train", "val", "test") else
                                          f"{path.parent.name}/{path.name}")


def _keys_that_shaped(cfg: DictConfig, trains_on_features: bool, demo: bool,
                      method: str) -> tuple[list[str], tuple[str, ...]]:
    """The keys that shaped this run, and those that exist in its config but did not."""
    used, unused = (HEAD_ON_FEATURES, ENCODER_TRAINING) if trains_on_features else (ENCODER_TRAINING, HEAD_ON_FEATURES)
    if OmegaConf.select(cfg, "trainer.ingredients", default=None):  # trainer=soup: averaged, not trained here
        used, unused = SOUP, ENCODER_TRAINING + HEAD_ON_FEATURES
    finetune = OmegaConf.select(cfg, "model.strategy", default=None) == "finetune"
    keys = [*ALWAYS, *used, *(FINETUNE if finetune else ()), *(DEMO if demo else ())]
    keys += [*ADAPTATION, *_options(cfg, "adaptation")] if method != "none" else []
    keys += _options(cfg, "objective")
    unused += (() if finetune else FINETUNE) + (ADAPTATION if method == "none" else ())
    return keys, unused


def _options(cfg: DictConfig, group: str) -> list[str]:
    """``<group>.options.<name>`` for each option the chosen method of ``group`` has."""
    options = OmegaConf.select(cfg, f"{group}.options", default=None) or {}
    return [f"{group}.options.{name}" for name in options]


def _target_name(cfg: DictConfig) -> str:
    """The target's folder or manifest name, or ``simulated/<severity>`` for the built-in simulated site."""
    target = OmegaConf.select(cfg, "data.target", default=None)
    if target:
        return path_name(str(target))
    severity = OmegaConf.select(cfg, "data.target_simulation.severity", default="strong")
    return f"simulated/{severity}"


NOT_COMPARED = ("hydra", "tracking", "trainer.resume", "trainer.checkpoint_dir", "trainer.progress", "trainer.device",
                "trainer.num_threads", "data.num_workers", "data.cache", "data.cache_dir", "data.demo_dir",
                "data.sites_dir", "data.cache_workers")


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys a command line's overrides set (``trainer.lr=0.01`` -> ``trainer.lr``), less plumbing;
    a group choice (``adaptation=mmd``) is its own param already and is skipped."""
    keys = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if "." in key and not key.startswith(NOT_COMPARED):
            keys.append(key)
    return keys
