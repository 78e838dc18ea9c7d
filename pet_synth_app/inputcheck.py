"""Checks of a participant's input files beyond "can it be read" (``bids.check_image``):
sidecars that are not valid JSON, suspect headers and suspect PET values, missing BIDS
PET metadata, and a synthesis model whose training data differ from the input.

What cannot be processed becomes a ``PetSynthError`` for its participant only (the others
still run); what can be processed but is suspect becomes a named warning: one line naming
the file and the problem, logged at the start of the run, saved per participant
(``layout.input_warnings_file``) and shown in the report and in the stat-map sidecars.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import layout as L
from .errors import PetSynthError

LOGGER = logging.getLogger("petsynth")

AFFINE_TOLERANCE_MM = 1.0
"""qform/sform disagreement or shear (largest displacement of a corner of the image, mm)
above which the header is reported as suspect."""

NEGATIVE_FRACTION = 0.001
"""Fraction of the PET's nonzero voxels below zero above which negative values are reported
(a few negative voxels are normal noise of an FBP/OSEM reconstruction)."""

NEGATIVE_DEPTH = 0.01
"""... and only when the lowest value is below -1 % of the 99th percentile."""

QUANTITATIVE_UNITS = ("bq/ml", "kbq/ml", "mbq/ml", "bq/cc", "kbq/cc", "mbq/cc", "g/ml", "suv")
"""PET ``Units`` that mean an activity concentration (or SUV): anything else is not
quantitative (counts, arbitrary units)."""

PET_REQUIRED_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "Units",
    "TracerName",
    "TracerRadionuclide",
    "InjectedRadioactivity",
    "InjectedRadioactivityUnits",
    "InjectedMass",
    "InjectedMassUnits",
    "SpecificRadioactivity",
    "SpecificRadioactivityUnits",
    "ModeOfAdministration",
    "TimeZero",
    "ScanStart",
    "InjectionStart",
    "FrameTimesStart",
    "FrameDuration",
    "AcquisitionMode",
    "ImageDecayCorrected",
    "ImageDecayCorrectionTime",
    "ReconMethodName",
    "ReconMethodParameterLabels",
    "ReconFilterType",
    "ReconFilterSize",
    "AttenuationCorrection",
)
"""Sidecar fields the BIDS specification (1.9, PET) marks REQUIRED for ``*_pet.nii``."""

SIMULATOR = "petsynth-simulate"
"""``GeneratedBy`` name of the phantom cohorts (``simulate/cohort.py``)."""


@dataclass(frozen=True)
class InputWarning:
    """A suspect input that is still processed: which unit, which file, what."""

    unit: str
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.unit}: {Path(self.path).name}: {self.message}"
            if self.path
            else (f"{self.unit}: {self.message}")
        )

    def to_dict(self) -> dict[str, str]:
        return {"unit": self.unit, "file": self.path, "message": self.message}


# --- sidecars that cannot be read ---------------------------------------------------------


def invalid_sidecars(bids_dir: Path) -> dict[Path, str]:
    """JSON files of a BIDS dataset (outside derivatives/sourcedata/code) that are not
    valid JSON objects, with the reason: ``{path: "not valid JSON (line 1 column 2)"}``."""
    bids_dir = Path(bids_dir)
    bad: dict[Path, str] = {}
    skip = {"derivatives", "sourcedata", "code", "stimuli", "models"}
    for path in sorted(bids_dir.rglob("*.json")):
        rel = path.relative_to(bids_dir).parts
        if rel[0] in skip or any(p.startswith(".") for p in rel):
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            bad[path] = "sidecar is not UTF-8 text"
            continue
        except json.JSONDecodeError as exc:
            bad[path] = (
                f"sidecar is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
            )
            continue
        except OSError as exc:
            bad[path] = f"sidecar cannot be read ({exc.strerror or exc})"
            continue
        if not isinstance(value, dict):
            bad[path] = f"sidecar is JSON but not an object (a {type(value).__name__})"
    return bad


def ignore_patterns(bad: Iterable[Path], bids_dir: Path) -> list[re.Pattern]:
    """pybids ``ignore`` patterns that keep the ``bad`` files out of the index."""
    root = Path(bids_dir)
    return [re.compile(re.escape("/" + Path(p).relative_to(root).as_posix()) + "$") for p in bad]


def subject_of(path: Path, bids_dir: Path) -> str | None:
    """``01`` for ``BIDS/sub-01/...``; None for a file above the subject folders."""
    first = Path(path).relative_to(bids_dir).parts[0]
    return first[4:] if first.startswith("sub-") else None


def skip_invalid_sidecars(units: list, bad: Mapping[Path, str], bids_dir: Path):
    """Split ``units`` (``bids.SubjectInputs``) into those without a bad file (``bad``:
    {path: problem}, e.g. unreadable sidecars or the official validator's errors,
    ``validator.split_by_participant``) and one ``PetSynthError`` per bad file of a
    skipped unit, naming the file."""
    kept, errors = [], []
    for unit in units:
        hits = [p for p in bad if subject_of(p, bids_dir) in (unit.subject, None)]
        if unit.session:
            hits = [p for p in hits if "ses-" not in str(p) or f"ses-{unit.session}" in str(p)]
        if hits:
            errors.extend(
                PetSynthError(f"{unit.name} skipped: {bad[p]}", str(p)) for p in sorted(hits)
            )
        else:
            kept.append(unit)
    return kept, errors


# --- headers ---------------------------------------------------------------------------


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    dims = [(0, max(int(n) - 1, 0)) for n in shape[:3]]
    return np.array([[*c, 1.0] for c in product(*dims)]).T


def _max_displacement(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    corners = _corners(shape)
    return float(np.max(np.linalg.norm((a @ corners - b @ corners)[:3], axis=0)))


def _orthogonal(affine: np.ndarray) -> np.ndarray:
    """The rigid + zoom affine nearest to ``affine`` (polar decomposition, same zooms)."""
    rzs = affine[:3, :3]
    zooms = np.linalg.norm(rzs, axis=0)
    u, _, vt = np.linalg.svd(rzs / zooms)
    out = affine.copy()
    out[:3, :3] = (u @ vt) * zooms
    return out


def header_warnings(path: str | Path) -> list[str]:
    """Sheared affine and qform/sform disagreement of a NIfTI header, sized in mm (the
    largest displacement of an image corner); [] for a clean header."""
    img = nib.load(str(path))
    hdr = img.header
    out = []
    shape = img.shape[:3]
    affine = img.affine
    shear = _max_displacement(affine, _orthogonal(affine), shape)
    if shear > AFFINE_TOLERANCE_MM:
        out.append(
            f"sheared affine (up to {shear:.1f} mm from the nearest rotation at the image "
            "corners): tools that ignore shear place the image differently"
        )
    if isinstance(hdr, nib.Nifti1Header):
        q, q_code = hdr.get_qform(coded=True)
        s, s_code = hdr.get_sform(coded=True)
        if q is not None and s is not None and q_code > 0 and s_code > 0:
            diff = _max_displacement(q, s, shape)
            if diff > AFFINE_TOLERANCE_MM:
                out.append(
                    f"qform and sform disagree by up to {diff:.1f} mm; the sform is used "
                    "(other tools may use the qform)"
                )
    return out


# --- PET values and metadata -----------------------------------------------------------


def pet_value_warnings(path: str | Path, metadata: Mapping[str, Any]) -> list[str]:
    """Negative values and non-quantitative units of a PET series."""
    out = []
    data = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    finite = data[np.isfinite(data) & (data != 0)]
    if finite.size:
        neg = finite < 0
        p99 = float(np.percentile(finite, 99))
        if neg.mean() > NEGATIVE_FRACTION and finite.min() < -NEGATIVE_DEPTH * abs(p99):
            out.append(
                f"negative values in {100 * neg.mean():.1f} % of the nonzero voxels (min "
                f"{finite.min():.4g}, 99th percentile {p99:.4g}): scatter/randoms "
                "over-correction or a non-activity image; SUVR and Z maps may be biased"
            )
    units = str(metadata.get("Units", "")).strip()
    if not units:
        out.append("no Units in the sidecar: cannot tell whether the values are quantitative")
    elif units.lower().replace(" ", "") not in QUANTITATIVE_UNITS:
        out.append(
            f"Units '{units}' is not an activity concentration (Bq/mL, kBq/mL, SUV...): "
            "values are not quantitative"
        )
    return out


def missing_pet_fields(metadata: Mapping[str, Any]) -> list[str]:
    """The BIDS-required PET sidecar fields absent from ``metadata``."""
    return [k for k in PET_REQUIRED_FIELDS if k not in metadata]


def pet_metadata_warnings(pet_path: str | Path, metadata: Mapping[str, Any]) -> list[str]:
    """Missing sidecar, missing BIDS-required fields."""
    if not metadata:
        return [
            "no JSON sidecar (BIDS requires one for PET): tracer, units and frame timing "
            "are unknown"
        ]
    missing = missing_pet_fields(metadata)
    if missing:
        return [f"sidecar lacks {len(missing)} BIDS-required PET field(s): {', '.join(missing)}"]
    return []


def unit_warnings(unit) -> list[InputWarning]:
    """All named warnings of one ``bids.SubjectInputs`` (files already pass
    ``bids.check_image``)."""
    out = [InputWarning(unit.name, unit.t1w, m) for m in header_warnings(unit.t1w)]
    for pet in unit.pet:
        for message in (
            header_warnings(pet.path)
            + pet_metadata_warnings(pet.path, pet.metadata)
            + pet_value_warnings(pet.path, pet.metadata)
        ):
            out.append(InputWarning(unit.name, pet.path, message))
    return out


# --- the synthesis model against the input ---------------------------------------------


def is_phantom_dataset(bids_dir: Path) -> bool:
    """True when the dataset was written by ``petsynth-simulate``."""
    try:
        desc = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(
        isinstance(g, dict) and g.get("Name") == SIMULATOR for g in desc.get("GeneratedBy", [])
    )


def model_warnings(
    card: Mapping[str, Any],
    weights: Path | None,
    shipped: Path,
    bids_dir: Path,
    units: list,
    mni_resolution: int,
) -> list[InputWarning]:
    """Once per run: a shipped phantom-trained model (any weights in the folder of
    ``shipped``, the package's data folder) used on real data, and a model card whose
    training data differ from the input (grid voxel size, tracer)."""
    if not card or weights is None:
        return []
    out = []
    name = Path(weights).name
    is_shipped = Path(weights).resolve().parent == Path(shipped).resolve().parent
    if is_shipped and not is_phantom_dataset(bids_dir):
        out.append(
            InputWarning(
                "run",
                str(weights),
                "the pseudo-normal PET comes from the shipped model, trained on SIMULATED "
                "phantoms, not on real scans: on real heads it is a smooth template-like "
                "image, and Z maps against it are not clinically meaningful; train a model "
                "on your own controls (petsynth-train, docs/usage.md) and pass it with "
                "--model-weights",
            )
        )
    info = card.get("input", {})
    voxel = info.get("voxel_size_mm")
    if voxel is not None and abs(float(voxel) - float(mni_resolution)) > 1e-3:
        out.append(
            InputWarning(
                "run",
                str(weights),
                f"{name} was trained on a {float(voxel):g} mm grid; this run uses "
                f"--mni-resolution {mni_resolution}",
            )
        )
    tracer = str(card.get("training", {}).get("tracer") or info.get("tracer") or "FDG")
    for unit in units:
        for pet in unit.pet:
            used = str(pet.metadata.get("TracerName", "")).strip()
            if used and tracer.lower() not in used.lower():
                out.append(
                    InputWarning(
                        unit.name,
                        pet.path,
                        f"tracer {used}, but {name} was trained on {tracer} PET: the "
                        "pseudo-normal PET does not predict this tracer's uptake",
                    )
                )
    return out


# --- where the warnings go -------------------------------------------------------------


def log_warnings(warnings: Iterable[InputWarning]) -> None:
    """One ``WARNING`` log line per warning (file named)."""
    for w in warnings:
        LOGGER.warning("%s", w if not w.path else f"{w.unit}: {w.path}: {w.message}")


def save_warnings(warnings: list[InputWarning], path: Path, run_id: str) -> Path:
    """Write a participant's warnings (JSON: ``RunId``, ``Warnings`` list)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"RunId": run_id, "Warnings": [w.to_dict() for w in warnings]}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_warnings(path: Path) -> list[str]:
    """The saved warnings as report lines (``unit: file: message``); [] when absent."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [
        str(InputWarning(w.get("unit", ""), w.get("file", ""), w.get("message", "")))
        for w in data.get("Warnings", [])
        if isinstance(w, dict)
    ]


def annotate_sidecars(folder: Path, warnings: list[InputWarning]) -> int:
    """Add ``InputWarnings`` (the message lines) to the JSON sidecars of the stat maps,
    cluster tables and pseudo-normal PET under ``folder`` (a participant's derivatives);
    returns how many sidecars were updated."""
    lines = [str(w) for w in warnings]
    n = 0
    for path in L.warned_sidecars(folder):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if lines:
            data["InputWarnings"] = lines
        else:
            data.pop("InputWarnings", None)
        path.write_text(json.dumps(data, indent=2) + "\n")
        n += 1
    return n


__all__ = [
    "InputWarning",
    "PET_REQUIRED_FIELDS",
    "annotate_sidecars",
    "header_warnings",
    "ignore_patterns",
    "invalid_sidecars",
    "is_phantom_dataset",
    "log_warnings",
    "missing_pet_fields",
    "model_warnings",
    "pet_metadata_warnings",
    "pet_value_warnings",
    "read_warnings",
    "save_warnings",
    "skip_invalid_sidecars",
    "unit_warnings",
]
