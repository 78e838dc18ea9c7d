"""QC thresholds of the registration checks on real heads and phantoms.

Usage: python bench/qc_thresholds.py DERIV [DERIV ...] [--pet NAME=IMAGE ...]

For every participant of each PetSynth derivatives folder DERIV, the registration
metrics of ``analysis/qc.py`` (``mni_ncc``, ``mni_dice``, ``t1w_wm_gm_ratio``) on its
T1w in MNI space as registered, and after a deliberate misregistration of the T1w and
its brain mask in MNI space: 5 mm shift along x, y or z and 5 degree rotation about x,
y or z (about the brain's centre of mass; the worst of the three axes is reported, i.e.
the highest metric, the case least likely to be flagged), and two moves off the
probe axes of ``mni_fit_margin`` ("oblique": 5 mm along the diagonal, 5 degrees about x
then 3 about z; the higher of the two). ``--pet NAME=IMAGE``: a PET in
MNI space scored as if it were the T1w (``t1w_wm_gm_ratio`` of a PET given as T1w).
Prints a Markdown table and the threshold check (no false alarm when aligned, every
misregistration flagged).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from pet_synth_app import layout as L
from pet_synth_app.analysis import qc

SPACE = "MNI152NLin2009aSym"
KEYS = ("mni_ncc", "mni_fit_margin", "mni_dice", "t1w_wm_gm_ratio")


def moved(data: np.ndarray, zoom: float, shift_mm=(0, 0, 0), rot=None, centre=None, order=1):
    """``data`` shifted (mm) or rotated (3x3) about ``centre`` (voxels), same grid."""
    if rot is None:
        return ndi.shift(data, np.asarray(shift_mm) / zoom, order=order, mode="constant")
    inv = rot.T
    offset = centre - inv @ centre
    return ndi.affine_transform(data, inv, offset=offset, order=order, mode="constant")


def metrics(t1w, mask, tpl, tmask, wm, gm, zoom: float) -> dict[str, float]:
    out = qc.registration_quality(t1w, tpl, tmask, mask, zoom)
    out["t1w_wm_gm_ratio"] = qc.tissue_contrast(t1w, wm, gm)
    return out


def participant_rows(unit: Path, stem: str) -> dict[str, dict[str, float]]:
    t1w_img = nib.load(L.path(unit, stem, "t1w", SPACE))
    mask_img = nib.load(L.path(unit, stem, "mask", SPACE))
    t1w = np.asarray(t1w_img.dataobj, dtype=np.float32)
    mask = qc._on_grid(mask_img, t1w_img, "nearest") > 0
    tpl, tmask = qc.template_on(t1w_img)
    wm, gm = qc.tissues_on(t1w_img)
    zoom = float(t1w_img.header.get_zooms()[0])
    centre = np.array(ndi.center_of_mass(mask))
    rows = {"aligned": metrics(t1w, mask, tpl, tmask, wm, gm, zoom)}
    cases = {
        "5 mm shift": [dict(shift_mm=tuple(5.0 * (np.arange(3) == k))) for k in range(3)],
        "5 deg rotation": [dict(rot=qc.rotation_matrix(k, 5.0), centre=centre) for k in range(3)],
        # off the probes' axes: 5 mm along a diagonal, 5 degrees about x then 3 about z
        "oblique": [
            dict(shift_mm=tuple(5.0 / np.sqrt(3) * np.ones(3))),
            dict(rot=qc.rotation_matrix(2, 3.0) @ qc.rotation_matrix(0, 5.0), centre=centre),
        ],
    }
    for name, variants in cases.items():
        per_axis = []
        for kw in variants:
            t = moved(t1w, zoom, **kw)
            m = moved(mask.astype(np.float32), zoom, order=0, **kw) > 0.5
            per_axis.append(metrics(t, m, tpl, tmask, wm, gm, zoom))
        rows[name] = {k: max(r[k] for r in per_axis) for k in KEYS}  # least flagged axis
    return rows


def pet_row(image: Path) -> dict[str, float]:
    """A PET in MNI space scored as the T1w (its own mask: > 20 % of the 99th pct)."""
    img = nib.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data.mean(axis=3)
    img = nib.Nifti1Image(data, img.affine)
    mask = data > 0.2 * np.percentile(data[data > 0], 99)
    tpl, tmask = qc.template_on(img)
    wm, gm = qc.tissues_on(img)
    return metrics(data, mask, tpl, tmask, wm, gm, float(img.header.get_zooms()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("derivatives", nargs="+", type=Path)
    parser.add_argument("--pet", nargs="*", default=[], metavar="NAME=IMAGE")
    args = parser.parse_args(argv)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for deriv in args.derivatives:
        for sub in sorted(p for p in deriv.glob("sub-*") if p.is_dir()):
            stem = sub.name
            if not L.path(sub, stem, "t1w", SPACE).is_file():
                continue
            rows = table[f"{deriv.name}/{stem}"] = participant_rows(sub, stem)
            print(f"{deriv.name}/{stem} {rows}", file=sys.stderr, flush=True)
    cases = ("aligned", "5 mm shift", "5 deg rotation", "oblique")
    print("| participant | " + " | ".join(f"{k} {c}" for k in KEYS for c in cases) + " |")
    print("|---" * (1 + len(KEYS) * len(cases)) + "|")
    for name, rows in table.items():
        cells = [f"{rows[c][k]:.3f}" for k in KEYS for c in cases]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for spec in args.pet:
        name, image = spec.split("=", 1)
        r = pet_row(Path(image))
        print(f"| PET as T1w: {name} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |")
    print()
    for k in KEYS:
        low = qc.THRESHOLDS[k]
        aligned = [r["aligned"][k] for r in table.values()]
        print(
            f"{k} >= {low:g}: aligned min {min(aligned):.3f} "
            f"(false alarms {sum(qc.below(v, low) for v in aligned)}/{len(aligned)})"
            + "".join(
                f"; {c} max {max(r[c][k] for r in table.values()):.3f} (flagged "
                f"{sum(qc.below(r[c][k], low) for r in table.values())}/{len(table)})"
                for c in cases[1:]
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
