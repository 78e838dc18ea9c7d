"""The group level's fast paths give the results of the plain computations they replace
(issue 19): leave-one-out normative models from one sort per voxel, smoothing and SSIM on
the mask's bounding box."""

import numpy as np
import pytest
from scipy import ndimage

from pet_synth_app.analysis import metrics, zscore


def _old_smooth_in_mask(data, mask, sigma):
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
    smooth = ndimage.gaussian_filter(np.where(mask, data, 0.0), sigma, mode="constant")
    out = np.zeros_like(data)
    out[mask] = smooth[mask] / weight[mask]
    return out


def _blob(shape, rng, centre=None):
    grid = np.indices(shape).astype(float)
    centre = np.array(centre if centre is not None else [s / 2 for s in shape])
    radius = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return radius < min(shape) / 3 + rng.uniform(-1, 1, shape)


@pytest.mark.parametrize("centre", [None, (3, 4, 5), (18, 20, 15)])
def test_smooth_in_mask_on_box_is_exact(centre):
    rng = np.random.default_rng(1)
    shape = (21, 24, 19)
    mask = _blob(shape, rng, centre)
    data = rng.normal(1.0, 0.3, shape)
    sigma = np.array([1.7, 1.2, 2.1])
    new = zscore._smooth_in_mask(data, mask, sigma)
    np.testing.assert_array_equal(new, _old_smooth_in_mask(data, mask, sigma))
    assert np.count_nonzero(new[~mask]) == 0


def test_mask_box():
    mask = np.zeros((10, 12, 8), bool)
    mask[3:5, 6, 0:2] = True
    assert zscore.mask_box(mask, 2) == (slice(1, 7), slice(4, 9), slice(0, 4))
    assert zscore.mask_box(np.zeros((3, 4), bool)) == (slice(0, 3), slice(0, 4))


@pytest.mark.parametrize("n", [9, 10, 13])
def test_loo_median_mad_matches_numpy(n):
    rng = np.random.default_rng(n)
    stack = rng.normal(size=(n, 400))
    stack[:, :100] = np.round(stack[:, :100], 1)  # ties
    stack[:, 100:110] = 0.5  # constant columns
    left_out = np.arange(n)
    centre, mad = zscore._loo_median_mad(stack, left_out)
    for i in left_out:
        others = np.delete(stack, i, axis=0)
        c = np.median(others, axis=0)
        np.testing.assert_array_equal(centre[i], c)
        np.testing.assert_array_equal(mad[i], np.median(np.abs(others - c), axis=0))


@pytest.mark.parametrize("partial", [False, True])
def test_loo_normative_voxels_matches_per_control_fits(partial):
    rng = np.random.default_rng(4)
    shape = (14, 15, 12)
    voxels = _blob(shape, rng)
    n, size = 11, int(voxels.sum())
    values = (rng.normal(1.0, 0.2, (n, size)) * rng.uniform(0.9, 1.1, (n, 1))).astype(np.float32)
    mask = voxels & (rng.uniform(size=shape) < 0.95)
    valid = None
    if partial:  # some controls' fields of view miss the first slices
        valid = np.ones((n, size), bool)
        lows = np.argwhere(voxels)[:, 2]
        for i in (1, 4, 5, 6, 7, 8):
            valid[i] = lows >= (3 if i == 1 else 2)
    zooms = (2.0, 2.0, 2.0)
    got = list(
        zscore.loo_normative_voxels(values, voxels, mask, [0, 3, 7], zooms=zooms, valid=valid)
    )
    assert [i for i, _, _ in got] == [0, 3, 7]
    for i, mean, sd in got:
        rows = [r for r in range(n) if r != i]
        m0, s0 = zscore.fit_normative_voxels(
            values, voxels, mask, zooms=zooms, valid=valid, rows=rows
        )
        np.testing.assert_allclose(mean, m0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sd, s0, rtol=0, atol=1e-12)
        if not partial:
            np.testing.assert_array_equal(mean, m0)
            np.testing.assert_array_equal(sd, s0)


def _old_image_metrics(pred, ref, mask):
    pred01, ref01 = metrics.scale_pair(pred, ref, mask)
    return {
        "ssim": metrics.ssim(pred01, ref01, mask),
        "ssim_2d": metrics.ssim_slicewise(pred01, ref01, mask),
        "psnr": metrics.psnr(pred01, ref01, mask),
        "rmse": metrics.rmse(pred01, ref01, mask),
        "mae": metrics.mae(pred01, ref01, mask),
    }


