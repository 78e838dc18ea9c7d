"""How much of a control's PET can its model input predict at all? Linear upper bounds.

Usage: python bench/bench_t1w_information.py DERIV --train c01 ... --test c13 ...
       [--representation mni|affine|mni-jacobian ...] [--loo-pool c01 ...]
       [--noise-free TWIN_DERIV] [--fwhm 2] [--json out.json]

A synthesis model earns its keep only on the part of a brain's PET that differs from the
mean control PET *and* shows in its input. This script bounds that part with linear models
fitted on the training controls and scored on held-out controls.

Input representations (issue 14, ``synthesis.inputs``): for each ``--representation``
(repeatable; default all three) every participant's input channels and target PET are
built by ``build_model_input(rep, sources_from_derivatives(DERIV, s), with_pet=True)``,
i.e. exactly what a model of that representation sees and is trained on. The predictors
are fitted in the representation's own space (the affine space for ``"affine"``, MNI
otherwise) on the ``--train`` controls; predictions in affine space (and the training mean
PET in that space) are taken to MNI with each test participant's affine->MNI warp as the
workflow does (``bench_synthesis.warp_to_mni``). Everything is scored in MNI space
against the real MNI SUVR PET inside the MNI brain mask, with the metrics of
``bench_synthesis.py`` (``analysis.metrics.image_metrics`` on [0, 1]-scaled pairs, plus
the GM voxelwise correlation of the deviation from the leave-one-out mean with the real
and, with ``--noise-free``, the noise-free PET's deviation). Rows:

- baselines, side by side: the leave-one-out mean control PET (every control with PET in
  DERIV but the tested one, ``--loo-pool`` restricts the pool), the training controls'
  mean MNI PET and the same smoothed with a Gaussian of ``--fwhm`` mm, and for the affine
  representation the training mean PET in affine space taken to MNI and the test
  participant's own affine-space target PET taken to MNI (the round-trip ceiling: what
  the affine-space target loses to the extra resampling);
- *voxelwise ridge*: at every voxel, PET - mean PET regressed on the smoothed deviation of
  one input channel from its training mean (one slope per voxel, ridge ``lam``; every
  ``lam`` of the grid is reported, so the best row is chosen on the test set: an
  optimistic bound);
- *shared multi-scale*: one set of 6 slopes for the whole brain on the channel deviation
  smoothed at 1, 2 and 4 voxels, alone and times the mean PET (least squares over the
  voxels inside every training mask);
- with several channels (``mni-jacobian``, ``mni-pv``), a *joint voxelwise ridge* on all
  of them (one slope per channel per voxel, channels standardized, ridge grid
  ``JOINT_RIDGE``): the bound of the combined input; and a *pooled ridge* on the channels
  beyond the T1w, whose normal equations are summed over a Gaussian neighbourhood of
  ``POOL_VOX`` voxels (smooth slopes from many more samples than controls);
- with ``--ages participants.tsv`` (issue 14 item 3), the pooled ridge again with the
  participant's age as one more feature (a constant map: a spatially smooth age slope,
  e.g. the frontal/cingulate decline);
- for the MNI-space representations, the same single-feature rows on the participant's MNI
  GM probability map (which the models do not see) for comparison.

If even these regressions barely beat the mean, the input carries little of the PET's
between-subject variation and no model trained on it can beat the baseline by more.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pet_synth_app.analysis.metrics import image_metrics
from pet_synth_app.config import GM_THRESHOLD
from pet_synth_app.synthesis import pvmodel
from pet_synth_app.synthesis.inputs import (
    REPRESENTATIONS,
    build_model_input,
    input_space,
    sources_from_derivatives,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_synthesis as bs  # noqa: E402

METRICS = ("ssim", "ssim_2d", "psnr", "rmse", "mae")
RIDGE = (0.0, 1e-4, 1e-3, 1e-2)
JOINT_RIDGE = (0.0, 0.1, 1.0, 10.0)  # standardized features: larger penalties
SCALES_VOX = (1.0, 2.0, 4.0)
POOLED_RIDGE = (0.01, 0.1, 1.0)  # standardized features, normal equations pooled
POOL_VOX = 2.0  # SD of the Gaussian neighbourhood the pooled ridge sums over (voxels)


def load(deriv: Path, subject: str, representation: str) -> dict:
    """A participant's model input in ``representation`` (one array per channel, by the
    channel's name), target SUVR PET and brain mask in the representation's space (built
    by ``build_model_input(..., with_pet=True)``), plus its sources, the grid's voxel size
    (mm) and, in MNI space, the MNI GM probability as ``"gm"``."""
    sources = sources_from_derivatives(deriv, subject)
    mi = build_model_input(representation, sources, with_pet=True)
    if mi.pet_suvr is None:
        raise SystemExit(f"{subject}: no PET for the {representation} representation")
    out = {
        "sources": sources,
        "pet": mi.pet_suvr,
        "mask": mi.mask,
        "channels": list(mi.names),
        "voxel_mm": float(abs(mi.affine[0, 0])),
    }
    for name, vol in zip(mi.names, mi.channels, strict=True):
        out[name] = vol
    if input_space(representation) == "mni" and sources.gm_std is not None:
        out["gm"] = bs._array(sources.gm_std)
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


def _ridge(
    tr: list[np.ndarray],
    te: list[np.ndarray],
    train: list[dict],
    mean_pet: np.ndarray,
    lam: float,
    pool: float = 0.0,
) -> list[np.ndarray]:
    """Per-voxel ridge of the PET deviation on feature deviations (``tr``/``te``: (x, y, z,
    k) features of the training and test participants; each feature standardized over
    the training set); with ``pool`` > 0 the normal equations are summed over a Gaussian
    neighbourhood of that SD (voxels) before solving."""
    mean_f = np.mean(tr, 0)
    scale = np.sqrt(np.mean([(x - mean_f) ** 2 for x in tr], 0).mean((0, 1, 2))) + 1e-12
    dev = [(x - mean_f) / scale for x in tr]
    sxx = sum(d[..., :, None] * d[..., None, :] for d in dev)
    sxy = sum(d * (s["pet"] - mean_pet)[..., None] for d, s in zip(dev, train, strict=True))
    if pool > 0:
        sxx = ndi.gaussian_filter(sxx, (pool,) * 3 + (0, 0))
        sxy = ndi.gaussian_filter(sxy, (pool,) * 3 + (0,))
    sxx = sxx + (lam * len(train) + 1e-9) * np.eye(tr[0].shape[-1])
    slope = np.linalg.solve(sxx, sxy[..., None])[..., 0]
    return [mean_pet + (slope * (x - mean_f) / scale).sum(-1) for x in te]


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

    return _ridge([feats(s) for s in train], [feats(t) for t in test], train, mean_pet, lam)


def pooled_ridge(
    train: list[dict],
    test: list[dict],
    keys: list[str],
    mean_pet: np.ndarray,
    pool: float,
    lam: float,
) -> list[np.ndarray]:
    """:func:`joint_ridge` with the per-voxel normal equations summed over a Gaussian
    neighbourhood (``pool`` voxels SD) before solving: slopes that vary smoothly in space,
    estimated from many more samples than there are training controls."""

    def feats(s: dict) -> np.ndarray:
        return np.stack([s[k] for k in keys], -1)

    tr, te = [feats(s) for s in train], [feats(t) for t in test]
    return _ridge(tr, te, train, mean_pet, lam, pool)


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


def pv_forward_rows(
    train: list[dict], test: list[dict], mean_pet: np.ndarray
) -> dict[str, list[np.ndarray]]:
    """The partial-volume forward model (``synthesis.pvmodel``): its three numbers
    fitted by leave-one-out on the training controls only, then the held-out controls
    predicted from the training mean PET, with and without the reference-region
    rescaling to the training controls' level (reference: the participant's MNI GM
    probability > ``GM_THRESHOLD``, the
    default ``gm-mean`` SUVR region)."""

    def reference(d: dict) -> np.ndarray | None:
        return d["gm"] > GM_THRESHOLD if "gm" in d else None

    params, _ = pvmodel.fit_pv_params(
        [s["pet"] for s in train],
        [s["pv_gm"] for s in train],
        [s["pv_csf"] for s in train],
        [s["mask"] > 0 for s in train],
        [reference(s) for s in train],
    )
    print(f"partial-volume model fitted on the training controls: {params}", file=sys.stderr)
    mean_gm = np.mean([s["pv_gm"] for s in train], 0)
    mean_csf = np.mean([s["pv_csf"] for s in train], 0)
    level = pvmodel.reference_level([s["pet"] for s in train], [reference(s) for s in train])
    tag = f"r_WM {params.wm_ratio:g}, r_CSF {params.csf_ratio:g}, gamma {params.gamma:g}"
    return {
        f"partial-volume forward model ({tag}; fitted by LOO on the training controls)": [
            pvmodel.anatomy_adjusted_pet(
                mean_pet, mean_gm, mean_csf, t["pv_gm"], t["pv_csf"], params, reference(t), level
            )
            for t in test
        ],
        f"the same without the reference-region rescaling ({tag})": [
            pvmodel.anatomy_adjusted_pet(
                mean_pet, mean_gm, mean_csf, t["pv_gm"], t["pv_csf"], params
            )
            for t in test
        ],
    }


def evaluate_representation(
    representation: str,
    deriv: Path,
    train_ids: list[str],
    test_ids: list[str],
    references: list[dict],
    loos: list[np.ndarray],
    cleans: list[np.ndarray | None],
    ages: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Rows (label -> per-test-subject MNI scores) of one representation's bounds
    (``ages``: years by participant label, for the pooled ridge with age)."""
    space = input_space(representation)
    train = [load(deriv, s, representation) for s in train_ids]
    test = [load(deriv, s, representation) for s in test_ids]
    if ages:
        for sub, d in zip(train_ids + test_ids, train + test, strict=True):
            d["age"] = np.full(d["mask"].shape, ages[sub], np.float32)
    mean_pet = np.mean([s["pet"] for s in train], 0)
    rows: dict[str, list[dict]] = {}
    pending: dict[str, list[np.ndarray]] = {}

    def add(label: str, preds: list[np.ndarray]) -> None:
        preds = [np.asarray(p * t["mask"], np.float32) for p, t in zip(preds, test, strict=True)]
        if space == "mni":
            rows[label] = [
                bs.score_subject(p, ref, loo, clean)
                for p, ref, loo, clean in zip(preds, references, loos, cleans, strict=True)
            ]
        else:
            pending[label] = preds

    if space == "affine":
        add("training mean PET in affine space, to MNI", [mean_pet] * len(test))
        # what the affine-space target loses on the way back to MNI (two resamplings):
        # the ceiling of any prediction in this representation
        add(
            "own target PET in affine space, to MNI (round-trip ceiling)", [t["pet"] for t in test]
        )
    features = [(c, c) for c in train[0]["channels"]]
    if "gm" in train[0] and all("gm" in t for t in test):
        features.append(("gm", "MNI GM probability (not a model input)"))
    for key, name in features:
        for lam in RIDGE:
            add(
                f"voxelwise ridge on {name}, lam {lam:g}",
                voxelwise_ridge(train, test, key, mean_pet, 1.0, lam),
            )
        add(f"shared multi-scale on {name}", shared_multiscale(train, test, key, mean_pet))
        print(f"{representation}: {name} done", file=sys.stderr, flush=True)
    keys = train[0]["channels"]
    if len(keys) > 1:
        for lam in JOINT_RIDGE:
            add(
                f"joint voxelwise ridge on {' + '.join(keys)}, lam {lam:g}",
                joint_ridge(train, test, keys, mean_pet, 1.0, lam),
            )
        extra = keys[1:]  # the channels beyond the T1w, alone
        for lam in POOLED_RIDGE:
            add(
                f"pooled ridge ({POOL_VOX:g} voxels) on {' + '.join(extra)}, lam {lam:g}",
                pooled_ridge(train, test, extra, mean_pet, POOL_VOX, lam),
            )
            if ages:
                add(
                    f"pooled ridge ({POOL_VOX:g} voxels) on {' + '.join(extra)} + age, "
                    f"lam {lam:g}",
                    pooled_ridge(train, test, [*extra, "age"], mean_pet, POOL_VOX, lam),
                )
    if {"pv_gm", "pv_csf"} <= set(keys):
        for label, preds in pv_forward_rows(train, test, mean_pet).items():
            add(label, preds)
    if pending:  # affine space -> MNI, one warp per test participant for all rows
        labels = list(pending)
        for label in labels:
            rows[label] = []
        for i, t in enumerate(test):
            mni = bs.warp_to_mni([pending[label][i] for label in labels], t["sources"])
            for label, p in zip(labels, mni, strict=True):
                rows[label].append(bs.score_subject(p, references[i], loos[i], cleans[i]))
    return rows


