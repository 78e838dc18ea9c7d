"""The linear upper bounds of bench/bench_t1w_information.py recover planted relations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_t1w_information.py"
_spec = importlib.util.spec_from_file_location("bench_t1w_information", _PATH)
info = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(info)


def _subjects(n: int, slope, rng: np.random.Generator) -> tuple[list[dict], np.ndarray]:
    """Subjects whose PET = base + slope * (smoothed T1w deviation), no noise."""
    shape = (12, 12, 10)
    base = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    mean_t1 = rng.uniform(0.3, 0.7, shape)
    out = []
    for _ in range(n):
        t1 = (mean_t1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        dev = ndi.gaussian_filter(t1, 1.0) - ndi.gaussian_filter(mean_t1, 1.0)
        out.append(
            {
                "t1w": t1,
                "gm": t1,
                "pet": (base + slope * dev).astype(np.float32),
                "mask": np.ones(shape, bool),
            }
        )
    return out, base


def test_voxelwise_ridge_recovers_a_voxelwise_slope_and_shrinks_to_the_mean():
    rng = np.random.default_rng(0)
    slope = rng.uniform(-2.0, 2.0, (12, 12, 10))
    subjects, _ = _subjects(14, slope, rng)
    train, test = subjects[:10], subjects[10:]
    mean_pet = np.mean([s["pet"] for s in train], 0)
    preds = info.voxelwise_ridge(train, test, "t1w", mean_pet, 1.0, 0.0)
    for p, t in zip(preds, test, strict=True):
        np.testing.assert_allclose(p, t["pet"], atol=1e-3)
    shrunk = info.voxelwise_ridge(train, test, "t1w", mean_pet, 1.0, 1e6)
    for p in shrunk:
        np.testing.assert_allclose(p, mean_pet, atol=1e-4)


def test_shared_multiscale_recovers_one_slope_and_scores_perfectly():
    rng = np.random.default_rng(1)
    subjects, _ = _subjects(14, 1.5, rng)
    train, test = subjects[:10], subjects[10:]
    mean_pet = np.mean([s["pet"] for s in train], 0)
    preds = info.shared_multiscale(train, test, "t1w", mean_pet)
    err_model = np.mean([np.abs(p - t["pet"]).mean() for p, t in zip(preds, test, strict=True)])
    err_mean = np.mean([np.abs(mean_pet - t["pet"]).mean() for t in test])
    assert err_model < 0.02 * err_mean
    scores = info.score(preds, test)
    assert scores["ssim"] > 0.999 and scores["psnr"] > 40.0


def test_representations_on_fake_derivatives(tmp_path, capsys):
    """Toy controls whose PET follows their cortical thickness: the bound is computed on
    what each representation's model sees (build_model_input) and scored in MNI. The
    affine-space T1w shows the thickness, so its voxelwise ridge beats the leave-one-out
    mean and its deviation follows the noise-free truth's; the SyN-space ("mni") T1w is
    the template for everyone, so its ridge is the training mean."""
    import json

    from test_bench_synthesis import toy_cohort

    noisy, clean, ids = toy_cohort(tmp_path, n=12, noise=0.02)
    out = tmp_path / "bound.json"
    rc = info.main(
        [
            str(noisy),
            "--train",
            *ids[:9],
            "--test",
            *ids[9:],
            "--representation",
            "mni",
            "--representation",
            "affine",
            "--representation",
            "mni-pv",
            "--noise-free",
            str(clean),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert res["representations"] == ["mni", "affine", "mni-pv"] and res["loo_pool"] == ids
    loo = s["baselines"]["LOO mean control PET"]
    train_mean = s["baselines"]["training mean PET (MNI)"]
    aff = s["affine"]["voxelwise ridge on t1w_affine, lam 0.0001"]
    mni = s["mni"]["voxelwise ridge on t1w_mni, lam 0.0001"]
    assert aff["psnr"][0] > loo["psnr"][0] + 3.0
    assert aff["ssim"][0] > loo["ssim"][0]
    assert aff["r_clean"][0] > 0.8 and aff["r_real"][0] > 0.5
    # identity transforms: the affine-space training mean taken to MNI is the MNI mean
    warped_mean = s["affine"]["training mean PET in affine space, to MNI"]
    assert warped_mean["psnr"][0] == pytest.approx(train_mean["psnr"][0], abs=0.05)
    assert mni["psnr"][0] == pytest.approx(train_mean["psnr"][0], abs=1e-6)
    # identity affine and warp: the round trip gives the MNI PET back
    trip = s["affine"]["own target PET in affine space, to MNI (round-trip ceiling)"]
    assert trip["psnr"][0] > 60 and trip["r_real"][0] == pytest.approx(1.0, abs=1e-4)
    assert mni["psnr"][0] < aff["psnr"][0] - 3.0
    assert s["baselines"]["noise-free twin PET (ceiling)"]["r_clean"][0] == pytest.approx(1.0)
    # the partial-volume forward model sees the thickness in the blurred GM fractions
    (pv_label,) = [k for k in s["mni-pv"] if k.startswith("partial-volume forward model")]
    pv = s["mni-pv"][pv_label]
    assert pv["psnr"][0] > loo["psnr"][0] + 1.0 and pv["r_clean"][0] > 0.5
    printed = capsys.readouterr().out
    assert "| affine | voxelwise ridge on t1w_affine, lam 0 |" in printed


def test_read_ages_from_participants_tsv(tmp_path):
    tsv = tmp_path / "participants.tsv"
    tsv.write_text("participant_id\tgroup\tage\nsub-c01\tcontrol\t72\nsub-c02\tcontrol\tn/a\n")
    assert info.read_ages(tsv, ["c01"]) == {"c01": 72.0}
    with pytest.raises(SystemExit, match="no age for c02, c03"):
        info.read_ages(tsv, ["c01", "c02", "c03"])
