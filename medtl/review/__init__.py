"""The review kit: what a radiologist needs to decide whether to trust a run, and the way back into training.

``load_run`` reads a run (config, metrics, prediction tables, model card, model); ``review_order`` and
``case_gallery`` show false negatives, false positives and the least confident cases with Grad-CAM overlays;
``clinical_numbers`` gives AUROC with its CI, operating points on data that did not choose them, calibration and
subgroups; ``review_form_html`` collects verdicts into a review CSV that ``data.reviews=<csv>`` takes back.
``python -m medtl.review run=<id> out=<dir>`` renders all of it as a self-contained HTML report.
The notebooks in ``notebooks/`` only call these.
"""
from __future__ import annotations

from medtl.review.cases import case_gallery, review_order
from medtl.review.clinical import clinical_numbers, reliability_figure, roc_figure_with_ci
from medtl.review.form import review_form_html, write_review_template
from medtl.review.run import ReviewRun, load_run

__all__ = ["ReviewRun", "load_run", "review_order", "case_gallery", "clinical_numbers", "reliability_figure",
           "roc_figure_with_ci", "review_form_html", "write_review_template"]
