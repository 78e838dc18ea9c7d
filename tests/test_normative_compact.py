"""The group level's compact path (controls held as float32 rows at their voxels,
``normative.ControlMaps``) gives the normative maps and cluster null of the
full-volume computation (issue 19: the group level at 1 mm within 8 GB)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pet_synth_app.analysis import calibration, compact, normative, zscore
from pet_synth_app.analysis.clusters import find_clusters
from pet_synth_app.config import GM_THRESHOLD

SHAPE = (14, 15, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _controls(n: int, seed: int = 3):
    """n random controls: smooth float32 PETs (SUVR), pseudo PETs, brain masks that
    differ at the edge, GM probabilities and fields of view (five cut from below)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).transpose(1, 2, 3, 0) - (np.array(SHAPE) - 1) / 2
    pets, pseudos, masks, gms, views = [], [], [], [], []
    for i in range(n):
        radius = rng.uniform(4.8, 5.6, 3)
        mask = ((grid / radius) ** 2).sum(-1) <= 1
        noise = ndimage.gaussian_filter(rng.normal(0, 0.3, SHAPE), 1.0)
        pet = np.where(mask, 1.0 + noise, 0).astype(np.float32)
        pseudo = np.where(mask, 0.97 * ndimage.gaussian_filter(pet, 1.0), 0).astype(np.float32)
        view = np.ones(SHAPE, bool)
        if i in (1, 2, 4, 5, 7):  # 5 of 9: the lowest slices leave the support
            view[:, :, : 2 + i // 2] = False
        pets.append(pet)
        pseudos.append(pseudo)
        masks.append(mask)
        gms.append(rng.uniform(0, 1, SHAPE))
        views.append(view)
    return pets, pseudos, masks, gms, views


def _full_volume_reference(pets, pseudos, masks, gms, views, hm):
    """The normative maps and cluster null computed on full float64 volumes, as the
    group level did before the compact path (docs/architecture.md, "Statistics")."""
    mask = np.all(masks, axis=0)
    zooms = (2.0, 2.0, 2.0)
    pets = [p.astype(np.float64) for p in pets]
    res = [
        zscore.residual(p, s, mask & v, hm) for p, s, v in zip(pets, pseudos, views, strict=True)
    ]
    pet_in = [np.where(mask, p, 0.0) for p in pets]
    maps = {
        "residual": zscore.fit_normative(res, mask, zooms=zooms, valid=views),
        "pet": zscore.fit_normative(pet_in, mask, zooms=zooms, valid=views),
        "mask": zscore.normative_support(views, mask, mask.shape),
    }
    scans = {k: [] for k in calibration.CALIBRATED_MAPS}
    for i in range(len(pets)):
        others = [j for j in range(len(pets)) if j != i]
        valid = [views[j] for j in others]
        inside = mask & views[i] & zscore.normative_support(valid, mask, mask.shape)
        gm = (gms[i] > GM_THRESHOLD) & inside
        for key, data in (("hypometabolism", res), ("controlpet", pet_in)):
            mean, sd = zscore.fit_normative(
                [data[j] for j in others], mask, zooms=zooms, valid=valid
            )
            z = zscore.control_referenced_z(data[i], mean, sd, inside)
            _, clusters = find_clusters(z, gm, AFFINE, threshold=-1.0, min_volume_mm3=16.0)
            scans[key].append(sorted((round(c.mass, 4) for c in clusters), reverse=True))
    return maps, scans


@pytest.mark.parametrize("hm", [False, True])
def test_compact_path_matches_full_volumes(monkeypatch, hm):
    pets, pseudos, masks, gms, views = _controls(9)
    ref, ref_scans = _full_volume_reference(pets, pseudos, masks, gms, views, hm)
    monkeypatch.setattr(zscore, "NORMATIVE_BLOCK_VOXELS", 37)  # many blocks

    maps = normative.control_maps(pets, pseudos, masks, views, hm)
    assert maps.pet.dtype == np.float32 and maps.pet.shape == (9, int(np.any(masks, 0).sum()))
    model = normative.fit_from_maps(maps, AFFINE, {}, hm)
    np.testing.assert_array_equal(model.mask, ref["mask"])
    assert 0 < model.mask.sum() < np.all(masks, 0).sum()  # the cut views shrink it
    for got, want in (
        (model.residual_mean, ref["residual"][0]),
        (model.residual_sd, ref["residual"][1]),
        (model.pet_mean, ref["pet"][0]),
        (model.pet_sd, ref["pet"][1]),
    ):
        assert np.abs(want).max() > 0.01
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    gm = np.stack([(g > GM_THRESHOLD)[maps.voxels] for g in gms])
    null = calibration.loo_cluster_null_maps(maps, gm, AFFINE, threshold=-1.0, min_volume_mm3=16.0)
    assert sum(len(s) for s in ref_scans["hypometabolism"]) > 5  # a null worth comparing
    for key, want in ref_scans.items():
        got = null["scans"][key]
        assert [len(s) for s in got] == [len(s) for s in want]
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), atol=2e-4)


