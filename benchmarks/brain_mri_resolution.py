"""Brain MRI slices (four classes): finetune vs linear probe at several input resolutions, on all labels.

    python benchmarks/brain_mri_resolution.py --data ../shared/data/brain_mri      # run alone: it uses every core

Each (resolution, strategy, seed) is one ordinary ``medtl.train`` run through :mod:`label_efficiency`'s runner
(same fixed patient-level validation split, same settings: finetune ``--full-epochs`` epochs, the linear probe's
head on cached features), tracked in ``benchmarks/mlflow.db``. Writes
``benchmarks/results/brain_mri_resolution.{json,md,png}``: balanced accuracy and macro AUROC on validation, and
wall time, per resolution and strategy.
"""
from __future__ import annotations

import argparse
import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from label_efficiency import HERE, one_run  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/brain_mri")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160])
    parser.add_argument("--strategies", nargs="+", default=["finetune", "linear_probe"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--full-epochs", type=int, default=3)
    parser.add_argument("--cache", default="disk")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{HERE / 'mlflow.db'}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for size in args.sizes:
        for strategy in args.strategies:
            for seed in args.seeds:
                run_args = argparse.Namespace(experiment="brain_mri", data=args.data, image_size=size, cache=args.cache,
                                              tracking_uri=args.tracking_uri, full_epochs=args.full_epochs,
                                              max_epochs=args.full_epochs, overrides=[])
                rows.append({"size": size, **one_run(run_args, strategy, 1.0, seed)})
                print(json.dumps(rows[-1], default=float), flush=True)
    runs = pd.DataFrame(rows)
    table = runs.groupby(["size", "strategy"]).agg(balanced_accuracy=("balanced_accuracy", "mean"),
                                                   auroc=("auroc", "mean"), minutes=("seconds", lambda s: s.mean() / 60),
                                                   seeds=("seed", "count")).reset_index()
    out = HERE / "results" / "brain_mri_resolution"
    header = (f"medtl {git_commit(HERE)}, {machine_description()}; brain_mri (4 classes), all labels, validation "
              f"split of 20% of patients, finetune {args.full_epochs} epochs, seeds {args.seeds}\n\n")
    out.with_suffix(".md").write_text(header + markdown_table(table) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2, default=float))
    figure, axis = plt.subplots(figsize=(6, 4))
    for strategy, part in table.groupby("strategy"):
        axis.plot(part["size"], part["balanced_accuracy"], marker="o", label=strategy)
    axis.set_xlabel("input size (px)")
    axis.set_ylabel("validation balanced accuracy")
    axis.set_title("brain MRI slices: resolution")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    print(header + markdown_table(table))


if __name__ == "__main__":
    main()
