"""Data checks before training: ``python -m medtl.data.check <manifest.csv | Hydra overrides>``.

Reads every image once and reports what would corrupt training or evaluation (unreadable files,
patients or duplicate images that cross splits, a split with one class) and what would make
results misleading (a *shortcut*: label-free image properties that predict the label).

    python -m medtl.data.check data_manifests/site_a.csv
    python -m medtl.data.check +experiment=chest_xray data.root=../shared/data/chest_xray_kermany
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pydicom
from PIL import Image
from tqdm.auto import tqdm

from medtl.atomic import write_text_atomic
from medtl.data.inventory import Inventory, sniff
from medtl.data.readers import DEFAULT_MAX_PIXELS, DicomOptions, LoadRadiograph
from medtl.data.shortcuts import (
    COLLECTION_COLUMNS,
    ShortcutProbe,
    collection_warnings,
    describe_collections,
    facts_table,
    imbalanced_collections,
    infer_collections,
    probe_shortcut,
)

if TYPE_CHECKING:
    from medtl.data.pipelines import ImagePipeline
from medtl.errors import MedtlError, exit_on_user_error

__all__ = ["ImageFacts", "CheckReport", "inspect_image", "check_frame", "near_hash_pairs", "main"]

SHORTCUT_WARNING_AUROC = 0.8
HASH_SIDE = 16  # difference hash of a 16 x 17 area-averaged thumbnail: 256 bits
# On the 5,216 Kermany training images, pairs within 8 of 256 bits all share their label; the first
# cross-label pair (a likely false positive) appears at 16. The 64-bit hash was far too coarse for CXRs.
NEAR_DUPLICATE_BITS = 8
MAX_PRINTED = 15
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
# Acquisition tags only: never patient-identifying ones.
ACQUISITION_TAGS = ("Manufacturer", "ManufacturerModelName", "ViewPosition", "Modality", "PhotometricInterpretation")


@dataclass
class ImageFacts:
    """Label-free facts about one image (no identifiers besides its path)."""

    path: str
    readable: bool
    reason: str = ""
    height: int = 0
    width: int = 0
    pixel_hash: str = ""
    dhash: str = ""
    features: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class CheckReport:
    counts: dict[str, int]
    unreadable: list[dict[str, str]]
    exact_duplicates: list[list[str]]
    near_duplicates: list[list[str]]
    leaks: list[str]
    problems: list[str]
    warnings: list[str]
    shortcut_auroc: float | None
    sizes: dict[str, int]
    photometric: dict[str, int]
    inputs: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    # property group -> AUROC the shortcut probe loses without it (medtl.data.shortcuts.probe_shortcut)
    shortcut_properties: dict[str, float] = field(default_factory=dict)
    # per collection: name, images, labels, distinguishing properties (medtl.data.shortcuts.describe_collections)
    collections: list[dict[str, Any]] = field(default_factory=list)
    collections_from: str = ""  # "inferred from image properties" or "manifest column <name>"
    image_collections: dict[str, str] = field(default_factory=dict)  # path -> its collection's name

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def shortcut_found(self) -> bool:
        """Whether label-free properties predict the label, or a collection's labels differ from the rest."""
        return bool(self.shortcut_findings())

    def shortcut_findings(self) -> list[str]:
        """``["shortcut probe AUROC 0.995", "2 collection(s) whose labels differ"]``, or nothing."""
        found = [] if self.shortcut_auroc is None or self.shortcut_auroc <= SHORTCUT_WARNING_AUROC else [
            f"shortcut probe AUROC {self.shortcut_auroc:.3f}"]
        following = len(imbalanced_collections(self.collections))
        return found + ([f"{following} collection(s) whose labels differ"] if following else [])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def summary(self) -> dict[str, float]:
        """Numbers worth logging with a training run."""
        return {"data_check/unreadable": len(self.unreadable), "data_check/exact_duplicates": len(self.exact_duplicates),
                "data_check/near_duplicates": len(self.near_duplicates), "data_check/leaks": len(self.leaks),
                "data_check/shortcut_auroc": float("nan") if self.shortcut_auroc is None else self.shortcut_auroc}


