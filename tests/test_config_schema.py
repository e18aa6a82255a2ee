"""Config checked first: every schema matches its target's signature, every experiment passes, and a wrong
type, an unknown key or a value outside its choices stops with one line before torch is even imported."""
from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra.utils import get_object

from medtl import CONFIG_DIR
from medtl.config_schema import SCHEMAS, check_overrides, validate_config
from medtl.errors import MedtlError
from tests.conftest import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Arguments that medtl.train passes at build time, not the config.
RUNTIME_ARGUMENTS = {"medtl.models.build_classifier": {"num_classes"}, "medtl.adaptation.build_adaptation":
                     {"num_features"}, "medtl.objectives.build_objective": {"num_features"},
                     "medtl.engine.evaluation.Evaluator": {"classes"},
                     "medtl.tracking.MlflowTracker": {"resume_run_id"}}


def _parameters(target: str) -> set[str]:
    obj = get_object(target)
    params = set(inspect.signature(obj).parameters)
    if "kwargs" in params and inspect.isclass(obj):  # DomainAdaptationData passes the rest to its base class
        params |= set(inspect.signature(obj.__mro__[1]).parameters)
    return params - RUNTIME_ARGUMENTS.get(target, set()) - {"self", "kwargs"}


@pytest.mark.parametrize("target", sorted(SCHEMAS))
def test_schema_lists_exactly_the_targets_arguments(target: str) -> None:
    fields = {f.name for f in dataclasses.fields(SCHEMAS[target])}
    assert fields == _parameters(target)


def test_nested_schemas_match_the_dataclasses_the_code_uses() -> None:
    from medtl.data.pipelines.volume import VolumeAugmentConfig
    from medtl.data.readers import DicomOptions
    from medtl.data.transforms import AugmentConfig, CropConfig, IntensityConfig
    from medtl.models.slices import SliceConfig

    nested = [("medtl.data.ImageClassificationData", {"intensity": IntensityConfig, "augment": AugmentConfig,
                                                      "dicom": DicomOptions}),
              ("medtl.data.pipelines.VolumePipeline", {"augment": VolumeAugmentConfig}),
              ("medtl.data.pipelines.RadiographPipeline", {"crop": CropConfig, "intensity": IntensityConfig}),
              ("medtl.models.build_classifier", {"slices": SliceConfig})]
    for target, keys in nested:
        hints = typing.get_type_hints(SCHEMAS[target])
        for key, real in keys.items():
            schema = next(t for t in (hints[key], *typing.get_args(hints[key])) if dataclasses.is_dataclass(t))
            assert [f.name for f in dataclasses.fields(schema)] == [f.name for f in dataclasses.fields(real)], key


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_its_schemas(experiment: str) -> None:
    validate_config(compose_config([f"+experiment={experiment}"]))


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=abc", r"config key trainer.max_epochs: Value 'abc' .* converted to Integer \(expected int\)"),
    ("data.intensity.lower_percentile=low", r"data.intensity.lower_percentile: .*\(expected float\)"),
    ("model.strategy=finetun", r"config key model.strategy='finetun' is not allowed; use one of linear_probe, "),
    ("data.cache=ram", r"config key data.cache='ram' is not allowed; use one of memory, disk, none"),
    ("+data.fraction=0.5", r"config key data.fraction is unknown; did you mean data\.\w+_fraction\?"),
    ("+trainer.features.epoch=3", r"config key trainer.features.epoch is unknown"),
    ("shortcut_decision=[a,b]", r"config key shortcut_decision=\['a', 'b'\] must be text .* or null"),
])
def test_bad_values_and_keys_are_one_line(override: str, message: str) -> None:
    with pytest.raises(MedtlError, match=message) as error:
        validate_config(compose_config(["+experiment=chest_xray", override]))
    assert "\n" not in str(error.value)


def test_a_mistyped_override_key_gets_a_suggestion() -> None:
    with pytest.raises(MedtlError, match=r"config key trainer.max_epoch does not exist; did you mean "
                                         r"trainer.max_epochs\? \(to add a new key on purpose: \+trainer.max_epoch=3\)"):
        check_overrides(["+experiment=chest_xray", "trainer.max_epoch=3"])


@pytest.mark.parametrize("override", ["trainer.max_epochs=abc", "data.intensity.lower_percentil=1",
                                      "model.bn=frozen"])
def test_cli_stops_in_one_line_before_importing_torch_or_reading_data(tmp_path: Path, override: str) -> None:
    code = ("import atexit, sys\natexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
            "sys.argv = ['medtl-train', '+experiment=chest_xray', 'data.root=/no/such/folder', sys.argv[1]]\n"
            "from medtl.train import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code, override], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 2
    assert result.stdout.strip() == "torch imported: False"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medtl: error: config key ")
    assert override.split("=")[0] in lines[0]


def test_the_optimized_metric_must_be_one_the_run_produced() -> None:
    from medtl.train import optimized_value

    assert optimized_value({"val/best_auroc": 0.9, "target/auroc": 0.7}, "target/auroc") == 0.7
    with pytest.raises(MedtlError, match=r"optimized_metric=val/auroc is not a metric of this run.*val/best_auroc"):
        optimized_value({"val/best_auroc": 0.9}, "val/auroc")


def test_target_simulation_severities_are_the_radiograph_shifts_and_the_volume_sites() -> None:
    from medtl.config_schema import TargetSimulationSchema
    from medtl.data.shift import SEVERITIES
    from medtl.data.volume_shift import VOLUME_SITES

    allowed = {f.name: f for f in dataclasses.fields(TargetSimulationSchema)}["severity"].metadata["choices"]
    assert set(allowed) == set(SEVERITIES) | set(VOLUME_SITES)
