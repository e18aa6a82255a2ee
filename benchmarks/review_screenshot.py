"""Pictures of the HTML review report for the README: train a run, render ``python -m medtl.review`` for it and
photograph the clinical numbers and the first case gallery in Debian's headless Chromium (Playwright driving it).

    python benchmarks/review_screenshot.py                      # real chest X-rays: ../shared/data/chest_xray_kermany
    python benchmarks/review_screenshot.py --data demo          # the built-in synthetic demo

Writes ``benchmarks/results/review_{numbers,gallery}.png`` and ``review_report.md`` (command, commit, machine, the
run's metrics). Needs ``apt-get install chromium`` and ``pip install -e '.[dev]'``. Run it alone: it trains.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from medtl.provenance import git_commit  # noqa: E402
from medtl.review.report import write_report  # noqa: E402
from medtl.train import train  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
KERMANY = HERE.parent.parent / "shared" / "data" / "chest_xray_kermany"


def train_run(data: str, image_size: int, store: Path) -> dict[str, float]:
    overrides = ["+experiment=chest_xray", "model.strategy=linear_probe",  # what the README's screenshot shows
                 f"data.image_size={image_size}", "trainer.progress=false",
                 f"tracking.uri=sqlite:///{store / 'mlflow.db'}", f"trainer.checkpoint_dir={store / 'checkpoints'}",
                 "tracking.system_metrics=false"]
    overrides += [] if data == "demo" else [f"data.root={data}"]
    return train(compose_config(overrides))


def photograph(html: Path, out: Path) -> None:
    """The numbers section (to the ROC curve) and the first gallery, each as one PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(html.as_uri())
        images = page.locator("img")
        _clip(page, page.locator("h2", has_text="The numbers"), images.nth(0), out / "review_numbers.png")
        _clip(page, page.locator("h2", has_text="Cases"), images.nth(2), out / "review_gallery.png")
        browser.close()


def _clip(page: object, start: object, end: object, path: Path) -> None:
    top, bottom = start.bounding_box(), end.bounding_box()  # type: ignore[attr-defined]
    clip = {"x": 0, "y": top["y"] - 8, "width": 1280, "height": bottom["y"] + bottom["height"] - top["y"] + 16}
    page.screenshot(path=str(path), clip=clip, full_page=True)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(KERMANY), help="a class-per-folder tree, or 'demo'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cases-per-group", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    commit, start = git_commit(HERE.parent), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medtl-review-shot-") as tmp:
        store = Path(tmp)
        metrics = train_run(args.data, args.image_size, store)
        trained = time.perf_counter() - start
        html = write_report(out=store / "review", tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
                            cases_per_group=args.cases_per_group, log_to_run=False)
        reviewed = time.perf_counter() - start - trained
        args.out.mkdir(parents=True, exist_ok=True)
        photograph(html, args.out)
    command = "python benchmarks/review_screenshot.py" + ("" if args.data == str(KERMANY) else f" --data {args.data}")
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    lines = ["# Review report screenshots\n", f"Command: `{command}` (image size {args.image_size}, "
             f"{args.cases_per_group} cases per group). Commit {commit}. Machine: {machine}.\n",
             f"Training (linear probe, the chest_xray experiment's default) took {trained / 60:.1f} min; the review "
             f"report (papermill + nbconvert, Grad-CAM on every shown case) {reviewed:.0f} s.\n",
             "| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in metrics.items())]
    (args.out / "review_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
