"""Typed schemas of the config groups, checked before anything is read or imported that takes time.

Each ``_target_`` that medtl builds has a dataclass here that lists its keys, their types and, where the
choice is closed, the allowed values. :func:`validate_config` merges every node of a composed config
into its schema with OmegaConf's structured configs, so a typo in a key or a value of the wrong type
stops the run with one line naming the key, in well under two seconds (this module imports no torch,
MONAI or MLflow). A node whose ``_target_`` medtl does not know (your own class) is left to that class.

A test checks each schema against its target's signature, so the two cannot drift apart. Adding a
config key means adding it to the target's ``__init__`` and to its schema here.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from medtl.errors import MedtlError

__all__ = ["SCHEMAS", "validate_config", "validate_predict_config", "check_overrides", "choices"]

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def choices(*allowed: str, default: Any) -> Any:
    """A dataclass field whose value must be one of ``allowed``."""
    return field(default=default, metadata={"choices": allowed})


@dataclass
class IntensitySchema:
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    equalize: bool = False


@dataclass
class AugmentSchema:
    prob: float = 0.8
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    noise_std: float = 0.02
    gamma: float = 0.0
    blur: float = 0.0
    clip_highlights: float = 0.0
    detector_resolution: float = 0.0
    detector_noise: float = 0.0
    acquisition_per_batch: bool = False
    counterfactual_histogram: float = 0.0


@dataclass
class DicomSchema:
    voi: str = choices("auto", "window", "none", default="auto")
    frames: str = choices("first", "all", default="first")


@dataclass
class DataSchema:
    """``medtl.data.ImageClassificationData``."""

    root: Optional[str] = None
    manifest: Optional[str] = None
    demo: Optional[Dict[str, Any]] = None  # the pipeline's demo spec (checked by its dataclass)
    demo_dir: str = "~/.cache/medtl/demo"
    positive_class: Optional[str] = None
    classes: Optional[List[str]] = None
    patient_id_patterns: List[str] = field(default_factory=list)
    val_fraction: float = 0.2
    split_seed: int = 0
    max_images: Optional[int] = None
    train_fraction: float = 1.0
    train_subset_seed: int = 0
    image_size: int = 224
    batch_size: int = 32
    sampling: str = choices("shuffle", "balanced", default="shuffle")
    num_workers: Any = 0  # a count or auto (checked by the data module)
    cache: str = choices("memory", "disk", "none", default="memory")
    cache_dir: str = "~/.cache/medtl/images"
    cache_workers: int = 2
    check: bool = True
    on_error: str = choices("raise", "skip", default="raise")
    max_pixels: int = 2**28
    allow_outside_root: bool = False
    reviews: Optional[str] = None
    dicom: DicomSchema = field(default_factory=DicomSchema)
    intensity: IntensitySchema = field(default_factory=IntensitySchema)
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    label_map: Optional[Dict[str, str]] = None
    pipeline: Any = None  # its own _target_ (conf/data/pipeline/), checked against PIPELINE_SCHEMAS


@dataclass
class TargetSimulationSchema:
    # Radiograph shifts (medtl.data.shift.SEVERITIES), then volume sites (medtl.data.volume_shift.VOLUME_SITES);
    # the image pipeline refuses one of the other kind in one line.
    severity: str = choices("none", "mild", "strong", "thick_slices_dicom", "thin_3d_zscore", "oblique_uint8",
                            "raw12_ras", default="strong")
    fraction: float = 0.3
    seed: int = 0


@dataclass
class DomainDataSchema(DataSchema):
    """``medtl.data.DomainAdaptationData``."""

    source: Optional[str] = None
    target: Optional[str] = None
    target_simulation: TargetSimulationSchema = field(default_factory=TargetSimulationSchema)
    target_eval_fraction: float = 0.5
    sites_dir: str = "~/.cache/medtl/sites"


@dataclass
class SlicesSchema:
    axis: int = 2
    count: int = 16
    pooling: str = choices("mean", "attention", default="mean")
    slab: bool = False


@dataclass
class ModelSchema:
    """``medtl.models.build_classifier`` (the encoder name is checked against the registry at build time)."""

    encoder: str = "efficientnet_lite0"
    strategy: str = choices("linear_probe", "finetune", "scratch", default="linear_probe")
    weights: Optional[str] = "imagenet"
    weights_path: Optional[str] = None
    in_channels: int = 1
    grey_input: str = choices("sum", "repeat", default="sum")
    image_size: int = 224
    dropout: float = 0.2
    encoder_lr_mult: float = 0.1
    bn: str = choices("train", "freeze", default="train")
    layer_decay: float = 1.0
    unfreeze_every: Optional[int] = None
    frozen_stages: int = 0
    input_shape: Optional[List[int]] = None  # set by training from the data pipeline
    slices: SlicesSchema = field(default_factory=SlicesSchema)


@dataclass
class FeatureCacheSchema:
    cache: bool = True
    epochs: int = 100
    patience: int = 15
    batch_size: int = 256
    dtype: str = choices("auto", "float32", "bfloat16", default="auto")


@dataclass
class TrainerSchema:
    """``medtl.engine.Trainer``."""

    optimizer: Any = None
    lr: float = 1e-3
    max_epochs: int = 15
    warmup_epochs: float = 1.0
    min_lr_factor: float = 0.01
    early_stopping_patience: int = 5
    grad_clip_norm: Optional[float] = 1.0
    device: str = "auto"
    amp: Any = "auto"
    num_threads: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    progress: bool = True
    features: FeatureCacheSchema = field(default_factory=FeatureCacheSchema)
    checkpoint_dir: str = "outputs/checkpoints"
    keep_checkpoints: int = 3
    resume: Optional[str] = None
    memory_format: str = choices("auto", "channels_last", "contiguous", default="auto")
    linear_probe_first: bool = False
    ema_decay: Optional[float] = None
    ema_warmup: bool = False
    interpolate_probe: Optional[float] = None
    distributed: bool = False
    mixing: Optional[str] = None
    mixing_alpha: float = 0.4


@dataclass
class SoupTrainerSchema(TrainerSchema):
    """``medtl.engine.soup.SoupTrainer`` (``trainer=soup``)."""

    ingredients: List[str] = field(default_factory=list)
    tracking_uri: str = ""
    batchnorm: str = choices("recompute", "average", default="recompute")


@dataclass
class TrackingSchema:
    """``medtl.tracking.MlflowTracker``."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "medtl"
    run_name: str = "medtl"
    log_model: bool = True
    tags: Dict[str, str] = field(default_factory=dict)
    system_metrics: bool = True
    register_model: Optional[str] = None
    model_alias: str = "candidate"
    extra_params: List[str] = field(default_factory=list)


