"""The image pipeline: everything medtl needs to know about one kind of input, in one object.

A pipeline owns the reader, the deterministic and random transforms, the normalisation, ``spatial_dims``
and the input shape, the files it accepts in a folder, the facts the data check computes and the test-time
views. Training, ``medtl.predict``, the data check and the model card all take these from it, so a model
predicts with exactly its training preprocessing. A new kind of input is one new file with one
``@register_pipeline("kind")`` class and one ``conf/data/pipeline/<kind>.yaml``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from medtl.data.inventory import Inventory
from medtl.errors import MedtlError
from medtl.models.registry import WeightsInfo

if TYPE_CHECKING:
    from monai.transforms import Compose

    from medtl.data.check import ImageFacts

__all__ = ["ImagePipeline", "register_pipeline", "pipeline_from_card", "list_pipelines"]

_PIPELINES: dict[str, type[ImagePipeline]] = {}


class ImagePipeline(ABC):
    """One kind of input: files -> model inputs ``(C, *input_shape)``.

    Subclasses set ``kind`` and ``spatial_dims`` and implement the abstract methods; :meth:`settings` (the
    constructor's arguments) is what the model card stores and :func:`pipeline_from_card` rebuilds from.
    """

    kind: ClassVar[str]
    spatial_dims: ClassVar[int]
    #: Bump when the deterministic transforms change: disk-cache entries written by older code are then not reused.
    cache_version: ClassVar[int] = 1

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Spatial shape of a model input: ``(S, S)`` for images, ``(X, Y, Z)`` for volumes."""

    @abstractmethod
    def train_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        """Deterministic part (cached, stored as ``storage_dtype``), random augmentation, normalisation."""

    @abstractmethod
    def eval_transforms(self, weights: WeightsInfo, storage_dtype: type = np.float32) -> Compose:
        """Deterministic part and normalisation: ``{"image": path}`` -> ``{"image": (C, *input_shape)}``."""

    @abstractmethod
    def scan_folder(self, folder: Path, root: Path | None = None, allow_outside_root: bool = True) -> Inventory:
        """The inputs directly inside ``folder`` (``used``; a sub-folder may be one), the rest with reasons."""

    @abstractmethod
    def inspect(self, path: str) -> ImageFacts:
        """Label-free facts about one input for the data check (never raises for a bad file)."""

    @abstractmethod
    def tta_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Test-time views of a batch ``(B, C, *input_shape)``, each of the same shape."""

    def batch_augmentation(self, weights: WeightsInfo) -> Callable[[list[dict[str, Any]]], dict[str, Any]] | None:
        """The training loader's collation when part of the augmentation is drawn once per batch
        (:mod:`medtl.data.site_batches`); ``None``: MONAI's collation, every draw per input."""
        return None

    def demo(self, demo_dir: str, spec: dict[str, Any]) -> Path:
        """The manifest of this kind's built-in demo set under ``demo_dir`` (``data.demo`` = ``spec``), generated
        once; a kind without a demo says so."""
        raise MedtlError(f"the {self.kind} pipeline has no built-in demo; set data.root or data.manifest")

    def site_signature(self, severity: str) -> str:
        """What a simulated site of ``severity`` (``data.target_simulation.severity``) depends on besides its files."""
        raise MedtlError(f"the {self.kind} pipeline cannot simulate another site; give data.target instead")

    def write_site(self, frame: Any, folder: Path, severity: str, seed: int) -> Any:
        """Write the rows of ``frame`` (``path, label, patient_id``) as the simulated site ``severity`` stores them
        under ``folder``; return the frame of the written files (same columns, ``path`` to the new files)."""
        raise MedtlError(f"the {self.kind} pipeline cannot simulate another site; give data.target instead")

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as JSON types (dataclasses as dicts, tuples as lists)."""
        return {key: _plain(value) for key, value in vars(self).items() if not key.startswith("_")}

    def to_card(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings()}

    def cache_signature(self, weights: WeightsInfo) -> str:
        """What the cached deterministic output depends on besides the file itself."""
        return f"{self.kind}|v{self.cache_version}|{sorted(self.settings().items())}|{weights.mean}|{weights.std}"

    def input_example(self, channels: int) -> np.ndarray:
        """A ``(2, C, *input_shape)`` float32 batch: the exported model's input signature."""
        return np.zeros((2, channels, *self.input_shape), dtype=np.float32)


def register_pipeline(kind: str) -> Callable[[type[ImagePipeline]], type[ImagePipeline]]:
    """Register a pipeline class under ``kind`` (the name its model cards carry)."""

    def decorator(cls: type[ImagePipeline]) -> type[ImagePipeline]:
        if kind in _PIPELINES:
            raise ValueError(f"pipeline '{kind}' is registered twice")
        cls.kind = kind
        _PIPELINES[kind] = cls
        return cls

    return decorator


def list_pipelines() -> list[str]:
    return sorted(_PIPELINES)


def pipeline_from_card(card: dict[str, Any], source: str = "the model card") -> ImagePipeline:
    """Rebuild the pipeline a model card describes (``{"kind": ..., <settings>}``)."""
    kind = card.get("kind")
    if kind not in _PIPELINES:
        raise MedtlError(f"{source} names input pipeline '{kind}', which this medtl does not have (it has "
                         f"{list_pipelines()}); upgrade medtl")
    settings = {k: v for k, v in card.items() if k != "kind"}
    try:
        return _PIPELINES[kind](**settings)
    except TypeError as exc:
        raise MedtlError(f"{source}: pipeline '{kind}' settings do not fit this medtl ({exc}); upgrade medtl") from exc


def demo_spec(cls: type, spec: dict[str, Any]) -> Any:
    """``cls(**spec)`` for ``data.demo``; an unknown key is one line naming the keys there are."""
    try:
        return cls(**spec)
    except TypeError as exc:
        known = ", ".join(f.name for f in fields(cls))
        raise MedtlError(f"data.demo={spec} does not fit this pipeline's demo ({exc}); its keys are {known}") from None


def _plain(value: Any) -> Any:
    """JSON types for the card: dataclasses as dicts, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
