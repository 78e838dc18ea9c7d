"""Cluster-level calibration against a leave-one-out null of healthy controls."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import calibration as cal
from pet_synth_app.interfaces.hypometabolism import ClusterTable


def test_calibrate_against_hand_counts():
    scans = [[30.0, 5.0], [12.0], [], [8.0, 7.0, 2.0]]  # 4 healthy scans, their cluster masses
    r = cal.calibrate(10.0, scans)
    # clusters >= 10 over all scans: 30 and 12 -> 2 / 4 scans; maxima >= 10: 30, 12 -> 2
    assert r == {"expected_fp": 0.5, "p_fwe": pytest.approx(3 / 5), "significant": False}
    top = cal.calibrate(31.0, scans)
    assert top["expected_fp"] == 0 and top["p_fwe"] == pytest.approx(1 / 5)
    assert top["significant"] is True
    assert cal.calibrate(30.0, scans)["significant"] is False  # 0.25 is not below 0.25


def test_describe_says_uncalibrated_in_plain_words():
    assert "not findings by themselves" in cal.describe(None)
    text = cal.describe([[1.0], [], [2.0], []])
    assert text.startswith("calibrated on 4 healthy controls") and "50 %" in text


def _blob_maps(n, rng, shape=(24, 24, 24)):
    """n smooth noisy control PETs and their pseudo PETs on a 4 mm grid."""
    from scipy import ndimage

    base = np.ones(shape)
    pets = [base + ndimage.gaussian_filter(rng.normal(0, 0.2, shape), 1.5) for _ in range(n)]
    return pets, [base] * n


def test_loo_null_flags_few_healthy_scans_and_a_real_lesion_stands_out(tmp_path):
    """Healthy controls against the others: few clusters beyond the null; a strong
    planted hypometabolism in a held-out scan is significant."""
    rng = np.random.default_rng(0)
    shape = (24, 24, 24)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    pets, pseudos = _blob_maps(9, rng, shape)
    masks = [np.ones(shape, bool)] * 9
    gms = [np.ones(shape)] * 9
    null = cal.loo_cluster_null(
        pets[:8], pseudos[:8], masks[:8], gms[:8], affine, min_volume_mm3=64 * 3
    )
    assert null["n_scans"] == 8 and set(null["scans"]) == set(cal.CALIBRATED_MAPS)
    path = cal.save_null(null, tmp_path)
    assert json.loads(path.read_text())["rule"]["min_volume_mm3"] == 192
    rule = {"threshold": -1.65, "min_volume_mm3": 192.0}
    scans = cal.load_null(tmp_path, "controlpet", rule)
    assert scans is not None and len(scans) == 8
    assert cal.load_null(tmp_path, "controlpet", {**rule, "min_volume_mm3": 1500}) is None
    assert cal.load_null(tmp_path, "ocsvm", rule) is None
    assert cal.load_null(None, "controlpet", rule) is None
    # the held-out 9th control vs a lesion planted into it, scored against all 8 controls
    from pet_synth_app.analysis.clusters import find_clusters
    from pet_synth_app.analysis.zscore import control_referenced_z, fit_normative

    mean, sd = fit_normative(pets[:8], masks[0], zooms=(4, 4, 4))
    lesion = pets[8].copy()
    lesion[4:12, 4:12, 4:12] *= 0.6

    def significant(pet):
        z = control_referenced_z(pet, mean, sd, masks[0])
        _, clusters = find_clusters(z, masks[0], affine, min_volume_mm3=192)
        return any(cal.calibrate(c.mass, scans)["significant"] for c in clusters)

    assert not significant(pets[8])
    assert significant(lesion)


def test_cluster_table_columns_and_sidecar(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    dseg = np.zeros((10, 10, 10), np.int16)
    dseg[2:5, 2:5, 2:5] = 1
    stat = np.where(dseg > 0, -3.0, 0.0)
    nib.Nifti1Image(dseg, affine).to_filename(tmp_path / "dseg.nii.gz")
    nib.Nifti1Image(stat.astype(np.float32), affine).to_filename(tmp_path / "stat.nii.gz")
    rows = [{"rank": 1, "size_mm3": 216.0, "mass": 36.45, "n_voxels": 27}]
    (tmp_path / "clusters.json").write_text(json.dumps(rows))
    kw = dict(
        clusters=str(tmp_path / "clusters.json"),
        dseg_t1w=str(tmp_path / "dseg.nii.gz"),
        stat_t1w=str(tmp_path / "stat.nii.gz"),
    )
    res = ClusterTable(**kw).run(cwd=str(tmp_path))
    text = open(res.outputs.out_file).read()
    assert text.splitlines()[0].split("\t")[-3:] == ["expected_fp", "p_fwe", "significant"]
    assert text.splitlines()[1].split("\t")[-3:] == ["n/a", "n/a", "n/a"]
    assert res.outputs.metadata["Calibration"].startswith("uncalibrated")
    null = {
        "n_scans": 3,
        "rule": {"threshold": -1.65, "min_volume_mm3": 1500.0},
        "scans": {"controlpet": [[10.0], [], [40.0]]},
    }
    (tmp_path / "norm").mkdir()
    cal.save_null(null, tmp_path / "norm")
    res = ClusterTable(**kw, null_dir=str(tmp_path / "norm"), desc="controlpet").run(
        cwd=str(tmp_path)
    )
    last = open(res.outputs.out_file).read().splitlines()[1].split("\t")[-3:]
    assert last == ["0.3333", "0.5", "false"]  # 40 >= 36.45 in 1 of 3 scans
    assert res.outputs.metadata["NumberSignificant"] == 0
    assert res.outputs.metadata["Calibration"].startswith("calibrated on 3 healthy controls")
