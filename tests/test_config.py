"""Every experiment composes with Hydra's compose API and instantiates its pieces."""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from medtl import CONFIG_DIR
from tests.conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str) -> None:
    cfg = compose_config([f"+experiment={experiment}", "data.image_size=64"])
    assert cfg.experiment_name == experiment
    data = instantiate(cfg.data)
    assert data.image_size == 64
    model = instantiate(cfg.model, num_classes=2)
    assert model.strategy.name == cfg.model.strategy
    assert instantiate(cfg.trainer, checkpoint_path=None).max_epochs == cfg.trainer.max_epochs
    assert instantiate(cfg.adaptation).loss is not None


def test_overrides_reach_the_objects() -> None:
    cfg = compose_config(["+experiment=chest_xray", "model.strategy=finetune", "trainer.lr=0.01",
                          "data.val_fraction=0.3", "model.image_size=96"])
    assert instantiate(cfg.trainer, checkpoint_path=None).lr == 0.01
    assert instantiate(cfg.data).val_fraction == 0.3
    assert instantiate(cfg.model, num_classes=2).strategy.train_encoder


def test_defaults_list_has_no_experiment_entry() -> None:
    text = (CONFIG_DIR / "config.yaml").read_text()
    assert "experiment" not in text.split("defaults:")[1].split("\n\n")[0]
