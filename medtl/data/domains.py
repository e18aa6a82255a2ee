"""Two domains for adaptation: a labelled source site and a target site whose labels never train.

The target is a manifest CSV, a class-per-folder tree, a folder of plain images (no labels at all),
or, with none given, a simulated site: a held-out, patient-disjoint share of the source written as the image
pipeline simulates another site (:class:`~medtl.data.shift.AcquisitionShift` for radiographs, a
:class:`~medtl.data.volume_shift.VolumeSite` for volumes; cached, like the demo, under ``sites_dir``).
A labelled target is split by patient into ``adapt`` (its images are used without labels) and
``test`` (evaluation only); the ``target_oracle`` reference trains on ``adapt`` with labels,
choosing its epoch on a patient-disjoint part of it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from monai.data import DataLoader

from medtl.data.datamodule import ImageClassificationData, apply_label_map, source_folder
from medtl.data.inventory import Inventory, scan_folder
from medtl.data.manifest import FolderScanner, patient_id_from_name, read_manifest, scan_tree, write_manifest
from medtl.data.dicom_series import SERIES_MARK
from medtl.data.pipelines.base import ImagePipeline
from medtl.data.split import stratified_group_holdout
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

__all__ = ["DomainAdaptationData", "RunLoaders", "read_target_frame", "run_loaders", "simulated_site"]

log = logging.getLogger(__name__)
SITE_MANIFEST = "manifest.csv"


def read_target_frame(path: str, patient_id_patterns: list[str], inventory: Inventory | None = None,
                      scan: FolderScanner = scan_folder) -> pd.DataFrame:
    """Target images from a manifest CSV (``label`` optional), a class-per-folder tree, or a folder of
    plain images (unlabelled, each image its own patient). Unlabelled rows have ``label == ""``.
    Files of a folder that are not used are added to ``inventory`` (with their reason)."""
    source = Path(path).expanduser()
    inventory = inventory if inventory is not None else Inventory()
    if source.suffix.lower() == ".csv":
        frame = read_manifest(source, required=("path", "patient_id"))
        return frame if "label" in frame.columns else frame.assign(label="")
    if not source.is_dir():
        raise MedtlError(f"data.target={path} is neither a manifest CSV nor a folder; point it at target images")
    plain = scan(source, source, False)
    if plain.used:
        inventory.extend(plain)
        return pd.DataFrame({"path": [os.path.abspath(p) for p in plain.used], "label": "",
                             "patient_id": [patient_id_from_name(p.name, []) for p in plain.used]})
    frame, tree = scan_tree(source, patient_id_patterns, scan=scan)
    inventory.extend(tree)
    return frame


def simulated_site(frame: pd.DataFrame, sites_dir: str, severity: str, fraction: float, seed: int,
                   pipeline: ImagePipeline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``fraction`` of the patients off ``frame`` (stratified) and write them as the ``pipeline``'s simulated
    site ``severity`` (an acquisition shift for radiographs, a scanner and export for volumes).

    Returns ``(rest of the source, target frame)``; the written files are cached by content key.
    """
    if not 0.0 < fraction < 1.0:
        raise MedtlError(f"data.target_simulation.fraction={fraction} must be in (0, 1)")
    signature = pipeline.site_signature(severity)  # an unknown severity stops here, before anything is written
    held_out = stratified_group_holdout(frame, fraction, seed, key="data.target_simulation.fraction")
    target, rest = frame.loc[held_out], frame.drop(held_out)
    stats = [(p, stat.st_size, stat.st_mtime_ns)
             for p, stat in ((p, os.stat(p.partition(SERIES_MARK)[0])) for p in target["path"])]
    key = hashlib.sha256(json.dumps([stats, signature, seed], default=str).encode()).hexdigest()[:16]
    folder = Path(sites_dir).expanduser().resolve() / f"{severity}-{key}"
    if not (folder / SITE_MANIFEST).is_file():
        _write_site(target.reset_index(drop=True), folder, pipeline, severity, seed)
    return rest.reset_index(drop=True), read_manifest(folder / SITE_MANIFEST)


