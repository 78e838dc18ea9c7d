"""Z-score maps (analysis.zscore): self-referenced, control-referenced, histogram match."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import zscore


def test_self_referenced_z_known_values() -> None:
    d = np.zeros((4, 4, 4))
    gm = np.zeros((4, 4, 4), bool)
    gm[0, 0, :] = True
    d[0, 0, :] = [1.0, 3.0, 1.0, 3.0]  # GM mean 2, population SD 1
    d[3, 3, 3] = 5.0  # outside GM: still gets a Z
    z = zscore.self_referenced_z(d, gm)
    np.testing.assert_allclose(z[0, 0, :], [-1.0, 1.0, -1.0, 1.0])
    assert z[3, 3, 3] == pytest.approx(3.0)
    assert z[2, 2, 2] == pytest.approx(-2.0)  # d = 0 elsewhere
    # Probabilistic GM is thresholded at > 0.5; a brain mask zeroes Z outside it.
    prob = np.where(gm, 0.6, 0.4)
    brain = np.zeros((4, 4, 4), np.uint8)
    brain[:, :, 3] = 1
    z2 = zscore.self_referenced_z(d, prob, mask=brain)
    assert z2[3, 3, 3] == pytest.approx(3.0)
    assert z2[2, 2, 2] == 0.0 and z2[0, 0, 3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        zscore.self_referenced_z(np.ones((4, 4, 4)), gm)


def test_residual_and_histogram_matching() -> None:
    rng = np.random.default_rng(0)
    real = rng.gamma(4.0, 0.25, (10, 10, 10))
    pseudo = real * 1.3 + 0.2  # same order, other scale
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 2:8, 2:8] = True
    d = zscore.residual(real, pseudo, mask)
    np.testing.assert_allclose(d[mask], (real - pseudo)[mask])
    assert np.all(d[~mask] == 0)
    d_matched = zscore.residual(real, pseudo, mask, histogram_matching=True)
    np.testing.assert_allclose(d_matched[mask], 0.0, atol=1e-12)
    assert np.all(d_matched[~mask] == 0)


def test_histogram_match_reproduces_reference_quantiles() -> None:
    rng = np.random.default_rng(1)
    source = rng.normal(0.0, 1.0, (12, 12, 12))
    reference = rng.gamma(2.0, 0.5, (12, 12, 12))
    mask = np.zeros(source.shape, bool)
    mask[1:11, 1:11, 1:11] = True
    out = zscore.histogram_match(source, reference, mask)
    q = np.linspace(0, 1, 21)
    np.testing.assert_allclose(np.quantile(out[mask], q), np.quantile(reference[mask], q))
    np.testing.assert_array_equal(np.argsort(out[mask]), np.argsort(source[mask]))
    np.testing.assert_array_equal(out[~mask], source[~mask])
    # Ties in the source stay tied.
    tied = np.round(source, 1)
    out_tied = zscore.histogram_match(tied, reference, mask)
    same = tied[mask] == tied[mask][0]
    assert np.unique(out_tied[mask][same]).size == 1


def _controls(n: int, shape=(8, 8, 8), sd=0.1, seed=2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [1.0 + rng.normal(0.0, sd, shape) for _ in range(n)]


def test_fit_normative_robust_vs_outlier() -> None:
    mask = np.ones((8, 8, 8), bool)
    controls = _controls(20)
    controls.append(np.full((8, 8, 8), 6.0))  # one gross outlier control
    mean, sd = zscore.fit_normative(controls, mask, fwhm_mm=0)
    plain_mean, plain_sd = zscore.fit_normative(controls, mask, fwhm_mm=0, robust=False)
    assert abs(np.median(mean) - 1.0) < 0.03
    assert 0.08 < np.median(sd) < 0.14
    assert np.median(plain_mean) > 1.2 and np.median(plain_sd) > 1.0
    # Below ROBUST_MIN_CONTROLS the robust request falls back to mean and SD (ddof=1).
    few = controls[: zscore.ROBUST_MIN_CONTROLS - 1]
    few_mean, few_sd = zscore.fit_normative(few, mask, fwhm_mm=0, robust=True)
    np.testing.assert_allclose(few_mean, np.mean(few, axis=0))
    np.testing.assert_allclose(few_sd, np.std(few, axis=0, ddof=1))
    with pytest.raises(ValueError, match="at least 2"):
        zscore.fit_normative(controls[:1], mask)


def test_fit_normative_sd_floor_and_outside_mask() -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[1:7, 1:7, 1:7] = True
    controls = _controls(10, sd=0.1)
    for c in controls:
        c[1:3, 1:7, 1:7] = 1.0  # controls agree exactly here: SD 0
    _, sd = zscore.fit_normative(controls, mask, fwhm_mm=0, sd_floor=0.01)
    median_sd = np.median(
        zscore.fit_normative(controls, mask, fwhm_mm=0, sd_floor=0, sd_floor_fraction=1e-9)[1][
            mask
        ]
    )
    floor = max(0.01, zscore.SD_FLOOR_FRACTION * median_sd)
    assert floor > 0.01
    np.testing.assert_allclose(sd[1:3, 1:7, 1:7], floor)
    assert sd[mask].min() == pytest.approx(floor)
    _, sd_abs = zscore.fit_normative(controls, mask, fwhm_mm=0, sd_floor=0.5)
    np.testing.assert_allclose(sd_abs[mask], 0.5)
    assert np.all(sd[~mask] == 0)


def test_fit_normative_smoothing_uses_mm_and_stays_in_mask() -> None:
    mask = np.zeros((12, 12, 12), bool)
    mask[2:10, 2:10, 2:10] = True
    controls = [np.full((12, 12, 12), v) for v in (0.9, 1.0, 1.1)]
    for c in controls:
        c[~mask] = 100.0  # must not leak into the mask
    imgs = [nib.Nifti1Image(c.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])) for c in controls]
    mean, sd = zscore.fit_normative(imgs, mask, fwhm_mm=8.0)  # zooms from the header
    np.testing.assert_allclose(mean[mask], 1.0, atol=1e-6)
    np.testing.assert_allclose(sd[mask], 0.1, atol=1e-6)
    noisy = _controls(3, shape=(12, 12, 12), sd=0.1, seed=5)
    raw = zscore.fit_normative(noisy, mask, fwhm_mm=0)[0]
    wide_1mm = zscore.fit_normative(noisy, mask, fwhm_mm=8.0, zooms=(1, 1, 1))[0]
    wide_2mm = zscore.fit_normative(noisy, mask, fwhm_mm=8.0, zooms=(2, 2, 2))[0]
    # The same FWHM in mm spans twice as many voxels at 1 mm: smoother.
    assert wide_1mm[mask].std() < wide_2mm[mask].std() < raw[mask].std()
    with pytest.raises(ValueError, match="zooms"):
        zscore.fit_normative(noisy, mask, fwhm_mm=4.0)


def test_control_referenced_z_and_baseline_alias() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    mean = np.where(mask, 1.0, 0.0)
    sd = np.where(mask, 0.2, 0.0)
    d = np.full((4, 4, 4), 0.6)
    z = zscore.control_referenced_z(d, mean, sd, mask)
    np.testing.assert_allclose(z[mask], -2.0)
    assert np.all(z[~mask] == 0)
    np.testing.assert_array_equal(zscore.control_pet_z(d, mean, sd, mask), z)
    with pytest.raises(ValueError, match="not positive"):
        zscore.control_referenced_z(d, mean, sd, np.ones((4, 4, 4), bool))
    # End to end: baseline without synthesis on PET of controls.
    controls = _controls(12, shape=(4, 4, 4))
    c_mean, c_sd = zscore.fit_normative(controls, mask, fwhm_mm=0)
    patient = c_mean - 3.0 * c_sd
    np.testing.assert_allclose(zscore.control_pet_z(patient, c_mean, c_sd, mask)[mask], -3.0)


def test_smooth_in_mask_keeps_levels_and_ignores_outside() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[4:16, 4:16, 4:16] = True
    flat = np.where(mask, 1.3, 1000.0)  # high values outside must not leak in
    out = zscore.smooth_in_mask(flat, mask, 8.0, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(out[mask], 1.3)  # normalized convolution: a level stays
    assert (out[~mask] == 0).all()
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, mask.shape)
    sm = zscore.smooth_in_mask(noise, mask, 8.0, (2.0, 2.0, 2.0))
    assert sm[6:14, 6:14, 6:14].std() < 0.25 * noise[mask].std()  # sigma 1.7 voxels
    np.testing.assert_array_equal(zscore.smooth_in_mask(noise, mask, 0.0, None)[mask], noise[mask])
    with pytest.raises(ValueError, match=">= 0"):
        zscore.smooth_in_mask(noise, mask, -1.0, (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="zooms"):
        zscore.smooth_in_mask(noise, mask, 4.0, None)


def test_analysis_smoothing_lifts_a_shallow_extended_loss_above_healthy_clusters() -> None:
    """A 6 % uptake loss over a 14 mm ball in voxel noise of SD 0.08 (2 mm grid), Z
    against 12 controls: without smoothing its cluster is no more massive than the
    largest cluster of healthy scans (noise); with the 8 mm analysis smoothing of
    controls and scans alike it is several times more massive."""
    from pet_synth_app.analysis.clusters import find_clusters

    rng = np.random.default_rng(0)
    shape, zooms = (30, 30, 30), (2.0, 2.0, 2.0)
    affine = np.diag([*zooms, 1.0])
    mask = np.ones(shape, bool)
    ball = ((np.indices(shape) - 15.0) ** 2).sum(0) <= 3.5**2  # radius 7 mm
    controls = [1.0 + rng.normal(0, 0.08, shape) for _ in range(12)]
    healthy = [1.0 + rng.normal(0, 0.08, shape) for _ in range(4)]
    patient = 1.0 + rng.normal(0, 0.08, shape) - 0.06 * ball

    def lesion_over_healthy(fwhm: float) -> float:
        def smooth(v):
            return zscore.smooth_in_mask(v, mask, fwhm, zooms)

        mean, sd = zscore.fit_normative([smooth(c) for c in controls], mask, fwhm_mm=0)

        def clusters(v):
            z = zscore.control_pet_z(smooth(v), mean, sd, mask)
            return find_clusters(z, mask, affine, min_volume_mm3=0)

        labels, found = clusters(patient)
        lesion = max((c.mass for c in found if (labels == c.label)[ball].any()), default=0.0)
        largest = max(max((c.mass for c in clusters(h)[1]), default=0.0) for h in healthy)
        return lesion / largest

    assert lesion_over_healthy(0.0) < 1.0
    assert lesion_over_healthy(8.0) > 5.0