def inspect_image(path: str, loader: LoadRadiograph) -> ImageFacts:
    """Decode ``path`` as training would and compute its label-free facts; never raises for bad files."""
    try:
        image = np.asarray(loader(path))[0]  # (1, H, W) -> (H, W)
    except MedtlError as exc:
        return ImageFacts(path, readable=False, reason=str(exc))
    height, width = image.shape[-2:]
    unit = _unit_range(image)
    return ImageFacts(path, readable=True, height=int(height), width=int(width),
                      pixel_hash=hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest(),
                      dhash=_difference_hash(unit), features=_image_features(unit, height, width),
                      tags=_acquisition_tags(path))


def check_frame(frame: pd.DataFrame, dicom: DicomOptions = DicomOptions(), probe: bool = True,
                progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                inventory: Inventory | None = None, pipeline: ImagePipeline | None = None,
                ) -> tuple[CheckReport, list[ImageFacts]]:
    """Check a manifest frame (``path, label, patient_id[, split]``); return the report and per-image facts.

    Without a ``split`` column, duplicates shared by two patients are warned about: the patient-level split
    that training makes could put one copy on each side. ``inventory`` (the files a tree held besides its
    images) is reported with the counts. ``pipeline`` reads the inputs and says which facts they have (a
    volume's shape, spacing and orientation); by default radiographs with ``dicom`` and ``max_pixels``.
    """
    if pipeline is None:
        from medtl.data.pipelines import RadiographPipeline

        pipeline = RadiographPipeline(dicom=asdict(dicom), max_pixels=max_pixels)
    paths = frame["path"].drop_duplicates()
    read = {p: pipeline.inspect(p) for p in tqdm(paths, desc="data check: reading", unit="image",
                                                  disable=not progress)}
    has_split = "split" in frame.columns
    frame = frame.assign(split=frame["split"] if has_split else "train").reset_index(drop=True)
    facts = [read[p] for p in frame["path"]]
    good = [i for i, f in enumerate(facts) if f.readable]
    exact = _group_by(frame, facts, good, key=lambda f: f.pixel_hash)
    near = _near_duplicate_pairs(frame, facts, good, progress)
    leaks = _split_leaks(frame, exact)
    problems = _problems(frame, facts, leaks) + _row_problems(frame, exact)
    shortcuts = _shortcut_findings(frame.iloc[good], [facts[i] for i in good]) if probe else ShortcutFindings()
    shortcut = shortcuts.probe.auroc if shortcuts.probe else None
    warnings = [f"near-duplicate {leak} (may be a false match: look at them)" for leak in _split_leaks(frame, near)
                if leak.startswith("duplicate")]
    warnings += [] if has_split else _cross_patient_duplicates(frame, exact)
    warnings += [] if shortcut is None or shortcut <= SHORTCUT_WARNING_AUROC else [
        f"shortcut probe AUROC {shortcut:.3f} > {SHORTCUT_WARNING_AUROC}: label-free image properties (size or "
        "shape, spacing, orientation, intensity histogram, borders, acquisition tags) predict the label; a model "
        "may learn where images came from (or how they were acquired) instead of what they show"]
    warnings += shortcuts.warnings
    readable = [facts[i] for i in good]
    report = CheckReport(
        counts=_counts(frame), unreadable=[{"path": f.path, "reason": f.reason} for f in facts if not f.readable],
        exact_duplicates=exact, near_duplicates=near, leaks=leaks, problems=problems, warnings=warnings,
        shortcut_auroc=shortcut,
        sizes=pd.Series([f.tags.get("shape", f"{f.height}x{f.width}") for f in readable]).value_counts().to_dict(),
        photometric=pd.Series([f.tags.get("PhotometricInterpretation", "non-DICOM") for f in readable]).value_counts().to_dict(),
        inputs=(inventory if inventory is not None else Inventory(used=list(paths))).counts(),
        skipped=inventory.others if inventory is not None else [],
        shortcut_properties=shortcuts.probe.importances if shortcuts.probe else {},
        collections=shortcuts.collections, collections_from=shortcuts.source,
        image_collections=dict(zip(frame.loc[good, "path"], shortcuts.names)))
    return report, facts


