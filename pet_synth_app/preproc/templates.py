"""Offline access to the MNI152NLin2009aSym template that nilearn ships.

All images are in template world space (RAS mm), 1 or 2 mm isotropic grids sharing the
nilearn ICBM 2009a affine. Nothing is downloaded: the maps come from files bundled with
nilearn.
"""

from __future__ import annotations

import os
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..config import TEMPLATE_SPACE  # noqa: F401  (re-exported: the template this module serves)
from ..layout import template_filename

KINDS = ("T1w", "mask", "GM", "WM", "CSF", "head")
RESOLUTIONS = (1, 2)


GRIDS = {1: (197, 233, 189), 2: (99, 117, 95)}
"""Shape of the template images at each resolution (mm), as ``get_template`` makes them
(a test checks they agree): known without importing nilearn. Their affine is diagonal
(the resolution) with the origin at ``GRID_ORIGIN_MM``."""
GRID_ORIGIN_MM = (-98.0, -134.0, -72.0)


def template_grid(resolution: int) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and 4x4 affine (RAS mm) of the template grid at ``resolution`` mm (1 or 2)."""
    _check("T1w", resolution)
    affine = np.diag([float(resolution)] * 3 + [1.0])
    affine[:3, 3] = GRID_ORIGIN_MM
    return GRIDS[int(resolution)], affine


def _check(kind: str, resolution: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"Unknown template kind {kind!r}; expected one of {KINDS}")
    if int(resolution) not in RESOLUTIONS:
        raise ValueError(f"Template resolution must be 1 or 2 mm, got {resolution!r}")


def _new(data: np.ndarray, ref: nib.Nifti1Image, dtype: type = np.float32) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(ref.affine, code=4)  # 4 = MNI152
    img.header.set_qform(ref.affine, code=4)
    return img


CACHE_DIR_ENV = "PETSYNTH_TEMPLATE_CACHE"
"""Environment variable naming a folder where made templates are kept between processes
(the participant and group runs set it to ``<work dir>/templates``: making them from
nilearn's files takes ~0.5-1.2 s per image and process). Unset: no disk cache."""


@lru_cache(maxsize=1)
def _cache_key() -> str:
    """Changes with nilearn's version and with this module's code (what makes the maps)."""
    import hashlib

    import nilearn

    digest = hashlib.sha256(nilearn.__version__.encode())
    with open(__file__, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:12]


def _cache_file(kind: str, resolution: int) -> str | None:
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        return None
    return os.path.join(folder, _cache_key(), template_filename(kind, resolution))


@lru_cache(maxsize=16)
def get_template(kind: str = "T1w", resolution: int = 2) -> nib.Nifti1Image:
    """Return a MNI152NLin2009aSym template image (cached in the process and, with
    ``CACHE_DIR_ENV`` set, on disk; treat it as read-only).

    Parameters
    ----------
    kind
        ``"T1w"``: brain-only T1w template, intensities scaled to [0, 1];
        ``"mask"``: brain mask (uint8, T1w template > 0.2, nilearn's definition, 1.88 L);
        ``"GM"``, ``"WM"``: tissue probability maps in [0, 1];
        ``"CSF"``: ``clip(mask - GM - WM, 0, 1)`` (ventricles and the sulcal/outer CSF rim);
        ``"head"``: the T1w template with a synthetic CSF/skull/scalp shell (see
        :func:`synthetic_head`), used to initialize registrations of skull-on heads.
    resolution
        Isotropic voxel size in mm, 1 or 2.
    """
    _check(kind, resolution)
    res = int(resolution)
    path = _cache_file(kind, res)
    if path is not None and os.path.isfile(path):
        try:
            img = nib.load(path)
            return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        except Exception:  # noqa: BLE001 - a damaged cache file is made again
            pass
    img = _make(kind, res)
    if path is not None:
        try:
            _save_atomic(img, path)
        except OSError:  # a read-only or full work dir: no disk cache
            pass
    return img


def _save_atomic(img: nib.Nifti1Image, path: str) -> None:
    """Write ``img`` to ``path`` through a temporary file and ``os.replace`` (processes of
    one run may write the same template at once)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.nii.gz"
    nib.save(img, tmp)
    os.replace(tmp, path)


def _make(kind: str, res: int) -> nib.Nifti1Image:
    from nilearn import datasets

    if kind == "T1w":
        ref = datasets.load_mni152_template(resolution=res)
        return _new(np.clip(ref.get_fdata(), 0, None), ref)
    if kind == "mask":
        ref = datasets.load_mni152_brain_mask(resolution=res)
        return _new(np.asanyarray(ref.dataobj) > 0, ref, np.uint8)
    if kind == "GM":
        ref = datasets.load_mni152_gm_template(resolution=res)
        return _new(np.clip(ref.get_fdata(), 0, 1), ref)
    if kind == "WM":
        ref = datasets.load_mni152_wm_template(resolution=res)
        return _new(np.clip(ref.get_fdata(), 0, 1), ref)
    if kind == "CSF":
        mask = get_template("mask", res)
        gm = get_template("GM", res).get_fdata()
        wm = get_template("WM", res).get_fdata()
        csf = np.clip(mask.get_fdata() - gm - wm, 0, 1)
        return _new(csf, mask)
    return synthetic_head(res)


def synthetic_head(resolution: int = 2) -> nib.Nifti1Image:
    """T1w-like head: the brain template wrapped in CSF (3 mm), skull (6 mm), scalp (6 mm).

    Intensities mimic a T1w scan in template units (WM ~0.9, CSF 0.15, skull 0.05,
    scalp/fat 0.75). The shell follows a smoothed, dilated brain outline, so it is only a
    coarse head model: good for center/scale initialization, not for fine alignment.
    """
    brain = get_template("T1w", resolution)
    vox = float(resolution)
    mask = np.asanyarray(get_template("mask", resolution).dataobj) > 0
    # Smooth the outline first so that the shell is convex-ish like a real skull.
    hull = ndi.gaussian_filter(mask.astype(np.float32), 6.0 / vox) > 0.2
    dist = ndi.distance_transform_edt(~hull, sampling=vox)
    data = brain.get_fdata().astype(np.float32)
    out = data.copy()
    rim = ~mask
    out[rim & (dist <= 3.0)] = 0.15
    out[rim & (dist > 3.0) & (dist <= 9.0)] = 0.05
    out[rim & (dist > 9.0) & (dist <= 15.0)] = 0.75
    out[rim & (dist > 15.0)] = 0.0
    out = ndi.gaussian_filter(out, 1.0 / vox)
    return _new(out, brain)


def write_template(kind: str, resolution: int, out_dir: str) -> str:
    """Write a template image as ``tpl-MNI152NLin2009aSym_res-<r>_<kind>.nii.gz``; return path.

    An existing file with the same name is reused (templates are immutable).
    """
    _check(kind, resolution)
    path = os.path.join(out_dir, template_filename(kind, resolution))
    if not os.path.exists(path):
        _save_atomic(get_template(kind, resolution), path)
    return path