@dataclass
class AdaptationSchema:
    """``medtl.adaptation.build_adaptation`` (the method name is checked against the registry)."""

    method: str = "none"
    weight: float = 1.0
    entropy_weight: float = 0.0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveSchema:
    """``medtl.objectives.build_objective`` (the method name is checked against the registry)."""

    method: str = "erm"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationSchema:
    """``medtl.engine.evaluation.Evaluator``."""

    threshold: str = choices("youden", "sensitivity", default="youden")
    target_sensitivity: float = 0.95
    tta: bool = False
    external: Dict[str, str] = field(default_factory=dict)
    external_adabn: bool = False


@dataclass
class PredictSchema:
    """``python -m medtl.predict``'s config."""

    model: str = "???"
    input: str = "???"
    output: str = "???"
    batch_size: int = 32
    num_workers: int = 0
    device: str = "auto"
    tracking_uri: str = "sqlite:///mlflow.db"
    progress: bool = True
    tta: bool = False
    max_pixels: int = 2**28
    adaptation: str = choices("none", "adabn", default="none")


@dataclass
class CropSchema:
    foreground: Optional[float] = None


@dataclass
class RadiographPipelineSchema:
    """``medtl.data.pipelines.RadiographPipeline``."""

    image_size: int = 224
    intensity: IntensitySchema = field(default_factory=IntensitySchema)
    augment: AugmentSchema = field(default_factory=AugmentSchema)
    dicom: DicomSchema = field(default_factory=DicomSchema)
    max_pixels: int = 2**28
    crop: CropSchema = field(default_factory=CropSchema)


@dataclass
class VolumeAugmentSchema:
    prob: float = 0.8
    flip_lr: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    bias_field: float = 0.3
    gamma: float = 0.3
    noise_std: float = 0.02
    thick_slices: float = 0.25
    blur: float = 0.0


@dataclass
class VolumePipelineSchema:
    """``medtl.data.pipelines.VolumePipeline``."""

    spacing: List[float] = field(default_factory=lambda: [3.0, 3.0, 3.0])
    shape: List[int] = field(default_factory=lambda: [64, 64, 56])
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    foreground: float = 0.1
    anti_alias: bool = True
    augment: VolumeAugmentSchema = field(default_factory=VolumeAugmentSchema)
    max_pixels: int = 2**28


#: ``_target_`` -> its schema. Nodes with another target are not checked here.
SCHEMAS: dict[str, type] = {
    "medtl.data.ImageClassificationData": DataSchema,
    "medtl.data.DomainAdaptationData": DomainDataSchema,
    "medtl.models.build_classifier": ModelSchema,
    "medtl.engine.Trainer": TrainerSchema,
    "medtl.engine.soup.SoupTrainer": SoupTrainerSchema,
    "medtl.tracking.MlflowTracker": TrackingSchema,
    "medtl.adaptation.build_adaptation": AdaptationSchema,
    "medtl.objectives.build_objective": ObjectiveSchema,
    "medtl.engine.evaluation.Evaluator": EvaluationSchema,
    "medtl.data.pipelines.RadiographPipeline": RadiographPipelineSchema,
    "medtl.data.pipelines.VolumePipeline": VolumePipelineSchema,
}
NESTED_NODES = ("data.pipeline",)  # nodes with their own _target_ inside a group
ROOT_KEYS = ("data", "model", "adaptation", "objective", "trainer", "tracking", "evaluation", "experiment_name", "seed",
             "optimized_metric", "shortcut_decision", "hydra")


