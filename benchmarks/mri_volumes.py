"""2D ImageNet weights on MRI volumes: 2.5D (mean / attention pooling) vs inflated 3D vs 3D from scratch.

    python benchmarks/mri_volumes.py --data ../shared/data/mri_volumes          # run alone: it uses every core

Task: T1-weighted vs FLAIR on the shared volumes (23 subjects, one volume of each). Subject-grouped 5-fold
cross-validation x seeds: per fold the held-out subjects are the test set, validation is carved by subject
from the rest and picks the threshold; AUROC and accuracy (at that threshold) are reported on the held-out
fold as stored, and on the same subjects as four simulated other sites (``medtl/data/volume_shift.py``:
thick 6 mm slices written as a DICOM series, 1.5 mm isotropic z-scored, oblique uint8, 12-bit raw units).
Each approach and seed runs in its own process, so its peak RSS is its own. Writes
``benchmarks/results/<out-name>.{json,md,png}``; rows are appended to ``<out-name>.jsonl`` as they finish,
so an interrupted run keeps what it measured and a rerun skips it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from monai.data import DataLoader  # noqa: E402
from monai.utils import set_determinism  # noqa: E402
from sklearn.model_selection import StratifiedGroupKFold  # noqa: E402

from medtl.data import ImageClassificationData  # noqa: E402
from medtl.data.manifest import scan_tree, write_manifest  # noqa: E402
from medtl.data.pipelines import VolumePipeline  # noqa: E402
from medtl.data.volume_shift import VOLUME_SITES, VolumeSite, write_volume_site  # noqa: E402
from medtl.engine import Trainer  # noqa: E402
from medtl.engine.evaluation import Evaluator  # noqa: E402
from medtl.models import build_classifier  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^([Ss]ubj\d+)_"]
APPROACHES = {  # name -> build_classifier arguments
    "2.5d_linear_probe": {"encoder": "efficientnet_lite0", "strategy": "linear_probe"},
    "2.5d_mean": {"encoder": "efficientnet_lite0", "strategy": "finetune", "slices": {"pooling": "mean"}},
    "2.5d_attention": {"encoder": "efficientnet_lite0", "strategy": "finetune", "slices": {"pooling": "attention"}},
    "inflated_3d": {"encoder": "efficientnet_lite0_3d", "strategy": "finetune"},
    "scratch_3d": {"encoder": "efficientnet_lite0_3d", "strategy": "scratch", "weights": None},
}
# The simulated sites of the benchmark: as VOLUME_SITES, with the thin 3D site at 1.5 mm (1 mm would write
# 3 GB for 46 volumes).
SITES = {**VOLUME_SITES, "thin_3d_zscore": VolumeSite("thin_3d_zscore", spacing=(1.5, 1.5, 1.5), units="zscore")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mri_volumes")
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=list(APPROACHES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--spacing", type=float, default=4.0, help="mm, isotropic")
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 48, 42])
    parser.add_argument("--slices", type=int, default=16, help="2.5D: slices per volume")
    parser.add_argument("--sites-dir", default=str(Path(os.environ.get("MEDTL_CACHE_DIR", "~/.cache/medtl"))
                                                   .expanduser() / "mri_volume_sites"))
    parser.add_argument("--out-name", default="mri_volumes")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figure from the recorded rows (the .md and .json stay the measuring run's)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # run one approach in this process
    return parser.parse_args(argv)


def folds_manifest(args: argparse.Namespace) -> pd.DataFrame:
    """Every volume with its subject and CV fold (subject-grouped, stratified)."""
    frame, _ = scan_tree(args.data, PATTERNS, scan=VolumePipeline().scan_folder)
    folds = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=0)
    frame["fold"] = -1
    for fold, (_, test) in enumerate(folds.split(frame, frame["label"], frame["patient_id"])):
        frame.loc[frame.index[test], "fold"] = fold
    return frame


def site_frames(frame: pd.DataFrame, args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Each simulated site's copy of every volume (written once under ``--sites-dir``), keyed like ``frame``."""
    out = {}
    for name, site in SITES.items():
        manifest = write_volume_site(frame[["path", "label", "patient_id"]], Path(args.sites_dir) / name, site)
        written = pd.read_csv(manifest)
        written["path"] = [str(manifest.parent / p) for p in written["path"]]
        out[name] = written
    return out


