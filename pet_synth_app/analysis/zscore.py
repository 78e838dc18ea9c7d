"""Hypometabolism Z-score maps: real PET vs pseudo-normal PET, or vs healthy controls.

All images are SUVR volumes on one common voxel grid (normally MNI152NLin2009aSym); inputs
may be numpy arrays or nibabel images, outputs are float64 numpy arrays on that grid.
Masks are "nonzero = inside" unless a function says otherwise.

Three ways to get a Z map (Z is dimensionless, negative = hypometabolic):

1. Self-referenced (Chen et al. 2025, section 2.2): ``d = residual(real, pseudo, mask)``
   (SUVR difference), then ``self_referenced_z(d, gm)``: ``(d - mean_GM(d)) / sd_GM(d)``.
2. Control-referenced, with synthesis: residuals ``d`` of the healthy controls give a
   voxelwise normative model, ``mean, sd = fit_normative([d_c1, d_c2, ...], mask, ...)``,
   and a patient's ``control_referenced_z(d, mean, sd, mask)``.
3. Baseline without synthesis (classic voxelwise comparison with controls): the same two
   functions on the real PET itself, ``mean, sd = fit_normative([pet_c1, ...], mask, ...)``
   then ``control_pet_z(pet, mean, sd, mask)`` (a named alias of ``control_referenced_z``).

Before all three, each participant's (and control's) PET and pseudo-normal PET are
smoothed inside its analysis mask, ``smooth_in_mask(pet, mask, fwhm_mm, zooms)``: the
analysis smoothing, ``config.Z_FWHM_MM`` by default and the same for every map of a
normative model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..config import GM_THRESHOLD

NORMATIVE_FWHM_MM = 4.0
"""Gaussian FWHM (mm) applied to the voxelwise normative mean and SD. With tens of
controls a voxelwise SD is noisy (relative error ~1/sqrt(2(n-1)), ~13 % for 30 controls);
pooling neighbours over ~4 mm steadies it while staying below the ~6-8 mm resolution of
FDG PET, so it adds little blur to what the data already have. 0 disables smoothing."""
ROBUST_MIN_CONTROLS = 8
"""Fewest controls for the robust estimates (median, 1.4826 x MAD). Below this the median
and MAD are too noisy (MAD has ~37 % efficiency at the normal) and one cannot reject an
outlier anyway, so plain mean and SD (ddof=1) are used instead."""
SD_FLOOR_SUVR = 0.01
"""Absolute floor (SUVR) of the normative SD: 1 % of a GM-normalized uptake, below the
test-retest noise of FDG PET, so it only stops Z from exploding where controls agree."""
SD_FLOOR_FRACTION = 0.25
"""Relative floor of the normative SD, as a fraction of its median inside the mask, so a
few spuriously low-variance voxels cannot dominate the Z map."""
MAD_TO_SD = 1.4826
"""Scale making the median absolute deviation a consistent SD estimate for normal data."""
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
MIN_COVERED_FRACTION = 0.5
"""A voxel enters a normative model only when the PET field of view of at least this
fraction of the controls (and of at least 2) covers it (``normative_support``): a
voxel seen by a few controls would get a noisy, biased SD."""


def _as_array(image: Any) -> np.ndarray:
    """float64 copy of a numpy array or the data of a nibabel image."""
    data = np.asanyarray(image.dataobj) if hasattr(image, "dataobj") else image
    return np.array(data, dtype=np.float64)


def _as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask (nonzero = inside) of the given shape; None means everywhere."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    data = np.asanyarray(mask.dataobj) if hasattr(mask, "dataobj") else np.asarray(mask)
    out = data != 0
    if out.shape != shape:
        raise ValueError(f"mask shape {out.shape} does not match image shape {shape}")
    if not out.any():
        raise ValueError("mask is empty")
    return out


def _gm_mask(gm: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean GM mask: a boolean array as is, otherwise probability > ``GM_THRESHOLD``."""
    data = np.asanyarray(gm.dataobj) if hasattr(gm, "dataobj") else np.asarray(gm)
    out = data if data.dtype == bool else data > GM_THRESHOLD
    if out.shape != shape:
        raise ValueError(f"GM mask shape {out.shape} does not match image shape {shape}")
    if not out.any():
        raise ValueError("GM mask is empty")
    return out


