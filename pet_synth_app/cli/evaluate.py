"""``petsynth-evaluate``: lesion-detection metrics of PetSynth cluster maps against truth
(``analysis/evaluate.py``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
from .. import layout as L
from ..errors import UsageError
from .parser import DefaultsOnceFormatter

LOGGER = logging.getLogger("petsynth")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petsynth-evaluate",
        description="lesion-detection metrics of PetSynth cluster maps against truth",
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument("output_dir", type=Path, help="PetSynth output folder")
    parser.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="ground-truth folder (lesions.tsv and the lesion masks of the phantom cohort)",
    )
    parser.add_argument(
        "--desc",
        default="hypometabolism",
        choices=list(L.STATS),
        help="which cluster maps: hypometabolism (synthesis-based Z), controlpet "
        "(control-PET Z, no synthesis) or ocsvm",
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


def main(argv: list[str] | None = None) -> int:
    from .common import guarded

    parser = get_parser()
    opts = parser.parse_args(argv)
    return guarded(parser, lambda: run_evaluation(opts), "interrupted")


def run_evaluation(opts: argparse.Namespace) -> int:
    """Evaluate, write the tables, curve and summary, print the headline numbers."""
    from ..analysis import detection as det
    from ..analysis.evaluate import evaluate, write_evaluation

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
    sig_sens = summary["significant_sensitivity_top3"]
    if sig_sens is not None:
        sig_fp = summary["significant_fp_per_control_held_out"]
        print(
            f"  calibrated (significant clusters only): patients within top 3 {sig_sens:.2f}, "
            "false-positive clusters per held-out control "
            f"{'n/a' if sig_fp is None else f'{sig_fp:.2f}'}"
        )
    print(f"  written to {out}")
    print(
        "  participant reports written before this evaluation do not show it; the next "
        "group-level run's report (group/report.html) does"
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
