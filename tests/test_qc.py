"""Registration / coregistration QC metrics on synthetic images."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from pet_synth_app.analysis import qc

SHAPE = (40, 48, 40)


def _tissues():
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    # folded cortex: the GM/WM boundary oscillates with angle, like gyri
    theta = np.arctan2(grid[1], grid[0])
    boundary = 0.5 + 0.08 * np.sin(8 * theta) * np.cos(6 * grid[2])
    brain = r < 0.8
    wm = (r < boundary).astype(np.float64)
    gm = (brain & (r >= boundary)).astype(np.float64)
    return brain, ndi.gaussian_filter(gm, 0.7), ndi.gaussian_filter(wm, 0.7)


@pytest.fixture(scope="module")
def tissues():
    return _tissues()


def test_dice_and_correlation_basics():
    a = np.zeros((10, 10, 10), bool)
    a[2:6, 2:6, 2:6] = True
    assert qc.dice(a, a) == 1.0
    assert qc.dice(a, np.roll(a, 2, axis=0)) == pytest.approx(0.5)
    assert math.isnan(qc.dice(np.zeros_like(a), np.zeros_like(a)))
    x = np.random.default_rng(0).normal(size=(10, 10, 10))
    assert qc.correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert qc.correlation(x, -x) == pytest.approx(-1.0)
    assert math.isnan(qc.correlation(x, np.ones_like(x)))
    with pytest.raises(ValueError):
        qc.correlation(x, x[:5])


def test_coregistration_aligned_beats_shifted(tissues):
    brain, gm, wm = tissues
    rng = np.random.default_rng(1)
    pet = 2.0 * gm + 0.8 * wm + rng.normal(0, 0.05, SHAPE)
    aligned = qc.coregistration_quality(pet, gm, brain, wm)
    shift2 = qc.coregistration_quality(ndi.shift(pet, (2, 0, 0), order=1), gm, brain, wm)
    shift4 = qc.coregistration_quality(ndi.shift(pet, (4, 0, 0), order=1), gm, brain, wm)
    rot = qc.coregistration_quality(
        ndi.rotate(pet, 10, axes=(0, 1), reshape=False, order=1), gm, brain, wm
    )
    assert aligned["coreg_gm_corr"] > 0.9
    assert aligned["coreg_gm_corr"] > shift2["coreg_gm_corr"] > shift4["coreg_gm_corr"]
    assert aligned["coreg_gm_corr"] > rot["coreg_gm_corr"]
    assert shift4["coreg_gm_corr"] < qc.THRESHOLDS["coreg_gm_corr"]
    assert 1.6 < aligned["coreg_gm_wm_ratio"] < 2.5  # 2.0/0.8 blurred by partial volume
    assert shift4["coreg_gm_wm_ratio"] < aligned["coreg_gm_wm_ratio"]
    assert qc.check(aligned) == []
    warnings = qc.check(shift4)
    assert warnings and "coregistration" in warnings[0]
    assert math.isnan(qc.coregistration_quality(pet, gm, brain)["coreg_gm_wm_ratio"])


def test_registration_perfect_vs_shifted():
    from pet_synth_app.preproc.templates import get_template

    tpl = get_template("T1w", 2).get_fdata()
    mask = np.asarray(get_template("mask", 2).dataobj) > 0
    perfect = qc.registration_quality(tpl, tpl, mask, mask, 2.0)
    assert perfect["mni_ncc"] == pytest.approx(1.0) and perfect["mni_dice"] == pytest.approx(1.0)
    moved = qc.registration_quality(
        ndi.shift(tpl, (3, 0, 0), order=1),  # 6 mm
        tpl,
        mask,
        ndi.shift(mask.astype(float), (3, 0, 0), order=0),
        2.0,
    )
    for key in ("mni_ncc", "mni_fit_margin", "mni_dice"):
        assert moved[key] < qc.THRESHOLDS[key] < perfect[key], key
    assert len(qc.check(moved)) == 3
    assert math.isnan(qc.registration_quality(tpl, tpl, mask, mask)["mni_fit_margin"])
    assert math.isnan(qc.registration_quality(tpl, tpl, mask)["mni_dice"])


def test_participant_qc_from_derivatives(tmp_path, tissues):
    from pet_synth_app.preproc.templates import get_template

    brain, gm, wm = tissues
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    anat, pet_dir = tmp_path / "sub-01" / "anat", tmp_path / "sub-01" / "pet"
    anat.mkdir(parents=True)
    pet_dir.mkdir()
    save = lambda d, p, a=aff: nib.Nifti1Image(np.asarray(d, np.float32), a).to_filename(str(p))  # noqa: E731
    save(brain, anat / "sub-01_desc-brain_mask.nii.gz")
    save(gm, anat / "sub-01_label-GM_probseg.nii.gz")
    save(wm, anat / "sub-01_label-WM_probseg.nii.gz")
    tpl, tmask = get_template("T1w", 2), get_template("mask", 2)
    save(
        tpl.get_fdata(),
        anat / "sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
        tpl.affine,
    )
    save(
        tmask.get_fdata(),
        anat / "sub-01_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
        tpl.affine,
    )
    pet = 2.0 * gm + 0.8 * wm
    save(pet, pet_dir / "sub-01_trc-FDG_space-T1w_desc-preproc_pet.nii.gz")
    save(
        ndi.shift(pet, (4, 0, 0), order=1),
        pet_dir / "sub-01_trc-FDG_run-2_space-T1w_desc-preproc_pet.nii.gz",
    )
    rows = qc.participant_qc(tmp_path, "01")
    assert [r["series"] for r in rows] == ["trc-FDG", "trc-FDG_run-2"]
    good, bad = rows
    assert good["mni_ncc"] == pytest.approx(1.0) and good["mni_dice"] == pytest.approx(1.0)
    assert good["coreg_gm_corr"] > bad["coreg_gm_corr"]
    assert qc.check(good) == [] and qc.check(bad)
    saved = json.loads(qc.write_qc_json(rows, tmp_path / "qc.json").read_text())
    assert saved["thresholds"] == qc.THRESHOLDS and len(saved["rows"]) == 2
    assert qc.participant_qc(tmp_path, "missing") == []
    # sessions sharing the participant's T1w (outside any session): their QC reads it
    import shutil

    (tmp_path / "sub-02" / "ses-a" / "pet").mkdir(parents=True)
    shutil.copytree(anat, tmp_path / "sub-02" / "anat")
    for f in (tmp_path / "sub-02" / "anat").iterdir():
        f.rename(f.with_name(f.name.replace("sub-01", "sub-02")))
    save(brain, tmp_path / "sub-02" / "anat" / "sub-02_desc-preproc_T1w.nii.gz")
    shutil.copy(
        pet_dir / "sub-01_trc-FDG_space-T1w_desc-preproc_pet.nii.gz",
        tmp_path / "sub-02/ses-a/pet/sub-02_ses-a_trc-FDG_space-T1w_desc-preproc_pet.nii.gz",
    )
    (row,) = qc.participant_qc(tmp_path, "02")
    assert (row["session"], row["series"]) == ("a", "trc-FDG")
    for key in ("mni_ncc", "mni_dice", "coreg_gm_corr", "coreg_gm_wm_ratio"):
        assert row[key] == pytest.approx(good[key]), key
    assert qc.anat_of(tmp_path / "sub-02" / "ses-a", "02") == (tmp_path / "sub-02", "sub-02")
