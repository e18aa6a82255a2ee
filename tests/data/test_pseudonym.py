"""Case names: paths relative to the data set with patient ids pseudonymised, stable for one key."""
from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest

from medtl.data.pseudonym import PSEUDONYM_KEY_ENV, CaseNames, pseudonym, pseudonym_key
from medtl.errors import MedtlError

KERMANY = ['^(person\\d+)_', '^((?:NORMAL2-)?IM-\\d+)-']


def kermany_rows(root: Path) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(root / "PNEUMONIA" / "person1947_bacteria_4876.jpeg"),
                                  str(root / "NORMAL" / "IM-0117-0001.jpeg")],
                         "patient_id": ["person1947", "IM-0117"]})


def test_cases_are_relative_with_every_patient_id_replaced(tmp_path: Path) -> None:
    key = b"k" * 32
    names = CaseNames([(kermany_rows(tmp_path), tmp_path)], KERMANY, key=key)
    rows = kermany_rows(tmp_path)
    assert names.case(rows["path"][0]) == f"PNEUMONIA/{pseudonym(key, 'person1947')}_bacteria_4876.jpeg"
    assert names.case(rows["path"][1]) == f"NORMAL/{pseudonym(key, 'IM-0117')}-0001.jpeg"
    skipped = str(tmp_path / "NORMAL" / "person33_virus_2.jpeg")  # not a row: the patterns find its id
    assert names.case(skipped) == f"NORMAL/{pseudonym(key, 'person33')}_virus_2.jpeg"
    assert names.case("/elsewhere/person1947_x.png") == f"{pseudonym(key, 'person1947')}_x.png"


def test_frame_and_scrub_leave_no_identifier(tmp_path: Path) -> None:
    rows = kermany_rows(tmp_path)
    names = CaseNames([(rows, tmp_path)], KERMANY, key=b"k" * 32)
    table = names.frame(rows.assign(label=["PNEUMONIA", "NORMAL"]))
    assert list(table.columns) == ["case", "patient", "label"]
    message = (f"identical images of different patients ['IM-0117', 'person1947']: {rows['path'][0]}, "
               f"{tmp_path / 'NORMAL' / 'person42_x.jpeg'}")
    text = table.to_csv() + names.scrub(message)
    assert not any(token in text for token in ("person1947", "IM-0117", "person42", str(tmp_path)))


def test_same_key_same_cases_and_the_key_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    monkeypatch.setenv("MEDTL_CACHE_DIR", str(tmp_path / "cache"))
    first = pseudonym_key()
    assert pseudonym_key() == first and len(first) == 64
    key_file = tmp_path / "cache" / "pseudonym.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    rows = kermany_rows(tmp_path)
    assert CaseNames([(rows, tmp_path)]).cases == CaseNames([(rows, tmp_path)]).cases
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "another key of enough bytes")
    assert CaseNames([(rows, tmp_path)]).cases != CaseNames([(rows, tmp_path)], key=first).cases
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "short")
    with pytest.raises(MedtlError, match=PSEUDONYM_KEY_ENV):
        pseudonym_key()
