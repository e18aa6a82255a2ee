from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medtl.engine.loop import Predictions, Trainer, validation_loss
from medtl.engine.state import RunFolder, TrainingState
from medtl.models import build_classifier


def fake_loader(n_batches: int = 3, size: int = 32) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(4, 1, size, size, generator=generator), "label": torch.tensor([0, 1, 0, 1]),
             "path": [f"img{b}_{i}" for i in range(4)]} for b in range(n_batches)]


def test_early_stopping_restores_best_epoch_and_writes_a_safe_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32)
    scores = iter([0.6, 0.9, 0.7, 0.65, 0.8, 0.99])
    states: list[dict] = []

    def score(preds: Predictions) -> dict[str, float]:
        assert preds.probs.shape == (12, 2) and len(preds.paths) == 12
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"auroc": next(scores)}

    checkpoint = tmp_path / "best.pt"
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=6, early_stopping_patience=2,
                      progress=False, device="cpu")
    trainer.run_folder = RunFolder(tmp_path)
    result = trainer.fit(model, fake_loader(), fake_loader(), score=score)
    assert (result.best_epoch, result.best_score) == (1, 0.9)
    assert len(result.history) == 4  # epochs 0..3; epochs 2 and 3 did not beat epoch 1
    saved = torch.load(checkpoint, weights_only=True)
    for key, value in states[1].items():
        assert torch.equal(saved[key], value) and torch.equal(model.state_dict()[key], value)
    assert not torch.equal(states[1]["encoder.head.1.weight"], states[3]["encoder.head.1.weight"])


def test_max_steps_per_epoch_caps_training_batches() -> None:
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32)
    seen = []
    trainer = Trainer(partial(torch.optim.AdamW), max_epochs=1, max_steps_per_epoch=2,
                      progress=False, device="cpu")
    original = model.forward
    model.forward = lambda x: (seen.append(x.shape[0]), original(x))[1]  # type: ignore[method-assign]
    trainer.fit(model, fake_loader(5), fake_loader(1), score=lambda p: {"auroc": 0.5})
    assert len(seen) == 2 + 1  # two training batches, one validation batch


def test_linear_probe_on_cached_features_encodes_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32)
    calls = []
    original = model.encoder.forward_features
    model.encoder.forward_features = lambda x: (calls.append(len(x)), original(x))[1]  # type: ignore[method-assign]
    encoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.head")}
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=2,
                      progress=False, device="cpu", features={"cache": True, "epochs": 30, "patience": 30})
    trainer.run_folder = RunFolder(tmp_path)
    assert trainer.trains_on_features(model)
    scores = []
    result = trainer.fit(model, fake_loader(3), fake_loader(2),
                         score=lambda p: scores.append(p.probs.shape) or {"auroc": float(len(scores))})
    assert sum(calls) == 12 + 8  # every image encoded exactly once, whatever the number of epochs
    assert len(result.history) == 30 and scores[0] == (8, 2)
    assert result.best_epoch == 29  # the (fake) score rises every epoch
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(saved) == set(model.state_dict())  # a whole-model checkpoint, not just the head
    for key, value in encoder_before.items():
        assert torch.equal(model.state_dict()[key], value)  # the encoder did not move
    finetune = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    assert not trainer.trains_on_features(finetune)


def test_tta_views_keep_shape_and_are_the_expected_moves() -> None:
    from medtl.engine.loop import tta_views

    images = torch.arange(2 * 1 * 50 * 50, dtype=torch.float32).reshape(2, 1, 50, 50)
    views = tta_views(images, shift_fraction=0.04)  # shift of 2 pixels
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[0], images) and torch.equal(views[1], images.flip(-1))
    assert torch.equal(views[2][..., 2:, 2:], images[..., :-2, :-2])  # moved down-right
    assert torch.equal(views[3][..., :-2, :-2], images[..., 2:, 2:])  # moved up-left


def test_predict_with_tta_averages_the_views() -> None:
    from medtl.engine.loop import predict_loader, tta_views

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32).eval()
    loader = fake_loader(1)
    plain = predict_loader(model, loader, torch.device("cpu"), progress=False)
    averaged = predict_loader(model, loader, torch.device("cpu"), progress=False, tta=True)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(model(v), 1) for v in tta_views(loader[0]["image"])]).mean(0)
    np.testing.assert_allclose(averaged.probs, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(averaged.probs, plain.probs)


def test_trainer_unfreezes_stages_epoch_by_epoch() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, unfreeze_every=1)
    first_stage = model.encoder.stage_parameters()[0][0]
    before = first_stage.clone()
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=2, early_stopping_patience=5,
                      progress=False, device="cpu")
    trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5})
    trainable = [any(p.requires_grad for p in s) for s in model.encoder.stage_parameters()]
    assert trainable[-2:] == [True, True] and not any(trainable[:-2])  # after epoch 1: the last two stages
    assert torch.equal(first_stage, before)  # the stem never unfroze in two epochs


def test_a_tied_score_with_a_lower_validation_loss_is_the_better_epoch() -> None:
    """A small validation set reaches AUROC 1.0 early; the epoch kept is then the one with the lowest loss."""
    model = nn.Linear(2, 2)
    state = TrainingState()
    for epoch, (auroc, loss) in enumerate([(0.9, 0.6), (1.0, 0.5), (1.0, 0.2), (1.0, 0.3), (0.95, 0.1)]):
        state.record(epoch, {}, auroc, model, patience=2, loss=loss)
    assert (state.best_epoch, state.best_score, state.best_loss) == (2, 1.0, 0.2)
    assert state.done  # epochs 3 and 4 improved on neither: patience 2 ran out


def test_validation_loss_is_the_mean_cross_entropy_of_labelled_rows() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    preds = Predictions(probs, np.array([0, 1, -1]), ["a", "b", "c"])
    assert validation_loss(preds) == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