@pytest.mark.parametrize("centre", [None, (4, 3, 2), (25, 27, 19)])
def test_image_metrics_on_mask_box_are_exact(centre):
    rng = np.random.default_rng(7)
    shape = (30, 32, 22)
    mask = _blob(shape, rng, centre) & (rng.uniform(size=shape) < 0.9)
    ref = ndimage.gaussian_filter(rng.gamma(2.0, 1.0, shape), 1.0).astype(np.float32)
    pred = (0.9 * ref + rng.normal(0, 0.05, shape)).astype(np.float32)
    new = metrics.image_metrics(pred, ref, mask)
    assert new == _old_image_metrics(pred, ref, mask)
    box = zscore.mask_box(mask, 5)
    assert np.prod([b.stop - b.start for b in box]) < mask.size


def test_centre_spread_matches_numpy_medians():
    rng = np.random.default_rng(3)
    stack = rng.normal(size=(12, 300))
    stack[:, :50] = np.round(stack[:, :50], 1)
    centre, spread = zscore._centre_spread(stack, True)
    c = np.median(stack, axis=0)
    np.testing.assert_array_equal(centre, c)
    np.testing.assert_array_equal(spread, zscore.MAD_TO_SD * np.median(np.abs(stack - c), axis=0))


def test_image_metrics_of_fortran_ordered_volumes():
    """NIfTI data are Fortran-ordered; the metrics must not depend on the layout."""
    rng = np.random.default_rng(8)
    shape = (20, 22, 18)
    mask = _blob(shape, rng)
    ref = ndimage.gaussian_filter(rng.gamma(2.0, 1.0, shape), 1.0)
    pred = 0.9 * ref + rng.normal(0, 0.05, shape)
    c_order = metrics.image_metrics(pred, ref, mask)
    f_order = metrics.image_metrics(
        np.asfortranarray(pred), np.asfortranarray(ref), np.asfortranarray(mask)
    )
    assert c_order == f_order == _old_image_metrics(pred, ref, mask)
    for axis in (0, 1, 2):
        assert metrics.ssim_slicewise(pred, ref, mask, axis=axis) == metrics.ssim_slicewise(
            np.asfortranarray(pred), np.asfortranarray(ref), mask, axis=axis
        )


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_read_and_score_keeps_order_and_raises(monkeypatch, workers):
    import time

    from pet_synth_app import group
    from pet_synth_app.errors import PetSynthError

    def fake(out, subject, files, shape):
        time.sleep(0.01 * (int(subject) % 3))  # finish out of order
        if subject == "07":
            raise PetSynthError("MNI grids differ between controls", subject)
        return subject

    monkeypatch.setattr(group, "_read_one", fake)
    found = {f"{i:02d}": {} for i in range(6)}
    got = list(group._read_and_score(None, found, (1,), workers))
    assert got == [(s, s) for s in found]
    found["07"] = {}
    with pytest.raises(PetSynthError, match="MNI grids differ"):
        list(group._read_and_score(None, found, (1,), workers))


def test_cluster_null_same_with_two_workers():
    from pet_synth_app.analysis import calibration, normative

    rng = np.random.default_rng(5)
    shape = (18, 20, 16)
    brain = _blob(shape, rng)
    base = ndimage.gaussian_filter(rng.gamma(3.0, 0.4, shape), 1.0)
    pets, pseudos, masks = [], [], []
    for _ in range(10):
        pet = base * rng.uniform(0.95, 1.05) + ndimage.gaussian_filter(
            rng.normal(0, 0.2, shape), 1.5
        )
        pets.append(pet)
        pseudos.append(ndimage.gaussian_filter(pet, 1.0))
        masks.append(brain)
    maps = normative.control_maps(pets, pseudos, masks)
    gm = np.ones((10, int(maps.voxels.sum())), bool)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    one = calibration.loo_cluster_null_maps(maps, gm, affine, min_volume_mm3=16, workers=1)
    two = calibration.loo_cluster_null_maps(maps, gm, affine, min_volume_mm3=16, workers=2)
    assert one == two
    assert sum(len(s) for s in one["scans"]["controlpet"]) > 0
