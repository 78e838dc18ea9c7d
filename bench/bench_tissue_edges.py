"""How sharp are the tissue boundaries of a T1w? Real heads against phantoms.

Usage: python bench/bench_tissue_edges.py DERIV:LABEL [DERIV:LABEL ...]

For each participant preprocessed by ``petsynth participant`` (``DERIV`` its output
directory), in T1w space: the GM and WM intensities ``mu`` are the medians of the N4 T1w
inside the brain mask where the GM/WM posterior exceeds ``PV_CORE``
(``preproc.anat.pure_tissue_intensity``, as the partial-volume model does); the T1w is
smoothed with a 1 mm Gaussian (noise); at the voxels whose smoothed intensity is within
10 % of the contrast of the GM/WM midpoint, the *edge width* is ``(mu_WM - mu_GM) /
|gradient|`` (mm): the distance over which the intensity would go from GM to WM at that
slope. A T1w built from population tissue probabilities has wider edges than one
brain's; the phantom's tissue sharpness (``simulate.phantom.TISSUE_SHARPNESS``) was
checked with it against the real heads (docs/benchmarks.md, "Anatomy-aware synthesis
inputs"). At 1 mm voxels a step edge reads ~3.1 mm: sharper edges cannot be told apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from pet_synth_app.preproc.anat import PV_CORE, pure_tissue_intensity
from pet_synth_app.synthesis.inputs import sources_from_derivatives


def edge_widths(
    t1: np.ndarray, mask: np.ndarray, gm: np.ndarray, wm: np.ndarray, zooms: tuple
) -> tuple[np.ndarray, float]:
    """GM/WM edge widths (mm) at the voxels near the GM/WM intensity midpoint, and the
    contrast-to-noise ratio ``(mu_WM - mu_GM) / noise`` (noise: 1.4826 x the median
    absolute deviation of the WM core voxels)."""
    mu_gm = pure_tissue_intensity(t1[mask], gm[mask])
    mu_wm = pure_tissue_intensity(t1[mask], wm[mask])
    core_wm = t1[mask & (wm > PV_CORE)]
    noise = 1.4826 * float(np.median(np.abs(core_wm - mu_wm)))
    cnr = (mu_wm - mu_gm) / max(noise, 1e-6 * abs(mu_wm))
    smooth = ndi.gaussian_filter(t1, 1.0 / np.asarray(zooms, float))
    grad = np.sqrt(sum(g**2 for g in np.gradient(smooth, *zooms)))
    band = mask & (np.abs(smooth - 0.5 * (mu_gm + mu_wm)) < 0.1 * (mu_wm - mu_gm))
    return (mu_wm - mu_gm) / np.maximum(grad[band], 1e-6), cnr


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1])
        return 2
    print("participant  voxel (mm)  GM/WM CNR  edge width (mm): p25  median  p75  n")
    for item in argv:
        deriv, label = item.rsplit(":", 1)
        src = sources_from_derivatives(Path(deriv), label)
        t1 = nib.load(src.t1w)
        zooms = tuple(float(z) for z in t1.header.get_zooms()[:3])
        mask = np.asanyarray(nib.load(src.t1w_mask).dataobj) > 0
        gm, wm = (np.asanyarray(nib.load(f).dataobj) for f in (src.gm, src.wm))
        w, cnr = edge_widths(np.asanyarray(t1.dataobj, np.float32), mask, gm, wm, zooms)
        p25, p50, p75 = np.percentile(w, [25, 50, 75])
        cols = f"{cnr:5.1f}      {p25:.2f}  {p50:.2f}  {p75:.2f}  {w.size}"
        print(f"{label:11s}  {zooms[0]:.2f}        {cols}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
