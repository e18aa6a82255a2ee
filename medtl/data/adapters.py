"""Adapters: the published label files of public chest X-ray sets -> medtl manifests.

Each adapter is one function behind ``@register_adapter``; all take the label file, the folder
that holds the images and the same options, and return a manifest frame (``path, label,
patient_id`` plus, for several findings, one 0/1 column ``finding_<name>`` each).

    python -m medtl.data.adapters nih_chestxray14 --labels Data_Entry_2017.csv --images ./nih \\
        --target Pneumonia --views PA AP --out data_manifests/nih_pneumonia.csv
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtl.data.manifest import IMAGE_SUFFIXES, PSEUDONYM_KEY_ENV, pseudonymise_patient_ids, write_manifest
from medtl.errors import MedtlError, exit_on_user_error

__all__ = ["AdapterOptions", "register_adapter", "list_adapters", "build_manifest", "main"]

UNCERTAINTY_POLICIES = ("ones", "zeros", "ignore")


@dataclass(frozen=True)
class AdapterOptions:
    """What to take from a label file.

    Attributes:
        targets: one finding (binary task: ``<finding>`` vs ``No <finding>``) or several (multi-label).
        views: keep only these view positions (e.g. ``PA``, ``AP``, ``LATERAL``); empty keeps all.
        uncertainty: CheXpert's -1 labels become 1 (``ones``), 0 (``zeros``) or drop the row (``ignore``).
    """

    targets: tuple[str, ...]
    views: tuple[str, ...] = ()
    uncertainty: str = "ignore"


Adapter = Callable[[pd.DataFrame, Path, AdapterOptions], pd.DataFrame]
_ADAPTERS: dict[str, tuple[Adapter, tuple[str, ...]]] = {}


def register_adapter(name: str, required_columns: Sequence[str]) -> Callable[[Adapter], Adapter]:
    """Register ``adapter(labels, image_root, options) -> frame`` for label files with ``required_columns``."""

    def decorator(adapter: Adapter) -> Adapter:
        _ADAPTERS[name] = (adapter, tuple(required_columns))
        return adapter

    return decorator


def list_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def build_manifest(name: str, label_file: str | Path, image_root: str | Path, options: AdapterOptions) -> pd.DataFrame:
    """Read ``label_file``, check its columns, run adapter ``name`` and check every image exists."""
    if name not in _ADAPTERS:
        raise MedtlError(f"adapter '{name}' is unknown; choose one of {list_adapters()}")
    if options.uncertainty not in UNCERTAINTY_POLICIES:
        raise MedtlError(f"uncertainty policy '{options.uncertainty}' is unknown; use one of {UNCERTAINTY_POLICIES}")
    adapter, required = _ADAPTERS[name]
    label_file, image_root = Path(label_file), Path(image_root)
    if not label_file.is_file():
        raise MedtlError(f"label file {label_file} does not exist; pass the {name} label CSV")
    labels = pd.read_csv(label_file, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in labels.columns]
    if missing:
        raise MedtlError(f"{label_file} has no column '{missing[0]}'; is it the {name} label file? "
                         f"expected columns {list(required)}")
    frame = adapter(labels, image_root, options)
    if frame.empty:
        raise MedtlError(f"no image of {label_file} is left after filtering (views={list(options.views)}, "
                         f"targets={list(options.targets)}); loosen the filters")
    _check_images_exist(frame, image_root)
    return frame.reset_index(drop=True)


def _binary_or_multilabel(frame: pd.DataFrame, findings: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Add ``label`` (and ``finding_<name>`` columns for several targets) from 0/1 ``findings``."""
    frame = frame.copy()
    if len(targets) == 1:
        target = targets[0]
        frame["label"] = np.where(findings[target] == 1, target, f"No {target}")
        return frame
    for target in targets:
        frame[f"finding_{target}"] = findings[target].astype(int)
    frame["label"] = ["|".join(t for t in targets if row[t] == 1) or "No Finding" for _, row in findings.iterrows()]
    return frame


def _filter_views(frame: pd.DataFrame, column: str, views: Sequence[str]) -> pd.Series:
    if not views:
        return pd.Series(True, index=frame.index)
    return frame[column].str.upper().isin([v.upper() for v in views])


@register_adapter("nih_chestxray14", ["Image Index", "Finding Labels", "Patient ID", "View Position"])
def nih_chestxray14(labels: pd.DataFrame, image_root: Path, options: AdapterOptions) -> pd.DataFrame:
    """NIH ChestX-ray14 ``Data_Entry_2017.csv``: ``|``-separated findings, ``No Finding``; images found
    anywhere below ``image_root`` (the release spreads them over ``images_001/images`` ...)."""
    known = sorted({f for cell in labels["Finding Labels"] for f in cell.split("|")} - {"No Finding"})
    _check_targets(options.targets, known, "Finding Labels")
    kept = labels[_filter_views(labels, "View Position", options.views)]
    findings = pd.DataFrame({t: kept["Finding Labels"].str.split("|").apply(lambda fs, t=t: int(t in fs))
                             for t in options.targets}, index=kept.index)
    index = _index_images(image_root)
    frame = pd.DataFrame({"path": [index.get(name, str(image_root / name)) for name in kept["Image Index"]],
                          "patient_id": kept["Patient ID"].str.strip()}, index=kept.index)
    return _binary_or_multilabel(frame, findings, options.targets)[["path", "label", "patient_id",
                                                                    *_finding_columns(options.targets)]]


