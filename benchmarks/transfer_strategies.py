"""Validation AUROC and wall time of linear_probe, finetune and scratch on real chest X-rays.

    python benchmarks/transfer_strategies.py [--data ../shared/data/chest_xray_kermany] [--image-size 128]

Each strategy is one ordinary ``medtl.train`` run (composed with Hydra's compose API, tracked in
``benchmarks/mlflow.db``); validation is a patient-level 20% carved from ``train/``. Writes
``benchmarks/results/transfer_strategies.{json,md}`` with the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from medtl import CONFIG_DIR
from medtl.provenance import git_commit, machine_description
from medtl.train import train
from medtl.training import final_validation

HERE = Path(__file__).resolve().parent
STRATEGY_OVERRIDES = {
    # The per-epoch (augmented) linear probe, as measured for the README at commit b3c1cb8.
    "linear_probe": ["model.strategy=linear_probe", "trainer.max_epochs=10", "trainer.lr=3e-3",
                     "trainer.features.cache=false"],
    # The default linear probe: images encoded once, the head trained for up to 100 epochs on the features.
    "linear_probe_features": ["model.strategy=linear_probe", "trainer.lr=3e-3"],
    "finetune": ["model.strategy=finetune", "trainer.max_epochs=4", "trainer.lr=1e-3", "model.encoder_lr_mult=0.3",
                 "model.frozen_stages=0", "trainer.linear_probe_first=false"],  # as measured, before the recipe
    "scratch": ["model.strategy=scratch", "trainer.max_epochs=4", "trainer.lr=1e-3"],
}


def run_strategy(strategy: str, data: str, image_size: int, extra: list[str]) -> dict:
    overrides = ["+experiment=chest_xray", f"data.root={data}", f"data.image_size={image_size}",
                 f"tracking.uri=sqlite:///{HERE / 'mlflow.db'}", "tracking.experiment=benchmark_transfer_strategies",
                 "trainer.progress=false", *STRATEGY_OVERRIDES[strategy], *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    return {"strategy": strategy, "seconds": round(time.perf_counter() - start, 1), "overrides": overrides, **final_validation(metrics)}


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    data = os.path.relpath(args.data, HERE.parent)
    commit = git_commit(HERE)  # once, before the results files themselves make the tree dirty
    payload = {"machine": machine_description(), "commit": commit, "data": data, "image_size": args.image_size, "runs": rows}
    (out / f"{args.out_name}.json").write_text(json.dumps(payload, indent=2))
    lines = [f"Machine: {machine_description()}. Commit {commit}. Data: `{data}` (train/, 20% of patients held out), "
             f"{args.image_size} px.", "",
             "| strategy | val AUROC | accuracy | sensitivity | specificity | wall time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['auroc']:.3f} | {r['accuracy']:.3f} | {r['sensitivity']:.3f} | "
                     f"{r['specificity']:.3f} | {r['seconds'] / 60:.1f} min |")
    (out / f"{args.out_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--strategies", nargs="+", default=["linear_probe", "finetune", "scratch"],
                        choices=list(STRATEGY_OVERRIDES))
    parser.add_argument("--out-name", default="transfer_strategies", help="results file stem under results/")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = [run_strategy(s, args.data, args.image_size, args.overrides) for s in args.strategies]
    write_results(rows, args)


if __name__ == "__main__":
    main()
