"""The official BIDS validator (npm ``bids-validator``) on inputs and simulated datasets."""

from __future__ import annotations

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


@needs_validator
def test_invalid_input_stops_the_run_one_line_each(tmp_path, capsys, use_validator):
    root = make_bids(tmp_path / "ds")  # hand-made PET sidecar: required fields missing
    out = tmp_path / "out"
    code = run.main([str(root), str(out), "participant", "-w", str(tmp_path / "w")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert code == 1
    assert any("bids-validator: PET_JSON_KEY_REQUIRED" in ln for ln in lines), lines
    assert all(ln.startswith("petsynth: error: ") for ln in lines), lines
    assert "not valid BIDS" in lines[-1] and "Traceback" not in err
    assert not (out / "dataset_description.json").exists()


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
