"""Label efficiency: validation AUROC against the number of training labels, per strategy.

    python benchmarks/label_efficiency.py --experiment chest_xray --data ../shared/data/chest_xray_kermany
    python benchmarks/label_efficiency.py --experiment brain_mri --data ../shared/data/brain_mri

One fixed patient-level validation split; for each fraction of the remaining training patients
(stratified by label), each strategy and each seed, one ordinary ``medtl.train`` run (tracked in
``benchmarks/mlflow.db``). Writes ``benchmarks/results/label_efficiency_<experiment>.{json,md,png}``:
mean and spread of the validation AUROC (and balanced accuracy for several classes) and wall time.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from medtl import CONFIG_DIR  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402
from medtl.train import train  # noqa: E402
from medtl.training import final_validation  # noqa: E402

HERE = Path(__file__).resolve().parent
STRATEGIES = {
    "scratch": ["model.strategy=scratch", "trainer.lr=1e-3"],
    "linear_probe": ["model.strategy=linear_probe", "trainer.lr=3e-3"],
    "finetune": ["model.strategy=finetune", "trainer.lr=1e-3", "model.encoder_lr_mult=0.3",
                 "model.frozen_stages=0", "trainer.linear_probe_first=false"],  # as measured, before the recipe
}


def epochs_for(fraction: float, full_epochs: int, max_epochs: int) -> int:
    """Epochs for a run on ``fraction`` of the training patients: ``full_epochs / sqrt(fraction)``, capped.

    Fewer labels get more (cheaper) epochs, so a 1% run still takes a useful number of optimiser steps
    (3 epochs at 100% -> 30 at 1%, before the cap); early stopping on val AUROC still applies.
    The linear probe trains its head on cached features for ``trainer.features.epochs`` instead.
    """
    return min(max_epochs, math.ceil(full_epochs / math.sqrt(fraction) - 1e-9))


def one_run(args: argparse.Namespace, strategy: str, fraction: float, seed: int) -> dict:
    overrides = [f"+experiment={args.experiment}", f"data.image_size={args.image_size}", "data.check=false",
                 f"data.train_fraction={fraction}", f"data.train_subset_seed={seed}", f"seed={seed}",
                 f"tracking.uri={args.tracking_uri}", f"tracking.experiment=label_efficiency_{args.experiment}",
                 "tracking.log_model=false", "trainer.progress=false", f"data.cache={args.cache}",
                 f"trainer.max_epochs={epochs_for(fraction, args.full_epochs, args.max_epochs)}",
                 *STRATEGIES[strategy], *args.overrides]
    if args.data:
        overrides.append(f"data.root={args.data}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    labels = int((instantiate(cfg.data).setup()["split"] == "train").sum())  # manifest only, no image read
    start = time.perf_counter()
    metrics = train(cfg)
    return {"strategy": strategy, "fraction": fraction, "seed": seed, "labels": labels,
            "seconds": time.perf_counter() - start, **final_validation(metrics)}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    metrics = [m for m in ("auroc", "balanced_accuracy") if m in runs.columns]
    table = runs.groupby(["strategy", "fraction"]).agg(
        **{f"{m}_mean": (m, "mean") for m in metrics}, **{f"{m}_std": (m, "std") for m in metrics},
        labels=("labels", "mean"), seconds=("seconds", "mean"), seeds=("seed", "count"))
    return table.reset_index()


def target_checks(table: pd.DataFrame) -> list[str]:
    """Issue targets, as sentences: full-set finetune AUROC >= 0.98 in < 20 min; pretrained at 5% >= scratch at 100%."""
    cell = table.set_index(["strategy", "fraction"])
    lines = []
    if ("finetune", 1.0) in cell.index:
        row = cell.loc[("finetune", 1.0)]
        met = row["auroc_mean"] >= 0.98 and row["seconds"] < 20 * 60
        lines.append(f"finetune on all labels: AUROC {row['auroc_mean']:.3f} in {row['seconds'] / 60:.1f} min "
                     f"(target >= 0.98 in < 20 min: {'met' if met else 'NOT met'})")
    pretrained = [s for s in ("finetune", "linear_probe") if (s, 0.05) in cell.index]
    if ("scratch", 1.0) in cell.index and pretrained:
        best = max(pretrained, key=lambda s: cell.loc[(s, 0.05), "auroc_mean"])
        low, full = cell.loc[(best, 0.05), "auroc_mean"], cell.loc[("scratch", 1.0), "auroc_mean"]
        lines.append(f"{best} with 5% of the labels: AUROC {low:.3f}; scratch with 100%: {full:.3f} "
                     f"(target: 5% pretrained >= 100% scratch: {'met' if low >= full else 'NOT met'})")
    return lines


def plot(table: pd.DataFrame, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, rows in table.groupby("strategy"):
        ax.errorbar(rows["labels"], rows["auroc_mean"], yerr=rows["auroc_std"].fillna(0), marker="o",
                    capsize=3, label=strategy)
    ax.set_xscale("log")
    ticks = sorted(table["labels"].round().unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training images with labels")
    ax.set_ylabel("validation AUROC (mean, sd over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="chest_xray")
    parser.add_argument("--data", default=None, help="data.root; the experiment's default (demo) when omitted")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.25, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--full-epochs", type=int, default=3, help="finetune/scratch epochs on 100%% of the labels")
    parser.add_argument("--max-epochs", type=int, default=20, help="cap on the epochs of the smallest fractions")
    parser.add_argument("--cache", default="disk", help="data.cache: disk decodes each image once for all runs")
    parser.add_argument("--out-name", default=None, help="results file stem (default label_efficiency_<experiment>)")
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{HERE / 'mlflow.db'}")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING)
    runs = pd.DataFrame([one_run(args, s, f, seed) for s in args.strategies for f in args.fractions for seed in args.seeds])
    table = summarise(runs)
    stem = args.out_name or f"label_efficiency_{args.experiment}"
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    commit = git_commit(HERE)
    settings = (f"{args.experiment}, {args.image_size} px, commit {commit}; finetune/scratch epochs "
                f"min({args.max_epochs}, ceil({args.full_epochs}/sqrt(fraction))); seeds {args.seeds}")
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "commit": commit, "settings": settings,
                                                  "data": args.data, "argv": argv or [],
                                                  "runs": runs.to_dict("records")}, indent=2, default=float))
    checks = "".join(f"- {line}\n" for line in target_checks(table))
    (out / f"{stem}.md").write_text(f"Machine: {machine}. {settings}.\n\n" + markdown_table(table) + "\n\n" + checks)
    plot(table, out / f"{stem}.png", f"{args.experiment}: label efficiency")
    print(table.to_string(index=False) + "\n" + checks)


if __name__ == "__main__":
    main()