def _write_site(target: pd.DataFrame, folder: Path, pipeline: ImagePipeline, severity: str, seed: int) -> None:
    """Write the simulated site into a temporary sibling, then rename it into place (never half-written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        written = pipeline.write_site(target, staging, severity, seed)
        write_manifest(written[["path", "label", "patient_id"]], staging / SITE_MANIFEST)
        os.replace(staging, folder)
    except OSError:
        if not (folder / SITE_MANIFEST).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _target_folder(target: str | None, frame: pd.DataFrame) -> Path | None:
    """The folder target case names are relative to: the target folder, a manifest's folder, or the simulated site."""
    if target:
        path = Path(target).expanduser()
        return path.parent if path.suffix.lower() == ".csv" else path
    return source_folder(None, None, frame) if len(frame) else None


class DomainAdaptationData(ImageClassificationData):
    """A labelled source (``source``: manifest CSV or tree; the demo when null) and a target domain.

    Args:
        target: manifest CSV, class-per-folder tree or folder of plain images; ``None``: a simulated site.
        target_simulation: ``{severity, fraction, seed}`` of the simulated site (see :mod:`medtl.data.shift`).
        target_eval_fraction: share of the labelled target's patients kept for evaluation only.
        sites_dir: where simulated sites are written.
        Every other argument is :class:`ImageClassificationData`'s and describes the source.
    """

    def __init__(self, source: str | None = None, target: str | None = None, target_simulation: dict | None = None,
                 target_eval_fraction: float = 0.5, sites_dir: str = "~/.cache/medtl/sites", **kwargs: object) -> None:
        if source:
            if not Path(source).expanduser().exists():
                raise MedtlError(f"data.source={source} does not exist; point data.source at a labelled manifest "
                                 "CSV or class-per-folder tree (paths are relative to where you run medtl)")
            kwargs["manifest" if str(source).lower().endswith(".csv") else "root"] = source
        super().__init__(**kwargs)
        self.target = target
        self.target_simulation = {"severity": "strong", "fraction": 0.3, "seed": 0, **(target_simulation or {})}
        if not 0.0 < target_eval_fraction < 1.0:
            raise MedtlError(f"data.target_eval_fraction={target_eval_fraction} must be in (0, 1)")
        self.target_eval_fraction, self.sites_dir = target_eval_fraction, sites_dir
        self.target_frame: pd.DataFrame | None = None
        self.target_root: Path | None = None

    def _load_frame(self) -> pd.DataFrame:
        frame = super()._load_frame()
        if self.target:
            found = Inventory()
            target = apply_label_map(read_target_frame(self.target, self.patient_id_patterns, found,
                                                       self.pipeline.scan_folder), self.label_map, "data.label_map")
            if found.others:
                log.warning("target %s: %s; listed in skipped_files.csv", self.target, found.summary())
                self.skipped = pd.concat([self.skipped, found.frame().assign(status=lambda f: "target " + f["status"])],
                                         ignore_index=True)
        else:
            sim = self.target_simulation
            frame, target = simulated_site(frame, self.sites_dir, str(sim["severity"]), float(sim["fraction"]),
                                           int(sim["seed"]), self.pipeline)
        self.target_frame = target
        self.target_root = _target_folder(self.target, target)
        return frame

    def _name_sets(self) -> list[tuple[pd.DataFrame, Path | None]]:
        target = self.target_frame if self.target_frame is not None else pd.DataFrame(columns=["path", "patient_id"])
        return [*super()._name_sets(), (target, self.target_root)]

    def setup(self, validate: bool = True) -> pd.DataFrame:
        """Source as :meth:`ImageClassificationData.setup`; the target split into ``adapt`` and ``test``."""
        frame = super().setup(validate)
        self.target_frame = self._split_target(self.target_frame)
        log.info("target: %s", self.target_summary())
        return frame

    @property
    def target_labelled(self) -> bool:
        return self._require_target()["label"].ne("").all()

    def target_summary(self) -> dict[str, int]:
        """Target image counts per split (``adapt``/``test``) and class; no identifiers."""
        counts = self._require_target().groupby(["split", "label"]).size()
        return {f"n_images.target_{split}.{label or 'unlabelled'}": int(n) for (split, label), n in counts.items()}

    def summary(self) -> dict[str, int]:
        return {**super().summary(), **self.target_summary()}

    def target_loader(self, weights: WeightsInfo, split: str, augment: bool) -> DataLoader:
        """Target images of ``split`` (``adapt`` or ``test``), shuffled and augmented when ``augment``."""
        return self.loader(self.dataset(split, self.transform(weights, augment), weights, self._require_target()),
                           shuffle=augment, collate=self.collation(weights, augment))

    def oracle_loaders(self, weights: WeightsInfo, augment: bool = True) -> tuple[DataLoader, DataLoader]:
        """``target_oracle``: train on labelled target ``adapt`` patients, validate on a disjoint part of them."""
        if not self.target_labelled:
            raise MedtlError("adaptation=target_oracle needs target labels; give data.target a labelled "
                             "manifest or class-per-folder tree")
        adapt = self._require_target().query("split == 'adapt'")
        held_out = stratified_group_holdout(adapt, self.val_fraction, self.split_seed, key="data.val_fraction")
        frame = adapt.assign(split="train")
        frame.loc[held_out, "split"] = "val"
        train = self.dataset("train", self.transform(weights, augment), weights, frame)
        val = self.dataset("val", self.transform(weights, augment=False), weights, frame)
        collate = self.collation(weights, augment)
        return self.loader(train, shuffle=True, collate=collate), self.loader(val, shuffle=False)

    def _split_target(self, target: pd.DataFrame) -> pd.DataFrame:
        unknown = sorted(set(target["label"]) - {""} - set(self.classes))
        if unknown:
            raise MedtlError(f"target labels {unknown} are not source classes {self.classes}; map them with "
                             "data.label_map or fix the target")
        if target["label"].eq("").any():
            return target.assign(split="adapt")
        if "split" in target.columns and target["split"].eq("test").any():
            return target.assign(split=target["split"].where(target["split"] == "test", "adapt"))
        test = stratified_group_holdout(target, self.target_eval_fraction, self.split_seed,
                                        key="data.target_eval_fraction")
        split = pd.Series("adapt", index=target.index)
        split.loc[test] = "test"
        return target.assign(split=split)

    def _require_target(self) -> pd.DataFrame:
        if self.target_frame is None or "split" not in self.target_frame.columns:
            raise RuntimeError("call setup() before using the target data")
        return self.target_frame


