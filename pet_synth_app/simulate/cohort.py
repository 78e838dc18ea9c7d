"""Write a simulated BIDS dataset (raw T1w + FDG PET) with ground truth derivatives.

Layout (``<L>`` = subject label, ``c01``... for controls, ``p01``... for patients)::

    OUT/dataset_description.json, README, participants.tsv, participants.json
    OUT/sub-<L>/anat/sub-<L>_T1w.nii.gz (+ .json)
    OUT/sub-<L>/pet/sub-<L>_trc-FDG_pet.nii.gz (+ .json)        (not for T1w-only controls)
    OUT/derivatives/truth/dataset_description.json, lesions.tsv, lesions.json
    OUT/derivatives/truth/sub-<L>/anat/sub-<L>_desc-brain_mask.nii.gz
    OUT/derivatives/truth/sub-<L>/anat/sub-<L>_label-{GM,WM,CSF}_probseg.nii.gz
    OUT/derivatives/truth/sub-<L>/anat/sub-<L>_desc-lesion_mask.nii.gz  (patients; 1..n)
    OUT/derivatives/truth/sub-<L>/sub-<L>_geometry.json
    OUT/derivatives/truth/sub-<L>/sub-<L>_desc-nonlinear_xfm.nii.gz

All truth images are on the subject's native T1w grid. The geometry keys are documented
in ``GEOMETRY_KEYS``. Every subject has its own random stream (seed, group, index), so
adding patients does not change the controls.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..layout import truth_filename
from .phantom import (
    PHANTOM_MODEL,
    T1W_ORIENTATIONS,
    TEMPLATE_SPACE,
    PhantomSubject,
    simulate_subject,
)

TRUTH_DIR = Path("derivatives") / "truth"
GENERATOR = "petsynth-simulate"
FDG_MOLECULAR_WEIGHT = 181.15  # g/mol
FDG_MOLAR_ACTIVITY = 200.0  # GBq/umol

GEOMETRY_KEYS: dict[str, str] = {
    "participant_id": "sub-<label>",
    "group": "control or patient",
    "space": "template space name (MNI152NLin2009aSym)",
    "convention": "text summary of the conventions below",
    "mni_from_t1w": "4x4: T1w world mm -> affinely aligned MNI mm y",
    "t1w_from_mni": "4x4 inverse of mni_from_t1w (rigid x per-axis scale)",
    "t1w_from_mni_rotation_deg / _translation_mm / _scales": "its parameters",
    "warp_file": "displacement u (mm) on y: x_mni = y + u(y); 4D (i,j,k,3), trilinear",
    "warp_max_displacement_mm": "max |u|",
    "t1w_orientation / t1w_shape / t1w_voxel_size_mm / t1w_affine": "native T1w grid",
    "brain_volume_ml": "volume of the truth brain mask",
    "pet_from_t1w": "4x4 rigid: T1w world mm -> PET world mm (reference frame 0)",
    "t1w_from_pet": "4x4 inverse: what a PET->T1w coregistration should estimate",
    "pet_from_t1w_rotation_deg / _translation_mm / _center_mm": "its parameters",
    "pet_frames_from_t1w": "list of 4x4, one per PET frame (frame motion included)",
    "pet_shape / pet_voxel_size_mm / pet_orientation / pet_affine": "PET grid",
    "pet_scanner / pet_psf_fwhm_mm / pet_noise_fraction": "PET simulation settings",
    "pet_fov_z_mm / pet_fov_mm / pet_fov_brain_cut_mm": (
        "subjects whose PET field of view cuts the brain: the PET world z range kept (0 "
        "outside in every frame), its length and the brain's inferior extent left out (mm)"
    ),
    "template_resolution_mm": "work grid resolution (1 or 2 mm)",
    "lesions": "per lesion: label, center_mni, center_t1w, radius_mm, volume_ml, ...",
    "anatomy / uptake": "random T1w contrast, GM atrophy and FDG uptake parameters",
    "age": "age (years) of participants.tsv that drives the anatomy and uptake below",
    "anatomy.thickness_global / thickness_regional": "cortical thickness factor vs template",
    "anatomy.ventricle_mm": "outward growth of the lateral ventricle walls (mm)",
    "uptake.age_uptake_decline": "fractional frontal/cingulate/insular/calcarine GM decline",
    "gm_volume_ml / wm_volume_ml / csf_volume_ml / ventricle_volume_ml": (
        "tissue volumes (work grid x affine Jacobian); ventricles: CSF within 12 mm of the "
        "Harvard-Oxford lateral ventricles"
    ),
}


@dataclass
class CohortConfig:
    """What to simulate. ``None`` counts take the documented defaults."""

    n_controls: int = 4
    n_patients: int = 4
    seed: int = 0
    voxel_size: float = 1.0
    n_t1w_only: int | None = None
    n_4d: int | None = None
    lesion_loss: tuple[float, float] = (0.10, 0.30)
    lesion_volume_ml: tuple[float, float] = (1.0, 20.0)
    control_ages: tuple[int, int] = (20, 85)
    patient_ages: tuple[int, int] = (50, 85)
    n_fov_cut: int | None = None
    fov_cut_mm: tuple[float, float] = (10.0, 20.0)

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message on inconsistent settings."""
        if self.n_controls < 0 or self.n_patients < 0:
            raise ValueError("--n-controls and --n-patients must be >= 0")
        if self.n_controls + self.n_patients < 1:
            raise ValueError("the cohort needs at least one subject")
        if self.n_controls > 999 or self.n_patients > 999:
            raise ValueError("at most 999 controls and 999 patients")
        if self.seed < 0:
            raise ValueError("--seed must be >= 0")
        if not 0.5 <= self.voxel_size <= 4.0:
            raise ValueError("--voxel-size must be between 0.5 and 4 mm")
        if self.n_t1w_only is not None and not 0 <= self.n_t1w_only <= self.n_controls:
            raise ValueError("--n-t1w-only must be between 0 and --n-controls")
        n_pet = self.n_controls + self.n_patients - self.t1w_only_count()
        if self.n_4d is not None and not 0 <= self.n_4d <= n_pet:
            raise ValueError(f"--n-4d must be between 0 and the {n_pet} subjects with PET")
        if self.n_fov_cut is not None and not 0 <= self.n_fov_cut <= self.n_patients:
            raise ValueError("--n-fov-cut must be between 0 and --n-patients")
        lo, hi = self.fov_cut_mm
        if not 0.0 <= lo <= hi <= 120.0:
            raise ValueError("--fov-cut-mm needs 0 <= LOW <= HIGH <= 120 (mm)")
        lo, hi = self.lesion_loss
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError("--lesion-loss needs 0 < LOW <= HIGH < 1 (fraction of uptake)")
        lo, hi = self.lesion_volume_ml
        if not 0.0 < lo <= hi <= 60.0:
            raise ValueError("--lesion-volume-ml needs 0 < LOW <= HIGH <= 60 (ml)")
        for option, (lo, hi) in (
            ("--control-ages", self.control_ages),
            ("--patient-ages", self.patient_ages),
        ):
            if not 18 <= lo <= hi <= 100:
                raise ValueError(f"{option} needs 18 <= LOW <= HIGH <= 100 (years)")

    def fov_cut_count(self) -> int:
        """Patients whose PET field of view cuts the brain (default: one in four
        patients, rounded down)."""
        return self.n_patients // 4 if self.n_fov_cut is None else self.n_fov_cut

    def t1w_only_count(self) -> int:
        """Controls without PET (default: one in four controls, rounded down)."""
        return self.n_controls // 4 if self.n_t1w_only is None else self.n_t1w_only


