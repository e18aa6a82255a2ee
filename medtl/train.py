"""Train a transfer-learning classifier: ``python -m medtl.train +experiment=chest_xray [overrides]``.

The config is checked against its schemas (:mod:`medtl.config_schema`) before torch, MONAI or MLflow are
imported, so a typo stops the run within a second or two; then :func:`medtl.training.run_training` wires
the pieces. ``trainer.resume=<run folder | MLflow run id>`` continues a run that was killed.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medtl import CONFIG_MODULE
from medtl.config_schema import check_overrides, validate_config
from medtl.errors import MedtlError, exit_on_user_error
from medtl.tracking.params import override_keys

__all__ = ["train", "main", "readable_run_name", "optimized_value"]

# Hydra's output folder carries the process id, so two runs started in the same microsecond never share one.
OmegaConf.register_new_resolver("medtl.pid", os.getpid, replace=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Check ``cfg``, then train (see :func:`medtl.training.run_training`); return the final metrics."""
    validate_config(cfg)
    from medtl.training import run_training  # torch, MONAI, MLflow: only once the config is known to be sound

    return run_training(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="config")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the run's ``optimized_metric`` (for example ``val/best_auroc``, or
    ``target/auroc`` for domain adaptation) so ``-m`` sweepers such as Optuna can optimise it."""
    overrides = list(HydraConfig.get().overrides.task)
    if not any(o.startswith("tracking.run_name=") for o in overrides):
        cfg.tracking.run_name = readable_run_name(str(cfg.experiment_name), str(cfg.model.strategy),
                                                  str(cfg.adaptation.get("method", "none")), overrides)
    cfg.tracking.extra_params = [*cfg.tracking.get("extra_params", []), *override_keys(overrides)]
    return optimized_value(train(cfg), str(cfg.get("optimized_metric", "val/best_auroc")))


def optimized_value(metrics: dict[str, float], name: str) -> float:
    """``metrics[name]``; a name the run did not produce is an error naming the ones it did."""
    if name not in metrics:
        raise MedtlError(f"optimized_metric={name} is not a metric of this run; choose one of {sorted(metrics)}")
    return float(metrics[name])


def readable_run_name(experiment: str, strategy: str, adaptation: str, overrides: list[str]) -> str:
    """``chest_xray finetune max_epochs=5 root=chest_xray_kermany``: the experiment, its strategy (and adaptation),
    then what this run's command line changed (the last part of each key and of paths; an encoder by its name)."""
    parts = [strategy] + ([adaptation] if adaptation != "none" else [])
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in ("experiment", "model.strategy", "adaptation", "tracking.uri", "trainer.progress") \
                or key.startswith("hydra."):
            continue
        short_key, short_value = key.rsplit(".", 1)[-1], value.rstrip("/").rsplit("/", 1)[-1]
        parts.append(short_value if short_key == "encoder" else f"{short_key}={short_value}")
    return " ".join([experiment, *parts])[:250]


def main() -> None:
    """``python -m medtl.train`` / ``medtl-train``: the overrides are composed once first (one-line errors with a
    suggestion for a mistyped key), then Hydra runs the job or the sweep."""
    if not {"-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info"} & set(sys.argv[1:]):
        exit_on_user_error(check_overrides)(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
