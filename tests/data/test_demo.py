from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from medtl.data.demo import DemoSpec, ensure_demo_chest_xray


def test_demo_is_deterministic_and_cached(tmp_path: Path) -> None:
    spec = DemoSpec(n_patients=6, image_size=48, seed=3)
    first = ensure_demo_chest_xray(tmp_path / "a", spec)
    second = ensure_demo_chest_xray(tmp_path / "b", spec)
    frame = pd.read_csv(first)
    assert frame.equals(pd.read_csv(second))
    for rel in frame["path"]:
        np.testing.assert_array_equal(pydicom.dcmread(first.parent / rel).pixel_array,
                                      pydicom.dcmread(second.parent / rel).pixel_array)
    mtime = first.stat().st_mtime_ns
    assert ensure_demo_chest_xray(tmp_path / "a", spec) == first and first.stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no staging left


def test_demo_files_are_12_bit_dx_with_rescale_and_spacing(demo_manifest: Path) -> None:
    frame = pd.read_csv(demo_manifest)
    assert set(frame["label"]) == {"NORMAL", "PNEUMONIA"}
    assert frame["patient_id"].nunique() < len(frame)  # some patients have two images
    slopes = set()
    for rel in frame["path"]:
        ds = pydicom.dcmread(demo_manifest.parent / rel)
        assert (ds.Modality, ds.BitsStored, ds.BitsAllocated) == ("DX", 12, 16)
        assert ds.pixel_array.max() < 4096 and ds.PixelSpacing
        slopes.add(float(ds.RescaleSlope))
        assert ds.PatientID not in rel  # file names carry no patient id
    assert slopes == {1.0, 2.0}
