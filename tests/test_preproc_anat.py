"""Value tests of the anatomical preprocessing library (templates, N4, BET, SyN, tissues).

Real heads come from ``../shared/realdata`` (skipped when absent). Thresholds were
measured on the development machine and leave a margin; see the docstrings.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REALDATA
from scipy import ndimage as ndi

from pet_synth_app.preproc import anat, templates
from pet_synth_app.preproc.anat import (
    apply_transforms,
    brain_extract,
    n4_bias_correct,
    normalize_t1_intensity,
    partial_volume_fractions,
    register_to_template,
    segment_tissues,
)

CH2 = REALDATA / "debian-mricron-data" / "ch2.nii.gz"
FDG = REALDATA / "mghdickersonlab-neurolib" / "fdg.nii.gz"
needs_ch2 = pytest.mark.skipif(not CH2.exists(), reason="shared/realdata not available")


def _img(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom() -> dict:
    """The 2 mm template moved by a known affine + smooth warp (a skull-stripped 'T1w').

    ``phi`` maps subject world points to template world points; ``gm`` is the true GM.
    """
    rng = np.random.default_rng(7)
    t1 = templates.get_template("T1w", 2)
    gm = templates.get_template("GM", 2)
    mask = templates.get_template("mask", 2)
    shape = (90, 108, 95)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-90.0, -120.0, -80.0]
    ijk = np.indices(shape).reshape(3, -1).T
    y = nib.affines.apply_affine(aff, ijk)
    disp = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 6) for _ in range(3)])
    disp = disp / np.abs(disp).max() * 3.0
    c, s = np.cos(np.deg2rad(6)), np.sin(np.deg2rad(6))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    lin = rot @ np.diag([1.07, 1.04, 1.09])
    x = (y + disp.reshape(3, -1).T) @ lin.T + np.array([5.0, -7.0, 6.0])
    vox = nib.affines.apply_affine(np.linalg.inv(t1.affine), x).T

    def warp(img: nib.Nifti1Image) -> np.ndarray:
        arr = np.asanyarray(img.dataobj).astype(np.float32)
        return ndi.map_coordinates(arr, vox, order=1).reshape(shape)

    m = warp(mask) > 0.5
    brain = warp(t1) * m * 800.0 + rng.normal(0, 4.0, shape) * m
    return {
        "brain": _img(brain, aff),
        "gm": _img(warp(gm), aff),
        "wm": _img(warp(templates.get_template("WM", 2)), aff),
        "csf": _img(warp(templates.get_template("CSF", 2)), aff),
        "mask": nib.Nifti1Image(m.astype(np.uint8), aff),
    }


# ---------------------------------------------------------------------------- templates
def test_templates_offline_and_consistent(tmp_path: Path) -> None:
    assert templates.TEMPLATE_SPACE == "MNI152NLin2009aSym"
    t1 = templates.get_template("T1w", 2)
    assert t1.shape == (99, 117, 95)
    assert nib.aff2axcodes(t1.affine) == ("R", "A", "S")
    mask = np.asanyarray(templates.get_template("mask", 2).dataobj) > 0
    assert 1.7 < mask.sum() * 8 / 1e6 < 2.0  # litres
    gm, wm, csf = (templates.get_template(k, 2).get_fdata() for k in ("GM", "WM", "CSF"))
    total = gm + wm + csf
    assert np.all((csf >= 0) & (csf <= 1))
    assert np.median(total[mask]) == pytest.approx(1.0, abs=0.02)
    head = templates.get_template("head", 2).get_fdata()
    assert (head > 0.02).sum() > 1.3 * mask.sum()  # a shell around the brain
    path = templates.write_template("GM", 2, str(tmp_path))
    assert Path(path).name == "tpl-MNI152NLin2009aSym_res-02_label-GM_probseg.nii.gz"
    np.testing.assert_allclose(nib.load(path).get_fdata(), gm, atol=1e-6)
    with pytest.raises(ValueError):
        templates.get_template("T2w", 2)
    with pytest.raises(ValueError):
        templates.get_template("GM", 3)


def test_template_disk_cache_gives_the_same_images(tmp_path: Path, monkeypatch) -> None:
    """With ``CACHE_DIR_ENV`` set, a template made once is read back from disk (no nilearn)
    by the next process, with the same voxels, dtype, affine and sform code."""
    monkeypatch.setenv(templates.CACHE_DIR_ENV, str(tmp_path))
    made = {}
    for kind in ("T1w", "mask"):
        templates.get_template.cache_clear()
        made[kind] = templates.get_template(kind, 2)
    files = sorted(p.name for p in tmp_path.rglob("*.nii.gz"))
    assert files == [
        "tpl-MNI152NLin2009aSym_res-02_desc-brain_T1w.nii.gz",
        "tpl-MNI152NLin2009aSym_res-02_desc-brain_mask.nii.gz",
    ]

    def no_nilearn(kind, res):
        raise AssertionError("made again")

    monkeypatch.setattr(templates, "_make", no_nilearn)
    for kind, fresh in made.items():
        templates.get_template.cache_clear()
        cached = templates.get_template(kind, 2)
        assert cached.get_data_dtype() == fresh.get_data_dtype()
        np.testing.assert_array_equal(np.asanyarray(cached.dataobj), np.asanyarray(fresh.dataobj))
        np.testing.assert_array_equal(cached.affine, fresh.affine)
        assert int(cached.header["sform_code"]) == int(fresh.header["sform_code"]) == 4
    templates.get_template.cache_clear()


@pytest.mark.skipif(not FDG.exists(), reason="shared/realdata not available")
def test_nib_ants_conversion_matches_ants_reader() -> None:
    import ants

    img = nib.load(FDG)  # LPI orientation
    a = anat.nib_to_ants(img)
    b = ants.image_read(str(FDG))
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-3)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)
    np.testing.assert_allclose(a.numpy(), b.numpy())
    back = anat.ants_to_nib(a)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)


# ----------------------------------------------------------------------------------- N4
def test_n4_removes_multiplicative_bias() -> None:
    """A +-35 % smooth bias on a piecewise-uniform head: WM CoV 0.110 -> 0.011 (measured)."""
    shape = (80, 96, 80)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-80.0, -96.0, -80.0]
    g = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((g[i] - shape[i] / 2) / (shape[i] / 2.4)) ** 2 for i in range(3)))
    data = np.where(r < 1.0, 60.0, 0.0)  # scalp/CSF level
    data[r < 0.85] = 100.0  # uniform "WM"
    data[(r > 0.55) & (r < 0.65)] = 70.0  # a "GM" ribbon
    rng = np.random.default_rng(0)
    data = data + (r < 1.0) * rng.normal(0, 1.0, shape)
    x, y, z = (g[i] / shape[i] - 0.5 for i in range(3))
    bias = np.exp(0.6 * x - 0.4 * z + 0.5 * y * z)
    wm = (r < 0.5) | ((r > 0.7) & (r < 0.8))
    before = data * bias
    out = n4_bias_correct(_img(before, aff)).get_fdata()
    cov = lambda a: float(a[wm].std() / a[wm].mean())  # noqa: E731
    assert cov(before) > 0.1
    assert cov(out) < cov(before) / 3
    assert out.shape == shape and np.all(out >= 0)


# ----------------------------------------------------------------------- brain extraction
@pytest.fixture(scope="module")
def ch2_bet() -> dict:
    img = nib.load(CH2)
    brain, mask, used = brain_extract(img, method="deepbet")
    return {"img": img, "brain": brain, "mask": mask, "used": used}


def _litres(mask: nib.Nifti1Image) -> float:
    return float((np.asanyarray(mask.dataobj) > 0).sum() * abs(np.linalg.det(mask.affine))) / 1e6


@needs_ch2
def test_deepbet_ch2_volume(ch2_bet: dict) -> None:
    """Measured: 1.956 L (Colin27 is in the enlarged MNI space; an intracranial mask)."""
    assert ch2_bet["used"] == "deepbet"
    assert ch2_bet["mask"].get_data_dtype() == np.uint8
    assert 1.6 < _litres(ch2_bet["mask"]) < 2.3
    np.testing.assert_allclose(ch2_bet["mask"].affine, ch2_bet["img"].affine)
    brain = ch2_bet["brain"].get_fdata()
    assert np.all(brain[np.asanyarray(ch2_bet["mask"].dataobj) == 0] == 0)


@needs_ch2
def test_ants_fallback_when_deepbet_implausible(ch2_bet: dict, monkeypatch) -> None:
    """Empty deepbet mask -> ANTs template method; measured 1.87 L, Dice 0.96 vs deepbet."""
    monkeypatch.setattr(anat, "_deepbet_mask", lambda *a, **k: np.zeros(a[0].shape, bool))
    _, mask, used = brain_extract(ch2_bet["img"], method="deepbet")
    assert used == "ants"
    assert 1.5 < _litres(mask) < 2.3
    a = np.asanyarray(mask.dataobj) > 0
    b = np.asanyarray(ch2_bet["mask"].dataobj) > 0
    assert _dice(a, b) > 0.9


# ---------------------------------------------------------------------------- registration
@pytest.fixture(scope="module")
def registration(phantom: dict, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reg")
    # one ITK thread (run in a child process): bit-reproducible for a given seed
    return register_to_template(phantom["brain"], str(out), preset="sloppy", seed=1, n_threads=1)


def test_registration_gm_dice(phantom: dict, registration: dict) -> None:
    """Known-warp phantom: sloppy preset measured GM Dice 0.944 (identity: 0.544)."""
    ref = templates.get_template("GM", 2)
    tgm = ref.get_fdata() > 0.5
    warped = apply_transforms(phantom["gm"], ref, registration["fwd_transforms"])
    assert _dice(warped.get_fdata() > 0.5, tgm) > 0.9
    assert registration["warped"].shape == ref.shape
    np.testing.assert_allclose(registration["warped"].affine, ref.affine)
    assert Path(registration["composite"]).suffix == ".h5"


def test_composite_equals_transform_list(phantom: dict, registration: dict) -> None:
    ref = templates.get_template("T1w", 2)
    a = apply_transforms(phantom["brain"], ref, [registration["composite"]]).get_fdata()
    b = apply_transforms(phantom["brain"], ref, registration["fwd_transforms"]).get_fdata()
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).max()
    # the inverse composite brings the template into the subject grid the same way
    tgt = phantom["brain"]
    c = apply_transforms(ref, tgt, [registration["inverse_composite"]]).get_fdata()
    d = apply_transforms(
        ref, tgt, registration["inv_transforms"], invert=registration["inv_invert"]
    ).get_fdata()
    assert np.abs(c - d).max() < 1e-3 * np.abs(d).max()


def test_registration_is_deterministic(phantom: dict, registration: dict, tmp_path) -> None:
    again = register_to_template(
        phantom["brain"], str(tmp_path), preset="sloppy", seed=1, n_threads=1
    )
    np.testing.assert_array_equal(again["warped"].get_fdata(), registration["warped"].get_fdata())


def test_apply_transforms_label_interpolation(phantom: dict, registration: dict) -> None:
    ref = templates.get_template("mask", 2)
    out = apply_transforms(
        phantom["mask"], ref, registration["fwd_transforms"], interpolation="nearest"
    )
    assert out.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(out.dataobj))) <= {0, 1}


# ---------------------------------------------------------------------------- tissues
def test_segment_tissues(phantom: dict) -> None:
    priors = (phantom["gm"], phantom["wm"], phantom["csf"])
    gm, wm, csf = segment_tissues(phantom["brain"], phantom["mask"], priors)
    m = np.asanyarray(phantom["mask"].dataobj) > 0
    total = gm.get_fdata() + wm.get_fdata() + csf.get_fdata()
    np.testing.assert_allclose(total[m], 1.0, atol=1e-3)
    assert np.all(total[~m] == 0)
    t1 = phantom["brain"].get_fdata()

    def mean_t1(p: nib.Nifti1Image) -> float:
        return float(t1[p.get_fdata() > 0.5].mean())

    assert mean_t1(wm) > mean_t1(gm) > mean_t1(csf)
    # agreement with the truth that generated the phantom (measured 0.90)
    assert _dice(gm.get_fdata() > 0.5, phantom["gm"].get_fdata() > 0.5) > 0.8


def test_partial_volume_fractions_recover_the_mix() -> None:
    """A T1w that is an exact mix of WM/GM/CSF intensities (900/500/150) with smooth
    boundaries: the fractions come back exactly where two adjacent tissues mix, although
    the posteriors given are hard labels; a T1w without T1 contrast is refused."""
    x = np.linspace(0, 4, 81)[:, None, None] * np.ones((1, 8, 8))
    gm = np.clip(2 * np.minimum(x - 1, 3 - x), 0, 1)  # CSF, ramp, GM, ramp, WM
    csf = np.where(x < 2, 1 - gm, 0.0)
    wm = np.where(x >= 2, 1 - gm, 0.0)
    t1 = 900 * wm + 500 * gm + 150 * csf
    affine = np.eye(4)
    hard = [
        (a >= np.maximum(b, c)).astype(np.float32)
        for a, b, c in ((gm, wm, csf), (wm, gm, csf), (csf, gm, wm))
    ]
    mask = _img(np.ones_like(t1), affine)
    fr = partial_volume_fractions(_img(t1, affine), mask, tuple(_img(h, affine) for h in hard))
    for got, truth in zip(fr, (gm, wm, csf), strict=True):
        np.testing.assert_allclose(got.get_fdata(), truth, atol=1e-5)
    with pytest.raises(ValueError, match="CSF < GM < WM"):
        partial_volume_fractions(
            _img(1000 - t1, affine), mask, tuple(_img(h, affine) for h in hard)
        )


def test_normalize_t1_intensity(phantom: dict) -> None:
    out = normalize_t1_intensity(phantom["brain"], phantom["mask"])
    d = out.get_fdata()
    m = np.asanyarray(phantom["mask"].dataobj) > 0
    assert out.get_data_dtype() == np.float32
    assert d.min() == 0.0 and d.max() == pytest.approx(1.0)
    assert np.all(d[~m] == 0)
    assert 0.3 < np.median(d[m]) < 0.9


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_registration_stages_compose_to_the_composite(phantom: dict, registration: dict) -> None:
    """Affine-only then the nonlinear warp (two resamplings) ~ the composite (one); the
    inverse affine takes the affine-space image back to the T1w grid."""
    ref = templates.get_template("T1w", 2)
    for key in ("affine", "inverse_affine", "warp", "inverse_warp"):
        assert Path(registration[key]).is_file(), key
    direct = apply_transforms(phantom["brain"], ref, [registration["composite"]]).get_fdata()
    in_affine = apply_transforms(phantom["brain"], ref, [registration["affine"]])
    staged = apply_transforms(in_affine, ref, [registration["warp"]]).get_fdata()
    assert _corr(staged, direct) > 0.99
    # the affine-only image is not the MNI one (the warp does something) ...
    assert _corr(in_affine.get_fdata(), direct) < _corr(staged, direct)
    # ... and the inverse affine brings it back onto the T1w grid
    back = apply_transforms(in_affine, phantom["brain"], [registration["inverse_affine"]])
    assert _corr(back.get_fdata(), phantom["brain"].get_fdata()) > 0.97
    # MNI -> affine space by the inverse warp, then -> T1w by the inverse affine
    tpl_in_affine = apply_transforms(ref, ref, [registration["inverse_warp"]])
    c = apply_transforms(tpl_in_affine, phantom["brain"], [registration["inverse_affine"]])
    d = apply_transforms(ref, phantom["brain"], [registration["inverse_composite"]])
    assert _corr(c.get_fdata(), d.get_fdata()) > 0.99


def test_log_jacobian_of_the_warp(registration: dict) -> None:
    """log det J on the template grid: finite, ~0 on average (the affine took the global
    scale), not constant (the phantom has a local warp)."""
    ref = templates.get_template("T1w", 2)
    logj = registration["log_jacobian"]
    assert logj.shape == ref.shape
    np.testing.assert_allclose(logj.affine, ref.affine, atol=1e-4)
    data = logj.get_fdata()
    inside = np.asanyarray(templates.get_template("mask", 2).dataobj) > 0
    assert np.isfinite(data).all()
    assert abs(float(data[inside].mean())) < 0.1
    assert float(data[inside].std()) > 0.005


def test_log_jacobian_sign_is_local_volume(tmp_path) -> None:
    """A displacement field that stretches x by 10 % (fixed points x -> 1.1 x) has log det
    J = log 1.1 everywhere: larger participant tissue is positive."""
    import ants

    from pet_synth_app.preproc.anat import log_jacobian, nib_to_ants

    ref = templates.get_template("T1w", 2)
    shape = ref.shape
    xyz = nib.affines.apply_affine(ref.affine, np.indices(shape).reshape(3, -1).T)
    disp = np.zeros(shape + (3,), np.float32)
    disp[..., 0] = (0.1 * xyz[:, 0]).reshape(shape) * -1.0  # RAS x -> LPS: minus sign
    comps = [nib_to_ants(nib.Nifti1Image(disp[..., i], ref.affine)) for i in range(3)]
    field = ants.merge_channels(comps)
    path = str(tmp_path / "testWarp.nii.gz")
    ants.image_write(field, path)
    logj = log_jacobian(path, ref).get_fdata()
    inner = logj[10:-10, 10:-10, 10:-10]
    np.testing.assert_allclose(np.median(inner), np.log(1.1), atol=0.01)


def test_log_jacobian_from_the_derivative_h5(registration: dict) -> None:
    """Training from derivatives computes the log-Jacobian from the warp's .h5 (the
    derivative's format): the same map as the registration's."""
    from pet_synth_app.synthesis.inputs import InputSources, log_jacobian_std

    ref = templates.get_template("T1w", 2)
    got = log_jacobian_std(InputSources(warp=registration["warp_h5"]), ref)
    ref_map = registration["log_jacobian"].get_fdata()
    inside = np.asanyarray(templates.get_template("mask", 2).dataobj) > 0
    assert _corr(got[inside], ref_map[inside]) > 0.9
