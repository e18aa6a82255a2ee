"""From a data source (manifest, class-per-folder tree or the built-in demo) to MONAI data loaders."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import pandas as pd
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.transforms import Randomizable
from torch.utils.data import Sampler, WeightedRandomSampler

from medtl.data.cache import CheckedPersistentDataset, refuse_if_memory_short
from medtl.data.inventory import REFUSED, Inventory
from medtl.data.manifest import read_manifest, scan_tree
from medtl.data.pseudonym import CaseNames
from medtl.data.readers import DEFAULT_MAX_PIXELS, DicomOptions
from medtl.data.reviews import ReviewSummary, apply_reviews
from medtl.data.split import assign_validation_split, subsample_patients
from medtl.data.dicom_series import SERIES_MARK
from medtl.data.pipelines import ImagePipeline, RadiographPipeline
from medtl.data.transforms import AugmentConfig, IntensityConfig
from medtl.errors import MedtlError, find_user_error
from medtl.models.registry import WeightsInfo

if TYPE_CHECKING:
    from medtl.data.check import CheckReport

__all__ = ["ImageClassificationData", "load_source_frame", "source_folder", "class_order", "apply_label_map", "check_labels"]

log = logging.getLogger(__name__)


class ImageClassificationData:
    """A labelled image set split by patient into train and val, served as MONAI loaders.

    Args:
        root: class-per-folder tree (``root/<CLASS>/*`` or ``root/<split>/<CLASS>/*``).
        manifest: manifest CSV (wins over ``root``).
        demo: when neither ``root`` nor ``manifest`` is set, the built-in synthetic DICOM set
            (``DemoSpec`` fields) generated under ``demo_dir``; ``None`` makes a source mandatory.
        positive_class: for two classes, the class whose probability is the score.
        max_images: keep about this many images (whole patients, labels in proportion).
        label_map: rename labels (e.g. several tumour types to ``tumour``); every label must be a key.
        classes: the class names the data must have; any other label stops the run, naming it and its rows.
            When null, ``positive_class`` makes the task binary: exactly two labels, one of them it.
        max_pixels: a file declaring more pixels is refused before it is decoded.
        allow_outside_root: let manifest paths and tree links point outside the data's folder.
        reviews: a review CSV (data_manifests/reviews/README.md): its corrected labels replace the images' labels
            and images it marks unusable are left out; what it changed is logged with the run.
        pipeline: the :class:`~medtl.data.pipelines.ImagePipeline` for the kind of input (``data.pipeline``);
            by default radiographs with ``image_size``, ``intensity``, ``augment``, ``dicom`` and ``max_pixels``.
    """

    def __init__(self, root: str | None = None, manifest: str | None = None, demo: dict | None = None,
                 demo_dir: str = "~/.cache/medtl/demo", positive_class: str | None = None,
                 patient_id_patterns: Sequence[str] = (), val_fraction: float = 0.2, split_seed: int = 0,
                 max_images: int | None = None, image_size: int = 224, batch_size: int = 32,
                 num_workers: int | str = 0, cache: str = "memory", cache_dir: str = "~/.cache/medtl/images",
                 cache_workers: int = 2,
                 intensity: dict | None = None, augment: dict | None = None, dicom: dict | None = None,
                 check: bool = True, on_error: str = "raise", train_fraction: float = 1.0,
                 train_subset_seed: int = 0, label_map: dict[str, str] | None = None,
                 classes: Sequence[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 allow_outside_root: bool = False, reviews: str | None = None,
                 pipeline: ImagePipeline | None = None, sampling: str = "shuffle") -> None:
        self.root, self.manifest, self.demo, self.demo_dir = root, manifest, demo, demo_dir
        if sampling not in ("shuffle", "balanced"):
            raise MedtlError(f"data.sampling='{sampling}' is unknown; use shuffle or balanced")
        self.sampling = sampling
        self.positive_class, self.patient_id_patterns = positive_class, list(patient_id_patterns)
        self.val_fraction, self.split_seed, self.max_images = val_fraction, split_seed, max_images
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, loader_workers(num_workers)
        if cache not in ("memory", "disk", "none"):
            raise MedtlError(f"data.cache='{cache}' is unknown; use memory, disk or none")
        self.cache, self.cache_dir, self.cache_workers = cache, cache_dir, cache_workers
        self.intensity = IntensityConfig(**(intensity or {}))
        self.augment = AugmentConfig(**(augment or {}))
        self.dicom = DicomOptions(**(dicom or {}))
        if on_error not in ("raise", "skip"):
            raise MedtlError(f"data.on_error='{on_error}' is unknown; use raise or skip")
        self.check, self.on_error = check, on_error
        if not 0.0 < train_fraction <= 1.0:
            raise MedtlError(f"data.train_fraction={train_fraction} must be in (0, 1]")
        self.train_fraction, self.train_subset_seed = train_fraction, train_subset_seed
        self.label_map = dict(label_map) if label_map else None
        self.expected_classes = [str(c) for c in classes] if classes else None
        self.max_pixels, self.allow_outside_root = int(max_pixels), bool(allow_outside_root)
        self.pipeline = pipeline if pipeline is not None else RadiographPipeline(
            image_size, asdict(self.intensity), asdict(self.augment), asdict(self.dicom), self.max_pixels)
        self.reviews = reviews
        self.review_summary: ReviewSummary | None = None
        self.source_root: Path | None = None  # the folder case names are relative to
        self._case_names: CaseNames | None = None
        self._loaded: pd.DataFrame | None = None  # every labelled row as read, before reviews drop any
        self.inventory = Inventory()
        self.skipped = pd.DataFrame(columns=["path", "status", "reason"])
        self.frame: pd.DataFrame | None = None
        self.classes: list[str] = []

    def setup(self, validate: bool = True) -> pd.DataFrame:
        """Read the source, split it by patient and check both splits can train and evaluate.

        With ``validate=False`` (for ``medtl.data.check``, which reports problems instead of stopping
        at the first) a source whose splits are broken is returned as it is.
        """
        self._stop_on_refused = validate and self.on_error == "raise"  # medtl.data.check reports them instead
        frame = self._load_frame()
        try:
            frame = assign_validation_split(frame, self.val_fraction, self.split_seed)
        except MedtlError:
            if validate:
                raise
            frame = frame.assign(split=frame["split"] if "split" in frame.columns else "train")
        if self.max_images:
            frame = subsample_patients(frame, self.max_images, self.split_seed)
        if self.train_fraction < 1.0:  # fewer labels; validation stays as it is
            train = frame[frame["split"] == "train"]
            kept = subsample_patients(train, max(2, round(self.train_fraction * len(train))), self.train_subset_seed)
            frame = frame.drop(train.index.difference(kept.index))
        if validate:
            self.classes = class_order(frame.loc[frame["split"] == "train", "label"], self.positive_class)
            _check_val_labels(frame, self.classes)
            log.info("data: %s", self.summary_of(frame))
        self.frame = frame
        return frame

    def _load_frame(self) -> pd.DataFrame:
        """The labelled source frame, labels mapped through ``label_map`` and checked against the expected classes;
        every file of a tree that is not used is in ``self.inventory`` (and, with ``on_error=raise``, a refused
        path stops the run)."""
        frame, self.inventory = load_source_frame(self.root, self.manifest, self.demo, self.demo_dir,
                                                  self.patient_id_patterns, self.allow_outside_root, self.pipeline)
        self.source_root = source_folder(self.root, self.manifest, frame)
        refused = [o for o in self.inventory.others if o["status"] == REFUSED]
        if refused and getattr(self, "_stop_on_refused", self.on_error == "raise"):
            raise MedtlError(f"{len(refused)} path(s) refused under the data folder, first: {refused[0]['path']}: "
                             f"{refused[0]['reason']} (or set data.on_error=skip to train without them)")
        if self.inventory.others:
            log.warning("data: %s; listed in skipped_files.csv", self.inventory.summary())
            self.skipped = pd.concat([self.skipped, self.inventory.frame()], ignore_index=True)
        frame = apply_label_map(frame, self.label_map, "data.label_map")
        check_labels(frame, self.expected_classes, self.positive_class, self.manifest or self.root or "the demo")
        self._loaded = frame
        if self.reviews:
            frame, self.review_summary = apply_reviews(frame, self.reviews, self.case_names())
            log.info("data.reviews=%s: %d reviewed case(s), %d label(s) changed, %d image(s) left out",
                     self.reviews, self.review_summary.reviewed, self.review_summary.changed_labels,
                     self.review_summary.dropped)
        return frame

    @property
    def all_rows(self) -> pd.DataFrame:
        """Every labelled source row as read (labels mapped), before reviews leave any out or splits are made."""
        if self._loaded is None:
            raise RuntimeError("call setup() before using the data")
        return self._loaded

    def case_names(self) -> CaseNames:
        """Names without patient identifiers for every file of this run (:mod:`medtl.data.pseudonym`)."""
        if self._case_names is None:
            self._case_names = CaseNames(self._name_sets(), self.patient_id_patterns)
        return self._case_names

    def _name_sets(self) -> list[tuple[pd.DataFrame, Path | None]]:
        return [(self.all_rows, self.source_root)]

    def case_table(self, predictions: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
        """A predictions table (``path, label, ...``) as it leaves the run: ``case`` for the path, the patient's
        pseudonym, and the image's split and ``domain``/``site`` when ``rows`` (the source frame by default) has them."""
        rows = self._require_setup() if rows is None else rows
        extra = [c for c in ("patient_id", "split", "domain", "site") if c in rows.columns]
        facts = rows.drop_duplicates("path").set_index("path")[extra]
        table = predictions.join(facts, on="path")
        return self.case_names().frame(table)

    def run_checks(self, report: CheckReport | None = None) -> CheckReport | None:
        """Read every image once (``medtl.data.check``; or take ``report``, the check another process ran on the
        same data) and apply ``on_error`` to unreadable ones. Each image's collection (the manifest's
        ``domain``/``site``, else inferred from label-free properties) becomes the frame's ``collection`` column.

        ``raise`` stops at unreadable images with one line naming the first; ``skip`` drops them and
        keeps them in ``self.skipped``. Returns the report, or ``None`` when ``check`` is off.
        """
        report = self.inspect() if report is None else report
        if report is None:
            return report
        if report.image_collections:  # what group-aware training balances over (medtl.data.shortcuts)
            frame = self._require_setup()
            self.frame = frame.assign(collection=frame["path"].map(report.image_collections))
        if not report.unreadable:
            return report
        unreadable = pd.DataFrame(report.unreadable).assign(status="unreadable")
        self.skipped = pd.concat([self.skipped, unreadable], ignore_index=True)
        log.warning("skipping %d unreadable image(s); listed in skipped_files.csv", len(unreadable))
        frame = self._require_setup()
        self.frame = frame[~frame["path"].isin(unreadable["path"])].reset_index(drop=True)
        self.classes = class_order(self.frame.loc[self.frame["split"] == "train", "label"], self.positive_class)
        _check_val_labels(self.frame, self.classes)
        return report

    def inspect(self) -> CheckReport | None:
        """The data check's report (problems and warnings logged); one line naming the first unreadable image
        under ``on_error=raise``; ``None`` when ``check`` is off."""
        if not self.check:
            return None
        from medtl.data.check import check_frame  # imported here: ``python -m medtl.data.check`` runs that module

        report, _ = check_frame(self._require_setup(), progress=True, inventory=self.inventory, pipeline=self.pipeline)
        if report.unreadable and self.on_error == "raise":
            raise MedtlError(f"{len(report.unreadable)} unreadable image(s), first: {report.unreadable[0]['reason']} "
                             "(or set data.on_error=skip to train without them)")
        for message in report.problems + report.warnings:
            log.warning("data check: %s", message)
        return report

    def has_split(self, split: str) -> bool:
        """Whether the source has rows of ``split`` (``test`` rows are evaluated at the end, never trained on)."""
        return bool((self._require_setup()["split"] == split).any())

    @property
    def positive_index(self) -> int | None:
        """Index of the positive class for a binary task, else ``None``."""
        return 1 if len(self.classes) == 2 else None

    def summary(self) -> dict[str, int]:
        """Image and patient counts per split and class, and what happened to every input file (no identifiers)."""
        unreadable = int(self.skipped["status"].eq("unreadable").sum()) if len(self.skipped) else 0
        return {**self.summary_of(self._require_setup()), **self.inventory.counts(), "inputs.unreadable": unreadable}

    @staticmethod
    def summary_of(frame: pd.DataFrame) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (split, label), group in frame.groupby(["split", "label"]):
            counts[f"n_images.{split}.{label}"] = len(group)
        for split, group in frame.groupby("split"):
            counts[f"n_patients.{split}"] = group["patient_id"].nunique()
        return counts

    def loaders(self, weights: WeightsInfo, augment: bool = True) -> tuple[DataLoader, DataLoader]:
        """Training (shuffled; augmented unless ``augment=False``) and validation loaders for ``weights``."""
        train_ds = self.dataset("train", self.transform(weights, augment), weights)
        val_ds = self.dataset("val", self.transform(weights, augment=False), weights)
        return self.train_loader(train_ds, self.collation(weights, augment)), self.loader(val_ds, shuffle=False)

    def train_loader(self, dataset: Dataset, collate: Callable | None = None) -> DataLoader:
        """Batches of the ``train`` split's ``dataset``: shuffled, or with ``sampling=balanced`` drawn with
        replacement so that every collection x class group (the frame's ``collection`` column, which the data
        check fills) is equally likely; an epoch is still one training set's worth of images. ``collate``: see
        :meth:`collation`."""
        if self.sampling == "shuffle":
            return self.loader(dataset, shuffle=True, collate=collate)
        rows = self._require_setup().query("split == 'train'")
        if "collection" not in rows.columns or rows["collection"].isna().any():
            raise MedtlError("data.sampling=balanced needs each training image's collection, which the data check "
                             "gives: set data.check=true (or add a domain column to the manifest)")
        groups = rows["collection"].astype(str) + "|" + rows["label"].astype(str)
        weights = 1.0 / groups.map(groups.value_counts()).to_numpy(dtype=float)  # (N,): 1 / the group's size
        return self.loader(dataset, shuffle=False, collate=collate,
                           sampler=WeightedRandomSampler(torch.as_tensor(weights), len(rows), replacement=True))

    def transform(self, weights: WeightsInfo, augment: bool) -> Any:
        """The pipeline's training (random part after the cached deterministic part) or evaluation transforms."""
        storage = np.float16 if self.cache == "disk" else np.float32
        if augment:
            return self.pipeline.train_transforms(weights, storage)
        return self.pipeline.eval_transforms(weights, storage)

    def collation(self, weights: WeightsInfo, augment: bool) -> Callable | None:
        """The augmented training loader's collation when the pipeline draws part of the augmentation once per
        batch (``data.augment.acquisition_per_batch``); ``None``: MONAI's."""
        return self.pipeline.batch_augmentation(weights) if augment else None

    def loader(self, dataset: Dataset, shuffle: bool, sampler: Sampler | None = None,
               collate: Callable | None = None) -> DataLoader:
        """Batches of ``dataset`` (in ``sampler``'s order when given, collated by ``collate`` when given); on a CUDA
        machine in pinned memory, so copies to the GPU overlap compute."""
        if collate is not None and isinstance(collate, Randomizable):
            collate.set_random_state(seed=int(torch.randint(2**31 - 1, ())))  # from the run's seed, as MONAI's
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, collate_fn=collate or list_data_collate)

    def items(self, split: str, frame: pd.DataFrame | None = None) -> list[dict[str, Any]]:
        """Dataset items of ``split`` of ``frame`` (the source by default):
        ``{"image": path, "path": path, "label": class index, or -1 for an unlabelled image}``."""
        frame = self._require_setup() if frame is None else frame
        rows = frame[frame["split"] == split]
        return [{"image": p, "path": p, "label": self.classes.index(lbl) if lbl else -1}
                for p, lbl in zip(rows["path"], rows["label"])]

    def dataset(self, split: str, transform: Any, weights: WeightsInfo, frame: pd.DataFrame | None = None) -> Dataset:
        """Items of ``split`` through ``transform``, cached as ``data.cache`` says (memory, disk or none)."""
        items = self.items(split, frame)
        if not items:
            raise MedtlError(f"the '{split}' split has no images; check the data source and its split settings")
        if self.cache == "none":
            return Dataset(items, transform)
        if self.cache == "disk":
            return self._persistent(items, transform, weights)
        try:
            refuse_if_memory_short(split, items, transform)
            return CacheDataset(items, transform, cache_rate=1.0, num_workers=self.cache_workers, progress=True)
        except Exception as exc:  # MONAI wraps transform errors; surface the user error it carries
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            raise user_error from None

    def _persistent(self, items: list[dict[str, Any]], transform: Any, weights: WeightsInfo) -> CheckedPersistentDataset:
        """A disk cache whose key covers the file (path, size, mtime) and every deterministic setting."""
        # The chain of transforms is part of the key: a file cached by the training transforms (not normalised) must
        # never be served to evaluation (normalised), which happens whenever a file changes split between runs.
        chain = "|".join(type(t).__name__ for t in getattr(transform, "transforms", ()))
        signature = f"{self.pipeline.cache_signature(weights)}|{hashlib.sha256(chain.encode()).hexdigest()[:12]}"
        for item in items:
            stat = os.stat(item["path"].partition(SERIES_MARK)[0])
            item["cache_key"] = f"{signature}|{stat.st_size}|{stat.st_mtime_ns}"
        cache_dir = Path(self.cache_dir).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        return CheckedPersistentDataset(items, transform, cache_dir=cache_dir)

    def _require_setup(self) -> pd.DataFrame:
        if self.frame is None:
            raise RuntimeError("call setup() before using the data")
        return self.frame


def loader_workers(setting: int | str) -> int:
    """``data.num_workers``: a count, or ``auto``: none on a machine without CUDA (on the 2-core CPU, workers
    compete with the model for the cores), else one per spare core up to 8, so the GPU is not left waiting."""
    if setting == "auto":
        return 0 if not torch.cuda.is_available() else max(0, min(8, (os.cpu_count() or 1) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise MedtlError(f"data.num_workers={setting!r} must be a count >= 0 or auto")
    return setting


def source_folder(root: str | None, manifest: str | None, frame: pd.DataFrame) -> Path:
    """The folder a source's case names are relative to: ``root``, else the manifest's folder (the demo's too)."""
    if root:
        return Path(root).expanduser()
    if manifest:
        return Path(manifest).expanduser().parent
    return Path(os.path.commonpath(list(frame["path"]))) if len(frame) > 1 else Path(frame["path"].iloc[0]).parent


def load_source_frame(root: str | None, manifest: str | None, demo: dict | None, demo_dir: str,
                      patient_id_patterns: Sequence[str], allow_outside_root: bool = False,
                      pipeline: ImagePipeline | None = None) -> tuple[pd.DataFrame, Inventory]:
    """The manifest frame of whichever source is configured (manifest, then root, then the pipeline's demo) and
    the inventory of the files a tree holds besides its inputs (empty for manifests: every row is used or refused)."""
    pipeline = pipeline if pipeline is not None else RadiographPipeline()
    if manifest:
        frame = read_manifest(manifest, root=root, allow_outside_root=allow_outside_root)
    elif root:
        return scan_tree(root, patient_id_patterns, allow_outside_root, pipeline.scan_folder)
    elif demo is not None:
        frame = read_manifest(pipeline.demo(demo_dir, dict(demo)))
    else:
        raise MedtlError("no data source: set data.root=<class-per-folder tree> or data.manifest=<csv>, "
                         "or run +experiment=chest_xray for the built-in demo")
    return frame, Inventory(used=[Path(p) for p in frame["path"].drop_duplicates()])


def apply_label_map(frame: pd.DataFrame, label_map: dict[str, str] | None, key: str) -> pd.DataFrame:
    """``frame`` with its labels renamed by ``label_map`` (empty labels, i.e. unlabelled images, stay empty)."""
    if not label_map:
        return frame
    labels = set(frame["label"]) - {""}
    unmapped = sorted(labels - set(label_map))
    if unmapped:
        raise MedtlError(f"labels {unmapped} have no entry in {key}; add them (the map has {sorted(label_map)})")
    return frame.assign(label=[label_map.get(label, label) for label in frame["label"]])


def check_labels(frame: pd.DataFrame, expected: Sequence[str] | None, positive_class: str | None, source: str) -> None:
    """Stop before training when the labels are not the configured classes, naming the values and their rows.

    ``expected`` lists every allowed class. Without it, a ``positive_class`` means a binary task: the positive
    class and one other, the most frequent; any further label (``pneumonia `` beside ``PNEUMONIA``, ``COVID``)
    is an error rather than a silent extra class.
    """
    counts = frame.loc[frame["label"] != "", "label"].value_counts()
    if positive_class and positive_class not in counts.index:
        raise MedtlError(f"data.positive_class='{positive_class}' is not among the labels {sorted(counts.index)} of "
                         f"{source}; fix data.positive_class or the labels")
    if expected:
        unknown, wanted = [label for label in counts.index if label not in expected], f"data.classes={list(expected)}"
    elif positive_class:
        others = [label for label in counts.index if label != positive_class]
        unknown, wanted = others[1:], f"a binary task ('{positive_class}' and '{others[0] if others else '?'}')"
    else:
        return
    if unknown:
        detail = "; ".join(f"'{label}' ({counts[label]} rows, first {_rows_of(frame, label)})" for label in sorted(unknown))
        raise MedtlError(f"{source} has labels outside {wanted}: {detail}; fix the labels, map them with "
                         "data.label_map, or list every class in data.classes")


def _rows_of(frame: pd.DataFrame, label: str) -> str:
    """Where ``label`` first occurs: its manifest row (counting the header, as a spreadsheet shows it) and path."""
    first = frame.index[frame["label"] == label][0]
    return f"row {first + 2}: {frame.at[first, 'path']}"


def class_order(labels: pd.Series, positive_class: str | None) -> list[str]:
    """Sorted class names, with ``positive_class`` last for a binary task."""
    classes = sorted(labels.unique())
    if len(classes) < 2:
        raise MedtlError(f"the training split has a single class {classes}; a classifier needs at least two: "
                         "check the labels in the manifest or the class folders")
    if len(classes) == 2 and positive_class:
        if positive_class not in classes:
            raise MedtlError(f"data.positive_class='{positive_class}' is not one of the classes {classes}; fix it")
        classes = [c for c in classes if c != positive_class] + [positive_class]
    return classes


def _check_val_labels(frame: pd.DataFrame, classes: list[str]) -> None:
    val_labels = set(frame.loc[frame["split"] == "val", "label"])
    unknown = val_labels - set(classes)
    if unknown:
        raise MedtlError(f"validation labels {sorted(unknown)} never occur in training; fix the manifest's split")
    if len(val_labels) < 2:
        raise MedtlError(f"the validation split has classes {sorted(val_labels)}; it needs at least two to "
                         "compute AUROC: raise data.val_fraction or add images")
