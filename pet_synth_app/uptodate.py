"""Finished participants whose rerun would change nothing (docs/architecture.md, "Running").

When a participant finishes (all its units done, its report written), the runner records
in the work folder a fingerprint of everything its outputs depend on: the PetSynth
version, the settings that change results, the synthesis weights, the normative model /
OC-SVM detector folder, its raw files and the dataset's top-level files, the reused
derivatives, and the state (size, mtime) of its outputs and report. A rerun whose
fingerprint matches skips that participant before the BIDS layout, the validator and the
workflow graph are built: a finished participant is checked in well under a second
instead of ~90 s. Anything that changes (an input touched, an option, the weights, a
group-level model, an output edited or removed, the report removed) means a normal run,
which Nipype's cache keeps short. A new work folder forgets the records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .config import Settings

RECORD_DIR = "petsynth_finished"

EXECUTION_ONLY = frozenset(
    {
        "participant_label",
        "nprocs",
        "omp_nthreads",
        "mem_mb",
        "use_plugin",
        "work_dir",
        "verbose",
        "stop_on_first_crash",
        "qc_fail_exit",
        "skip_bids_validation",
    }
)
"""Settings that change how a run executes or exits, never what it writes."""


def _states(root: Path, recursive: bool = True) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of the files under ``root`` (sorted; none if
    missing); only its direct files when not ``recursive``."""
    if not root.exists():
        return []
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        if not recursive:
            dirnames.clear()
        for name in filenames:
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:  # a dangling link: its absence is part of the state
                out.append((str(path.relative_to(root)), -1, -1))
                continue
            out.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _weights_state(settings: Settings) -> list | None:
    """State of the synthesis weights and card (``--model-weights``, else the package's
    data folder, which holds the default model), None without synthesis; no torch import."""
    if settings.skip_synthesis:
        return None
    if settings.model_weights:
        weights = Path(settings.model_weights)
        return _states(weights) + _states(weights.with_suffix(".json"))
    return _states(Path(__file__).parent / "data")


def run_state(settings: Settings) -> dict:
    """What every participant's outputs depend on alike: version, result-changing
    options, weights, group model folder, the dataset's and derivatives' top-level files
    (read once per run, not once per participant)."""
    from .plan import normative_folder

    options = {
        k: v for k, v in settings.to_dict().items() if k not in EXECUTION_ONLY and v is not None
    }
    return {
        "version": __version__,
        "options": options,
        "weights": _weights_state(settings),
        "normative": _states(normative_folder(settings)),
        "raw_top": _states(Path(settings.bids_dir), recursive=False),
        "derivatives_top": [_states(Path(d), recursive=False) for d in settings.derivatives],
    }


def fingerprint(settings: Settings, subject: str, shared: dict | None = None) -> str:
    """SHA-256 over what ``sub-<subject>``'s outputs depend on (see the module docstring);
    ``shared``: ``run_state(settings)`` when already read."""
    out = Path(settings.output_dir)
    state = {
        **(shared if shared is not None else run_state(settings)),
        "raw": _states(Path(settings.bids_dir) / f"sub-{subject}"),
        "derivatives": [_states(Path(d) / f"sub-{subject}") for d in settings.derivatives],
        "outputs": _states(out / f"sub-{subject}"),
        "report": _states(out / f"sub-{subject}.html"),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def record_file(settings: Settings, subject: str) -> Path:
    """Where the work folder keeps ``sub-<subject>``'s finished record."""
    return Path(settings.work_dir) / RECORD_DIR / f"sub-{subject}.json"


def record_finished(
    settings: Settings, subjects: list[str], qc_failed: dict[str, dict] | None = None
) -> None:
    """Record ``subjects`` as finished (called once their reports are written) with the
    QC checks their units failed (``qc_failed`` by subject, as ``analysis.qc.
    failed_checks`` gives them); a subject without a report is not recorded."""
    from . import atomicio

    shared = run_state(settings)
    for subject in subjects:
        path = record_file(settings, subject)
        if not (Path(settings.output_dir) / f"sub-{subject}.html").is_file():
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "subject": subject,
            "fingerprint": fingerprint(settings, subject, shared),
            "qc_failed": (qc_failed or {}).get(subject, {}),
        }
        atomicio.write_text(path, json.dumps(record, indent=1) + "\n")


def requested_subjects(settings: Settings) -> list[str]:
    """The participants a run asks for: ``--participant-label``, else every ``sub-*``
    folder of the dataset."""
    if settings.participant_label:
        from .bids import strip_label

        return sorted({strip_label(label, "sub") for label in settings.participant_label})
    bids = Path(settings.bids_dir)
    if not bids.is_dir():
        return []
    return sorted(p.name[4:] for p in bids.glob("sub-*") if p.is_dir())


def up_to_date(settings: Settings, subjects: list[str]) -> list[str]:
    """The ``subjects`` whose finished record matches their current fingerprint."""
    fresh, shared = [], run_state(settings) if subjects else None
    for subject in subjects:
        try:
            record = json.loads(record_file(settings, subject).read_text())
        except (OSError, ValueError):
            continue
        if record.get("fingerprint") == fingerprint(settings, subject, shared):
            fresh.append(subject)
    return fresh


def recorded_qc(settings: Settings, subjects: list[str]) -> dict[str, dict[str, list[str]]]:
    """The failed QC checks recorded when ``subjects`` finished (by subject)."""
    out = {}
    for subject in subjects:
        try:
            out[subject] = json.loads(record_file(settings, subject).read_text())["qc_failed"]
        except (OSError, ValueError, KeyError):
            out[subject] = {}
    return out


def forget(settings: Settings, subjects: list[str]) -> None:
    """Remove the records of ``subjects`` (their run starts: until it finishes again,
    they are not finished)."""
    for subject in subjects:
        record_file(settings, subject).unlink(missing_ok=True)


__all__ = [
    "EXECUTION_ONLY",
    "fingerprint",
    "forget",
    "record_file",
    "record_finished",
    "recorded_qc",
    "requested_subjects",
    "run_state",
    "up_to_date",
]
