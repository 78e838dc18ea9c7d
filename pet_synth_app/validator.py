"""The official BIDS validator (npm ``bids-validator``), run on the input dataset.

As fMRIPrep does: when the ``bids-validator`` command is installed (``npm install -g
bids-validator``; the container has it) the input dataset is validated before anything is
written, and its errors stop the run (one line per issue code, after the lines of
PetSynth's own checks of the files); without it a warning says that only pybids'
file-name check ran. ``--skip-bids-validation`` turns both off. ``PETSYNTH_BIDS_VALIDATOR``
names another command (e.g. ``bids-validator-deno``, same ``--json`` option) or, empty,
turns the official validator off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PetSynthError

LOGGER = logging.getLogger("petsynth")

COMMAND = "bids-validator"
"""The validator's command (npm package ``bids-validator``, 1.x CLI with ``--json``)."""
TIMEOUT_S = 600


@dataclass
class ValidationResult:
    """Issues found by the validator: one line per issue code."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


ENV_VAR = "PETSYNTH_BIDS_VALIDATOR"
"""Environment variable naming the validator command (default ``bids-validator``; empty:
do not run it, as the test suite does for its hand-made datasets)."""


def validator_command() -> str | None:
    """Path of the validator command, or None when it is not installed (or disabled)."""
    name = os.environ.get(ENV_VAR, COMMAND)
    return shutil.which(name) if name else None


def _lines(issues: list[dict]) -> list[str]:
    out = []
    for issue in issues:
        files = [
            (f.get("file") or {}).get("relativePath", "")
            for f in issue.get("files") or []
            if f.get("file")
        ]
        where = f" ({len(files)} file(s), e.g. {files[0]})" if files else ""
        reason = " ".join(str(issue.get("reason", "")).split())
        out.append(f"{issue.get('key', issue.get('code', '?'))}: {reason}{where}")
    return out


def run_validator(bids_dir: Path, command: str | None = None) -> ValidationResult:
    """Run the validator on ``bids_dir`` and collect its issues (PetSynthError when the
    validator itself fails or prints no JSON)."""
    command = command or validator_command()
    if command is None:
        raise PetSynthError(f"{COMMAND} is not installed")
    try:
        proc = subprocess.run(
            [command, str(bids_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        report = json.loads(proc.stdout)
    except subprocess.TimeoutExpired:
        raise PetSynthError(f"{COMMAND} did not finish in {TIMEOUT_S} s", str(bids_dir)) from None
    except json.JSONDecodeError:
        tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
        raise PetSynthError(f"{COMMAND} failed: {tail}", str(bids_dir)) from None
    issues = report.get("issues", {})
    return ValidationResult(_lines(issues.get("errors", [])), _lines(issues.get("warnings", [])))


def validate_dataset(bids_dir: Path) -> list[PetSynthError]:
    """Validate the input dataset when the validator is installed (a warning otherwise);
    one PetSynthError per error code it reports (empty list: valid)."""
    if os.environ.get(ENV_VAR) == "":  # turned off on purpose: no warning
        return []
    command = validator_command()
    if command is None:
        LOGGER.warning(
            "%s is not installed: the input dataset was not validated against the BIDS "
            "specification (npm install -g bids-validator; --skip-bids-validation "
            "silences this)",
            COMMAND,
        )
        return []
    result = run_validator(bids_dir, command)
    if result.warnings:
        LOGGER.info("%s: %d warning(s), not blocking", COMMAND, len(result.warnings))
    return [PetSynthError(f"{COMMAND}: {line}") for line in result.errors]


__all__ = [
    "COMMAND",
    "ENV_VAR",
    "ValidationResult",
    "run_validator",
    "validate_dataset",
    "validator_command",
]