def histogram_match(source: Any, reference: Any, mask: Any) -> np.ndarray:
    """Quantile-map ``source`` inside ``mask`` onto the distribution of ``reference`` there.

    Each source voxel in the mask gets the reference value at the same empirical quantile
    (ties share one value; linear interpolation between reference quantiles), so the
    result has the reference's histogram in the mask and keeps the source's voxel order.
    Voxels outside the mask are returned unchanged. Units are those of ``reference``.
    """
    src = _as_array(source)
    ref = _as_array(reference)
    if src.shape != ref.shape:
        raise ValueError(f"shape mismatch: source {src.shape} vs reference {ref.shape}")
    inside = _as_mask(mask, src.shape)
    values, inverse, counts = np.unique(src[inside], return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(ref[inside], return_counts=True)
    src_q = np.cumsum(counts) / counts.sum()
    ref_q = np.cumsum(ref_counts) / ref_counts.sum()
    out = src.copy()
    out[inside] = np.interp(src_q, ref_q, ref_values)[inverse.reshape(-1)]
    return out


def residual(real: Any, pseudo: Any, mask: Any, histogram_matching: bool = False) -> np.ndarray:
    """Difference map ``d = real - pseudo`` (SUVR, MNI) inside ``mask``, 0 outside.

    With ``histogram_matching`` the pseudo-normal PET is first quantile-mapped onto the
    real PET's distribution inside the mask (``histogram_match``), which removes global
    intensity differences between the synthesis model and the scanner.
    """
    real_a = _as_array(real)
    pseudo_a = _as_array(pseudo)
    if real_a.shape != pseudo_a.shape:
        raise ValueError(f"shape mismatch: real {real_a.shape} vs pseudo {pseudo_a.shape}")
    inside = _as_mask(mask, real_a.shape)
    if histogram_matching:
        pseudo_a = histogram_match(pseudo_a, real_a, inside)
    return np.where(inside, real_a - pseudo_a, 0.0)


def _with_model_sd(sd: Any, model_sd: Any, shape: tuple[int, ...]) -> Any:
    """``sqrt(sd^2 + model_sd^2)`` (issue 15: the synthesis model's per-voxel SD, SUVR);
    ``sd`` unchanged without ``model_sd``."""
    if model_sd is None:
        return sd
    m = _as_array(model_sd)
    if m.shape != shape:
        raise ValueError(f"shape mismatch: model SD {m.shape} vs {shape}")
    return np.sqrt(np.asarray(sd, dtype=np.float64) ** 2 + np.nan_to_num(m) ** 2)


def self_referenced_z(d: Any, gm_mask: Any, mask: Any = None, model_sd: Any = None) -> np.ndarray:
    """Self-referenced Z map ``(d - mean_GM(d)) / sd_GM(d)`` (Chen et al.).

    With ``model_sd`` (the SD map of the pseudo-normal PET samples, SUVR, same grid) the
    denominator is ``sqrt(sd_GM(d)^2 + model_sd^2)`` voxel by voxel.

    The mean and (population, ddof=0) SD come from the GM voxels only: ``gm_mask`` is a
    boolean mask or a GM probability map thresholded at ``GM_THRESHOLD`` (> 0.5). Z is
    then computed at every voxel inside ``mask`` (default: everywhere), 0 elsewhere and
    wherever ``d`` is not finite. Raises ValueError if d is constant over GM.
    """
    data = _as_array(d)
    gm = _gm_mask(gm_mask, data.shape) & np.isfinite(data)
    if not gm.any():
        raise ValueError("no finite values of d inside the GM mask")
    mean = float(data[gm].mean())
    sd = float(data[gm].std())
    if not sd > 0:
        raise ValueError("d is constant over the GM mask; Z is undefined")
    inside = _as_mask(mask, data.shape) & np.isfinite(data)
    return np.where(inside, (data - mean) / _with_model_sd(sd, model_sd, data.shape), 0.0)


def _centre_spread(stack: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``stack`` (controls x voxels; NaN = not covered): median and
    1.4826 x MAD when ``robust``, else mean and SD (ddof=1)."""
    if np.isfinite(stack).all():
        if robust:  # each voxel's values contiguous: the same medians, ~1.7x faster
            columns = np.ascontiguousarray(stack.T)
            centre = np.median(columns, axis=1)
            return centre, MAD_TO_SD * np.median(np.abs(columns - centre[:, None]), axis=1)
        return stack.mean(axis=0), stack.std(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if robust:
                centre = np.nanmedian(stack, axis=0)
                return centre, MAD_TO_SD * np.nanmedian(np.abs(stack - centre), axis=0)
            return np.nanmean(stack, axis=0), np.nanstd(stack, axis=0, ddof=1)


def mask_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """The bounding box of the nonzero voxels of ``mask`` grown by ``margin`` voxels per
    axis and clipped to the array (slices; the whole array when ``mask`` is empty)."""
    mask = np.asarray(mask)
    margins = np.broadcast_to(np.asarray(margin, dtype=np.intp), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if not hit.size:
            return tuple(slice(0, n) for n in mask.shape)
        lo = max(0, int(hit[0]) - int(margins[axis]))
        box.append(slice(lo, min(mask.shape[axis], int(hit[-1]) + 1 + int(margins[axis]))))
    return tuple(box)


def _gaussian_radius(sigma_vox: Any, truncate: float = 4.0) -> np.ndarray:
    """Per-axis kernel radius (voxels) of ``ndimage.gaussian_filter`` for ``sigma_vox``."""
    return np.array([int(truncate * float(s) + 0.5) for s in np.atleast_1d(sigma_vox)])


def _smooth_in_mask(
    data: np.ndarray,
    mask: np.ndarray,
    sigma_vox: np.ndarray,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian smoothing restricted to the mask (normalized convolution), 0 outside.

    Computed on the mask's bounding box grown by the kernel radius: outside it the
    zero-filled input is 0 as the filter's constant padding is, so the values in the mask
    are exactly those of the whole-volume filter. ``weight``: the smoothed mask on that
    box (``_mask_weight``), when the caller reuses it across maps of one mask."""
    box = mask_box(mask, _gaussian_radius(np.broadcast_to(sigma_vox, (mask.ndim,))))
    inner = mask[box]
    if weight is None:
        weight = _mask_weight(mask, sigma_vox)
    smooth = ndimage.gaussian_filter(np.where(inner, data[box], 0.0), sigma_vox, mode="constant")
    out = np.zeros_like(data)
    out[box][inner] = smooth[inner] / weight[inner]
    return out


def smooth_in_mask(
    volume: Any, mask: Any, fwhm_mm: float, zooms: Sequence[float] | None
) -> np.ndarray:
    """``volume`` (SUVR, any 3D grid) smoothed by a Gaussian of ``fwhm_mm`` (mm; ``zooms``:
    the voxel size in mm) inside ``mask`` by normalized convolution (voxels outside the
    mask neither contribute nor receive), 0 outside; float64. ``fwhm_mm`` 0: the volume
    masked, unsmoothed."""
    data = _as_array(volume)
    inside = _as_mask(mask, data.shape)
    if fwhm_mm < 0:
        raise ValueError(f"smoothing FWHM must be >= 0 mm, got {fwhm_mm}")
    if fwhm_mm == 0:
        return np.where(inside, data, 0.0)
    if zooms is None:
        raise ValueError("zooms (voxel size in mm) are needed to smooth by fwhm_mm")
    sigma = fwhm_mm * FWHM_TO_SIGMA / np.abs(np.asarray(zooms, dtype=np.float64)[:3])
    return _smooth_in_mask(np.where(inside, data, 0.0), inside, sigma)


def _mask_weight(mask: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    """The Gaussian-smoothed ``mask`` (float64) on its box of ``_smooth_in_mask``."""
    box = mask_box(mask, _gaussian_radius(np.broadcast_to(sigma_vox, (mask.ndim,))))
    return ndimage.gaussian_filter(mask[box].astype(np.float64), sigma_vox, mode="constant")


def _min_covered(n_controls: int) -> int:
    """Fewest of ``n_controls`` controls whose field of view must cover a voxel for it to
    enter a normative model (at least 2 and ``MIN_COVERED_FRACTION`` of them)."""
    return max(2, int(np.ceil(MIN_COVERED_FRACTION * n_controls)))


def normative_support(
    valid: Sequence[Any] | None, mask: Any, shape: tuple[int, ...]
) -> np.ndarray:
    """Voxels of ``mask`` (None: everywhere) that a normative model can be fitted at:
    covered by at least 2 and at least ``MIN_COVERED_FRACTION`` of the controls'
    ``valid`` masks (their PET fields of view; None: every control everywhere). Bool."""
    inside = _as_mask(mask, shape)
    if valid is None:
        return inside
    valid = list(valid)
    count = np.zeros(shape, np.int32)
    for v in valid:  # one mask at a time: no (n, *shape) stack
        m = np.asarray(v) != 0
        if m.shape != shape:
            raise ValueError(f"a control's coverage mask does not match the image shape {shape}")
        count += m
    return inside & (count >= _min_covered(len(valid)))


def support_columns(valid: np.ndarray, rows: Sequence[int] | None = None) -> np.ndarray:
    """``normative_support`` on compact data: which columns (voxels) of ``valid`` (n, N)
    bool, the controls' fields of view at N voxels, are covered by enough of the
    controls ``rows`` (None: all). Bool (N,)."""
    valid = np.asarray(valid)
    rows = range(len(valid)) if rows is None else rows
    count = np.zeros(valid.shape[1], np.int32)
    for r in rows:
        count += valid[r] != 0
    return count >= _min_covered(len(rows))


def fit_normative(
    residuals: Sequence[Any] | np.ndarray,
    mask: Any,
    fwhm_mm: float = NORMATIVE_FWHM_MM,
    zooms: Sequence[float] | None = None,
    sd_floor: float = SD_FLOOR_SUVR,
    sd_floor_fraction: float = SD_FLOOR_FRACTION,
    robust: bool = True,
    valid: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Voxelwise normative mean and SD (SUVR) over controls, inside ``mask``.

    ``residuals`` is a list of 3D maps (arrays or images) or a 4D stack ``(n, x, y, z)``:
    the controls' residuals ``d`` for control-referenced Z, or their real PET for the
    no-synthesis baseline. With ``robust`` and at least ``ROBUST_MIN_CONTROLS`` controls
    the centre is the median and the spread 1.4826 x MAD; otherwise (or with fewer
    controls) the mean and SD (ddof=1). Both maps are then smoothed with a Gaussian of
    ``fwhm_mm`` (mm; sigma in voxels from ``zooms``, the voxel size in mm, taken from the
    first image header when not given), restricted to the mask. Finally the SD is floored
    at ``max(sd_floor, sd_floor_fraction * median SD in the mask)``. Returns ``(mean,
    sd)``; both are 0 outside the mask. Needs at least 2 controls.

    ``valid``: one mask per control, the voxels its map has data at (its PET field of
    view); each voxel's statistics then use only the controls covering it (robust where
    at least ``ROBUST_MIN_CONTROLS`` do), and the model covers ``normative_support``
    only (mean and SD 0 elsewhere in the mask).

    This stacks the maps at the fitted voxels (float64) and calls
    ``fit_normative_voxels``, which takes the controls already in that compact form.
    """
    items = list(residuals)
    if len(items) < 2:
        raise ValueError(f"need at least 2 controls for a normative model, got {len(items)}")
    if zooms is None and hasattr(items[0], "header"):
        zooms = items[0].header.get_zooms()[:3]
    first = _as_array(items[0])
    shape = first.shape
    if valid is not None and len(valid) != len(items):
        raise ValueError(f"{len(valid)} coverage masks for {len(items)} controls")
    inside = normative_support(valid, mask, shape)
    if not inside.any():
        raise ValueError("no voxel of the mask is covered by enough controls' PET")
    stack = np.empty((len(items), int(inside.sum())), dtype=np.float64)
    for n, item in enumerate(items):
        data = first if n == 0 else _as_array(item)
        if data.shape != shape:
            raise ValueError(f"control {n} has shape {data.shape}, expected {shape}")
        stack[n] = data[inside]
    views = None if valid is None else np.stack([np.asarray(v)[inside] != 0 for v in valid])
    return fit_normative_voxels(
        stack,
        inside,
        fwhm_mm=fwhm_mm,
        zooms=zooms,
        sd_floor=sd_floor,
        sd_floor_fraction=sd_floor_fraction,
        robust=robust,
        valid=views,
    )


NORMATIVE_BLOCK_VOXELS = 65536
"""Voxels whose statistics ``fit_normative_voxels`` computes at a time: the float64
copies of the median and MAD then take ~0.5 MB per control, not the whole brain's."""


def fit_normative_voxels(
    values: np.ndarray,
    voxels: Any,
    mask: Any = None,
    *,
    fwhm_mm: float = NORMATIVE_FWHM_MM,
    zooms: Sequence[float] | None = None,
    sd_floor: float = SD_FLOOR_SUVR,
    sd_floor_fraction: float = SD_FLOOR_FRACTION,
    robust: bool = True,
    valid: np.ndarray | None = None,
    rows: Sequence[int] | None = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``fit_normative`` on controls held compactly: ``values`` (n, N) (SUVR, any float
    dtype), one row per control at the N voxels of the bool grid ``voxels`` (C order,
    as ``volume[voxels]``); the model is fitted inside ``mask`` (a bool grid within
    ``voxels``; None: all of them) from the controls ``rows`` (None: all; e.g. all but
    one for a leave-one-out fit). ``valid`` (n, N) bool: each control's field of view at
    those voxels (None: everywhere). Statistics are computed ``block`` voxels at a time
    (None: ``NORMATIVE_BLOCK_VOXELS``) in float64. Returns ``(mean, sd)`` on the grid of
    ``voxels`` (float64 SUVR, 0 outside the fitted support); same rules as
    ``fit_normative``.
    """
    vox = np.asarray(voxels) != 0
    shape = vox.shape
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != int(vox.sum()):
        raise ValueError(f"values {values.shape} do not match the {int(vox.sum())} voxels")
    rows = np.arange(len(values)) if rows is None else np.asarray(rows, dtype=np.intp)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 controls for a normative model, got {len(rows)}")
    if mask is None:
        cols_in = np.ones(vox.sum(), bool)
    else:
        fit_mask = _as_mask(mask, shape)
        if (fit_mask & ~vox).any():
            raise ValueError("the mask has voxels outside those the controls are held at")
        cols_in = fit_mask[vox]
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != values.shape:
            raise ValueError(f"{valid.shape} coverage masks for values {values.shape}")
        cols_in &= support_columns(valid, rows)
    inside = np.zeros(shape, bool)
    inside[vox] = cols_in
    if not inside.any():
        raise ValueError("no voxel of the mask is covered by enough controls' PET")
    cols = np.flatnonzero(cols_in)
    centre = np.empty(len(cols))
    spread = np.empty(len(cols))
    use_robust = robust and len(rows) >= ROBUST_MIN_CONTROLS
    step = max(1, int(block or NORMATIVE_BLOCK_VOXELS))
    for start in range(0, len(cols), step):
        part = np.ix_(rows, cols[start : start + step])
        stack = values[part].astype(np.float64)
        if valid is not None:
            stack[~(valid[part] != 0)] = np.nan  # outside its view
        elif not np.all(np.isfinite(stack)):
            raise ValueError("control maps have non-finite values inside the mask")
        out = slice(start, start + stack.shape[1])
        covered = np.isfinite(stack)
        if covered.all():
            centre[out], spread[out] = _centre_spread(stack, use_robust)
        else:  # fields of view differ: each voxel from the controls covering it
            c, s = _centre_spread(stack, False)
            if robust:
                r_c, r_s = _centre_spread(stack, True)
                use = covered.sum(axis=0) >= ROBUST_MIN_CONTROLS
                c, s = np.where(use, r_c, c), np.where(use, r_s, s)
            centre[out], spread[out] = c, s
    return _finish_normative(
        centre, spread, inside, fwhm_mm, zooms, sd_floor, sd_floor_fraction, None
    )[:2]


def _finish_normative(
    centre: np.ndarray,
    spread: np.ndarray,
    inside: np.ndarray,
    fwhm_mm: float,
    zooms: Sequence[float] | None,
    sd_floor: float,
    sd_floor_fraction: float,
    weight: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The normative ``(mean, sd)`` grids (float64 SUVR) from the voxel statistics
    ``centre`` and ``spread`` at the voxels of ``inside`` (bool grid, C order): smoothed
    within ``inside`` by ``fwhm_mm``, SD floored; also returns the smoothed mask
    (``_mask_weight``; ``weight`` when given) for reuse with the same ``inside``."""
    shape = inside.shape
    mean = np.zeros(shape)
    sd = np.zeros(shape)
    mean[inside] = centre
    sd[inside] = spread
    if fwhm_mm > 0:
        if zooms is None:
            raise ValueError("zooms (voxel size in mm) are needed to smooth by fwhm_mm")
        sigma = fwhm_mm * FWHM_TO_SIGMA / np.abs(np.asarray(zooms, dtype=np.float64)[:3])
        if weight is None:
            weight = _mask_weight(inside, sigma)
        mean = _smooth_in_mask(mean, inside, sigma, weight)
        sd = _smooth_in_mask(sd, inside, sigma, weight)
    floor = max(float(sd_floor), float(sd_floor_fraction) * float(np.median(sd[inside])))
    if not floor > 0:
        raise ValueError("the SD floor must be positive (sd_floor or sd_floor_fraction)")
    sd[inside] = np.maximum(sd[inside], floor)
    return mean, sd, weight


LOO_BLOCK_VOXELS = 8192
"""Voxels whose leave-one-out statistics ``loo_normative_voxels`` computes at a time."""


def _loo_median_mad(stack: np.ndarray, left_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row ``i`` of ``left_out``: the median and MAD (not scaled) per column of
    ``stack`` (n, B; finite float64) without row ``i``; (len(left_out), B) each.

    Exactly ``np.median`` of the other rows and ``np.median`` of their absolute
    deviations from it: the column is sorted once; the median of the others is read at
    shifted ranks, and the k-th smallest deviation is the smaller end deviation of the
    window of k consecutive sorted values found by bisection (deviations from the median
    fall then rise along the sorted values)."""
    n, width = stack.shape
    order = np.argsort(stack, axis=0, kind="stable")
    s = np.take_along_axis(stack, order, axis=0)
    rank_all = np.empty_like(order)
    np.put_along_axis(rank_all, order, np.broadcast_to(np.arange(n)[:, None], order.shape), 0)
    rank = rank_all[left_out]  # (g, B): where the left-out value sits in the sorted column
    m = n - 1  # values left per column

    def value(k: np.ndarray) -> np.ndarray:  # k-th smallest of the others (0-based)
        return np.take_along_axis(s, k + (k >= rank), axis=0)

    def kth(k: int) -> np.ndarray:
        return value(np.full(rank.shape, k - 1, np.intp))

    half = m // 2
    centre = kth(half + 1) if m % 2 else (kth(half) + kth(half + 1)) / 2

    def kth_deviation(k: int) -> np.ndarray:  # 1-based
        last = m - k  # window starts 0..last
        lo = np.zeros(rank.shape, np.intp)
        hi = np.full(rank.shape, last + 1, np.intp)
        for _ in range(int(np.ceil(np.log2(last + 2))) + 1):
            mid = (lo + hi) // 2
            at = np.minimum(mid, last)
            right_ge = (value(at + k - 1) - centre) >= (centre - value(at))
            right_ge &= mid <= last
            hi = np.where(right_ge, mid, hi)
            lo = np.where(right_ge, lo, np.minimum(mid + 1, hi))
        start = lo
        right = np.where(start <= last, value(np.minimum(start, last) + k - 1) - centre, np.inf)
        left = np.where(start >= 1, centre - value(np.maximum(start - 1, 0)), np.inf)
        return np.minimum(right, left)

    if m % 2:
        mad = kth_deviation(half + 1)
    else:
        mad = (kth_deviation(half) + kth_deviation(half + 1)) / 2
    return centre, mad


def loo_normative_voxels(
    values: np.ndarray,
    voxels: Any,
    mask: Any,
    left_out: Sequence[int],
    *,
    fwhm_mm: float = NORMATIVE_FWHM_MM,
    zooms: Sequence[float] | None = None,
    sd_floor: float = SD_FLOOR_SUVR,
    sd_floor_fraction: float = SD_FLOOR_FRACTION,
    robust: bool = True,
    valid: np.ndarray | None = None,
    block: int | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Leave-one-out ``fit_normative_voxels``: for each control ``i`` of ``left_out``,
    yields ``(i, mean, sd)``, the model of all other rows of ``values`` (same arguments
    and results as ``fit_normative_voxels(..., rows=others)``).

    Where every control covers a voxel and the robust estimates apply, the voxel's
    median and MAD without each ``i`` come from one sort of its values
    (``_loo_median_mad``), not one selection per control; the other voxels take the
    per-control path. The statistics of ``left_out`` are held at once ((g, N) float64
    x 2): pass the controls in groups to bound memory."""
    vox = np.asarray(voxels) != 0
    shape = vox.shape
    values = np.asarray(values)
    n = len(values)
    left_out = np.asarray(left_out, dtype=np.intp)
    if values.ndim != 2 or values.shape[1] != int(vox.sum()):
        raise ValueError(f"values {values.shape} do not match the {int(vox.sum())} voxels")
    if n - 1 < 2:
        raise ValueError(f"need at least 2 controls for a normative model, got {n - 1}")
    fit_cols = _as_mask(mask, shape)[vox] if mask is not None else np.ones(vox.sum(), bool)
    full = np.ones(values.shape[1], bool) if valid is None else np.all(valid != 0, axis=0)
    count = None if valid is None else (np.asarray(valid) != 0).sum(axis=0)
    cand = np.flatnonzero(fit_cols)  # every column a model may use
    g = len(left_out)
    centre = np.zeros((g, len(cand)))
    spread = np.zeros((g, len(cand)))
    fast = full[cand] & (robust and n - 1 >= ROBUST_MIN_CONTROLS)
    step = max(1, int(block or LOO_BLOCK_VOXELS))
    fast_cols = np.flatnonzero(fast)
    for start in range(0, len(fast_cols), step):
        where = fast_cols[start : start + step]
        stack = values[:, cand[where]].astype(np.float64)
        if not np.all(np.isfinite(stack)):
            raise ValueError("control maps have non-finite values inside the mask")
        c, mad = _loo_median_mad(stack, left_out)
        centre[:, where] = c
        spread[:, where] = MAD_TO_SD * mad
    slow = np.flatnonzero(~fast)
    weight_for: tuple[np.ndarray, np.ndarray] | None = None
    for j, i in enumerate(left_out):
        rows = np.array([r for r in range(n) if r != i], dtype=np.intp)
        cols_in = fit_cols.copy()
        if count is not None:
            cols_in &= (count - (np.asarray(valid[i]) != 0)) >= _min_covered(len(rows))
        for start in range(0, len(slow), step):
            where = slow[start : start + step]
            part = np.ix_(rows, cand[where])
            stack = values[part].astype(np.float64)
            if valid is not None:
                stack[~(valid[part] != 0)] = np.nan
            elif not np.all(np.isfinite(stack)):
                raise ValueError("control maps have non-finite values inside the mask")
            use_robust = robust and len(rows) >= ROBUST_MIN_CONTROLS
            if np.isfinite(stack).all():
                c, s = _centre_spread(stack, use_robust)
            else:
                c, s = _centre_spread(stack, False)
                if robust:
                    r_c, r_s = _centre_spread(stack, True)
                    use = np.isfinite(stack).sum(axis=0) >= ROBUST_MIN_CONTROLS
                    c, s = np.where(use, r_c, c), np.where(use, r_s, s)
            centre[j, where], spread[j, where] = c, s
        inside = np.zeros(shape, bool)
        inside[vox] = cols_in
        if not inside.any():
            raise ValueError("no voxel of the mask is covered by enough controls' PET")
        keep = cols_in[cand]
        weight = None
        if weight_for is not None and np.array_equal(weight_for[0], inside):
            weight = weight_for[1]
        mean, sd, weight = _finish_normative(
            centre[j, keep],
            spread[j, keep],
            inside,
            fwhm_mm,
            zooms,
            sd_floor,
            sd_floor_fraction,
            weight,
        )
        weight_for = (inside, weight) if weight is not None else None
        yield int(i), mean, sd


def control_referenced_z(
    d: Any, mean: Any, sd: Any, mask: Any, model_sd: Any = None
) -> np.ndarray:
    """Voxelwise Z ``(d - mean) / sd`` against a normative model, inside ``mask``; 0 outside.

    With ``model_sd`` (the participant's SD map of the pseudo-normal PET samples, SUVR)
    the denominator is ``sqrt(sd^2 + model_sd^2)``.

    ``mean`` and ``sd`` come from ``fit_normative`` (same grid and units as ``d``). Raises
    ValueError if the SD is not positive somewhere inside the mask (e.g. a mask larger
    than the one the model was fitted in).
    """
    data = _as_array(d)
    mean_a = _as_array(mean)
    sd_a = _with_model_sd(_as_array(sd), model_sd, data.shape)
    if not data.shape == mean_a.shape == sd_a.shape:
        raise ValueError(f"shape mismatch: d {data.shape}, mean {mean_a.shape}, sd {sd_a.shape}")
    inside = _as_mask(mask, data.shape)
    if not np.all(sd_a[inside] > 0):
        raise ValueError("normative SD is not positive everywhere inside the mask")
    out = np.zeros(data.shape)
    out[inside] = (data[inside] - mean_a[inside]) / sd_a[inside]
    return out


def control_pet_z(pet: Any, control_mean: Any, control_sd: Any, mask: Any) -> np.ndarray:
    """Baseline without synthesis: Z of a real PET (SUVR) against the controls' PET.

    ``control_mean, control_sd = fit_normative([control PET, ...], mask)``; this is
    ``control_referenced_z`` applied to the PET itself instead of a residual.
    """
    return control_referenced_z(pet, control_mean, control_sd, mask)


__all__ = [
    "MAD_TO_SD",
    "MIN_COVERED_FRACTION",
    "NORMATIVE_BLOCK_VOXELS",
    "NORMATIVE_FWHM_MM",
    "ROBUST_MIN_CONTROLS",
    "SD_FLOOR_FRACTION",
    "SD_FLOOR_SUVR",
    "control_pet_z",
    "control_referenced_z",
    "fit_normative",
    "fit_normative_voxels",
    "histogram_match",
    "normative_support",
    "residual",
    "self_referenced_z",
    "smooth_in_mask",
    "support_columns",
]
