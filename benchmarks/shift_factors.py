"""Which part of the strong acquisition shift costs a model its ranking: one factor of it at a time.

    python benchmarks/shift_factors.py --data ../shared/data/chest_xray_kermany/train [--recipes lpft_frozen3] [--seeds 0]

The generalisation benchmark's ``strong`` site (``medtl/data/shift.py``) changes six things at once. Here the same
held-out patients (the same split as ``benchmarks/generalisation.py``, built by it) are written once more per
factor of the strong preset, that factor at its strong value and every other one neutral: ``collimation`` (a 10%
tighter field per border, i.e. a 1.25x zoom after the letterbox), ``resolution`` (half the pixels per side),
``blur`` (the detector's Gaussian), ``contrast`` (exposure and gamma), ``noise`` (quantum noise) and ``window``
(another VOI window in the DICOM). Each run trains a generalisation recipe once, as that benchmark does, and scores
``heldout``, every factor site and ``strong``, without and with the site's own BatchNorm statistics (AdaBN).
``--sites`` chooses the factor sites: the single factors (the default) and ``without_<factor>``, the strong site
with every factor but that one (what undoing that factor alone would recover). Runs are appended to
``<out-name>_runs.jsonl``; the table and plot (``<out-name>.{md,json,png}``) are rewritten after each. Run it alone
on the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generalisation benchmark beside this file
from generalisation import (  # noqa: E402
    HERE, RECIPES, add_site_arguments, build_sites, open_results, run_overrides, write_runs)
from hydra import compose, initialize_config_dir  # noqa: E402

from medtl import CONFIG_DIR  # noqa: E402
from medtl.data.shift import AcquisitionShift, shift_for  # noqa: E402
from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402

# each factor: the fields of AcquisitionShift it sets to the strong preset's values
FACTORS: dict[str, tuple[str, ...]] = {
    "collimation": ("collimation",), "resolution": ("resolution",), "blur": ("blur_sigma",),
    "contrast": ("exposure", "gamma"), "noise": ("noise",), "window": ("window",),
}
# the factor sites: each factor alone, and the strong site with every factor but one (``without_<factor>``)
SITE_FIELDS: dict[str, tuple[str, ...]] = {
    **FACTORS,
    **{f"without_{factor}": tuple(f for other, fields in FACTORS.items() if other != factor for f in fields)
       for factor in FACTORS},
}
METRICS = ("auroc", "accuracy", "adabn_auroc", "adabn_accuracy")


def factor_shift(site: str) -> AcquisitionShift:
    """The factor site ``site`` (a key of :data:`SITE_FIELDS`): its fields at the strong preset's values, every
    other field neutral."""
    strong = shift_for("strong")
    return AcquisitionShift(jitter=strong.jitter, **{field: getattr(strong, field) for field in SITE_FIELDS[site]})


def build_factor_sites(heldout_csv: Path, work: Path, seed: int, names: list[str]) -> dict[str, Path]:
    """One labelled manifest per factor site in ``names`` under ``work`` (``factor_<name>.csv``; written once)."""
    from medtl.data.manifest import read_manifest, write_manifest
    from medtl.data.shift import write_shifted_site

    heldout = read_manifest(heldout_csv)
    paths = {}
    for name in names:
        paths[name] = work / f"factor_{name}.csv"
        if not paths[name].is_file():
            site = write_shifted_site(heldout, work / f"factor_{name}", factor_shift(name), seed=seed)
            write_manifest(site[["path", "label", "patient_id"]], paths[name])
    return paths


def one_run(recipe: str, seed: int, sites: dict[str, Path], factors: dict[str, Path], tracking_uri: str,
            extra: list[str]) -> dict:
    """Train ``recipe`` once (the generalisation run) and score every site; one row of ``<site>_<metric>``."""
    from medtl.train import train

    factor_sets = [f"+evaluation.external.{factor}={path}" for factor, path in factors.items()]
    overrides = [o if not o.startswith("tracking.experiment=") else "tracking.experiment=shift_factors"
                 for o in run_overrides(recipe, seed, sites, tracking_uri, extra)] + factor_sets
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    row = {"recipe": recipe, "seed": seed, "seconds": time.perf_counter() - start, "sites": list(factors)}
    for site in ("heldout", *factors, "strong"):
        for metric in METRICS:
            row[f"{site}_{metric}"] = metrics.get(f"external/{site}/{metric}")  # AdaBN: None with nothing to adapt
    return row


def sites_of(runs: pd.DataFrame) -> list[str]:
    """``heldout``, the factor sites the runs scored (in :data:`SITE_FIELDS` order), ``strong``."""
    listed = runs["sites"] if "sites" in runs.columns else pd.Series([None] * len(runs))
    scored = {site for sites in listed for site in (sites if isinstance(sites, list) else FACTORS)}  # older rows
    return ["heldout", *(site for site in SITE_FIELDS if site in scored), "strong"]


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per recipe x site (``heldout``, the factor sites, ``strong``): mean and sd over seeds of each
    metric."""
    runs = runs.reindex(columns=[*runs.columns, *(f"{site}_{m}" for site in sites_of(runs) for m in METRICS
                                                  if f"{site}_{m}" not in runs.columns)])
    rows = []
    for recipe, group in runs.groupby("recipe", sort=False):
        for site in sites_of(runs):
            row = {"recipe": recipe, "site": site, "seeds": len(group)}
            for metric in METRICS:
                values = pd.to_numeric(group[f"{site}_{metric}"], errors="coerce")
                row[f"{metric}_mean"], row[f"{metric}_sd"] = values.mean(), values.std()
            rows.append(row)
    return pd.DataFrame(rows)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """``mean ± sd`` cells, and each site's AUROC change against ``heldout`` (plain and AdaBN)."""
    def cell(row: pd.Series, metric: str) -> str:
        mean, sd = row[f"{metric}_mean"], row[f"{metric}_sd"]
        return "-" if pd.isna(mean) else f"{mean:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")

    heldout = table[table["site"] == "heldout"].set_index("recipe")
    out = table[["recipe", "site", "seeds"]].copy()
    for metric, label in (("auroc", "AUROC"), ("accuracy", "acc."), ("adabn_auroc", "AdaBN AUROC"),
                          ("adabn_accuracy", "AdaBN acc.")):
        out[label] = [cell(r, metric) for _, r in table.iterrows()]
    for metric, label in (("auroc", "AUROC vs heldout"), ("adabn_auroc", "AdaBN AUROC vs heldout")):
        change = table[f"{metric}_mean"].to_numpy() - heldout.loc[table["recipe"], f"{metric}_mean"].to_numpy()
        out[label] = ["-" if np.isnan(c) else f"{c:+.3f}" for c in change]
    return out


