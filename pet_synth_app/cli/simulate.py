"""`petsynth-simulate OUT`: write a digital phantom cohort (BIDS) with ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import __version__
from .parser import DefaultsOnceFormatter

PROG = "petsynth-simulate"


def get_parser() -> argparse.ArgumentParser:
    """Argument parser of ``petsynth-simulate``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Simulate a BIDS dataset of T1w heads and FDG PET (controls and patients with "
            "cortical hypometabolic lesions) from the MNI152NLin2009aSym template, with "
            "ground truth under OUT/derivatives/truth. Deterministic for a given seed."
        ),
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="output BIDS folder")
    parser.add_argument("--n-controls", type=int, default=4, metavar="N", help="controls")
    parser.add_argument("--n-patients", type=int, default=4, metavar="M", help="patients")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed")
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=1.0,
        metavar="MM",
        help="T1w voxel size in mm (>= 1.5 mm also uses the fast 2 mm template)",
    )
    parser.add_argument(
        "--n-t1w-only",
        type=int,
        default=None,
        metavar="K",
        help="controls without PET (default: one in four controls, rounded down)",
    )
    parser.add_argument(
        "--n-4d",
        type=int,
        default=None,
        metavar="K",
        help="subjects with 4D (3-4 frame) PET (default: one in three PET subjects)",
    )
    parser.add_argument(
        "--lesion-loss",
        type=float,
        nargs=2,
        default=(0.10, 0.30),
        metavar=("LOW", "HIGH"),
        help="range of the fractional GM uptake loss in lesions",
    )
    parser.add_argument(
        "--lesion-volume-ml",
        type=float,
        nargs=2,
        default=(1.0, 20.0),
        metavar=("LOW", "HIGH"),
        help="range of lesion GM-weighted volume (ml)",
    )
    parser.add_argument(
        "--control-ages",
        type=int,
        nargs=2,
        default=(20, 85),
        metavar=("LOW", "HIGH"),
        help="age range of the controls (years, uniform); age drives cortical thinning, "
        "ventricle size and the frontal/cingulate FDG decline",
    )
    parser.add_argument(
        "--patient-ages",
        type=int,
        nargs=2,
        default=(50, 85),
        metavar=("LOW", "HIGH"),
        help="age range of the patients (years, uniform)",
    )
    parser.add_argument(
        "--n-fov-cut",
        type=int,
        default=None,
        metavar="K",
        help="patients whose PET field of view cuts the brain's inferior end (the scan "
        "ends in the cerebellum; default: one in four patients, rounded down)",
    )
    parser.add_argument(
        "--fov-cut-mm",
        type=float,
        nargs=2,
        default=(10.0, 20.0),
        metavar=("LOW", "HIGH"),
        help="range of the brain's inferior extent (mm) outside those PET fields of view "
        "(e.g. 60 60 keeps only the top half of the brain)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous petsynth-simulate dataset in OUT",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 1 error)."""
    args = get_parser().parse_args(argv)
    try:
        from ..simulate.cohort import CohortConfig, write_cohort

        config = CohortConfig(
            n_controls=args.n_controls,
            n_patients=args.n_patients,
            seed=args.seed,
            voxel_size=args.voxel_size,
            n_t1w_only=args.n_t1w_only,
            n_4d=args.n_4d,
            lesion_loss=(args.lesion_loss[0], args.lesion_loss[1]),
            lesion_volume_ml=(args.lesion_volume_ml[0], args.lesion_volume_ml[1]),
            control_ages=(args.control_ages[0], args.control_ages[1]),
            patient_ages=(args.patient_ages[0], args.patient_ages[1]),
            n_fov_cut=args.n_fov_cut,
            fov_cut_mm=(args.fov_cut_mm[0], args.fov_cut_mm[1]),
        )
        start = time.perf_counter()

        def progress(message: str) -> None:
            if not args.quiet:
                print(f"{PROG}: {message}", flush=True)

        plans = write_cohort(args.out, config, overwrite=args.overwrite, progress=progress)
        progress(
            f"wrote {len(plans)} subjects to {args.out} in {time.perf_counter() - start:.1f} s"
        )
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, ImportError, MemoryError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
