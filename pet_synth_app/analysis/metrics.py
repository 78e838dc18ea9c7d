"""Image-similarity metrics between a synthetic and a real PET (SSIM, PSNR, RMSE, MAE).

Follows the evaluation of Zotova et al.: both images are put on a common [0, 1] intensity
scale (``scale_pair``) and compared with SSIM and PSNR. All functions take two images on the
same voxel grid (e.g. both resampled to MNI space) as numpy arrays or nibabel images, and an
optional mask on that grid (nonzero = inside); without a mask the whole image is used. NaNs
in the inputs are treated as 0. Intensities are in the units of the inputs (dimensionless
once scaled to [0, 1]); PSNR is in dB; the Gaussian SSIM window is given in voxels.

SSIM is the Wang et al. (2004) index with a Gaussian window (sigma 1.5 voxels, truncated at
3.5 sigma, population covariances, K1 = 0.01, K2 = 0.03), the same as
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``. Unlike skimage, the masked mean is not cropped at the image
border (borders are handled by reflection); note that the window reaches about 5 voxels
beyond the mask, so voxels just outside it still influence the masked SSIM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5
"""Standard deviation (voxels) of the Gaussian SSIM window."""
SSIM_TRUNCATE = 3.5
"""Gaussian window truncation (in sigmas), as in skimage with ``gaussian_weights=True``."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_array(image: Any) -> np.ndarray:
    """float64 array from a numpy array or nibabel image, NaNs set to 0."""
    data = np.asanyarray(image.dataobj) if hasattr(image, "dataobj") else image
    data = np.array(data, dtype=np.float64)  # always a copy: callers may modify it
    data[np.isnan(data)] = 0.0
    return data


def _as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Boolean mask (nonzero = inside) checked against ``shape``; None stays None."""
    if mask is None:
        return None
    mask = _as_array(mask) != 0
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    if not mask.any():
        raise ValueError("mask is empty")
    return mask


def _prepare(pred: Any, ref: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray, Any]:
    pred_a, ref_a = _as_array(pred), _as_array(ref)
    if pred_a.shape != ref_a.shape:
        raise ValueError(f"shape mismatch: pred {pred_a.shape} vs ref {ref_a.shape}")
    return pred_a, ref_a, _as_mask(mask, ref_a.shape)


def _masked(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return values if mask is None else values[mask]


def scale_pair(pred: Any, ref: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``pred`` and ``ref`` with the same linear map so ``ref`` spans [0, 1] in the mask.

    The map sends the minimum of ``ref`` inside the mask to 0 and its maximum to 1. Both
    results are then clipped to [0, 1] (for ``ref`` this only affects voxels outside the
    mask). Returns float64 arrays ``(pred01, ref01)``. Raises ValueError on a shape
    mismatch, an empty mask or a reference that is constant inside the mask.
    """
    pred_a, ref_a, mask_b = _prepare(pred, ref, mask)
    ref_in = _masked(ref_a, mask_b)
    low, high = float(ref_in.min()), float(ref_in.max())
    if not high > low:
        raise ValueError(f"reference is constant ({low}) inside the mask; cannot scale")
    span = high - low
    pred01 = np.clip((pred_a - low) / span, 0.0, 1.0)
    ref01 = np.clip((ref_a - low) / span, 0.0, 1.0)
    return pred01, ref01


