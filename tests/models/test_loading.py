"""A model folder with a planted pickle is refused by name before anything is unpickled."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from medtl.errors import MedtlError
from medtl.models.loading import check_model_folder, load_state_dict
from medtl.predict import predict
from medtl.train import train
from tests.conftest import compose_config


class _WritesAFile:
    """A pickle payload: unpickling it opens (creates) ``marker``, as planted code would."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> Path:
    """A medtl model folder (MLmodel, data/model.pt2, extra_files/state_dict.pt) downloaded from its run."""
    from tests.conftest import small_demo_overrides

    tmp = tmp_path_factory.mktemp("model")
    cfg = compose_config(["+experiment=chest_xray", *small_demo_overrides(demo_cache), "data.image_size=32",
                          "data.cache_workers=1", "trainer.features.epochs=2", "trainer.progress=false",
                          "data.check=false", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                          f"trainer.checkpoint_dir={tmp / 'ck'}"])  # a module fixture runs before the chdir to tmp
    train(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(experiment_names=["chest_xray"], output_format="list")[0]
    return Path(mlflow.artifacts.download_artifacts(run.data.tags["medtl.model_uri"], dst_path=str(tmp / "model")))


def _predict(model: Path, tmp_path: Path, demo_manifest: Path) -> None:
    predict(OmegaConf.create({"model": str(model), "input": str(demo_manifest), "output": str(tmp_path / "p.csv"),
                              "batch_size": 8, "num_workers": 0, "device": "cpu", "tracking_uri": "sqlite:///x.db",
                              "progress": False, "tta": False, "adaptation": "none"}))


def test_clean_model_predicts(logged_model: Path, tmp_path: Path, demo_manifest: Path) -> None:
    _predict(logged_model, tmp_path, demo_manifest)
    assert (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("planted", ["data/model.pth", "data/weights.bin", "extra_files/helper.txt"])
@pytest.mark.parametrize("adaptation", ["none", "adabn"])
def test_planted_pickle_is_refused_and_never_runs(logged_model: Path, tmp_path: Path, demo_manifest: Path,
                                                  planted: str, adaptation: str) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_WritesAFile(str(marker)))
    pickle.loads(payload)  # the payload is live: unpickling it writes the marker
    assert marker.exists()
    marker.unlink()
    model = tmp_path / "model"
    shutil.copytree(logged_model, model)
    (model / planted).write_bytes(payload)
    cfg = OmegaConf.create({"model": str(model), "input": str(demo_manifest), "output": str(tmp_path / "p.csv"),
                            "batch_size": 8, "num_workers": 0, "device": "cpu", "tracking_uri": "sqlite:///x.db",
                            "progress": False, "tta": False, "adaptation": adaptation})
    with pytest.raises(MedtlError, match=f"holds {planted}, a file that loading could unpickle"):
        predict(cfg)
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def test_state_dict_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(2), "evil": _WritesAFile(str(marker))}, path)
    with pytest.raises(MedtlError, match="state_dict.pt is not a tensors-only state dict"):
        load_state_dict(path, "m")
    assert not marker.exists()


def test_folder_without_pt2_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(MedtlError, match="not in MLflow's pt2 format"):
        check_model_folder(tmp_path, "m")