@dataclass(frozen=True)
class SubjectPlan:
    """One subject of the cohort: label, group and acquisition choices."""

    label: str
    group: str
    index: int
    position: int
    with_pet: bool
    is_4d: bool
    orientation: str
    fov_cut: bool = False

    @property
    def participant_id(self) -> str:
        """BIDS participant id (``sub-<label>``)."""
        return f"sub-{self.label}"

    def rng(self, seed: int, stream: int = 0) -> np.random.Generator:
        """Deterministic random stream of this subject (0 = images, 1 = demographics)."""
        group = 0 if self.group == "control" else 1
        return np.random.default_rng([seed, group, self.index, stream])


def plan_cohort(config: CohortConfig) -> list[SubjectPlan]:
    """Subjects in write order: controls (the last ``n_t1w_only`` without PET), patients.

    4D PET goes to evenly spread PET subjects (default one in three, rounded down), a
    PET field of view that cuts the brain to evenly spread patients (default one in
    four, the last ones first). T1w voxel orders cycle through ``T1W_ORIENTATIONS`` (the
    first subject is LAS).
    """
    config.validate()
    width = max(2, len(str(max(config.n_controls, config.n_patients))))
    n_t1_only = config.t1w_only_count()
    members = [("control", i) for i in range(config.n_controls)] + [
        ("patient", i) for i in range(config.n_patients)
    ]
    with_pet = [
        not (group == "control" and i >= config.n_controls - n_t1_only) for group, i in members
    ]
    n_pet = sum(with_pet)
    n_4d = n_pet // 3 if config.n_4d is None else config.n_4d
    pet_rank = np.cumsum(with_pet) - 1
    n_cut = config.fov_cut_count()
    plans = []
    for pos, ((group, i), pet) in enumerate(zip(members, with_pet, strict=True)):
        r = int(pet_rank[pos])
        is_4d = pet and n_4d > 0 and ((r + 1) * n_4d) // n_pet > (r * n_4d) // n_pet
        n_pat = config.n_patients
        cut = (
            group == "patient" and n_cut > 0 and ((i + 1) * n_cut) // n_pat > (i * n_cut) // n_pat
        )
        plans.append(
            SubjectPlan(
                label=f"{group[0]}{i + 1:0{width}d}",
                group=group,
                index=i,
                position=pos,
                with_pet=pet,
                is_4d=is_4d,
                orientation=T1W_ORIENTATIONS[pos % len(T1W_ORIENTATIONS)],
                fov_cut=cut,
            )
        )
    return plans


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_tsv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(row[c]) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _save(img: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite``.

    With ``overwrite``, only a previous petsynth-simulate dataset is replaced (its
    ``sub-*`` folders, ``derivatives/truth`` and top-level files are removed); other
    content of ``out_dir`` is left alone.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"output directory {out_dir} is not empty (use --overwrite)")
        desc = out_dir / "dataset_description.json"
        try:
            names = [g.get("Name") for g in json.loads(desc.read_text()).get("GeneratedBy", [])]
        except (OSError, ValueError, AttributeError):
            names = []
        if GENERATOR not in names:
            raise ValueError(f"refusing to overwrite {out_dir}: it is not a {GENERATOR} dataset")
        for path in out_dir.glob("sub-*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        shutil.rmtree(out_dir / TRUTH_DIR, ignore_errors=True)
        for name in (
            "dataset_description.json",
            "README",
            "participants.tsv",
            "participants.json",
        ):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _pet_sidecar(subject: PhantomSubject, rng: np.random.Generator) -> dict:
    scanner = subject.pet_scanner
    assert scanner is not None and subject.pet is not None
    activity = float(np.round(rng.uniform(150.0, 250.0), 1))  # MBq
    specific = FDG_MOLAR_ACTIVITY / FDG_MOLECULAR_WEIGHT  # GBq/ug
    minutes = int(rng.integers(0, 24)) * 15
    attenuation = "MR-based" if "MR" in scanner.name else "CT-based"
    return {
        "Modality": "PET",
        "Manufacturer": "PetSynth",
        "ManufacturersModelName": scanner.name,
        "InstitutionName": "PetSynth digital phantom",
        "BodyPart": "Brain",
        "Units": "Bq/mL",
        "TracerName": "FDG",
        "TracerRadionuclide": "F18",
        "TracerMolecularWeight": FDG_MOLECULAR_WEIGHT,
        "TracerMolecularWeightUnits": "g/mol",
        "PharmaceuticalName": "fludeoxyglucose (18F)",
        "InjectedRadioactivity": activity,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": round(activity / 1000.0 / specific, 4),
        "InjectedMassUnits": "ug",
        "SpecificRadioactivity": round(specific, 4),
        "SpecificRadioactivityUnits": "GBq/ug",
        "MolarActivity": FDG_MOLAR_ACTIVITY,
        "MolarActivityUnits": "GBq/umol",
        "ModeOfAdministration": "bolus",
        "TimeZero": f"{8 + minutes // 60:02d}:{minutes % 60:02d}:00",
        "InjectionStart": 0,
        "ScanStart": subject.frame_times_start[0],
        "FrameTimesStart": subject.frame_times_start,
        "FrameDuration": subject.frame_duration,
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMatrixSize": list(subject.pet.shape),
        "ImageVoxelSize": list(scanner.zooms),
        "ReconMethodName": scanner.recon_method,
        "ReconMethodParameterLabels": list(scanner.recon_labels),
        "ReconMethodParameterUnits": ["none"] * len(scanner.recon_labels),
        "ReconMethodParameterValues": list(scanner.recon_values),
        "ReconFilterType": "Gaussian",
        "ReconFilterSize": 3.0,
        "AttenuationCorrection": attenuation,
        "ScatterCorrectionMethod": "single scatter simulation",
        "RandomsCorrectionMethod": "delayed event subtraction",
    }


def _t1w_sidecar(voxel_size: float) -> dict:
    return {
        "Modality": "MR",
        "Manufacturer": "PetSynth",
        "ManufacturersModelName": f"digital phantom ({TEMPLATE_SPACE} derived)",
        "MagneticFieldStrength": 3,
        "MRAcquisitionType": "3D",
        "ScanningSequence": "GR\\IR",
        "SequenceName": "MPRAGE-like (simulated)",
        "RepetitionTime": 2.3,
        "EchoTime": 0.00298,
        "InversionTime": 0.9,
        "FlipAngle": 9,
        "SliceThickness": voxel_size,
    }


def _lesion_row(participant: str, lesion: Any) -> dict[str, Any]:
    return {
        "participant_id": participant,
        "lesion": lesion.label,
        "hemisphere": lesion.hemisphere,
        "lobe": lesion.lobe,
        "region": lesion.region,
        **{f"center_mni_{a}": round(v, 2) for a, v in zip("xyz", lesion.center_mni, strict=True)},
        **{f"center_t1w_{a}": round(v, 2) for a, v in zip("xyz", lesion.center_t1w, strict=True)},
        "volume_ml": round(lesion.volume_ml, 3),
        "uptake_loss": round(lesion.uptake_loss, 4),
        "mask_volume_ml": round(lesion.mask_volume_ml, 3),
    }


LESION_COLUMNS = [
    "participant_id",
    "lesion",
    "hemisphere",
    "lobe",
    "region",
    "center_mni_x",
    "center_mni_y",
    "center_mni_z",
    "center_t1w_x",
    "center_t1w_y",
    "center_t1w_z",
    "volume_ml",
    "uptake_loss",
    "mask_volume_ml",
]


def demographics(plan: SubjectPlan, config: CohortConfig) -> dict[str, Any]:
    """Age (integer years, uniform over the group's inclusive range) and sex of a planned
    subject, from its demographics stream (1)."""
    demo = plan.rng(config.seed, 1)
    low, high = config.patient_ages if plan.group == "patient" else config.control_ages
    age = int(demo.integers(low, high + 1))
    return {"age": age, "sex": "F" if demo.random() < 0.5 else "M"}


def write_subject(out_dir: Path, plan: SubjectPlan, config: CohortConfig) -> PhantomSubject:
    """Simulate one planned subject and write its raw files and truth."""
    age = demographics(plan, config)["age"]
    rng = plan.rng(config.seed)
    n_lesions = int(rng.integers(1, 3)) if plan.group == "patient" else 0
    n_frames = int(rng.integers(3, 5)) if plan.is_4d else 1
    subject = simulate_subject(
        rng,
        voxel_size=config.voxel_size,
        orientation=plan.orientation,
        n_lesions=n_lesions,
        lesion_loss=config.lesion_loss,
        lesion_volume_ml=config.lesion_volume_ml,
        with_pet=plan.with_pet,
        n_frames=n_frames,
        age=float(age),
        pet_fov_cut_mm=(
            float(plan.rng(config.seed, 3).uniform(*config.fov_cut_mm)) if plan.fov_cut else None
        ),
    )
    sub = plan.participant_id
    anat = out_dir / sub / "anat"
    _save(subject.t1w, anat / f"{sub}_T1w.nii.gz")
    _write_json(anat / f"{sub}_T1w.json", _t1w_sidecar(config.voxel_size))
    if subject.pet is not None:
        pet = out_dir / sub / "pet"
        _save(subject.pet, pet / f"{sub}_trc-FDG_pet.nii.gz")
        _write_json(
            pet / f"{sub}_trc-FDG_pet.json", _pet_sidecar(subject, plan.rng(config.seed, 2))
        )

    truth = out_dir / TRUTH_DIR / sub
    _save(subject.brain_mask, truth / "anat" / truth_filename(sub, "brain_mask"))
    for name, img in (("GM", subject.gm), ("WM", subject.wm), ("CSF", subject.csf)):
        _save(img, truth / "anat" / truth_filename(sub, "probseg", name))
    if subject.lesion_mask is not None:
        _save(subject.lesion_mask, truth / "anat" / truth_filename(sub, "lesion_mask"))
    warp_name = truth_filename(sub, "warp")
    _save(subject.warp.to_image(), truth / warp_name)
    geometry = {
        "participant_id": sub,
        "group": plan.group,
        "age": age,
        **subject.geometry,
        "warp_file": warp_name,
        "lesions": [
            {
                "label": les.label,
                "center_mni": list(les.center_mni),
                "center_t1w": list(les.center_t1w),
                "radius_mm": les.radius_mm,
                "edge_mm": les.edge_mm,
                "axes": list(les.axes),
                "rotation": np.asarray(les.rotation).tolist(),
                "uptake_loss": les.uptake_loss,
                "target_volume_ml": les.target_volume_ml,
                "volume_ml": les.volume_ml,
                "mask_volume_ml": les.mask_volume_ml,
                "hemisphere": les.hemisphere,
                "lobe": les.lobe,
                "region": les.region,
            }
            for les in subject.lesions
        ],
        "anatomy": subject.anatomy,
        "uptake": subject.uptake,
    }
    _write_json(truth / f"{sub}_geometry.json", geometry)
    return subject


def cohort_name(config: CohortConfig) -> str:
    """The dataset ``Name``: what fixes a control's images (seed, voxel size, phantom
    model, control ages when not the default), so that ``petsynth group`` tells a model's
    training cohort from another (``synthesis.weights.controls_in_training``); cohorts
    that differ only in size share their controls and their Name."""
    default = config.control_ages == CohortConfig.control_ages
    ages = "" if default else ", ages {}-{}".format(*config.control_ages)
    return (
        f"PetSynth phantom cohort (seed {config.seed}, {config.voxel_size:g} mm{ages}, "
        f"phantom model {PHANTOM_MODEL})"
    )


def _readme(config: CohortConfig, plans: list[SubjectPlan]) -> str:
    n_pet = sum(p.with_pet for p in plans)
    return f"""PetSynth phantom cohort
=======================

Simulated with {GENERATOR} {__version__} (seed {config.seed}). Not real data.

- {config.n_controls} controls and {config.n_patients} patients; {n_pet} subjects have FDG
  PET ({sum(p.is_4d for p in plans)} of them 4D with inter-frame motion).
- Age (participants.tsv: controls {config.control_ages[0]}-{config.control_ages[1]},
  patients {config.patient_ages[0]}-{config.patient_ages[1]} years) drives cortical thinning
  (pial boundary moved inward, sulci widen), lateral ventricle enlargement and, after 60,
  a 7 %/decade FDG decline in frontal, cingulate, insular and calcarine cortex.
- T1w: MNI152NLin2009aSym template anatomy with a synthetic skull and scalp, smooth
  subject-specific regional cortical atrophy (0-45 % of the cortical thickness lost), a
  random rigid + scale transform and a smooth warp, bias field and Rician noise, stored
  in its own native voxel order at {config.voxel_size} mm.
- PET: FDG-like uptake (GM with regional metabolic variation, WM, CSF ~15 % of GM, scalp)
  on the subject's own tissue maps (partial volume), PSF blur, noise, rigid misalignment
  to the T1w, Bq/mL. {sum(p.fov_cut for p in plans)} patient(s) have a PET field of view
  that leaves out {config.fov_cut_mm[0]:g}-{config.fov_cut_mm[1]:g} mm of the brain's
  inferior end (0 outside it; truth: pet_fov_* in the geometry files).
- Patients have 1-2 cortical hypometabolic lesions ({config.lesion_loss[0]:.0%}-
  {config.lesion_loss[1]:.0%} uptake loss, {config.lesion_volume_ml[0]}-
  {config.lesion_volume_ml[1]} ml GM-weighted volume).

Ground truth (brain mask, GM/WM/CSF volume fractions and lesion masks on the T1w grid, the
true geometry, and derivatives/truth/lesions.tsv) is under derivatives/truth/.
"""


def write_cohort(
    out_dir: str | Path,
    config: CohortConfig,
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[SubjectPlan]:
    """Simulate the whole cohort into ``out_dir`` (BIDS raw + derivatives/truth)."""
    out = Path(out_dir)
    plans = plan_cohort(config)
    prepare_output(out, overwrite)
    generated_by = [
        {
            "Name": GENERATOR,
            "Version": __version__,
            "Description": "PetSynth digital phantom cohort generator",
        }
    ]
    _write_json(
        out / "dataset_description.json",
        {
            "Name": cohort_name(config),
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["PetSynth"],
            "GeneratedBy": generated_by,
        },
    )
    (out / "README").write_text(_readme(config, plans))
    rows = []
    for plan in plans:
        rows.append(
            {
                "participant_id": plan.participant_id,
                "group": plan.group,
                **demographics(plan, config),
            }
        )
    _write_tsv(out / "participants.tsv", ["participant_id", "group", "age", "sex"], rows)
    _write_json(
        out / "participants.json",
        {
            "participant_id": {"Description": "Unique participant label"},
            "group": {
                "Description": "Diagnostic group of the simulated subject",
                "Levels": {"control": "healthy control", "patient": "hypometabolic lesions"},
            },
            "age": {
                "Description": f"Age at scan (controls uniform {config.control_ages[0]}-"
                f"{config.control_ages[1]}, patients {config.patient_ages[0]}-"
                f"{config.patient_ages[1]}). In the phantom it drives cortical thinning, "
                "lateral ventricle enlargement and the FDG decline in frontal, cingulate, "
                "insular and calcarine cortex after 60 (truth: "
                "derivatives/truth/sub-*/sub-*_geometry.json, anatomy and uptake)",
                "Units": "year",
            },
            "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        },
    )
    truth = out / TRUTH_DIR
    _write_json(
        truth / "dataset_description.json",
        {
            "Name": "PetSynth phantom ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": generated_by,
        },
    )
    lesion_rows: list[dict[str, Any]] = []
    for plan in plans:
        start = time.perf_counter()
        subject = write_subject(out, plan, config)
        lesion_rows += [_lesion_row(plan.participant_id, les) for les in subject.lesions]
        if progress is not None:
            kind = (
                "T1w only"
                if not plan.with_pet
                else ("T1w + 4D PET" if plan.is_4d else "T1w + PET")
            ) + (", PET field of view cuts the brain" if plan.fov_cut else "")
            progress(
                f"{plan.participant_id} ({plan.group}, {kind}, {plan.orientation}, "
                f"{len(subject.lesions)} lesions): {time.perf_counter() - start:.1f} s"
            )
        del subject
    _write_tsv(truth / "lesions.tsv", LESION_COLUMNS, lesion_rows)
    _write_json(
        truth / "lesions.json",
        {
            "lesion": {"Description": "Lesion label in the subject's lesion mask"},
            "hemisphere": {"Description": "L (x <= -1 mm), R (x >= 1 mm) or M, MNI centre"},
            "lobe": {"Description": "Lobe of the centre (analysis.atlas.lobe_from_region)"},
            "region": {"Description": "Harvard-Oxford (else AAL) label of the centre"},
            "center_mni_x": {"Description": "Lesion centre, MNI152NLin2009aSym", "Units": "mm"},
            "center_t1w_x": {
                "Description": "Lesion centre, T1w scanner world (RAS)",
                "Units": "mm",
            },
            "volume_ml": {
                "Description": "GM-weighted volume: sum of lesion profile x GM "
                "fraction over the T1w grid",
                "Units": "ml",
            },
            "uptake_loss": {"Description": "Peak fractional GM uptake loss (before blur)"},
            "mask_volume_ml": {
                "Description": "Volume of the truth lesion mask (profile >= 0.5 and GM >= 0.3)",
                "Units": "ml",
            },
        },
    )
    return plans
