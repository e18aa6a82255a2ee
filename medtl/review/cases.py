"""Case galleries ordered by what needs a human: false negatives first, then false positives, then the least
confident; each case as a radiologist views it, with where the model looked.

Images are shown as the model saw them: the file decoded the way training decodes it (DICOM modality LUT, the
file's VOI LUT or window, MONOCHROME1 inverted so bone is bright, rows top to bottom), windowed and letterboxed to
the model's input, so a Grad-CAM map overlays pixel for pixel.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from medtl.engine.metrics import threshold_or_default
from medtl.models.card import ModelCard

__all__ = ["FALSE_NEGATIVE", "FALSE_POSITIVE", "MISCLASSIFIED", "LEAST_CONFIDENT", "review_order", "CaseImages",
           "load_case_images", "gallery_figure", "case_gallery",
           "salient_slices", "volume_case_figure"]

FALSE_NEGATIVE, FALSE_POSITIVE = "false negative", "false positive"
MISCLASSIFIED, LEAST_CONFIDENT = "misclassified", "least confident"


def review_order(table: pd.DataFrame, card: ModelCard, threshold: float | None = None) -> pd.DataFrame:
    """The prediction ``table`` (``case, label, score, pred`` or ``score_<class>``) with a ``group`` column, in the
    order a reviewer should see it: binary tasks false negatives (most confidently missed first), false positives
    (most confident first), then correct calls nearest the threshold; more classes: misclassified (most confident
    first), then the least confident correct ones. Unlabelled rows go by confidence alone. ``threshold``: the one
    the table's ``pred`` was cut at, when not the card's (a site scored under AdaBN: :meth:`ReviewRun.threshold`)."""
    rows = table.copy()
    labelled = rows["label"].astype(str) != ""
    if card.binary:
        positive, threshold = card.classes[1], _binary_threshold(card, threshold)
        is_positive, called = rows["label"] == positive, rows["score"] >= threshold
        rows["group"] = LEAST_CONFIDENT
        rows.loc[labelled & is_positive & ~called, "group"] = FALSE_NEGATIVE
        rows.loc[labelled & ~is_positive & called, "group"] = FALSE_POSITIVE
        rows["_key"] = np.select([rows["group"] == FALSE_NEGATIVE, rows["group"] == FALSE_POSITIVE],
                                 [rows["score"], -rows["score"]], (rows["score"] - threshold).abs())
    else:
        confidence = rows[[f"score_{c}" for c in card.classes]].max(axis=1)
        wrong = labelled & (rows["label"] != rows["pred"])
        rows["group"] = np.where(wrong, MISCLASSIFIED, LEAST_CONFIDENT)
        rows["_key"] = np.where(wrong, -confidence, confidence)
    rank = {FALSE_NEGATIVE: 0, FALSE_POSITIVE: 1, MISCLASSIFIED: 0, LEAST_CONFIDENT: 2}
    rows["_rank"] = rows["group"].map(rank)
    return rows.sort_values(["_rank", "_key"], kind="stable").drop(columns=["_rank", "_key"]).reset_index(drop=True)


class CaseImages:
    """The model inputs ``(N, C, *input_shape)`` and display images ``(N, *input_shape)`` in [0, 1] of some cases
    (``(S, S)`` images, ``(X, Y, Z)`` volumes); a case whose file is not on this machine has ``available[i] == False``
    and a blank image."""

    def __init__(self, inputs: torch.Tensor, display: np.ndarray, available: np.ndarray) -> None:
        self.inputs, self.display, self.available = inputs, display, available


def load_case_images(cases: list[str], paths: dict[str, str], card: ModelCard) -> CaseImages:
    """Decode ``cases`` (``paths``: ``{case: file}``) with the model's own preprocessing (from its ``card``)."""
    from medtl.predict import card_transforms

    transform = card_transforms(card)
    shape, channels = card.pipeline().input_shape, card.preprocessing.in_channels
    mean, std = float(np.mean(card.preprocessing.mean)), float(np.mean(card.preprocessing.std))
    inputs = torch.zeros((len(cases), channels, *shape))  # (N, C, *input_shape), normalised as the encoder expects
    available = np.zeros(len(cases), dtype=bool)
    for index, case in enumerate(cases):
        if case in paths:
            inputs[index] = torch.as_tensor(np.asarray(transform({"image": paths[case]})["image"]))
            available[index] = True
    display = (inputs.mean(dim=1).numpy() * std + mean).clip(0.0, 1.0)  # (N, *input_shape): undo the normalisation
    display[~available] = 0.5
    return CaseImages(inputs, display, available)


