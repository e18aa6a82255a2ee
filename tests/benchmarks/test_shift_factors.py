"""The shift-factor benchmark: each factor site changes only its own fields; a smoke run scores every site."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from medtl.data.shift import AcquisitionShift, shift_for
from tests.benchmarks import load_benchmark


@pytest.mark.parametrize("site", list(load_benchmark("shift_factors").SITE_FIELDS))
def test_factor_site_is_the_strong_value_of_its_fields_alone(site: str) -> None:
    module = load_benchmark("shift_factors")
    strong = shift_for("strong")
    shift = dataclasses.asdict(module.factor_shift(site))
    neutral = dataclasses.asdict(AcquisitionShift(jitter=strong.jitter))
    changed = {name for name in shift if shift[name] != neutral[name]}
    assert changed == set(module.SITE_FIELDS[site])
    assert all(shift[name] == getattr(strong, name) for name in changed)
    if site.startswith("without_"):  # the strong site but one factor: every field of the others
        factor = site.removeprefix("without_")
        assert changed == {f for other, fields in module.FACTORS.items() if other != factor for f in fields}


def test_table_gives_each_site_against_heldout() -> None:
    module = load_benchmark("shift_factors")
    sites = ("heldout", *module.FACTORS, "strong")
    rows = [{"recipe": "r", "seed": seed, **{f"{site}_{m}": 0.95 - 0.1 * (site == "blur") + 0.01 * seed
                                             for site in sites for m in ("auroc", "accuracy")},
             **{f"{site}_adabn_{m}": None for site in sites for m in ("auroc", "accuracy")}} for seed in (0, 1)]
    table = module.summarise(pd.DataFrame(rows))
    assert list(table["site"]) == list(sites) and set(table["seeds"]) == {2}
    readable = module.readable(table).set_index("site")
    assert readable.loc["blur", "AUROC"] == "0.855 ± 0.007"
    assert readable.loc["blur", "AUROC vs heldout"] == "-0.100"
    assert readable.loc["noise", "AUROC vs heldout"] == "+0.000"
    assert readable.loc["blur", "AdaBN AUROC"] == "-" and readable.loc["blur", "AdaBN AUROC vs heldout"] == "-"


def test_smoke_run_writes_factor_sites_scores_them_and_resumes(tmp_path: Path, demo_manifest: Path) -> None:
    module = load_benchmark("shift_factors")
    args = ["--data", str(demo_manifest.parent), "--recipes", "lpft_frozen3", "--seeds", "0",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path), "--out-name", "smoke",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--holdout-fraction", "0.3",
            "data.image_size=32", "data.batch_size=8", "trainer.max_steps_per_epoch=2", "trainer.features.epochs=2",
            f"data.cache_dir={tmp_path / 'cache'}"]
    module.main(args)
    work = tmp_path / "work" / "holdout0"
    heldout = pd.read_csv(work / "heldout.csv")
    for factor in module.FACTORS:
        site = pd.read_csv(work / f"factor_{factor}.csv")
        assert len(site) == len(heldout) and list(site["label"]) == list(heldout["label"])

    def rows_of(factor: str) -> int:
        first = work / pd.read_csv(work / f"factor_{factor}.csv")["path"][0]  # paths relative to the manifest
        return pydicom.dcmread(first, stop_before_pixels=True).Rows
    assert rows_of("resolution") < 0.6 * rows_of("noise")  # half the pixels per side (jitter 0.1)
    runs = [json.loads(line) for line in (tmp_path / "smoke_runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1
    for site in ("heldout", *module.FACTORS, "strong"):
        assert 0.0 <= runs[0][f"{site}_auroc"] <= 1.0 and 0.0 <= runs[0][f"{site}_adabn_auroc"] <= 1.0
    module.main(args)  # done: nothing runs again
    assert len((tmp_path / "smoke_runs.jsonl").read_text().splitlines()) == 1
    table = (tmp_path / "smoke.md").read_text()
    assert "| recipe | site | seeds | AUROC | acc. | AdaBN AUROC | AdaBN acc. | AUROC vs heldout |" in table
    assert "| lpft_frozen3 | collimation | 1 |" in table and "'collimation': 0.1" in table
    assert (tmp_path / "smoke.png").stat().st_size > 1000
    module.main([*args, "--out-name", "without", "--sites", "without_noise"])  # the strong site but its noise
    again = [json.loads(line) for line in (tmp_path / "without_runs.jsonl").read_text().splitlines()]
    assert again[0]["sites"] == ["without_noise"] and 0.0 <= again[0]["without_noise_adabn_auroc"] <= 1.0
    assert "collimation_auroc" not in again[0]
    assert "| lpft_frozen3 | without_noise | 1 |" in (tmp_path / "without.md").read_text()
    assert "| lpft_frozen3 | collimation |" not in (tmp_path / "without.md").read_text()
