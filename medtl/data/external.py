"""External test sets: labelled images of other sites, never trained on and never used to choose anything, scored
at the threshold the source's validation chose (``evaluation.external: {name: manifest CSV or class tree}``).

This is the check a validation split carved from the training site cannot give: the same model and operating
point at a hospital it has not seen. Predictions leave the run pseudonymised like every other table.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from monai.data import DataLoader

from medtl.data.datamodule import ImageClassificationData, apply_label_map
from medtl.data.inventory import Inventory
from medtl.data.pseudonym import CaseNames
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

__all__ = ["ExternalSet", "read_external_sets"]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
log = logging.getLogger(__name__)


@dataclass
class ExternalSet:
    """One external site: ``frame`` has ``path`` (absolute), ``label`` and ``patient_id``; ``folder`` is what its
    case names are relative to."""

    name: str
    frame: pd.DataFrame
    folder: Path
    patient_id_patterns: list[str]

    @property
    def split(self) -> str:
        """How its metrics, figures and table are named: ``external_<name>`` (metrics ``external/<name>/*``)."""
        return f"external_{self.name}"

    def loader(self, data: ImageClassificationData, weights: WeightsInfo) -> DataLoader:
        """Its images through the evaluation transforms, in order."""
        rows = self.frame.assign(split=self.split)
        return data.loader(data.dataset(self.split, data.transform(weights, augment=False), weights, rows),
                           shuffle=False)

    def case_table(self, predictions: pd.DataFrame) -> pd.DataFrame:
        """The predictions table with ``case`` and ``patient`` pseudonymised, as it leaves the run."""
        facts = self.frame.drop_duplicates("path").set_index("path")[["patient_id"]]
        table = predictions.join(facts, on="path").assign(split=self.split)
        return CaseNames([(self.frame, self.folder)], self.patient_id_patterns).frame(table)

    def summary(self) -> dict[str, int]:
        return {f"n_images.{self.split}.{label}": int(n) for label, n in self.frame["label"].value_counts().items()}


def read_external_sets(paths: Mapping[str, str] | None, data: ImageClassificationData) -> list[ExternalSet]:
    """Read every ``name: path`` of ``evaluation.external`` (manifest CSV or class-per-folder tree, labelled with the
    source's classes; ``data.label_map`` applies). Stops with one line on an unlabelled or mislabelled set."""
    from medtl.data.domains import read_target_frame

    sets = []
    for name, path in (paths or {}).items():
        key = f"evaluation.external.{name}"
        if not _NAME.match(str(name)):
            raise MedtlError(f"{key}: name the set with letters, digits, '_' or '-' (it names metrics and files)")
        if not Path(str(path)).expanduser().exists():
            raise MedtlError(f"{key}={path} does not exist; point it at a labelled manifest CSV or class tree")
        frame = read_target_frame(str(path), data.patient_id_patterns, Inventory(), data.pipeline.scan_folder)
        frame = apply_label_map(frame, data.label_map, "data.label_map")
        _check_labels(frame, data.classes, key, str(path))
        _check_disjoint(frame, data.frame, key)
        folder = Path(str(path)).expanduser().resolve()
        sets.append(ExternalSet(str(name), frame.reset_index(drop=True),
                                folder.parent if folder.suffix.lower() == ".csv" else folder, data.patient_id_patterns))
    return sets


def _check_disjoint(frame: pd.DataFrame, source: pd.DataFrame | None, key: str) -> None:
    """Stop when the set holds the source's own files; warn when it shares patient ids with the source (ids from
    ``data.patient_id_patterns`` may coincide between hospitals, so the user decides)."""
    if source is None:
        return
    shared = _resolved(frame["path"]) & _resolved(source["path"])
    if shared:
        raise MedtlError(f"{key}: {len(shared)} of its {len(frame)} images are also training or validation images; "
                         "an external set must hold other patients' images: remove them from one of the two")
    patients = set(frame["patient_id"].dropna().astype(str)) & set(source["patient_id"].dropna().astype(str))
    if patients:
        log.warning("%s: %d patient id(s) also occur in the training data; if they are the same patients the external "
                    "figures overstate, hold those patients out of training", key, len(patients))


def _resolved(paths: pd.Series) -> set[str]:
    return {str(Path(p).resolve()) for p in paths}


def _check_labels(frame: pd.DataFrame, classes: list[str], key: str, path: str) -> None:
    if frame.empty:
        raise MedtlError(f"{key}={path} holds no images; point it at a labelled manifest CSV or class tree")
    if frame["label"].eq("").any():
        raise MedtlError(f"{key}={path}: {int(frame['label'].eq('').sum())} image(s) have no label; an external test "
                         "set needs labels (unlabelled images of a new site belong in data.target)")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise MedtlError(f"{key}={path}: labels {unknown} are not the source's classes {classes}; map them with "
                         "data.label_map or fix the set")
