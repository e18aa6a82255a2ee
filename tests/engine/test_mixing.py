from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch

from medtl.engine.loop import Trainer
from medtl.engine.mixing import BatchMixing
from medtl.errors import MedtlError
from medtl.models import build_classifier
from medtl.objectives import build_objective
from tests.engine.test_loop import fake_loader


def images_filled_with(labels: torch.Tensor, spatial: tuple[int, ...] = (16, 16)) -> torch.Tensor:
    """``(B, 1, *spatial)``: image ``i`` is all ``labels[i]`` (0 or 1), so a mixed pixel says how much of each."""
    return labels.float().view(-1, 1, *([1] * len(spatial))).expand(-1, 1, *spatial).clone()


@pytest.mark.parametrize("spatial", [(16, 16), (8, 8, 8)])
def test_mixup_blends_images_and_targets_with_the_same_pairs_and_weights(spatial: tuple[int, ...]) -> None:
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    mixing = BatchMixing("mixup", alpha=0.4, seed=3)
    mixed = mixing.images(images_filled_with(labels, spatial))  # (B, 1, *spatial)
    targets = mixing.targets(labels, num_classes=2)  # (B, 2)
    assert mixed.shape == (8, 1, *spatial) and targets.shape == (8, 2)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    share_of_class_1 = mixed.flatten(1).mean(dim=1)  # an image of 0s blended with one of 1s: the weight of 1s
    assert torch.allclose(share_of_class_1, targets[:, 1], atol=1e-6)
    assert ((targets > 0.01) & (targets < 0.99)).any()  # pairs of different classes were really mixed


def test_cutmix_pastes_a_box_of_the_partner_and_mixes_the_targets() -> None:
    labels = torch.tensor([0, 1] * 8)
    mixing = BatchMixing("cutmix", alpha=1.0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing for the user to act on reaches them
        mixed = mixing.images(images_filled_with(labels, (32, 32)))
    targets = mixing.targets(labels, num_classes=2)
    assert set(mixed.unique().tolist()) <= {0.0, 1.0}  # pixels are pasted, not blended
    assert torch.allclose(targets.sum(dim=1), torch.ones(16))
    pasted = (mixed.flatten(1) != labels.float()[:, None]).float().mean(dim=1)  # (B,) share from the partner
    assert (pasted > 0).any()
    from_partner = (targets[:, 1] - labels.float()).abs()  # the target's share of the partner's (other) class
    changed = pasted > 0
    assert torch.all(from_partner[changed] > 0)  # a box from another class moved the target too


def test_mixing_is_seeded_and_a_wrong_kind_or_alpha_names_the_key() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def mixed(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        mixing = BatchMixing("mixup", alpha=0.4, seed=seed)
        return mixing.images(images), mixing.targets(labels, 2)

    assert all(torch.equal(a, b) for a, b in zip(mixed(5), mixed(5)))
    assert not torch.equal(mixed(5)[0], mixed(6)[0])
    with pytest.raises(MedtlError, match=r"trainer.mixing='mixmatch' is not known; choose one of \['cutmix', 'mixup'\]"):
        BatchMixing("mixmatch", 0.4, seed=0)
    with pytest.raises(MedtlError, match=r"trainer.mixing_alpha=0 must be > 0"):
        Trainer(partial(torch.optim.AdamW), mixing="mixup", mixing_alpha=0)


def test_trainer_with_mixup_trains_on_mixed_batches_and_validates_on_plain_ones() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    seen: list[torch.Tensor] = []
    original = model.forward
    model.forward = lambda x, **kw: (seen.append(x.detach().clone()), original(x, **kw))[1]  # type: ignore[method-assign]
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-3, max_epochs=1, progress=False, device="cpu",
                      mixing="mixup")
    train, val = fake_loader(2), fake_loader(1)
    result = trainer.fit(model, train, val, score=lambda p: {"auroc": 0.5})
    assert len(seen) == 3 and torch.isfinite(torch.tensor(result.history[0]["train/loss"]))
    assert not torch.allclose(seen[0], train[0]["image"])  # the training batch was mixed
    assert torch.equal(seen[2], val[0]["image"])  # validation saw the images as they are


def test_lp_ft_with_mixing_probes_on_plain_features_then_finetunes_on_mixed_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    logged: list[dict] = []
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-3, max_epochs=1, progress=False, device="cpu",
                      linear_probe_first=True, features={"epochs": 2, "patience": 2, "dtype": "float32"},
                      mixing="mixup")
    mixed_batches: list[int] = []
    original = BatchMixing.images
    monkeypatch.setattr(BatchMixing, "images",
                        lambda self, images: (mixed_batches.append(images.ndim), original(self, images))[1])
    trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5},
                on_epoch_end=lambda metrics, epoch: logged.append(metrics))
    assert len([m for m in logged if "probe/val/auroc" in m]) == 2  # the probe's two epochs, on features (B, F)
    assert mixed_batches == [4, 4]  # only the fine-tune's two image batches (B, C, H, W) were mixed


def test_mixing_refuses_an_objective_that_needs_each_images_own_label() -> None:
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    objective = build_objective("group_dro", num_features=model.encoder.num_features)
    objective.bind({f"img{b}_{i}": "a" for b in range(2) for i in range(4)}, num_classes=2)
    trainer = Trainer(partial(torch.optim.AdamW), max_epochs=1, progress=False, device="cpu", mixing="cutmix",
                      mixing_alpha=1.0)
    with pytest.raises(MedtlError, match="trainer.mixing=cutmix mixes the source batch's labels"):
        trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5}, objective=objective)
