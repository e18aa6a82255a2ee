"""``python -m medtl.review run=<run id | latest | best> out=<dir>`` (also ``medtl-review``): an HTML review of a
training run (galleries with Grad-CAM, the clinical numbers, a review form), written to ``out`` and logged to the
run. With no arguments: the most recent finished run of ``$MLFLOW_TRACKING_URI`` (``sqlite:///mlflow.db``)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medtl import CONFIG_DIR
from medtl.errors import exit_on_user_error

__all__ = ["main"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR / "review"), config_name="review")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from medtl.review.report import write_report

    html = write_report(run=str(cfg.run), out=str(cfg.out), tracking_uri=str(cfg.tracking_uri),
                        experiment=cfg.experiment, metric=str(cfg.metric), cases_per_group=int(cfg.cases_per_group),
                        log_to_run=bool(cfg.log_to_run), timeout_s=int(cfg.timeout_s))
    print(f"review: {html.resolve()}  (open it in a browser; the review form's CSV goes to data_manifests/reviews/)")


if __name__ == "__main__":
    main()
