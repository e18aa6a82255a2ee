"""Provenance helpers used by every benchmark write-up."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd

from medtl.provenance import cpu_model, git_commit, machine_description, markdown_table


def test_git_commit_names_the_commit_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"  # not a repository
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-qm", "first")
    assert re.fullmatch(r"[0-9a-f]{7,}", git_commit(tmp_path))
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path).endswith("+dirty")


def test_machine_and_markdown() -> None:
    assert "CPU cores, torch" in machine_description()
    if Path("/proc/cpuinfo").is_file() and "model name" in Path("/proc/cpuinfo").read_text():
        assert f"({cpu_model()})" in machine_description() and cpu_model()
    table = markdown_table(pd.DataFrame({"method": ["none"], "auroc": [0.91234], "seeds": [3]}))
    assert table.splitlines() == ["| method | auroc | seeds |", "|---|---|---|", "| none | 0.912 | 3 |"]
