"""Reliability on hostile inputs: every case of ``tests/hostile/corpus.py`` through medtl's command lines, each in
its own process with a time limit, counting crashes, hangs and silent drops (the README's reliability figures).

    python benchmarks/hostile_inputs.py            # writes benchmarks/results/hostile_inputs.{md,json}

What counts: an *expected* outcome is a decoded image, a one-line ``medtl: error:`` naming the file (exit 2,
no traceback), or a skip or refusal listed with its reason. A *crash* is any other exit (a traceback, a signal,
an abort); a *hang* is a process still running at the limit; a *silent drop* is a file that a run neither
used nor listed. No real data is needed: the corpus is generated.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medtl.provenance import git_commit, machine_description, markdown_table  # noqa: E402
from tests.hostile.corpus import CASES, build_corpus  # noqa: E402

DECODE = ("import sys\nfrom medtl.data.readers import LoadRadiograph\nfrom medtl.errors import exit_on_user_error\n"
          "exit_on_user_error(lambda p: LoadRadiograph()(p))(sys.argv[1])\nprint('decoded')\n")
MANIFEST_ROWS = {"FIFO": "fifo.dcm", "character device": "/dev/zero", "link loop": "loop.png",
                 "dangling link": "dangling.png", "path escaping the folder": "../outside/elsewhere.png"}


def run(args: list[str], cwd: Path, timeout: float) -> dict:
    """One command in its own process: exit code, whether it hung, crashed, and its error lines."""
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "seconds": timeout, "errors": []}
    output = done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("medtl: error:")]
    crashed = "Traceback" in output or done.returncode not in (0, 1, 2) or (done.returncode == 2 and len(errors) != 1)
    return {"outcome": "crash" if crashed else "expected", "exit": done.returncode,
            "seconds": round(time.perf_counter() - start, 1), "errors": errors, "stdout": done.stdout}


def decode_cases(folder: Path, timeout: float) -> list[dict]:
    rows = []
    for case in CASES:
        if case.read == "-":
            continue
        result = run([sys.executable, "-c", DECODE, str(folder / case.name)], folder, timeout)
        wanted = "decoded" if case.read == "ok" else case.read
        matched = (result["outcome"] == "expected" and
                   ("decoded" in result.get("stdout", "") if case.read == "ok" else
                    bool(result["errors"]) and re.search(wanted, result["errors"][0]) is not None))
        rows.append({"stage": "decode", "input": case.name, "outcome": result["outcome"] if not matched or
                     result["outcome"] != "expected" else "expected", "matched": matched})
    return rows


def listing(folder: Path) -> list[dict]:
    """Listing the corpus folder (used by training's trees and predict's folders): every entry accounted for."""
    from medtl.data.inventory import scan_folder

    inventory = scan_folder(folder, folder, allow_outside_root=False)
    accounted = len(inventory.used) + len(inventory.others)
    entries = len(os.listdir(folder))
    return [{"stage": "list folder", "input": f"{entries} entries", "outcome": "expected" if accounted == entries
             else "silent drop", "matched": accounted == entries, "dropped": entries - accounted}]


def manifests(folder: Path, timeout: float) -> list[dict]:
    rows = []
    for kind, entry in MANIFEST_ROWS.items():
        manifest = folder / f"manifest_{kind.replace(' ', '_')}.csv"  # relative rows: relative to the manifest
        manifest.write_text(f"path,label,patient_id\ngood.dcm,A,p1\n{entry},B,p2\n")
        result = run([sys.executable, "-m", "medtl.data.check", str(manifest)], folder.parent, timeout)
        manifest.unlink()
        matched = result["outcome"] == "expected" and result.get("exit") == 2 and "row 3" in " ".join(result["errors"])
        rows.append({"stage": "manifest (data check)", "input": kind, "outcome": result["outcome"], "matched": matched})
    return rows


def whole_runs(folder: Path, work: Path, timeout: float) -> list[dict]:
    """The data check, a training (data.on_error=skip) and predict over a class tree holding the whole corpus."""
    from PIL import Image

    from tests.hostile.corpus import good_image

    tree = work / "tree"
    for label in ("NORMAL", "PNEUMONIA"):
        (tree / label).mkdir(parents=True)
        for i in range(8):
            image = (good_image(seed=i + 50 * (label == "PNEUMONIA")) * 255).astype("uint8")
            Image.fromarray(image).save(tree / label / f"{label}_{i}.png")
    build_corpus(tree / "NORMAL", work / "outside2")
    entries = sum(len(files) for _, _, files in os.walk(tree))
    rows = []
    check = run([sys.executable, "-m", "medtl.data.check", "+experiment=chest_xray", f"data.root={tree}"], work, timeout)
    rows.append({"stage": "data check (tree)", "input": f"{entries} files", "outcome": check["outcome"],
                 "matched": check.get("exit") == 1 and f"found={entries}," in check.get("stdout", "")})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    trained = run([sys.executable, "-m", "medtl.train", "+experiment=chest_xray", "model.strategy=linear_probe",
                   f"data.root={tree}",
                   "data.on_error=skip", "data.image_size=32", "trainer.features.epochs=2", "trainer.progress=false",
                   f"tracking.uri={uri}"], work, timeout)
    rows.append({"stage": "train (tree, on_error=skip)", "input": f"{entries} files", "outcome": trained["outcome"],
                 **_training_accounted(uri, entries)})
    model = _model_uri(uri)
    if model:
        predicted = run([sys.executable, "-m", "medtl.predict", f"model={model}", f"input={folder}",
                         f"output={work / 'preds.csv'}", f"tracking_uri={uri}", "progress=false"], work, timeout)
        rows.append({"stage": "predict (corpus folder)", "input": f"{len(os.listdir(folder))} files",
                     "outcome": predicted["outcome"], "matched": predicted.get("exit") == 2 and
                     not (work / "preds.csv").exists()})
    return rows


def _training_accounted(uri: str, entries: int) -> dict:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    if not runs or runs[0].info.status != "FINISHED":
        return {"matched": False}
    params = runs[0].data.params
    listed = int(params["inputs.skipped"]) + int(params["inputs.refused"]) + int(params["inputs.unreadable"])
    trained = sum(int(v) for k, v in params.items() if k.startswith("n_images."))
    return {"matched": trained + listed == entries, "dropped": entries - trained - listed}


def _model_uri(uri: str) -> str | None:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
    return runs[0].data.tags.get("medtl.model_uri") if runs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a command counts as a hang")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medtl-hostile-") as tmp:
        work = Path(tmp)
        folder = work / "corpus"
        build_corpus(folder, work / "outside")
        rows = decode_cases(folder, args.timeout) + listing(folder) + manifests(folder, args.timeout)
        rows += whole_runs(folder, work, args.timeout)
    table = pd.DataFrame(rows).fillna({"dropped": 0})
    summary = {"inputs tried": len(CASES) + 1 + len(MANIFEST_ROWS), "commands run": len(table),
               "crashes": int((table["outcome"] == "crash").sum()), "hangs": int((table["outcome"] == "hang").sum()),
               "silent drops": int(table["dropped"].sum()), "unexpected outcomes": int((~table["matched"]).sum())}
    write(table, summary, Path(args.results_dir))
    print(json.dumps(summary))
    sys.exit(0 if summary["crashes"] == summary["hangs"] == summary["silent drops"] == summary["unexpected outcomes"] == 0
             else 1)


def write(table: pd.DataFrame, summary: dict, results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    header = (f"Machine: {machine_description()}. Commit {git_commit(REPO)}. Command: "
              "`python benchmarks/hostile_inputs.py`.\n\n")
    summary_table = markdown_table(pd.DataFrame([summary]))
    (results / "hostile_inputs.md").write_text(header + summary_table + "\n\n" + markdown_table(
        table[["stage", "input", "outcome", "matched"]]) + "\n")
    (results / "hostile_inputs.json").write_text(json.dumps({"summary": summary, "commit": git_commit(REPO),
                                                             "rows": table.to_dict("records")}, indent=2, default=str))


if __name__ == "__main__":
    main()
