"""Screenshots of the MLflow UI for the README's "Compare runs": a real sweep of three strategies on the demo data,
logged to a PostgreSQL-backed MLflow server, shown in a real headless browser (Debian's ``chromium``, driven by
Playwright: ``pip install 'medtl[screenshots]'``, which uses that browser and downloads none).

    python benchmarks/compare_runs_screenshot.py [--store sqlite] [overrides for the sweep...]

Writes ``benchmarks/results/mlflow_runs_table.png`` (the experiment's runs table: the sweep folds into one parent
row, expanded here), ``benchmarks/results/mlflow_compare_runs.png`` (its children selected and compared: the params
that differ and the best validation AUROC side by side) and ``benchmarks/results/mlflow_compare_runs.md`` (the command,
commit and machine). Needs ``apt-get install chromium postgresql`` (``--store sqlite``: no PostgreSQL).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import mlflow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medtl.provenance import git_commit, machine_description  # noqa: E402
from medtl.tracking.local_server import LocalPostgres, MlflowServer  # noqa: E402

EXPERIMENT = "chest_xray"
# System metrics off for this sweep only: the comparison lists metrics alphabetically in a short scrolling table,
# where a dozen system/* rows would push the model's metrics (train/, val/) out of the picture.
SWEEP = ["+experiment=chest_xray", "model.strategy=linear_probe,finetune,scratch", "data.image_size=96",
         "trainer.max_epochs=3", "trainer.progress=false", "tracking.system_metrics=false"]
# The flags a headless Chromium needs on a machine without a display or outside network (tool library: env).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def run_sweep(uri: str, workdir: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "medtl.train", "-m", *SWEEP, "tracking=server", f"tracking.uri={uri}", *overrides]
    print("sweep:", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=workdir, check=True)


def sweep_runs(uri: str) -> tuple[str, str, list[str]]:
    """``(experiment id, parent run id, child run ids)`` of the latest sweep in :data:`EXPERIMENT`."""
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.search_runs([experiment_id], "tags.`medtl.sweep` = 'parent'", order_by=["start_time DESC"])[0]
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return experiment_id, parent.info.run_id, [c.info.run_id for c in children]


def take_screenshots(uri: str, experiment_id: str, out: Path) -> None:
    """What a person does in the UI: open the experiment's runs, expand the sweep's parent row, tick its children,
    press Compare, switch on "Show diff only"; a screenshot of the runs table and of the comparison."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 560})
        page.goto(f"{uri}/#/experiments/{experiment_id}/runs")
        page.get_by_text("Model training").click()
        page.get_by_role("button", name="Close").click()  # the assistant's side panel
        page.locator("[data-component-id*='runnamecellrenderer']").first.click()  # expand the parent row
        page.wait_for_timeout(1500)
        page.screenshot(path=out / "mlflow_runs_table.png")
        boxes = page.locator(".ag-pinned-left-cols-container .ag-row .ag-checkbox-input-wrapper")
        for index in range(1, boxes.count()):  # row 0 is the parent
            boxes.nth(index).click()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.get_by_text("Comparing").wait_for()
        toggles = page.get_by_text("Show diff only")
        for index in range(toggles.count()):
            toggles.nth(index).click()
        page.get_by_text("Visualizations", exact=True).click()  # folded, so params and metrics share the screen
        page.set_viewport_size({"width": 1400, "height": 1750})
        scroll_table_to(page, page.get_by_text("Show diff only").first, "trainer.max_epochs")  # epochs trained
        page.wait_for_timeout(1500)
        page.screenshot(path=out / "mlflow_compare_runs.png")
        browser.close()
    print("wrote", out / "mlflow_runs_table.png", out / "mlflow_compare_runs.png", flush=True)


def scroll_table_to(page: Any, toggle: Any, label: str) -> None:
    """Wheel the table under ``toggle`` (its "Show diff only" switch) until the row ``label`` is on screen, as a
    person would; the comparison's tables scroll inside the page."""
    box = toggle.bounding_box()
    page.mouse.move(box["x"] + 500, box["y"] + 120)
    target = page.get_by_text(label, exact=True).first
    for _ in range(40):
        row = target.bounding_box()
        if row and page.evaluate("([x, y, t]) => document.elementFromPoint(x, y)?.textContent === t",
                                 [row["x"] + row["width"] / 2, row["y"] + row["height"] / 2, label]):
            return
        page.mouse.wheel(0, 60)
        page.wait_for_timeout(150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, overrides = parser.parse_known_args()
    commit = git_commit(ROOT)  # before the pictures are rewritten, which would mark the tree dirty
    if shutil.which("chromium") is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise SystemExit("Playwright is not installed: pip install 'medtl[screenshots]'") from None
    with tempfile.TemporaryDirectory(prefix="medtl-screens-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        if args.store == "postgres":
            postgres = stack.enter_context(LocalPostgres(Path(tempfile.mkdtemp(prefix="medtl-pg-"))))
            stack.callback(shutil.rmtree, postgres.data_dir, True)
            store = postgres.uri
        else:
            store = f"sqlite:///{work / 'mlflow.db'}"
        server = stack.enter_context(MlflowServer(store, work / "artifacts", log_file=work / "server.log"))
        run_sweep(server.uri, work, overrides)
        experiment_id, parent, children = sweep_runs(server.uri)
        args.out.mkdir(parents=True, exist_ok=True)
        take_screenshots(server.uri, experiment_id, args.out)
    command = " ".join(["python benchmarks/compare_runs_screenshot.py", *sys.argv[1:]])
    (args.out / "mlflow_compare_runs.md").write_text(
        f"# MLflow UI screenshots\n\nCommand: `{command}` (store: {args.store}; sweep: `{' '.join(SWEEP)}`)\n\n"
        f"Commit: {commit}; machine: {machine_description()}\n\n"
        f"Parent run {parent} with children {', '.join(sorted(children))}.\n")


if __name__ == "__main__":
    main()
