"""Review files: corrected labels and unusable images back into the data, with one-line errors."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medtl.data.pseudonym import CaseNames
from medtl.data.reviews import apply_reviews
from medtl.errors import MedtlError


@pytest.fixture
def data(tmp_path: Path) -> tuple[pd.DataFrame, CaseNames]:
    frame = pd.DataFrame({"path": [str(tmp_path / c / f"person{i}_{c}.png") for i, c in enumerate("AABB")],
                          "label": list("AABB"), "patient_id": [f"person{i}" for i in range(4)]})
    return frame, CaseNames([(frame, tmp_path)], key=b"k" * 32)


def write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "review.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_corrections_replace_labels_and_unusable_images_are_left_out(data: tuple, tmp_path: Path) -> None:
    frame, names = data
    cases = [names.case(p) for p in frame["path"]]
    path = write(tmp_path, [{"case": cases[0], "verdict": "disagree", "corrected_label": "B", "unusable": "false"},
                            {"case": cases[1], "verdict": "agree", "corrected_label": "A", "unusable": ""},
                            {"case": cases[3], "verdict": "unsure", "corrected_label": "", "unusable": "true"}])
    out, summary = apply_reviews(frame, path, names)
    assert list(out["label"]) == ["B", "A", "B"] and frame["path"][3] not in set(out["path"])
    assert (summary.reviewed, summary.changed_labels, summary.dropped) == (3, 1, 1)
    assert len(summary.sha256) == 64 and summary.metrics()["data/review_changed_labels"] == 1


@pytest.mark.parametrize(("row", "message"), [
    ({"case": "A/unknown.png", "verdict": "agree"}, "not images of this data set"),
    ({"verdict": "agree"}, "no column 'case'"),
    ({"case": 0, "verdict": "maybe"}, "verdict 'maybe' is unknown"),
    ({"case": 0, "corrected_label": "C"}, "corrected_label 'C' is not a label"),
    ({"case": 0, "unusable": "perhaps"}, "unusable 'perhaps' is not true or false"),
])
def test_bad_review_files_stop_with_one_line(data: tuple, tmp_path: Path, row: dict, message: str) -> None:
    frame, names = data
    if row.get("case") == 0:
        row = {**row, "case": names.case(frame["path"][0])}
    with pytest.raises(MedtlError, match=message):
        apply_reviews(frame, write(tmp_path, [row]), names)


def test_a_case_reviewed_twice_is_an_error(data: tuple, tmp_path: Path) -> None:
    frame, names = data
    case = names.case(frame["path"][0])
    with pytest.raises(MedtlError, match="more than once"):
        apply_reviews(frame, write(tmp_path, [{"case": case}, {"case": case}]), names)