def one_run(args: argparse.Namespace, approach: str, fold: int, seed: int, frame: pd.DataFrame,
            sites: dict[str, pd.DataFrame], workdir: Path) -> dict:
    set_determinism(seed)
    split = np.where(frame["fold"] == fold, "test", "train")
    manifest = write_manifest(frame[["path", "label", "patient_id"]].assign(split=split), workdir / "fold.csv")
    pipeline = VolumePipeline(spacing=(args.spacing,) * 3, shape=tuple(args.shape))
    data = ImageClassificationData(manifest=str(manifest), positive_class="FLAIR", val_fraction=0.2,
                                   split_seed=seed, batch_size=4, check=False, pipeline=pipeline,
                                   patient_id_patterns=PATTERNS, cache_workers=1, cache="disk",
                                   cache_dir=str(Path(args.sites_dir) / "cache"))  # each volume decoded once
    data.setup()
    spec = APPROACHES[approach]
    model = build_classifier(spec["encoder"], spec["strategy"], 2, weights=spec.get("weights", "imagenet"),
                             input_shape=args.shape, slices={"count": args.slices, **spec.get("slices", {})})
    trainer = Trainer(partial(torch.optim.AdamW, weight_decay=1e-4), lr=1e-3, max_epochs=args.epochs,
                      early_stopping_patience=args.epochs, progress=False,
                      features={"cache": True, "epochs": 100, "patience": 15})  # the linear probe's head
    evaluator = Evaluator(data.classes)
    weights = model.encoder.weights_info
    train_loader, val_loader = data.loaders(weights, augment=not trainer.trains_on_features(model))
    fit = trainer.fit(model, train_loader, val_loader, score=evaluator.metrics)
    threshold = evaluator.report(trainer.predict(model, val_loader)).threshold
    row = {"approach": approach, "fold": fold, "seed": seed, "epochs": len(fit.history),
           "seconds_per_epoch": fit.seconds / max(len(fit.history), 1)}
    test_subjects = set(frame.loc[frame["fold"] == fold, "patient_id"])
    for name, rows in {"as_stored": data.frame, **sites}.items():
        rows = rows[rows["patient_id"].isin(test_subjects)].assign(split="test")
        loader = DataLoader(data.dataset("test", data.transform(weights, augment=False), weights, rows), batch_size=4)
        metrics = evaluator.report(trainer.predict(model, loader), threshold, "test").metrics
        row[f"{name}_auroc"], row[f"{name}_accuracy"] = metrics["auroc"], metrics["accuracy"]
    return row


def worker(args: argparse.Namespace) -> None:
    """Every fold x seed of one approach, appended to the jsonl as each finishes (a rerun skips finished ones)."""
    results = HERE / "results" / f"{args.out_name}.jsonl"
    done = {(r["approach"], r["fold"], r["seed"]) for r in _read_rows(results)}
    frame = folds_manifest(args)
    sites = site_frames(frame, args)
    workdir = Path(args.sites_dir) / f"work_{args.out_name}_{args.worker}"
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for fold in range(args.folds):
            if (args.worker, fold, seed) in done:
                continue
            row = one_run(args, args.worker, fold, seed, frame, sites, workdir)
            row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with results.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summarise(args: argparse.Namespace, seconds: float) -> None:
    rows = pd.DataFrame(_read_rows(HERE / "results" / f"{args.out_name}.jsonl"))
    rows = rows[rows["seed"].isin(args.seeds) & rows["approach"].isin(args.approaches)]
    metrics = [c for c in rows.columns if c.endswith(("_auroc", "_accuracy"))]
    table = rows.groupby("approach")[metrics + ["seconds_per_epoch", "peak_rss_mib"]].mean().reset_index()
    table.insert(1, "runs", rows.groupby("approach").size().values)
    site_auroc = [c for c in metrics if c.endswith("_auroc") and not c.startswith("as_stored")]
    table.insert(2, "sites_mean_auroc", table[site_auroc].mean(axis=1))
    spread = rows.assign(sites=rows[site_auroc].mean(axis=1)).groupby(["approach", "seed"])["sites"].mean()
    table.insert(3, "sites_auroc_sd_over_seeds", spread.groupby("approach").std().reindex(table["approach"]).values)
    out = HERE / "results" / args.out_name
    header = (f"medtl {git_commit(HERE)}, {machine_description()}; {args.folds}-fold subject-grouped CV x seeds "
              f"{args.seeds}, {args.epochs} epochs, {args.spacing} mm, shape {args.shape}, {args.slices} slices (2.5D); "
              f"{seconds / 60:.0f} min\n\n")
    out.with_suffix(".md").write_text(header + markdown_table(table) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows.to_dict("records")}, indent=2))
    _plot(table, metrics, out.with_suffix(".png"))
    print(header + markdown_table(table))


def _plot(table: pd.DataFrame, metrics: list[str], path: Path) -> None:
    """AUROC (top) and accuracy at the validation threshold (bottom) per approach, as stored and on each site."""
    sites = [c.removesuffix("_auroc") for c in metrics if c.endswith("_auroc")]
    figure, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    width = 0.8 / len(table)
    for axis, metric, label in ((axes[0], "auroc", "AUROC"), (axes[1], "accuracy", "accuracy at the val. threshold")):
        for i, (_, row) in enumerate(table.iterrows()):
            axis.bar(np.arange(len(sites)) + i * width, [row[f"{s}_{metric}"] for s in sites], width,
                     label=row["approach"])
        axis.set_ylabel(label)
        axis.set_ylim(0.4, 1.01)
        axis.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(np.arange(len(sites)) + 0.4 - width / 2, sites, rotation=15)
    axes[0].set_title("held-out subjects (5-fold CV x seeds), as stored and as four simulated sites store them")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(table), fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_only:
        rows = pd.DataFrame(_read_rows(HERE / "results" / f"{args.out_name}.jsonl"))
        metrics = [c for c in rows.columns if c.endswith(("_auroc", "_accuracy"))]
        _plot(rows.groupby("approach")[metrics].mean().reset_index(), metrics,
              (HERE / "results" / args.out_name).with_suffix(".png"))
        return
    if args.worker:
        worker(args)
        return
    start = time.perf_counter()
    forwarded = _without_seeds(list(argv if argv is not None else sys.argv[1:]))
    for seed in args.seeds:  # seed-major: an interrupted run has every approach on the first seeds
        for approach in args.approaches:
            subprocess.run([sys.executable, __file__, *forwarded, "--seeds", str(seed), "--worker", approach],
                           check=True)
    summarise(args, time.perf_counter() - start)


def _without_seeds(argv: list[str]) -> list[str]:
    out, skipping = [], False
    for arg in argv:
        if arg == "--seeds":
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return out


if __name__ == "__main__":
    main()
