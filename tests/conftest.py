"""Shared fixtures: a small demo DICOM set, the composed Hydra config shrunk for tests, image writers."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from medtl import CONFIG_DIR
from medtl.data.demo import DemoSpec, ensure_demo_chest_xray
from medtl.data.demo_volumes import VolumeDemoSpec, ensure_demo_mri_volumes

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):  # tests run in parallel workers (pytest -n): one thread each, and the
    os.environ["OMP_NUM_THREADS"] = "1"    # processes they start inherit it, so workers never spin on each other's cores
    torch.set_num_threads(1)
SMALL_DEMO = DemoSpec(n_patients=48, image_size=96, seed=7)
SMALL_VOLUME_DEMO = VolumeDemoSpec(n_subjects=10, seed=5)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder (MLflow's ./mlruns, Hydra outputs land there) and never downloads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDTL_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo_cache")


@pytest.fixture(scope="session")
def demo_manifest(demo_cache: Path) -> Path:
    """A 48-patient synthetic DICOM chest X-ray set (generated once per test session)."""
    return ensure_demo_chest_xray(demo_cache, SMALL_DEMO)


@pytest.fixture(scope="session")
def volume_demo_manifest(demo_cache: Path) -> Path:
    """A 10-subject synthetic T1 / FLAIR NIfTI set (generated once per test session)."""
    return ensure_demo_mri_volumes(demo_cache, SMALL_VOLUME_DEMO)


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


def small_demo_overrides(demo_cache: Path) -> list[str]:
    """Overrides that point a run at the session's small demo set (:data:`SMALL_DEMO`, written once)."""
    return [f"data.demo_dir={demo_cache}", f"data.demo.n_patients={SMALL_DEMO.n_patients}",
            f"data.demo.image_size={SMALL_DEMO.image_size}", f"data.demo.seed={SMALL_DEMO.seed}"]


@pytest.fixture
def tiny_overrides(tmp_path: Path, demo_cache: Path) -> list[str]:
    """Overrides that make a chest_xray run take seconds: tiny images, two epochs, tmp MLflow store."""
    return [
        "+experiment=chest_xray",
        "model.strategy=linear_probe",  # seconds: the head on cached features (the recipe is tested on its own)
        *small_demo_overrides(demo_cache),
        "data.image_size=64",
        "data.batch_size=16",
        "data.cache_workers=1",
        "trainer.max_epochs=2",
        "trainer.features.epochs=3",  # linear_probe trains its head on cached features
        "trainer.progress=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


@pytest.fixture
def write_png() -> Callable[..., Path]:
    """Write a greyscale PNG of the given (H, W) shape with a deterministic pattern."""

    def _write(path: Path, shape: tuple[int, int] = (40, 60), seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=shape, dtype=np.uint8), mode="L").save(path)
        return path

    return _write