def plot(table: pd.DataFrame, path: Path) -> None:
    """AUROC per site, one panel per recipe, plain and with AdaBN."""
    recipes = list(dict.fromkeys(table["recipe"]))
    fig, axes = plt.subplots(1, len(recipes), figsize=(6 * len(recipes), 4), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        rows = table[table["recipe"] == recipe]
        y = np.arange(len(rows))
        for offset, metric, label in ((-0.2, "auroc", "as trained"), (0.2, "adabn_auroc", "AdaBN at the site")):
            ax.barh(y + offset, rows[f"{metric}_mean"], 0.4, xerr=rows[f"{metric}_sd"].fillna(0), label=label)
        ax.set_yticks(y, rows["site"])
        ax.invert_yaxis()
        ax.set_xlim(max(0.0, np.nanmin(rows[["auroc_mean", "adabn_auroc_mean"]].to_numpy()) - 0.05), 1.0)
        ax.set_xlabel("AUROC (mean, sd over seeds)")
        ax.set_title(recipe)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.suptitle("The strong site, one acquisition factor at a time (held-out patients)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(runs: list[dict], args: argparse.Namespace, out: Path) -> None:
    table = summarise(pd.DataFrame(runs))
    machine = machine_description()
    settings = (f"Data: {args.data}, {args.holdout_fraction:.0%} of patients held out (seed {args.holdout_seed}); "
                f"commit(s) {', '.join(sorted({r['commit'] for r in runs}))}; run alone")
    factors = "\n".join(f"- `{name}`: {dataclasses.asdict(factor_shift(name))}"
                        for name in sites_of(pd.DataFrame(runs))[1:-1])
    (out / f"{args.out_name}.md").write_text(f"Machine: {machine}. {settings}.\n\n{markdown_table(readable(table))}"
                                             f"\n\nFactor sites (every other field neutral):\n{factors}\n")
    (out / f"{args.out_name}.json").write_text(json.dumps({"machine": machine, "settings": settings,
                                                           "summary": table.to_dict("records")}, indent=2, default=float))
    plot(table, out / f"{args.out_name}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_site_arguments(parser, "shift_factors")
    parser.add_argument("--recipes", nargs="+", default=["lpft_frozen3"], choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sites", nargs="+", default=list(FACTORS), choices=list(SITE_FIELDS),
                        help="factor sites: a factor alone, or without_<factor> (the strong site but that factor)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    out, runs_file, runs = open_results(args)
    work = Path(args.work_dir).expanduser() / f"holdout{args.holdout_seed}"
    sites = build_sites(Path(args.data), work, args.holdout_fraction, args.holdout_seed)
    factors = build_factor_sites(sites["heldout"], work, args.holdout_seed, args.sites)
    done = {(r["recipe"], r["seed"]) for r in runs}
    for seed in args.seeds:
        for recipe in (r for r in args.recipes if (r, seed) not in done):
            row = {**one_run(recipe, seed, sites, factors, args.tracking_uri, args.overrides),
                   "commit": git_commit(HERE), "machine": machine_description(), "overrides": args.overrides}
            runs.append(row)
            write_runs(runs, runs_file)
            write_results(runs, args, out)
            print(json.dumps(row), flush=True)
    if runs:
        write_results(runs, args, out)
        print(readable(summarise(pd.DataFrame(runs))).to_string(index=False))


if __name__ == "__main__":
    main()
