"""Benchmark lesion detection on a phantom cohort: three ways to get a Z map.

Usage: python bench/bench_detection.py OUT TRUTH --controls c13 c14 ... [--json F]
       [--png F] [--calibrate] [--z-fwhm MM]

OUT is a PetSynth participant-level output folder (patients and the listed controls,
with MNI-space SUVR PET, pseudo-normal PET, GM probability, brain mask and the
MNI->T1w transform); TRUTH the phantom's ``derivatives/truth``. Methods:

(a) self-referenced Z of real − pseudo-normal PET (Chen et al.);
(b) control-referenced Z of real − pseudo-normal PET against the voxelwise residual
    mean/SD of the controls (normative model);
(c) baseline without synthesis: the real PET against the controls' voxelwise PET
    mean/SD (SPM-style single-subject comparison).

Normative models use the listed controls only (these must not be the synthesis model's
training controls); each control is scored leave-one-out (model fitted on the other
controls), patients against the model of all listed controls. Every PET and pseudo-PET
is first smoothed inside its brain mask by ``--z-fwhm`` (default ``config.Z_FWHM_MM``, the
participant workflow's analysis smoothing). Clusters: Z < -1.65 in GM, >= 1500 mm³,
ranked by mass (the participant workflow's defaults), mapped to the T1w grid with the
inverse transform and compared with the truth lesion masks there.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from pet_synth_app import layout as L
from pet_synth_app.analysis import detection as det
from pet_synth_app.analysis.calibration import calibrate, loo_cluster_null
from pet_synth_app.analysis.clusters import cluster_table, find_clusters
from pet_synth_app.analysis.zscore import (
    control_pet_z,
    control_referenced_z,
    fit_normative,
    residual,
    self_referenced_z,
    smooth_in_mask,
)
from pet_synth_app.config import GM_THRESHOLD, TEMPLATE_SPACE, Z_FWHM_MM
from pet_synth_app.preproc.anat import apply_transforms

METHODS = {
    "a": "self-referenced Z (pseudo-normal)",
    "b": "control-referenced Z (pseudo-normal)",
    "c": "control PET Z (no synthesis)",
}


def _need(folder: Path, s: str, key: str, space: str | None = None) -> Path:
    found = L.find(folder, s, key, space)
    if found is None:
        raise SystemExit(f"missing {L.pattern(key, space)} of sub-{s} in {folder}")
    return found


def load_subject(out: Path, s: str) -> dict:
    def arr(p):
        return np.asanyarray(nib.load(str(p)).dataobj, dtype=np.float64)

    pet_p = _need(out, s, "pet", TEMPLATE_SPACE)
    return {
        "pet": arr(pet_p),
        "pseudo": arr(_need(out, s, "pseudo", TEMPLATE_SPACE)),
        "gm": arr(_need(out, s, "gm", TEMPLATE_SPACE)),
        "mask": arr(_need(out, s, "mask", TEMPLATE_SPACE)) > 0,
        "affine": nib.load(str(pet_p)).affine,
        "xfm": _need(out, s, "std2t1w_xfm"),
        "t1w": _need(out, s, "t1w"),
    }


def clusters_t1w(z: np.ndarray, d: dict) -> tuple[np.ndarray, dict[int, str], list[float]]:
    """Cluster labels on the T1w grid, lobes by rank, and the masses in rank order."""
    gm = (d["gm"] > GM_THRESHOLD) & d["mask"]
    labels, clusters = find_clusters(z, gm, d["affine"])
    lobes = {r["rank"]: det.lobe_key(r["hemisphere"], r["lobe"]) for r in cluster_table(clusters)}
    img = nib.Nifti1Image(labels.astype(np.float32), d["affine"])
    t1w = apply_transforms(img, nib.load(str(d["t1w"])), [str(d["xfm"])], "nearestNeighbor")
    masses = [c.mass for c in clusters]
    return np.rint(np.asanyarray(t1w.dataobj)).astype(int), lobes, masses


def null_of(data: dict, fit_set: list[str]) -> dict[str, list[list[float]]]:
    """Leave-one-out cluster null of maps (b) and (c) over ``fit_set``
    (``analysis.calibration``, as the group level builds it)."""
    null = loo_cluster_null(
        [data[c]["pet"] for c in fit_set],
        [data[c]["pseudo"] for c in fit_set],
        [data[c]["mask"] for c in fit_set],
        [data[c]["gm"] for c in fit_set],
        data[fit_set[0]]["affine"],
        fwhm_mm=0.0,  # the PETs of ``data`` are already smoothed (main)
    )
    return {"b": null["scans"]["hypometabolism"], "c": null["scans"]["controlpet"]}


def n_significant(masses: list[float], scans: list[list[float]] | None) -> int | None:
    if scans is None:
        return None
    return sum(calibrate(m, scans)["significant"] for m in masses)


def expected_fps(masses: list[float], scans: list[list[float]] | None) -> list[float] | None:
    return None if scans is None else [calibrate(m, scans)["expected_fp"] for m in masses]


ALPHAS = (0.25, 0.5, 1.0, 1.5, 2.0)
"""Alternative rules printed by --calibrate: significant when expected_fp < alpha."""


def truth_of(truth: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    with open(truth / "lesions.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out.setdefault(row["participant_id"][4:], {})[int(row["lesion"])] = row
    return out


def print_table(results: dict[str, dict], first: str) -> None:
    """Markdown table of detection summaries (one row per method/map)."""
    print(
        f"| {first} | sens. top 1 | top 3 | top 5 | lesions top 3 | detection rate | "
        "mean rank | lobe acc. | FP clusters/control |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def f(v):
        return "n/a" if v is None else f"{v:.2f}"

    for label, s in results.items():
        print(
            f"| {label} | {f(s['sensitivity_top1'])} | {f(s['sensitivity_top3'])} | "
            f"{f(s['sensitivity_top5'])} | {f(s['lesion_sensitivity_top3'])} | "
            f"{f(s['detection_rate'])} | {f(s['mean_rank'])} | {f(s['lobe_accuracy'])} | "
            f"{f(s['fp_per_control'])} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("truth", type=Path)
    p.add_argument("--controls", nargs="+", required=True)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="also count only the clusters significant against a leave-one-out null of the "
        "fitted controls (maps b and c; nested: a tested control is never in its null)",
    )
    p.add_argument(
        "--z-fwhm",
        type=float,
        default=Z_FWHM_MM,
        help="analysis smoothing (mm FWHM) of every MNI PET and pseudo-PET inside its brain "
        "mask before the maps (default: the participant workflow's; 0: none)",
    )
    opts = p.parse_args(argv)
    t0 = time.time()
    lesions = truth_of(opts.truth)
    patients = sorted(lesions)
    controls = [c.removeprefix("sub-") for c in opts.controls]
    data = {s: load_subject(opts.out, s) for s in patients + controls}
    zooms = nib.affines.voxel_sizes(data[controls[0]]["affine"])
    for d in data.values():  # the analysis smoothing, as the participant workflow's
        for key in ("pet", "pseudo"):
            d[key] = smooth_in_mask(d[key], d["mask"], opts.z_fwhm, zooms)
    mask = np.mean([data[c]["mask"] for c in controls], 0) >= 0.5
    resid = {s: residual(d["pet"], d["pseudo"], d["mask"]) for s, d in data.items()}

    def models(fit_set):
        r = fit_normative([np.where(mask, resid[c], 0) for c in fit_set], mask, zooms=zooms)
        q = fit_normative([np.where(mask, data[c]["pet"], 0) for c in fit_set], mask, zooms=zooms)
        return r, q

    full = models(controls)
    full_null = null_of(data, controls) if opts.calibrate else {}

    def zmaps(s, fitted):
        d = data[s]
        (rm, rs), (pm, ps) = fitted
        inside = d["mask"] & mask
        return {
            "a": self_referenced_z(resid[s], d["gm"], d["mask"]),
            "b": control_referenced_z(resid[s], rm, rs, inside),
            "c": control_pet_z(d["pet"], pm, ps, inside),
        }

    per_patient = {m: [] for m in METHODS}
    per_lesion = {m: [] for m in METHODS}
    per_control = {m: [] for m in METHODS}
    sig_hit = {m: [] for m in METHODS}  # patients: lesion among the significant clusters
    sig_control = {m: [] for m in METHODS}  # controls: significant clusters
    efp_patient = {m: [] for m in METHODS}  # (first hit rank, expected_fp of each cluster)
    efp_control = {m: [] for m in METHODS}
    for s in patients:
        maps = zmaps(s, full)
        mask_path = L.find_truth(opts.truth, s, "lesion_mask")
        if mask_path is None:
            raise SystemExit(f"no lesion mask of sub-{s} in {opts.truth}")
        truth_img = nib.load(str(mask_path))
        t1w_ref = nib.load(str(data[s]["t1w"]))
        assert truth_img.shape == t1w_ref.shape, "truth and T1w grids differ"
        truth = np.rint(np.asanyarray(truth_img.dataobj)).astype(int)
        les_lobes = {k: det.lobe_key(v["hemisphere"], v["lobe"]) for k, v in lesions[s].items()}
        for m, z in maps.items():
            labels, lobes, masses = clusters_t1w(z, data[s])
            res = det.evaluate_patient(labels, truth, les_lobes, lobes)
            per_patient[m].append(res)
            per_lesion[m] += [res["lesion_ranks"].get(k) for k in lesions[s]]
            n_sig = n_significant(masses, full_null.get(m))
            if n_sig is not None:
                first = res["first_hit_rank"]
                sig_hit[m].append(first is not None and first <= min(n_sig, 3))
                efp_patient[m].append((first, expected_fps(masses, full_null.get(m))))
    for c in controls:
        others = [x for x in controls if x != c]
        maps = zmaps(c, models(others))
        null = null_of(data, others) if opts.calibrate else {}
        for m, z in maps.items():
            masses = clusters_t1w(z, data[c])[2]
            per_control[m].append(len(masses))
            n_sig = n_significant(masses, null.get(m))
            if n_sig is not None:
                sig_control[m].append(n_sig)
                efp_control[m].append(expected_fps(masses, null.get(m)))

    results = {}
    for m, label in METHODS.items():
        summ = det.summarize(per_patient[m], per_control[m])
        ranks = per_lesion[m]
        for k in det.SUMMARY_TOP_K:
            summ[f"lesion_sensitivity_top{k}"] = sum(
                r is not None and r <= k for r in ranks
            ) / len(ranks)
        summ["curve"] = det.sensitivity_curve([r["first_hit_rank"] for r in per_patient[m]])
        summ["first_hit_ranks"] = [r["first_hit_rank"] for r in per_patient[m]]
        summ["control_clusters"] = per_control[m]
        if sig_hit[m]:
            summ["significant_sensitivity_top3"] = float(np.mean(sig_hit[m]))
            summ["significant_fp_per_control"] = float(np.mean(sig_control[m]))
            summ["significant_control_clusters"] = sig_control[m]
            for a in ALPHAS:
                hits = [
                    first is not None and first <= 3 and efp[first - 1] < a
                    for first, efp in efp_patient[m]
                ]
                fps = [sum(e < a for e in efp) for efp in efp_control[m]]
                summ[f"efp{a:g}_sensitivity_top3"] = float(np.mean(hits))
                summ[f"efp{a:g}_fp_per_control"] = float(np.mean(fps))
            # per patient: expected_fp of the first cluster that hits a lesion (None: no hit)
            summ["first_hit_expected_fp"] = [
                None if first is None else efp[first - 1] for first, efp in efp_patient[m]
            ]
        results[label] = summ

    print(
        f"\n{len(patients)} patients ({sum(len(v) for v in lesions.values())} lesions), "
        f"{len(controls)} controls (leave-one-out normative models); {time.time() - t0:.0f} s\n"
    )
    print_table(results, "method")
    if opts.calibrate:
        head = " | ".join(f"expected_fp < {a:g}: sens. top 3 / FP" for a in ALPHAS)
        print(f"\n| calibrated map | significant (default rule): sens. top 3 / FP | {head} |")
        print("|---|---|" + "---|" * len(ALPHAS))
        for label, s in results.items():
            if "significant_fp_per_control" in s:
                alt = " | ".join(
                    f"{s[f'efp{a:g}_sensitivity_top3']:.2f} / {s[f'efp{a:g}_fp_per_control']:.2f}"
                    for a in ALPHAS
                )
                print(
                    f"| {label} | {s['significant_sensitivity_top3']:.2f} / "
                    f"{s['significant_fp_per_control']:.2f} | {alt} |"
                )
    if opts.png:
        det.plot_sensitivity_curve({k: v["curve"] for k, v in results.items()}, opts.png)
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
