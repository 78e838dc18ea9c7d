"""The control normative model on disk: voxelwise mean/SD maps of the controls' residual
(real − pseudo-normal PET) and of their real PET, with provenance.

Layout of a normative-model folder (written by the group level, ``<out>/group/normative``)::

    space-MNI152NLin2009aSym_desc-residual_stat-mean_statmap.nii.gz   SUVR
    space-MNI152NLin2009aSym_desc-residual_stat-sd_statmap.nii.gz     SUVR
    space-MNI152NLin2009aSym_desc-controlpet_stat-mean_statmap.nii.gz SUVR
    space-MNI152NLin2009aSym_desc-controlpet_stat-sd_statmap.nii.gz   SUVR
    space-MNI152NLin2009aSym_desc-normative_mask.nii.gz               fitted voxels
    normative.json      participants, model sha256, settings, versions
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import PetSynthError
from ..layout import NORMATIVE_FILES, normative_file
from .zscore import fit_normative

_KEYS = NORMATIVE_FILES
META = "normative.json"


def _path(folder: Path, key: str) -> Path:
    return normative_file(folder, key)


@dataclass
class NormativeModel:
    """Voxelwise normative maps on one MNI grid (arrays) and their provenance."""

    residual_mean: np.ndarray
    residual_sd: np.ndarray
    pet_mean: np.ndarray
    pet_sd: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    meta: dict


def fit_from_controls(
    pets: list[np.ndarray],
    pseudos: list[np.ndarray],
    masks: list[np.ndarray],
    affine: np.ndarray,
    meta: dict,
    histogram_matching: bool = False,
    coverages: list[np.ndarray] | None = None,
) -> NormativeModel:
    """Fit both normative models from controls' real and pseudo-normal PET (SUVR, MNI).

    The model mask is the intersection of the controls' brain masks, so every fitted
    voxel has a residual from every control (a pseudo PET is 0 outside its own mask, so
    a union would put whole SUVR values into the residual statistics at the brain edge).
    ``coverages``: each control's PET field of view (MNI; None: full); a control
    contributes only inside it, and the model keeps the voxels enough controls cover
    (``zscore.normative_support``).
    """
    from .zscore import normative_support, residual

    mask = np.all([m > 0 for m in masks], axis=0)
    if not mask.any():
        raise PetSynthError("the controls' MNI brain masks do not overlap")
    views = None if coverages is None else [np.asarray(c) > 0 for c in coverages]
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    residuals = [
        residual(p, s, mask if views is None else mask & views[i], histogram_matching)
        for i, (p, s) in enumerate(zip(pets, pseudos, strict=True))
    ]
    r_mean, r_sd = fit_normative(residuals, mask, zooms=zooms, valid=views)
    pet_in = [np.where(mask, p, 0.0) for p in pets]
    p_mean, p_sd = fit_normative(pet_in, mask, zooms=zooms, valid=views)
    mask = normative_support(views, mask, mask.shape)
    meta = {**meta, "n_controls": len(pets), "histogram_matching": histogram_matching}
    return NormativeModel(r_mean, r_sd, p_mean, p_sd, mask, np.asarray(affine), meta)


def save(model: NormativeModel, folder: str | Path) -> Path:
    """Write the maps and ``normative.json`` into ``folder``."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key in _KEYS:
        data = getattr(model, key)
        dtype = np.uint8 if key == "mask" else np.float32
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), model.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.to_filename(str(_path(tmp, key)))
    (tmp / META).write_text(json.dumps(model.meta, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # never a mix of old maps and new metadata
    tmp.rename(folder)
    return folder


def load(folder: str | Path) -> NormativeModel:
    """Read a normative-model folder (one-line PetSynthError when incomplete)."""
    folder = Path(folder)
    missing = [p.name for p in (_path(folder, k) for k in _KEYS) if not p.is_file()]
    if not (folder / META).is_file():
        missing.append(META)
    if missing:
        raise PetSynthError(f"not a normative model (missing {', '.join(missing)})", str(folder))
    imgs = {k: nib.load(str(_path(folder, k))) for k in _KEYS}
    data = {k: np.asanyarray(v.dataobj, dtype=np.float64) for k, v in imgs.items()}
    data["mask"] = data["mask"] > 0
    meta = json.loads((folder / META).read_text())
    return NormativeModel(**data, affine=imgs["mask"].affine, meta=meta)


def check_compatible(
    meta: dict,
    model_affine: np.ndarray,
    model_shape: tuple,
    affine: np.ndarray,
    shape: tuple,
    weights_sha256: str | None,
) -> None:
    """Refuse a model (its ``meta`` and grid) fitted on another grid or with another
    synthesis model than this run's."""
    if tuple(model_shape) != tuple(shape) or not np.allclose(model_affine, affine, atol=1e-3):
        raise PetSynthError(
            "normative model grid differs from this run's MNI grid (same --mni-resolution?)"
        )
    fitted = meta.get("model_sha256")
    if weights_sha256 and fitted and fitted != weights_sha256:
        raise PetSynthError(
            f"normative model was fitted with synthesis weights {fitted[:12]}..., this run "
            f"uses {weights_sha256[:12]}...: refit it (petsynth ... group)"
        )


def meta_sha256(folder: str | Path) -> str:
    """sha256 of ``normative.json`` (changes whenever the model is refitted)."""
    return hashlib.sha256((Path(folder) / META).read_bytes()).hexdigest()


def preflight(
    folder: str | Path,
    weights_sha256: str | None,
    histogram_matching: bool,
    affine: np.ndarray,
    shape: tuple,
) -> dict:
    """Check a normative model against this run before anything is computed."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise PetSynthError(f"unreadable {META} ({exc})", str(folder)) from None
    mask_path = _path(folder, "mask")
    if not mask_path.is_file():
        raise PetSynthError(f"not a normative model (missing {mask_path.name})", str(folder))
    mask = nib.load(str(mask_path))  # header only: the grid
    check_compatible(meta, mask.affine, mask.shape[:3], affine, shape, weights_sha256)
    if bool(meta.get("histogram_matching", False)) != bool(histogram_matching):
        raise PetSynthError(
            f"normative model was fitted {'with' if meta.get('histogram_matching') else 'without'}"
            " --histogram-matching: use the same setting or refit it",
            str(folder),
        )
    return meta


__all__ = [
    "META",
    "NormativeModel",
    "check_compatible",
    "fit_from_controls",
    "load",
    "meta_sha256",
    "preflight",
    "save",
]