def read_ages(tsv: Path, subjects: list[str]) -> dict[str, float]:
    """Age (years) of each of ``subjects`` from a BIDS participants.tsv."""
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if line.strip()]
    col = rows[0].index("age")
    ages = {r[0].removeprefix("sub-"): r[col] for r in rows[1:]}
    missing = [s for s in subjects if ages.get(s, "n/a") in ("", "n/a")]
    if missing:
        raise SystemExit(f"--ages: no age for {', '.join(missing)} in {tsv}")
    return {s: float(ages[s]) for s in subjects}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deriv", type=Path)
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument(
        "--representation",
        action="append",
        choices=list(REPRESENTATIONS),
        default=None,
        help="input representation (repeatable; default: all)",
    )
    p.add_argument(
        "--loo-pool",
        nargs="+",
        default=None,
        help="controls of the leave-one-out mean (default: every control with PET in DERIV)",
    )
    p.add_argument(
        "--noise-free",
        type=Path,
        default=None,
        help="derivatives of the noise-free twin (GM r against the true deviation)",
    )
    p.add_argument(
        "--ages",
        type=Path,
        default=None,
        help="participants.tsv with an age column: pooled-ridge rows with age as a feature",
    )
    p.add_argument("--fwhm", type=float, default=2.0, help="smoothing of the mean PET (mm)")
    p.add_argument("--json", type=Path, default=None)
    opts = p.parse_args(argv)
    if set(opts.train) & set(opts.test):
        raise SystemExit("--train and --test overlap")
    reps = list(dict.fromkeys(opts.representation or REPRESENTATIONS))
    ages = read_ages(opts.ages, opts.train + opts.test) if opts.ages else None
    pool = opts.loo_pool or bs.subjects_with_pet(opts.deriv)
    pool_pets = bs.control_pets(opts.deriv, pool)
    references = [bs.load_mni(opts.deriv, s) for s in opts.test]
    loos = [bs.loo_mean(pool_pets, s) for s in opts.test]
    cleans: list[np.ndarray | None] = [None] * len(opts.test)
    if opts.noise_free:
        cleans = [bs.load_mni(opts.noise_free, s)["pet"] for s in opts.test]
    train_mni = np.mean([bs.load_mni(opts.deriv, s)["pet"] for s in opts.train], 0)
    sigma = opts.fwhm / (2 * np.sqrt(2 * np.log(2))) / references[0]["voxel_mm"]

    def baseline(preds: list[np.ndarray]) -> list[dict]:
        return [
            bs.score_subject(q * ref["mask"], ref, loo, clean)
            for q, ref, loo, clean in zip(preds, references, loos, cleans, strict=True)
        ]

    per_subject = {
        "baselines": {
            "LOO mean control PET": baseline(loos),
            "training mean PET (MNI)": baseline([train_mni] * len(opts.test)),
            f"training mean PET (MNI), {opts.fwhm:g} mm FWHM": baseline(
                [ndi.gaussian_filter(train_mni, sigma)] * len(opts.test)
            ),
        }
    }
    if opts.noise_free:
        per_subject["baselines"]["noise-free twin PET (ceiling)"] = baseline(cleans)
    for rep in reps:
        per_subject[rep] = evaluate_representation(
            rep, opts.deriv, opts.train, opts.test, references, loos, cleans, ages
        )
    summary = {
        group: {label: bs.summarize(r) for label, r in rows.items()}
        for group, rows in per_subject.items()
    }

    print(
        f"\ntrain (n={len(opts.train)}): {', '.join(opts.train)}; held out "
        f"(n={len(opts.test)}): {', '.join(opts.test)}; scored in MNI space against the "
        f"real MNI PET inside the MNI brain mask; LOO mean over {', '.join(pool)} minus the "
        f"tested control; GM region of r: {bs.GM_REGION}\n"
    )
    cols = [*METRICS, "r_real"] + (["r_clean"] if opts.noise_free else [])
    head = {
        "ssim": "SSIM (3D)",
        "ssim_2d": "SSIM (2D)",
        "psnr": "PSNR (dB)",
        "rmse": "RMSE",
        "mae": "MAE",
        "r_real": "GM r vs real dev.",
        "r_clean": "GM r vs noise-free dev.",
    }
    print("| input | prediction | " + " | ".join(head[c] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for group, rows in summary.items():
        for label, s in rows.items():
            vals = " | ".join("n/a" if np.isnan(s[c][0]) else f"{s[c][0]:.4f}" for c in cols)
            print(f"| {group} | {label} | {vals} |")
    if opts.json:
        opts.json.write_text(
            json.dumps(
                {
                    "train": opts.train,
                    "test": opts.test,
                    "representations": reps,
                    "loo_pool": list(pool),
                    "noise_free": str(opts.noise_free) if opts.noise_free else None,
                    "gm_region": bs.GM_REGION,
                    "fwhm_mm": opts.fwhm,
                    "summary": summary,
                    "per_subject": per_subject,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
