"""Shortcuts, from "detected" to "removed": recipes judged on a collection they never trained on.

    python benchmarks/shortcuts.py --set brain_mri [--recipes erm group_dro ...] [--seeds 0 1 2]
    python benchmarks/shortcuts.py --set chest_xray

1. medtl's data check reads every image of the set once, infers its collections from label-free properties
   (``medtl/data/shortcuts.py``) and reports each one's label balance and the properties that carry the shortcut.
   For the split, the same properties are cut into ``--collections`` k-means clusters (4: holding one out must
   leave at least two to train on, or collection-aware training has nothing to balance), and each patient's images
   go to the collection most of them fell in (no patient on both sides of a split); the assignment is written
   as the manifest's ``domain`` column (``<work-dir>/<set>/all_<k>.csv``, once), so every run balances, weights and
   probes the same collections.
2. Leave-one-collection-out: every collection with at least ``--min-per-class`` images of each class is held out
   in turn. Runs train on the other collections (validation carved from them by patient, so "in-collection") and
   score the held-out one as an external set, at the threshold their own validation chose.
3. Each recipe is an ordinary ``medtl.train`` run of the set's experiment at 128 px (the setting the issue
   measured) with the recipe's overrides. Per run: validation AUROC, held-out AUROC and accuracy (sensitivity,
   specificity), and ``val/collection_probe_auroc``, the probe on the trained model's own features (how well
   they tell a validation image's collection within its class; 0.5 = not at all).

Every run is appended to ``<out-name>_runs.jsonl`` as it ends (an interrupted benchmark continues where it
stopped); the table and plot are rewritten after each run (``benchmarks/results/<out-name>.{md,json,png}``).
Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from medtl import CONFIG_DIR  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
SETS: dict[str, dict] = {
    "brain_mri": {"data": SHARED / "brain_mri" / "train", "experiment": "brain_mri", "positive": "tumour",
                  "label_map": {"glioma": "tumour", "meningioma": "tumour", "pituitary": "tumour",
                                "notumor": "no_tumour"}, "patterns": []},
    "chest_xray": {"data": SHARED / "chest_xray_kermany" / "train", "experiment": "chest_xray",
                   "positive": "PNEUMONIA", "label_map": {},
                   "patterns": [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]},
}
# every recipe starts from no mitigation, whatever the experiment's defaults (brain_mri erases fingerprints)
BASE = ["data.image_size=128", "model.strategy=finetune", "trainer.max_epochs=3", "data.intensity.equalize=false",
        "data.pipeline.crop.foreground=null"]
ERASE = ["data.intensity.equalize=true", "data.pipeline.crop.foreground=0.05"]
RECIPES: dict[str, list[str]] = {
    "erm": [],
    # preprocessing that erases collection fingerprints: grey levels equalised, the anatomy cropped to fill the input
    "erase": ERASE,
    "balanced": ["data.sampling=balanced"],
    "group_dro": ["objective=group_dro"],
    "adversary": ["objective=collection_adversary"],
    # another class's grey-level distribution given to half the training images (the histogram carries the shortcut)
    "counterfactual": ["data.augment.counterfactual_histogram=0.5"],
    # with equalisation every histogram is flat already, so the combination takes only the crop from `erase`
    "crop_counterfactual": ["data.pipeline.crop.foreground=0.05", "data.augment.counterfactual_histogram=0.5"],
    "erase_group_dro": [*ERASE, "objective=group_dro"],
    "erase_balanced_adversary": [*ERASE, "data.sampling=balanced", "objective=collection_adversary"],
}
METRICS = ("val_auroc", "heldout_auroc", "heldout_accuracy", "heldout_sensitivity", "heldout_specificity",
           "feature_probe_auroc")


def build_collections(name: str, work: Path, count: int) -> tuple[pd.DataFrame, dict]:
    """Every image of set ``name`` with its label (mapped) and one of ``count`` inferred collections (``domain``),
    and the data check's findings (its own collections, chosen by silhouette, too); computed once under ``work``."""
    from medtl.data.check import check_frame
    from medtl.data.manifest import read_manifest, scan_tree, write_manifest
    from medtl.data.shortcuts import describe_collections, facts_table, infer_collections

    spec, work = SETS[name], work / name
    manifest, findings = work / f"all_{count}.csv", work / f"findings_{count}.json"
    if not manifest.is_file():
        work.mkdir(parents=True, exist_ok=True)
        frame, _ = scan_tree(spec["data"], spec["patterns"])
        frame["label"] = frame["label"].replace(spec["label_map"])
        report, facts = check_frame(frame[["path", "label", "patient_id"]])
        table = facts_table(facts)  # every image is readable in the shared sets: facts in the frame's order
        frame["domain"] = by_patient(pd.Series([f"c{i}" for i in infer_collections(table, count=count)]),
                                     frame["patient_id"])
        findings.write_text(json.dumps({"shortcut_auroc": report.shortcut_auroc,
                                        "shortcut_properties": report.shortcut_properties,
                                        "check_collections": report.collections,
                                        "collections": describe_collections(frame["label"], frame["domain"], table)},
                                       indent=2))
        write_manifest(frame[["path", "label", "patient_id", "domain"]], manifest)
    return read_manifest(manifest), json.loads(findings.read_text())


