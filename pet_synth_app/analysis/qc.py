"""Image-based quality control of the spatial steps: T1w-to-template registration and
PET-to-T1w coregistration.

Pure functions over numpy arrays / nibabel images on one common grid, plus
``participant_qc`` that reads a participant's PetSynth derivatives. Every metric is a
float; NaN means "cannot be computed" (empty mask, constant image).

Registration (T1w in ``MNI152NLin2009aSym`` vs the template):

- ``mni_ncc``: normalized cross-correlation (Pearson r) of the participant's T1w in MNI
  space with the MNI T1w template, inside the template brain mask. Well-registered brains
  reach ~0.95; a misregistered brain puts WM on GM/CSF and r falls quickly.
- ``mni_dice``: Dice of the participant's brain mask warped to MNI space with the template
  brain mask. It also reflects the quality of the brain extraction.

Coregistration (PET in T1w space vs the T1w):

- ``coreg_gm_corr``: Pearson r of the PET with the T1w gray-matter probability inside the
  T1w brain mask. FDG uptake follows gray matter, so r is highest when the PET is aligned
  and drops as soon as it is shifted or rotated by a few mm.
- ``coreg_gm_wm_ratio``: mean PET in GM (p > 0.5) over mean PET in WM (p > 0.5). In
  SUVR-normalized FDG the ratio is ~1.3-1.5 when aligned (phantom); misalignment mixes
  the tissues and pulls it towards 1.

Thresholds (``THRESHOLDS``) were set on the 28-participant phantom cohort processed at
2 mm (min-max over participants; PET shifted along x or rotated about the x axis in the
T1w space, T1w shifted/rotated in MNI space, linear interpolation):

==================  ===========  ===========  ===========  ===========  ===========
metric              aligned      3 mm shift   5 mm shift   10 mm shift  8 deg rot.
==================  ===========  ===========  ===========  ===========  ===========
coreg_gm_corr       0.653-0.720  0.503-0.601  0.329-0.482  0.051-0.254  0.403-0.463
coreg_gm_wm_ratio   1.316-1.464  1.235-1.350  1.146-1.262  0.960-1.115  1.181-1.280
==================  ===========  ===========  ===========  ===========  ===========

Registration checks were recalibrated on real heads (issue 16): on the five real T1w of
``../shared/realdata`` registered by PetSynth, ``mni_ncc`` is only 0.72-0.85 (phantoms
0.91-0.95) while a 5-degree rotation of a phantom still gives 0.72, so no ``mni_ncc``
threshold separates a registered real head from a misregistered phantom. The check that
does is ``mni_fit_margin`` (``fit_margin``): ``mni_ncc`` minus its best value after
moving the T1w 4 mm or 4 degrees along or about any axis. A registration at its optimum
has a positive margin whatever the contrast; a T1w misregistered by 5 mm or 5 degrees
has a negative one. ``mni_ncc >= 0.5`` and ``mni_dice >= 0.94`` remain as checks of
gross failures (no false alarm on the real heads or the phantoms). ``t1w_wm_gm_ratio``
(WM/GM intensity of the T1w in MNI space, template tissue maps) is 1.27-1.57 for real and
phantom T1w and < 0.9 for a PET in MNI space scored as a T1w: below 1.1 the "T1w" does not
look like one. Table and command: docs/benchmarks.md, "Reports and QC".

Thresholds are lenient on purpose and may need tuning per site. A value below a threshold
(compared at the ``DIGITS`` decimals shown) produces a warning in the reports and the final
log (``runner.summarize_run``), and exit code 3 with ``--qc-fail-exit``,
never an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import layout as L
from ..config import MIN_BRAIN_COVERAGE

LOGGER = logging.getLogger("petsynth")

THRESHOLDS: dict[str, float] = {
    "mni_ncc": 0.50,
    "mni_fit_margin": 0.0,
    "mni_dice": 0.94,
    "coreg_gm_corr": 0.50,
    "coreg_gm_wm_ratio": 1.10,
    "t1w_wm_gm_ratio": 1.10,
    "pet_brain_coverage": MIN_BRAIN_COVERAGE,
}
"""Minimum acceptable value of each QC metric (lower = warning); see the module doc."""

QC_DESCRIPTIONS: dict[str, str] = {
    "mni_ncc": "correlation of the T1w in MNI space with the MNI template (template brain mask)",
    "mni_fit_margin": "mni_ncc minus its best value after moving the T1w 4 mm or 4 degrees "
    "along or about any axis (< 0: the T1w fits the template better elsewhere)",
    "mni_dice": "Dice of the warped brain mask with the MNI template brain mask",
    "coreg_gm_corr": "correlation of the PET (T1w space) with the GM probability (brain mask)",
    "coreg_gm_wm_ratio": "PET GM/WM uptake ratio in T1w space (GM, WM probability > 0.5)",
    "t1w_wm_gm_ratio": "T1w WM/GM intensity ratio in MNI space (template WM, GM "
    "probability > 0.5): a T1w has brighter WM than GM, a PET the reverse",
    "pet_brain_coverage": "fraction of the brain mask (MNI) inside the PET field of view "
    "(voxels with data in every frame); no finding is possible outside it",
}
"""One-line description of each metric, for report tables."""

DIGITS = 3
"""Decimals shown for QC values; a value is compared with its threshold as shown."""

TISSUE_THRESHOLD = 0.5
"""Probability above which a voxel counts as GM or WM for ``gm_wm_ratio``."""


def _array(image: Any) -> np.ndarray:
    data = np.asanyarray(image.dataobj) if hasattr(image, "dataobj") else np.asarray(image)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if np.isfinite(data).all():  # one pass; nan_to_num copies and scans three times
        return data
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _array(mask) > 0
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return m


def dice(a: Any, b: Any) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two masks (nonzero = inside); NaN if both empty."""
    a_b, b_b = _array(a) > 0, _array(b) > 0
    if a_b.shape != b_b.shape:
        raise ValueError(f"shape mismatch: {a_b.shape} vs {b_b.shape}")
    total = int(a_b.sum() + b_b.sum())
    return float("nan") if total == 0 else 2.0 * float(np.sum(a_b & b_b)) / total


