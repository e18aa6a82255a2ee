"""Transfer strategies and the classifier that the training loop optimises.

``linear_probe``: pretrained encoder frozen (BatchNorm statistics too), only the head learns.
``finetune``: pretrained encoder and head learn; the encoder at a lower learning rate. With ``frozen_stages``
the first stages keep their ImageNet weights and BatchNorm statistics: no backward pass runs through them.
``scratch``: the same architecture from a random initialisation, all layers at one rate: the
baseline that shows what pretraining buys (``frozen_stages`` and ``linear_probe_first`` do not apply: nothing
pretrained to keep or to probe).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medtl.errors import MedtlError
from medtl.models.registry import Encoder, create_encoder
from medtl.models.slices import SliceConfig, SliceEncoder

__all__ = ["Strategy", "STRATEGIES", "TransferModel", "build_classifier", "encoder_batchnorms"]


@dataclass(frozen=True)
class Strategy:
    """How an encoder is adapted: where its weights come from and whether it trains."""

    name: str
    pretrained: bool
    train_encoder: bool
    discriminative_lr: bool


STRATEGIES = {
    s.name: s
    for s in (
        Strategy("linear_probe", pretrained=True, train_encoder=False, discriminative_lr=False),
        Strategy("finetune", pretrained=True, train_encoder=True, discriminative_lr=True),
        Strategy("scratch", pretrained=False, train_encoder=True, discriminative_lr=False),
    )
}


class TransferModel(nn.Module):
    """An encoder with a task head, trained according to a :class:`Strategy`.

    ``forward``: ``(B, C, H, W)`` images or ``(B, C, X, Y, Z)`` volumes -> logits ``(B, num_classes)``.
    """

    def __init__(self, encoder: Encoder, strategy: Strategy, encoder_lr_mult: float, bn: str = "train",
                 layer_decay: float = 1.0, unfreeze_every: int | None = None, frozen_stages: int = 0) -> None:
        super().__init__()
        if bn not in ("train", "freeze"):
            raise MedtlError(f"model.bn='{bn}' is unknown; use train or freeze")
        n_stages = len(encoder.stage_modules())
        if not 0 <= frozen_stages < n_stages:
            raise MedtlError(f"model.frozen_stages={frozen_stages} must be in [0, {n_stages - 1}]: "
                             f"{type(encoder).__name__} has {n_stages} stages and at least the last one trains")
        if not 0.0 < layer_decay <= 1.0:
            raise MedtlError(f"model.layer_decay={layer_decay} must be in (0, 1]; 1 gives every stage the same rate")
        self.layer_decay = layer_decay if strategy.discriminative_lr else 1.0
        self.unfreeze_every = unfreeze_every if strategy.discriminative_lr else None
        self.encoder = encoder
        self.strategy = strategy
        self.encoder_lr_mult = encoder_lr_mult if strategy.discriminative_lr else 1.0
        self.freeze_bn = bn == "freeze" and strategy.train_encoder
        self.frozen_stages = frozen_stages if strategy.train_encoder and strategy.pretrained else 0
        for parameter in encoder.encoder_parameters():
            parameter.requires_grad_(strategy.train_encoder)
        for module in self._encoder_batchnorms() if self.freeze_bn else []:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        for parameter in self._frozen_stage_parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)``; with ``return_features`` also the pooled features: ``((B, F), (B, K))``. The training
        loop asks the model (or its data-parallel wrapper) for both instead of reaching into the encoder."""
        if not return_features:
            return self.encoder(x)
        features = self.encoder.forward_features(x)  # (B, F)
        return features, self.encoder.head(features)

    def train(self, mode: bool = True) -> TransferModel:
        """Like ``nn.Module.train``, but a frozen encoder stays in eval mode (BatchNorm statistics fixed),
        and so do the encoder's BatchNorm layers under ``bn="freeze"``."""
        super().train(mode)
        if mode and not self.strategy.train_encoder:
            for name, module in self.encoder.named_children():
                if name != "head":
                    module.eval()
        if mode and self.freeze_bn:
            for module in self._encoder_batchnorms():
                module.eval()
        for stage in self.encoder.stage_modules()[:self.frozen_stages] if mode else []:
            for module in stage:
                module.eval()
        return self

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups: the head at ``lr``; a trainable encoder's stage ``i`` of ``n`` at
        ``lr * encoder_lr_mult * layer_decay ** (n - 1 - i)`` (the stage nearest the head decays least)."""
        groups = [{"params": list(self.encoder.head.parameters()), "lr": lr, "name": "head"}]
        if not self.strategy.train_encoder:
            return groups
        frozen_bn = {id(p) for m in self._encoder_batchnorms() for p in m.parameters()} if self.freeze_bn else set()
        stages = self.encoder.stage_parameters()
        for index, params in enumerate(stages[self.frozen_stages:], start=self.frozen_stages):
            params = [p for p in params if id(p) not in frozen_bn]
            scale = self.encoder_lr_mult * self.layer_decay ** (len(stages) - 1 - index)
            groups.append({"params": params, "lr": lr * scale, "name": f"encoder.stage{index}"})
        return groups

    def on_epoch_start(self, epoch: int) -> None:
        """Gradual unfreezing: before epoch ``e`` the last ``1 + e // unfreeze_every`` stages train (never the
        first ``frozen_stages``)."""
        if self.unfreeze_every is None:
            return
        stages = self.encoder.stage_parameters()
        trainable_from = max(self.frozen_stages, len(stages) - 1 - epoch // self.unfreeze_every)
        frozen_bn = {id(p) for m in self._encoder_batchnorms() for p in m.parameters()} if self.freeze_bn else set()
        for index, params in enumerate(stages):
            for parameter in params:
                parameter.requires_grad_(index >= trainable_from and id(parameter) not in frozen_bn)

    def _frozen_stage_parameters(self) -> list[nn.Parameter]:
        return [p for stage in self.encoder.stage_parameters()[:self.frozen_stages] for p in stage]

    def _encoder_batchnorms(self) -> list[nn.Module]:
        return list(encoder_batchnorms(self).values())


def encoder_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The BatchNorm layers of ``model``'s encoder (of ``model`` itself when it has no ``encoder``) by their names in
    ``model``; the head's are left out."""
    encoder = getattr(model, "encoder", model)
    head = getattr(encoder, "head", None)
    head_ids = {id(m) for m in head.modules()} if head is not None else set()
    encoder_ids = {id(m) for m in encoder.modules()}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) in encoder_ids and id(m) not in head_ids}


