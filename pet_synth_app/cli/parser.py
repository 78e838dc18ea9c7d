"""The ``petsynth`` argument parser, and the options the other commands share with it.

Defaults come from ``Settings`` (``config.py``), their one home: the parser shows them
and ``Settings.from_options(vars(opts))`` builds the run's settings from the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..config import (
    DEVICES,
    OUTPUT_SPACES,
    RANK_METHODS,
    REFERENCE_REGIONS,
    REGISTRATION_PRESETS,
    SYNTHESIS_FWHM_MM,
    Settings,
)

_default = Settings.default

SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "participant_label": (
        ("--participant-label", "--participant_label"),
        dict(
            nargs="+",
            metavar="LABEL",
            help="participants to process (with or without 'sub-'); default: all",
        ),
    ),
    "nprocs": (
        ("--nprocs", "--n-cpus", "--n_cpus"),
        dict(type=int, help="maximum number of processes (default: the CPUs this job may use)"),
    ),
    "omp_nthreads": (
        ("--omp-nthreads", "--omp_nthreads"),
        dict(
            type=int,
            help="threads per process (0: participant level nprocs - 1, group level "
            "nprocs; at least 1, at most 8)",
        ),
    ),
    "device": (
        ("--device",),
        dict(
            choices=DEVICES,
            help="torch device for the deep models (auto: CUDA when available)",
        ),
    ),
    "mni_resolution": (
        ("--mni-resolution", "--mni_resolution"),
        dict(type=int, choices=[1, 2], help="voxel size (mm) of the MNI-space outputs"),
    ),
    "random_seed": (
        ("--random-seed", "--random_seed"),
        dict(type=int, help="seed for every random step (registration sampling, models)"),
    ),
    "sloppy": (
        ("--sloppy",),
        dict(action="store_true", help="fast, low-accuracy settings for testing only"),
    ),
    "work_dir": (
        ("-w", "--work-dir", "--work_dir"),
        dict(
            type=Path,
            help="Nipype working directory, reused on reruns to resume (default: "
            "<temp folder>/petsynth-work-<hash of OUTPUT_DIR>, e.g. /tmp/petsynth-work-1a2b..; "
            "on clusters and in containers pass one on scratch)",
        ),
    ),
    "verbose": (
        ("-v", "--verbose"),
        dict(action="count", help="more log output (-vv for debug)"),
    ),
}
"""Options of ``petsynth`` that ``petsynth-train`` also takes (flags, argparse keywords;
the default is the Settings field's)."""


def add_options(group, *names: str, **overrides) -> None:
    """Add the ``SHARED_OPTIONS`` ``names`` to ``group`` (``overrides``: keywords that
    replace the shared ones, e.g. another ``help`` or ``default``)."""
    for name in names:
        flags, kwargs = SHARED_OPTIONS[name]
        kwargs = {"dest": name, **kwargs, **overrides}
        if kwargs.get("action") != "store_true":
            kwargs.setdefault("default", _default(name))
        group.add_argument(*flags, **kwargs)


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default once: not when the help already says it, and not for
    flags (off by default) or empty defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is None
            or action.default is False
            or action.default == []
            or action.default == argparse.SUPPRESS
            or isinstance(action, argparse._CountAction)
        ):
            return text
        return super()._get_help_string(action)


