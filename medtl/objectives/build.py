"""Build the objective that ``conf/objective/<name>.yaml`` describes."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from medtl.errors import MedtlError
from medtl.objectives.registry import _OBJECTIVES, SourceObjective, create_objective
from medtl.registries import checked_options

if TYPE_CHECKING:
    from medtl.data.check import CheckReport

__all__ = ["build_objective", "bind_objective", "shortcut_plan"]


def build_objective(method: str, num_features: int, options: dict | None = None) -> SourceObjective:
    """The registered ``method`` with ``options`` (its own arguments); ``num_features`` is the encoder's pooled
    size, passed to objectives that take it."""
    if method not in _OBJECTIVES:
        create_objective(method)  # raises the one-line error listing the objectives
    options = checked_options(_OBJECTIVES[method], "objective", method, dict(options or {}),
                              {"num_features": num_features})
    return create_objective(method, **options)


def bind_objective(objective: SourceObjective, frame: pd.DataFrame, num_classes: int) -> None:
    """Give ``objective`` the training images' collections (``frame``'s ``collection`` column, which the data check
    fills: the manifest's ``domain``/``site``, else inferred); one line when it needs them and there are none."""
    train = frame[frame["split"] == "train"]
    has_collections = "collection" in train.columns and train["collection"].notna().any()
    if objective.uses_collections and not has_collections:
        raise MedtlError(f"objective={objective.objective_name} needs each training image's collection, which the data "
                         "check gives: set data.check=true (or add a domain column to the manifest)")
    collection_of = {}
    if has_collections:
        rows = train.dropna(subset=["collection"])
        collection_of = dict(zip(rows["path"], rows["collection"].astype(str)))
    objective.bind(collection_of, num_classes)


def shortcut_plan(report: CheckReport | None, objective: SourceObjective, preprocessing: Sequence[str],
                  decision: str | None = None) -> str | None:
    """The training log's line when the data check found a shortcut: what this run does about it, or that it does
    nothing (and why, the experiment's ``decision``, when it gives one) and what would; ``None`` when no shortcut was
    found. ``preprocessing``: the data pipeline's settings in use that act on it (``data.intensity.equalize=true``,
    ``data.augment.counterfactual_histogram=0.5``...)."""
    if report is None or not report.shortcut_found:
        return None
    found = ", ".join(report.shortcut_findings())
    doing = [objective.describe()] if objective.uses_collections else []
    doing += [f"the data pipeline: {', '.join(preprocessing)}"] if preprocessing else []
    if not doing:
        why = f", by the experiment's decision: {decision}" if decision else ""
        return (f"data check found a shortcut ({found}); this run does nothing about it{why}. To act on it: "
                "objective=group_dro or objective=collection_adversary, data.sampling=balanced, "
                "data.intensity.equalize=true, data.pipeline.crop.foreground=0.05, "
                "data.augment.counterfactual_histogram=0.5 (README, Shortcuts)")
    return f"data check found a shortcut ({found}); this run acts on it: {'; '.join(doing)}"