def correlation(a: Any, b: Any, mask: Any = None) -> float:
    """Pearson correlation (normalized cross-correlation) of two images inside ``mask``.

    NaN when the mask holds fewer than 3 voxels or either image is constant there.
    """
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    m = _mask(mask, x.shape)
    if m.sum() < 3:
        return float("nan")
    xv, yv = x[m] - x[m].mean(), y[m] - y[m].mean()
    denom = float(np.sqrt(np.dot(xv, xv) * np.dot(yv, yv)))
    return float("nan") if denom == 0 else float(np.dot(xv, yv) / denom)


def gm_wm_ratio(pet: Any, gm: Any, wm: Any, threshold: float = TISSUE_THRESHOLD) -> float:
    """Mean PET where GM probability > ``threshold`` over mean PET where WM > ``threshold``."""
    p, g, w = _array(pet), _array(gm), _array(wm)
    if not (p.shape == g.shape == w.shape):
        raise ValueError(f"shape mismatch: {p.shape}, {g.shape}, {w.shape}")
    gm_m, wm_m = g > threshold, w > threshold
    if not gm_m.any() or not wm_m.any():
        return float("nan")
    wm_mean = float(p[wm_m].mean())
    return float("nan") if wm_mean == 0 else float(p[gm_m].mean()) / wm_mean


PROBE_MM = 4.0
"""Shift (mm) of the ``mni_fit_margin`` probes."""
PROBE_DEG = 4.0
"""Rotation (degrees, about the template brain's centre) of the ``mni_fit_margin`` probes."""


