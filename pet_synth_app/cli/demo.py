"""``petsynth-demo OUT``: simulate a small phantom cohort and run the whole app on it.

Steps (each logged with the elapsed time): ``petsynth-simulate`` -> participant level for
the controls (preprocessing, pseudo-normal PET) -> group level (control normative model
and OC-SVM detector, with the T1w-only controls' pseudo-normal PET) -> participant level
for everyone (the patients are processed; the controls only get their control-referenced
Z maps and OC-SVM maps, the other steps are reused from the work directory) ->
ground-truth evaluation and group report. Prints where the reports are and the detection
figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .. import __version__
from .. import layout as L
from ..errors import PetSynthError, UsageError
from .parser import DefaultsOnceFormatter

PROG = "petsynth-demo"
LOGGER = logging.getLogger("petsynth")


def get_parser() -> argparse.ArgumentParser:
    """Argument parser of ``petsynth-demo``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="demo folder (bids/, derivatives/, work/ are created in it)",
    )
    parser.add_argument(
        "--n-controls", type=int, default=6, help="controls, including the T1w-only ones"
    )
    parser.add_argument("--n-t1w-only", type=int, default=1, help="controls without PET")
    parser.add_argument("--n-patients", type=int, default=2, help="patients with lesions")
    parser.add_argument(
        "--n-held-out",
        type=int,
        default=2,
        help="controls with PET left out of the group-level fit, so that their false-positive "
        "clusters are a held-out figure",
    )
    parser.add_argument("--seed", type=int, default=1, help="cohort and model random seed")
    parser.add_argument("--nprocs", type=int, default=2, help="parallel processes")
    parser.add_argument(
        "--registration",
        default="sloppy",
        choices=["sloppy", "default", "precise"],
        help="T1w-to-MNI preset (sloppy keeps the demo to minutes)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier demo in OUT (its bids/, derivatives/, work/)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


class _Steps:
    """Step-by-step progress lines with the elapsed time."""

    def __init__(self, total: int) -> None:
        self.t0, self.total, self.n = time.perf_counter(), total, 0

    def __call__(self, message: str) -> None:
        self.n += 1
        print(f"[{PROG} {self.elapsed()}] step {self.n}/{self.total}: {message}", flush=True)

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.t0)
        return f"{s // 60:02d}:{s % 60:02d}"


def _run(argv: list[str]) -> None:
    from .run import main as petsynth

    code = petsynth(argv)
    if code:
        raise PetSynthError(f"`petsynth {' '.join(argv)}` exited with {code}")