def get_parser() -> argparse.ArgumentParser:
    """The argument parser (fMRIPrep conventions: groups, defaults shown)."""
    parser = argparse.ArgumentParser(
        prog="petsynth",
        description=(
            "PetSynth: synthesize a pseudo-normal FDG PET from a T1w MRI, compare it with "
            "the real PET and write hypometabolism maps as BIDS-Derivatives."
        ),
        formatter_class=DefaultsOnceFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of a BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="folder for the derivatives")
    parser.add_argument(
        "analysis_level", choices=["participant", "group"], help="processing stage"
    )
    parser.add_argument("--version", action="version", version=f"petsynth {__version__}")

    g_bids = parser.add_argument_group("Options for filtering BIDS queries")
    add_options(g_bids, "participant_label")
    g_bids.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        default=_default("session_label"),
        metavar="LABEL",
        help="sessions to process (with or without 'ses-'); default: all",
    )
    g_bids.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        dest="bids_filter_file",
        type=Path,
        metavar="FILE",
        help="JSON file with pybids queries for the 't1w' and 'pet' inputs",
    )
    g_bids.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not validate the input dataset (the official bids-validator when "
        "installed, else pybids' file-name check)",
    )
    g_bids.add_argument(
        "--derivatives",
        dest="derivatives",
        nargs="+",
        type=Path,
        default=_default("derivatives"),
        metavar="PATH",
        help="sMRIPrep/fMRIPrep derivatives folders: their preprocessed T1w, brain mask, "
        "GM/WM/CSF probseg and MNI152NLin2009aSym transforms are reused instead of "
        "recomputed (docs/usage.md, 'Chaining with fMRIPrep')",
    )

    g_perf = parser.add_argument_group("Options to handle performance")
    add_options(g_perf, "nprocs")
    add_options(g_perf, "omp_nthreads")
    g_perf.add_argument(
        "--mem-mb",
        "--mem_mb",
        dest="mem_mb",
        type=int,
        default=_default("mem_mb"),
        help="memory limit in MB for the scheduler (0: no limit)",
    )
    g_perf.add_argument(
        "--use-plugin",
        "--use_plugin",
        dest="use_plugin",
        type=Path,
        metavar="FILE",
        help="Nipype plugin YAML (e.g. {plugin: SLURM, plugin_args: {...}})",
    )
    add_options(g_perf, "device")

    g_wf = parser.add_argument_group("Workflow configuration")
    g_wf.add_argument(
        "--output-spaces",
        "--output_spaces",
        dest="output_spaces",
        nargs="+",
        choices=OUTPUT_SPACES,
        default=_default("output_spaces"),
        help="spaces of the PET outputs",
    )
    g_wf.add_argument(
        "--reference-region",
        "--reference_region",
        dest="reference_region",
        choices=REFERENCE_REGIONS,
        default=_default("reference_region"),
        help="SUVR reference region for PET intensity normalization",
    )
    g_wf.add_argument(
        "--registration",
        dest="registration_preset",
        choices=REGISTRATION_PRESETS,
        default=_default("registration_preset"),
        help="T1w-to-MNI registration preset (see docs/usage.md)",
    )
    g_wf.add_argument(
        "--brain-extraction",
        "--brain_extraction",
        dest="brain_extraction",
        choices=["deepbet", "ants"],
        default=_default("brain_extraction"),
        help="brain extraction method (deepbet falls back to ants on failure)",
    )
    add_options(g_wf, "mni_resolution")
    g_syn = parser.add_argument_group("Synthesis")
    g_syn.add_argument(
        "--model-weights",
        "--model_weights",
        dest="model_weights",
        type=Path,
        default=_default("model_weights"),
        help="synthesis model (.safetensors with its .json card, from petsynth-train) or "
        "the name of a shipped one (cyclegan-mse-pv_phantom, cyclegan-mse_phantom, "
        "syndiff-prior_phantom; docs/models.md); default: cyclegan-mse-pv_phantom",
    )
    g_syn.add_argument(
        "--synthesis-fwhm",
        "--synthesis_fwhm",
        dest="synthesis_fwhm",
        type=float,
        default=_default("synthesis_fwhm"),
        help="Gaussian smoothing (mm FWHM) of the restacked pseudo-normal PET (default: the "
        f"value tuned on validation SSIM in the model card, else {SYNTHESIS_FWHM_MM})",
    )
    g_syn.add_argument(
        "--synthesis-samples",
        "--synthesis_samples",
        dest="synthesis_samples",
        type=int,
        default=_default("synthesis_samples"),
        metavar="N",
        help="draw N pseudo-normal PET samples (seeds --random-seed + 0..N-1, recorded in "
        "the sidecar) and write their mean and per-voxel SD map; N > 1 needs a diffusion "
        "model (ddpm3d, syndiff)",
    )
    g_syn.add_argument(
        "--skip-synthesis",
        "--skip_synthesis",
        dest="skip_synthesis",
        action="store_true",
        help="preprocessing only (no pseudo-normal PET)",
    )
    g_hypo = parser.add_argument_group("Hypometabolism maps")
    g_hypo.add_argument(
        "--z-threshold",
        "--z_threshold",
        dest="z_threshold",
        type=float,
        default=_default("z_threshold"),
        help="voxel threshold (one-sided, lower tail): Z below it is hypometabolic",
    )
    g_hypo.add_argument(
        "--z-fwhm",
        "--z_fwhm",
        dest="z_fwhm",
        type=float,
        default=_default("z_fwhm"),
        metavar="MM",
        help="Gaussian FWHM (mm) of the analysis smoothing: the real and pseudo-normal PET "
        "(participants and controls) are smoothed inside the brain before every Z map; "
        "the group and participant levels must use the same value (0: none)",
    )
    g_hypo.add_argument(
        "--min-cluster-size",
        "--min_cluster_size",
        dest="min_cluster_mm3",
        type=float,
        default=_default("min_cluster_mm3"),
        metavar="MM3",
        help="minimum cluster volume in mm³",
    )
    g_hypo.add_argument(
        "--cluster-rank",
        "--cluster_rank",
        dest="cluster_rank",
        choices=RANK_METHODS,
        default=_default("cluster_rank"),
        help="cluster ranking: mass (sum of Z beyond threshold), size, peak",
    )
    g_hypo.add_argument(
        "--histogram-matching",
        "--histogram_matching",
        dest="histogram_matching",
        action="store_true",
        help="match the pseudo-normal PET's histogram to the real PET inside the brain",
    )
    g_hypo.add_argument(
        "--z-model-variance",
        "--z_model_variance",
        dest="z_model_variance",
        action="store_true",
        help="add the synthesis model's variance (the SD map of --synthesis-samples >= 2) "
        "to the Z denominator: z = (d - mean) / sqrt(sd_res^2 + sd_model^2)",
    )
    g_hypo.add_argument(
        "--normative-model",
        "--normative_model",
        dest="normative_model",
        type=Path,
        default=_default("normative_model"),
        help="control normative model folder (from the group level) for control-referenced "
        "Z maps and OC-SVM anomaly maps; default: OUT/group/normative when it exists, else "
        "self-referenced Z and no anomaly map",
    )
    g_ano = parser.add_argument_group("OC-SVM anomaly maps (fitted at the group level)")
    g_ano.add_argument(
        "--ocsvm-threshold",
        "--ocsvm_threshold",
        dest="ocsvm_threshold",
        type=float,
        default=_default("ocsvm_threshold"),
        help="voxel threshold on the self-standardized OC-SVM score (SD units; lower tail)",
    )
    g_ano.add_argument(
        "--reports-only",
        "--reports_only",
        dest="reports_only",
        action="store_true",
        help="group: only rewrite group/report.html from the outputs on disk, no model fit "
        "(participant runs do not refresh it; run this after the last participant pass)",
    )
    g_ano.add_argument(
        "--augment-synthetic",
        "--augment_synthetic",
        dest="augment_synthetic",
        action="store_true",
        help="group: also train on the pseudo-normal PET of controls without a real PET "
        "(T1w-only controls; the hybrid database of Zotova et al.)",
    )
    g_ano.add_argument(
        "--ocsvm-nu",
        "--ocsvm_nu",
        dest="ocsvm_nu",
        type=float,
        default=_default("ocsvm_nu"),
        help="group: one-class SVM nu (bound on the fraction of controls outside the support)",
    )
    g_ano.add_argument(
        "--ocsvm-gamma",
        "--ocsvm_gamma",
        dest="ocsvm_gamma",
        default=_default("ocsvm_gamma"),
        help="group: RBF gamma, a number or 'scale' (1 / (64 x variance), per voxel)",
    )
    g_ano.add_argument(
        "--siamese-epochs",
        "--siamese_epochs",
        dest="siamese_epochs",
        type=int,
        default=_default("siamese_epochs"),
        help="group: siamese autoencoder training epochs",
    )
    add_options(g_wf, "random_seed")
    g_wf.add_argument(
        "--deterministic",
        dest="deterministic",
        action="store_true",
        help="bit-identical reruns: one thread per process (overrides --omp-nthreads) "
        "and deterministic torch algorithms; slower",
    )
    add_options(g_wf, "sloppy")

    g_other = parser.add_argument_group("Other options")
    add_options(g_other, "work_dir")
    g_other.add_argument(
        "--stop-on-first-crash",
        "--stop_on_first_crash",
        dest="stop_on_first_crash",
        action="store_true",
        help="stop at the first failing step",
    )
    g_other.add_argument(
        "--qc-fail-exit",
        "--qc_fail_exit",
        dest="qc_fail_exit",
        action="store_true",
        help="exit with code 3 when every unit finished but a QC check failed (the "
        "failed checks are listed at the end of the log either way)",
    )
    add_options(g_other, "verbose")
    return parser


__all__ = ["SHARED_OPTIONS", "DefaultsOnceFormatter", "add_options", "get_parser"]
