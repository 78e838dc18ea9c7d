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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..config import Z_FWHM_MM
from ..errors import PetSynthError
from ..layout import NORMATIVE_FILES, normative_file
from .compact import to_volume

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


@dataclass
class ControlMaps:
    """The controls' MNI maps held only at the voxels of ``voxels`` (bool grid: the union
    of their brain masks), one row per control, columns in C order (``analysis.compact``).

    ``mask`` (N,) bool: inside every control's brain mask (the normative mask); ``pet``
    (n, N) float32 real PET (SUVR); ``residual`` (n, N) float32 real - pseudo-normal PET
    (SUVR, ``zscore.residual``) inside the mask and the control's view, 0 elsewhere;
    ``brain`` (n, N) bool brain masks; ``view`` (n, N) bool PET fields of view (None:
    full). ``fwhm_mm``: the analysis smoothing (``zscore.smooth_in_mask``, voxel size
    ``zooms`` in mm) of the PET and pseudo-normal PET before the residual; ``zpet`` (n, N)
    float32 the real PET so smoothed (None when ``fwhm_mm`` is 0: ``pet`` itself), which
    the control-PET Z uses, while ``pet`` stays unsmoothed for the OC-SVM detector.
    Built by ``empty_controls`` + ``put_control`` one control at a time, or by
    ``control_maps`` from lists of volumes.
    """

    voxels: np.ndarray
    mask: np.ndarray
    pet: np.ndarray
    residual: np.ndarray
    brain: np.ndarray
    view: np.ndarray | None
    fwhm_mm: float = 0.0
    zooms: tuple[float, ...] | None = None
    zpet: np.ndarray | None = None

    def grid_mask(self) -> np.ndarray:
        """The normative mask on the grid (bool)."""
        return to_volume(self.mask, self.voxels, bool)

    @property
    def z_pet(self) -> np.ndarray:
        """The controls' real PET as the Z maps see it (smoothed by ``fwhm_mm``)."""
        return self.pet if self.zpet is None else self.zpet


def empty_controls(
    union: np.ndarray,
    intersection: np.ndarray,
    n: int,
    with_view: bool = True,
    fwhm_mm: float = 0.0,
    zooms: Sequence[float] | None = None,
) -> ControlMaps:
    """``ControlMaps`` of ``n`` controls to fill with ``put_control``: ``union`` and
    ``intersection`` (bool grids) of their brain masks; ``fwhm_mm`` the analysis
    smoothing (mm; ``zooms``: voxel size in mm, needed when it is > 0)."""
    if fwhm_mm > 0 and zooms is None:
        raise ValueError("zooms (voxel size in mm) are needed for the analysis smoothing")
    voxels = np.asarray(union) > 0
    mask = (np.asarray(intersection) > 0)[voxels]
    if not mask.any():
        raise PetSynthError("the controls' MNI brain masks do not overlap")
    size = (n, int(voxels.sum()))
    view = np.zeros(size, bool) if with_view else None
    return ControlMaps(
        voxels,
        mask,
        np.zeros(size, np.float32),
        np.zeros(size, np.float32),
        np.zeros(size, bool),
        view,
        float(fwhm_mm),
        None if zooms is None else tuple(float(z) for z in zooms),
        np.zeros(size, np.float32) if fwhm_mm > 0 else None,
    )


def put_control(
    maps: ControlMaps,
    i: int,
    pet: np.ndarray,
    pseudo: np.ndarray,
    brain: np.ndarray,
    view: np.ndarray | None = None,
    histogram_matching: bool = False,
) -> None:
    """Row ``i`` of ``maps``: a control's real and pseudo-normal PET (SUVR), brain mask
    and field of view (None: full), full volumes on the grid of ``maps.voxels``. With
    ``maps.fwhm_mm`` > 0 both PETs are smoothed inside the control's brain mask and view
    (its analysis mask, as a participant's) before the residual."""
    from .zscore import residual, smooth_in_mask

    vox = maps.voxels
    brain3d = np.asarray(brain) > 0
    maps.brain[i] = brain3d[vox]
    own = maps.mask
    if maps.view is not None:
        maps.view[i] = True if view is None else (np.asarray(view) > 0)[vox]
        own = own & maps.view[i]
    real = np.asarray(pet)[vox]
    maps.pet[i] = real
    if maps.zpet is not None:
        inside = brain3d if view is None else brain3d & (np.asarray(view) > 0)
        real = smooth_in_mask(pet, inside, maps.fwhm_mm, maps.zooms)[vox]
        pseudo = smooth_in_mask(pseudo, inside, maps.fwhm_mm, maps.zooms)
        maps.zpet[i] = real
    maps.residual[i] = residual(real, np.asarray(pseudo)[vox], own, histogram_matching)


