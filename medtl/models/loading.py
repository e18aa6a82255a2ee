"""Loading a logged model without running anyone's code: the ``torch.export`` graph or a tensors-only
state dict, never a pickle.

An MLflow model folder can hold more than medtl wrote: MLflow itself loads ``data/model.pth`` (a pickle)
before ``data/model.pt2`` when both are present, and a pickle runs whatever code its author planted. So
the folder is checked first: a file that could carry a pickle is refused by name, MLflow's own switch
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``) is turned off so it verifies the ``pt2`` archive's records, and
the eager weights are read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from medtl.errors import MedtlError

__all__ = ["STATE_DICT_FILE", "PICKLE_SWITCH", "check_model_folder", "load_exported_model", "load_state_dict"]

STATE_DICT_FILE = "state_dict.pt"  # the eager weights, inside the logged model's extra_files/
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
# File names and suffixes that pickle-based loaders (torch.load, joblib, cloudpickle) read.
PICKLE_SUFFIXES = (".pth", ".pkl", ".pickle", ".joblib", ".cloudpickle", ".pt", ".bin", ".ckpt", ".npy", ".npz")
PICKLE_NAMES = ("pickle_module_info.txt",)
PICKLE_PROTOCOL_MARKERS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))  # PROTO opcode


def check_model_folder(local: Path, ref: str) -> Path:
    """Refuse a model folder with anything but a ``pt2`` graph and medtl's tensors-only state dict.

    Returns the ``data/*.pt2`` archive. Raises :class:`MedtlError` naming the first file that a pickle
    loader would read (by name or by its content's pickle header).
    """
    allowed_tensor_file = local / "extra_files" / STATE_DICT_FILE
    for path in sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink()):
        if path == allowed_tensor_file:
            continue
        if path.is_symlink():
            raise MedtlError(f"model '{ref}' holds a symbolic link {path.relative_to(local)}; medtl refuses "
                             "links in a model folder, copy the real files instead")
        if path.suffix.lower() in PICKLE_SUFFIXES or path.name in PICKLE_NAMES or _starts_like_pickle(path):
            raise MedtlError(f"model '{ref}' holds {path.relative_to(local)}, a file that loading could unpickle "
                             "(running code planted in it); medtl loads only data/*.pt2 and "
                             f"extra_files/{STATE_DICT_FILE}: remove the file or re-log the model with medtl.train")
    archives = sorted((local / "data").glob("*.pt2"))
    if not archives:
        raise MedtlError(f"model '{ref}' is not in MLflow's pt2 format; medtl does not unpickle models, "
                         "re-log it with serialization_format='pt2'")
    return archives[0]


def load_exported_model(local: Path, ref: str) -> torch.nn.Module:
    """The ``torch.export`` graph of a checked model folder, through MLflow with pickle loading switched off."""
    import mlflow

    check_model_folder(local, ref)
    os.environ[PICKLE_SWITCH] = "false"  # MLflow then verifies every record of the pt2 archive is pickle-free
    try:
        return mlflow.pytorch.load_model(str(local))
    except mlflow.exceptions.MlflowException as exc:
        reason = str(exc).splitlines()[0]
        raise MedtlError(f"model '{ref}' was refused: {reason}") from exc


def load_state_dict(path: Path, ref: str) -> dict[str, torch.Tensor]:
    """A tensors-only state dict (``weights_only=True``: no code runs); a file holding more is refused by name."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unsafe or broken file is the user's to fix
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MedtlError(f"model '{ref}': {path.name} is not a tensors-only state dict ({reason[:200]}); "
                         "re-log the model with medtl.train") from exc


def _starts_like_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) in PICKLE_PROTOCOL_MARKERS