@register_adapter("rsna_pneumonia", ["patientId", "Target"])
def rsna_pneumonia(labels: pd.DataFrame, image_root: Path, options: AdapterOptions) -> pd.DataFrame:
    """RSNA Pneumonia Detection ``stage_2_train_labels.csv``: one row per box (Target 1) or one Target-0
    row; image ``<patientId>.dcm``. The only finding is ``Lung Opacity``; RSNA has no view column here."""
    _check_targets(options.targets, ["Lung Opacity"], "Target")
    per_image = labels.assign(Target=labels["Target"].astype(int)).groupby("patientId", sort=True)["Target"].max()
    findings = pd.DataFrame({"Lung Opacity": per_image.to_numpy()}, index=per_image.index)
    frame = pd.DataFrame({"path": [str(image_root / f"{pid}.dcm") for pid in per_image.index],
                          "patient_id": per_image.index}, index=per_image.index)
    return _binary_or_multilabel(frame, findings, options.targets)[["path", "label", "patient_id",
                                                                    *_finding_columns(options.targets)]]


@register_adapter("chexpert", ["Path", "Frontal/Lateral", "AP/PA"])
def chexpert(labels: pd.DataFrame, image_root: Path, options: AdapterOptions) -> pd.DataFrame:
    """CheXpert ``train.csv``: findings coded 1 / 0 / -1 (uncertain) / blank (not mentioned, read as 0).

    ``views`` match ``AP``/``PA`` and ``Lateral``; the patient id is the ``patientNNNNN`` path part.
    """
    _check_targets(options.targets, [c for c in labels.columns[5:]], "the findings columns")
    view = np.where(labels["Frontal/Lateral"].str.lower() == "lateral", "LATERAL", labels["AP/PA"].str.upper())
    kept = labels[_filter_views(pd.DataFrame({"view": view}, index=labels.index), "view", options.views)]
    coded = kept[list(options.targets)].replace("", "0").astype(float)
    if options.uncertainty == "ignore":
        coded = coded[(coded != -1).all(axis=1)]
    else:
        coded = coded.replace(-1.0, 1.0 if options.uncertainty == "ones" else 0.0)
    kept = kept.loc[coded.index]
    frame = pd.DataFrame({"path": [str(_chexpert_path(image_root, p)) for p in kept["Path"]],
                          "patient_id": kept["Path"].str.extract(r"(patient\d+)", expand=False)}, index=kept.index)
    return _binary_or_multilabel(frame, coded.astype(int), options.targets)[["path", "label", "patient_id",
                                                                            *_finding_columns(options.targets)]]


def _chexpert_path(image_root: Path, relative: str) -> Path:
    """CheXpert paths start with the release folder (``CheXpert-v1.0-small/train/...``); accept either root."""
    direct = image_root / relative
    return direct if direct.exists() else image_root / Path(*Path(relative).parts[1:])


def _finding_columns(targets: Sequence[str]) -> list[str]:
    return [f"finding_{t}" for t in targets] if len(targets) > 1 else []


def _check_targets(targets: Sequence[str], known: Sequence[str], where: str) -> None:
    if not targets:
        raise MedtlError(f"no target finding given; choose from {sorted(known)}")
    for target in targets:
        if target not in known:
            raise MedtlError(f"finding '{target}' does not occur in {where}; choose from {sorted(known)}")


def _index_images(root: Path) -> dict[str, str]:
    """File name -> path for every image below ``root``."""
    return {p.name: str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}


def _check_images_exist(frame: pd.DataFrame, image_root: Path) -> None:
    missing = [p for p in frame["path"] if not Path(p).is_file()]
    if missing:
        raise MedtlError(f"{len(missing)} image(s) of the label file are not under {image_root}, first: {missing[0]}; "
                         "point --images at the folder holding the images")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Turn a public data set's label file into a medtl manifest.")
    parser.add_argument("adapter", choices=list_adapters())
    parser.add_argument("--labels", required=True, help="the published label CSV")
    parser.add_argument("--images", required=True, help="folder holding the images")
    parser.add_argument("--target", nargs="+", required=True, help="one finding (binary) or several (multi-label)")
    parser.add_argument("--views", nargs="*", default=[], help="keep these views only, e.g. PA AP")
    parser.add_argument("--uncertainty", default="ignore", choices=UNCERTAINTY_POLICIES, help="CheXpert -1 labels")
    parser.add_argument("--out", required=True, help="manifest CSV to write")
    parser.add_argument("--pseudonymise", action="store_true",
                        help=f"replace patient ids by a keyed hash (key from ${PSEUDONYM_KEY_ENV})")
    args = parser.parse_args(argv)
    options = AdapterOptions(tuple(args.target), tuple(args.views), args.uncertainty)
    frame = build_manifest(args.adapter, args.labels, args.images, options)
    if args.pseudonymise:
        if not os.environ.get(PSEUDONYM_KEY_ENV):
            raise MedtlError(f"--pseudonymise needs a secret key in ${PSEUDONYM_KEY_ENV}; "
                             f"e.g. export {PSEUDONYM_KEY_ENV}=$(openssl rand -hex 32)")
        frame = pseudonymise_patient_ids(frame, os.environ[PSEUDONYM_KEY_ENV])
    write_manifest(frame, args.out)
    counts = ", ".join(f"{k}: {v}" for k, v in frame["label"].value_counts().items())
    print(f"wrote {len(frame)} images of {frame['patient_id'].nunique()} patients to {args.out} ({counts})")


if __name__ == "__main__":
    main()
