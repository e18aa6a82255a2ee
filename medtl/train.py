"""Train a transfer-learning classifier: ``python -m medtl.train +experiment=chest_xray [overrides]``.

The config is checked against its schemas (:mod:`medtl.config_schema`) before torch, MONAI or MLflow are
imported, so a typo stops the run within a second or two; then :func:`medtl.training.run_training` wires
the pieces. ``trainer.resume=<run folder | MLflow run id>`` continues a run that was killed.
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from medtl import CONFIG_MODULE
from medtl.config_schema import check_overrides, validate_config
from medtl.errors import exit_on_user_error

__all__ = ["train", "main"]

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
    """Hydra entry point; returns validation AUROC so ``-m`` sweepers can optimise it."""
    return train(cfg)["auroc"]


def main() -> None:
    """``python -m medtl.train`` / ``medtl-train``: the overrides are composed once first (one-line errors with a
    suggestion for a mistyped key), then Hydra runs the job or the sweep."""
    if not {"-m", "--multirun", "--help", "-h", "--hydra-help", "--cfg", "-c", "--info"} & set(sys.argv[1:]):
        exit_on_user_error(check_overrides)(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
