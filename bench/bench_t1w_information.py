"""How much of a control's PET can its MNI-space T1w predict at all? Linear upper bounds.

Usage: python bench/bench_t1w_information.py DERIV --train c01 ... --test c13 ...
       [--fwhm 2] [--json out.json] [--space NAME] [--feature NAME=ENTITIES ...]

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

Input representations (issue 14): ``--space NAME`` reads every volume (T1w, mask, GM,
PET) from ``space-NAME`` outputs instead of the MNI template space (e.g. an affine-only
template space: the bound of representation (a)); each ``--feature NAME=ENTITIES`` adds
a feature volume found as ``sub-<L>/**/sub-<L>*_space-<space>_<ENTITIES>.nii.gz`` (e.g.
``logjac=desc-logjac_T1w`` or ``modgm=label-GM_desc-modulated_probseg``: representation
(b)). Every feature gets the single-feature rows, and with two or more features a
*joint voxelwise ridge* on all of them (T1w + extras: one slope per feature per voxel)
gives the bound of the combined input.
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
from pet_synth_app.bids import MNI_DERIVATIVES, first_match
from pet_synth_app.config import TEMPLATE_SPACE
from pet_synth_app.synthesis.training import load_volumes

METRICS = ("ssim", "ssim_2d", "psnr", "rmse", "mae")
RIDGE = (0.0, 1e-4, 1e-3, 1e-2)
SCALES_VOX = (1.0, 2.0, 4.0)


def _find(deriv: Path, subject: str, space: str, entities: str) -> Path | None:
    return first_match(
        Path(deriv), f"sub-{subject}/**/sub-{subject}*_space-{space}_{entities}.nii.gz"
    )


def load(
    deriv: Path,
    subject: str,
    space: str = TEMPLATE_SPACE,
    features: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """T1w (scaled to [0, 1] in the mask, as the model sees it), GM probability, SUVR PET,
    brain mask and the extra ``features`` (name -> entities) in ``space``, plus the
    grid's voxel size (mm)."""
    f = {
        role: _find(deriv, subject, space, MNI_DERIVATIVES[role])
        for role in ("t1w", "mask", "pet", "gm")
    }
    if not all(f.values()):
        raise SystemExit(f"{subject}: no space-{space} T1w/mask/PET/GM probability in {deriv}")
    v = load_volumes(subject, f["t1w"], f["mask"], f["pet"])
    out = {
        "t1w": v.t1w,
        "pet": v.pet_suvr,
        "mask": v.mask,
        "gm": np.asanyarray(nib.load(f["gm"]).dataobj, dtype=np.float32),
        "voxel_mm": float(abs(v.affine[0, 0])),
    }
    for name, entities in (features or {}).items():
        path = _find(deriv, subject, space, entities)
        if path is None:
            raise SystemExit(f"{subject}: no space-{space}_{entities} feature in {deriv}")
        vol = np.nan_to_num(np.asanyarray(nib.load(path).dataobj, dtype=np.float32))
        if vol.shape != v.t1w.shape:
            raise SystemExit(f"{subject}: feature {name} is not on the T1w grid")
        out[name] = vol
    return out


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


def joint_ridge(
    train: list[dict],
    test: list[dict],
    keys: list[str],
    mean_pet: np.ndarray,
    sigma: float,
    lam: float,
) -> list[np.ndarray]:
    """Per-voxel multiple regression of the PET deviation on all smoothed feature
    deviations (each feature standardized over the training set; ridge ``lam``)."""

    def feats(s: dict) -> np.ndarray:
        return np.stack([ndi.gaussian_filter(s[k], sigma) for k in keys], -1)

    tr = [feats(s) for s in train]
    mean_f = np.mean(tr, 0)
    scale = np.sqrt(np.mean([(x - mean_f) ** 2 for x in tr], 0).mean((0, 1, 2))) + 1e-12
    dev = [(x - mean_f) / scale for x in tr]
    sxx = sum(d[..., :, None] * d[..., None, :] for d in dev)
    sxy = sum(d * (s["pet"] - mean_pet)[..., None] for d, s in zip(dev, train, strict=True))
    sxx = sxx + (lam * len(train) + 1e-9) * np.eye(len(keys))
    slope = np.linalg.solve(sxx, sxy[..., None])[..., 0]
    return [mean_pet + (slope * (feats(t) - mean_f) / scale).sum(-1) for t in test]


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
    p.add_argument("--space", default=TEMPLATE_SPACE, help="space entity of all volumes")
    p.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=ENTITIES",
        help="extra feature volume sub-<L>*_space-<space>_<ENTITIES>.nii.gz (repeatable)",
    )
    opts = p.parse_args(argv)
    if set(opts.train) & set(opts.test):
        raise SystemExit("--train and --test overlap")
    extra = dict(f.split("=", 1) for f in opts.feature)
    if any(not k or not v or k in ("t1w", "gm", "pet", "mask") for k, v in extra.items()):
        raise SystemExit("--feature needs NAME=ENTITIES with a new NAME")
    train = [load(opts.deriv, s, opts.space, extra) for s in opts.train]
    test = [load(opts.deriv, s, opts.space, extra) for s in opts.test]
    mean_pet = np.mean([s["pet"] for s in train], 0)
    sigma = opts.fwhm / (2 * np.sqrt(2 * np.log(2))) / test[0]["voxel_mm"]

    rows = {
        "mean control PET (baseline)": score([mean_pet] * len(test), test),
        f"mean control PET, {opts.fwhm:g} mm FWHM": score(
            [ndi.gaussian_filter(mean_pet, sigma)] * len(test), test
        ),
    }
    t1_label = "MNI T1w (the model's input)" if opts.space == TEMPLATE_SPACE else None
    features = [("t1w", t1_label or f"space-{opts.space} T1w"), ("gm", "GM probability")]
    features += [(k, f"{k} ({v})") for k, v in extra.items()]
    for key, label in features:
        for lam in RIDGE:
            rows[f"voxelwise ridge on {label}, lam {lam:g}"] = score(
                voxelwise_ridge(train, test, key, mean_pet, 1.0, lam), test
            )
        rows[f"shared multi-scale on {label}"] = score(
            shared_multiscale(train, test, key, mean_pet), test
        )
        print(f"{label}: done", file=sys.stderr, flush=True)
    if extra:
        keys = ["t1w", *extra]
        for lam in RIDGE:
            rows[f"joint voxelwise ridge on {' + '.join(keys)}, lam {lam:g}"] = score(
                joint_ridge(train, test, keys, mean_pet, 1.0, lam), test
            )

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
                {
                    "train": opts.train,
                    "test": opts.test,
                    "fwhm_mm": opts.fwhm,
                    "space": opts.space,
                    "features": extra,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