def by_patient(domains: pd.Series, patients: pd.Series) -> list[str]:
    """Each patient's images all get the collection most of them were clustered into (ties: the first name), so a
    held-out collection shares no patient with the collections trained on (Kermany's patients have several images,
    which the per-image clustering can split)."""
    frame = pd.DataFrame({"domain": domains.to_numpy(), "patient": patients.to_numpy()})
    majority = frame.groupby("patient")["domain"].agg(lambda d: sorted(d.mode())[0])
    return frame["patient"].map(majority).tolist()


def folds(frame: pd.DataFrame, min_per_class: int) -> list[str]:
    """The collections with at least ``min_per_class`` images of every class: each is held out in turn."""
    counts = frame.groupby(["domain", "label"]).size().unstack(fill_value=0)
    return [str(c) for c in counts.index if (counts.loc[c] >= min_per_class).all()]


def write_fold(frame: pd.DataFrame, held_out: str, work: Path) -> dict[str, Path]:
    from medtl.data.manifest import write_manifest

    work.mkdir(parents=True, exist_ok=True)
    paths = {"source": work / f"source_without_{held_out}.csv", "heldout": work / f"collection_{held_out}.csv"}
    inside = frame["domain"].astype(str) == held_out
    shared = set(frame.loc[inside, "patient_id"]) & set(frame.loc[~inside, "patient_id"])
    if shared:
        raise ValueError(f"collection {held_out} shares {len(shared)} patient(s) with the others; assign collections "
                         "per patient (by_patient) so the held-out collection is never trained on")
    write_manifest(frame[~inside], paths["source"])
    write_manifest(frame[inside].drop(columns="domain"), paths["heldout"])
    return paths


def last_wins(overrides: list[str]) -> list[str]:
    """``key=value`` overrides with one per key, the last given (a recipe's over ``BASE``, the command line's over
    both), in the order the keys first appeared."""
    chosen: dict[str, str] = {}
    for override in overrides:
        chosen[override.split("=", 1)[0]] = override
    return list(chosen.values())


def run_overrides(name: str, recipe: str, seed: int, fold: dict[str, Path], tracking_uri: str,
                  extra: list[str]) -> list[str]:
    """The ``medtl.train`` overrides of one run: the set's experiment on the fold's source, the recipe on top of
    :data:`BASE`, the held-out collection as an external set."""
    spec = SETS[name]
    overrides = [f"+experiment={spec['experiment']}", f"data.manifest={fold['source']}",
                 f"data.positive_class={spec['positive']}", f"seed={seed}", "data.cache=disk",
                 "trainer.progress=false", f"tracking.uri={tracking_uri}", "tracking.experiment=shortcuts",
                 f"tracking.run_name={name}-{recipe}", "tracking.log_model=false",
                 f"+evaluation.external.heldout={fold['heldout']}", *BASE, *RECIPES[recipe], *extra]
    return last_wins(overrides)