def rotation_matrix(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation by ``degrees`` about voxel/world axis ``axis`` (0, 1 or 2)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def fit_margin(
    t1w_mni: Any,
    template: Any,
    template_mask: Any,
    zoom_mm: float,
    step_mm: float = PROBE_MM,
    step_deg: float = PROBE_DEG,
) -> float:
    """``mni_fit_margin``: the correlation of the T1w with the template (template mask)
    minus the best correlation after moving the T1w by ``step_mm`` along, or rotating it
    by ``step_deg`` about, each axis (12 probes; voxel size ``zoom_mm``). A registration
    at its optimum has a positive margin whatever the image contrast (real heads correlate
    less with the template than phantoms, so ``mni_ncc`` alone cannot separate them); a
    margin < 0 means the T1w would fit the template better a few mm or degrees away."""
    from scipy import ndimage as ndi

    x, tpl = _array(t1w_mni), _array(template)
    m = _mask(template_mask, x.shape)
    if m.sum() < 3:
        return float("nan")
    base = correlation(x, tpl, m)
    centre = np.array(ndi.center_of_mass(m))
    best = -np.inf
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.zeros(3)
            shift[axis] = sign * step_mm / zoom_mm
            moved = ndi.shift(x, shift, order=1, mode="constant")
            best = max(best, correlation(moved, tpl, m))
            rot = rotation_matrix(axis, sign * step_deg).T
            moved = ndi.affine_transform(
                x, rot, offset=centre - rot @ centre, order=1, mode="constant"
            )
            best = max(best, correlation(moved, tpl, m))
    return float(base - best)


def registration_quality(
    t1w_mni: Any,
    template: Any,
    template_mask: Any,
    brain_mask_mni: Any = None,
    zoom_mm: float | None = None,
) -> dict[str, float]:
    """``mni_ncc``, ``mni_dice`` and (with the voxel size ``zoom_mm``) ``mni_fit_margin``
    of a T1w in template space (all on the template grid).

    ``brain_mask_mni``: the participant's brain mask in template space (``mni_dice`` is NaN
    without it).
    """
    out = {"mni_ncc": correlation(t1w_mni, template, template_mask)}
    out["mni_fit_margin"] = (
        float("nan") if zoom_mm is None else fit_margin(t1w_mni, template, template_mask, zoom_mm)
    )
    out["mni_dice"] = (
        float("nan") if brain_mask_mni is None else dice(brain_mask_mni, template_mask)
    )
    return out


def coregistration_quality(
    pet_t1w: Any, gm: Any, brain_mask: Any = None, wm: Any = None
) -> dict[str, float]:
    """``coreg_gm_corr`` and ``coreg_gm_wm_ratio`` of a PET resampled to the T1w grid.

    ``gm``/``wm``: tissue probability maps on the T1w grid; ``brain_mask``: T1w brain mask
    (whole image if None). ``coreg_gm_wm_ratio`` is NaN without ``wm``.
    """
    pet = _array(pet_t1w)
    if pet.ndim == 4:
        pet = pet.mean(axis=3)
    out = {"coreg_gm_corr": correlation(pet, gm, brain_mask)}
    out["coreg_gm_wm_ratio"] = float("nan") if wm is None else gm_wm_ratio(pet, gm, wm)
    return out


def below(value: Any, low: float) -> bool:
    """True when ``value``, rounded to the ``DIGITS`` shown in reports and logs, is below
    ``low`` (a value shown as 0.950 passes ">= 0.95"); False for None and NaN."""
    if value is None or not np.isfinite(value):
        return False
    return round(float(value), DIGITS) < low


def _what(key: str) -> str:
    if key.startswith("mni"):
        return "possible poor registration to MNI"
    if key.startswith("t1w"):
        return "the T1w does not look like a T1w (a PET or another contrast given as T1w?)"
    if key == "pet_brain_coverage":
        return "the PET field of view misses part of the brain"
    return "possible poor PET-to-T1w coregistration"


def check(metrics: dict[str, Any], thresholds: dict[str, float] | None = None) -> list[str]:
    """Warnings for the metrics below their threshold at the displayed precision (NaN and
    missing keys are skipped)."""
    thresholds = THRESHOLDS if thresholds is None else thresholds
    warnings = []
    for key, low in thresholds.items():
        value = metrics.get(key)
        if not below(value, low):
            continue
        warnings.append(
            f"{_what(key)}: {key} = {value:.{DIGITS}f} < {low:g} ({QC_DESCRIPTIONS[key]})"
        )
    return warnings


def failed_checks(output_dir: Path, subject: str) -> dict[str, list[str]]:
    """The QC checks a participant's units fail, from its derivatives:
    ``{"sub-X[_ses-Y][ series]": ["mni_ncc 0.712 < 0.8", ...]}`` (units that pass are
    left out)."""
    out: dict[str, list[str]] = {}
    for row in participant_qc(output_dir, subject):
        name = row["participant_id"] + (f"_ses-{row['session']}" if row["session"] else "")
        if row["series"]:
            name += f" ({row['series']})"
        bad = [
            f"{k} {row[k]:.{DIGITS}f} < {low:g}"
            for k, low in THRESHOLDS.items()
            if below(row.get(k), low)
        ]
        if bad:
            out[name] = bad
    return out


def tissue_contrast(t1w_mni: Any, wm: Any, gm: Any, threshold: float = TISSUE_THRESHOLD) -> float:
    """``t1w_wm_gm_ratio``: mean intensity where the template WM probability > ``threshold``
    over the mean where the GM probability is (all on the template grid). ~1.3-1.6 for a
    T1w; < 1 for a PET (GM uptake) given as T1w."""
    return gm_wm_ratio(t1w_mni, wm, gm, threshold)


# --- reading a participant's derivatives -------------------------------------------------

_SPACE = "MNI152NLin2009aSym"


def _load(path: Path | None) -> nib.Nifti1Image | None:
    return None if path is None or not Path(path).is_file() else nib.load(str(path))


def _on_grid(img: nib.Nifti1Image, ref: nib.Nifti1Image, interpolation: str) -> np.ndarray:
    if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-3):
        return _array(img)
    from nilearn.image import resample_to_img

    res = resample_to_img(
        img, ref, interpolation=interpolation, force_resample=True, copy_header=True
    )
    return _array(res)


