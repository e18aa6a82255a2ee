"""What a run says about itself in MLflow: tags, a description, its data sets as inputs, and the model card
that a registered model carries. No paths or patient ids: data sets are named and counted, not listed."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from omegaconf import DictConfig

import medtl
from medtl.provenance import git_commit
from medtl.tracking.params import path_name

__all__ = ["dataset_name", "run_tags", "run_description", "dataset_inputs", "run_inputs", "model_card"]


def dataset_name(cfg: DictConfig) -> str:
    """``chest_xray_kermany`` for ``data.root=../shared/data/chest_xray_kermany``, a manifest's stem, or ``demo``."""
    source = cfg.data.get("source") or cfg.data.get("manifest") or cfg.data.get("root")
    return path_name(str(source)) if source else f"{cfg.experiment_name}-demo"


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags the runs table filters and groups on (encoder, strategy and adaptation are the config's own tags)."""
    commit = git_commit(Path(medtl.__file__).parent)
    return {"medtl.dataset": dataset_name(cfg), "medtl.git_commit": commit.removesuffix("+dirty"),
            "medtl.git_dirty": str(commit.endswith("+dirty")).lower(), "medtl.version": medtl.__version__}


def run_description(cfg: DictConfig, summary: dict[str, int]) -> str:
    """One paragraph in the run's Description: what was trained, on what, how long."""
    counts = {split: sum(v for k, v in summary.items() if k.startswith(f"n_images.{split}.")) for split in ("train", "val")}
    weights = "ImageNet weights" if cfg.model.strategy != "scratch" else "random initialisation"
    adaptation = cfg.adaptation.method
    target = f", adapted to {cfg.data.get('target') or 'a simulated site'} with {adaptation}" if adaptation != "none" else ""
    return (f"{cfg.model.strategy} of {cfg.model.encoder} ({weights}) on {dataset_name(cfg)}: "
            f"{counts['train']:,} training and {counts['val']:,} validation images at {cfg.data.image_size} px, "
            f"up to {cfg.trainer.max_epochs} epochs at lr {cfg.trainer.lr:g}{target}; seed {cfg.seed}.")


def dataset_inputs(frame: pd.DataFrame, name: str) -> list[tuple[str, Any]]:
    """One MLflow dataset per split (``training``, ``validation``, ``test``): label and split columns only, a
    digest of the split's file list (so a changed list shows as another version), never the paths themselves."""
    contexts = {"train": "training", "val": "validation", "test": "test", "adapt": "target_adaptation"}
    inputs = []
    for split, rows in frame.groupby("split"):
        digest = hashlib.sha256("\n".join(sorted(rows["path"])).encode()).hexdigest()[:16]
        table = rows[["label", "split"]].reset_index(drop=True)
        inputs.append((contexts.get(str(split), str(split)),
                       mlflow.data.from_pandas(table, name=f"{name}/{split}", digest=digest, targets="label")))
    return inputs


def run_inputs(cfg: DictConfig, data: Any) -> list[tuple[str, Any]]:
    """The source's splits and, for domain adaptation, the target's (``target/adapt``, ``target/test``)."""
    inputs = dataset_inputs(data.frame, dataset_name(cfg))
    target = getattr(data, "target_frame", None)
    if target is not None:
        inputs += [(f"target_{context}" if not context.startswith("target") else context, dataset)
                   for context, dataset in dataset_inputs(target, "target")]
    return inputs


def model_card(cfg: DictConfig, summary: dict[str, int], metrics: dict[str, float], ci: tuple[float, float],
               warnings: list[str]) -> str:
    """The registered model's description (Markdown): data, metrics with a 95% CI, intended use and limits."""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if np.isfinite(v))
    warned = "\n".join(f"- {w}" for w in warnings) or "- none"
    return (f"## {cfg.experiment_name}: {cfg.model.encoder} ({cfg.model.strategy})\n\n"
            f"{run_description(cfg, summary)}\n\n"
            f"**Validation** (patients held out from the training site; AUROC 95% bootstrap CI "
            f"{ci[0]:.3f} to {ci[1]:.3f}):\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"**Data check warnings:**\n{warned}\n\n"
            "**Intended use:** research and decision support under a radiologist's review, on images like the "
            "training data (same modality, view and population). **Limits:** validation comes from the training "
            "site and overstates; expect lower figures at another hospital (see the domain-shift results), and "
            "check the decision threshold on that site's data before use.\n")
