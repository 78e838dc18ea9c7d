"""SUVR reference-region masks in MNI152NLin2009aSym."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ..config import GM_THRESHOLD


def reference_mask(
    region: str, gm_probability: nib.Nifti1Image, threshold: float = GM_THRESHOLD
) -> nib.Nifti1Image:
    """Binary reference-region mask on the grid of `gm_probability` (MNI space).

    `gm-mean`: the subject's GM probability (warped to MNI) above `threshold`;
    `cerebellum` and `pons`: atlas regions (``analysis/atlas.py``) resampled to that grid.
    """
    if region == "gm-mean":
        data = np.asarray(gm_probability.dataobj, dtype=np.float32) > threshold
    elif region in ("cerebellum", "pons"):
        from .atlas import reference_region_mask

        data = np.asarray(reference_region_mask(region, gm_probability).dataobj) > 0
    else:
        raise ValueError(f"unknown reference region {region!r}")
    if not data.any():
        raise ValueError(f"reference region {region!r} is empty on this grid")
    return nib.Nifti1Image(data.astype(np.uint8), gm_probability.affine)