def run_demo(opts: argparse.Namespace) -> int:
    """Simulate, run both levels twice over, evaluate and print the results."""
    import shutil

    from ..simulate.cohort import CohortConfig, write_cohort

    if opts.n_controls - opts.n_t1w_only - opts.n_held_out < 2 or opts.n_patients < 1:
        raise UsageError(
            "the demo needs >= 2 controls with PET in the group-level fit (besides the "
            "--n-held-out ones) and >= 1 patient"
        )
    out = opts.out.absolute()
    bids, deriv, work = out / "bids", out / "derivatives", out / "work"
    if any(p.exists() for p in (bids, deriv)):
        if not opts.overwrite:
            raise UsageError("OUT already holds a demo; use --overwrite to replace it", str(out))
        for p in (bids, deriv, work):
            shutil.rmtree(p, ignore_errors=True)
    step = _Steps(6)
    step(
        f"simulating {opts.n_controls} controls ({opts.n_t1w_only} without PET) and "
        f"{opts.n_patients} patients into {bids}"
    )
    config = CohortConfig(
        n_controls=opts.n_controls,
        n_patients=opts.n_patients,
        seed=opts.seed,
        voxel_size=2.0,
        n_t1w_only=opts.n_t1w_only,
        n_4d=0,
        n_fov_cut=0,  # the demo's figures show full fields of view
        lesion_loss=(0.2, 0.35),
        lesion_volume_ml=(4.0, 15.0),
    )
    plans = write_cohort(bids, config, overwrite=True)
    common = [
        "-w",
        str(work),
        "--nprocs",
        str(opts.nprocs),
        "--registration",
        opts.registration,
        "--random-seed",
        str(opts.seed),
    ]
    controls = [p.label for p in plans if p.group == "control"]
    with_pet = [p.label for p in plans if p.group == "control" and p.with_pet]
    held_out = with_pet[len(with_pet) - opts.n_held_out :] if opts.n_held_out else []
    fitted = [c for c in controls if c not in held_out]
    step(f"participant level, {len(controls)} controls: preprocessing, pseudo-normal PET")
    _run([str(bids), str(deriv), "participant", "--participant-label", *controls, *common])
    step(
        f"group level: control normative model and OC-SVM detector (real + synthetic PET) "
        f"on {len(fitted)} controls; held out: {', '.join(held_out) or 'none'}"
    )
    _run(
        [str(bids), str(deriv), "group", "--participant-label", *fitted, "--augment-synthetic"]
        + common
    )
    step(
        "participant level, everyone: patients processed, control-referenced Z maps and "
        "OC-SVM anomaly maps"
    )
    _run([str(bids), str(deriv), "participant", *common])
    step("evaluation against the simulated lesions, group report")
    lines = _evaluate(deriv, bids / "derivatives" / "truth")
    _run([str(bids), str(deriv), "group", "--reports-only"])
    step("done")
    print(f"\nPetSynth demo finished in {step.elapsed()} (min:s).")
    print(f"  participant reports: {deriv}/sub-*.html (e.g. {deriv / 'sub-p01.html'})")
    print(f"  group report:        {deriv / 'group' / 'report.html'}")
    print(f"  methods boilerplate: {deriv / 'logs' / 'CITATION.md'}")
    for line in lines:
        print(line)
    return 0


def _evaluate(deriv: Path, truth: Path) -> list[str]:
    """Detection figures of both maps, written to group/evaluation (shown by the group
    report written next)."""
    from ..analysis.evaluate import evaluate, write_evaluation

    lines = [
        "  detection of the simulated lesions (sensitivity: patients with a true cluster "
        "among their top-k clusters):"
    ]
    for desc in L.STATS:
        try:
            results = evaluate(deriv, truth, desc)
        except PetSynthError as exc:
            lines.append(f"    {desc}: not evaluated ({exc})")
            continue
        summary = write_evaluation(deriv / "group" / "evaluation", desc, *results)
        lines.append(f"    {desc:15s} {detection_line(summary, results[2])}")
    return lines


def detection_line(summary: dict, controls: list[dict]) -> str:
    """Sensitivity and false positives of one map; false positives of the held-out
    controls (not in the group-level fit) and of the fitted ones (in-sample) apart."""
    mr = summary["mean_rank"]
    held = [c["n_clusters"] for c in controls if not c["in_normative_model"]]
    fitted = [c["n_clusters"] for c in controls if c["in_normative_model"]]

    def fp(counts: list[int], what: str) -> str:
        return f"{sum(counts) / len(counts):.1f} ({what}, n={len(counts)})" if counts else ""

    fps = "; ".join(x for x in (fp(held, "held-out"), fp(fitted, "in-sample")) if x)
    return (
        f"top-1 {summary['sensitivity_top1']:.2f}, top-3 {summary['sensitivity_top3']:.2f}, "
        f"mean rank {'n/a' if mr is None else f'{mr:.1f}'}, false-positive clusters per "
        f"control {fps or 'n/a (no control maps)'}"
    )


def main(argv: list[str] | None = None) -> int:
    """Console entry point; 0 on success, 1 on error (one line), 130 on interrupt."""
    from .common import guarded

    parser = get_parser()
    opts = parser.parse_args(argv)
    return guarded(parser, lambda: run_demo(opts), "interrupted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
