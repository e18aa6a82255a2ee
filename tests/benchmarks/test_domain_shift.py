"""The domain-shift benchmark: gap arithmetic, the source-only rows taken from AdaBN runs, a smoke run."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.benchmarks import load_benchmark
from tests.conftest import small_demo_overrides

def _load_script():  # noqa: ANN202
    return load_benchmark("domain_shift")


def _runs(target: dict[str, list[float]], source: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"severity": "strong", "method": m, "seed": i, "target_auroc": t, "source_auroc": source[m][i],
             "proxy_a_distance": 1.0, "seconds": 10.0} for m, values in target.items() for i, t in enumerate(values)]
    return pd.DataFrame(rows)


def test_gap_recovered_and_the_target_check() -> None:
    module = _load_script()
    runs = _runs({"none": [0.70, 0.70], "dann": [0.80, 0.82], "mmd": [0.90, 0.90], "target_oracle": [0.90, 0.90]},
                 {"none": [0.98, 0.98], "dann": [0.98, 0.98], "mmd": [0.95, 0.95], "target_oracle": [0.80, 0.80]})
    table = module.summarise(runs).set_index("method")
    assert table.loc["dann", "gap_recovered"] == pytest.approx(0.55)
    assert table.loc["mmd", "gap_recovered"] == pytest.approx(1.0)
    assert table.loc["mmd", "source_auroc_change"] == pytest.approx(-0.03)
    assert list(table.index) == ["none", "dann", "mmd", "target_oracle"]
    check = module.target_check(table.reset_index())
    assert "best method dann recovers 55%" in check and ": met" in check  # mmd loses too much source AUROC


def test_source_only_rows_come_from_the_adabn_runs_before_adaptation() -> None:
    module = _load_script()
    adabn = {"severity": "strong", "method": "adabn", "seed": 0, "seconds": 5.0, "source_auroc": 0.97,
             "target_auroc": 0.85, "proxy_a_distance": 1.5, "unadapted_target_auroc": 0.66,
             "unadapted_proxy_a_distance": 2.0}
    (none,) = module.source_only_from_adabn([adabn])
    assert none == {"severity": "strong", "method": "none", "seed": 0, "seconds": 5.0, "source_auroc": 0.97,
                    "target_auroc": 0.66, "proxy_a_distance": 2.0}


def test_smoke_run_writes_table_plot_and_runs(tmp_path: Path, demo_cache: Path) -> None:
    module = _load_script()
    module.main(["--severities", "strong", "--seeds", "0", "--methods", "none", "adabn", "coral", "target_oracle",
                 "--image-size", "32", "--epochs", "1", "--oracle-epochs", "1", "--results-dir", str(tmp_path),
                 "--out-name", "smoke", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--cache", "none",
                 *small_demo_overrides(demo_cache),
                 f"data.sites_dir={demo_cache / 'sites'}", "data.target_simulation.fraction=0.4",
                 "trainer.max_steps_per_epoch=2", "data.batch_size=8"])
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert "commit" in results and "32 px" in results["settings"]
    assert sorted(r["method"] for r in results["runs"]) == ["adabn", "coral", "none", "target_oracle"]
    assert all(0.0 <= r["target_auroc"] <= 1.0 for r in results["runs"])
    table = (tmp_path / "smoke.md").read_text()
    assert "| severity | method | target_auroc_mean |" in table and "- strong:" in table
    assert (tmp_path / "smoke.png").stat().st_size > 1000


def test_target_metrics_keep_the_benchmarks_column_names() -> None:
    columns = _load_script().target_columns({"val/final_auroc": 0.99, "target/auroc": 0.8, "target/proxy_a_distance": 1.2,
                              "target/unadapted_auroc": 0.7, "target/unadapted_proxy_a_distance": 1.9,
                              "target/adapt_seconds": 2.5, "target/accuracy_at_source_threshold": 0.75})
    assert columns == {"target_auroc": 0.8, "proxy_a_distance": 1.2, "unadapted_target_auroc": 0.7,
                       "unadapted_proxy_a_distance": 1.9, "adapt_seconds": 2.5,
                       "target_accuracy_at_source_threshold": 0.75}
