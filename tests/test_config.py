"""Every experiment composes with Hydra's compose API and instantiates its pieces."""
from __future__ import annotations

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from medtl import CONFIG_DIR
from medtl.adaptation import list_adaptations
from medtl.errors import find_user_error
from tests.conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment: str) -> None:
    source = ["data.source=null"] if experiment.endswith("_da") else []  # the demo, not ../shared/data
    cfg = compose_config([f"+experiment={experiment}", "data.image_size=64", *source])
    assert cfg.experiment_name == experiment
    data = instantiate(cfg.data)
    assert data.image_size == 64
    model = instantiate(cfg.model, num_classes=2)
    assert model.strategy.name == cfg.model.strategy
    assert instantiate(cfg.trainer).max_epochs == cfg.trainer.max_epochs
    method = instantiate(cfg.adaptation, num_features=model.encoder.num_features)
    assert method.method_name == cfg.adaptation.method


ADAPTATIONS = sorted(p.stem for p in (CONFIG_DIR / "adaptation").glob("*.yaml"))


def test_every_registered_adaptation_method_has_a_config() -> None:
    assert ADAPTATIONS == list_adaptations()


@pytest.mark.parametrize("name", ADAPTATIONS)
def test_adaptation_config_builds_its_method(name: str) -> None:
    cfg = compose_config(["+experiment=chest_xray_da", f"adaptation={name}"])
    method = instantiate(cfg.adaptation, num_features=1280)
    assert method.method_name == name == cfg.tracking.tags["medtl.adaptation"]
    assert cfg.tracking.run_name == f"chest_xray_da-{name}"


def test_brain_mri_da_without_the_shared_data_names_the_source_key(tmp_path) -> None:  # noqa: ANN001
    cfg = compose_config(["+experiment=brain_mri_da"])  # tests run in tmp_path: ../shared is not beside it
    with pytest.raises(InstantiationException) as raised:
        instantiate(cfg.data)
    assert "data.source=../shared/data/brain_mri/train does not exist" in str(find_user_error(raised.value))
    assert cfg.data.label_map.glioma == "tumour" and cfg.data.positive_class == "tumour"


def test_overrides_reach_the_objects() -> None:
    cfg = compose_config(["+experiment=chest_xray", "model.strategy=finetune", "trainer.lr=0.01",
                          "data.val_fraction=0.3", "model.image_size=96"])
    assert instantiate(cfg.trainer).lr == 0.01
    assert instantiate(cfg.data).val_fraction == 0.3
    assert instantiate(cfg.model, num_classes=2).strategy.train_encoder


def test_defaults_list_has_no_experiment_entry() -> None:
    text = (CONFIG_DIR / "config.yaml").read_text()
    assert "experiment" not in text.split("defaults:")[1].split("\n\n")[0]


@pytest.mark.parametrize("experiment", ["chest_xray", "chest_xray_da", "brain_mri", "brain_mri_da", "mri_sequence_da"])
def test_optuna_search_composes_and_judges_domain_adaptation_on_the_target(experiment: str) -> None:
    search = "optuna_da" if experiment.endswith("_da") else "optuna"
    cfg = compose_config([f"+experiment={experiment}", f"hparams_search={search}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert "trainer.lr" in cfg.hydra.sweeper.params
    assert cfg.optimized_metric == ("target/auroc" if experiment.endswith("_da") else "val/best_auroc")


def test_chest_xray_default_is_the_generalisation_benchmarks_recipe() -> None:
    from tests.benchmarks import load_benchmark

    cfg = compose_config(["+experiment=chest_xray"])
    model, trainer = instantiate(cfg.model, num_classes=2), instantiate(cfg.trainer)
    assert model.strategy.name == "finetune" and model.frozen_stages == 3
    assert trainer.linear_probe_first and trainer.max_epochs == 3 and cfg.evaluation.external_adabn
    assert cfg.data.augment.acquisition_per_batch and cfg.data.augment.detector_noise > 0
    assert model.encoder_lr_mult == 2.0 and trainer.ema_decay == 0.99
    benchmark = load_benchmark("generalisation")
    recipe = benchmark.recipe_overrides("lpft_frozen3_site_batches_lr2_ema")
    assert compose_config(["+experiment=chest_xray", *recipe]) == cfg  # the measured recipe is the default


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_trainer_ddp_keeps_each_experiments_trainer_settings(experiment: str) -> None:
    single = compose_config([f"+experiment={experiment}"]).trainer
    ddp = compose_config([f"+experiment={experiment}", "trainer=ddp"]).trainer
    assert ddp.distributed is True and single.distributed is False
    assert {**ddp, "distributed": False} == {**single}
