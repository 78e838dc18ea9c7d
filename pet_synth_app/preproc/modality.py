"""Does an input image look like a T1w or like an FDG PET? (issue 16, item 6)

Two features of one 3D image in its own space, each robust to skull/no skull, voxel size
and resampling (measured on the real heads of ``../shared/realdata`` and on
``petsynth-simulate`` phantoms, with and without skull, native and resampled; the values
are in docs/benchmarks.md):

- ``wm_gm``: mean intensity in deep white matter over mean intensity in grey matter, with
  the MNI template's tissue maps brought onto a 4 mm copy of the image by an affine
  Mattes-MI registration of the synthetic head template (``templates.synthetic_head``).
  T1w: WM brighter than GM (real heads 1.19-1.40, phantoms 1.55-2.0); FDG PET: GM
  brighter (real FDG 0.84-0.93, phantoms 0.58-0.66).
- ``sharpness``: the share of the image's variance inside the head at scales between 1
  and 4 mm (difference of Gaussians on a 2 mm copy). T1w >= 0.22; real PET <= 0.13
  (phantom PET 0.18-0.26: the simulator's PET is sharper than a scanner's).

``None`` for ``wm_gm`` when the registration did not put the template brain inside the
image's head (no verdict rather than a false alarm).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

T1W_MIN_WM_GM = 1.0
"""A 'T1w' whose WM/GM is below this has the contrast of a PET (or a T2w/FLAIR): refused."""

T1W_WARN_WM_GM = 1.1
"""... and below this (but above the refusal) a named warning."""

T1W_MIN_SHARPNESS = 0.15
"""A 'T1w' head blurrier than this looks like a (resampled) PET: named warning (only when
the template registered, i.e. the image is a head: a featureless test blob is not)."""

PET_MAX_WM_GM = 1.15
"""A PET with WM/GM above this *and* sharper than ``PET_MAX_SHARPNESS`` looks like a T1w:
named warning (a PET of a tracer with white-matter uptake, e.g. amyloid, is blurred)."""

PET_MAX_SHARPNESS = 0.2

_WORK_MM = 4.0  # grid of the registration
_SHARP_MM = 2.0  # grid of the sharpness
_HEAD_FRACTION = 0.15  # head = smoothed image above this fraction of its 99th percentile
_MIN_INSIDE = 0.8  # share of the registered template brain that must lie in the head


@dataclass(frozen=True)
class ModalityFeatures:
    """Contrast and sharpness of one image (see the module docstring)."""

    wm_gm: float | None
    sharpness: float

    def __str__(self) -> str:
        wm_gm = "n/a" if self.wm_gm is None else f"{self.wm_gm:.2f}"
        return f"WM/GM {wm_gm}, sharpness {self.sharpness:.2f}"


def _regrid(img: nib.Nifti1Image, voxel_mm: float) -> nib.Nifti1Image:
    """``img`` (3D, or the mean of a 4D series) smoothed to and sampled on an isotropic
    ``voxel_mm`` grid covering the same field of view (float32)."""
    data = np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float32))
    if data.ndim == 4:
        data = data.mean(axis=3)
    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    sigma = np.sqrt(np.maximum(voxel_mm**2 - zooms**2, 0.0)) / 2.355 / zooms
    if sigma.max() > 0:
        data = ndi.gaussian_filter(data, sigma)
    factor = zooms / voxel_mm
    data = ndi.zoom(data, factor, order=1)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag(1.0 / factor)
    return nib.Nifti1Image(data.astype(np.float32), affine)


def head_mask(data: np.ndarray) -> np.ndarray:
    """The largest connected region above ``_HEAD_FRACTION`` of the 99th percentile of
    the positive voxels, holes filled (boolean)."""
    positive = data[data > 0]
    if positive.size == 0:
        return np.zeros(data.shape, bool)
    mask = data > _HEAD_FRACTION * np.percentile(positive, 99)
    labels, n = ndi.label(mask)
    if n > 1:
        mask = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndi.binary_fill_holes(mask)


def sharpness(img: nib.Nifti1Image) -> float:
    """Share of the variance inside the (3 mm eroded) head at 1-4 mm scales, on a 2 mm
    copy of ``img`` (0: featureless, ~0.2-0.45: a T1w, ~0.01-0.13: a scanner PET)."""
    small = _regrid(img, _SHARP_MM)
    data = small.get_fdata(dtype=np.float32)
    core = ndi.binary_erosion(head_mask(data), iterations=2)
    if core.sum() < 100:
        return 0.0
    fine = ndi.gaussian_filter(data, 1.0 / _SHARP_MM)
    coarse = ndi.gaussian_filter(data, 4.0 / _SHARP_MM)
    total = float(np.var(fine[core]))
    return float(np.var((fine - coarse)[core]) / total) if total > 0 else 0.0


@lru_cache(maxsize=1)
def _templates() -> dict[str, nib.Nifti1Image]:
    from .templates import get_template, synthetic_head

    out = {k: _regrid(get_template(k, 2), _WORK_MM) for k in ("GM", "WM", "mask")}
    out["head"] = _regrid(synthetic_head(2), _WORK_MM)
    return out


def warm_up() -> None:
    """Import ANTs and make the 4 mm templates now (a process about to run checks)."""
    import ants  # noqa: F401

    _templates()


def wm_gm_ratio(img: nib.Nifti1Image, seed: int = 1) -> float | None:
    """Mean intensity in the template's deep WM (p > 0.9) over that in its GM (p > 0.6),
    the template registered (affine, Mattes MI, 4 mm) onto ``img``; None when the
    registered template brain is not inside the image's head."""
    import tempfile

    import ants
    from ants.internal import get_pointer_string

    from .anat import _antsreg, _head_center, _translation_tx, nib_to_ants

    small = _regrid(img, _WORK_MM)
    data = small.get_fdata(dtype=np.float32)
    head = head_mask(data)
    if head.sum() < 50:
        return None
    tpl = _templates()
    tpl_head = tpl["head"].get_fdata(dtype=np.float32)
    shift = _head_center(data, small.affine, head) - _head_center(
        tpl_head, tpl["head"].affine, tpl_head > 0.1
    )
    fixed, moving = nib_to_ants(small), nib_to_ants(tpl["head"])
    # explicit stages through _antsreg: ``ants.registration`` ignores its ``random_seed``
    # argument (antspyx 0.6), so its sampling differed run to run (WM/GM +-0.003)
    stages = [
        "--transform",
        "Affine[0.25]",
        "--metric",
        f"Mattes[{get_pointer_string(fixed)},{get_pointer_string(moving)},1,32,Regular,0.2]",
        "--convergence",
        "[200x100,1e-6,10]",
        "--shrink-factors",
        "2x1",
        "--smoothing-sigmas",
        "1x0vox",
    ]
    with tempfile.TemporaryDirectory(prefix="petsynth-modality-") as tmp:
        init = _translation_tx(-shift, f"{tmp}/init.mat")
        reg = _antsreg(fixed, moving, stages, f"{tmp}/reg_", init, seed)
        warped = {
            k: ants.apply_transforms(fixed, nib_to_ants(tpl[k]), reg["fwd"]).numpy()
            for k in ("GM", "WM", "mask")
        }
    brain = warped["mask"] > 0.5
    wm, gm = warped["WM"] > 0.9, warped["GM"] > 0.6
    if brain.sum() == 0 or head[brain].mean() < _MIN_INSIDE or wm.sum() < 5 or gm.sum() < 5:
        return None
    gm_mean = float(data[gm].mean())
    return float(data[wm].mean()) / gm_mean if gm_mean > 0 else None