def _row_problems(frame: pd.DataFrame, exact: list[list[str]]) -> list[str]:
    """A file listed twice, listed under two labels, or the same pixels under two labels."""
    problems = []
    for path, group in frame.groupby("path"):
        labels = sorted(set(group["label"]))
        if len(labels) > 1:
            problems.append(f"{path} is listed under {len(labels)} labels {labels}: decide on one")
        elif len(group) > 1:
            problems.append(f"{path} is listed {len(group)} times (rows {', '.join(str(i + 2) for i in group.index)}): "
                            "drop the copies")
    label_of = frame.groupby("path")["label"].first().to_dict()
    for paths in exact:
        labels = sorted({label_of[p] for p in paths})
        if len(labels) > 1:
            problems.append(f"identical images under labels {labels}: {', '.join(paths[:3])}")
    return problems


def _cross_patient_duplicates(frame: pd.DataFrame, exact: list[list[str]]) -> list[str]:
    patient_of = frame.groupby("path")["patient_id"].first().to_dict()
    return [f"identical images of different patients {sorted({patient_of[p] for p in paths})[:3]}: a patient-level "
            f"split could put them on both sides (no split column): {', '.join(paths[:3])}"
            for paths in exact if len({patient_of[p] for p in paths}) > 1]


def _unit_range(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def _difference_hash(unit: np.ndarray) -> str:
    """256-bit difference hash (hex) of an ``(H, W)`` image in [0, 1]: signs of horizontal gradients."""
    thumb = Image.fromarray(np.round(unit * 255).astype(np.uint8)).resize((HASH_SIDE + 1, HASH_SIDE), Image.BOX)
    pixels = np.asarray(thumb, dtype=np.int16)  # (16, 17), area-averaged
    return np.packbits(pixels[:, 1:] > pixels[:, :-1]).tobytes().hex()  # 256 bits -> 64 hex digits


def _image_features(unit: np.ndarray, height: int, width: int) -> dict[str, float]:
    """Label-free properties: size, aspect, intensity percentiles, border and background statistics."""
    border = np.concatenate([unit[:8].ravel(), unit[-8:].ravel(), unit[:, :8].ravel(), unit[:, -8:].ravel()])
    features = {"height": float(height), "width": float(width), "aspect": width / max(height, 1),
                "border_mean": float(border.mean()), "border_std": float(border.std()),
                "background_fraction": float((unit < 0.05).mean())}
    features.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(unit, PERCENTILES))})
    return features


def _acquisition_tags(path: str) -> dict[str, str]:
    if sniff(path) != "dicom":
        return {}
    header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(ACQUISITION_TAGS))
    return {tag: str(header.get(tag, "")) for tag in ACQUISITION_TAGS if header.get(tag) is not None}


def _group_by(frame: pd.DataFrame, facts: list[ImageFacts], rows: list[int], key: Any) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for i in rows:
        groups.setdefault(key(facts[i]), []).append(frame.at[i, "path"])
    return [paths for paths in groups.values() if len(paths) > 1]


def _near_duplicate_pairs(frame: pd.DataFrame, facts: list[ImageFacts], rows: list[int],
                          progress: bool = False) -> list[list[str]]:
    """Pairs whose difference hashes differ in at most NEAR_DUPLICATE_BITS bits (exact duplicates excluded), in
    row order."""
    if len(rows) < 2:
        return []
    hashes = np.array([np.frombuffer(bytes.fromhex(facts[i].dhash), np.uint8) for i in rows])  # (N, 32)
    pairs = near_hash_pairs(hashes, NEAR_DUPLICATE_BITS, progress)
    return [[frame.at[rows[a], "path"], frame.at[rows[b], "path"]] for a, b in pairs
            if facts[rows[a]].pixel_hash != facts[rows[b]].pixel_hash]


