"""Real paediatric chest X-rays (../shared/data/chest_xray_kermany): a small linear probe must learn."""
from __future__ import annotations

from pathlib import Path

import pytest

from medtl.data import ImageClassificationData
from medtl.train import train
from tests.conftest import SHARED_DATA, compose_config

KERMANY = SHARED_DATA / "chest_xray_kermany"
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (KERMANY / "train").is_dir(), reason="../shared/data/chest_xray_kermany absent")]


def test_kermany_split_is_by_patient() -> None:
    data = ImageClassificationData(root=str(KERMANY), positive_class="PNEUMONIA", cache="none",
                                   patient_id_patterns=[r"^(person\d+)_", r"^((?:NORMAL2-)?IM-\d+)-"])
    frame = data.setup()
    assert len(frame) == 5216
    sides = frame.groupby("patient_id")["split"].nunique()
    assert (sides == 1).all()
    assert frame.loc[frame["patient_id"] == "person1000", "split"].nunique() == 1
    assert data.classes == ["NORMAL", "PNEUMONIA"]


def test_linear_probe_on_300_real_images_reaches_auroc_085(tmp_path: Path) -> None:
    cfg = compose_config(["+experiment=chest_xray", "model.strategy=linear_probe", f"data.root={KERMANY}",
                          "data.max_images=300",
                          "data.image_size=128", "trainer.max_epochs=8", "trainer.lr=3e-3", "trainer.progress=false",
                          f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.log_model=false"])
    metrics = train(cfg)
    assert metrics["val/final_auroc"] > 0.85, metrics
