"""The official BIDS validator (npm ``bids-validator``), run on the input dataset.

As fMRIPrep does: when the ``bids-validator`` command is installed (``npm install -g
bids-validator``; the container has it) the input dataset is validated before anything is
written. An error in the files of one participant (``sub-<label>/...``) skips that
participant only (one line per file, naming the issue codes), as PetSynth's own checks
do; an error in a file above the participant folders (``dataset_description.json``,
``participants.tsv``, an inherited sidecar) or without a file stops the run (one line per
issue code, after the lines of PetSynth's own checks of the files); without it a warning
says that only pybids' file-name check ran. ``--skip-bids-validation`` turns both off.
``PETSYNTH_BIDS_VALIDATOR`` names another command (e.g. ``bids-validator-deno``, same
``--json`` option) or, empty, turns the official validator off.
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


@dataclass(frozen=True)
class Issue:
    """One error code of the validator and the files it concerns (paths relative to the
    dataset, ``/sub-01/pet/...``; ``complete``: False when the validator left some out)."""

    code: str
    reason: str
    files: tuple[str, ...] = ()
    complete: bool = True


@dataclass
class ValidationResult:
    """Issues found by the validator: one line per issue code, and the error issues."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error_issues: list[Issue] = field(default_factory=list)


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


def _issues(issues: list[dict]) -> list[Issue]:
    out = []
    for issue in issues:
        files = tuple(
            dict.fromkeys(
                (f.get("file") or {}).get("relativePath") or ""
                for f in issue.get("files") or []
                if isinstance(f, dict)
            )
        )
        out.append(
            Issue(
                str(issue.get("key", issue.get("code", "?"))),
                " ".join(str(issue.get("reason", "")).split()),
                files,
                not issue.get("additionalFileCount"),
            )
        )
    return out


def _in_participant(relative: str) -> bool:
    parts = relative.lstrip("/").split("/")
    return len(parts) > 1 and parts[0].startswith("sub-")


def split_by_participant(
    issues: list[Issue], bids_dir: Path
) -> tuple[list[Issue], dict[Path, str]]:
    """(the issues of the dataset as a whole, which stop the run; {file of a participant:
    "bids-validator CODE: reason[; CODE: reason]"}, which skip that participant only).
    The files of an issue above the participant folders, an issue without files and one
    whose files the validator left out (not all listed) are of the dataset."""
    dataset, per_file = [], {}
    for issue in issues:
        mine = [f for f in issue.files if _in_participant(f)]
        others = tuple(f for f in issue.files if not _in_participant(f))
        if others or not mine or not issue.complete:
            dataset.append(Issue(issue.code, issue.reason, others, issue.complete))
        for rel in mine:
            path = Path(bids_dir) / rel.lstrip("/")
            text = f"{issue.code}: {issue.reason}"
            per_file[path] = f"{per_file[path]}; {text}" if path in per_file else text
    return dataset, {p: f"{COMMAND} {m}" for p, m in per_file.items()}


def run_validator(bids_dir: Path, command: str | None = None) -> ValidationResult:
    """Run the validator on ``bids_dir`` and collect its issues (PetSynthError when the
    validator itself fails or prints no JSON)."""
    command = command or validator_command()
    if command is None:
        raise PetSynthError(f"{COMMAND} is not installed")
    try:
        proc = subprocess.run(
            [command, str(bids_dir), "--json", "--verbose"],  # verbose: all files
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
    return ValidationResult(
        _lines(issues.get("errors", [])),
        _lines(issues.get("warnings", [])),
        _issues(issues.get("errors", [])),
    )


def validate_dataset(bids_dir: Path) -> tuple[list[PetSynthError], dict[Path, str]]:
    """Validate the input dataset when the validator is installed (a warning otherwise):
    (one PetSynthError per error code of the dataset as a whole, which stops the run;
    {file of a participant: its issues}, which skip that participant only); both empty:
    valid."""
    if os.environ.get(ENV_VAR) == "":  # turned off on purpose: no warning
        return [], {}
    command = validator_command()
    if command is None:
        LOGGER.warning(
            "%s is not installed: the input dataset was not validated against the BIDS "
            "specification (npm install -g bids-validator; --skip-bids-validation "
            "silences this)",
            COMMAND,
        )
        return [], {}
    result = run_validator(bids_dir, command)
    if result.warnings:
        LOGGER.info("%s: %d warning(s), not blocking", COMMAND, len(result.warnings))
    dataset, per_file = split_by_participant(result.error_issues, bids_dir)
    lines = _lines_of(dataset)
    return [PetSynthError(f"{COMMAND}: {line}") for line in lines], per_file


def _lines_of(issues: list[Issue]) -> list[str]:
    out = []
    for issue in issues:
        files = [f for f in issue.files if f]
        where = f" ({len(files)} file(s), e.g. {files[0]})" if files else ""
        out.append(f"{issue.code}: {issue.reason}{where}")
    return out


__all__ = [
    "COMMAND",
    "ENV_VAR",
    "Issue",
    "ValidationResult",
    "run_validator",
    "split_by_participant",
    "validate_dataset",
    "validator_command",
]