def build_classifier(encoder: str, strategy: str, num_classes: int, weights: str | None = "imagenet",
                     weights_path: str | None = None, in_channels: int = 1, image_size: int = 224,
                     dropout: float = 0.2, encoder_lr_mult: float = 0.1, grey_input: str = "sum",
                     bn: str = "train", layer_decay: float = 1.0, unfreeze_every: int | None = None,
                     frozen_stages: int = 0, input_shape: Sequence[int] | None = None, slices: dict | None = None) -> TransferModel:
    """Create the encoder named ``encoder`` for ``strategy`` and give it a ``num_classes`` head.

    ``input_shape`` is the image pipeline's spatial shape (training passes it; ``(S, S)`` by default). For a
    volume ``(X, Y, Z)``, a 3D encoder (``efficientnet_lite0_3d``) takes it whole and a 2D encoder becomes a 2.5D
    one (:class:`~medtl.models.slices.SliceEncoder`, configured by ``slices``)."""
    if strategy not in STRATEGIES:
        raise MedtlError(f"model.strategy='{strategy}' is unknown; choose one of {sorted(STRATEGIES)}")
    chosen = STRATEGIES[strategy]
    if chosen.pretrained and weights is None:
        raise MedtlError(f"model.strategy={strategy} needs pretrained weights but model.weights is null; "
                         "set model.weights=imagenet or use model.strategy=scratch")
    shape = tuple(int(n) for n in input_shape) if input_shape else (int(image_size), int(image_size))
    config = SliceConfig(**dict(slices or {}))
    if len(shape) == 3 and config.pooling == "attention" and not chosen.train_encoder:
        raise MedtlError("model.slices.pooling=attention trains its attention with the encoder; use "
                         "model.strategy=finetune (or scratch), or model.slices.pooling=mean for a linear probe")
    net = create_encoder(encoder, weights=weights if chosen.pretrained else None,
                         weights_path=weights_path if chosen.pretrained else None,
                         in_channels=3 if len(shape) == 3 and config.slab else in_channels,
                         image_size=_encoder_size(encoder, shape, config), grey_input=grey_input)
    net = _for_input(net, encoder, shape, config)
    net.reset_head(num_classes, dropout=dropout)
    return TransferModel(net, chosen, encoder_lr_mult, bn, layer_decay, unfreeze_every, frozen_stages)


def _encoder_size(encoder: str, shape: tuple[int, ...], config: SliceConfig) -> int:
    """The size an encoder's static padding is computed for: the largest side of what it sees."""
    if len(shape) == 3 and not encoder.endswith("_3d"):
        return max(n for axis, n in enumerate(shape) if axis != config.axis)  # the 2D slices
    return max(shape)


def _for_input(net: Encoder, encoder: str, shape: tuple[int, ...], config: SliceConfig) -> Encoder:
    """The encoder as the input needs it: 2D on images, 2.5D or 3D on volumes."""
    dims = getattr(net, "spatial_dims", 2)
    if len(shape) == 3 and dims == 2:
        return SliceEncoder(net, config)
    if len(shape) != dims:
        raise MedtlError(f"model.encoder={encoder} is a {dims}D encoder but the data pipeline gives {len(shape)}D "
                         f"inputs {list(shape)}; use a 2D encoder on images, and a 2D (2.5D) or 3D one on volumes")
    return net