def gallery_figure(rows: pd.DataFrame, images: CaseImages, maps: np.ndarray | None, card: ModelCard, title: str,
                   columns: int = 3, threshold: float | None = None) -> Figure:
    """A grid of cases, each as two panels: the image as the model saw it, and the same with its Grad-CAM
    (``maps`` ``(N, S, S)``, drawn transparent where the evidence is weak); above them the case, truth,
    prediction, score and threshold."""
    count = max(1, len(rows))
    grid_rows = int(np.ceil(count / columns))
    fig, axes = plt.subplots(grid_rows, 2 * columns, figsize=(2.6 * 2 * columns, 3.4 * grid_rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, row in enumerate(rows.to_dict("records")):
        plain, overlay = axes[index // columns, 2 * (index % columns)], axes[index // columns, 2 * (index % columns) + 1]
        for ax in (plain, overlay):
            ax.imshow(images.display[index], cmap="gray", vmin=0.0, vmax=1.0)
        if not images.available[index]:
            plain.text(0.5, 0.5, "image not on\nthis machine", ha="center", va="center", transform=plain.transAxes)
        elif maps is not None:
            overlay.imshow(_heat(maps[index]))
        explained = card.classes[1] if card.binary else str(row["pred"])
        none_found = maps is not None and images.available[index] and float(maps[index].max()) == 0.0
        plain.set_title(_caption(row, card, threshold), fontsize=7.5, loc="left")
        overlay.set_title(f"Grad-CAM: {'no ' if none_found else ''}{explained} evidence" if maps is not None else "",
                          fontsize=7.5)
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _heat(saliency: np.ndarray) -> np.ndarray:
    """``(S, S)`` map in [0, 1] -> ``(S, S, 4)`` RGBA: jet colours, opacity rising with the evidence."""
    rgba = plt.get_cmap("jet")(saliency)
    rgba[..., 3] = 0.6 * np.clip(saliency, 0.0, 1.0)
    return rgba


def _binary_threshold(card: ModelCard, threshold: float | None) -> float:
    """``threshold`` when given, else the card's (:data:`~medtl.engine.metrics.DEFAULT_THRESHOLD` for a card without
    one)."""
    return threshold if threshold is not None else threshold_or_default(card.threshold)


def _caption(row: dict, card: ModelCard, threshold: float | None = None) -> str:
    case = str(row["case"])
    case = case if len(case) <= 38 else "..." + case[-35:]
    truth = str(row["label"]) or "unlabelled"
    if card.binary:
        threshold = _binary_threshold(card, threshold)
        score = f"{card.classes[1]} score {float(row['score']):.3f} (threshold {threshold:.3f})"
    else:
        score = f"confidence {max(float(row[f'score_{c}']) for c in card.classes):.3f}"
    return f"{case}\ntruth {truth} | predicted {row['pred']}\n{score}"


def case_gallery(rows: pd.DataFrame, paths: dict[str, str], model: torch.nn.Module | None, card: ModelCard,
                 title: str, threshold: float | None = None) -> Figure:
    """:func:`gallery_figure` of ``rows`` with their images (``paths``: ``{case: file}``) and, given the eager
    ``model``, Grad-CAM maps: of the positive class for a binary task, else of the predicted class."""
    from medtl.review.saliency import gradcam_maps

    images = load_case_images(list(rows["case"]), paths, card)
    maps = None
    if model is not None and images.available.any():
        classes = 1 if card.binary else [list(card.classes).index(p) for p in rows["pred"]]
        maps = gradcam_maps(model, images.inputs, classes)
    if images.display.ndim == 4:  # volumes: each case as its most salient axial slice (2.5D and 3D models alike)
        images, maps = _salient_axial_slices(images, maps)
    return gallery_figure(rows, images, maps, card, title, threshold=threshold)


def _salient_axial_slices(images: CaseImages, maps: np.ndarray | None) -> tuple[CaseImages, np.ndarray | None]:
    """``(N, X, Y, Z)`` volumes (and maps) -> ``(N, Y, X)`` axial slices, anterior at the top."""
    chosen = [salient_slices(m, 1)[0] for m in maps] if maps is not None else [images.display.shape[-1] // 2] * len(
        images.display)
    display = np.stack([np.rot90(volume[..., z]) for volume, z in zip(images.display, chosen)])
    flat = np.stack([np.rot90(m[..., z]) for m, z in zip(maps, chosen)]) if maps is not None else None
    return CaseImages(images.inputs, np.ascontiguousarray(display), images.available), flat


def salient_slices(saliency: np.ndarray, count: int = 3, axis: int = -1) -> list[int]:
    """The ``count`` slices of a saliency volume ``(X, Y, Z)`` along ``axis`` holding the most evidence (summed
    map), strongest first; fewer when the volume has fewer slices."""
    other = tuple(i for i in range(saliency.ndim) if i != axis % saliency.ndim)
    mass = saliency.sum(axis=other)  # (slices,)
    return [int(i) for i in np.argsort(-mass, kind="stable")[:count]]


def volume_case_figure(volume: np.ndarray, saliency: np.ndarray, caption: str, count: int = 3,
                       axis: int = -1) -> Figure:
    """A volume case as its most salient slices: each slice of ``volume`` ``(X, Y, Z)`` in [0, 1] (RAS, shown with
    anterior up) beside its Grad-CAM slice of ``saliency`` ``(X, Y, Z)``."""
    chosen = salient_slices(saliency, count, axis)
    fig, axes = plt.subplots(1, 2 * len(chosen), figsize=(2.6 * 2 * len(chosen), 3.2), squeeze=False)
    for column, index in enumerate(chosen):
        image = np.rot90(np.take(volume, index, axis=axis))  # (X, Y) -> rows = Y flipped: anterior at the top
        heat = np.rot90(np.take(saliency, index, axis=axis))
        plain, overlay = axes[0, 2 * column], axes[0, 2 * column + 1]
        for ax in (plain, overlay):
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            ax.axis("off")
        overlay.imshow(_heat(heat))
        plain.set_title(f"slice {index}", fontsize=8, loc="left")
        overlay.set_title("Grad-CAM", fontsize=8)
    fig.suptitle(caption, fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    return fig
