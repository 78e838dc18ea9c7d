"""Image-similarity metrics (SSIM, PSNR, RMSE, MAE) used to evaluate synthetic PET."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from pet_synth_app.analysis import metrics

BORDER = 6  # > Gaussian window radius (int(3.5 * 1.5 + 0.5) = 5 voxels)


def smooth_volume(shape, seed=0, sigma=2.0) -> np.ndarray:
    """Random smooth image scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (data - data.min()) / (data.max() - data.min())


def interior(shape, border=BORDER) -> tuple[slice, ...]:
    return tuple(slice(border, n - border) for n in shape)


@pytest.fixture
def pair():
    ref = smooth_volume((24, 26, 22), seed=1)
    rng = np.random.default_rng(2)
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    return pred, ref


def central_mask(shape, margin=8) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[interior(shape, margin)] = True
    return mask


def test_identical_images():
    ref = smooth_volume((16, 18, 14))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim_slicewise(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(ref, ref) == math.inf
    assert metrics.rmse(ref, ref) == 0.0
    assert metrics.mae(ref, ref) == 0.0
    result = metrics.image_metrics(ref * 500 + 20, ref * 500 + 20)
    assert set(result) == {"ssim", "ssim_2d", "psnr", "rmse", "mae"}
    assert result["ssim"] == pytest.approx(1.0)
    assert result["ssim_2d"] == pytest.approx(1.0)
    assert result["psnr"] == math.inf
    assert result["rmse"] == 0.0 and result["mae"] == 0.0


def test_hand_computed_errors():
    ref = np.array([[0.0, 0.25], [0.5, 0.8]])
    pred = ref + 0.1
    assert metrics.rmse(pred, ref) == pytest.approx(0.1)
    assert metrics.mae(pred, ref) == pytest.approx(0.1)
    assert metrics.psnr(pred, ref) == pytest.approx(20.0)
    assert metrics.psnr(pred, ref, data_range=10.0) == pytest.approx(40.0)

    # errors 0.3, -0.1, 0, 0: MSE = 0.1 / 4 = 0.025, MAE = 0.1
    pred = ref + np.array([[0.3, -0.1], [0.0, 0.0]])
    assert metrics.rmse(pred, ref) == pytest.approx(math.sqrt(0.025))
    assert metrics.mae(pred, ref) == pytest.approx(0.1)
    assert metrics.psnr(pred, ref) == pytest.approx(10 * math.log10(1 / 0.025))
    mask = np.array([[True, True], [False, False]])  # MSE = 0.05, MAE = 0.2
    assert metrics.rmse(pred, ref, mask) == pytest.approx(math.sqrt(0.05))
    assert metrics.mae(pred, ref, mask) == pytest.approx(0.2)
    assert metrics.psnr(pred, ref, mask) == pytest.approx(10 * math.log10(20))


def test_ssim_map_matches_skimage_3d(pair):
    pred, ref = pair
    _, expected = structural_similarity(
        pred,
        ref,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ours = metrics.ssim_map(pred, ref)
    assert ours.shape == ref.shape
    inner = interior(ref.shape)
    np.testing.assert_allclose(ours[inner], expected[inner], atol=1e-5, rtol=0)
    assert 0.3 < ours[inner].mean() < 0.99  # a non-trivial comparison


def test_ssim_map_matches_skimage_2d():
    ref = smooth_volume((40, 36), seed=3, sigma=1.5)
    pred = np.clip(ref * 0.8 + 0.1 + np.random.default_rng(4).normal(0, 0.08, ref.shape), 0, 1)
    _, expected = structural_similarity(
        pred,
        ref,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ours = metrics.ssim_map(pred, ref)
    inner = interior(ref.shape)
    np.testing.assert_allclose(ours[inner], expected[inner], atol=1e-5, rtol=0)
    assert ours[inner].min() < 0.9


def test_ssim_and_psnr_decrease_with_noise():
    ref = smooth_volume((20, 20, 16), seed=5)
    noise = np.random.default_rng(6).normal(size=ref.shape)
    levels = [0.0, 0.01, 0.03, 0.1, 0.3]
    ssims = [metrics.ssim(ref + level * noise, ref) for level in levels]
    ssims_2d = [metrics.ssim_slicewise(ref + level * noise, ref) for level in levels]
    psnrs = [metrics.psnr(ref + level * noise, ref) for level in levels]
    assert ssims[0] == pytest.approx(1.0)
    assert np.all(np.diff(ssims) < 0)
    assert np.all(np.diff(ssims_2d) < 0)
    assert np.all(np.diff(psnrs) < 0)
    assert ssims[-1] < 0.5
    # PSNR of additive noise with std s is about -20 log10(s)
    assert psnrs[3] == pytest.approx(20.0, abs=0.5)


def test_mask_restricts_computation(pair):
    pred, ref = pair
    mask = central_mask(ref.shape)  # 8-voxel margin > window radius (5)
    funcs = {
        "ssim": metrics.ssim,
        "ssim_2d": metrics.ssim_slicewise,
        "psnr": metrics.psnr,
        "rmse": metrics.rmse,
        "mae": metrics.mae,
    }
    base = {name: func(pred, ref, mask) for name, func in funcs.items()}
    changed = pred.copy()
    changed[:2] = 1.0 - changed[:2]  # far outside the mask (> 5 voxels away)
    changed[:, :, -2:] = 0.0
    for name, func in funcs.items():
        value = base[name]
        assert func(changed, ref, mask) == pytest.approx(value, rel=1e-12), name
        assert func(changed, ref) != pytest.approx(func(pred, ref), rel=1e-6), name
    # a change inside the mask is seen
    inside = pred.copy()
    inside[12, 13, 11] += 0.5
    assert metrics.ssim(inside, ref, mask) < base["ssim"]
    assert metrics.rmse(inside, ref, mask) > base["rmse"]


def test_mask_ssim_is_mean_of_map_inside(pair):
    pred, ref = pair
    mask = np.zeros(ref.shape, bool)
    mask[5:9, 3:20, 4:6] = True
    expected = metrics.ssim_map(pred, ref)[mask].mean()
    assert metrics.ssim(pred, ref, mask) == pytest.approx(expected)
    assert metrics.ssim(pred, ref, mask.astype(np.uint8)) == pytest.approx(expected)


def test_scale_pair_maps_reference_range():
    ref = np.full((6, 6, 6), 500.0)  # outside the mask: above the masked range
    ref[1:5, 1:5, 1:5] = np.linspace(10, 110, 64).reshape(4, 4, 4)
    mask = np.zeros(ref.shape, bool)
    mask[1:5, 1:5, 1:5] = True
    pred = ref.copy()
    pred[1:5, 1:5, 1:5] += 20  # 30..130 -> 0.2..1.2 -> clipped at 1
    pred[0, 0, 0] = -100.0

    pred01, ref01 = metrics.scale_pair(pred, ref, mask)
    assert ref01[mask].min() == 0.0 and ref01[mask].max() == 1.0
    np.testing.assert_allclose(ref01[mask], (ref[mask] - 10) / 100)
    np.testing.assert_allclose(pred01[mask], np.clip((pred[mask] - 10) / 100, 0, 1))
    assert pred01.min() == 0.0 and pred01.max() == 1.0
    assert pred01[0, 0, 0] == 0.0

    # without a mask the whole reference is used
    _, ref01 = metrics.scale_pair(pred, ref)
    assert ref01.max() == 1.0 and ref01[mask].min() == 0.0
    np.testing.assert_allclose(ref01[mask], (ref[mask] - 10) / 490)


def test_scale_pair_errors():
    ref = np.arange(27.0).reshape(3, 3, 3)
    with pytest.raises(ValueError, match="constant"):
        metrics.scale_pair(ref, np.full((3, 3, 3), 4.0))
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, :] = True
    flat = ref.copy()
    flat[0, 0, :] = 7.0
    with pytest.raises(ValueError, match="constant"):
        metrics.scale_pair(ref, flat, mask)
    with pytest.raises(ValueError, match="empty"):
        metrics.scale_pair(ref, ref, np.zeros((3, 3, 3), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.scale_pair(ref[:2], ref)
    with pytest.raises(ValueError, match="shape"):
        metrics.scale_pair(ref, ref, np.ones((3, 3, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.ssim(ref[:2], ref)


def test_slicewise_ignores_slices_without_mask(pair):
    pred, ref = pair
    mask = np.zeros(ref.shape, bool)
    mask[4:20, 4:22, 8] = True  # two axial slices with different mask sizes
    mask[10:12, 10:12, 9] = True
    value = metrics.ssim_slicewise(pred, ref, mask)

    # slices weighted equally, each the mean of its own 2D map inside its mask
    per_slice = [
        metrics.ssim_map(pred[:, :, k], ref[:, :, k])[mask[:, :, k]].mean() for k in (8, 9)
    ]
    assert value == pytest.approx(np.mean(per_slice))

    # the adjacent, unmasked slice does not matter for 2D SSIM (it does for 3D SSIM)
    changed = pred.copy()
    changed[:, :, 7] = 1.0 - changed[:, :, 7]
    changed[:, :, 10] = 0.0
    assert metrics.ssim_slicewise(changed, ref, mask) == pytest.approx(value, rel=1e-12)
    assert metrics.ssim(changed, ref, mask) < metrics.ssim(pred, ref, mask) - 0.01

    # another axis gives a different slicing
    assert metrics.ssim_slicewise(pred, ref, mask, axis=0) != pytest.approx(value)
    with pytest.raises(ValueError, match="3D"):
        metrics.ssim_slicewise(pred[:, :, 0], ref[:, :, 0])


def test_image_metrics_scaling_nifti_and_nans(pair):
    pred, ref = pair
    mask = central_mask(ref.shape, margin=4)
    direct = metrics.image_metrics(pred, ref, mask)
    pred01, ref01 = metrics.scale_pair(pred, ref, mask)
    assert direct["ssim"] == pytest.approx(metrics.ssim(pred01, ref01, mask))
    assert direct["psnr"] == pytest.approx(metrics.psnr(pred01, ref01, mask))
    assert 0 < direct["ssim"] < 1 and 0 < direct["ssim_2d"] < 1
    assert 0 < direct["mae"] < direct["rmse"] < 0.2
    assert all(isinstance(v, float) for v in direct.values())

    # same linear rescaling of both images (e.g. Bq/mL vs SUV) changes nothing
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    images = [nib.Nifti1Image((a * 7300 + 150).astype(np.float32), affine) for a in (pred, ref)]
    scaled = metrics.image_metrics(*images, nib.Nifti1Image(mask.astype(np.uint8), affine))
    for name, value in direct.items():
        assert scaled[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name

    # NaNs are treated as 0
    with_nan = pred.copy()
    with_nan[10:12, 10:12, 10] = np.nan
    zeroed = np.nan_to_num(with_nan, nan=0.0)
    assert metrics.image_metrics(with_nan, ref, mask) == metrics.image_metrics(zeroed, ref, mask)
    assert np.isnan(with_nan).any()  # the input is not modified in place

    with pytest.raises(ValueError, match="shape"):
        metrics.image_metrics(pred[:-1], ref)