def validate_config(cfg: DictConfig) -> None:
    """Check every known node of ``cfg`` against its schema; raise one :class:`MedtlError` line at the first fault."""
    _check_keys("", dict(cfg), ROOT_KEYS)
    decision = cfg.get("shortcut_decision")
    if decision is not None and not isinstance(decision, str):
        raise MedtlError(f"config key shortcut_decision={decision!r} must be text (why the experiment leaves a flagged "
                         "shortcut alone) or null")
    for group in (*ROOT_KEYS, *NESTED_NODES):
        node = OmegaConf.select(cfg, group)
        if not isinstance(node, DictConfig) or node.get("_target_") not in SCHEMAS:
            continue
        values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in HYDRA_KEYS}
        schema = SCHEMAS[node.get("_target_")]
        _check_keys(f"{group}.", values, [f.name for f in dataclasses.fields(schema)])
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), values)
        except (ValidationError, ConfigKeyError) as exc:
            raise MedtlError(_describe(group, exc, schema)) from None
        except OmegaConfBaseException as exc:
            raise MedtlError(f"config group {group}: {str(exc).splitlines()[0]}") from None
        _check_choices(group, schema, typed)


def validate_predict_config(cfg: DictConfig) -> None:
    """``medtl.predict``'s keys and types, as :func:`validate_config` checks training's."""
    values = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    _check_keys("", values, [f.name for f in dataclasses.fields(PredictSchema)])
    try:
        typed = OmegaConf.merge(OmegaConf.structured(PredictSchema), values)
    except (ValidationError, ConfigKeyError) as exc:
        raise MedtlError(_describe("predict", exc).replace("config key predict.", "config key ")) from None
    _check_choices("", PredictSchema, typed)


def _check_keys(prefix: str, values: dict, known: Any) -> None:
    for key in values:
        if key not in known and not key.startswith("_"):
            close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise MedtlError(f"config key {prefix}{key} is unknown; {hint} (remove it or fix its name)")


def _check_choices(prefix: str, schema: type, node: Any) -> None:
    for spec in dataclasses.fields(schema):
        value = node.get(spec.name)
        allowed, key = spec.metadata.get("choices"), f"{prefix}.{spec.name}" if prefix else spec.name
        if allowed and value not in allowed:
            raise MedtlError(f"config key {key}='{value}' is not allowed; use one of {', '.join(allowed)}")
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            _check_choices(key, OmegaConf.get_type(value), value)


def _describe(group: str, exc: OmegaConfBaseException, schema: type) -> str:
    """OmegaConf's message, as one line naming the full key and the type its schema expects."""
    full_key = str(getattr(exc, "full_key", "") or "")
    key = f"{group}.{full_key}" if full_key else group
    if isinstance(exc, ConfigKeyError):
        return f"config key {key} is unknown; remove it or fix its name"
    message = str(exc).splitlines()[0]
    return f"config key {key}: {message} (expected {_field_type(schema, full_key)}); fix the override or the YAML"


def _field_type(schema: Any, dotted: str) -> str:
    """The declared type of ``dotted`` inside dataclass ``schema``, as text (``int``, ``Optional[float]``)."""
    for name in dotted.split("."):
        candidates = [schema, *typing.get_args(schema)]  # Optional[DemoSchema] -> DemoSchema
        schema = next((c for c in candidates if dataclasses.is_dataclass(c)), None)
        hints = typing.get_type_hints(schema) if schema is not None else {}
        if name not in hints:
            return "another type"
        schema = hints[name]
    return str(getattr(schema, "__name__", schema)).replace("typing.", "")


def check_overrides(overrides: list[str], config_module: str = "medtl.conf") -> None:
    """Compose the command line's overrides once and check them against the schemas, before Hydra starts the
    job: a key Hydra cannot override (a typo, a missing ``+``) is one line with a suggestion instead of Hydra's
    multi-line report. Sweeps (``-m``) are left to Hydra (each job is checked when it starts)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    plain = [o for o in overrides if not o.startswith(("-", "hydra.", "+hydra.", "~hydra."))]
    try:
        with initialize_config_module(config_module=config_module, version_base="1.3"):
            cfg = compose(config_name="config", overrides=plain)
    except (HydraException, OmegaConfBaseException) as exc:
        raise MedtlError(_override_message(exc, plain, config_module)) from None
    validate_config(cfg)


def _override_message(exc: Exception, overrides: list[str], config_module: str) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    failing = next((o for o in overrides if f"'{o.split('=', 1)[0]}'" in lines[0]), None)
    if failing is None or "not in struct" not in f"{exc} {exc.__cause__} {exc.__context__}":
        return f"config override: {'; '.join(lines[:8])}"
    key = failing.split("=", 1)[0].lstrip("+~")
    parent, _, leaf = key.rpartition(".")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module=config_module, version_base="1.3"):
        base = compose(config_name="config", overrides=[o for o in overrides if o != failing])
    node = OmegaConf.select(base, parent) if parent else base
    known = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else f"{parent or 'the root'} has {', '.join(known)}"
    return f"config key {key} does not exist; {hint} (to add a new key on purpose: +{failing})"
