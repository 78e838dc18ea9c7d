"""Lesion-detection metrics of PetSynth cluster maps against truth.

For datasets with ground-truth lesion masks (the phantom cohort's ``derivatives/truth``:
``sub-X/anat/sub-X_desc-lesion_mask.nii.gz`` on the T1w grid, labels 1..n, and
``lesions.tsv``), compares each participant's native-space cluster map
(``space-T1w_desc-<desc>_dseg``) with the lesions: sensitivity vs the number of clusters
considered per patient (Zotova et al. 2021, Fig. 4; patient level = any lesion, lesion level = each
lesion), detection rate, mean rank of the first true cluster, lobe localization accuracy
(hemisphere and lobe of the first true cluster's peak vs the lesion's, Chen et al. 2025) and
false-positive clusters per control (participants of the truth folder without lesions).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import layout as L
from ..errors import PetSynthError


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_labels_on(path: Path, ref_path: Path):
    """Integer labels of ``path`` on the grid of ``ref_path`` (nearest neighbour)."""
    import nibabel as nib
    import numpy as np

    img, ref = nib.load(str(path)), nib.load(str(ref_path))
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        from nilearn.image import resample_to_img

        img = resample_to_img(
            img, ref, interpolation="nearest", force_resample=True, copy_header=True
        )
    return np.rint(np.asanyarray(img.dataobj)).astype(int)


def fitted_participants(out_dir: Path, desc: str) -> set[str]:
    """Participants whose PET went into the group model behind ``desc``'s maps."""
    folder = out_dir / "group" / "normative"
    try:
        if desc == "ocsvm":
            meta = json.loads((folder / "anomaly.json").read_text())
            return set(meta["participants_real"]) | set(meta["participants_synthetic"])
        return set(json.loads((folder / "normative.json").read_text())["participants"])
    except (OSError, ValueError, KeyError):
        return set()


class NoPatientMaps(PetSynthError):
    """No patient of the truth folder has cluster maps yet (nothing to evaluate)."""


