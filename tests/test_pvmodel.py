"""Partial-volume forward model (synthesis/pvmodel.py, issue 14): on toys whose PET is
made by the model's own physics, the fit finds the uptake ratios and the prediction
follows each brain's anatomy where the mean PET cannot."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from pet_synth_app.synthesis import pvmodel
from pet_synth_app.synthesis.pvmodel import PVParams

SHAPE = (24, 24, 12)
TRUE = PVParams(wm_ratio=0.4, csf_ratio=0.1, gamma=1.0)
GRID = {"wm_ratio": (0.3, 0.4, 0.5), "csf_ratio": (0.0, 0.1, 0.2), "gamma": (0.8, 1.0, 1.2)}


def _toys(n: int, seed: int = 0, noise: float = 0.0):
    """``n`` toy brains: smooth random GM/CSF fractions (each brain its own), one
    regional GM uptake pattern, PET = uptake * tissue signal (+ noise), SUVR-scaled to a
    mean of 1 in the GM reference region."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, SHAPE[0])[:, None, None]
    uptake = (1.2 + 0.3 * x) * np.ones(SHAPE)  # regional FDG pattern (left-right)
    mask = np.ones(SHAPE, bool)
    out = []
    for _ in range(n):
        gm = np.clip(0.45 + 2.0 * ndi.gaussian_filter(rng.normal(0, 1, SHAPE), 2), 0.05, 0.9)
        csf = np.clip(0.15 + 1.0 * ndi.gaussian_filter(rng.normal(0, 1, SHAPE), 2), 0.0, 0.3)
        csf = np.minimum(csf, 1 - gm)
        pet = uptake * pvmodel.tissue_signal(gm, csf, TRUE) + rng.normal(0, noise, SHAPE)
        ref = gm > 0.5
        pet = pet / pet[ref].mean()
        out.append({"pet": pet.astype(np.float32), "gm": gm, "csf": csf, "mask": mask, "ref": ref})
    return out


def test_fit_finds_the_uptake_ratios_and_follows_the_anatomy():
    train, test = _toys(8, seed=1, noise=0.01), _toys(3, seed=2)
    params, errors = pvmodel.fit_pv_params(
        [t["pet"] for t in train],
        [t["gm"] for t in train],
        [t["csf"] for t in train],
        [t["mask"] for t in train],
        [t["ref"] for t in train],
        grid=GRID,
    )
    assert params == TRUE
    assert len(errors) == 27 and errors[(0.4, 0.1, 1.0)] == min(errors.values())
    mean_pet = np.mean([t["pet"] for t in train], 0)
    mean_gm = np.mean([t["gm"] for t in train], 0)
    mean_csf = np.mean([t["csf"] for t in train], 0)
    level = pvmodel.reference_level([t["pet"] for t in train], [t["ref"] for t in train])
    assert level == pytest.approx(1.0)  # SUVR on the reference region
    for t in test:
        pred = pvmodel.anatomy_adjusted_pet(
            mean_pet, mean_gm, mean_csf, t["gm"], t["csf"], params, t["ref"], level
        )
        err_model = np.sqrt(np.mean((pred - t["pet"]) ** 2))
        err_mean = np.sqrt(np.mean((mean_pet - t["pet"]) ** 2))
        assert err_model < 0.25 * err_mean
        dev_true, dev_pred = (t["pet"] - mean_pet).ravel(), (pred - mean_pet).ravel()
        assert np.corrcoef(dev_true, dev_pred)[0, 1] > 0.95
        assert pred[t["ref"]].mean() == pytest.approx(1.0, rel=1e-5)


def test_mean_anatomy_gives_the_mean_pet_and_less_grey_matter_less_pet():
    toys = _toys(4)
    mean_pet = np.mean([t["pet"] for t in toys], 0)
    gm, csf = toys[0]["gm"], toys[0]["csf"]
    same = pvmodel.anatomy_adjusted_pet(mean_pet, gm, csf, gm, csf, TRUE)
    np.testing.assert_allclose(same, mean_pet, rtol=1e-5)
    thinner = pvmodel.anatomy_adjusted_pet(mean_pet, gm, csf, gm * 0.8, csf, TRUE)
    assert (thinner <= same + 1e-6).all() and thinner.mean() < 0.95 * same.mean()
    # an empty brain (fractions 0 where the mean has tissue) is clipped, not divided by 0
    empty = pvmodel.anatomy_adjusted_pet(mean_pet, gm, csf, 0 * gm, 0 * csf, TRUE)
    assert np.isfinite(empty).all() and (empty >= 0).all()


def test_fit_needs_three_controls():
    toys = _toys(2)
    with pytest.raises(ValueError, match=">= 3 controls"):
        pvmodel.fit_pv_params(
            [t["pet"] for t in toys],
            [t["gm"] for t in toys],
            [t["csf"] for t in toys],
            [t["mask"] for t in toys],
        )
