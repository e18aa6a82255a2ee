"""The params a run logs: the few dozen a person compares, named as on the command line, no plumbing."""
from __future__ import annotations

import pytest

from medtl.tracking.params import FINETUNE, compared_params, override_keys
from medtl.tracking.run_info import dataset_name
from tests.conftest import compose_config

EXPERIMENTS = ["chest_xray", "chest_xray_da", "brain_mri", "brain_mri_da"]


def params_of(overrides: list[str], trains_on_features: bool = False, extra: tuple[str, ...] = ()) -> dict:
    cfg = compose_config(overrides)
    return compared_params(cfg, trains_on_features, dataset_name(cfg), extra)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_logs_a_few_dozen_plain_params(experiment: str) -> None:
    params = params_of([f"+experiment={experiment}"])
    assert 20 <= len(params) <= 50, sorted(params)
    assert not [k for k in params if "_target_" in k or "_partial_" in k or k.endswith(("_dir", "cache"))]
    assert not [v for v in params.values() if "/.cache/" in str(v) or str(v).startswith("/")]
    assert {"model.encoder", "model.strategy", "data.image_size", "trainer.lr", "seed", "data.name",
            "adaptation.method"} <= set(params)


def test_demo_settings_only_when_the_demo_is_the_data() -> None:
    assert params_of(["+experiment=chest_xray"])["data.demo.n_patients"] == 240
    real = params_of(["+experiment=chest_xray", "data.root=../shared/data/chest_xray_kermany"])
    assert not [k for k in real if k.startswith("data.demo")] and real["data.name"] == "chest_xray_kermany"


def test_a_linear_probe_logs_the_epochs_its_head_trained_for() -> None:
    probe = params_of(["+experiment=chest_xray", "model.strategy=linear_probe"], trains_on_features=True)
    assert probe["trainer.features.epochs"] == 100 and "trainer.max_epochs" not in probe
    assert not [k for k in probe if k.startswith("data.augment")]  # cached features are not augmented
    finetune = params_of(["+experiment=chest_xray", "model.strategy=finetune"])
    assert "trainer.max_epochs" in finetune and "trainer.features.epochs" not in finetune
    assert finetune["model.encoder_lr_mult"] == 2.0 and "trainer.mixing" not in finetune  # off: nothing to compare
    mixed = params_of(["+experiment=chest_xray", "trainer.mixing=mixup"])
    assert mixed["trainer.mixing"] == "mixup"
    scratch = params_of(["+experiment=chest_xray", "model.strategy=scratch"], extra=("model.layer_decay",))
    assert "trainer.max_epochs" in scratch and not [k for k in scratch if k in FINETUNE]  # no pretrained encoder


def test_adaptation_settings_only_with_a_method() -> None:
    plain = params_of(["+experiment=chest_xray"])
    assert plain["adaptation.method"] == "none" and "adaptation.weight" not in plain and "data.target" not in plain
    adapted = params_of(["+experiment=chest_xray_da", "adaptation=dann"])
    assert adapted["adaptation.method"] == "dann" and adapted["data.target"] == "simulated/strong"
    assert "adaptation.weight" in adapted
    named = params_of(["+experiment=chest_xray_da", "data.target=/sites/hospital_b/"])
    assert named["data.target"] == "hospital_b"


def test_command_line_overrides_become_params_without_plumbing() -> None:
    keys = override_keys(["+experiment=chest_xray", "adaptation=mmd", "trainer.lr=0.01", "data.cache=disk",
                          "tracking.uri=sqlite:///x.db", "hydra.run.dir=out", "~model.dropout", "data.num_workers=2"])
    assert keys == ["trainer.lr", "model.dropout"]
    params = params_of(["+experiment=chest_xray", "data.intensity.lower_percentile=1.0"],
                       extra=("data.intensity.lower_percentile",))
    assert params["data.intensity.lower_percentile"] == 1.0
    probe = params_of(["+experiment=chest_xray"], trains_on_features=True, extra=("trainer.max_epochs",))
    assert "trainer.max_epochs" not in probe  # overridden, but a head trained on cached features never used it
