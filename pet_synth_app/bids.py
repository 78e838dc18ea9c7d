"""BIDS input: pybids queries, input validation and derivative bookkeeping.

Rule for several T1w images in one subject/session: PetSynth uses one T1w per
(subject, session). Candidates are the T1w of that session, else the T1w images
outside any session, else those of the subject's other sessions. Among candidates,
the first by (run index, file name) is used and the others are listed in a warning.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__, atomicio
from .errors import PetSynthError
from .lockinfo import lock_hash

LOGGER = logging.getLogger("petsynth")

NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
_MIN_NIFTI_BYTES = 348  # size of a NIfTI-1 header
_FRAME_TOLERANCE_S = 1.0


@dataclass
class PETInput:
    """One PET series and its sidecar metadata."""

    path: str
    metadata: dict = field(default_factory=dict)

    @property
    def frame_durations(self) -> list[float] | None:
        """Frame durations in seconds, if the sidecar gives them."""
        durations = self.metadata.get("FrameDuration")
        return [float(d) for d in durations] if durations is not None else None


@dataclass
class SubjectInputs:
    """The inputs of one processing unit: a subject (and session) with one T1w."""

    subject: str
    session: str | None
    t1w: str
    pet: list[PETInput] = field(default_factory=list)
    group: str | None = None
    ignored_t1w: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """`sub-<label>[_ses-<label>]`, used for node names and messages."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


def strip_label(label: str, prefix: str) -> str:
    """`sub-01` -> `01`; `01` -> `01`."""
    label = label.strip()
    return label[len(prefix) + 1 :] if label.startswith(prefix + "-") else label


