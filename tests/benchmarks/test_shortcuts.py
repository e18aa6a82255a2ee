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


def test_the_report_keeps_every_set_measured_by_earlier_calls(tmp_path: Path) -> None:
    module = load_benchmark("shortcuts")

    def finding(auroc: float) -> dict:
        return {"shortcut_auroc": auroc, "shortcut_properties": {"intensity histogram": 0.3},
                "collections": [{"name": "c0", "labels": {"a": 3, "b": 1}}]}

    def run(name: str, seed: int) -> dict:
        return {"set": name, "heldout": "c0", "recipe": "erm", "seed": seed, "minutes": 1.0, "val_auroc": 0.9,
                "heldout_auroc": 0.8, "heldout_accuracy": 0.7, "heldout_sensitivity": 0.6,
                "heldout_specificity": 0.5, "feature_probe_auroc": None, "commit": "abc1234", "machine": "cpu X"}

    assert module.earlier_findings(tmp_path / "none.json") == {}
    module.write_results([run("brain", 0)], {"brain": finding(0.995)}, tmp_path, "report")
    later = {**module.earlier_findings(tmp_path / "report.json"), "chest": finding(0.942)}
    module.write_results([run("brain", 0), run("chest", 0)], later, tmp_path, "report")
    text = (tmp_path / "report.md").read_text()
    assert "- brain: image-property probe AUROC 0.995" in text and "- chest: image-property probe AUROC 0.942" in text
    assert text.startswith("Machine(s): cpu X. Commit(s) abc1234")


@pytest.mark.parametrize("name", list(load_benchmark("shortcuts").SETS))
@pytest.mark.parametrize("recipe", list(load_benchmark("shortcuts").RECIPES))
def test_every_recipe_composes_with_each_sets_experiment(name: str, recipe: str, tmp_path: Path) -> None:
    """A recipe whose override names no key fails here, not an hour into a benchmark."""
    from hydra import compose, initialize_config_dir

    from medtl import CONFIG_DIR
    from medtl.config_schema import validate_config

    module = load_benchmark("shortcuts")
    fold = {"source": tmp_path / "source.csv", "heldout": tmp_path / "heldout.csv"}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=module.run_overrides(name, recipe, 1, fold, "sqlite:///x", []))
    validate_config(cfg)
    assert cfg.seed == 1 and cfg.data.image_size == 128 and cfg.model.strategy == "finetune"
    assert cfg.data.intensity.equalize is ("data.intensity.equalize=true" in module.RECIPES[recipe])
