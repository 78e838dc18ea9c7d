"""Anatomical preprocessing on real T1w heads from ../shared/realdata.

Usage: python bench/real_heads.py [--outdir /tmp/petsynth-realheads] [--preset default]

For each head: N4, brain extraction (deepbet; the ants fallback is also measured), the
brain volume in litres (target 1.0-1.8 L), registration to MNI152NLin2009aSym with its
wall time, tissue segmentation, and a proxy registration score (subject GM warped to MNI
vs the template GM, Dice at 0.5). PNG overlays of the mask and the registration go to
--outdir for visual checks. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
HEADS = {
    "chris_t1": REAL / "niivue" / "chris_t1.nii.gz",
    "uih01_1mm": REAL / "dcm_qa_uih" / "sub-uih01_T1w_1mm.nii.gz",
    "ch2": REAL / "debian-mricron-data" / "ch2.nii.gz",
}


def main() -> int:
    from nilearn import plotting
    from nilearn.datasets import load_mni152_gm_template

    from pet_synth_app.preproc import anat
    from pet_synth_app.preproc.templates import get_template

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=Path("/tmp/petsynth-realheads"))
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    tpl = get_template("T1w", 2)
    tpl_gm = load_mni152_gm_template(resolution=2).get_fdata() > 0.5
    rows = []
    for name, path in HEADS.items():
        t1 = nib.load(path)
        row = {
            "head": name,
            "shape": "x".join(map(str, t1.shape[:3])),
            "orient": "".join(nib.aff2axcodes(t1.affine)),
        }
        t0 = time.time()
        n4 = anat.n4_bias_correct(t1)
        row["n4_s"] = time.time() - t0
        for method in ("deepbet", "ants"):
            t0 = time.time()
            brain, mask, used = anat.brain_extract(n4, method=method)
            vol = float(
                np.asarray(mask.dataobj).astype(bool).sum()
                * np.prod(mask.header.get_zooms()[:3])
                / 1e6
            )
            row[f"{method}_L"] = vol
            row[f"{method}_s"] = time.time() - t0
            row[f"{method}_used"] = used
            if method == "deepbet":
                keep_brain, keep_mask = brain, mask
        d = plotting.plot_anat(
            n4, display_mode="ortho", title=f"{name}: deepbet mask", dim=-0.3, draw_cross=False
        )
        d.add_contours(keep_mask, levels=[0.5], colors="r")
        d.savefig(str(args.outdir / f"{name}_mask.png"))
        d.close()
        t0 = time.time()
        reg = anat.register_to_template(keep_brain, str(args.outdir / name), preset=args.preset)
        row["reg_s"] = time.time() - t0
        priors = tuple(
            anat.apply_transforms(get_template(k, 2), n4, [reg["inverse_composite"]])
            for k in ("GM", "WM", "CSF")
        )
        gm, _, _ = anat.segment_tissues(n4, keep_mask, priors)
        gm_std = anat.apply_transforms(gm, tpl, [reg["composite"]])
        row["gm_dice_proxy"] = float(
            2
            * np.logical_and(np.asarray(gm_std.dataobj) > 0.5, tpl_gm).sum()
            / ((np.asarray(gm_std.dataobj) > 0.5).sum() + tpl_gm.sum())
        )
        d = plotting.plot_anat(
            reg["warped"],
            display_mode="ortho",
            draw_cross=False,
            title=f"{name} in MNI, template edges",
            dim=-0.3,
        )
        d.add_edges(tpl, color="r")
        d.savefig(str(args.outdir / f"{name}_mni.png"))
        d.close()
        rows.append(row)
        print(row, flush=True)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols)
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
