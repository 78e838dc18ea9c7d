"""Positive control for synthesis: plant a T1w-visible signal in every control's PET.

Usage: python bench/planted_t1w_signal.py DERIV OUT --subjects c01 ... [--gain 4]
       [--sigma-mm 4]

On the phantoms, a control's PET differs from the mean control PET mostly in ways its
MNI T1w does not show (``bench_t1w_information.py``), so a synthesis model cannot beat the
mean there, whether or not it works. This script makes a copy of a PetSynth output folder
in which it can: each listed participant's MNI-space SUVR PET gets

    PET' = PET + gain x G_sigma(T1w - mean T1w) x brain mask

with ``T1w`` the model's own input (MNI T1w scaled to [0, 1] in the brain mask, as
``synthesize_pet`` sees it), ``mean T1w`` the mean over the listed participants and
``G_sigma`` a Gaussian of ``--sigma-mm`` FWHM. The added part is a fixed, smooth function
of the T1w, so a model that reads the T1w can learn it and the mean PET cannot. Train with
``petsynth-train BIDS OUT_MODEL --derivatives OUT ...`` and score with
``bench_synthesis.py OUT``: the model should then beat the mean-PET baseline by about
the planted part. Everything except the MNI PET (and its sidecar) is symlinked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from pet_synth_app.synthesis.training import load_volumes
from pet_synth_app.trainer import find_training_files


def planted(
    t1n: np.ndarray, mean_t1: np.ndarray, mask: np.ndarray, gain: float, sigma_vox: float
) -> np.ndarray:
    """The planted PET increment (SUVR): gain x smoothed T1w deviation, 0 outside mask."""
    return (gain * ndi.gaussian_filter(t1n - mean_t1, sigma_vox) * mask).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--gain", type=float, default=4.0, help="SUVR per unit of [0, 1] T1w")
    p.add_argument("--sigma-mm", type=float, default=4.0, help="FWHM of the smoothing (mm)")
    opts = p.parse_args(argv)
    if opts.out.exists():
        raise SystemExit(f"{opts.out} exists; remove it first")
    files = {}
    for s in opts.subjects:
        f = find_training_files(opts.deriv, s)
        if f is None or f["pet"] is None:
            raise SystemExit(f"{s}: no MNI-space T1w/mask/PET in {opts.deriv}")
        files[s] = f
    vols = {s: load_volumes(s, f["t1w"], f["mask"], f["pet"]) for s, f in files.items()}
    mean_t1 = np.mean([v.t1w for v in vols.values()], 0)

    opts.out.mkdir(parents=True)
    for item in opts.deriv.iterdir():  # dataset_description.json, logs, ...
        if not item.name.startswith("sub-"):
            (opts.out / item.name).symlink_to(item.absolute())
    for s, f in files.items():
        src_dir = opts.deriv / f"sub-{s}"
        for src in src_dir.rglob("*"):
            if src.is_dir():
                continue
            dst = opts.out / src.relative_to(opts.deriv)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.name.startswith(Path(f["pet"]).name.split(".nii")[0]):
                continue  # written below
            dst.symlink_to(src.absolute())
        v, pet_img = vols[s], nib.load(f["pet"])  # the image for its header only
        mask, pet = v.mask, v.pet_suvr
        sigma = opts.sigma_mm / (2 * np.sqrt(2 * np.log(2))) / float(abs(v.affine[0, 0]))
        add = planted(v.t1w, mean_t1, mask, opts.gain, sigma)
        dst = opts.out / Path(f["pet"]).relative_to(opts.deriv)
        nib.save(nib.Nifti1Image(pet + add, pet_img.affine, pet_img.header), dst)
        sidecar = Path(str(f["pet"]).replace(".nii.gz", ".json"))
        if sidecar.exists():
            meta = json.loads(sidecar.read_text())
            meta["PlantedT1wSignal"] = {
                "gain": opts.gain,
                "sigma_mm": opts.sigma_mm,
                "subjects": opts.subjects,
            }
            dst.with_name(sidecar.name).write_text(json.dumps(meta, indent=1))
        gm = mask & (pet > 0.8)
        print(
            f"{s}: planted SD {add[mask].std():.4f} SUVR (brain), {add[gm].std():.4f} "
            "(SUVR > 0.8)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
