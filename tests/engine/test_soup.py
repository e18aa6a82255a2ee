"""trainer=soup: the run's model is the mean of logged models, validated and logged like a trained one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch

from medtl.engine.soup import uniform_soup
from medtl.errors import find_user_error
from medtl.predict import load_model
from medtl.train import train
from tests.conftest import compose_config, small_demo_overrides


def test_uniform_soup_means_floats_and_keeps_the_first_counts() -> None:
    states = [{"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(3)},
              {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)},
              {"w": torch.tensor([5.0, 1.0]), "bn.num_batches_tracked": torch.tensor(1)}]
    soup = uniform_soup(states)
    assert torch.allclose(soup["w"], torch.tensor([3.0, 3.0]))
    assert soup["w"].dtype == torch.float32
    assert soup["bn.num_batches_tracked"].item() == 3


def _overrides(tmp_path: Path, demo_cache: Path) -> list[str]:
    """A fine-tune of a few steps on the small demo, its model logged, one validation split for every seed."""
    return ["+experiment=chest_xray", *small_demo_overrides(demo_cache), "data.image_size=48", "data.batch_size=8",
            "data.cache_workers=1", "data.check=false", "data.split_seed=0", "trainer.max_epochs=1",
            "trainer.max_steps_per_epoch=3", "trainer.linear_probe_first=false", "trainer.progress=false",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]


def _model_uri(uri: str) -> str:
    mlflow.set_tracking_uri(uri)
    return mlflow.last_active_run().data.tags["medtl.model_uri"]


@pytest.fixture
def ingredients(tmp_path: Path, demo_cache: Path) -> list[str]:
    overrides = _overrides(tmp_path, demo_cache)
    uris = []
    for seed in (1, 2):
        train(compose_config([*overrides, f"seed={seed}"]))
        uris.append(_model_uri(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    return uris


def _soup(tmp_path: Path, demo_cache: Path, ingredients: list[str], batchnorm: str) -> tuple[dict, list[dict], Any]:
    """Train the soup of ``ingredients``; ``(its metrics, the ingredients' state dicts, the logged soup model)``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = train(compose_config([*_overrides(tmp_path, demo_cache), "trainer=soup", f"trainer.batchnorm={batchnorm}",
                                    f"trainer.ingredients=[{','.join(repr(i) for i in ingredients)}]"]))
    states = [load_model(ref, uri, eager=True)[0].state_dict() for ref in ingredients]
    return metrics, states, load_model(_model_uri(uri), uri, eager=True)


def test_soup_run_logs_the_mean_of_its_ingredients(tmp_path: Path, demo_cache: Path, ingredients: list[str]) -> None:
    metrics, states, (soup, card) = _soup(tmp_path, demo_cache, ingredients, "average")
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2)
    head = next(key for key, value in states[0].items() if value.ndim == 2)  # the one linear layer: the head
    assert not torch.equal(states[0][head], states[1][head])  # two seeds, two models
    assert metrics["train/epochs"] == 1 and 0.0 <= metrics["val/final_auroc"] <= 1.0
    assert card.threshold is not None and card.strategy == "finetune" and card.source_batchnorms
    run = mlflow.last_active_run()
    assert run.info.status == "FINISHED" and ingredients[0] in run.data.params["trainer.ingredients"]
    assert run.data.params["trainer.batchnorm"] == "average"


def test_a_recomputed_soup_re_estimates_only_the_learnt_batchnorm_statistics(tmp_path: Path, demo_cache: Path,
                                                                            ingredients: list[str]) -> None:
    _, states, (soup, card) = _soup(tmp_path, demo_cache, ingredients, "recompute")
    learnt = {f"{name}.{stat}" for name in card.source_batchnorms for stat in ("running_mean", "running_var")}
    assert learnt and all(key in states[0] for key in learnt)
    moved = []
    for key, value in soup.state_dict().items():
        mean = (states[0][key] + states[1][key]) / 2 if value.is_floating_point() else None
        if key in learnt:
            moved.append(not torch.allclose(value, mean, atol=1e-4))
            assert torch.isfinite(value).all() and (not key.endswith("running_var") or (value >= 0).all())
        elif mean is not None:  # weights, and the statistics of frozen stages (ImageNet's): the mean
            torch.testing.assert_close(value, mean)
    assert sum(moved) > len(learnt) / 2  # statistics of the soup's own features, not the ingredients' mean


def test_a_soup_of_one_model_is_refused(tmp_path: Path, demo_cache: Path) -> None:
    with pytest.raises(Exception) as raised:  # Hydra wraps what the trainer raises; the CLI prints the cause
        train(compose_config([*_overrides(tmp_path, demo_cache), "trainer=soup",
                              "trainer.ingredients=[runs:/x/model]"]))
    assert "trainer.ingredients lists 1 model(s); a soup averages two or more" in str(find_user_error(raised.value))


def test_an_ingredient_of_another_preprocessing_is_named(tmp_path: Path, demo_cache: Path,
                                                        ingredients: list[str]) -> None:
    other = _overrides(tmp_path, demo_cache)
    train(compose_config([*other, "data.image_size=56", "seed=3"]))
    odd = _model_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(Exception) as raised:
        train(compose_config([*other, "trainer=soup", f"trainer.ingredients=['{ingredients[0]}','{odd}']"]))
    assert str(find_user_error(raised.value)).startswith(
        f"trainer.ingredients: '{odd}' has preprocessing.image_size=56, '{ingredients[0]}' 48; a soup averages")


def test_a_soup_read_at_another_size_is_refused(tmp_path: Path, demo_cache: Path, ingredients: list[str]) -> None:
    listed = ",".join(repr(i) for i in ingredients)
    with pytest.raises(Exception) as raised:
        train(compose_config([*_overrides(tmp_path, demo_cache), "data.image_size=56", "trainer=soup",
                              f"trainer.ingredients=[{listed}]"]))
    assert "was trained on inputs of (48, 48), this run reads (56, 56)" in str(find_user_error(raised.value))
    assert mlflow.last_active_run().info.status == "FAILED"  # the soup run is marked failed, nothing logged as done
