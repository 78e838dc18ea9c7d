"""Real-head QC checks (issue 16): the registration fit margin and the T1w contrast check
on the MNI template and a real PET template (thresholds: docs/benchmarks.md)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from pet_synth_app.analysis import qc
from pet_synth_app.preproc.templates import get_template


@pytest.fixture(scope="module")
def template():
    tpl = get_template("T1w", 2)
    data = np.asarray(tpl.dataobj, dtype=np.float32)
    mask = np.asarray(get_template("mask", 2).dataobj) > 0
    return tpl, data, mask


def test_fit_margin_positive_when_registered_negative_when_moved(template):
    _, data, mask = template
    aligned = qc.fit_margin(data, data, mask, 2.0)
    shifted = qc.fit_margin(ndi.shift(data, (2.5, 0, 0), order=1), data, mask, 2.0)  # 5 mm
    centre = np.array(ndi.center_of_mass(mask))
    rot = qc.rotation_matrix(1, 5.0).T
    rotated = ndi.affine_transform(data, rot, offset=centre - rot @ centre, order=1)
    assert aligned > 0.05
    assert shifted < 0 and qc.fit_margin(rotated, data, mask, 2.0) < 0
    assert qc.check({"mni_fit_margin": shifted})  # flagged
    assert not qc.check({"mni_fit_margin": aligned})


def test_t1w_contrast_separates_a_t1w_from_a_pet(template, realdata):
    tpl, data, _ = template
    wm, gm = qc.tissues_on(tpl)
    t1w_ratio = qc.tissue_contrast(data, wm, gm)
    pet = nib.load(str(realdata / "spm12" / "PET.nii"))  # a real PET template, MNI 2 mm
    pet_on_tpl = qc._on_grid(pet, tpl, "continuous")
    pet_ratio = qc.tissue_contrast(pet_on_tpl, wm, gm)
    low = qc.THRESHOLDS["t1w_wm_gm_ratio"]
    assert t1w_ratio > low + 0.1 and pet_ratio < low - 0.1
    (line,) = qc.check({"t1w_wm_gm_ratio": pet_ratio})
    assert "does not look like a T1w" in line
