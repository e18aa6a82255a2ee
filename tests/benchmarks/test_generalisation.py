"""The generalisation benchmark: the summary over seeds, and a smoke run that resumes instead of repeating runs."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from tests.benchmarks import load_benchmark


def test_summary_is_mean_and_sd_over_seeds_in_recipe_order() -> None:
    module = load_benchmark("generalisation")
    rows = [{"recipe": recipe, "seed": seed, "seconds": 60.0 * (seed + 1), "train_seconds": 30.0, "val_auroc": 0.99,
             **{f"{site}_{m}": value + 0.02 * seed for site in module.SITES for m in ("auroc", "accuracy")}}
            for recipe, value in (("b", 0.90), ("a", 0.80)) for seed in (0, 1)]
    table = module.summarise(pd.DataFrame(rows), ["b", "a"])
    assert list(table["recipe"]) == ["b", "a"] and list(table["seeds"]) == [2, 2]
    assert table.loc[0, "strong_auroc_mean"] == pytest.approx(0.91)
    assert table.loc[0, "strong_auroc_sd"] == pytest.approx(0.02 / 2 ** 0.5)
    assert table.loc[1, "minutes"] == pytest.approx(1.5)
    assert module.readable(table).loc[1, "mild acc."] == "0.810 ± 0.014"
    rows[0].update(strong_adabn_auroc=0.5, adabn_rule=module.ADABN_RULE)
    rows[1].update(strong_adabn_auroc=0.7)  # measured under an earlier AdaBN rule: left out
    table = module.summarise(pd.DataFrame(rows), ["b", "a"])
    assert table.loc[0, "strong_adabn_auroc_mean"] == pytest.approx(0.5) and table.loc[0, "strong_auroc_mean"] > 0.9
    assert list(table["adabn_seeds"]) == [1, 0] and table.loc[0, "train_minutes"] == pytest.approx(0.5)
    for row in rows[2:]:  # rule 2: the same layers, but accuracy at the plain validation threshold
        row.update({f"{site}_adabn_{m}": 0.6 for site in module.SITES for m in ("auroc", "accuracy")}, adabn_rule=2)
    table = module.summarise(pd.DataFrame(rows), ["b", "a"])
    assert table.loc[1, "strong_adabn_auroc_mean"] == pytest.approx(0.6) and list(table["adabn_seeds"]) == [1, 2]
    assert pd.isna(table.loc[1, "strong_adabn_accuracy_mean"])  # its threshold is not today's: left out
    shown = module.readable_adabn(table)
    assert list(shown["strong AdaBN AUROC"]) == ["0.500", "0.600 ± 0.000"] and shown.loc[1, "mild AdaBN acc."] == "—"


def test_smoke_run_writes_sites_table_and_plot_and_resumes(tmp_path: Path, demo_manifest: Path) -> None:
    module = load_benchmark("generalisation")
    args = ["--data", str(demo_manifest.parent), "--recipes", "linear_probe", "lpft_frozen3", "--seeds", "0",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path), "--out-name", "smoke",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--holdout-fraction", "0.3",
            "data.image_size=32", "data.batch_size=8", "trainer.max_steps_per_epoch=2", "trainer.features.epochs=2",
            f"data.cache_dir={tmp_path / 'cache'}"]
    module.main(args)
    runs = [json.loads(line) for line in (tmp_path / "smoke_runs.jsonl").read_text().splitlines()]
    assert [r["recipe"] for r in runs] == ["linear_probe", "lpft_frozen3"]
    assert all(0.0 <= r[f"{site}_auroc"] <= 1.0 for r in runs for site in module.SITES)
    assert all(0.0 <= r[key] <= 1.0 for r in runs for key in ("val_ece", "heldout_ece", "strong_ece"))  # calibration
    work = tmp_path / "work" / "holdout0"
    source, heldout = pd.read_csv(work / "source.csv"), pd.read_csv(work / "heldout.csv")
    assert not set(source["patient_id"]) & set(heldout["patient_id"])  # held out by patient
    assert len(pd.read_csv(work / "strong.csv")) == len(heldout) and (work / "strong").is_dir()
    module.main(args)  # everything is done: nothing runs again
    assert len((tmp_path / "smoke_runs.jsonl").read_text().splitlines()) == 2
    table = (tmp_path / "smoke.md").read_text()
    assert "| recipe | seeds | minutes | training min | val AUROC | heldout AUROC | heldout acc. |" in table
    assert "`lpft_frozen3`: `model.strategy=finetune model.frozen_stages=3" in table
    assert "strong AdaBN AUROC" in table and 0.0 <= runs[1]["strong_adabn_auroc"] <= 1.0
    assert runs[0]["strong_adabn_auroc"] is None  # a linear probe kept ImageNet statistics: nothing to adapt
    assert all(r["strong_oracle_accuracy"] >= r["strong_accuracy"] for r in runs)
    assert runs[1]["strong_adabn_oracle_accuracy"] >= runs[1]["strong_adabn_accuracy"]
    assert (tmp_path / "smoke.png").stat().st_size > 1000
    older = [{k: v for k, v in r.items() if k != "adabn_rule"} if r["recipe"] == "lpft_frozen3" else r for r in runs]
    module.write_runs(older, tmp_path / "smoke_runs.jsonl")  # as if lpft_frozen3's AdaBN were of an earlier rule
    module.main([*args, "--redo-adabn"])
    redone = [json.loads(line) for line in (tmp_path / "smoke_runs.jsonl").read_text().splitlines()]
    assert [r["recipe"] for r in redone] == ["linear_probe", "lpft_frozen3"]  # replaced, not appended
    assert redone[0] == runs[0] and redone[1]["adabn_rule"] == module.ADABN_RULE  # only the stale run ran again


@pytest.mark.parametrize("recipe", list(load_benchmark("generalisation").RECIPES))
def test_every_recipe_composes_with_the_experiment(recipe: str, tmp_path: Path) -> None:
    """A recipe whose override names no key (a typo, a renamed option) fails here, not an hour into a benchmark."""
    from hydra import compose, initialize_config_dir

    from medtl import CONFIG_DIR
    from medtl.config_schema import validate_config

    module = load_benchmark("generalisation")
    sites = {site: tmp_path / f"{site}.csv" for site in ("source", "source_strong", *module.SITES)}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=module.run_overrides(recipe, 0, sites, "sqlite:///x.db", []))
    validate_config(cfg)
    assert cfg.seed == 0 and str(cfg.evaluation.external.strong).endswith("strong.csv")


def test_each_key_is_set_once_and_a_recipe_overrides_the_no_acquisition_start(tmp_path: Path) -> None:
    module = load_benchmark("generalisation")
    sites = {site: tmp_path / f"{site}.csv" for site in ("source", *module.SITES)}

    def overrides(recipe: str, extra: list[str]) -> list[str]:
        found = module.run_overrides(recipe, 0, sites, "sqlite:///x.db", extra)
        keys = [o.partition("=")[0] for o in found]
        assert len(keys) == len(set(keys)), found
        return found

    assert "data.augment.acquisition_per_batch=false" in overrides("lpft_frozen3", [])
    assert "model.encoder_lr_mult=0.1" in overrides("lpft_frozen3", [])  # the rate it was measured at, not today's
    assert "model.encoder_lr_mult=0.3" in overrides("lpft_frozen3_site_batches_highlr", [])
    assert "trainer.ema_decay=null" in overrides("lpft_frozen3_site_batches_lr2", [])  # measured without the average
    assert "trainer.ema_decay=0.99" in overrides("lpft_frozen3_site_batches_lr2_ema", [])
    assert "trainer.ema_warmup=false" in overrides("lpft_frozen3_site_batches_lr2_ema", [])
    assert "trainer.ema_warmup=true" in overrides("lpft_frozen3_site_batches_lr2_emawarm_5pct", [])
    site_batches = overrides("lpft_frozen3_site_batches", ["data.augment.gamma=0.2"])
    assert "data.augment.acquisition_per_batch=true" in site_batches and "data.augment.gamma=0.2" in site_batches


def test_results_list_each_recipe_key_once_with_the_command_lines_extras() -> None:
    module = load_benchmark("generalisation")
    runs = [{"recipe": "lpft_frozen3_site_batches_5pct", "overrides": ["trainer.max_epochs=25"]},
            {"recipe": "lpft_frozen3_site_batches_5pct", "overrides": []}, {"recipe": "lpft_frozen3"}]
    line = module.recipe_line("lpft_frozen3_site_batches_5pct", runs)
    recipe, _, command_line = line.partition(" (command line: ")
    assert recipe.count("trainer.max_epochs=") == 1 and "trainer.max_epochs=14 " in recipe  # the recipe's last value
    assert command_line == "`trainer.max_epochs=25`)"
    assert "command line" not in module.recipe_line("lpft_frozen3", runs)


def test_a_ceiling_recipe_trains_on_the_source_as_the_site_acquires_it(tmp_path: Path, demo_manifest: Path) -> None:
    from medtl.data.manifest import read_manifest

    module = load_benchmark("generalisation")
    sites = module.build_sites(demo_manifest.parent, tmp_path, 0.3, 0, source_sites=["strong"])
    source, shifted = read_manifest(sites["source"]), read_manifest(sites["source_strong"])
    assert sites["source_strong"] == tmp_path / "source_strong.csv"
    assert list(shifted["label"]) == list(source["label"]) and list(shifted["patient_id"]) == list(source["patient_id"])
    assert all(Path(p).parent == tmp_path / "source_strong" and Path(p).is_file() for p in shifted["path"])
    held_out_site = read_manifest(sites["strong"])
    assert not set(shifted["patient_id"]) & set(held_out_site["patient_id"])  # still held out by patient
    stored, acquired = pydicom.dcmread(source["path"][0]), pydicom.dcmread(shifted["path"][0])
    assert acquired.PhotometricInterpretation == "MONOCHROME1"  # the strong site's detector, not the source's
    assert acquired.pixel_array.shape[0] < stored.pixel_array.shape[0]  # collimated, at half the resolution
    overrides = module.run_overrides("lpft_frozen3_trained_at_strong", 0, sites, "sqlite:///x.db", [])
    assert f"data.manifest={sites['source_strong']}" in overrides
    assert f"data.manifest={sites['source']}" in module.run_overrides("lpft_frozen3", 0, sites, "sqlite:///x.db", [])
    written = sites["source_strong"].stat().st_mtime_ns
    module.build_sites(demo_manifest.parent, tmp_path, 0.3, 0, source_sites=["strong"])
    assert sites["source_strong"].stat().st_mtime_ns == written  # written once


def test_a_soup_averages_the_logged_models_of_its_recipes_runs(tmp_path: Path, demo_manifest: Path) -> None:
    module = load_benchmark("generalisation")
    soup, recipe = "lpft_frozen3_site_batches_lr2_ema_soup_bn", "lpft_frozen3_site_batches_lr2_ema"
    args = ["--data", str(demo_manifest.parent), "--recipes", recipe, soup, "--seeds", "1", "0",
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path), "--out-name", "soup",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--holdout-fraction", "0.3",
            "data.image_size=32", "data.batch_size=8", "trainer.max_steps_per_epoch=2", "trainer.features.epochs=2",
            "trainer.max_epochs=1", f"data.cache_dir={tmp_path / 'cache'}", "tracking.log_model=true",
            "data.split_seed=0"]
    module.main(args)
    runs = [json.loads(line) for line in (tmp_path / "soup_runs.jsonl").read_text().splitlines()]
    assert [(r["recipe"], r["seed"]) for r in runs] == [(recipe, 1), (recipe, 0), (soup, "0+1")]
    assert runs[2]["ingredients"] == [runs[1]["model_uri"], runs[0]["model_uri"]]  # by seed
    assert all(r["model_uri"].startswith("models:/") for r in runs) and 0.0 <= runs[2]["strong_adabn_auroc"] <= 1.0
    assert f"`{soup}`: `" in (tmp_path / "soup.md").read_text()


def test_a_soup_takes_the_models_of_its_seeds_and_says_how_to_make_missing_ones() -> None:
    module = load_benchmark("generalisation")
    recipe, soup = "lpft_frozen3_site_batches_lr2_ema", "lpft_frozen3_site_batches_lr2_ema_soup"
    runs = [{"recipe": recipe, "seed": 0, "model_uri": None}, {"recipe": recipe, "seed": 1, "model_uri": "models:/a"},
            {"recipe": recipe, "seed": 2, "model_uri": "models:/b"}, {"recipe": soup, "seed": "1+2"}]
    with pytest.raises(SystemExit, match=f"none at seed\\(s\\) \\[0\\]; run --recipes {recipe} --seeds 0 1 2"):
        module.soup_ingredients(soup, runs, [0, 1, 2])
    assert module.soup_ingredients(soup, runs, [2, 1]) == ["models:/a", "models:/b"]
    with pytest.raises(SystemExit, match="two or more"):
        module.soup_ingredients(soup, runs, [1])
    assert module.soup_key([2, 0, 1]) == "0+1+2"
