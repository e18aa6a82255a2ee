"""Data: manifests, patient-level splits, DICOM/PNG readers, MONAI transforms, demo data."""
from __future__ import annotations

from medtl.data.datamodule import ImageClassificationData
from medtl.data.domains import DomainAdaptationData
from medtl.data.manifest import manifest_from_tree, read_manifest, write_manifest
from medtl.data.split import assign_validation_split, check_patients_disjoint

__all__ = ["ImageClassificationData", "DomainAdaptationData", "manifest_from_tree", "read_manifest", "write_manifest",
           "assign_validation_split", "check_patients_disjoint"]
