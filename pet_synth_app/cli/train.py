"""``petsynth-train``: fit a synthesis model on a BIDS dataset's healthy controls.

Parses and dispatches to ``trainer.train_from_args`` (selection, preprocessing or
``--derivatives``, loading, splits, training).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ET", "1")

from .. import __version__  # noqa: E402
from .common import guarded, setup_logging  # noqa: E402
from .parser import DefaultsOnceFormatter, add_options  # noqa: E402

LOGGER = logging.getLogger("petsynth.train")


def get_parser() -> argparse.ArgumentParser:
    from ..synthesis.inputs import DEFAULT_REPRESENTATION, REPRESENTATIONS
    from ..synthesis.registry import DEFAULT_MODEL, MODELS
    from ..synthesis.training import DEFAULT_PET_SCALE

    parser = argparse.ArgumentParser(
        prog="petsynth-train",
        description="Train a T1w -> FDG PET synthesis model on the control participants of "
        "a BIDS dataset; writes MODEL_DIR/model.safetensors and its model card "
        "(model.json) for `petsynth --model-weights`.",
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="input BIDS dataset")
    parser.add_argument("model_dir", type=Path, help="output folder of the model")
    parser.add_argument("--version", action="version", version=f"petsynth {__version__}")
    parser.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL)

    g_data = parser.add_argument_group("Training data")
    g_data.add_argument(
        "--group",
        nargs="+",
        default=["control"],
        help="participants.tsv `group` values to train on",
    )
    add_options(
        g_data, "participant_label", help="train on these participants instead of by group"
    )
    g_data.add_argument(
        "--derivatives",
        type=Path,
        default=None,
        help="existing PetSynth outputs of BIDS_DIR to train on (default: preprocess into "
        "MODEL_DIR/preproc first)",
    )
    g_data.add_argument(
        "--unpaired",
        action="store_true",
        help="do not pair each T1w with its own PET (models that allow it: cyclegan)",
    )
    g_data.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of participants held out for validation (early stopping)",
    )
    g_data.add_argument(
        "--val-participants",
        nargs="+",
        default=[],
        help="explicit validation participants (overrides --val-fraction)",
    )
    g_data.add_argument(
        "--folds",
        type=int,
        default=0,
        help="k-fold cross-validation: train k models, one per held-out fold",
    )
    g_data.add_argument(
        "--fold",
        type=int,
        default=None,
        help="with --folds: train only this fold (1-based; for array jobs)",
    )
    g_data.add_argument(
        "--data-description", default=None, help="one line on the training data for the model card"
    )
    g_data.add_argument(
        "--card-note", default=None, help="intended-use note written into the model card"
    )

    g_hp = parser.add_argument_group(
        "Hyper-parameters (defaults: the model registry, after Zotova et al. 2021)"
    )
    g_hp.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="total epochs (default: n_epochs + n_epochs_decay of the model)",
    )
    for flag, typ in (
        ("--n-epochs", int),
        ("--n-epochs-decay", int),
        ("--batch-size", int),
        ("--lr", float),
        ("--ngf", int),
        ("--ndf", int),
        ("--n-blocks", int),
        ("--lambda-mse", float),
        ("--lambda-cycle", float),
        ("--lambda-l1", float),  # syndiff: paired L1 of the predicted clean image
        ("--lambda-lap", float),  # ddpm3d
        ("--sample-steps", int),  # ddpm3d: DDIM steps at inference
        ("--pretrain-steps", int),  # ddpm3d: steps on tissue-class PET-like T1w first
    ):
        g_hp.add_argument(
            flag,
            type=typ,
            default=None,
            help="None: the model's value in the registry (see docs/models.md)",
        )
    g_hp.add_argument(
        "--prediction-type",
        choices=["epsilon", "sample"],
        default=None,
        help="ddpm3d: the network predicts the noise (epsilon, MRI2PET) or the clean image",
    )
    g_hp.add_argument(
        "--prior",
        action="store_true",
        help="the generators also see the mean training images of both "
        "domains and predict a residual to the mean of their output domain "
        "(shipped with the weights; cyclegan-mse, cyclegan, and the diffusion models "
        "ddpm3d and syndiff, which sample the residual on 3D patches; single-channel "
        "input only; not in the papers: see docs/models.md)",
    )
    g_hp.add_argument(
        "--prior-anatomy",
        action="store_true",
        help="with --prior and --input-representation mni-pv (cyclegan-mse, cyclegan): "
        "each participant's prior is the mean PET adjusted to its own GM/CSF fractions by "
        "a partial-volume forward model (3 numbers fitted on the training controls; "
        "synthesis/pvmodel.py), and the prior alone is validated as epoch 0",
    )
    g_hp.add_argument(
        "--input-representation",
        choices=list(REPRESENTATIONS),
        default=DEFAULT_REPRESENTATION,
        help="what the model sees of the T1w (synthesis/inputs.py): 'mni' the T1w after "
        "SyN to MNI (as before issue 14), 'affine' the T1w after the affine stage only "
        "(keeps the individual anatomy; the target PET is taken to the same space), "
        "'mni-jacobian' the MNI T1w plus the log-Jacobian and Jacobian-modulated GM, "
        "'mni-pv' the MNI T1w plus the GM and CSF volume fractions blurred to PET "
        "resolution before the warp to MNI",
    )
    g_hp.add_argument(
        "--patience",
        type=int,
        default=0,
        help="early stopping after this many epochs without a better validation SSIM (0: off)",
    )
    g_hp.add_argument(
        "--max-patches",
        type=int,
        default=2000,
        help="3D-patch models: patches drawn per volume (Zotova et al. 2021: all, ~6000)",
    )
    g_hp.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="cap the optimisation steps per epoch (quick runs)",
    )
    g_hp.add_argument(
        "--pet-scale",
        type=float,
        default=None,
        help=f"SUVR mapped to 1.0 at the model output (default {DEFAULT_PET_SCALE})",
    )

    g_run = parser.add_argument_group("Run")
    add_options(g_run, "random_seed", "device", "nprocs", "omp_nthreads")
    add_options(g_run, "work_dir", default=None, help="Nipype work dir (default MODEL_DIR/work)")
    add_options(g_run, "mni_resolution")
    g_run.add_argument(
        "--no-resume", action="store_true", help="start over even if MODEL_DIR has a checkpoint"
    )
    add_options(g_run, "sloppy", "verbose")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 0 ok, 1 input/processing error, 2 usage error."""
    parser = get_parser()
    opts = parser.parse_args(argv)
    setup_logging(opts.verbose)
    LOGGER.setLevel(logging.INFO)
    message = "interrupted; rerun the same command to resume from the last epoch"
    from ..trainer import train_from_args

    return guarded(parser, lambda: train_from_args(opts), message)


if __name__ == "__main__":
    sys.exit(main())