def template_on(ref: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """MNI template T1w and brain mask on the grid of ``ref`` (a template-space image)."""
    from ..preproc.templates import get_template

    zoom = float(np.mean(ref.header.get_zooms()[:3]))
    res = 1 if zoom < 1.5 else 2
    tpl, tmask = get_template("T1w", res), get_template("mask", res)
    return _on_grid(tpl, ref, "continuous"), _on_grid(tmask, ref, "nearest") > 0


def unit_dirs(output_dir: Path, subject: str) -> list[Path]:
    """The participant's session folders (``sub-X/ses-Y``), or ``[sub-X]`` without sessions."""
    sub = Path(output_dir) / f"sub-{subject}"
    sessions = sorted(p for p in sub.glob("ses-*") if p.is_dir())
    return sessions or ([sub] if sub.is_dir() else [])


def unit_prefix(unit: Path, subject: str) -> str:
    """``sub-X[_ses-Y]`` for a folder from ``unit_dirs``."""
    return f"sub-{subject}" + (f"_{unit.name}" if unit.name.startswith("ses-") else "")


def pet_series(unit: Path) -> list[str]:
    """Filename prefixes (``sub-X[_ses-Y]_trc-..``) of the PET series with outputs in a unit."""
    prefixes = {L.series_stem(f.name) for f in (unit / "pet").glob("*")}
    prefixes.discard(None)
    return sorted(prefixes)


def anat_of(unit: Path, subject: str) -> tuple[Path, str]:
    """Folder and filename prefix of the anatomy of a unit from ``unit_dirs``: its own, or
    the participant's when its sessions share a T1w outside any session."""
    prefix = unit_prefix(unit, subject)
    sub_dir = unit.parent if unit.name.startswith("ses-") else unit
    if not L.existing(unit, prefix, "t1w") and L.existing(sub_dir, f"sub-{subject}", "t1w"):
        return sub_dir, f"sub-{subject}"
    return unit, prefix


_MEMO: dict[tuple, dict[str, float]] = {}
"""Metrics already computed in this process, keyed by their input files' identities (the
report and the run summary ask for the same ones: computed once)."""


def _memo(kind: str, paths: tuple[Path | None, ...], compute) -> dict[str, float]:
    key: tuple = (kind,)
    for p in paths:
        if p is None or not Path(p).is_file():
            key += (None,)
            continue
        st = Path(p).stat()
        key += (str(Path(p).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        if len(_MEMO) >= 64:
            _MEMO.clear()
        _MEMO[key] = compute()
    return dict(_MEMO[key])


def unit_registration_qc(unit: Path, prefix: str) -> dict[str, float]:
    """Registration metrics of one unit's MNI-space T1w (empty dict if absent)."""
    t1w_path, mask_path = (L.path(unit, prefix, k, _SPACE) for k in ("t1w", "mask"))
    return _memo("registration", (t1w_path, mask_path), lambda: _registration(t1w_path, mask_path))


def _registration(t1w_path: Path, mask_path: Path) -> dict[str, float]:
    t1w = _load(t1w_path)
    if t1w is None:
        return {}
    mask = _load(mask_path)
    tpl, tmask = template_on(t1w)
    mask_a = None if mask is None else _on_grid(mask, t1w, "nearest")
    zoom = float(np.mean(t1w.header.get_zooms()[:3]))
    out = registration_quality(_array(t1w), tpl, tmask, mask_a, zoom)
    wm, gm = tissues_on(t1w)
    out["t1w_wm_gm_ratio"] = tissue_contrast(_array(t1w), wm, gm)
    return out


def tissues_on(ref: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Template WM and GM probabilities on the grid of ``ref`` (a template-space image)."""
    from ..preproc.templates import get_template

    res = 1 if float(np.mean(ref.header.get_zooms()[:3])) < 1.5 else 2
    return (
        _on_grid(get_template("WM", res), ref, "continuous"),
        _on_grid(get_template("GM", res), ref, "continuous"),
    )


def series_coregistration_qc(
    unit: Path, anat_prefix: str, series: str, anat_unit: Path | None = None
) -> dict[str, float]:
    """Coregistration metrics of one PET series of ``unit`` against the anatomy with
    ``anat_prefix`` in ``anat_unit`` (default: ``unit``; see ``anat_of``); empty dict if the
    inputs are absent."""
    anat_unit = unit if anat_unit is None else anat_unit
    paths = (L.path(unit, series, "pet", "T1w"),) + tuple(
        L.path(anat_unit, anat_prefix, k) for k in ("gm", "mask", "wm")
    )
    return _memo("coregistration", paths, lambda: _coregistration(*paths))


def _coregistration(pet_path: Path, gm_path: Path, mask_path: Path, wm_path: Path):
    pet, gm = _load(pet_path), _load(gm_path)
    if pet is None or gm is None:
        return {}
    mask, wm = _load(mask_path), _load(wm_path)
    gm_a = _on_grid(gm, pet, "continuous")
    mask_a = None if mask is None else _on_grid(mask, pet, "nearest")
    wm_a = None if wm is None else _on_grid(wm, pet, "continuous")
    return coregistration_quality(pet, gm_a, mask_a, wm_a)


def series_coverage_qc(unit: Path, series: str) -> dict[str, float]:
    """``pet_brain_coverage`` of one PET series: ``BrainCoverage`` of its coverage mask's
    sidecar (computed once, in MNI, by the participant workflow); empty if absent."""
    for space in (_SPACE, "T1w"):
        path = L.existing(unit, series, "coverage", space)
        if path is None:
            continue
        try:
            value = json.loads(L.sidecar(path).read_text()).get("BrainCoverage")
        except (OSError, ValueError):
            continue
        if value is not None:
            return {"pet_brain_coverage": float(value)}
    return {}


def participant_qc(output_dir: Path, subject: str) -> list[dict[str, Any]]:
    """QC rows of a participant from its derivatives: one per PET series (or one per
    session without PET), with ``participant_id``, ``session``, ``series`` and the metrics
    (NaN when an input is missing). Failures are logged and give NaN, never an exception."""
    subject = subject.removeprefix("sub-")
    rows = []
    for unit in unit_dirs(Path(output_dir), subject):
        prefix = unit_prefix(unit, subject)
        anat_unit, anat_prefix = anat_of(unit, subject)
        session = unit.name[4:] if unit.name.startswith("ses-") else ""
        try:
            reg = unit_registration_qc(anat_unit, anat_prefix)
        except Exception as exc:  # noqa: BLE001 - QC must never fail a report
            LOGGER.warning("QC of %s registration failed: %s", prefix, exc)
            reg = {}
        series_list = pet_series(unit) or [""]
        for series in series_list:
            coreg = {}
            if series:
                try:
                    coreg = series_coregistration_qc(unit, anat_prefix, series, anat_unit)
                except Exception as exc:  # noqa: BLE001
                    LOGGER.warning("QC of %s coregistration failed: %s", series, exc)
                coreg.update(series_coverage_qc(unit, series))
            row: dict[str, Any] = {
                "participant_id": f"sub-{subject}",
                "session": session,
                "series": series.removeprefix(prefix).lstrip("_"),
            }
            for key in THRESHOLDS:
                row[key] = float({**reg, **coreg}.get(key, float("nan")))
            rows.append(row)
    return rows


def write_qc_json(rows: list[dict[str, Any]], path: Path) -> Path:
    """Save QC rows with the thresholds used (NaN written as null)."""
    clean = [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
    Path(path).write_text(json.dumps({"thresholds": THRESHOLDS, "rows": clean}, indent=2))
    return Path(path)


__all__ = [
    "QC_DESCRIPTIONS",
    "THRESHOLDS",
    "anat_of",
    "below",
    "check",
    "coregistration_quality",
    "failed_checks",
    "fit_margin",
    "correlation",
    "dice",
    "gm_wm_ratio",
    "participant_qc",
    "pet_series",
    "registration_quality",
    "series_coregistration_qc",
    "series_coverage_qc",
    "template_on",
    "tissue_contrast",
    "tissues_on",
    "unit_dirs",
    "unit_prefix",
    "unit_registration_qc",
]
