"""The volume pipeline: the same input whatever the units, orientation or field of view; shapes; the card."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medtl.data.pipelines import RadiographPipeline, VolumePipeline, pipeline_from_card
from medtl.data.volume_shift import VOLUME_SITES, write_volume_site
from medtl.data.volume_transforms import CropAroundForeground, RandThickSlices
from medtl.errors import MedtlError, find_user_error
from medtl.models.registry import WeightsInfo

WEIGHTS = WeightsInfo("test")


def _head(tmp_path: Path, name: str, data: np.ndarray, affine: np.ndarray) -> str:
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture
def head() -> tuple[np.ndarray, np.ndarray]:
    """A (48, 56, 44) ellipsoid 'head' with an inner structure and noise, 3 mm voxels, RAS."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (48, 56, 44)], indexing="ij")
    r = x ** 2 + (y * 1.1) ** 2 + (z * 1.2 + 0.2) ** 2
    rng = np.random.default_rng(0)
    data = np.where(r < 0.7, 800.0, 0.0) + np.where(r < 0.3, 400.0, 0.0) + 300.0 * (x > 0.3) * (r < 0.7)
    data = data + rng.normal(0, 5, data.shape).clip(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -np.array([48, 56, 44]) * 1.5
    return data.astype(np.float32), affine


def test_raw_uint8_and_zscored_units_give_the_same_input(tmp_path: Path, head: tuple) -> None:
    data, affine = head
    pipeline = VolumePipeline(spacing=(3.0, 3.0, 3.0), shape=(48, 48, 40))
    transform = pipeline.eval_transforms(WEIGHTS)
    raw = (data * 3.7 + 12).round().astype(np.int16)
    uint8 = np.clip(np.round(data / np.percentile(data, 99.9) * 255), 0, 255).astype(np.uint8)
    zscored = (data - data[data > 100].mean()) / data[data > 100].std()
    inputs = [transform({"image": _head(tmp_path, n, v, affine)})["image"]
              for n, v in (("raw", raw), ("uint8", uint8), ("z", zscored.astype(np.float32)))]
    assert tuple(inputs[0].shape) == (1, 48, 48, 40)
    for other in inputs[1:]:
        assert float((other - inputs[0]).abs().mean()) < 0.01


def test_lps_and_ras_files_of_one_head_give_the_same_input(tmp_path: Path, head: tuple) -> None:
    data, affine = head
    lps = nib.Nifti1Image(data, affine).as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LPS")))
    nib.save(lps, str(tmp_path / "lps.nii.gz"))
    transform = VolumePipeline(shape=(40, 40, 32)).eval_transforms(WEIGHTS)
    ras_input = transform({"image": _head(tmp_path, "ras", data, affine)})["image"]
    lps_input = transform({"image": str(tmp_path / "lps.nii.gz")})["image"]
    np.testing.assert_allclose(lps_input.numpy(), ras_input.numpy(), atol=1e-4)
    assert float(ras_input[0, 40 // 2 + 8].mean()) > float(ras_input[0, 40 // 2 - 8].mean())  # x > 0.3 is Right


def test_simulated_sites_keep_the_input_close(tmp_path: Path, head: tuple) -> None:
    data, affine = head
    source = _head(tmp_path, "src", data, affine)
    transform = VolumePipeline(shape=(48, 48, 40)).eval_transforms(WEIGHTS)
    reference = transform({"image": source})["image"]
    frame = pd.DataFrame({"path": [source], "label": ["T1"], "patient_id": ["s1"]})
    for name, site in VOLUME_SITES.items():
        manifest = write_volume_site(frame, tmp_path / name, site, progress=False)
        written = pd.read_csv(manifest)
        path = manifest.parent / written.at[0, "path"]
        assert path.is_dir() == site.dicom
        moved = transform({"image": str(path)})["image"]
        correlation = np.corrcoef(moved.flatten().numpy(), reference.flatten().numpy())[0, 1]
        assert correlation > 0.85, name


def test_train_transforms_augment_and_keep_the_shape(tmp_path: Path, head: tuple) -> None:
    data, affine = head
    pipeline = VolumePipeline(shape=(40, 40, 32))
    transform = pipeline.train_transforms(WEIGHTS)
    transform.set_random_state(0)
    path = _head(tmp_path, "h", data, affine)
    first, second = transform({"image": path})["image"], transform({"image": path})["image"]
    assert first.shape == second.shape == (1, 40, 40, 32) and first.dtype == torch.float32
    assert not torch.allclose(first, second)
    views = pipeline.tta_views(first[None])
    assert len(views) == 2 and torch.equal(views[1], torch.flip(first[None], dims=[2]))


def test_thick_slices_and_crop() -> None:
    volume = torch.arange(4 * 4 * 8, dtype=torch.float32).reshape(1, 4, 4, 8)
    thick = RandThickSlices(prob=1.0, factors=(2,), axes=(2,))(volume)
    assert thick.shape == volume.shape
    np.testing.assert_allclose(thick[0, 0, 0, :2].numpy(), [0.5, 0.5])  # two slices averaged, repeated
    head = torch.zeros(1, 30, 30, 30)
    head[:, 5:15, 10:20, 12:28] = 1.0
    cropped = CropAroundForeground((12, 12, 10))(head)
    assert cropped.shape == (1, 12, 12, 10)
    assert float(cropped[0, :, :, -1].sum()) > 0 and float(cropped[0, :, :, 0].sum()) > 0  # vertex at the top
    assert float(cropped[0, 0].sum()) == 0 and float(cropped[0, 1].sum()) > 0  # centred on X 5..15 in 12 voxels


def test_pipelines_round_trip_through_the_card() -> None:
    volume = VolumePipeline(spacing=(2.0, 2.0, 2.5), shape=(32, 32, 24), augment={"prob": 0.0})
    rebuilt = pipeline_from_card(volume.to_card())
    assert isinstance(rebuilt, VolumePipeline) and rebuilt.to_card() == volume.to_card()
    assert rebuilt.input_shape == (32, 32, 24) and rebuilt.spatial_dims == 3
    radiograph = RadiographPipeline(image_size=96, dicom={"voi": "none"})
    assert pipeline_from_card(radiograph.to_card()).to_card() == radiograph.to_card()
    with pytest.raises(MedtlError, match="input pipeline 'hologram'"):
        pipeline_from_card({"kind": "hologram"})
    with pytest.raises(MedtlError, match="spacing"):
        VolumePipeline(spacing=(1.0, 1.0))


def test_a_4d_file_is_refused_with_its_channel_count(tmp_path: Path) -> None:
    path = _head(tmp_path, "fmri", np.ones((8, 8, 8, 3), np.float32), np.eye(4))
    with pytest.raises(Exception) as caught:  # MONAI wraps it; the data module and predict unwrap it
        VolumePipeline(shape=(8, 8, 8)).eval_transforms(WEIGHTS)({"image": path, "path": path})
    assert "has 3 channels" in str(find_user_error(caught.value))


@pytest.mark.parametrize("pipeline", [RadiographPipeline(), VolumePipeline(shape=(40, 40, 32))], ids=["radiograph", "volume"])
def test_monai_caches_every_deterministic_step(pipeline) -> None:  # noqa: ANN001
    """MONAI's memory and disk caches stop at the first step that is random or not a MONAI ``Transform``: every
    deterministic step must come before that, or part of the preprocessing silently runs after the cache."""
    from monai.transforms import RandomizableTrait, Transform

    def uncacheable(step: object) -> bool:
        return isinstance(step, RandomizableTrait) or not isinstance(step, Transform)

    assert pipeline.eval_transforms(WEIGHTS, np.float16).get_index_of_first(uncacheable) is None
    train = pipeline.train_transforms(WEIGHTS, np.float16)
    first_random = train.get_index_of_first(lambda step: isinstance(step, RandomizableTrait))
    assert train.get_index_of_first(uncacheable) == first_random > 0


def test_a_disk_cached_volume_equals_the_freshly_computed_one(tmp_path: Path, head: tuple) -> None:
    """Served from the disk cache, a volume keeps its spacing: once it came back without its affine and was
    resampled as if its voxels were 1 mm, so a file's input depended on whether it had been seen before."""
    from medtl.data.cache import CheckedPersistentDataset

    data, affine = head
    path = _head(tmp_path, "h", data, affine)
    transform = VolumePipeline(spacing=(4.0, 4.0, 4.0), shape=(40, 40, 32)).eval_transforms(WEIGHTS, np.float16)
    dataset = CheckedPersistentDataset([{"image": path, "path": path, "label": 0}], transform, cache_dir=tmp_path / "c")
    fresh, cached = dataset[0]["image"], dataset[0]["image"]
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1
    assert torch.equal(torch.as_tensor(fresh), torch.as_tensor(cached))
    assert torch.equal(torch.as_tensor(cached), torch.as_tensor(transform({"image": path})["image"]))


def test_anti_aliasing_removes_fine_noise_and_keeps_a_flat_background(tmp_path: Path) -> None:
    """A 1 mm volume resampled to 4 mm keeps little of its voxel noise once smoothed first; a z-scored volume's
    negative background stays flat at the borders (the filter's zero padding must not brighten them)."""
    from monai.data import MetaTensor

    from medtl.data.volume_transforms import AntiAlias

    rng = np.random.default_rng(0)
    noise = MetaTensor(torch.as_tensor(rng.normal(0, 1, (1, 32, 32, 32)), dtype=torch.float32),
                       affine=torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0])))
    assert AntiAlias((4.0, 4.0, 4.0)).sigmas((1.0, 1.0, 1.0)) == (1.5, 1.5, 1.5)
    assert AntiAlias((4.0, 4.0, 4.0)).sigmas((4.0, 4.0, 6.0)) == (0.0, 0.0, 0.0)  # already coarse: untouched
    assert float(AntiAlias((4.0, 4.0, 4.0))(noise).std()) < 0.25 * float(noise.std())
    background = MetaTensor(torch.full((1, 16, 16, 16), -0.8), affine=torch.eye(4))
    background[:, 6:10, 6:10, 6:10] = 2.0  # a bright 'head' in the middle
    smoothed = AntiAlias((3.0, 3.0, 3.0))(background)
    assert torch.allclose(smoothed[:, 0], torch.tensor(-0.8), atol=1e-4)  # border slice: still the background
