"""Model soups: the run's model is the average of models that ``medtl.train`` already trained, not trained itself.

``trainer=soup`` replaces fitting with a uniform soup (Wortsman et al. 2022, "Model soups"): every weight and
BatchNorm statistic the mean over the ingredients, models logged by ``medtl.train`` from the same pretrained
encoder with the same model config (other seeds, say). The rest of the run is an ordinary one: validation chooses
the thresholds (as trained and under AdaBN), external sets are scored, and the soup is logged with its model card,
so ``medtl.predict`` and the review read it like any other model::

    python -m medtl.train +experiment=chest_xray data.root=... trainer=soup \\
        'trainer.ingredients=[runs:/<run id>/model,runs:/<run id>/model,runs:/<run id>/model]'

Validate a soup on images none of its ingredients trained on: train the ingredients with one ``data.split_seed``
(the soup's), and vary ``seed`` only.

The mean of the ingredients' BatchNorm statistics is not the statistics of the mean network's features.
``trainer.batchnorm=recompute`` estimates them again over one pass of the training loader, as training fed it
(SWA's ``update_bn``), for the layers that learnt source statistics (frozen stages keep ImageNet's);
``average`` keeps the mean.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from medtl.adaptation.adabn import recompute_batchnorm_statistics, source_statistics_batchnorms
from medtl.engine.loop import EpochCallback, FitResult, Predictions, Trainer, validation_loss
from medtl.errors import MedtlError
from medtl.models.card import ModelCard
from medtl.models.classifier import TransferModel

__all__ = ["Ingredient", "SoupTrainer", "uniform_soup", "read_ingredients", "BATCHNORM_CHOICES"]

log = logging.getLogger(__name__)
# what every ingredient's card must share with the first: a soup of other inputs, outputs or networks is noise
SHARED_CARD_FIELDS = ("classes", "preprocessing", "architecture", "strategy", "adaptation", "encoder_weights")
BATCHNORM_CHOICES = ("recompute", "average")  # trainer.batchnorm: the soup's BatchNorm statistics


@dataclass(frozen=True)
class Ingredient:
    """One trained model of a soup: where it came from, its card and its tensors-only weights."""

    ref: str
    card: ModelCard
    state: dict[str, torch.Tensor]


def read_ingredients(refs: Sequence[str], tracking_uri: str) -> list[Ingredient]:
    """The logged models ``refs`` (MLflow URIs or model folders), each rebuilt from its card and tensors-only
    state dict (:func:`medtl.predict.load_model`), checked to make one soup with the first."""
    from medtl.predict import load_model

    ingredients = []
    for ref in refs:
        model, card = load_model(str(ref), tracking_uri, eager=True)
        ingredients.append(Ingredient(str(ref), card, model.state_dict()))
    first = asdict(ingredients[0].card)
    for other in ingredients[1:]:
        for name in SHARED_CARD_FIELDS:
            difference = first_difference(asdict(other.card)[name], first[name], name)
            if difference is not None:
                key, value, expected = difference
                raise MedtlError(f"trainer.ingredients: '{other.ref}' has {key}={value!r}, '{ingredients[0].ref}' "
                                 f"{expected!r}; a soup averages models trained with the same data and model config")
    return ingredients


def first_difference(value: Any, expected: Any, key: str) -> tuple[str, Any, Any] | None:
    """``(dotted key, value, expected)`` of the first leaf where two card fields (nested dicts) differ, or ``None``."""
    if isinstance(value, dict) and isinstance(expected, dict):
        for name in sorted(set(value) | set(expected)):
            found = first_difference(value.get(name), expected.get(name), f"{key}.{name}")
            if found is not None:
                return found
        return None
    return None if value == expected else (key, value, expected)


def uniform_soup(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors over ``states`` (weights, BatchNorm means and variances);
    integer tensors (BatchNorm's step counts) from the first. Every state must hold the same keys and shapes."""
    first = states[0]
    soup = {}
    for key, value in first.items():
        if value.is_floating_point():
            soup[key] = torch.stack([state[key].to(torch.float64) for state in states]).mean(0).to(value.dtype)
        else:
            soup[key] = value.clone()
    return soup