def near_hash_pairs(hashes: np.ndarray, max_distance: int, progress: bool = False) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, sorted, of packed bit strings ``hashes`` ``(N, bytes)`` within Hamming
    distance ``max_distance``: multi-index hashing (Norouzi et al. 2012). Cut every hash into ``max_distance + 1``
    pieces; two hashes that differ in at most ``max_distance`` bits agree exactly on at least one piece, so only
    hashes sharing a piece are compared. Time about linear in N for hashes of distinct images, instead of N^2 / 2
    comparisons (the 5,216 Kermany hashes: 13.6 million)."""
    bits = np.unpackbits(hashes, axis=1)  # (N, 8 * bytes)
    found: set[tuple[int, int]] = set()
    pieces = np.array_split(np.arange(bits.shape[1]), max_distance + 1)
    for piece in tqdm(pieces, desc="data check: near duplicates", unit="piece", disable=not progress):
        keys = bits[:, piece] @ (1 << np.arange(len(piece), dtype=np.int64))  # (N,) the piece as an integer
        order = np.argsort(keys, kind="stable")  # stable: rows with equal keys stay in ascending order
        starts = np.flatnonzero(np.diff(keys[order], prepend=-1))  # first index of each run of equal keys
        for group in np.split(order, starts[1:]):
            if len(group) > 1:
                found.update(_close_pairs(hashes, group, max_distance))
    return sorted(found)


def _close_pairs(packed: np.ndarray, group: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Pairs of the rows ``group`` (ascending) of ``packed`` ``(N, bytes)`` within ``max_distance`` bits."""
    close = []
    for position, a in enumerate(group[:-1]):
        others = group[position + 1:]
        distance = np.bitwise_count(packed[others] ^ packed[a]).sum(axis=1)  # (len(others),)
        close.extend((int(a), int(b)) for b in others[distance <= max_distance])
    return close


def _split_leaks(frame: pd.DataFrame, duplicate_groups: list[list[str]]) -> list[str]:
    leaks = []
    for patient, group in frame.groupby("patient_id"):
        if group["split"].nunique() > 1:
            leaks.append(f"patient '{patient}' is in splits {sorted(group['split'].unique())}")
    split_of = dict(zip(frame["path"], frame["split"]))
    for paths in duplicate_groups:
        splits = sorted({split_of[p] for p in paths})
        if len(splits) > 1:
            leaks.append(f"duplicate images in splits {splits}: {', '.join(paths[:3])}")
    return leaks


def _problems(frame: pd.DataFrame, facts: list[ImageFacts], leaks: list[str]) -> list[str]:
    problems = [f"{sum(not f.readable for f in facts)} unreadable image(s), first: "
                f"{next(f.reason for f in facts if not f.readable)}"] if any(not f.readable for f in facts) else []
    problems += leaks
    for split, group in frame.groupby("split"):
        if split in ("train", "val") and group["label"].nunique() < 2:
            problems.append(f"split '{split}' has a single class {sorted(group['label'].unique())}")
    return problems


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = {f"images.{s}.{label}": len(g) for (s, label), g in frame.groupby(["split", "label"])}
    counts.update({f"patients.{s}": g["patient_id"].nunique() for s, g in frame.groupby("split")})
    return counts


@dataclass
class ShortcutFindings:
    probe: ShortcutProbe | None = None
    collections: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # each image's collection, in the frame's order


