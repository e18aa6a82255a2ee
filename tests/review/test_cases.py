"""Review order: what needs a human comes first."""
from __future__ import annotations

import pandas as pd

from medtl.models.card import Architecture, ModelCard, Preprocessing
from medtl.review.cases import FALSE_NEGATIVE, FALSE_POSITIVE, LEAST_CONFIDENT, MISCLASSIFIED, review_order


def card(classes: tuple[str, ...], threshold: float | None) -> ModelCard:
    return ModelCard(classes=classes, threshold=threshold, preprocessing=Preprocessing(64, 1, (0.5,), (0.5,)),
                     architecture=Architecture("efficientnet_lite0", len(classes)), strategy="finetune")


def test_binary_order_is_false_negatives_then_false_positives_then_nearest_the_threshold() -> None:
    table = pd.DataFrame({"case": list("abcdefg"),
                          "label": ["P", "P", "N", "N", "P", "N", "N"],
                          "score": [0.10, 0.35, 0.90, 0.55, 0.95, 0.45, 0.05]})
    table["pred"] = ["P" if s >= 0.4 else "N" for s in table["score"]]
    ordered = review_order(table, card(("N", "P"), 0.4))
    assert list(ordered["case"]) == ["a", "b", "c", "d", "f", "g", "e"]
    assert list(ordered["group"]) == [FALSE_NEGATIVE] * 2 + [FALSE_POSITIVE] * 3 + [LEAST_CONFIDENT] * 2


def test_multiclass_order_is_confident_mistakes_then_least_confident() -> None:
    table = pd.DataFrame({"case": ["a", "b", "c", "d"], "label": ["x", "y", "z", "x"], "pred": ["y", "y", "x", "x"],
                          "score_x": [0.3, 0.1, 0.8, 0.5], "score_y": [0.6, 0.8, 0.1, 0.3], "score_z": [0.1, 0.1, 0.1, 0.2]})
    ordered = review_order(table, card(("x", "y", "z"), None))
    assert list(ordered["case"]) == ["c", "a", "d", "b"]
    assert list(ordered["group"]) == [MISCLASSIFIED, MISCLASSIFIED, LEAST_CONFIDENT, LEAST_CONFIDENT]


def test_unlabelled_cases_are_ordered_by_confidence_alone() -> None:
    table = pd.DataFrame({"case": ["a", "b", "c"], "label": ["", "", ""], "score": [0.9, 0.52, 0.15]})
    table["pred"] = ["P", "P", "N"]
    ordered = review_order(table, card(("N", "P"), 0.5))
    assert list(ordered["case"]) == ["b", "c", "a"] and set(ordered["group"]) == {LEAST_CONFIDENT}


def test_a_site_scored_under_adabn_is_ordered_at_the_threshold_its_predictions_were_cut_at() -> None:
    from dataclasses import replace

    from omegaconf import OmegaConf

    from medtl.review.run import ReviewRun

    adapted = replace(card(("N", "P"), 0.4), adaptation="adabn", adabn_threshold=0.6)
    run = ReviewRun("r", "run", "e", "sqlite://", OmegaConf.create(), {}, {}, {}, {}, adapted, "models:/m")
    assert run.threshold("target") == 0.6 and run.threshold("val") == 0.4
    assert replace(run, card=replace(adapted, adaptation="mmd")).threshold("target") == 0.4  # not scored under AdaBN
    table = pd.DataFrame({"case": ["a", "b"], "label": ["N", "N"], "score": [0.5, 0.7], "pred": ["N", "P"]})
    assert list(review_order(table, adapted)["group"]) == [FALSE_POSITIVE, FALSE_POSITIVE]  # at the card's 0.4
    ordered = review_order(table, adapted, run.threshold("target"))
    assert list(ordered["case"]) == ["b", "a"] and list(ordered["group"]) == [FALSE_POSITIVE, LEAST_CONFIDENT]


def test_the_most_salient_slices_of_a_volume_are_shown_strongest_first() -> None:
    import numpy as np

    from medtl.review.cases import salient_slices, volume_case_figure

    saliency = np.zeros((8, 9, 10))  # (X, Y, Z)
    saliency[..., 7] = 1.0
    saliency[..., 2] = 0.5
    saliency[2:4, 2:4, 5] = 1.0  # strong but small
    assert salient_slices(saliency, 3) == [7, 2, 5]
    assert salient_slices(saliency, 2, axis=0)[0] in (2, 3)  # the small blob adds to X slices 2 and 3
    figure = volume_case_figure(np.random.default_rng(0).uniform(size=(8, 9, 10)), saliency, "T1 case", count=2)
    assert [ax.get_title(loc="left") for ax in figure.axes[::2]] == ["slice 7", "slice 2"]


def test_review_finds_source_and_target_images_apart(tmp_path, demo_cache) -> None:
    """A domain-adaptation run's cases map back to files per set: the target gallery never shows a source image."""
    from medtl.review.run import _resolve_cases
    from tests.conftest import compose_config, small_demo_overrides

    cfg = compose_config(["+experiment=chest_xray_da", *small_demo_overrides(demo_cache), "data.image_size=64",
                          f"data.sites_dir={tmp_path / 'sites'}"])
    found = _resolve_cases(cfg)
    source, target = found["source"], found["target"]
    assert len(source) > 20 and len(target) > 5
    assert all(str(tmp_path / "sites") in p for p in target.values())
    assert not any(str(tmp_path / "sites") in p for p in source.values())


def test_a_volume_model_gallery_shows_each_case_as_its_most_salient_axial_slice(tmp_path) -> None:  # noqa: ANN001
    import nibabel as nib
    import numpy as np
    import torch

    from medtl.data.pipelines import VolumePipeline
    from medtl.models import build_classifier
    from medtl.review.cases import case_gallery, load_case_images

    pipeline = VolumePipeline(spacing=(4.0, 4.0, 4.0), shape=(16, 16, 12))
    volume_card = ModelCard(
        classes=("T1", "FLAIR"), threshold=0.5,
        preprocessing=Preprocessing(224, 1, (0.5,), (0.5,), pipeline=pipeline.to_card()),
        architecture=Architecture("efficientnet_lite0_3d", 2, input_shape=(16, 16, 12)), strategy="scratch")
    paths = {}
    for index in range(2):
        data = np.random.default_rng(index).gamma(2.0, 40.0, (18, 20, 14)).astype(np.float32)
        paths[f"T1/v{index}.nii.gz"] = str(tmp_path / f"v{index}.nii.gz")
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), paths[f"T1/v{index}.nii.gz"])
    images = load_case_images(list(paths), paths, volume_card)
    assert images.inputs.shape == (2, 1, 16, 16, 12) and images.display.shape == (2, 16, 16, 12)
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0_3d", "scratch", 2, weights=None, input_shape=[16, 16, 12]).eval()
    rows = pd.DataFrame({"case": list(paths), "label": ["T1", "T1"], "score": [0.7, 0.2], "pred": ["FLAIR", "T1"]})
    figure = case_gallery(rows, paths, model, volume_card, "volumes")
    shown = [ax.images[0].get_array().shape for ax in figure.axes if ax.images]
    assert shown and all(shape == (16, 16) for shape in shown)  # (Y, X) axial slices
