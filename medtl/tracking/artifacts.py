"""The names of what a run stores in MLflow, in one place: the tracker writes them, ``medtl.predict`` and the
review kit (:mod:`medtl.review`) read them. No other module spells an artefact's name."""
from __future__ import annotations

__all__ = ["CONFIG", "DATA_CHECK", "SKIPPED_FILES", "MODEL", "PLOTS", "REVIEW", "PREDICTIONS", "predictions_file"]

CONFIG = "config.yaml"              # the whole resolved config
DATA_CHECK = "data_check.json"      # medtl.data.check's report (paths pseudonymised)
SKIPPED_FILES = "skipped_files.csv"  # every input file not trained on, with the reason (paths pseudonymised)
MODEL = "model"                     # the logged MLflow model (pt2 graph + tensors-only state dict + model card)
PLOTS = "plots"                     # figures: plots/<name>.png
REVIEW = "review"                   # medtl.review's HTML report and executed notebook

# Prediction tables, one per evaluated set: ``case, label, score, pred, patient, split[, domain | site]`` (binary) or
# ``case, label, pred, score_<class>..., patient, split[, domain | site]``; ``case`` is the image's path relative to its data root with
# patient ids replaced by pseudonyms (medtl.data.pseudonym), ``patient`` the patient's pseudonym.
PREDICTIONS = {"val": "val_predictions.csv", "test": "test_predictions.csv", "target": "target_predictions.csv"}


def predictions_file(split: str) -> str:
    """``val_predictions.csv`` for ``val``; ``test`` and ``target`` likewise; ``external_<name>_predictions.csv`` for
    an external test set (``evaluation.external``)."""
    if split.startswith("external_"):
        return f"{split}_predictions.csv"
    if split not in PREDICTIONS:
        raise KeyError(f"no predictions artefact for split '{split}'; known: {sorted(PREDICTIONS)}")
    return PREDICTIONS[split]
