"""The model card: typed, versioned, round-trips through MLflow metadata, refuses what it cannot read."""
from __future__ import annotations

import dataclasses
import json

import pytest

from medtl.errors import MedtlError
from medtl.models.card import CARD_VERSION, Architecture, ModelCard, Preprocessing


def example() -> ModelCard:
    return ModelCard(classes=("NORMAL", "PNEUMONIA"), threshold=0.42,
                     preprocessing=Preprocessing(224, 1, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, 99.0, "window", "first"),
                     architecture=Architecture("efficientnet_lite0", 2, 1, "sum", 224), strategy="finetune",
                     adaptation="mmd", encoder_weights="imagenet:lite0.pth", data_root="chest_xray_kermany",
                     medtl_release="0.1.0", source_batchnorms=("encoder.bn1", "encoder.blocks.0.0.bn1"),
                     adabn_threshold=0.61)


def test_round_trip_through_json() -> None:
    card = example()
    assert ModelCard.from_dict(json.loads(json.dumps(dataclasses.replace(card, source_batchnorms=()).to_dict())),
                               "m").source_batchnorms == ()
    without = card.to_dict()
    del without["source_batchnorms"]  # a card written before the field: AdaBN falls back to every layer
    assert ModelCard.from_dict(without, "m").source_batchnorms is None
    meta = json.loads(json.dumps(card.to_dict()))
    assert meta["medtl_version"] == CARD_VERSION
    assert ModelCard.from_dict(meta, "models:/m-1") == card
    assert card.binary and card.positive_class == "PNEUMONIA" and card.weights_info().in_channels == 1


def test_adabn_predictions_use_their_own_threshold_and_older_cards_fall_back() -> None:
    card = example()
    assert card.operating_threshold() == 0.42 and card.operating_threshold(adabn=True) == 0.61
    older = card.to_dict()
    del older["adabn_threshold"]  # a card written before medtl chose one under AdaBN
    assert ModelCard.from_dict(older, "m").operating_threshold(adabn=True) == 0.42
    multiclass = dataclasses.replace(card, classes=("A", "B", "C"), threshold=None, adabn_threshold=None)
    assert multiclass.operating_threshold(adabn=True) is None


def test_version_1_metadata_is_read() -> None:
    old = {"medtl_version": 1, "classes": ["A", "B", "C"], "threshold": None, "image_size": 96, "in_channels": 1,
           "mean": [0.5], "std": [0.5], "intensity": {"lower_percentile": 2.0, "upper_percentile": 98.0},
           "dicom": {"voi": "none", "frames": "first"}, "strategy": "scratch", "adaptation": "none",
           "architecture": {"encoder": "resnet18", "num_classes": 3, "in_channels": 1, "grey_input": "sum",
                            "image_size": 96}}
    card = ModelCard.from_dict(old, "old")
    assert card.preprocessing.lower_percentile == 2.0 and card.preprocessing.dicom_voi == "none"
    assert card.architecture.encoder == "resnet18" and not card.binary and card.version == CARD_VERSION


@pytest.mark.parametrize(("meta", "message"), [
    ({"medtl_version": CARD_VERSION + 1}, "upgrade medtl"),
    ({}, "no medtl model card"),
    ({"medtl_version": CARD_VERSION, "classes": ["a", "b"]}, "damaged model card"),
    ({**example().to_dict(), "source_batchnorms": "encoder.bn1"}, "damaged model card.*list of layer names"),
    ({**example().to_dict(), "adabn_threshold": "high"}, "damaged model card.*ValueError"),
])
def test_cards_it_cannot_read_are_refused_by_name(meta: dict, message: str) -> None:
    with pytest.raises(MedtlError, match=message) as error:
        ModelCard.from_dict(meta, "models:/m-x")
    assert "models:/m-x" in str(error.value)
