"""How much of a control's PET can its MNI-space T1w predict at all? Linear upper bounds.

Usage: python bench/bench_t1w_information.py DERIV --train c01 ... --test c13 ...
       [--fwhm 2] [--json out.json]

A synthesis model earns its keep only on the part of a brain's PET that differs from the
mean control PET *and* shows in its T1w. This script bounds that part with linear models
fitted on the training controls and scored on held-out controls, exactly like
``bench_synthesis.py`` (``analysis.metrics.image_metrics`` inside the MNI brain mask, on
[0, 1]-scaled pairs). Rows:

- mean control PET (the issue's baseline) and the same mean smoothed with a Gaussian of
  ``--fwhm`` mm (what output smoothing alone changes);
- *voxelwise ridge*: at every voxel, PET - mean PET regressed on the smoothed deviation of
  the feature from its training mean (one slope per voxel, ridge ``lam``; every ``lam`` of
  the grid is reported, so the best row is chosen on the test set: an optimistic bound);
- *shared multi-scale*: one set of 6 slopes for the whole brain on the feature deviation
  smoothed at 1, 2 and 4 voxels, alone and times the mean PET (least squares over the
  voxels inside every training mask).

Features: the model's own input (MNI T1w scaled to [0, 1] as ``synthesize_pet`` does) and,
for comparison, the GM probability map of the participant workflow (which the model does
not see). If even these regressions barely beat the mean, the T1w carries little of the
PET's between-subject variation and no model trained on it can beat the baseline by more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from pet_synth_app.analysis.metrics import image_metrics
from pet_synth_app.bids import find_mni_derivatives
from pet_synth_app.synthesis.training import load_volumes

METRICS = ("ssim", "ssim_2d", "psnr", "rmse", "mae")
RIDGE = (0.0, 1e-4, 1e-3, 1e-2)
SCALES_VOX = (1.0, 2.0, 4.0)


def load(deriv: Path, subject: str) -> dict[str, np.ndarray]:
    """MNI T1w (scaled to [0, 1] in the mask, as the model sees it), GM probability, SUVR
    PET and brain mask, plus the grid's voxel size (mm)."""
    f = find_mni_derivatives(deriv, subject)
    if not all(f[role] for role in ("t1w", "mask", "pet", "gm")):
        raise SystemExit(f"{subject}: no MNI-space T1w/mask/PET/GM probability in {deriv}")
    v = load_volumes(subject, f["t1w"], f["mask"], f["pet"])
    return {
        "t1w": v.t1w,
        "pet": v.pet_suvr,
        "mask": v.mask,
        "gm": np.asanyarray(nib.load(f["gm"]).dataobj, dtype=np.float32),
        "voxel_mm": float(abs(v.affine[0, 0])),
    }


def score(preds: list[np.ndarray], test: list[dict]) -> dict[str, float]:
    """Mean metrics of predictions against the held-out PETs (inside each brain mask)."""
    pairs = zip(preds, test, strict=True)
    rows = [image_metrics(p * t["mask"], t["pet"], t["mask"]) for p, t in pairs]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def voxelwise_ridge(
    train: list[dict], test: list[dict], key: str, mean_pet: np.ndarray, sigma: float, lam: float
) -> list[np.ndarray]:
    """Per-voxel slope of PET deviation on the smoothed feature deviation (ridge ``lam``)."""
    feats = [ndi.gaussian_filter(s[key], sigma) for s in train]
    mean_f = np.mean(feats, 0)
    sxy = sum((f - mean_f) * (s["pet"] - mean_pet) for f, s in zip(feats, train, strict=True))
    sxx = sum((f - mean_f) ** 2 for f in feats)
    slope = sxy / (sxx + lam * len(train) + 1e-12)
    return [mean_pet + slope * (ndi.gaussian_filter(t[key], sigma) - mean_f) for t in test]


def shared_multiscale(
    train: list[dict], test: list[dict], key: str, mean_pet: np.ndarray
) -> list[np.ndarray]:
    """One set of slopes for the brain on multi-scale feature deviations (x1, x mean PET)."""
    mean_f = np.mean([s[key] for s in train], 0)
    inside = np.all([s["mask"] for s in train], 0)

    def design(vol: np.ndarray) -> np.ndarray:
        smooth = [ndi.gaussian_filter(vol - mean_f, s) for s in SCALES_VOX]
        return np.stack(smooth + [f * mean_pet for f in smooth])

    x = np.concatenate([design(s[key])[:, inside] for s in train], 1)
    y = np.concatenate([(s["pet"] - mean_pet)[inside] for s in train])
    slopes = np.linalg.lstsq(x.T, y, rcond=None)[0]
    return [mean_pet + np.tensordot(slopes, design(t[key]), 1) for t in test]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--fwhm", type=float, default=2.0, help="smoothing of the mean PET (mm)")
    p.add_argument("--json", type=Path, default=None)
    opts = p.parse_args(argv)
    if set(opts.train) & set(opts.test):
        raise SystemExit("--train and --test overlap")
    train = [load(opts.deriv, s) for s in opts.train]
    test = [load(opts.deriv, s) for s in opts.test]
    mean_pet = np.mean([s["pet"] for s in train], 0)
    sigma = opts.fwhm / (2 * np.sqrt(2 * np.log(2))) / test[0]["voxel_mm"]

    rows = {
        "mean control PET (baseline)": score([mean_pet] * len(test), test),
        f"mean control PET, {opts.fwhm:g} mm FWHM": score(
            [ndi.gaussian_filter(mean_pet, sigma)] * len(test), test
        ),
    }
    for key, label in (("t1w", "MNI T1w (the model's input)"), ("gm", "GM probability")):
        for lam in RIDGE:
            rows[f"voxelwise ridge on {label}, lam {lam:g}"] = score(
                voxelwise_ridge(train, test, key, mean_pet, 1.0, lam), test
            )
        rows[f"shared multi-scale on {label}"] = score(
            shared_multiscale(train, test, key, mean_pet), test
        )
        print(f"{label}: done", file=sys.stderr, flush=True)

    print(
        f"\ntrain (n={len(train)}): {', '.join(opts.train)}; "
        f"held out (n={len(test)}): {', '.join(opts.test)}\n"
    )
    print("| prediction | SSIM (3D) | SSIM (2D) | PSNR (dB) | RMSE | MAE |")
    print("|---|---|---|---|---|---|")
    for label, s in rows.items():
        print(f"| {label} | " + " | ".join(f"{s[k]:.4f}" for k in METRICS) + " |")
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {"train": opts.train, "test": opts.test, "fwhm_mm": opts.fwhm, "rows": rows},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