def ssim_map(
    pred: Any,
    ref: Any,
    data_range: float = 1.0,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """Voxelwise SSIM (Wang et al. 2004) of two N-D images (2D or 3D) on the same grid.

    Gaussian window of standard deviation ``sigma`` voxels truncated at 3.5 sigma, population
    (co)variances, ``C1 = (k1 * data_range)**2``, ``C2 = (k2 * data_range)**2``; borders are
    reflected. ``data_range`` is in image intensity units (1 for images scaled to [0, 1]).
    Returns a float64 array of the input shape, 1 where the images agree.
    """
    x, y, _ = _prepare(pred, ref)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")

    def smooth(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = smooth(x), smooth(y)
    vx = smooth(x * x) - ux * ux
    vy = smooth(y * y) - uy * uy
    vxy = smooth(x * y) - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
    denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return numerator / denominator


def ssim(pred: Any, ref: Any, mask: Any = None, data_range: float = 1.0) -> float:
    """3D SSIM: mean of the N-D ``ssim_map`` over the mask (whole image if None)."""
    pred_a, ref_a, mask_b = _prepare(pred, ref, mask)
    return float(_masked(ssim_map(pred_a, ref_a, data_range=data_range), mask_b).mean())


def ssim_slicewise(
    pred: Any, ref: Any, mask: Any = None, axis: int = 2, data_range: float = 1.0
) -> float:
    """2D SSIM averaged over the slices along ``axis`` (axial = 2 for RAS/MNI volumes).

    For every slice holding mask voxels (every slice if no mask) the 2D ``ssim_map`` of
    that slice is averaged inside the slice's mask; slices are then weighted equally.
    Slices without mask voxels are ignored entirely. Inputs must be 3D.
    """
    pred_a, ref_a, mask_b = _prepare(pred, ref, mask)
    if pred_a.ndim != 3:
        raise ValueError(f"ssim_slicewise needs 3D images, got shape {pred_a.shape}")
    values = []
    for index in range(pred_a.shape[axis]):
        # a view, not ``np.take`` (which copies a whole Fortran-ordered volume, as
        # NIfTI data are, for every slice)
        at = (slice(None),) * axis + (index,)
        slice_mask = None if mask_b is None else mask_b[at]
        if slice_mask is not None and not slice_mask.any():
            continue
        smap = ssim_map(pred_a[at], ref_a[at], data_range=data_range)
        values.append(_masked(smap, slice_mask).mean())
    return float(np.mean(values))


def mse(pred: Any, ref: Any, mask: Any = None) -> float:
    """Mean squared error over the mask (squared intensity units)."""
    pred_a, ref_a, mask_b = _prepare(pred, ref, mask)
    return float(np.mean(_masked(pred_a - ref_a, mask_b) ** 2))


def rmse(pred: Any, ref: Any, mask: Any = None) -> float:
    """Root mean squared error over the mask (intensity units)."""
    return float(np.sqrt(mse(pred, ref, mask)))


def mae(pred: Any, ref: Any, mask: Any = None) -> float:
    """Mean absolute error over the mask (intensity units)."""
    pred_a, ref_a, mask_b = _prepare(pred, ref, mask)
    return float(np.mean(np.abs(_masked(pred_a - ref_a, mask_b))))


def psnr(pred: Any, ref: Any, mask: Any = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)`` over the mask.

    ``data_range`` is in intensity units (1 for images scaled to [0, 1]); returns ``inf``
    for identical images.
    """
    error = mse(pred, ref, mask)
    if error == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / error))


def _crop_to_mask(pred: Any, ref: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pred``, ``ref`` and ``mask`` on the mask's bounding box grown by the SSIM window's
    radius (clipped to the volume). Every voxel the masked metrics read lies in it and the
    window of a masked voxel reaches the box's edge only where that is the volume's edge
    (reflected there as before), so 3D and slicewise SSIM, PSNR, RMSE and MAE are exactly
    those of the whole volumes."""
    from .zscore import mask_box

    pred_r = np.asanyarray(pred.dataobj) if hasattr(pred, "dataobj") else np.asarray(pred)
    ref_r = np.asanyarray(ref.dataobj) if hasattr(ref, "dataobj") else np.asarray(ref)
    if pred_r.shape != ref_r.shape:
        raise ValueError(f"shape mismatch: pred {pred_r.shape} vs ref {ref_r.shape}")
    mask_b = _as_mask(mask, ref_r.shape)
    box = mask_box(mask_b, int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5))
    return pred_r[box], ref_r[box], mask_b[box]


def image_metrics(pred: Any, ref: Any, mask: Any = None) -> dict[str, float]:
    """All metrics on the pair scaled to [0, 1] by ``scale_pair`` (``data_range`` = 1).

    Returns ``{"ssim", "ssim_2d", "psnr", "rmse", "mae"}``: 3D SSIM, axial slicewise SSIM
    (axis 2), PSNR (dB) and RMSE/MAE (fraction of the reference's range in the mask).
    With a mask they are computed on its bounding box grown by the SSIM window's radius
    (``_crop_to_mask``), which gives exactly the values of the whole volumes.
    """
    if mask is not None:  # the metrics only see the mask and SSIM's window around it
        pred, ref, mask = _crop_to_mask(pred, ref, mask)
    pred01, ref01 = scale_pair(pred, ref, mask)
    mask_b = _as_mask(mask, ref01.shape)
    return {
        "ssim": ssim(pred01, ref01, mask_b),
        "ssim_2d": ssim_slicewise(pred01, ref01, mask_b),
        "psnr": psnr(pred01, ref01, mask_b),
        "rmse": rmse(pred01, ref01, mask_b),
        "mae": mae(pred01, ref01, mask_b),
    }
