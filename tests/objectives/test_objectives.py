from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from medtl.adaptation.gradient_reversal import warm_start_coefficient
from medtl.errors import MedtlError
from medtl.objectives import SourceBatch, bind_objective, build_objective, list_objectives

FEATURES = 16


def _bound(name: str, **options: object):  # type: ignore[no-untyped-def]
    objective = build_objective(name, FEATURES, options)
    objective.bind({f"img{i}.png": ("site_a" if i < 6 else "site_b") for i in range(8)}, num_classes=2)
    return objective


def _batch(features: torch.Tensor, head: nn.Module, collections: list[int], labels: list[int]) -> SourceBatch:
    return SourceBatch(features, head(features), torch.tensor(labels), torch.tensor(collections), progress=0.5)


@pytest.mark.parametrize("name", list_objectives())
def test_every_registered_objective_trains_the_features_and_its_own_parameters(name: str) -> None:
    torch.manual_seed(0)
    objective = _bound(name)
    encoder, head = nn.Linear(4, FEATURES), nn.Linear(FEATURES, 2)
    features = encoder(torch.randn(8, 4))  # (B, F)
    loss = objective.loss(_batch(features, head, [0, 0, 0, 1, 1, 1, -1, 0], [0, 1, 0, 1, 0, 1, 1, 0]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    resumed = _bound(name)
    resumed.load_state_dict(objective.state_dict())  # what TrainingState saves loads into a fresh, bound one
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), objective.state_dict().values()))


def test_collections_of_a_batch_come_from_the_bound_paths() -> None:
    objective = _bound("group_dro")
    assert objective.collection_names == ["site_a", "site_b"]
    assert objective.collections(["img0.png", "img7.png", "unknown.png"], torch.device("cpu")).tolist() == [0, 1, -1]


def test_group_dro_weights_up_the_group_with_the_highest_loss() -> None:
    """Four groups (2 collections x 2 classes); the group of site_b's class 1 is always misclassified."""
    objective = _bound("group_dro", step_size=0.5)
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, -4.0]])  # the last one is wrong
    batch = SourceBatch(torch.zeros(4, FEATURES), logits, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    for _ in range(20):
        loss = objective.loss(batch)
    weights = objective.group_weights  # group = collection * 2 + class
    assert int(weights.argmax()) == 3 and float(weights[3]) > 0.9
    per_image = nn.functional.cross_entropy(logits, batch.labels, reduction="none")
    assert float(loss) == pytest.approx(float((weights * per_image).sum()), rel=1e-5)  # one image per group here
    assert set(objective.epoch_metrics()) == {"worst_group_loss", "max_group_weight"}


def test_group_dro_state_survives_a_resume() -> None:
    first = _bound("group_dro", step_size=0.5)
    batch = SourceBatch(torch.zeros(2, FEATURES), torch.tensor([[4.0, -4.0], [4.0, -4.0]]), torch.tensor([0, 1]),
                        torch.tensor([0, 1]))
    first.loss(batch)
    second = _bound("group_dro", step_size=0.5)
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.group_weights, first.group_weights)


def test_collection_adversary_reverses_its_gradient_into_the_features() -> None:
    """The features receive minus the adversary's gradient: stepping them makes the collection harder to tell."""
    torch.manual_seed(0)
    objective = _bound("collection_adversary", weight=1.0)
    features = torch.randn(8, FEATURES, requires_grad=True)
    batch = SourceBatch(features, torch.zeros(8, 2), torch.zeros(8, dtype=torch.long),
                        torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), progress=1.0)
    loss = objective.loss(batch)
    loss.backward()
    plain = nn.functional.cross_entropy(
        objective.adversary(torch.cat([features, nn.functional.one_hot(batch.labels, 2).float()], 1)),
        batch.collections)
    adversary_grad = torch.autograd.grad(plain, features)[0]  # the task's logits are constant here: no gradient
    coefficient = warm_start_coefficient(1.0, objective.reversal.alpha, objective.reversal.maximum)
    assert coefficient > 0.99 and torch.allclose(features.grad, -coefficient * adversary_grad, atol=1e-6)
    assert "collection_adversary_accuracy" in objective.epoch_metrics()


def test_unknown_objective_and_options_are_one_line_errors() -> None:
    with pytest.raises(MedtlError, match="objective 'nope' is not registered; choose one of"):
        build_objective("nope", FEATURES)
    with pytest.raises(MedtlError, match=r"objective.options \['stepsize'\] are not arguments"):
        build_objective("group_dro", FEATURES, {"stepsize": 0.1})
    with pytest.raises(MedtlError, match="step_size=0"):
        build_objective("group_dro", FEATURES, {"step_size": 0})


def test_binding_needs_collections_when_the_objective_uses_them() -> None:
    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "x"],
                          "split": ["train", "train", "val"]})
    with pytest.raises(MedtlError, match="objective=group_dro needs each training image's collection"):
        bind_objective(build_objective("group_dro", FEATURES), frame, 2)
    bind_objective(build_objective("erm", FEATURES), frame, 2)  # plain cross-entropy needs none
    objective = build_objective("group_dro", FEATURES)
    bind_objective(objective, frame.assign(collection=["c0", "c1", "c1"]), 2)
    assert objective.collection_names == ["c0", "c1"] and len(objective.group_weights) == 4
