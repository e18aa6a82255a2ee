"""The label-efficiency benchmark runs end to end on the demo data (tiny settings) and writes its outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.benchmarks import load_benchmark
from tests.conftest import small_demo_overrides

def _load_script():  # noqa: ANN202
    return load_benchmark("label_efficiency")


def test_fewer_labels_get_more_epochs_up_to_the_cap() -> None:
    epochs_for = _load_script().epochs_for
    assert [epochs_for(f, 3, 20) for f in (1.0, 0.25, 0.1, 0.05, 0.02, 0.01)] == [3, 6, 10, 14, 20, 20]


def test_target_checks_compare_five_percent_pretrained_with_full_scratch() -> None:
    module = _load_script()
    table = pd.DataFrame({"strategy": ["finetune", "finetune", "scratch"], "fraction": [0.05, 1.0, 1.0],
                          "auroc_mean": [0.97, 0.99, 0.975], "seconds": [60.0, 1500.0, 600.0]})
    full, low = module.target_checks(table)
    assert "AUROC 0.990 in 25.0 min" in full and "NOT met" in full  # accurate but too slow
    assert "finetune with 5% of the labels: AUROC 0.970; scratch with 100%: 0.975" in low and "NOT met" in low


def test_smoke_run_writes_table_plot_and_runs(tmp_path: Path, demo_cache: Path) -> None:
    module = _load_script()
    module.main(["--fractions", "0.5", "1.0", "--seeds", "0", "--strategies", "linear_probe", "scratch",
                 "--image-size", "32", "--results-dir", str(tmp_path), "--out-name", "smoke",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 *small_demo_overrides(demo_cache),
                 f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "trainer.features.epochs=2"])
    results = json.loads((tmp_path / "smoke.json").read_text())
    runs = results["runs"]
    assert "commit" in results and "sqrt(fraction)" in results["settings"]
    assert any((tmp_path / "cache").iterdir()), "runs share one disk cache by default"
    assert len(runs) == 4 and {r["strategy"] for r in runs} == {"linear_probe", "scratch"}
    assert all(0.0 <= r["auroc"] <= 1.0 for r in runs)
    table = (tmp_path / "smoke.md").read_text()
    assert "| strategy | fraction | auroc_mean |" in table and table.count("\n| linear_probe |") == 2
    assert (tmp_path / "smoke.png").stat().st_size > 1000
