"""Image pipelines, one per kind of input (``data.pipeline``: ``conf/data/pipeline/<kind>.yaml``)."""
from __future__ import annotations

from medtl.data.pipelines.base import ImagePipeline, list_pipelines, pipeline_from_card, register_pipeline
from medtl.data.pipelines.radiograph import RadiographPipeline
from medtl.data.pipelines.volume import VolumePipeline

__all__ = ["ImagePipeline", "RadiographPipeline", "VolumePipeline", "register_pipeline", "pipeline_from_card",
           "list_pipelines"]
