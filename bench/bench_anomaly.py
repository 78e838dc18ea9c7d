"""Seed 001's experiment on a phantom cohort: does adding synthetic control PET to the
OC-SVM detector's training set raise lesion-detection sensitivity?

Usage: python bench/bench_anomaly.py OUT TRUTH --real c01 ... --synthetic c11 ...
       [--held-out c11 ...] [--patients-out OUT2 --patients-truth TRUTH2] [--epochs 10]
       [--json F] [--png F]

OUT is a PetSynth participant-level output folder (MNI-space SUVR PET, pseudo-normal PET,
GM probability, brain mask, MNI->T1w transform of every listed participant); TRUTH the
phantom's ``derivatives/truth`` (``--patients-out``/``--patients-truth``: take the
patients from another processed cohort, e.g. one with subtler lesions). Detectors
(siamese autoencoder + per-voxel OC-SVM, the group level's defaults) are trained on

(a) the real PET of the ``--real`` controls;
(b) (a) plus the pseudo-normal PET of the ``--synthetic`` controls (their real PET is
    never used: they play the T1w-only controls of the hybrid database of Zotova et al. 2021);
(c) the pseudo-normal PET of the ``--synthetic`` controls only;

and every patient of TRUTH is scored; clusters of the self-standardized score (< -1.65 in
GM, >= 1500 mm³, ranked by mass) are mapped to the T1w grid and compared with the lesions
(sensitivity vs clusters per patient, mean rank, lobe accuracy). False positives: clusters
in the real PET of the ``--held-out`` controls. For reference, the self-referenced Z map
(real - pseudo-normal PET, after the participant workflow's analysis smoothing
``config.Z_FWHM_MM``) is evaluated on the same patients. Prints fit time and peak
memory of each detector and the per-patient scoring time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_detection import clusters_t1w, load_subject, print_table, truth_of  # noqa: E402

from pet_synth_app import layout as L  # noqa: E402
from pet_synth_app.analysis import anomaly  # noqa: E402
from pet_synth_app.analysis import detection as det  # noqa: E402
from pet_synth_app.analysis.zscore import (  # noqa: E402
    residual,
    self_referenced_z,
    smooth_in_mask,
)
from pet_synth_app.config import OCSVM_GAMMA, OCSVM_NU, SIAMESE_EPOCHS, Z_FWHM_MM  # noqa: E402
from pet_synth_app.preproc.templates import get_template  # noqa: E402


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def evaluate(
    maps: dict[str, np.ndarray], data: dict, lesions: dict, truth: Path, held_out: list[str]
) -> dict:
    """Detection summary of score/Z maps (MNI) of the patients and held-out controls."""
    per_patient, ranks, fp = [], [], []
    for s in sorted(lesions):
        mask_path = L.find_truth(truth, s, "lesion_mask")
        truth_lab = np.rint(np.asanyarray(nib.load(str(mask_path)).dataobj)).astype(int)
        les_lobes = {k: det.lobe_key(v["hemisphere"], v["lobe"]) for k, v in lesions[s].items()}
        labels, lobes, _ = clusters_t1w(maps[s], data[s])
        res = det.evaluate_patient(labels, truth_lab, les_lobes, lobes)
        per_patient.append(res)
        ranks += [res["lesion_ranks"].get(k) for k in lesions[s]]
    for c in held_out:
        fp.append(len(clusters_t1w(maps[c], data[c])[2]))  # clusters of a healthy scan
    summ = det.summarize(per_patient, fp)
    for k in det.SUMMARY_TOP_K:
        summ[f"lesion_sensitivity_top{k}"] = sum(r is not None and r <= k for r in ranks) / len(
            ranks
        )
    summ["curve"] = det.sensitivity_curve([r["first_hit_rank"] for r in per_patient])
    summ["first_hit_ranks"] = [r["first_hit_rank"] for r in per_patient]
    summ["control_clusters"] = fp
    return summ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("truth", type=Path)
    p.add_argument("--real", nargs="+", required=True)
    p.add_argument("--synthetic", nargs="+", required=True)
    p.add_argument("--held-out", nargs="*", default=[])
    p.add_argument("--patients-out", type=Path, default=None)
    p.add_argument("--patients-truth", type=Path, default=None)
    p.add_argument("--epochs", type=int, default=SIAMESE_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None)
    opts = p.parse_args(argv)
    p_truth = opts.patients_truth or opts.truth
    lesions = truth_of(p_truth)
    patients = sorted(lesions)
    real = [s.removeprefix("sub-") for s in opts.real]
    synth = [s.removeprefix("sub-") for s in opts.synthetic]
    held = [s.removeprefix("sub-") for s in opts.held_out]
    data = {s: load_subject(opts.out, s) for s in dict.fromkeys(real + synth + held)}
    data.update({s: load_subject(opts.patients_out or opts.out, s) for s in patients})
    affine = data[patients[0]]["affine"]
    gm = np.asanyarray(get_template("GM", 2).dataobj)
    f32 = {s: d["pet"].astype(np.float32) for s, d in data.items()}
    configs = {
        "a": (
            f"OC-SVM, {len(real)} real",
            [f32[s] for s in real],
            [data[s]["mask"] for s in real],
        ),
        "b": (
            f"OC-SVM, {len(real)} real + {len(synth)} synthetic",
            [f32[s] for s in real] + [data[s]["pseudo"].astype(np.float32) for s in synth],
            [data[s]["mask"] for s in real + synth],
        ),
        "c": (
            f"OC-SVM, {len(synth)} synthetic",
            [data[s]["pseudo"].astype(np.float32) for s in synth],
            [data[s]["mask"] for s in synth],
        ),
    }
    results, timing = {}, {}
    scored = patients + held
    for label, pets, masks in configs.values():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            fit = anomaly.fit(
                pets,
                masks,
                gm,
                affine,
                Path(tmp),
                nu=OCSVM_NU,
                gamma=OCSVM_GAMMA,
                epochs=opts.epochs,
                seed=opts.seed,
                threads=opts.threads,
            )
            t_fit = time.time() - t0
            t1 = time.time()
            maps = {
                s: anomaly.score(tmp, f32[s], data[s]["mask"], threads=opts.threads)[0]
                for s in scored
            }
            t_score = (time.time() - t1) / len(scored)
        timing[label] = {
            "n_train": len(pets),
            "fit_s": round(t_fit, 1),
            "autoencoder_s": round(fit.seconds_autoencoder, 1),
            "ocsvm_s": round(fit.seconds_ocsvm, 1),
            "voxels": fit.n_voxels,
            "score_s_per_pet": round(t_score, 2),
            "peak_rss_gb": round(_peak_gb(), 2),
        }
        print(
            f"{label}: fit {t_fit:.0f} s (autoencoder {fit.seconds_autoencoder:.0f} s, "
            f"OC-SVMs {fit.seconds_ocsvm:.0f} s, {fit.n_voxels} voxels), scoring "
            f"{t_score:.1f} s per PET, peak RSS {_peak_gb():.2f} GB",
            flush=True,
        )
        results[label] = evaluate(maps, data, lesions, p_truth, held)

    def self_z(d: dict) -> np.ndarray:  # as the participant workflow, analysis smoothing
        zooms = nib.affines.voxel_sizes(d["affine"])
        pet, pseudo = (
            smooth_in_mask(d[k], d["mask"], Z_FWHM_MM, zooms) for k in ("pet", "pseudo")
        )
        return self_referenced_z(residual(pet, pseudo, d["mask"]), d["gm"], d["mask"])

    zmaps = {s: self_z(data[s]) for s in scored}
    results["self-referenced Z (pseudo-normal)"] = evaluate(zmaps, data, lesions, p_truth, held)

    n_les = sum(len(v) for v in lesions.values())
    print(
        f"\n{len(patients)} patients ({n_les} lesions); false positives in {len(held)} "
        "held-out controls' real PET\n"
    )
    print_table(results, "map")
    if opts.png:
        det.plot_sensitivity_curve({k: v["curve"] for k, v in results.items()}, opts.png)
    if opts.json:
        opts.json.write_text(
            json.dumps({"results": results, "timing": timing}, indent=1, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