def evaluate(out_dir: Path, truth: Path, desc: str = "hypometabolism", max_k: int = 10):
    """Per-patient, per-lesion and per-control rows and the summary dict."""
    import nibabel as nib
    import numpy as np

    from . import detection as det

    lesions_tsv = truth / "lesions.tsv"
    if not lesions_tsv.is_file():
        raise PetSynthError("no lesions.tsv in the truth folder", str(truth))
    lesions: dict[str, dict[int, dict]] = {}
    for row in _read_tsv(lesions_tsv):
        subject = row["participant_id"].removeprefix("sub-")
        lesions.setdefault(subject, {})[int(row["lesion"])] = row
    subjects = sorted(p.name[4:] for p in truth.glob("sub-*") if p.is_dir())
    fitted = fitted_participants(out_dir, desc)
    patients, controls, lesion_rows, missing = [], [], [], []
    for s in subjects:
        dseg = L.find(out_dir, s, "dseg", "T1w", desc)
        table = L.find(out_dir, s, "clusters", None, desc)
        if dseg is None or table is None:
            missing.append(s)
            continue
        labels = np.rint(np.asanyarray(nib.load(str(dseg)).dataobj)).astype(int)
        rows = _read_tsv(table)
        cluster_lobes = {int(r["rank"]): det.lobe_key(r["hemisphere"], r["lobe"]) for r in rows}
        calibration = str(_read_json(L.sidecar(table)).get("Calibration", ""))
        calibrated = calibration.startswith("calibrated")
        significant = {int(r["rank"]): str(r.get("significant")).lower() == "true" for r in rows}
        if s not in lesions:
            n_clusters = det.count_clusters(labels)
            controls.append(
                {
                    "participant_id": f"sub-{s}",
                    "n_clusters": n_clusters,
                    # clusters reported as significant by the calibration (None: uncalibrated)
                    "n_significant": sum(significant.values()) if calibrated else None,
                    "in_normative_model": f"sub-{s}" in fitted,
                }
            )
            continue
        mask = L.find_truth(truth, s, "lesion_mask")
        if mask is None:
            raise PetSynthError(f"no lesion mask for sub-{s}", str(truth))
        truth_labels = _load_labels_on(mask, dseg)
        lesion_lobes = {k: det.lobe_key(v["hemisphere"], v["lobe"]) for k, v in lesions[s].items()}
        res = det.evaluate_patient(labels, truth_labels, lesion_lobes, cluster_lobes)
        first = res["first_hit_rank"]
        # is the first cluster on a lesion significant against the healthy-control null?
        # (None: the map is not calibrated)
        first_significant = (
            (first is not None and significant.get(first, False)) if calibrated else None
        )
        patients.append(
            {"participant_id": f"sub-{s}", **res, "first_hit_significant": first_significant}
        )
        for k, v in lesions[s].items():
            lesion_rows.append(
                {
                    "participant_id": f"sub-{s}",
                    "lesion": k,
                    "lobe": lesion_lobes[k],
                    "volume_ml": float(v["volume_ml"]),
                    "uptake_loss": float(v["uptake_loss"]),
                    "best_rank": res["lesion_ranks"].get(k),
                }
            )
    if not patients:
        raise NoPatientMaps(
            f"no patient of the truth folder has `{L.pattern('dseg', 'T1w', desc)}` outputs "
            "(run the participant level with --output-spaces including T1w)",
            str(out_dir),
        )
    summary = det.summarize(patients, controls)
    ranks = [r["best_rank"] for r in lesion_rows]
    summary["n_lesions"] = len(ranks)
    for k in det.SUMMARY_TOP_K:
        summary[f"lesion_sensitivity_top{k}"] = sum(r is not None and r <= k for r in ranks) / len(
            ranks
        )
    summary["missing_outputs"] = [f"sub-{s}" for s in missing]
    held_out = [c["n_clusters"] for c in controls if not c["in_normative_model"]]
    summary["fp_per_control_held_out"] = float(np.mean(held_out)) if held_out else None
    sig = [
        c["n_significant"]
        for c in controls
        if not c["in_normative_model"] and c.get("n_significant") is not None
    ]
    summary["significant_fp_per_control_held_out"] = float(np.mean(sig)) if sig else None
    # top-3 sensitivity counting only significant clusters (the calibrated default rule)
    hits = [
        p["first_hit_significant"] and p["first_hit_rank"] <= 3
        for p in patients
        if p["first_hit_significant"] is not None
    ]
    summary["significant_sensitivity_top3"] = (
        float(np.mean(hits)) if hits and len(hits) == len(patients) else None
    )
    summary["controls_in_normative_model"] = sum(c["in_normative_model"] for c in controls)
    curve = det.sensitivity_curve([p["first_hit_rank"] for p in patients], max_k)
    lesion_curve = [
        (k, sum(r is not None and r <= k for r in ranks) / len(ranks)) for k in range(1, max_k + 1)
    ]
    return patients, lesion_rows, controls, summary, curve, lesion_curve


def write_evaluation(
    out: Path, desc: str, patients, lesion_rows, controls, summary, curve, lesion_curve
) -> dict:
    """Write ``evaluate``'s results to ``out/desc-<desc>_*`` (tables, curve, summary)."""
    from . import detection as det

    out.mkdir(parents=True, exist_ok=True)
    cols = [
        "participant_id",
        "n_clusters",
        "n_lesions",
        "first_hit_rank",
        "first_hit_significant",
        "hit_lesions",
        "lobe_correct",
    ]
    det.write_tsv(patients, L.evaluation_file(out, desc, "patients"), cols)
    det.write_tsv(lesion_rows, L.evaluation_file(out, desc, "lesions"))
    det.write_tsv(
        controls,
        L.evaluation_file(out, desc, "controls"),
        ["participant_id", "n_clusters", "n_significant", "in_normative_model"],
    )
    det.write_tsv(
        [
            {"k": k, "patient_sensitivity": s, "lesion_sensitivity": ls}
            for (k, s), (_, ls) in zip(curve, lesion_curve, strict=True)
        ],
        L.evaluation_file(out, desc, "sensitivity"),
    )
    det.plot_sensitivity_curve(
        {"patients": curve, "lesions": lesion_curve},
        L.evaluation_file(out, desc, "sensitivity", ".png"),
        title=f"{desc}: detection vs clusters",
    )
    summary_file = L.evaluation_file(out, desc, "summary", ".json")
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["NoPatientMaps", "evaluate", "fitted_participants", "write_evaluation"]