def one_run(name: str, recipe: str, seed: int, fold: dict[str, Path], tracking_uri: str, extra: list[str]) -> dict:
    from medtl.train import train

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=run_overrides(name, recipe, seed, fold, tracking_uri, extra))
    start = time.perf_counter()
    metrics = train(cfg)
    row = {"set": name, "recipe": recipe, "seed": seed, "minutes": (time.perf_counter() - start) / 60,
           "val_auroc": metrics["val/final_auroc"], "feature_probe_auroc": metrics.get("val/collection_probe_auroc")}
    for metric in ("auroc", "accuracy", "sensitivity", "specificity"):
        row[f"heldout_{metric}"] = metrics[f"external/heldout/{metric}"]
    return row


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per set, held-out collection and recipe (in :data:`RECIPES` order)."""
    grouped = runs.groupby(["set", "heldout", "recipe"], sort=False)
    table = grouped[list(METRICS) + ["minutes"]].agg(["mean", "std"])
    table.columns = [f"{m}_{s}" for m, s in table.columns]
    table["seeds"] = grouped["seed"].count()
    table = table.reset_index()
    table["order"] = table["recipe"].map({r: i for i, r in enumerate(RECIPES)})
    return table.sort_values(["set", "heldout", "order"]).drop(columns="order").reset_index(drop=True)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    def cell(row: pd.Series, metric: str) -> str:
        mean, sd = row[f"{metric}_mean"], row[f"{metric}_std"]
        return "n/a" if pd.isna(mean) else f"{mean:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")

    out = table[["set", "heldout", "recipe", "seeds"]].copy()
    out["minutes"] = table["minutes_mean"].round(1)
    labels = {"val_auroc": "val AUROC (in-collection)", "heldout_auroc": "held-out AUROC",
              "heldout_accuracy": "held-out acc.", "heldout_sensitivity": "sens.", "heldout_specificity": "spec.",
              "feature_probe_auroc": "feature probe AUROC"}
    for metric, label in labels.items():
        out[label] = [cell(row, metric) for _, row in table.iterrows()]
    return out


def plot(table: pd.DataFrame, path: Path) -> None:
    """One row of panels per set; in each panel a group of bars per held-out collection, one bar (mean, sd over
    seeds) per recipe, in the same colour for the same recipe everywhere."""
    panels = [("heldout_auroc", "held-out collection AUROC"), ("heldout_accuracy", "held-out accuracy (source threshold)"),
              ("feature_probe_auroc", "collection probe on the model's features")]
    sets = list(dict.fromkeys(table["set"]))
    fig, axes = plt.subplots(len(sets), 3, figsize=(16, 4.4 * len(sets)), squeeze=False)
    for row, name in zip(axes, sets):
        part = table[table["set"] == name]
        for ax, (metric, title) in zip(row, panels):
            _grouped_bars(ax, part, metric)
            ax.set_title(f"{name}: {title}", fontsize=10)
        row[0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle("Leave-one-collection-out: each recipe trained without the collection it is scored on")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grouped_bars(ax: plt.Axes, part: pd.DataFrame, metric: str) -> None:
    heldouts, recipes = list(dict.fromkeys(part["heldout"])), [r for r in RECIPES if r in set(part["recipe"])]
    width = 0.8 / len(recipes)
    for i, recipe in enumerate(recipes):
        rows = part[part["recipe"] == recipe]
        x = np.array([heldouts.index(h) for h in rows["heldout"]]) + (i - (len(recipes) - 1) / 2) * width
        ax.bar(x, rows[f"{metric}_mean"], width, yerr=rows[f"{metric}_std"].fillna(0), label=recipe,
               color=plt.cm.tab10(list(RECIPES).index(recipe) % 10))
    ax.set_xticks(np.arange(len(heldouts)), [f"held out: {h}" for h in heldouts])
    values = part[f"{metric}_mean"].dropna()
    low = 0.0 if values.empty else max(0.0, np.floor((values.min() - 0.05) * 10) / 10)
    ax.set_ylim(low, 1.0)
    ax.grid(axis="y", alpha=0.3)


def write_results(runs: list[dict], findings: dict[str, dict], out: Path, out_name: str) -> None:
    from medtl.atomic import write_text_atomic

    table = summarise(pd.DataFrame(runs))
    commits = sorted({r["commit"] for r in runs})
    machines = sorted({r.get("machine") or machine_description() for r in runs})
    header = (f"Machine(s): {'; '.join(machines)}. Commit(s) {', '.join(commits)}; run alone. 128 px, finetune 3 "
              "epochs, on top of each set's experiment.")
    found = "\n".join(f"- {name}: image-property probe AUROC {f['shortcut_auroc']:.3f}; carried by "
                      f"{', '.join(f'{k} {v:.2f}' for k, v in list(f['shortcut_properties'].items())[:3])}; "
                      f"collections: " + "; ".join(f"{c['name']} {c['labels']}" for c in f["collections"])
                      for name, f in findings.items())
    recipes = "\n".join(f"- `{name}`: `{' '.join(overrides) or '(none)'}`" for name, overrides in RECIPES.items())
    write_text_atomic(out / f"{out_name}.md", f"{header}\n\nData check:\n{found}\n\n{markdown_table(readable(table))}"
                                              f"\n\nRecipes:\n{recipes}\n")
    write_text_atomic(out / f"{out_name}.json", json.dumps({"header": header, "findings": findings,
                                                           "summary": table.to_dict("records")}, indent=2, default=float))
    plot(table, out / f"{out_name}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", nargs="+", default=["brain_mri"], choices=list(SETS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-per-class", type=int, default=30)
    parser.add_argument("--folds", nargs="*", default=None, help="hold out only these collections (c0, c1...)")
    parser.add_argument("--collections", type=int, default=4,
                        help="k-means clusters for the split (the check's own choice, by silhouette, may be fewer)")
    parser.add_argument("--work-dir", default="~/.cache/medtl/shortcuts")
    parser.add_argument("--out-name", default="shortcuts")
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{HERE / 'mlflow.db'}")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out, work = Path(args.results_dir), Path(args.work_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    runs_file = out / f"{args.out_name}_runs.jsonl"
    runs = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
    findings = earlier_findings(out / f"{args.out_name}.json")  # sets measured by earlier calls stay in the report
    stored = len(runs)
    for name in args.sets:
        frame, findings[name] = build_collections(name, work, args.collections)
        for held_out in (f for f in folds(frame, args.min_per_class) if args.folds is None or f in args.folds):
            fold = write_fold(frame, held_out, work / name / f"k{args.collections}")
            for seed in args.seeds:
                for recipe in args.recipes:
                    key = (name, held_out, recipe, seed)
                    if any((r["set"], r["heldout"], r["recipe"], r["seed"]) == key for r in runs):
                        continue
                    row = {**one_run(name, recipe, seed, fold, args.tracking_uri, args.overrides), "heldout": held_out,
                           "commit": git_commit(HERE), "machine": machine_description()}
                    runs.append(row)
                    _write_runs(runs, runs_file)
                    write_results(runs, findings, out, args.out_name)
                    print(json.dumps(row), flush=True)
    if runs and len(runs) == stored:  # every run was there already: the report takes this code's layout and checks
        write_results(runs, findings, out, args.out_name)


def earlier_findings(report: Path) -> dict[str, dict]:
    """The data check's findings per set from an earlier report (``<out-name>.json``), ``{}`` when there is none."""
    return json.loads(report.read_text()).get("findings", {}) if report.is_file() else {}


def _write_runs(runs: list[dict], path: Path) -> None:
    from medtl.atomic import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in runs))


if __name__ == "__main__":
    main()
