"""The model card: a typed, versioned record of what a logged model needs and is, written by ``medtl.train``
into the MLflow model's metadata and read by ``medtl.predict`` and the review kit (:mod:`medtl.review`).

It holds the classes, the operating thresholds chosen on validation (as trained, and under AdaBN), the
preprocessing (so a model predicts with exactly its training preprocessing) and the architecture (so the eager
model can be rebuilt from the tensors-only state dict). ``version`` is checked on reading: a card from a newer
medtl stops with one line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

__all__ = ["CARD_VERSION", "Preprocessing", "Architecture", "ModelCard"]

CARD_VERSION = 3  # 1: the flat metadata before the card (converted); 2: no pipeline (radiographs); 3: this layout
VERSION_KEY = "medtl_version"


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes the model's input: ``pipeline`` is the image pipeline's card (``kind`` and settings,
    :func:`medtl.data.pipelines.pipeline_from_card`); the other fields are the radiograph settings that cards
    before version 3 carried alone (still written, for readers of those cards)."""

    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    dicom_voi: str = "auto"
    dicom_frames: str = "first"
    pipeline: dict[str, Any] = field(default_factory=dict)

    def weights_info(self, source: str = "") -> WeightsInfo:
        return WeightsInfo(source=source, mean=tuple(self.mean), std=tuple(self.std), in_channels=self.in_channels)


