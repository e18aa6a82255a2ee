"""Case names that carry no patient identifier, for everything a run stores or shows.

File names often carry patient ids (Kermany's ``person1234_bacteria_5.jpeg``), so an image leaves a run as
its *case*: its path relative to the data set's folder with every patient id in it replaced by the patient's
pseudonym, ``p-`` + 16 hex digits of HMAC-SHA256(key, id) (the same pseudonym ``medtl.data.adapters
--pseudonymise`` writes). ``NORMAL/person1234_virus_5.jpeg`` becomes ``NORMAL/p-3f9c..._virus_5.jpeg``.

The key is ``$MEDTL_PSEUDONYM_KEY`` or, without it, a random key made once per machine and user
(``<cache>/pseudonym.key``, readable by its owner only). With the same key and data the same image always gets
the same case, so a review file written against one run's cases applies to the next run (``data.reviews``),
and the review kit finds each case's image again by recomputing the names from the data.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from medtl.errors import MedtlError

__all__ = ["PSEUDONYM_KEY_ENV", "pseudonym", "pseudonym_key", "CaseNames"]

PSEUDONYM_KEY_ENV = "MEDTL_PSEUDONYM_KEY"
KEY_FILE = "pseudonym.key"
MIN_KEY_BYTES = 16
MIN_ID_LENGTH = 3  # ids shorter than this are not searched for inside texts (they would match everywhere)


def pseudonym(key: bytes, patient_id: str) -> str:
    """``p-`` + 16 hex digits of HMAC-SHA256(``key``, ``patient_id``)."""
    return "p-" + hmac.new(key, str(patient_id).encode(), hashlib.sha256).hexdigest()[:16]


def pseudonym_key() -> bytes:
    """``$MEDTL_PSEUDONYM_KEY``, else this user's key file (created once, mode 0600)."""
    text = os.environ.get(PSEUDONYM_KEY_ENV)
    if text:
        key = text.encode()
        if len(key) < MIN_KEY_BYTES:
            raise MedtlError(f"{PSEUDONYM_KEY_ENV} is {len(key)} bytes; use at least {MIN_KEY_BYTES} random bytes "
                             f"(e.g. export {PSEUDONYM_KEY_ENV}=$(openssl rand -hex 32))")
        return key
    cache = Path(os.environ.get("MEDTL_CACHE_DIR") or Path.home() / ".cache" / "medtl").expanduser()
    path = cache / KEY_FILE
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = cache / f".{KEY_FILE}.{os.getpid()}"
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(staging, path)  # never replaces a key another process wrote first
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip().encode()


class CaseNames:
    """Case names of the files of one or more image sets, and a scrubber for texts that mention them.

    Args:
        sets: ``(rows, folder)`` per set: rows with ``path`` (absolute) and ``patient_id``; paths are shown
            relative to their set's folder (a file outside every folder: its name alone).
        patient_id_patterns: regexes whose group 1 is a patient id in a file name, for files not in any set.
        key: the pseudonymisation key (:func:`pseudonym_key` by default).
    """

    def __init__(self, sets: Sequence[tuple[pd.DataFrame, str | Path | None]], patient_id_patterns: Sequence[str] = (),
                 key: bytes | None = None) -> None:
        self.key = key if key is not None else pseudonym_key()
        roots = {Path(os.path.abspath(Path(root).expanduser())) for _, root in sets if root}
        self.roots = sorted(roots, key=lambda r: len(str(r)), reverse=True)  # the innermost folder wins
        self.patterns = [re.compile(p) for p in patient_id_patterns]
        self.patients: dict[str, str] = {}
        self.cases: dict[str, str] = {}
        for rows, _ in sets:
            self.patients.update({str(pid): pseudonym(self.key, str(pid)) for pid in rows["patient_id"].unique()})
            self.cases.update({str(path): self._name(str(path), str(pid))
                               for path, pid in zip(rows["path"], rows["patient_id"])})
        self._scrub_pattern: re.Pattern[str] | None = None

    def case(self, path: str, patient_id: str | None = None) -> str:
        """``path`` relative to the set's folder with the patient ids in it replaced by their pseudonyms."""
        known = self.cases.get(path)
        return known if known is not None else self._name(path, patient_id)

    def _name(self, path: str, patient_id: str | None) -> str:
        absolute = Path(os.path.abspath(path))
        root = next((r for r in self.roots if absolute.is_relative_to(r)), None)
        relative = absolute.relative_to(root) if root else Path(absolute.name)
        text = relative.as_posix()
        for pid in self._ids_in(relative.name, patient_id):
            text = text.replace(pid, pseudonym(self.key, pid))
        return text

    def frame(self, frame: pd.DataFrame, column: str = "path") -> pd.DataFrame:
        """``frame`` with ``column`` (paths) replaced by ``case`` as the first column, and ``patient_id``
        (when present) by ``patient``, the pseudonym."""
        out = frame.copy()
        out.insert(0, "case", [self.case(str(p)) for p in out.pop(column)])
        if "patient_id" in out.columns:
            out["patient_id"] = [self.patients.get(str(p), pseudonym(self.key, str(p))) for p in out["patient_id"]]
            out = out.rename(columns={"patient_id": "patient"})
        return out

    def scrub(self, text: str) -> str:
        """``text`` with every path of the sets (and any other file under their folders) written as its case, and
        every patient id as its pseudonym."""
        if self._scrub_pattern is None:
            names = sorted([*self.cases, *(p for p in self.patients if len(p) >= MIN_ID_LENGTH)], key=len, reverse=True)
            under_root = [rf"{re.escape(str(r))}/[^\s,;:'\"\]\[)(]+" for r in self.roots]
            alternatives = [*under_root, *(rf"(?<![\w-]){re.escape(n)}(?![\w])" for n in names)]
            self._scrub_pattern = re.compile("|".join(alternatives)) if alternatives else re.compile(r"(?!x)x")
        return self._scrub_pattern.sub(self._replacement, text)

    def scrub_all(self, texts: Iterable[str]) -> list[str]:
        return [self.scrub(t) for t in texts]

    def _replacement(self, match: re.Match[str]) -> str:
        found = match.group(0)
        if found in self.patients:
            return self.patients[found]
        return self.case(found)

    def _ids_in(self, name: str, patient_id: str | None) -> list[str]:
        """The patient ids a file name carries: its row's id, known ids, and what the patterns find."""
        ids = {patient_id} if patient_id else set()
        ids.update(m.group(1) for p in self.patterns if (m := p.search(name)))
        if not ids:  # a file outside the set's rows (a skipped file): any known patient's id in its name
            ids.update(pid for pid in self.patients if len(pid) >= MIN_ID_LENGTH and pid in name)
        return sorted((i for i in ids if i), key=len, reverse=True)
