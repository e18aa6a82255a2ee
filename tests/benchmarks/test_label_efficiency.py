"""The label-efficiency benchmark runs end to end on the demo data (tiny settings) and writes its outputs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import SMALL_DEMO

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "label_efficiency.py"


def test_smoke_run_writes_table_plot_and_runs(tmp_path: Path, demo_cache: Path) -> None:
    spec = importlib.util.spec_from_file_location("label_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--fractions", "0.5", "1.0", "--seeds", "0", "--strategies", "linear_probe", "scratch",
                 "--image-size", "32", "--results-dir", str(tmp_path), "--out-name", "smoke",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                 f"data.demo_dir={demo_cache}", f"data.demo.n_patients={SMALL_DEMO.n_patients}",
                 f"data.demo.image_size={SMALL_DEMO.image_size}", f"data.demo.seed={SMALL_DEMO.seed}",
                 "trainer.max_epochs=1", "trainer.features.epochs=2"])
    runs = json.loads((tmp_path / "smoke.json").read_text())["runs"]
    assert len(runs) == 4 and {r["strategy"] for r in runs} == {"linear_probe", "scratch"}
    assert all(0.0 <= r["auroc"] <= 1.0 for r in runs)
    table = (tmp_path / "smoke.md").read_text()
    assert "| strategy | fraction | auroc_mean |" in table and table.count("\n| linear_probe |") == 2
    assert (tmp_path / "smoke.png").stat().st_size > 1000
