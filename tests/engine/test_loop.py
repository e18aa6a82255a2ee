from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medtl.engine.loop import Predictions, Trainer, validation_loss
from medtl.engine.state import RunFolder, TrainingState
from medtl.errors import MedtlError
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


def test_predict_keeps_the_unaugmented_views_features_from_the_same_pass() -> None:
    from medtl.engine.loop import encode_features, predict_loader

    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "linear_probe", num_classes=2, image_size=32).eval()
    loader = fake_loader(2)
    plain = predict_loader(model, loader, torch.device("cpu"), progress=False)
    assert plain.features is None
    both = predict_loader(model, loader, torch.device("cpu"), progress=False, tta=True, features=True)
    encoded = encode_features(model, loader, torch.device("cpu"), progress=False).features
    assert both.features.shape == (8, 1280) and both.features.dtype == np.float32
    np.testing.assert_allclose(both.features, encoded.numpy(), rtol=1e-5, atol=1e-5)
    halves = [Predictions(both.probs[r::2], both.labels[r::2], both.paths[r::2], both.features[r::2]) for r in (0, 1)]
    np.testing.assert_array_equal(Predictions.interleaved(halves).features, both.features)


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


def test_frozen_stages_keep_weights_and_batchnorm_statistics_and_leave_the_optimiser() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, frozen_stages=3)
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if k.startswith(("encoder.net._conv_stem", "encoder.net._bn0", "encoder.net._blocks.0.",
                               "encoder.net._blocks.1."))}
    assert any("running_mean" in k for k in frozen) and len(frozen) > 20
    later = model.encoder.net._blocks[2][0]._depthwise_conv.weight.clone()  # stage 3: trains
    groups = model.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["head", *[f"encoder.stage{i}" for i in range(3, 9)]]
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=2, progress=False, device="cpu")
    trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5})
    for key, value in frozen.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(model.encoder.net._blocks[2][0]._depthwise_conv.weight, later)
    with pytest.raises(MedtlError, match=r"model.frozen_stages=9 must be in \[0, 8\]"):
        build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, frozen_stages=9)


def test_linear_probe_first_trains_the_head_on_features_then_finetunes_from_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    logged: list[tuple[dict, int]] = []
    heads: list[torch.Tensor] = []
    original = Trainer._fit_loop

    def spy(self, net, *args, **kwargs):  # type: ignore[no-untyped-def]
        heads.append(model.encoder.head[1].weight.detach().clone())  # the head each stage starts from
        return original(self, net, *args, **kwargs)

    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=1, progress=False, device="cpu",
                      linear_probe_first=True, features={"epochs": 3, "patience": 3, "dtype": "float32"})
    trainer.run_folder = RunFolder(tmp_path)
    Trainer._fit_loop = spy  # type: ignore[method-assign]
    try:
        trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5},
                    on_epoch_end=lambda metrics, epoch: logged.append((metrics, epoch)))
    finally:
        Trainer._fit_loop = original  # type: ignore[method-assign]
    assert len(heads) == 2 and not torch.equal(heads[0], heads[1])  # the finetune started from the trained head
    probe = [m for m, _ in logged if "probe/val/auroc" in m]
    assert len(probe) == 3 and all("val/auroc" not in m for m in probe)
    assert [e for m, e in logged if "val/auroc" in m] == [0]  # then one finetune epoch under the usual names
    state = torch.load(tmp_path / RunFolder.LAST, weights_only=True)
    assert state["epoch"] == 1 and "encoder.net._conv_stem.weight" in state["model"]  # the finetune's state only
    assert state["anchor"] == {}  # the probe's weights are kept only for trainer.interpolate_probe


def test_weight_average_is_what_validation_scores_and_the_run_keeps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scored: list[dict] = []
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=2, progress=False, device="cpu",
                      ema_decay=0.5)
    trainer.run_folder = RunFolder(tmp_path)
    original = trainer.predict
    trainer.predict = lambda net, loader, **kw: (scored.append(net), original(net, loader, **kw))[1]  # type: ignore[method-assign]
    scores = iter([0.5, 0.6])  # the last epoch is the best
    result = trainer.fit(model, fake_loader(3), fake_loader(1), score=lambda p: {"auroc": next(scores)})
    assert result.best_epoch == 1 and len(scored) == 2
    assert all(net is not model for net in scored)  # the average, not the raw weights
    state = torch.load(tmp_path / RunFolder.LAST, weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["averaged"].items() if k.startswith("module.")}
    raw = state["model"]
    key = "encoder.head.1.weight"
    assert not torch.equal(averaged[key], raw[key]) and not torch.equal(averaged[key], start[key])
    assert torch.equal(result.best_state[key], averaged[key])
    assert torch.equal(model.state_dict()[key], result.best_state[key])  # the model ends as the kept average
    with pytest.raises(MedtlError, match=r"trainer.ema_decay=1.5 must be in \(0, 1\)"):
        Trainer(partial(torch.optim.AdamW), ema_decay=1.5)


def test_interpolate_probe_keeps_the_weights_between_the_probe_and_the_finetuned_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "finetune", num_classes=2, image_size=32, frozen_stages=3)
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=2, progress=False, device="cpu",
                      linear_probe_first=True, interpolate_probe=0.25,
                      features={"epochs": 2, "patience": 2, "dtype": "float32"})
    trainer.run_folder = RunFolder(tmp_path)
    result = trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5})
    state = torch.load(tmp_path / RunFolder.LAST, weights_only=True)
    probe, finetuned = state["anchor"], state["best_state"]  # the probe's weights and the best fine-tuned epoch
    kept = model.state_dict()
    for key in ("encoder.head.1.weight", "encoder.net._blocks.5.11._depthwise_conv.weight",
                "encoder.net._blocks.5.11._bn1.running_var"):
        assert not torch.equal(probe[key], finetuned[key]), key  # both the head and the encoder moved
        assert torch.allclose(kept[key], probe[key] + 0.25 * (finetuned[key] - probe[key]), atol=1e-6), key
    assert torch.equal(kept["encoder.net._conv_stem.weight"], probe["encoder.net._conv_stem.weight"])  # frozen
    assert torch.equal(result.best_state["encoder.head.1.weight"], kept["encoder.head.1.weight"])
    assert torch.equal(torch.load(tmp_path / RunFolder.BEST, weights_only=True)["encoder.head.1.weight"],
                       kept["encoder.head.1.weight"])
    with pytest.raises(MedtlError, match=r"trainer.interpolate_probe=0.5 needs trainer.linear_probe_first=true"):
        Trainer(partial(torch.optim.AdamW), interpolate_probe=0.5)


def test_scratch_freezes_nothing_and_probes_nothing_under_the_recipes_settings() -> None:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "scratch", num_classes=2, weights=None, image_size=32,
                             frozen_stages=3)
    assert model.frozen_stages == 0 and all(p.requires_grad for p in model.parameters())
    logged: list[dict] = []
    trainer = Trainer(partial(torch.optim.AdamW), lr=1e-2, max_epochs=1, progress=False, device="cpu",
                      linear_probe_first=True, features={"epochs": 2, "patience": 2, "dtype": "float32"})
    trainer.fit(model, fake_loader(2), fake_loader(1), score=lambda p: {"auroc": 0.5},
                on_epoch_end=lambda metrics, epoch: logged.append(metrics))
    assert len(logged) == 1 and not any(k.startswith("probe/") for k in logged[0])  # no probe on random features
