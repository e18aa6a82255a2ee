"""The shortcut benchmark: collections written once, leave-one-collection-out runs, table and plot, resume."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.benchmarks import load_benchmark
from tests.objectives.test_shortcut_training import confounded_set


def test_smoke_run_holds_out_each_collection_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_benchmark("shortcuts")
    folder = tmp_path / "set"
    confounded_set(folder, n=60)
    (folder / "manifest.csv").unlink()  # a class-per-folder tree, as the shared sets are
    monkeypatch.setitem(module.SETS, "smoke", {"data": folder, "experiment": "brain_mri", "positive": "lesion",
                                               "label_map": {}, "patterns": []})
    args = ["--set", "smoke", "--recipes", "erm", "group_dro", "--seeds", "0", "--collections", "3",
            "--min-per-class", "3", "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path),
            "--out-name", "smoke", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "data.image_size=32", "data.batch_size=8", "trainer.max_steps_per_epoch=2", "trainer.max_epochs=1",
            "data.val_fraction=0.3",
            f"data.cache_dir={tmp_path / 'cache'}"]
    module.main(args)
    frame = pd.read_csv(tmp_path / "work" / "smoke" / "all_3.csv")
    assert sorted(frame["domain"].unique()) == ["c0", "c1", "c2"] and len(frame) == 120
    runs = [json.loads(line) for line in (tmp_path / "smoke_runs.jsonl").read_text().splitlines()]
    folds = module.folds(frame, 3)
    assert len(runs) == 2 * len(folds) >= 2 and {r["heldout"] for r in runs} == set(folds)
    assert all(0.0 <= r["heldout_auroc"] <= 1.0 and 0.0 <= r["heldout_accuracy"] <= 1.0 for r in runs)
    for held_out in folds:  # the held-out collection is never trained on
        source = pd.read_csv(tmp_path / "work" / "smoke" / "k3" / f"source_without_{held_out}.csv")
        assert held_out not in set(source["domain"]) and len(source) + (frame["domain"] == held_out).sum() == 120
    module.main(args)  # everything is done: nothing runs again
    assert len((tmp_path / "smoke_runs.jsonl").read_text().splitlines()) == len(runs)
    table = (tmp_path / "smoke.md").read_text()
    assert "| set | heldout | recipe | seeds | minutes | val AUROC (in-collection) | held-out AUROC |" in table
    assert "`group_dro`: `objective=group_dro`" in table and "image-property probe AUROC" in table
    assert (tmp_path / "smoke.png").stat().st_size > 1000


def test_every_recipe_starts_from_no_mitigation_whatever_the_experiment_defaults() -> None:
    from hydra import compose, initialize_config_dir

    from medtl import CONFIG_DIR

    module = load_benchmark("shortcuts")
    chosen = module.last_wins([*module.BASE, *module.RECIPES["erase"], "data.image_size=32"])
    assert "data.intensity.equalize=true" in chosen and "data.intensity.equalize=false" not in chosen
    assert "data.image_size=32" in chosen and "data.image_size=128" not in chosen
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        default = compose(config_name="config", overrides=["+experiment=brain_mri"])
        erm = compose(config_name="config", overrides=["+experiment=brain_mri", *module.last_wins(module.BASE)])
    assert default.data.intensity.equalize is True and default.data.pipeline.crop.foreground == 0.05
    assert erm.data.intensity.equalize is False and erm.data.pipeline.crop.foreground is None


def test_a_patient_belongs_to_one_collection_so_no_fold_trains_on_a_held_out_patient(tmp_path: Path) -> None:
    module = load_benchmark("shortcuts")
    patients = pd.Series(["p1", "p1", "p1", "p2", "p2", "p3", "p4", "p4"])
    clusters = pd.Series(["c1", "c0", "c1", "c2", "c0", "c2", "c1", "c0"])
    domains = module.by_patient(clusters, patients)
    assert domains == ["c1", "c1", "c1", "c0", "c0", "c2", "c0", "c0"]  # majority, ties to the first name
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(8)], "label": ["a", "b"] * 4,
                          "patient_id": patients, "domain": domains})
    paths = module.write_fold(frame, "c0", tmp_path)
    source, held = pd.read_csv(paths["source"]), pd.read_csv(paths["heldout"])
    assert set(source["patient_id"]).isdisjoint(held["patient_id"]) and len(source) + len(held) == 8
    frame["domain"] = clusters  # per-image clusters split p1, p2 and p4 across collections
    with pytest.raises(ValueError, match="collection c0 shares 3 patient"):
        module.write_fold(frame, "c0", tmp_path / "split")
