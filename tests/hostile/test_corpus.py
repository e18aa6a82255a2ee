"""The hostile-input corpus through listing, decoding, manifests, the data check, training and prediction:
every case ends in its one-line error or its counted skip; nothing crashes, hangs or disappears."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from medtl.data.inventory import scan_folder
from medtl.data.manifest import read_manifest
from medtl.data.readers import LoadRadiograph
from medtl.errors import MedtlError
from medtl.train import train
from tests.conftest import compose_config
from tests.hostile.corpus import CASES, Case, build_corpus, good_image

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # a hang would otherwise stall the suite; every command here ends in seconds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Case, Path]]]:
    root = tmp_path_factory.mktemp("hostile")
    return root / "corpus", build_corpus(root / "corpus", root / "outside")


def _names(paths: list) -> set[str]:
    return {os.fsencode(str(p)).rsplit(b"/", 1)[-1].decode("utf-8", "backslashreplace") for p in paths}


def test_every_entry_is_used_skipped_or_refused_with_its_reason(corpus) -> None:
    folder, cases = corpus
    inventory = scan_folder(folder, folder, allow_outside_root=False)
    entries = _names([folder / name for name in os.listdir(folder)])
    assert _names(inventory.used) | _names([o["path"] for o in inventory.others]) == entries  # no silent drop
    assert len(inventory.used) + len(inventory.others) == len(entries) == len(cases)
    status = {**{name: ("used", "") for name in _names(inventory.used)},
              **{_names([o["path"]]).pop(): (o["status"], o["reason"]) for o in inventory.others}}
    for case, path in cases:
        got_status, reason = status[_names([path]).pop()]
        assert got_status == case.scan, case.name
        assert re.search(case.reason, reason), (case.name, reason)
    counts = inventory.counts()
    assert counts["inputs.found"] == counts["inputs.used"] + counts["inputs.skipped"] + counts["inputs.refused"]


@pytest.mark.parametrize("case", [c for c in CASES if c.read != "-"], ids=lambda c: c.name)
def test_decoding_gives_an_image_or_one_line_naming_the_file(corpus, case: Case) -> None:
    folder, _ = corpus
    path = str(folder / case.name)
    if case.read == "ok":
        image = np.asarray(LoadRadiograph()(path))
        assert image.ndim == 3 and image.shape[0] == 1 and np.isfinite(image).all()
        return
    with pytest.raises(MedtlError) as error:
        LoadRadiograph()(path)
    message = str(error.value)
    assert re.search(case.read, message), message
    assert "\n" not in message and case.name in message


def test_sixteen_bit_png_keeps_its_values(corpus) -> None:
    folder, _ = corpus
    image = np.asarray(LoadRadiograph()(str(folder / "sixteen_bit.png")))[0]
    np.testing.assert_array_equal(image, (good_image() * 60000).astype(np.uint16))  # not clipped to 8 bits


def test_decompression_bombs_are_refused_in_bounded_memory_and_time(corpus) -> None:
    folder, _ = corpus
    # VmHWM: this process's own peak (ru_maxrss would include the forking pytest's, kept across exec)
    code = ("import re, sys, time\nfrom medtl.data.readers import LoadRadiograph\nfrom medtl.errors import "
            "MedtlError\nload = LoadRadiograph()\nstart = time.perf_counter()\nfor name in sys.argv[1:]:\n"
            "    try:\n        load(name)\n    except MedtlError as exc:\n        print('refused', name)\n"
            "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "print(peak, time.perf_counter() - start)\n")
    result = subprocess.run([sys.executable, "-c", code, str(folder / "bomb.dcm"), str(folder / "bomb.png")],
                            capture_output=True, text=True, timeout=TIMEOUT, check=True)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("refused") for line in lines) == 2
    peak_kib, seconds = lines[-1].split()
    assert int(peak_kib) < 1_500_000 and float(seconds) < 30  # decoding bomb.dcm alone would take 3.2 GB


@pytest.mark.parametrize("entry, message", [
    ("fifo.dcm", r"not a regular file \(a FIFO\)"), ("/dev/zero", r"not a regular file \(a character device\)"),
    ("loop.png", r"symbolic link loop"), ("dangling.png", r"broken symbolic link"),
    ("../outside/elsewhere.png", r"resolves outside the data folder"),
])
def test_manifest_rows_that_must_not_be_opened_stop_with_one_line(corpus, tmp_path: Path, entry: str,
                                                                   message: str) -> None:
    folder, _ = corpus
    manifest = folder / f"m_{abs(hash(entry))}.csv"
    manifest.write_text(f"path,label,patient_id\ngood.dcm,A,p1\n{entry},B,p2\n")
    try:
        with pytest.raises(MedtlError, match=f"row 3: .*{message}"):
            read_manifest(manifest)
        result = subprocess.run([sys.executable, "-m", "medtl.data.check", str(manifest)], capture_output=True,
                                text=True, timeout=TIMEOUT, cwd=tmp_path)  # a FIFO or /dev/zero read would hang here
    finally:
        manifest.unlink()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and re.search(message, result.stderr)


def _hostile_tree(root: Path, corpus_cases: list[tuple[Case, Path]], outside: Path) -> Path:
    """NORMAL/PNEUMONIA with 8 good PNGs each, the whole corpus dropped into NORMAL/."""
    from PIL import Image

    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            image = good_image(seed=i + (50 if label == "PNEUMONIA" else 0))
            Image.fromarray((image * 255).astype(np.uint8)).save(root / label / f"{label}_{i}.png")
    build_corpus(root / "NORMAL", outside)
    (root / "stray.png").write_bytes((root / "NORMAL" / "good.png").read_bytes())  # outside any class folder
    (root / "NORMAL" / "nested").mkdir()
    return root


def test_training_on_a_hostile_tree_accounts_for_every_file(tmp_path: Path) -> None:
    tree = _hostile_tree(tmp_path / "tree", [], tmp_path / "outside")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["+experiment=chest_xray", f"data.root={tree}", "data.image_size=32", "trainer.max_epochs=1",
                 "trainer.features.epochs=2", "trainer.progress=false", "data.val_fraction=0.34",
                 f"tracking.uri={uri}", "tracking.log_model=false", f"trainer.checkpoint_dir={tmp_path / 'ck'}"]
    with pytest.raises(MedtlError, match=r"path\(s\) refused under the data folder, first: .*: "):
        train(compose_config(overrides))
    train(compose_config([*overrides, "data.on_error=skip"]))
    mlflow.set_tracking_uri(uri)
    run = [r for r in mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")
           if r.info.status == "FINISHED"][0]
    params = {k.removeprefix("data/"): int(v) for k, v in run.data.metrics.items()
              if k.startswith(("data/inputs.", "data/n_images."))}
    entries = sum(len(files) + len(dirs) for _, dirs, files in os.walk(tree)) - 2  # minus the two class folders
    assert params["inputs.found"] == entries
    assert params["inputs.found"] == params["inputs.used"] + params["inputs.skipped"] + params["inputs.refused"]
    trained = sum(v for k, v in params.items() if k.startswith("n_images."))
    assert trained == params["inputs.used"] - params["inputs.unreadable"]
    skipped = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_files.csv"))
    assert len(skipped) == entries - trained and skipped["reason"].str.len().gt(0).all()
    assert {"skipped", "refused", "unreadable"} == set(skipped["status"])


def test_data_check_cli_reports_a_hostile_tree_without_a_traceback(tmp_path: Path) -> None:
    tree = _hostile_tree(tmp_path / "tree", [], tmp_path / "outside")
    result = subprocess.run([sys.executable, "-m", "medtl.data.check", "+experiment=chest_xray", f"data.root={tree}"],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "SKIPPED: " in result.stdout and "refused, symbolic link loop" in result.stdout
    assert re.search(r"inputs: found=\d+, used=\d+, skipped=\d+, refused=\d+", result.stdout)
    assert "unreadable image(s)" in result.stdout