def control_maps(
    pets: list[np.ndarray],
    pseudos: list[np.ndarray],
    masks: list[np.ndarray],
    coverages: list[np.ndarray] | None = None,
    histogram_matching: bool = False,
    fwhm_mm: float = 0.0,
    zooms: Sequence[float] | None = None,
) -> ControlMaps:
    """``ControlMaps`` of controls given as lists of full volumes (SUVR, MNI), with the
    analysis smoothing ``fwhm_mm`` (mm; ``zooms`` the voxel size in mm)."""
    union = np.any([np.asarray(m) > 0 for m in masks], axis=0)
    intersection = np.all([np.asarray(m) > 0 for m in masks], axis=0)
    maps = empty_controls(union, intersection, len(masks), coverages is not None, fwhm_mm, zooms)
    for i, (p, s, m) in enumerate(zip(pets, pseudos, masks, strict=True)):
        view = None if coverages is None else coverages[i]
        put_control(maps, i, p, s, m, view, histogram_matching)
    return maps


def fit_from_controls(
    pets: list[np.ndarray],
    pseudos: list[np.ndarray],
    masks: list[np.ndarray],
    affine: np.ndarray,
    meta: dict,
    histogram_matching: bool = False,
    coverages: list[np.ndarray] | None = None,
    fwhm_mm: float = Z_FWHM_MM,
) -> NormativeModel:
    """Fit both normative models from controls' real and pseudo-normal PET (SUVR, MNI),
    given as lists of full volumes: ``fit_from_maps`` of their ``control_maps`` with
    the analysis smoothing ``fwhm_mm`` (mm)."""
    zooms = nib.affines.voxel_sizes(affine)
    maps = control_maps(pets, pseudos, masks, coverages, histogram_matching, fwhm_mm, zooms)
    return fit_from_maps(maps, affine, meta, histogram_matching)


def fit_from_maps(
    maps: ControlMaps, affine: np.ndarray, meta: dict, histogram_matching: bool = False
) -> NormativeModel:
    """Fit both normative models from the controls' ``ControlMaps`` (SUVR, MNI grid of
    ``affine``; ``histogram_matching`` as their residuals were made, for the record).

    The model mask is the intersection of the controls' brain masks, so every fitted
    voxel has a residual from every control (a pseudo PET is 0 outside its own mask, so
    a union would put whole SUVR values into the residual statistics at the brain edge).
    With fields of view (``maps.view``) a control contributes only inside its own, and
    the model keeps the voxels enough controls cover (``zscore.normative_support``).
    """
    from .zscore import fit_normative_voxels, support_columns

    zooms = nib.affines.voxel_sizes(affine)
    grid_mask = maps.grid_mask()
    r_mean, r_sd = fit_normative_voxels(
        maps.residual, maps.voxels, grid_mask, zooms=zooms, valid=maps.view
    )
    p_mean, p_sd = fit_normative_voxels(
        maps.z_pet, maps.voxels, grid_mask, zooms=zooms, valid=maps.view
    )
    support = maps.mask if maps.view is None else maps.mask & support_columns(maps.view)
    mask = to_volume(support, maps.voxels, bool)
    meta = {
        **meta,
        "n_controls": len(maps.pet),
        "histogram_matching": histogram_matching,
        "z_fwhm_mm": maps.fwhm_mm,
    }
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
    z_fwhm_mm: float = Z_FWHM_MM,
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
    check_smoothing(meta, z_fwhm_mm, folder)
    return meta


def check_smoothing(meta: dict, z_fwhm_mm: float, folder: str | Path | None = None) -> None:
    """Refuse a model fitted with another analysis smoothing (``z_fwhm_mm``, mm) than this
    run's: its mean and SD would describe differently smoothed maps. Models written
    before the setting existed were fitted without smoothing."""
    fitted = float(meta.get("z_fwhm_mm", 0.0))
    if not np.isclose(fitted, float(z_fwhm_mm)):
        raise PetSynthError(
            f"normative model was fitted with --z-fwhm {fitted:g} mm, this run uses "
            f"{float(z_fwhm_mm):g} mm: use the same setting or refit it (petsynth ... group)",
            None if folder is None else str(folder),
        )


__all__ = [
    "META",
    "ControlMaps",
    "NormativeModel",
    "check_compatible",
    "check_smoothing",
    "control_maps",
    "empty_controls",
    "fit_from_controls",
    "fit_from_maps",
    "load",
    "meta_sha256",
    "preflight",
    "put_control",
    "save",
]
