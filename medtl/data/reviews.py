"""Radiologists' reviews back into training: ``data.reviews=<review csv>`` (schema: data_manifests/reviews/README.md).

A review file has one row per reviewed case (the ``case`` names of a run's prediction tables): a ``verdict``
(agree, disagree, unsure or empty), an optional ``corrected_label`` that replaces the image's label, and an
``unusable`` flag that leaves the image out. The next run records the file's digest and what it changed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtl.data.pseudonym import PSEUDONYM_KEY_ENV, CaseNames
from medtl.errors import MedtlError

__all__ = ["REVIEW_COLUMNS", "VERDICTS", "ReviewSummary", "read_reviews", "apply_reviews"]

REVIEW_COLUMNS = ("case", "verdict", "corrected_label", "unusable", "comment", "reviewer", "run_id")
VERDICTS = ("agree", "disagree", "unsure", "")
_TRUE, _FALSE = ("true", "yes", "1", "y"), ("false", "no", "0", "n", "")


@dataclass(frozen=True)
class ReviewSummary:
    """What a review file did to the data: logged with the run (``data/review_*``, tag ``medtl.reviews_sha256``)."""

    file: str
    sha256: str
    reviewed: int
    changed_labels: int
    dropped: int

    def metrics(self) -> dict[str, int]:
        return {"data/review_rows": self.reviewed, "data/review_changed_labels": self.changed_labels,
                "data/review_dropped": self.dropped}


def read_reviews(path: str | Path) -> pd.DataFrame:
    """The review file, checked: a ``case`` column, known verdicts, ``unusable`` true/false, one row per case."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedtlError(f"data.reviews={path} does not exist; point it at a review CSV "
                         "(data_manifests/reviews/<run>.csv, written by the review notebook or report)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MedtlError(f"reviews {path} is not a readable CSV ({exc}); see data_manifests/reviews/README.md") from exc
    if "case" not in frame.columns:
        raise MedtlError(f"reviews {path} has no column 'case'; see data_manifests/reviews/README.md")
    frame = frame.assign(**{c: frame.get(c, "") for c in ("verdict", "corrected_label", "unusable")})
    frame["verdict"] = frame["verdict"].str.strip().str.lower()
    for row, (verdict, unusable) in enumerate(zip(frame["verdict"], frame["unusable"]), start=2):
        if verdict not in VERDICTS:
            raise MedtlError(f"reviews {path} row {row}: verdict '{verdict}' is unknown; use agree, disagree, unsure "
                             "or leave it empty")
        if unusable.strip().lower() not in _TRUE + _FALSE:
            raise MedtlError(f"reviews {path} row {row}: unusable '{unusable}' is not true or false")
    repeated = frame["case"][frame["case"].duplicated()]
    if len(repeated):
        raise MedtlError(f"reviews {path} lists case '{repeated.iloc[0]}' more than once; keep one row per case")
    frame["unusable"] = frame["unusable"].str.strip().str.lower().isin(_TRUE)
    frame["corrected_label"] = frame["corrected_label"].str.strip()
    return frame


def apply_reviews(frame: pd.DataFrame, path: str | Path, names: CaseNames) -> tuple[pd.DataFrame, ReviewSummary]:
    """``frame`` (``path``, ``label``...) with reviewed labels corrected and unusable images left out.

    Every reviewed case must be an image of ``frame`` and every corrected label one of its labels; otherwise
    one line names the row and the fix."""
    reviews = read_reviews(path)
    rows_of = {names.case(p): i for i, p in zip(frame.index, frame["path"])}
    unknown = [c for c in reviews["case"] if c not in rows_of]
    if unknown:
        raise MedtlError(f"reviews {path}: {len(unknown)} case(s) are not images of this data set, first "
                         f"'{unknown[0]}'; review a run of the same data (and, if it was set then, the same "
                         f"{PSEUDONYM_KEY_ENV})")
    labels = sorted(set(frame["label"]) - {""})
    wrong = reviews[(reviews["corrected_label"] != "") & ~reviews["corrected_label"].isin(labels)]
    if len(wrong):
        raise MedtlError(f"reviews {path} row {wrong.index[0] + 2}: corrected_label '{wrong['corrected_label'].iloc[0]}' "
                         f"is not a label of this data set; use one of {labels}")
    out = frame.copy()
    changed = 0
    for case, corrected in zip(reviews["case"], reviews["corrected_label"]):
        if corrected and out.at[rows_of[case], "label"] != corrected:
            out.at[rows_of[case], "label"] = corrected
            changed += 1
    dropped = [rows_of[c] for c in reviews.loc[reviews["unusable"], "case"]]
    out = out.drop(index=dropped).reset_index(drop=True)
    digest = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    return out, ReviewSummary(Path(path).name, digest, len(reviews), changed, len(dropped))