@dataclass(frozen=True)
class Architecture:
    """What :func:`medtl.models.build_classifier` needs to rebuild the network before loading its weights."""

    encoder: str
    num_classes: int
    in_channels: int = 1
    grey_input: str = "sum"
    image_size: int = 224
    input_shape: tuple[int, ...] = ()  # the pipeline's spatial shape; () for cards before version 3: (S, S)
    slices: dict[str, Any] = field(default_factory=dict)  # 2.5D settings (model.slices) of a volume model

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`medtl.models.build_classifier` that rebuild this network."""
        return {"encoder": self.encoder, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "grey_input": self.grey_input, "image_size": self.image_size,
                "input_shape": self.input_shape or None, "slices": dict(self.slices) or None}


@dataclass(frozen=True)
class ModelCard:
    """Everything a logged model carries besides its weights.

    Attributes:
        classes: class names in output order; for two classes the last is the positive one.
        threshold: the positive-class score threshold chosen on validation (binary tasks), else ``None``.
        adabn_threshold: the threshold chosen on the same validation images scored with their own BatchNorm
            statistics (AdaBN at the training site), the one ``medtl.predict adaptation=adabn`` applies: training
            statistics come from augmented batches, so a site's own statistics move the scores even where nothing
            shifted. ``None`` without one (multi-class, nothing to adapt, cards before medtl chose it): then
            ``threshold``.
        strategy, adaptation: how the encoder was adapted (``finetune``, ``mmd``...).
        encoder_weights: where the pretrained weights came from (``imagenet:<file>``, ``random``).
        data_root: the name (last part) of the training data's folder, for the reviewer; never a full path.
        source_batchnorms: the encoder BatchNorm layers whose statistics were estimated on the training images,
            the ones AdaBN re-estimates at a new site; ``None`` on cards written before medtl recorded them
            (then every encoder BatchNorm layer).
        medtl_release: the medtl version that wrote the card.
    """

    classes: tuple[str, ...]
    threshold: float | None
    preprocessing: Preprocessing
    architecture: Architecture
    strategy: str
    adaptation: str = "none"
    encoder_weights: str = ""
    data_root: str = ""
    medtl_release: str = ""
    source_batchnorms: tuple[str, ...] | None = None
    adabn_threshold: float | None = None
    version: int = field(default=CARD_VERSION)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def positive_class(self) -> str | None:
        return self.classes[1] if self.binary else None

    def operating_threshold(self, adabn: bool = False) -> float | None:
        """The threshold for scores of the model as trained, or (``adabn``) with a site's own BatchNorm statistics."""
        return self.adabn_threshold if adabn and self.adabn_threshold is not None else self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The card as MLflow model metadata (JSON types only); :meth:`from_dict` reads it back."""
        card = asdict(self)
        card[VERSION_KEY] = card.pop("version")
        card["classes"] = list(self.classes)
        if self.source_batchnorms is not None:
            card["source_batchnorms"] = list(self.source_batchnorms)
        return card

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str) -> ModelCard:
        """Read a card from a model's metadata; ``source`` (the model URI) names it in errors."""
        version = meta.get(VERSION_KEY)
        if not isinstance(version, int) or version < 1:
            raise MedtlError(f"model '{source}' has no medtl model card ({VERSION_KEY} missing); "
                             "use a model logged by medtl.train")
        if version > CARD_VERSION:
            raise MedtlError(f"model '{source}' has a version {version} model card; this medtl reads up to version "
                             f"{CARD_VERSION}: upgrade medtl (pip install -U medtl) to use it")
        meta = _from_version_1(meta) if version == 1 else meta
        try:
            return cls(classes=tuple(str(c) for c in meta["classes"]),
                       threshold=_optional_float(meta.get("threshold")),
                       preprocessing=Preprocessing(**{**meta["preprocessing"],
                                                      "mean": tuple(meta["preprocessing"]["mean"]),
                                                      "std": tuple(meta["preprocessing"]["std"])}),
                       architecture=Architecture(**{**meta["architecture"], "input_shape": tuple(
                           meta["architecture"].get("input_shape", ()))}), strategy=str(meta["strategy"]),
                       adaptation=str(meta.get("adaptation", "none")),
                       encoder_weights=str(meta.get("encoder_weights", "")), data_root=str(meta.get("data_root", "")),
                       medtl_release=str(meta.get("medtl_release", "")),
                       source_batchnorms=_optional_names(meta.get("source_batchnorms")),
                       adabn_threshold=_optional_float(meta.get("adabn_threshold")), version=CARD_VERSION)
        except (KeyError, TypeError, ValueError) as exc:
            raise MedtlError(f"model '{source}' has a damaged model card ({type(exc).__name__}: {exc}); "
                             "re-log the model with medtl.train") from exc

    def weights_info(self) -> WeightsInfo:
        """The input normalisation and channels the encoder expects."""
        return self.preprocessing.weights_info(self.encoder_weights)

    def pipeline(self) -> Any:
        """The :class:`~medtl.data.pipelines.ImagePipeline` the model was trained with (radiographs for cards
        before version 3)."""
        from medtl.data.pipelines import RadiographPipeline, pipeline_from_card

        if self.preprocessing.pipeline:
            return pipeline_from_card(dict(self.preprocessing.pipeline), "the model card")
        return RadiographPipeline.from_preprocessing(self.preprocessing)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"source_batchnorms must be a list of layer names, not {type(value).__name__}")
    return tuple(str(v) for v in value)


def _from_version_1(meta: dict[str, Any]) -> dict[str, Any]:
    """The flat metadata written before the card existed, in the version 2 layout."""
    intensity, dicom = meta.get("intensity", {}), meta.get("dicom", {})
    preprocessing = {"image_size": meta["image_size"], "in_channels": meta["in_channels"], "mean": meta["mean"],
                     "std": meta["std"], "lower_percentile": intensity.get("lower_percentile", 0.5),
                     "upper_percentile": intensity.get("upper_percentile", 99.5),
                     "dicom_voi": dicom.get("voi", "auto"), "dicom_frames": dicom.get("frames", "first")}
    architecture = meta.get("architecture") or {"encoder": "efficientnet_lite0", "num_classes": len(meta["classes"]),
                                                "in_channels": meta["in_channels"], "image_size": meta["image_size"]}
    return {**meta, "preprocessing": preprocessing, "architecture": architecture,
            "strategy": meta.get("strategy", "unknown")}
