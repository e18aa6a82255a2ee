"""The training loop shared by every strategy: AdamW-style optimiser, warm-up + cosine schedule,
early stopping and best checkpoint on a validation metric, AMP on CUDA when present.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medtl.adaptation.registry import AdaptationMethod, DomainBatch
from medtl.engine.averaging import weight_average
from medtl.engine.distributed import Runtime, interleave
from medtl.engine.runtime import (autocast, current_memory_format, in_memory_format, memory_format_for,
                                  native_bfloat16, resolve_device, to_memory_format)
from medtl.engine.mixing import BatchMixing
from medtl.engine.schedule import warmup_cosine_scheduler
from medtl.engine.state import RunFolder, TrainingState, random_transforms
from medtl.errors import MedtlError
from medtl.models.classifier import TransferModel
from medtl.objectives.registry import SourceBatch, SourceObjective

__all__ = ["Predictions", "FitResult", "Trainer", "TargetStream", "HeadOnly", "FeatureSet", "encode_features", "predict_loader",
           "resolve_device", "tta_views", "validation_loss"]

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, float], int], None]  # (metrics, epoch)


@dataclass
class Predictions:
    """Model outputs over a loader: ``probs`` ``(N, K)`` softmax, ``labels`` ``(N,)`` (-1 when unknown), and when
    asked for, the pooled encoder ``features`` ``(N, F)`` of the unaugmented view."""

    probs: np.ndarray
    labels: np.ndarray
    paths: list[str]
    features: np.ndarray | None = None

    @staticmethod
    def interleaved(parts: list[Predictions]) -> Predictions:
        """The predictions of :meth:`Runtime.shard`'s shards, in the loader's order."""
        features = None if parts[0].features is None else interleave([p.features for p in parts])
        return Predictions(interleave([p.probs for p in parts]), interleave([p.labels for p in parts]),
                           interleave([p.paths for p in parts]), features)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


TTAViews = Callable[[torch.Tensor], list[torch.Tensor]]


def tta_views(images: torch.Tensor, shift_fraction: float = 0.04) -> list[torch.Tensor]:
    """Radiograph test-time views (:func:`medtl.data.pipelines.radiograph.radiograph_tta_views`)."""
    from medtl.data.pipelines.radiograph import radiograph_tta_views

    return radiograph_tta_views(images, shift_fraction)


@torch.no_grad()
def predict_loader(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
                   progress: bool = True, desc: str = "predict", tta: TTAViews | bool | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format,
                   features: bool = False) -> Predictions:
    """Softmax probabilities ``(N, K)`` of ``model`` over ``loader`` (batches of ``(B, C, *spatial)`` inputs);
    with ``tta`` (the image pipeline's ``tta_views``; ``True``: radiograph views) the mean over its views.
    ``memory_format`` is the layout the inputs are given in (the model's, see :mod:`medtl.engine.runtime`).
    ``features``: also keep the pooled features ``(N, F)`` of the first (unaugmented) view, from the same pass;
    ``model`` must then be a :class:`~medtl.models.TransferModel`."""
    views_of = tta_views if tta is True else (tta or None)
    model.to(device)
    if not isinstance(model, torch.fx.GraphModule):  # exported (pt2) graphs are in eval form and refuse .eval()
        model.eval()
    probs, labels, paths, pooled = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        images = to_memory_format(batch["image"].to(device, non_blocking=True).float(), memory_format)  # (B, C, H, W)
        views = views_of(images) if views_of else [images]
        with autocast(device, amp):
            outputs = [model(v, return_features=True) if features else (None, model(v)) for v in views]
            batch_probs = torch.stack([torch.softmax(logits.float(), dim=1) for _, logits in outputs]).mean(0)  # (B, K)
        if features:
            pooled.append(outputs[0][0].float().cpu().numpy())  # (B, F)
        probs.append(batch_probs.cpu().numpy())
        labels.append(np.asarray(batch.get("label", np.full(len(images), -1))))
        paths.extend(batch["path"])
    return Predictions(np.concatenate(probs), np.concatenate(labels).astype(int), paths,
                       np.concatenate(pooled) if features else None)


@dataclass
class TargetStream:
    """Unlabelled target batches drawn alongside the source batches, for an adaptation ``method``."""

    method: AdaptationMethod
    loader: DataLoader

    def __post_init__(self) -> None:
        self._batches = self._endless()

    def _endless(self):  # type: ignore[no-untyped-def]
        passes = 0
        while True:  # re-iterating (not itertools.cycle) draws fresh augmentations and shuffles each pass
            Runtime.set_epoch(self.loader, passes)
            yield from self.loader
            passes += 1

    def next_images(self, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        images = next(self._batches)["image"].to(device, non_blocking=True).float()  # (B_t, C, H, W)
        return to_memory_format(images, memory_format)


class HeadOnly(nn.Module):
    """The head of a frozen encoder, trained on its cached pooled features ``(B, F)`` -> ``(B, K)``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.head.parameters()), "lr": lr, "name": "head"}]