def test_volumes_rebuild_one_at_a_time():
    pets, _, masks, _, _ = _controls(3)
    voxels = np.any(masks, axis=0)
    rows = np.stack([p[voxels] for p in pets])
    seq = compact.Volumes((voxels, rows), (masks[0], [pets[0][masks[0]]]), dtype=np.float64)
    assert len(seq) == 4 and seq.shape == SHAPE
    for got, want in zip(seq, [*pets, pets[0]], strict=True):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(seq[-1], pets[0])
    with pytest.raises(IndexError):
        seq[4]


def test_compact_fit_refuses_a_mask_beyond_its_voxels():
    pets, _, masks, _, _ = _controls(3)
    rows = np.stack([p[masks[0]] for p in pets])
    with pytest.raises(ValueError, match="outside"):
        zscore.fit_normative_voxels(rows, masks[0], np.ones(SHAPE, bool), zooms=(2, 2, 2))


def test_analysis_smoothing_reaches_the_z_maps_not_the_detector() -> None:
    """With the analysis smoothing the control-PET and residual maps are smoothed inside
    each control's brain and view; ``pet`` (what the OC-SVM detector fits) stays raw."""
    from pet_synth_app.analysis.zscore import residual, smooth_in_mask

    rng = np.random.default_rng(2)
    shape, zooms = (16, 18, 14), (2.0, 2.0, 2.0)
    masks = [np.zeros(shape, bool) for _ in range(3)]
    for i, m in enumerate(masks):
        m[2 : 13 + i % 2, 3:15, 2:12] = True
    pets = [rng.normal(1, 0.1, shape) for _ in masks]
    pseudos = [rng.normal(1, 0.05, shape) for _ in masks]
    maps = normative.control_maps(pets, pseudos, masks, fwhm_mm=6.0, zooms=zooms)
    raw = normative.control_maps(pets, pseudos, masks)
    assert raw.zpet is None and raw.z_pet is raw.pet and raw.fwhm_mm == 0
    vox = maps.voxels
    for i, (p, s, m) in enumerate(zip(pets, pseudos, masks, strict=True)):
        np.testing.assert_allclose(maps.pet[i], p[vox], rtol=1e-6)  # the detector's: raw
        smooth_p, smooth_s = (smooth_in_mask(v, m, 6.0, zooms) for v in (p, s))
        np.testing.assert_allclose(maps.z_pet[i], smooth_p[vox], rtol=1e-5, atol=1e-6)
        expected = residual(smooth_p[vox], smooth_s[vox], maps.mask)
        np.testing.assert_allclose(maps.residual[i], expected, rtol=1e-5, atol=1e-6)
    assert maps.z_pet[:, maps.mask].std() < 0.5 * maps.pet[:, maps.mask].std()
    affine = np.diag([*zooms, 1.0])
    model = normative.fit_from_controls(pets, pseudos, masks, affine, {}, fwhm_mm=6.0)
    assert model.meta["z_fwhm_mm"] == 6.0
    with pytest.raises(ValueError, match="zooms"):
        normative.control_maps(pets, pseudos, masks, fwhm_mm=6.0)
