"""The official BIDS validator (npm ``bids-validator``) on inputs and simulated datasets."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import make_bids

from pet_synth_app import runner, validator
from pet_synth_app.cli import run
from pet_synth_app.cli import simulate as sim_cli
from pet_synth_app.errors import PetSynthError

INSTALLED = shutil.which(validator.COMMAND)
needs_validator = pytest.mark.skipif(
    INSTALLED is None, reason="bids-validator not installed (npm install -g bids-validator)"
)


@pytest.fixture
def use_validator(monkeypatch):
    monkeypatch.setenv(validator.ENV_VAR, validator.COMMAND)


def _stop_after_validation(monkeypatch):
    def stop(*_a, **_k):
        raise PetSynthError("stopped after validation (test)")

    monkeypatch.setattr(runner, "resolve_plan", stop)


@pytest.mark.slow  # ~95 s next to a training (the simulation)
@needs_validator
def test_simulated_dataset_has_zero_errors(tmp_path):
    root = tmp_path / "sim"
    args = ["--n-controls", "1", "--n-patients", "1", "--n-t1w-only", "1", "--n-4d", "1"]
    assert sim_cli.main([str(root), *args, "--seed", "5", "--voxel-size", "2", "--quiet"]) == 0
    t0 = time.time()
    result = validator.run_validator(root, INSTALLED)
    assert result.errors == [], result.errors
    assert time.time() - t0 < 120
    # warnings are allowed (e.g. INCONSISTENT_PARAMETERS of simulated scanners)
    assert all(":" in w for w in result.warnings)


PET_SIDECAR = {
    "Manufacturer": "PetSynth",
    "ManufacturersModelName": "test",
    "Units": "Bq/mL",
    "TracerName": "FDG",
    "TracerRadionuclide": "F18",
    "InjectedRadioactivity": 160.0,
    "InjectedRadioactivityUnits": "MBq",
    "InjectedMass": 0.15,
    "InjectedMassUnits": "ug",
    "SpecificRadioactivity": 1.1,
    "SpecificRadioactivityUnits": "GBq/ug",
    "ModeOfAdministration": "bolus",
    "TimeZero": "13:30:00",
    "InjectionStart": 0,
    "ScanStart": 0,
    "FrameTimesStart": [0.0],
    "FrameDuration": [600.0],
    "AcquisitionMode": "list mode",
    "ImageDecayCorrected": True,
    "ImageDecayCorrectionTime": 0,
    "ReconMethodName": "OSEM",
    "ReconMethodParameterLabels": ["subsets", "iterations"],
    "ReconMethodParameterUnits": ["none", "none"],
    "ReconMethodParameterValues": [21, 3],
    "ReconFilterType": "none",
    "ReconFilterSize": 0,
    "AttenuationCorrection": "CT-based",
}
"""A PET sidecar with every field BIDS 1.9 requires (``make_bids`` writes three)."""


def _complete_sidecars(bids, subjects):
    for sub in subjects:
        path = bids / f"sub-{sub}" / "pet" / f"sub-{sub}_trc-FDG_pet.json"
        path.write_text(json.dumps(PET_SIDECAR))


@needs_validator
def test_participant_errors_skip_that_participant_only(tmp_path, capsys, use_validator, fake_run):
    """The validator's errors in one participant's files skip that participant (one
    line per file), the others run."""
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))  # sub-01: fields missing
    _complete_sidecars(root, ["02"])
    out = tmp_path / "out"
    code = run.main([str(root), str(out), "participant", "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("petsynth: error")]
    assert code == 1 and fake_run == ["sub-02"]
    pet = root / "sub-01" / "pet" / "sub-01_trc-FDG_pet"
    assert sorted(lines) == [
        f"petsynth: error: {pet}.json: sub-01 skipped: bids-validator "
        "JSON_SCHEMA_VALIDATION_ERROR: Invalid JSON file. The file is not formatted "
        "according the schema.",
        f"petsynth: error: {pet}.nii.gz: sub-01 skipped: bids-validator "
        "PET_JSON_KEY_REQUIRED: A PET image JSON sidecar is missing a required field.",
    ], lines
    assert "Traceback" not in err and "not valid BIDS" not in err
    assert (out / "sub-02.html").is_file() and not (out / "sub-01.html").exists()
    assert "finished: 1 of 2 unit(s) succeeded; 1 skipped, 0 failed" in err


@needs_validator
def test_dataset_level_errors_stop_the_run(tmp_path, capsys, use_validator, fake_run):
    """An error in a file above the participant folders (an inherited sidecar) stops the
    run: nothing is written."""
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))
    _complete_sidecars(root, ["01", "02"])
    (root / "pet.json").write_text(json.dumps({"InjectedRadioactivity": "lots"}))
    out = tmp_path / "out"
    code = run.main([str(root), str(out), "participant", "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert code == 1 and fake_run == []
    assert any(
        ln.startswith("petsynth: error: bids-validator: JSON_SCHEMA_VALIDATION_ERROR")
        and "/pet.json" in ln
        for ln in lines
    ), lines
    assert all(ln.startswith("petsynth: error: ") for ln in lines), lines
    assert "not valid BIDS" in lines[-1] and "Traceback" not in err
    assert not (out / "dataset_description.json").exists()


def test_split_by_participant(tmp_path):
    issues = [
        validator.Issue("A", "bad sidecar", ("/sub-01/pet/x.json", "/sub-02/anat/y.nii")),
        validator.Issue("B", "bad top", ("/pet.json", "/sub-01/pet/x.json")),
        validator.Issue("C", "no file"),
        validator.Issue("D", "some left out", ("/sub-03/anat/z.nii",), complete=False),
    ]
    dataset, per_file = validator.split_by_participant(issues, tmp_path)
    assert [(i.code, i.files) for i in dataset] == [
        ("B", ("/pet.json",)),
        ("C", ()),
        ("D", ()),
    ]
    assert per_file == {
        tmp_path / "sub-01/pet/x.json": "bids-validator A: bad sidecar; B: bad top",
        tmp_path / "sub-02/anat/y.nii": "bids-validator A: bad sidecar",
        tmp_path / "sub-03/anat/z.nii": "bids-validator D: some left out",
    }


@needs_validator
def test_skip_bids_validation_turns_it_off(tmp_path, capsys, monkeypatch, use_validator):
    root = make_bids(tmp_path / "ds")
    _stop_after_validation(monkeypatch)
    argv = [str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    assert run.main([*argv, "--skip-bids-validation"]) == 1
    err = capsys.readouterr().err
    assert "bids-validator" not in err and "stopped after validation" in err


def test_not_installed_warns_and_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(validator.ENV_VAR, "no-such-bids-validator")
    assert validator.validator_command() is None
    root = make_bids(tmp_path / "ds")
    _stop_after_validation(monkeypatch)
    code = run.main([str(root), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert code == 1 and "stopped after validation" in err
    assert "WARNING: bids-validator is not installed" in err


def test_validator_failure_is_one_line(tmp_path):
    fake = tmp_path / "fake-validator"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(PetSynthError) as exc:
        validator.run_validator(tmp_path, str(fake))
    assert "bids-validator failed: boom: cannot start" in str(exc.value)
