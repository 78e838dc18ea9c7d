"""``petsynth-evaluate``: lesion-detection metrics of PetSynth cluster maps against truth.

For datasets with ground-truth lesion masks (the phantom cohort's ``derivatives/truth``:
``sub-X/anat/sub-X_desc-lesion_mask.nii.gz`` on the T1w grid, labels 1..n, and
``lesions.tsv``), compares each participant's native-space cluster map
(``space-T1w_desc-<desc>_dseg``) with the lesions: sensitivity vs the number of clusters
considered per patient (seed 001, Fig. 4; patient level = any lesion, lesion level = each
lesion), detection rate, mean rank of the first true cluster, lobe localization accuracy
(hemisphere and lobe of the first true cluster's peak vs the lesion's, seed 002) and
false-positive clusters per control (participants of the truth folder without lesions).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from ..errors import PetSynthError, UsageError

LOGGER = logging.getLogger("petsynth")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petsynth-evaluate",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_dir", type=Path, help="PetSynth output folder")
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="ground-truth folder (lesions.tsv, sub-*/anat/*_desc-lesion_mask)",
    )
    parser.add_argument(
        "--desc",
        default="hypometabolism",
        choices=["hypometabolism", "ocsvm"],
        help="which cluster maps: hypometabolism or ocsvm",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write (default OUTPUT_DIR/group/evaluation)",
    )
    parser.add_argument("--max-k", type=int, default=10, help="longest sensitivity curve")
    parser.add_argument("--version", action="version", version=f"petsynth {__version__}")
    return parser


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


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

    from ..analysis import detection as det
    from ..bids import first_match

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
        sub = out_dir / f"sub-{s}"
        dseg = first_match(sub, f"**/pet/sub-{s}*_space-T1w_desc-{desc}_dseg.nii.gz")
        table = first_match(sub, f"**/pet/sub-{s}*_desc-{desc}_clusters.tsv")
        if dseg is None or table is None:
            missing.append(s)
            continue
        labels = np.rint(np.asanyarray(nib.load(str(dseg)).dataobj)).astype(int)
        rows = _read_tsv(table)
        cluster_lobes = {int(r["rank"]): det.lobe_key(r["hemisphere"], r["lobe"]) for r in rows}
        if s not in lesions:
            n_clusters = det.count_clusters(labels)
            controls.append(
                {
                    "participant_id": f"sub-{s}",
                    "n_clusters": n_clusters,
                    "in_normative_model": f"sub-{s}" in fitted,
                }
            )
            continue
        mask = first_match(truth / f"sub-{s}", f"**/sub-{s}*_desc-lesion_mask.nii.gz")
        if mask is None:
            raise PetSynthError(f"no lesion mask for sub-{s}", str(truth))
        truth_labels = _load_labels_on(mask, dseg)
        lesion_lobes = {k: det.lobe_key(v["hemisphere"], v["lobe"]) for k, v in lesions[s].items()}
        res = det.evaluate_patient(labels, truth_labels, lesion_lobes, cluster_lobes)
        patients.append({"participant_id": f"sub-{s}", **res})
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
            f"no patient of the truth folder has `space-T1w_desc-{desc}_dseg` outputs "
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
    summary["controls_in_normative_model"] = sum(c["in_normative_model"] for c in controls)
    curve = det.sensitivity_curve([p["first_hit_rank"] for p in patients], max_k)
    lesion_curve = [
        (k, sum(r is not None and r <= k for r in ranks) / len(ranks)) for k in range(1, max_k + 1)
    ]
    return patients, lesion_rows, controls, summary, curve, lesion_curve


def main(argv: list[str] | None = None) -> int:
    from .run import guarded

    parser = get_parser()
    opts = parser.parse_args(argv)
    return guarded(parser, lambda: run_evaluation(opts), "interrupted")


def write_evaluation(
    out: Path, desc: str, patients, lesion_rows, controls, summary, curve, lesion_curve
) -> dict:
    """Write ``evaluate``'s results to ``out/desc-<desc>_*`` (tables, curve, summary)."""
    from ..analysis import detection as det

    out.mkdir(parents=True, exist_ok=True)
    stem = f"desc-{desc}"
    cols = [
        "participant_id",
        "n_clusters",
        "n_lesions",
        "first_hit_rank",
        "hit_lesions",
        "lobe_correct",
    ]
    det.write_tsv(patients, out / f"{stem}_patients.tsv", cols)
    det.write_tsv(lesion_rows, out / f"{stem}_lesions.tsv")
    det.write_tsv(
        controls,
        out / f"{stem}_controls.tsv",
        ["participant_id", "n_clusters", "in_normative_model"],
    )
    det.write_tsv(
        [
            {"k": k, "patient_sensitivity": s, "lesion_sensitivity": ls}
            for (k, s), (_, ls) in zip(curve, lesion_curve, strict=True)
        ],
        out / f"{stem}_sensitivity.tsv",
    )
    det.plot_sensitivity_curve(
        {"patients": curve, "lesions": lesion_curve},
        out / f"{stem}_sensitivity.png",
        title=f"{desc}: detection vs clusters",
    )
    (out / f"{stem}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_evaluation(opts: argparse.Namespace) -> int:
    """Evaluate, write the tables, curve and summary, print the headline numbers."""
    from ..analysis import detection as det

    if not opts.output_dir.is_dir():
        raise UsageError("OUTPUT_DIR is not a directory", str(opts.output_dir))
    if not opts.truth.is_dir():
        raise UsageError("--truth is not a directory", str(opts.truth))
    patients, lesion_rows, controls, summary, curve, lesion_curve = evaluate(
        opts.output_dir, opts.truth, opts.desc, opts.max_k
    )
    out = opts.out or opts.output_dir / "group" / "evaluation"
    summary = write_evaluation(
        out, opts.desc, patients, lesion_rows, controls, summary, curve, lesion_curve
    )
    print(
        f"petsynth-evaluate ({opts.desc}): {summary['n_patients']} patients, "
        f"{summary['n_lesions']} lesions, {summary['n_controls']} controls"
    )
    for k in det.SUMMARY_TOP_K:
        print(
            f"  sensitivity within top {k}: patients {summary[f'sensitivity_top{k}']:.2f}, "
            f"lesions {summary[f'lesion_sensitivity_top{k}']:.2f}"
        )
    mr = summary["mean_rank"]
    la = summary["lobe_accuracy"]
    fp = summary["fp_per_control"]
    print(
        f"  detection rate {summary['detection_rate']:.2f}, mean rank "
        f"{'n/a' if mr is None else f'{mr:.2f}'}, lobe accuracy "
        f"{'n/a' if la is None else f'{la:.2f}'}, false-positive clusters per control "
        f"{'n/a' if fp is None else f'{fp:.2f}'}"
    )
    if summary["controls_in_normative_model"]:
        held = summary["fp_per_control_held_out"]
        print(
            f"  note: {summary['controls_in_normative_model']} control(s) were used to fit "
            "the normative model, so their false-positive count is optimistic; held-out "
            f"controls: {'none' if held is None else f'{held:.2f} clusters each'}"
        )
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