def check_fits(ingredient: Ingredient, model: torch.nn.Module) -> None:
    """One line naming the ingredient and the first tensor that does not fit ``model`` (the run's model config)."""
    expected = model.state_dict()
    missing = sorted(set(expected) ^ set(ingredient.state))
    if missing:
        raise MedtlError(f"trainer.ingredients: '{ingredient.ref}' has other layers than this run's model "
                         f"({missing[0]}, ...); train the ingredients with the model config of the soup run")
    for key, value in expected.items():
        if ingredient.state[key].shape != value.shape:
            raise MedtlError(f"trainer.ingredients: '{ingredient.ref}' has {key} of shape "
                             f"{tuple(ingredient.state[key].shape)}, this run's model {tuple(value.shape)}; train the "
                             "ingredients with the model config of the soup run")


def check_input_shape(ingredient: Ingredient, loader: DataLoader) -> None:
    """One line when ``loader``'s images ``(B, C, *spatial)`` are not the size the ingredients were trained at."""
    architecture = ingredient.card.architecture
    trained = tuple(architecture.input_shape) or (architecture.image_size, architecture.image_size)
    batch = next(iter(loader))
    shape = tuple(batch["image"].shape[2:])
    if shape != trained:
        raise MedtlError(f"trainer.ingredients: '{ingredient.ref}' was trained on inputs of {trained}, this run reads "
                         f"{shape}; set the data config the ingredients were trained with (data.image_size...)")


class SoupTrainer(Trainer):
    """A :class:`~medtl.engine.Trainer` whose :meth:`fit` averages ``ingredients`` instead of training.

    Args:
        ingredients: at least two logged models (``runs:/<id>/model``, ``models:/m-...``, or model folders).
        tracking_uri: where the ``runs:/`` and ``models:/`` URIs are found (the run's ``tracking.uri``).
        batchnorm: ``recompute``: BatchNorm statistics estimated again on the training loader after averaging;
            ``average``: the mean of the ingredients'.
        **kwargs: the :class:`~medtl.engine.Trainer` arguments (device, progress...; the training ones unused).
    """

    def __init__(self, ingredients: Sequence[str] = (), tracking_uri: str = "", batchnorm: str = "recompute",
                 **kwargs: Any) -> None:
        if len(ingredients) < 2:
            raise MedtlError(f"trainer.ingredients lists {len(ingredients)} model(s); a soup averages two or more: "
                             "trainer.ingredients=[runs:/<run id>/model,runs:/<run id>/model]")
        if batchnorm not in BATCHNORM_CHOICES:
            raise MedtlError(f"trainer.batchnorm={batchnorm} is not one of {', '.join(BATCHNORM_CHOICES)}")
        super().__init__(**kwargs)
        self.batchnorm = batchnorm
        self.ingredients = read_ingredients(ingredients, tracking_uri)  # a bad URI stops the run before the data

    def fit(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
            score: Callable[[Predictions], dict[str, float]], monitor: str = "auroc",
            on_epoch_end: EpochCallback | None = None, **unused: Any) -> FitResult:
        """Load the soup into ``model`` (its BatchNorm statistics re-estimated on ``train_loader`` with
        ``batchnorm=recompute``) and score it on ``val_loader`` once (as epoch 0)."""
        start = time.perf_counter()
        self._check_supported(unused)
        for ingredient in self.ingredients:
            check_fits(ingredient, model)
        check_input_shape(self.ingredients[0], val_loader)
        model.load_state_dict(uniform_soup([ingredient.state for ingredient in self.ingredients]))
        log.info("soup of %d models: %s", len(self.ingredients), ", ".join(i.ref for i in self.ingredients))
        if self.batchnorm == "recompute":
            layers = source_statistics_batchnorms(model)
            recomputed = recompute_batchnorm_statistics(model, train_loader, self.device, self.progress, layers)
            model.load_state_dict(recomputed.state_dict())
            log.info("the soup's BatchNorm statistics re-estimated on the training images (%d layers)", len(layers))
        val = self.predict(model, val_loader)
        metrics = {f"val/{k}": v for k, v in score(val).items()}
        metrics["val/loss"] = validation_loss(val)
        if on_epoch_end:
            on_epoch_end(metrics, 0)
        return FitResult(0, metrics[f"val/{monitor}"], model.state_dict(), [metrics], time.perf_counter() - start)

    @staticmethod
    def _check_supported(options: dict[str, Any]) -> None:
        """One line for what a soup cannot do: resume, or adapt to a target domain while it trains."""
        adaptation = options.get("adaptation")
        if adaptation is not None and getattr(adaptation, "method_name", "none") != "none":
            raise MedtlError(f"trainer=soup trains nothing, so adaptation={adaptation.method_name} cannot act; use "
                             "adaptation=none (the ingredients keep what their own adaptation learnt)")
        if options.get("resume") is not None:
            raise MedtlError("trainer=soup has nothing to resume; start the soup run again")
