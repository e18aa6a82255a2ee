"""Does medtl grow linearly with the data set? The data check and one training epoch on the disk cache, on
generated trees of 10k, 50k and 100k small images: wall time and peak memory against size.

    python benchmarks/scale.py [--sizes 10000 50000 100000] [--work-dir ~/.cache/medtl/scale]

Each tree (two classes, 4 images per patient, some near-duplicate pairs planted; written once and reused) is
measured in fresh processes, one per step, so each step's peak resident memory (``ru_maxrss``) is its own:

- ``check``: ``python -m medtl.data.check``'s work (read every image, hashes, near-duplicate search, shortcut probe);
- ``epoch``: ``medtl.train`` with ``data.cache=disk`` (an empty cache: decode and write every image, then stream
  it back), one fine-tuning epoch of EfficientNet-Lite0 at 32 px and the validation pass; the data check off
  (measured above) and no model export.

Run it alone (no tests beside it). Writes ``benchmarks/results/scale.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from medtl.provenance import git_commit, machine_description, markdown_table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
SIDE = 48  # pixels of a generated image
PER_PATIENT = 4
EPOCH_OVERRIDES = ["+experiment=chest_xray", "model.strategy=finetune", "model.frozen_stages=0",
                   "trainer.linear_probe_first=false", "evaluation.external_adabn=false", "trainer.max_epochs=1",
                   "data.batch_size=64", "data.cache=disk", "data.check=false",
                   "tracking.log_model=false", "trainer.progress=false", "data.patient_id_patterns=['^(p\\d+)_']"]


def write_tree(root: Path, size: int, seed: int = 0) -> Path:
    """``size`` greyscale PNGs under ``root/{NORMAL,PNEUMONIA}/p<patient>_<k>.png`` (written once; a ``done`` file
    marks a finished tree). Every patient has a smooth random field and each of its images adds one of its own
    (another view) and noise; abnormal patients' images carry a bright blob. One patient in 50 has a near-duplicate
    pair (an image and a brighter copy)."""
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, SIDE), np.linspace(-1, 1, SIDE)))  # (2, SIDE, SIDE)
    for patient in tqdm(range(size // PER_PATIENT), desc=f"writing {size} images", unit="patient"):
        label = "PNEUMONIA" if patient % 2 else "NORMAL"  # the classes +experiment=chest_xray expects
        base = _patient_field(rng, grid, abnormal=label == "PNEUMONIA")
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        image = base
        for k in range(PER_PATIENT):
            near_copy = patient % 50 == 0 and k == PER_PATIENT - 1  # the previous image, 3 grey levels brighter
            image = image + 3 if near_copy else (base + _patient_field(rng, grid, False)) / 2 + rng.normal(0, 4, base.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"p{patient}_{k}.png")
    (root / "done").write_text(str(size))
    return root


def _patient_field(rng: np.random.Generator, grid: np.ndarray, abnormal: bool) -> np.ndarray:
    """A ``(SIDE, SIDE)`` image in [0, 255]: a few random waves, plus a blob when ``abnormal``."""
    waves = sum(np.sin(rng.uniform(1, 6) * (grid[0] * np.cos(a) + grid[1] * np.sin(a)) + rng.uniform(0, 6))
                for a in rng.uniform(0, np.pi, 4))
    image = 120 + 25 * waves
    if abnormal:
        centre = rng.uniform(-0.5, 0.5, 2)
        image += 70 * np.exp(-((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2) / 0.05)
    return image


def run_step(step: str, root: Path, work: Path, image_size: int) -> dict:
    """One step in a fresh process (its own peak memory); returns ``{"seconds", "peak_mib", ...}``."""
    command = [sys.executable, __file__, "--step", step, "--root", str(root), "--work-dir", str(work),
               "--image-size", str(image_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{step} on {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_check(root: Path) -> dict:
    from medtl.data.check import check_frame
    from medtl.data.manifest import scan_tree

    start = time.perf_counter()
    frame, inventory = scan_tree(root, [r"^(p\d+)_"])
    report, _ = check_frame(frame, progress=False, inventory=inventory)
    return {"seconds": time.perf_counter() - start, "near_duplicate_pairs": len(report.near_duplicates),
            "exact_duplicate_groups": len(report.exact_duplicates)}


def step_epoch(root: Path, work: Path, image_size: int) -> dict:
    from hydra import compose, initialize_config_dir

    from medtl import CONFIG_DIR
    from medtl.train import train

    cache = work / f"cache_{root.name}"
    shutil.rmtree(cache, ignore_errors=True)  # an empty cache: the epoch decodes and writes every image
    overrides = [*EPOCH_OVERRIDES, f"data.image_size={image_size}", f"data.root={root}", f"data.cache_dir={cache}",
                 f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"trainer.checkpoint_dir={work / 'checkpoints'}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return {"seconds": seconds, "val_auroc": metrics["val/final_auroc"]}


def plot(table: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for step, rows in table.groupby("step"):
        axes[0].plot(rows["images"], rows["minutes"], marker="o", label=step)
        axes[1].plot(rows["images"], rows["peak memory (MiB)"], marker="o", label=step)
    for ax, label in zip(axes, ["wall time (min)", "peak resident memory (MiB)"]):
        ax.set_xlabel("images")
        ax.set_ylabel(label)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("medtl at scale: data check and one disk-cached epoch (32 px)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--work-dir", default=str(Path("~/.cache/medtl/scale").expanduser()))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    parser.add_argument("--image-size", type=int, default=32, help="of the training epoch (px)")
    parser.add_argument("--step", choices=["check", "epoch"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work_dir).expanduser()
    if args.step:  # one measured step, in this fresh process
        result = step_check(Path(args.root)) if args.step == "check" else step_epoch(Path(args.root), work,
                                                                                        args.image_size)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
        print(json.dumps({**result, "peak_mib": peak_kib / 1024}))
        return
    rows = []
    for size in args.sizes:
        root = write_tree(work / f"tree_{size}", size)
        for step in ("check", "epoch"):
            result = run_step(step, root, work, args.image_size)
            rows.append({"step": step, "images": size, "minutes": result["seconds"] / 60,
                         "peak memory (MiB)": result["peak_mib"],
                         **{k: v for k, v in result.items() if k not in ("seconds", "peak_mib")}})
            print(rows[-1], flush=True)
    write_results(pd.DataFrame(rows), Path(args.results_dir))


def write_results(table: pd.DataFrame, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine, commit = machine_description(), git_commit(HERE)
    (out / "scale.json").write_text(json.dumps({"machine": machine, "commit": commit,
                                                "rows": table.to_dict("records")}, indent=2))
    shown = table[["step", "images", "minutes", "peak memory (MiB)"]].copy()
    shown["per 10k images (min)"] = shown["minutes"] / shown["images"] * 10_000
    (out / "scale.md").write_text(
        f"Machine: {machine}; commit {commit}; `python benchmarks/scale.py`, run alone.\n\n"
        f"{markdown_table(shown)}\n")
    plot(table, out / "scale.png")


if __name__ == "__main__":
    main()