def _shortcut_findings(frame: pd.DataFrame, facts: list[ImageFacts]) -> ShortcutFindings:
    """The shortcut probe with its property importances, and the collections (a ``domain``/``site`` column of the
    manifest, else inferred from the same properties) with their label balance."""
    if not facts:
        return ShortcutFindings()
    table = facts_table(facts)
    probe = probe_shortcut(table, frame["label"], frame["patient_id"])
    column = next((c for c in COLLECTION_COLUMNS if c in frame.columns and frame[c].notna().all()), None)
    if column is not None:
        names, source = frame[column].astype(str).to_numpy(), f"manifest column {column}"
    else:
        names, source = np.array([f"c{i}" for i in infer_collections(table)]), "inferred from image properties"
    collections = describe_collections(frame["label"], names, table)
    return ShortcutFindings(probe, collections, source, collection_warnings(collections, source), list(names))


def format_report(report: CheckReport) -> str:
    lines = ["medtl data check", "inputs: " + ", ".join(f"{k.split('.')[1]}={v}" for k, v in report.inputs.items()),
             "counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()),
             f"image sizes: {dict(list(report.sizes.items())[:5])}", f"photometric: {report.photometric}",
             f"unreadable: {len(report.unreadable)}, exact duplicate groups: {len(report.exact_duplicates)}, "
             f"near-duplicate pairs: {len(report.near_duplicates)}",
             "shortcut probe AUROC: " + ("n/a" if report.shortcut_auroc is None else f"{report.shortcut_auroc:.3f}")
             + _carried_by(report.shortcut_properties)]
    lines += _collection_lines(report)
    lines += _capped("SKIPPED", [f"{s['path']}: {s['status']}, {s['reason']}" for s in report.skipped])
    lines += _capped("PROBLEM", report.problems) + _capped("WARNING", report.warnings)
    lines.append("OK: nothing found that would corrupt training or evaluation" if report.ok else
                 f"FAILED: {len(report.problems)} problem(s)")
    return "\n".join(lines)


def _carried_by(importances: dict[str, float], shown: int = 4) -> str:
    """``, carried by: borders and background 0.21, ...`` (AUROC lost without each group), or nothing."""
    carried = [f"{group} {loss:.2f}" for group, loss in list(importances.items())[:shown] if loss >= 0.005]
    return f" (carried by, AUROC lost without it: {', '.join(carried)})" if carried else ""


def _collection_lines(report: CheckReport) -> list[str]:
    if len(report.collections) < 2:
        return [f"collections: one ({report.collections_from})"] if report.collections else []
    lines = [f"collections ({report.collections_from}): {len(report.collections)}"]
    for collection in report.collections:
        labels = ", ".join(f"{label} {count}" for label, count in collection["labels"].items())
        apart = ", ".join(f"{name} {value:+.1f}" for name, value in collection["distinguishing"].items())
        lines.append(f"  {collection['name']}: {collection['images']} images ({labels}); set apart by {apart}")
    return lines


def _capped(kind: str, messages: list[str]) -> list[str]:
    lines = [f"{kind}: {m}" for m in messages[:MAX_PRINTED]]
    if len(messages) > MAX_PRINTED:
        lines.append(f"{kind}: ... and {len(messages) - MAX_PRINTED} more (all of them in --out=report.json)")
    return lines


def _frame_from_args(args: Sequence[str]) -> tuple[pd.DataFrame, Any]:
    from medtl.data.manifest import read_manifest

    if len(args) == 1 and args[0].lower().endswith(".csv"):
        return read_manifest(args[0]), None
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from medtl.config_schema import validate_config

    with initialize_config_module(config_module="medtl.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(args))
    validate_config(cfg)
    data = instantiate(cfg.data)
    return data.setup(validate=False), data


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    out = next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), None)
    args = [a for a in args if not a.startswith("--out=")]
    if not args:
        raise MedtlError("usage: python -m medtl.data.check <manifest.csv | Hydra overrides> [--out=report.json]")
    frame, data = _frame_from_args(args)
    if data is None:
        report, _ = check_frame(frame)
    else:
        report, _ = check_frame(frame, inventory=data.inventory, pipeline=data.pipeline)
    print(format_report(report))
    if out:
        write_text_atomic(out, report.to_json())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