def modality_features(img: nib.Nifti1Image) -> ModalityFeatures:
    """Both features of one image (3D, or the mean of a 4D PET)."""
    return ModalityFeatures(wm_gm_ratio(img), sharpness(img))


def t1w_findings(f: ModalityFeatures) -> tuple[str | None, str | None]:
    """(reason to refuse, reason to warn) for an image given as the T1w; None: fine."""
    if f.wm_gm is not None and f.wm_gm < T1W_MIN_WM_GM:
        return (
            f"does not look like a T1w: grey matter is brighter than white matter ({f}; a "
            f"T1w has WM/GM > {T1W_WARN_WM_GM:g}, an FDG PET < {T1W_MIN_WM_GM:g})",
            None,
        )
    if f.wm_gm is not None and f.wm_gm < T1W_WARN_WM_GM:
        return None, (
            f"weak grey/white contrast for a T1w ({f}; a T1w has WM/GM > "
            f"{T1W_WARN_WM_GM:g}): check that this is a T1-weighted image"
        )
    if f.wm_gm is not None and f.sharpness < T1W_MIN_SHARPNESS:  # a head, blurred
        return None, (
            f"blurred like a PET for a T1w ({f}; a T1w has sharpness >= "
            f"{T1W_MIN_SHARPNESS:g}): a resampled PET or a low-resolution scan?"
        )
    return None, None


def pet_findings(f: ModalityFeatures) -> str | None:
    """Reason to warn for an image given as the PET (None: fine)."""
    if f.wm_gm is not None and f.wm_gm > PET_MAX_WM_GM and f.sharpness > PET_MAX_SHARPNESS:
        return (
            f"looks like a T1w, not an FDG PET ({f}; FDG PET has WM/GM < 1 and is "
            f"blurred): T1w and PET swapped?"
        )
    return None


__all__ = [
    "ModalityFeatures",
    "head_mask",
    "modality_features",
    "pet_findings",
    "sharpness",
    "t1w_findings",
    "warm_up",
    "wm_gm_ratio",
]