class FeatureSet(torch.utils.data.Dataset):
    """Cached features as dataset items ``{"image": (F,), "label": int, "path": str}``."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray, paths: list[str]) -> None:
        self.features, self.labels, self.paths = features, labels, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.features[index], "label": int(self.labels[index]), "path": self.paths[index]}

    @staticmethod
    def interleaved(parts: list[FeatureSet]) -> FeatureSet:
        """The features of :meth:`Runtime.shard`'s shards, in the loader's order."""
        return FeatureSet(interleave([p.features for p in parts]), interleave([p.labels for p in parts]),
                          interleave([p.paths for p in parts]))


@torch.no_grad()
def encode_features(model: TransferModel, loader: DataLoader, device: torch.device, progress: bool = True,
                    desc: str = "encoding", bfloat16: bool = False,
                    memory_format: torch.memory_format = torch.contiguous_format) -> FeatureSet:
    """Pooled encoder features of every item: images ``(B, C, H, W)`` -> features ``(N, F)`` float32 on the CPU,
    computed in bfloat16 autocast when ``bfloat16`` (see :func:`medtl.engine.runtime.native_bfloat16`)."""
    model.to(device).eval()
    features, labels, paths = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        images = to_memory_format(batch["image"].to(device).float(), memory_format)  # (B, C, H, W)
        with autocast(device, bfloat16):
            features.append(model.encoder.forward_features(images).float().cpu())  # (B, F)
        labels.append(np.asarray(batch["label"]))
        paths.extend(batch["path"])
    return FeatureSet(torch.cat(features), np.concatenate(labels), paths)


def validation_loss(preds: Predictions) -> float:
    """Mean cross-entropy of ``preds.probs`` ``(N, K)`` at the labels ``(N,)`` (unlabelled rows, -1, left out)."""
    known = preds.labels >= 0
    if not known.any():
        return float("nan")
    chosen = preds.probs[known, preds.labels[known]]  # (N_known,)
    return float(-np.log(np.clip(chosen, 1e-7, 1.0)).mean())


class Trainer:
    """Fits a :class:`TransferModel` and predicts with it.

    Args:
        optimizer: partial optimiser taking parameter groups (Hydra ``_partial_: true``).
        lr: head learning rate; the encoder's is scaled by the model's ``encoder_lr_mult``.
        early_stopping_patience: epochs without a better monitored score before stopping.
        max_steps_per_epoch: cap on training batches per epoch (quick runs and tests).
        features: for a frozen encoder, ``{cache, epochs, patience, batch_size, dtype}``: train the head on
            features computed once instead of running the encoder every epoch; ``dtype`` ``auto`` computes them in
            bfloat16 where the machine does so natively (:func:`~medtl.engine.runtime.native_bfloat16`).
        memory_format: ``auto`` (channels-last for 2D convolutional models), ``channels_last`` or ``contiguous``.
        linear_probe_first: a trainable encoder: train the head on frozen features first (the ``features``
            settings), then fine-tune everything from that head (LP-FT, Kumar et al. 2022).
        ema_decay: keep an exponential moving average of the weights (BatchNorm statistics too), updated every
            step; it is what validation scores and what the run keeps. ``None``: off. ``ema_warmup``: normalise the
            average so the first steps do not weigh ``decay ** n`` (:mod:`medtl.engine.averaging`; short runs).
        interpolate_probe: with ``linear_probe_first``, the run keeps ``probe + a * (finetuned - probe)`` of every
            weight and BatchNorm statistic (WiSE-FT, Wortsman et al. 2022): 1 is the fine-tuned model, 0 the
            probe's; ``None``: off.
        mixing: ``mixup`` or ``cutmix``: every step that trains on images mixes each image with another of its batch
            and the targets alike (:mod:`medtl.engine.mixing`, MONAI's transforms); needs plain cross-entropy
            (``objective=erm``, no adaptation loss). ``None``: off. ``mixing_alpha``: ``Beta(alpha, alpha)`` weights.
        checkpoint_dir: where each run gets its own folder (``<checkpoint_dir>/<run id>/``) with ``last.pt``
            (the whole :class:`TrainingState`, written after every epoch) and ``best.pt``.
        keep_checkpoints: folders of finished runs kept (the most recent); older ones are deleted.
        resume: a run folder or MLflow run id to continue (read by ``medtl.train``, not here).
        distributed: one of the processes ``torchrun`` started (``trainer=ddp``): train on this rank's shard with
            gradients averaged over the ranks, predict shards and gather them (:mod:`medtl.engine.distributed`).
    """

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer], lr: float = 1e-3, max_epochs: int = 15,
                 warmup_epochs: float = 1.0, min_lr_factor: float = 0.01, early_stopping_patience: int = 5,
                 grad_clip_norm: float | None = 1.0, device: str = "auto", amp: bool | str = "auto",
                 num_threads: int | None = None, max_steps_per_epoch: int | None = None,
                 progress: bool = True, features: dict | None = None, checkpoint_dir: str = "outputs/checkpoints",
                 keep_checkpoints: int = 3, resume: str | None = None, memory_format: str = "auto",
                 linear_probe_first: bool = False, ema_decay: float | None = None, ema_warmup: bool = False,
                 interpolate_probe: float | None = None, distributed: bool = False, mixing: str | None = None,
                 mixing_alpha: float = 0.4) -> None:
        self.optimizer_factory, self.lr, self.max_epochs = optimizer, lr, max_epochs
        self.warmup_epochs, self.min_lr_factor = warmup_epochs, min_lr_factor
        self.patience, self.grad_clip_norm = early_stopping_patience, grad_clip_norm
        self.runtime = Runtime.from_environment(device, distributed)
        self.device = self.runtime.device
        self.amp = self.device.type == "cuda" if amp == "auto" else bool(amp)
        self.max_steps_per_epoch, self.progress = max_steps_per_epoch, progress and self.runtime.is_main
        self.features = dict(features or {})
        self.checkpoint_dir, self.keep_checkpoints, self.resume = checkpoint_dir, keep_checkpoints, resume
        self.memory_format, self.linear_probe_first = memory_format, linear_probe_first
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise MedtlError(f"trainer.ema_decay={ema_decay} must be in (0, 1) (0.99: about the last 100 steps), "
                             "or null for no weight averaging")
        if ema_warmup and ema_decay is None:
            raise MedtlError("trainer.ema_warmup=true needs trainer.ema_decay (e.g. 0.99): there is no average to "
                             "warm up")
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        if interpolate_probe is not None and not (linear_probe_first and 0.0 <= interpolate_probe <= 1.0):
            raise MedtlError(f"trainer.interpolate_probe={interpolate_probe} needs trainer.linear_probe_first=true and a "
                             "value in [0, 1] (1: the fine-tuned weights, 0: the probe's), or null for none")
        self.interpolate_probe = interpolate_probe
        self.mixing, self.mixing_alpha = mixing, mixing_alpha
        if mixing is not None:
            BatchMixing(mixing, mixing_alpha, seed=0)  # a wrong kind or alpha fails here, not after the probe
        self.run_folder: RunFolder | None = None
        if num_threads:
            torch.set_num_threads(int(num_threads))

    def fit(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
            score: Callable[[Predictions], dict[str, float]], monitor: str = "auroc",
            on_epoch_end: EpochCallback | None = None, adaptation: AdaptationMethod | None = None,
            target_loader: DataLoader | None = None, resume: TrainingState | None = None,
            objective: SourceObjective | None = None) -> FitResult:
        """Train; after each epoch compute ``score(val predictions)`` and keep the best ``monitor`` value.

        A frozen encoder (``linear_probe``) with ``features.cache`` is run once over both loaders and
        its head trained on the cached features; ``train_loader`` should then be deterministic. An
        ``adaptation`` method that needs target data draws a batch of ``target_loader`` per step and
        adds its loss on the pooled features and logits of both batches. ``objective`` (bound to the training
        images' collections) is the task loss of the encoder's training; cross-entropy when ``None``, and always
        for a head on cached features. With ``resume`` (a state that :attr:`run_folder`'s ``last.pt`` held)
        training continues after its last completed epoch.
        """
        start = time.perf_counter()
        target = self._target_stream(model, adaptation, target_loader)
        objective = self._check_objective(model, adaptation, objective)
        with in_memory_format(model.to(self.device), memory_format_for(model, self.memory_format)):
            if self.trains_on_features(model, adaptation):
                best = self._fit_head_on_features(model, train_loader, val_loader, score, monitor, on_epoch_end,
                                                  resume)
            else:
                anchor = self._probe_first(model, train_loader, val_loader, score, monitor, on_epoch_end, resume)
                shard = self.runtime.train_loader(train_loader, seed=torch.initial_seed() % 2**31)
                best = self._fit_loop(model, shard, val_loader, score, monitor, on_epoch_end, self.max_epochs,
                                      self.patience, target=target, resume=resume, anchor=anchor, data_parallel=True,
                                      objective=objective)
                if anchor and self.interpolate_probe is not None:
                    best = self._interpolate(model, anchor, best)
        best.seconds = time.perf_counter() - start
        return best

    def trains_on_features(self, model: TransferModel, adaptation: AdaptationMethod | None = None) -> bool:
        """Whether :meth:`fit` will train ``model``'s head on cached features (then skip augmentation)."""
        needs_target = adaptation is not None and adaptation.needs_target
        return bool(self.features.get("cache", False)) and not model.strategy.train_encoder and not needs_target

    def _check_objective(self, model: TransferModel, adaptation: AdaptationMethod | None,
                         objective: SourceObjective | None) -> SourceObjective | None:
        """``objective`` as given (on the device when it acts on collections; ``None``: plain cross-entropy); one
        line when it cannot act on this run (a frozen encoder)."""
        if objective is None or not objective.uses_collections:
            return objective
        name = getattr(objective, "objective_name", type(objective).__name__)
        if self.trains_on_features(model, adaptation) or not model.strategy.train_encoder:
            raise MedtlError(f"objective={name} changes what the encoder learns, which model.strategy="
                             f"{model.strategy.name} freezes; use model.strategy=finetune (or objective=erm)")
        return objective.to(self.device)

    def _target_stream(self, model: TransferModel, adaptation: AdaptationMethod | None,
                       target_loader: DataLoader | None) -> TargetStream | None:
        if adaptation is None or not adaptation.needs_target:
            return None
        name = getattr(adaptation, "method_name", type(adaptation).__name__)
        if not model.strategy.train_encoder:
            raise MedtlError(f"adaptation={name} adapts the encoder, which model.strategy={model.strategy.name} "
                             "freezes; use model.strategy=finetune")
        if target_loader is None:
            raise MedtlError(f"adaptation={name} needs target images; set data.target (or use an *_da experiment)")
        return TargetStream(adaptation, self.runtime.train_loader(target_loader, seed=torch.initial_seed() % 2**31))

    def _fit_head_on_features(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
                              score: Callable[[Predictions], dict[str, float]], monitor: str,
                              on_epoch_end: EpochCallback | None, resume: TrainingState | None) -> FitResult:
        best = self._fit_head(model, train_loader, val_loader, score, monitor, on_epoch_end, resume)
        best.best_state = copy.deepcopy(model.state_dict())  # encoder + the best head
        self._save(RunFolder.BEST, best.best_state)
        return best

    def _fit_head(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
                  score: Callable[[Predictions], dict[str, float]], monitor: str, on_epoch_end: EpochCallback | None,
                  resume: TrainingState | None = None, save: bool = True) -> FitResult:
        """Encode both loaders once with the encoder as it is (eval mode) and train ``model``'s head on the features."""
        train_set = self._encode(model, train_loader, "encoding train")
        val_set = self._encode(model, val_loader, "encoding val")
        batch_size = int(self.features.get("batch_size", 256))
        return self._fit_loop(HeadOnly(model.encoder.head), DataLoader(train_set, batch_size=batch_size, shuffle=True),
                              DataLoader(val_set, batch_size=batch_size), score, monitor, on_epoch_end,
                              int(self.features.get("epochs", 100)), int(self.features.get("patience", 15)),
                              save_best=False, resume=resume, save=save)

    def _probe_first(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
                     score: Callable[[Predictions], dict[str, float]], monitor: str,
                     on_epoch_end: EpochCallback | None, resume: TrainingState | None) -> dict[str, torch.Tensor]:
        """With ``linear_probe_first`` on a pretrained encoder that trains: the probe step; returns its weights when
        ``interpolate_probe`` needs them as the anchor (a resumed run's come from its state), else ``{}``."""
        if not (self.linear_probe_first and model.strategy.train_encoder and model.strategy.pretrained):
            return {}  # a probe on random features (scratch) would teach the head nothing
        if resume is not None:
            return resume.anchor
        self._probe_head_first(model, train_loader, val_loader, score, monitor, on_epoch_end)
        if self.interpolate_probe is None:
            return {}  # no anchor to keep in every checkpoint
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _interpolate(self, model: TransferModel, anchor: dict[str, torch.Tensor], best: FitResult) -> FitResult:
        """WiSE-FT: ``model`` and ``best.best_state`` become ``anchor + a * (best - anchor)`` (integer buffers,
        such as BatchNorm's batch count, are the fine-tuned ones)."""
        alpha = float(self.interpolate_probe)
        mixed = {k: anchor[k].to(v) + alpha * (v - anchor[k].to(v)) if v.is_floating_point() else v
                 for k, v in best.best_state.items()}
        model.load_state_dict(mixed)
        best.best_state = copy.deepcopy(model.state_dict())
        self._save(RunFolder.BEST, best.best_state)
        log.info("kept the probe's weights + %.2f x (fine-tuned - probe's) (trainer.interpolate_probe)", alpha)
        return best

    def _probe_head_first(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
                          score: Callable[[Predictions], dict[str, float]], monitor: str,
                          on_epoch_end: EpochCallback | None) -> None:
        """LP-FT's first step: the head trained on frozen features (one pass of ``train_loader``, augmented as it
        is), logged as ``probe/*``; no checkpoint (a kill here restarts the run from the start)."""
        log_probe = (lambda metrics, epoch: on_epoch_end({f"probe/{k}": v for k, v in metrics.items()}, epoch)) \
            if on_epoch_end else None
        probe = self._fit_head(model, train_loader, val_loader, score, monitor, log_probe, save=False)
        log.info("linear probe first: head trained %d epochs on frozen features, val/%s=%.4f; fine-tuning from it",
                 len(probe.history), monitor, probe.best_score)

    def encode(self, model: TransferModel, loader: DataLoader, desc: str = "encoding") -> FeatureSet:
        """Pooled encoder features ``(N, F)`` of every item of ``loader``, in order (each rank encodes a shard)."""
        with in_memory_format(model.to(self.device), memory_format_for(model, self.memory_format)):
            return self._encode(model, loader, desc)

    def _encode(self, model: TransferModel, loader: DataLoader, desc: str) -> FeatureSet:
        """:func:`encode_features` of every item of ``loader``, each rank encoding its shard."""
        bfloat16, layout = self._features_in_bfloat16(), current_memory_format(model)
        part = encode_features(model, self.runtime.shard(loader), self.device, self.progress, desc, bfloat16, layout)
        return self.runtime.gather(part, FeatureSet.interleaved)

    def _features_in_bfloat16(self) -> bool:
        dtype = str(self.features.get("dtype", "auto"))
        if dtype not in ("auto", "float32", "bfloat16"):
            raise MedtlError(f"trainer.features.dtype='{dtype}' is unknown; use auto, float32 or bfloat16")
        return dtype == "bfloat16" or (dtype == "auto" and native_bfloat16(self.device))

    def _fit_loop(self, model: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
                  score: Callable[[Predictions], dict[str, float]], monitor: str, on_epoch_end: EpochCallback | None,
                  max_epochs: int, patience: int, save_best: bool = True,
                  target: TargetStream | None = None, resume: TrainingState | None = None, save: bool = True,
                  anchor: dict[str, torch.Tensor] | None = None, data_parallel: bool = False,
                  objective: SourceObjective | None = None) -> FitResult:
        """Epochs of :meth:`_train_epoch` and validation, with early stopping and checkpoints. ``data_parallel``:
        ``train_loader`` is this rank's shard and ``model`` trains in the runtime's wrapper (a head on features
        that every rank holds whole trains alike everywhere, unwrapped)."""
        model.to(self.device)
        optimizer, scheduler = self._optimiser(model, train_loader, max_epochs, target, objective)
        transforms = random_transforms([getattr(getattr(train_loader, "dataset", None), "transform", None),
                                        getattr(train_loader, "collate_fn", None)])
        averaged = self._averaged(model) if save_best else None  # the encoder trains: weight averaging applies
        state = resume or TrainingState(anchor=dict(anchor or {}))
        if resume is not None:
            self._restore(state, model, optimizer, scheduler, target, transforms, averaged, objective)
        for epoch in range(state.epoch, max_epochs if not state.done else state.epoch):
            if hasattr(model, "on_epoch_start"):
                model.on_epoch_start(epoch)
            self.runtime.set_epoch(train_loader, epoch)
            metrics = self._train_epoch(model, train_loader, optimizer, scheduler, epoch, max_epochs, target, averaged,
                                        data_parallel, objective)
            scored = averaged.module if averaged is not None else model
            self.runtime.share_buffers(scored)  # every rank scores its shard with rank 0's BatchNorm statistics
            val = self.predict(scored, val_loader)
            metrics.update({f"val/{k}": v for k, v in score(val).items()})
            metrics["val/loss"] = validation_loss(val)
            log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if state.record(epoch, metrics, metrics[f"val/{monitor}"], scored, patience, metrics["val/loss"]) \
                    and save_best:
                self._save(RunFolder.BEST, state.best_state)
            state.model, state.optimizer, state.scheduler = model.state_dict(), optimizer.state_dict(), scheduler.state_dict()
            state.adaptation = target.method.state_dict() if target is not None else {}
            state.objective = objective.state_dict() if objective is not None else {}
            state.averaged = averaged.state_dict() if averaged is not None else {}
            state.rng = TrainingState.capture_rng(transforms)
            if save:
                self._save(RunFolder.LAST, state.state_dict())  # before the metrics are logged: see MlflowTracker.resume
            if on_epoch_end:
                on_epoch_end(metrics, epoch)
            if state.done:
                log.info("early stopping: no better val/%s for %d epochs", monitor, patience)
                break
        model.load_state_dict(state.best_state)
        return FitResult(state.best_epoch, state.best_score, state.best_state, state.history)

    def _averaged(self, model: nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
        """An exponential moving average of ``model``'s weights and buffers (``ema_decay``), or ``None``."""
        if self.ema_decay is None:
            return None
        return weight_average(model, self.ema_decay, self.ema_warmup)

    def _optimiser(self, model: nn.Module, train_loader: DataLoader, max_epochs: int,
                   target: TargetStream | None, objective: SourceObjective | None = None,
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        groups = model.param_groups(self.lr)
        if target is not None:
            target.method.to(self.device)
            groups += target.method.param_groups(self.lr)
        if objective is not None:
            groups += objective.to(self.device).param_groups(self.lr)
        optimizer = self.optimizer_factory(groups)
        steps = self._steps_per_epoch(train_loader)
        scheduler = warmup_cosine_scheduler(optimizer, round(self.warmup_epochs * steps), max_epochs * steps,
                                            self.min_lr_factor)
        return optimizer, scheduler

    @staticmethod
    def _restore(state: TrainingState, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, target: TargetStream | None,
                 transforms: list, averaged: torch.optim.swa_utils.AveragedModel | None = None,
                 objective: SourceObjective | None = None) -> None:
        """Put a saved :class:`TrainingState` back: weights (and their average), optimiser, schedule, adaptation
        method, objective, generators."""
        if hasattr(model, "on_epoch_start"):  # gradual unfreezing decides which stages the optimiser steps
            model.on_epoch_start(max(state.epoch - 1, 0))
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if target is not None and state.adaptation:
            target.method.load_state_dict(state.adaptation)
        if averaged is not None and state.averaged:
            averaged.load_state_dict(state.averaged)
        if objective is not None and state.objective:
            objective.load_state_dict(state.objective)
        TrainingState.restore_rng(state.rng, transforms)
        log.info("resuming after epoch %d (best so far: epoch %d, %.4f)", state.epoch - 1, state.best_epoch,
                 state.best_score)

    def predict(self, model: nn.Module, loader: DataLoader, desc: str = "predict",
                tta: TTAViews | bool | None = None, features: bool = False) -> Predictions:
        """Softmax probabilities ``(N, K)`` for every item of ``loader``, in order (with ``features``, also the
        pooled features ``(N, F)``: see :func:`predict_loader`)."""
        layout = memory_format_for(model, self.memory_format)
        with in_memory_format(model.to(self.device), layout):
            part = predict_loader(model, self.runtime.shard(loader), self.device, amp=self.amp,
                                  progress=self.progress, desc=desc, tta=tta, memory_format=layout,
                                  features=features)
        return self.runtime.gather(part, Predictions.interleaved)

    def _train_epoch(self, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, epoch: int, max_epochs: int,
                     target: TargetStream | None = None,
                     averaged: torch.optim.swa_utils.AveragedModel | None = None,
                     data_parallel: bool = False, objective: SourceObjective | None = None) -> dict[str, float]:
        """One pass over ``loader``; returns ``train/loss``, ``train/images_per_s`` (source images per second, over
        all ranks, data loading included) and, with a target, ``train/adaptation_loss`` and the method's epoch metrics.
        ``model`` is wrapped for data parallelism here, after ``on_epoch_start`` chose what trains."""
        layout = current_memory_format(model)
        wrapped = self.runtime.wrap(model) if data_parallel else model
        wrapped.train()
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        mixing = None if isinstance(model, HeadOnly) else self._batch_mixing(target, objective)  # images only
        losses: list[float] = []
        adaptation_losses: list[float] = []
        steps, images, start = self._steps_per_epoch(loader), 0, time.perf_counter()
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{max_epochs}", disable=not self.progress, unit="batch")
        for step, batch in enumerate(bar):
            if self.max_steps_per_epoch and step >= self.max_steps_per_epoch:
                break
            fraction = (epoch * steps + step) / (max_epochs * steps)
            task_loss, adaptation_loss = self._loss(wrapped, batch, target, fraction, layout, objective, mixing)
            loss = task_loss + adaptation_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if target is not None:
                self.runtime.average_gradients(target.method.parameters())
            if objective is not None:
                self.runtime.average_gradients(objective.parameters())
            if self.grad_clip_norm:
                nn.utils.clip_grad_norm_([p for p in parameters if p.requires_grad], self.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(loss.item())
            adaptation_losses.append(float(torch.as_tensor(adaptation_loss).detach()))
            images += len(batch["label"])
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        seconds = time.perf_counter() - start
        metrics = {"train/loss": self.runtime.mean(float(np.mean(losses))),  # over every rank's images
                   "train/images_per_s": self.runtime.mean(images / seconds) * self.runtime.world_size}
        if objective is not None:
            metrics.update({f"train/{k}": v for k, v in objective.epoch_metrics().items()})
        if target is None:
            return metrics
        method = {f"train/{k}": v for k, v in target.method.epoch_metrics().items()}
        return {**metrics, "train/adaptation_loss": float(np.mean(adaptation_losses)), **method}

    def _batch_mixing(self, target: TargetStream | None, objective: SourceObjective | None) -> BatchMixing | None:
        """A :class:`BatchMixing` for one epoch (seeded from torch's generator), ``None`` without ``mixing``; one
        line when the run's loss is not plain cross-entropy on the source batch, which mixed targets need."""
        if self.mixing is None:
            return None
        if target is not None or (objective is not None and (objective.uses_collections or objective.needs_features)):
            raise MedtlError(f"trainer.mixing={self.mixing} mixes the source batch's labels, which needs plain "
                             "cross-entropy: use it with adaptation=none (or adabn) and objective=erm, or set "
                             "trainer.mixing=null")
        return BatchMixing(self.mixing, self.mixing_alpha, seed=int(torch.randint(2**31 - 1, ())))

    def _loss(self, model: nn.Module, batch: dict, target: TargetStream | None, progress: float,
              layout: torch.memory_format, objective: SourceObjective | None = None,
              mixing: BatchMixing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(the objective's loss on the source batch (cross-entropy by default), adaptation loss on source and
        target features)``; ``model`` may be wrapped (:meth:`Runtime.wrap`), so it is only called, never looked
        into. With ``mixing``, cross-entropy against the mixed targets (mixed on the CPU, before the transfer)."""
        if mixing is not None:
            return self._mixed_loss(model, batch, layout, mixing), torch.zeros((), device=self.device)
        images = to_memory_format(batch["image"].to(self.device, non_blocking=True).float(), layout)  # (B, C, H, W)
        labels = torch.as_tensor(batch["label"], device=self.device)  # (B,)
        plain = objective is None or not (objective.uses_collections or objective.needs_features)
        with autocast(self.device, self.amp):
            if target is None and plain:
                return nn.functional.cross_entropy(model(images).float(), labels), images.new_zeros(())
            both = images if target is None else torch.cat([images, target.next_images(self.device, layout)])
            features, logits = model(both, return_features=True)  # (B [+ B_t], F), (B [+ B_t], K)
            logits, n = logits.float(), len(images)
            if plain:
                task = nn.functional.cross_entropy(logits[:n], labels)
            else:
                collections = objective.collections(batch["path"], self.device)  # (B,)
                task = objective.loss(SourceBatch(features[:n], logits[:n], labels, collections, progress))
            if target is None:
                return task, images.new_zeros(())
            domains = DomainBatch(features[:n], logits[:n], features[n:], logits[n:], progress)
            return task, target.method.loss(domains).float()

    def _mixed_loss(self, model: nn.Module, batch: dict, layout: torch.memory_format,
                    mixing: BatchMixing) -> torch.Tensor:
        """Cross-entropy of the mixed images' logits ``(B, K)`` against the mixed targets ``(B, K)``."""
        mixed = mixing.images(torch.as_tensor(batch["image"]).float())  # (B, C, H, W[, D]), on the CPU
        images = to_memory_format(mixed.to(self.device, non_blocking=True), layout)
        with autocast(self.device, self.amp):
            logits = model(images).float()
        targets = mixing.targets(torch.as_tensor(batch["label"]), logits.shape[-1]).to(self.device)
        return nn.functional.cross_entropy(logits, targets)

    def _steps_per_epoch(self, loader: DataLoader) -> int:
        return min(len(loader), self.max_steps_per_epoch or len(loader))

    def _save(self, name: str, state: dict) -> None:
        if self.run_folder is not None:
            self.run_folder.save(name, state)