def load_layout(bids_dir: Path, validate: bool = True, ignore: list | None = None):
    """Index a BIDS dataset with pybids; a one-line PetSynthError if it is not BIDS.
    ``ignore``: extra pybids ignore patterns (e.g. sidecars that are not valid JSON,
    ``inputcheck.ignore_patterns``), added to pybids' defaults."""
    from bids import BIDSLayout, BIDSLayoutIndexer
    from bids.exceptions import BIDSValidationError
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise PetSynthError("BIDS directory does not exist", str(bids_dir))
    if not (bids_dir / "dataset_description.json").is_file():
        raise PetSynthError(
            "not a BIDS dataset (no dataset_description.json at its top level)", str(bids_dir)
        )
    try:
        json.loads((bids_dir / "dataset_description.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PetSynthError(
            f"dataset_description.json is not valid JSON ({exc})", str(bids_dir)
        ) from None
    try:
        indexer = None
        if ignore:
            indexer = BIDSLayoutIndexer(
                validate=validate, ignore=[*DEFAULT_LOCATIONS_TO_IGNORE, *ignore]
            )
        return BIDSLayout(str(bids_dir), validate=validate, derivatives=False, indexer=indexer)
    except BIDSValidationError as exc:
        raise PetSynthError(f"not a valid BIDS dataset: {exc}", str(bids_dir)) from None


def dataset_name(bids_dir: Path) -> str:
    """The ``Name`` in a BIDS dataset's ``dataset_description.json`` (the folder's name
    when it has none): what a model card records as ``training.dataset``."""
    try:
        return json.loads((Path(bids_dir) / "dataset_description.json").read_text())["Name"]
    except (OSError, KeyError, TypeError, ValueError):
        return Path(bids_dir).name


def read_participants(bids_dir: Path) -> dict[str, dict[str, str]]:
    """`participants.tsv` rows keyed by label (without `sub-`); {} if absent."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        return {}
    header = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        values = dict(zip(header, line.split("\t"), strict=False))
        pid = values.get("participant_id", "")
        if pid:
            rows[strip_label(pid, "sub")] = values
    return rows


def _run_key(f) -> tuple:
    run = f.entities.get("run", 0)
    try:
        run = int(run)
    except (TypeError, ValueError):
        run = 0
    return (run, f.filename)


def collect_inputs(
    layout,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    bids_filters: dict | None = None,
) -> tuple[list[SubjectInputs], list[PetSynthError]]:
    """Find the T1w and PET of each requested subject/session.

    Returns (units to process, errors for requested subjects that cannot be processed).
    Raises PetSynthError when nothing at all can be processed.
    """
    bids_filters = bids_filters or {}
    t1w_filters = bids_filters.get("t1w", {})
    pet_filters = bids_filters.get("pet", {})
    all_subjects = sorted(layout.get_subjects())
    if participant_label:
        wanted = [strip_label(lab, "sub") for lab in participant_label]
        missing = [lab for lab in wanted if lab not in all_subjects]
        if len(missing) == len(wanted):
            raise PetSynthError(
                f"no participant matches --participant-label {' '.join(wanted)} "
                f"(dataset has: {', '.join(all_subjects) or 'none'})",
                str(layout.root),
            )
        subjects = [lab for lab in wanted if lab in all_subjects]
    else:
        missing = []
        subjects = all_subjects
    if not subjects:
        raise PetSynthError("the dataset has no subjects", str(layout.root))

    participants = read_participants(Path(layout.root))
    errors = [PetSynthError(f"participant sub-{lab} not found in the dataset") for lab in missing]
    units: list[SubjectInputs] = []
    sessions_wanted = [strip_label(s, "ses") for s in (session_label or [])]
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub)) or [None]
        if sessions_wanted:
            sessions = [s for s in sessions if s in sessions_wanted]
            if not sessions:
                errors.append(
                    PetSynthError(f"sub-{sub} has none of the sessions {sessions_wanted}")
                )
                continue
        all_t1w = layout.get(
            subject=sub, suffix="T1w", datatype="anat", extension=NIFTI_EXTENSIONS, **t1w_filters
        )
        for ses in sessions:
            candidates = [f for f in all_t1w if f.entities.get("session") == ses]
            if not candidates:
                candidates = [f for f in all_t1w if "session" not in f.entities]
            if not candidates:
                candidates = list(all_t1w)
            query = {"session": ses} if ses else {}
            pets = layout.get(
                subject=sub,
                suffix="pet",
                datatype="pet",
                extension=NIFTI_EXTENSIONS,
                **query,
                **pet_filters,
            )
            name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            if not candidates:
                errors.append(PetSynthError(f"{name} has no T1w image (anat/*_T1w.nii[.gz])"))
                continue
            candidates = sorted(candidates, key=_run_key)
            unit = SubjectInputs(
                subject=sub,
                session=ses,
                t1w=candidates[0].path,
                pet=[PETInput(p.path, p.get_metadata()) for p in sorted(pets, key=_run_key)],
                group=participants.get(sub, {}).get("group"),
                ignored_t1w=[c.path for c in candidates[1:]],
            )
            if unit.ignored_t1w:
                LOGGER.warning(
                    "%s: several T1w images; using %s, ignoring %s",
                    name,
                    Path(unit.t1w).name,
                    ", ".join(Path(p).name for p in unit.ignored_t1w),
                )
            units.append(unit)
    if not units:
        detail = "; ".join(str(e) for e in errors)
        raise PetSynthError(f"no participant can be processed ({detail})", str(layout.root))
    return units, errors


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(512)
        except (OSError, EOFError):
            return b"<corrupt gzip>"
    return head


def check_image(path: str | Path, kind: str, metadata: dict | None = None) -> nib.Nifti1Image:
    """Load and sanity-check a T1w ("T1w") or PET ("pet") NIfTI; PetSynthError if unusable."""
    path = Path(path)
    if not path.exists():
        raise PetSynthError("file does not exist (broken symlink or git-annex pointer?)", path)
    size = path.stat().st_size
    if size < _MIN_NIFTI_BYTES:
        raise PetSynthError(
            f"file is {size} byte(s), too small to be a NIfTI image (placeholder?)", path
        )
    head = _sniff(path)
    if head == b"<corrupt gzip>":
        raise PetSynthError("file is a corrupt gzip archive", path)
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<head")):
        raise PetSynthError("file is an HTML/XML page saved under a NIfTI name", path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PetSynthError(f"cannot be read as NIfTI ({reason})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if kind == "T1w" and data.ndim != 3:
        raise PetSynthError(f"T1w must be a 3D image, got shape {tuple(img.shape)}", path)
    if kind == "pet" and data.ndim not in (3, 4):
        raise PetSynthError(f"PET must be 3D or 4D, got shape {tuple(img.shape)}", path)
    if min(data.shape[:3]) < 8:
        raise PetSynthError(f"image is too small ({tuple(img.shape)} voxels)", path)
    zooms = img.header.get_zooms()[:3]
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise PetSynthError(f"invalid voxel size {zooms}", path)
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise PetSynthError("invalid (singular) affine in the header", path)
    if kind == "pet":
        check_frame_timing(metadata or {}, data.shape[3] if data.ndim == 4 else 1, path)
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise PetSynthError(f"contains {n_bad} NaN/Inf voxels", path)
    if not np.any(data):
        raise PetSynthError("all voxels are zero (empty image)", path)
    if np.ptp(data) == 0:
        raise PetSynthError("image is constant", path)
    return img


def check_frame_timing(metadata: dict, n_frames: int, path: str | Path) -> None:
    """Check BIDS PET FrameTimesStart/FrameDuration (s) against the number of frames."""
    starts = metadata.get("FrameTimesStart")
    durations = metadata.get("FrameDuration")
    if starts is None and durations is None:
        if n_frames > 1:
            raise PetSynthError(
                f"4D PET with {n_frames} frames but no FrameTimesStart/FrameDuration "
                "in its sidecar",
                path,
            )
        return
    if starts is None or durations is None:
        raise PetSynthError("sidecar has only one of FrameTimesStart/FrameDuration", path)
    starts = np.atleast_1d(np.asarray(starts, dtype=float))
    durations = np.atleast_1d(np.asarray(durations, dtype=float))
    if len(starts) != len(durations):
        raise PetSynthError(
            f"inconsistent frame metadata: {len(starts)} FrameTimesStart vs "
            f"{len(durations)} FrameDuration",
            path,
        )
    if len(starts) != n_frames:
        raise PetSynthError(
            f"inconsistent frame metadata: image has {n_frames} frame(s), "
            f"sidecar lists {len(starts)}",
            path,
        )
    if np.any(durations <= 0):
        raise PetSynthError("inconsistent frame metadata: a FrameDuration is <= 0", path)
    ends = starts + durations
    overlap = np.nonzero(ends[:-1] > starts[1:] + _FRAME_TOLERANCE_S)[0]
    if overlap.size:
        i = int(overlap[0])
        raise PetSynthError(
            f"inconsistent frame metadata: frame {i + 1} ends at {ends[i]:g} s after "
            f"frame {i + 2} starts at {starts[i + 1]:g} s",
            path,
        )


def validate_inputs(unit: SubjectInputs) -> list[PetSynthError]:
    """All problems of one unit's files (empty list when usable)."""
    problems = []
    try:
        check_image(unit.t1w, "T1w")
    except PetSynthError as exc:
        problems.append(exc)
    for pet in unit.pet:
        try:
            check_image(pet.path, "pet", pet.metadata)
        except PetSynthError as exc:
            problems.append(exc)
    return problems


def first_match(folder: Path, pattern: str) -> Path | None:
    """The first (sorted) file under ``folder`` matching a glob ``pattern``, or None."""
    hits = sorted(Path(folder).glob(pattern))
    return hits[0] if hits else None


def write_derivative_description(
    bids_dir: Path, output_dir: Path, container: dict | None = None
) -> Path:
    """Write `dataset_description.json` of the derivatives (BIDS-Derivatives 1.9)."""
    src = {}
    try:
        src = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    generated = {
        "Name": "PetSynth",
        "Version": __version__,
        "CodeURL": "https://github.com/petsynth/petsynth",
    }
    if container:
        generated["Container"] = container
    if lock := lock_hash():
        generated["RequirementsLockSHA256"] = lock
    source = {"URL": Path(bids_dir).absolute().as_uri()}
    if src.get("DatasetDOI"):
        source["DOI"] = src["DatasetDOI"]
    if src.get("Name"):
        source["Name"] = src["Name"]
    desc = {
        "Name": "PetSynth derivatives: pseudo-normal FDG PET and hypometabolism maps",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": source["URL"]},
        "HowToAcknowledge": "See logs/CITATION.md for the methods and references.",
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "dataset_description.json"
    # every participant process writes it (same content): atomically, never half-written
    return atomicio.write_text(path, json.dumps(desc, indent=2) + "\n")