@dataclass
class RunLoaders:
    """Every loader a run needs. ``train``/``val`` fit the model and pick its epoch; ``source_val`` gives
    the source metrics; ``target_train`` feeds unlabelled target batches to a method that needs them;
    ``target_eval`` (target ``adapt`` images, deterministic) feeds ``adapt()`` (AdaBN) and the feature
    picture; ``target_test`` is the labelled target evaluation (``None`` when the target is unlabelled);
    ``source_test`` the source's ``test`` split (``None`` without one), evaluated at the validation threshold."""

    train: DataLoader
    val: DataLoader
    source_val: DataLoader
    source_test: DataLoader | None = None
    target_train: DataLoader | None = None
    target_eval: DataLoader | None = None
    target_test: DataLoader | None = None


def run_loaders(data: ImageClassificationData, weights: WeightsInfo, augment: bool, method: str,
                needs_target: bool, trains_on_target_labels: bool) -> RunLoaders:
    """The loaders for adaptation ``method`` (its ``needs_target``/``trains_on_target_labels`` flags)."""
    if not isinstance(data, DomainAdaptationData):
        if method != "none":
            raise MedtlError(f"adaptation={method} needs a target domain; use a data config with a target "
                             "(data=chest_xray_da, or +experiment=chest_xray_da / brain_mri_da)")
        train, val = data.loaders(weights, augment)
        return RunLoaders(train, val, val, _source_test(data, weights))
    source_val = data.loader(data.dataset("val", data.transform(weights, augment=False), weights), shuffle=False)
    if trains_on_target_labels:
        train, val = data.oracle_loaders(weights, augment)
    else:
        train = data.train_loader(data.dataset("train", data.transform(weights, augment), weights),
                                  data.collation(weights, augment))
        val = source_val
    return RunLoaders(
        train, val, source_val, _source_test(data, weights),
        target_train=data.target_loader(weights, "adapt", augment=augment) if needs_target else None,
        target_eval=data.target_loader(weights, "adapt", augment=False),
        target_test=data.target_loader(weights, "test", augment=False) if data.target_labelled else None)


def _source_test(data: ImageClassificationData, weights: WeightsInfo) -> DataLoader | None:
    """The source's ``test`` split (rows a manifest marks ``split=test``), deterministic; ``None`` without one."""
    if not data.has_split("test"):
        return None
    return data.loader(data.dataset("test", data.transform(weights, augment=False), weights), shuffle=False)
