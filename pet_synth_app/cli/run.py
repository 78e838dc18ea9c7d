"""`petsynth BIDS_DIR OUTPUT_DIR {participant,group}`: the BIDS-App entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ET", "1")  # no telemetry: Nipype's etelemetry check stays off

from .. import __version__  # noqa: E402
from ..config import (  # noqa: E402
    DEVICES,
    MIN_CLUSTER_MM3,
    OCSVM_GAMMA,
    OCSVM_NU,
    OUTPUT_SPACES,
    RANK_BY,
    RANK_METHODS,
    REFERENCE_REGIONS,
    REGISTRATION_PRESETS,
    SIAMESE_EPOCHS,
    SYNTHESIS_FWHM_MM,
    Z_THRESHOLD,
    Settings,
    available_cpus,
)
from ..errors import PetSynthError, UsageError  # noqa: E402

LOGGER = logging.getLogger("petsynth")


def get_parser() -> argparse.ArgumentParser:
    """The argument parser (fMRIPrep conventions: groups, defaults shown)."""
    parser = argparse.ArgumentParser(
        prog="petsynth",
        description=(
            "PetSynth: synthesize a pseudo-normal FDG PET from a T1w MRI, compare it with "
            "the real PET and write hypometabolism maps as BIDS-Derivatives."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root folder of a BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="folder for the derivatives")
    parser.add_argument(
        "analysis_level", choices=["participant", "group"], help="processing stage"
    )
    parser.add_argument("--version", action="version", version=f"petsynth {__version__}")

    g_bids = parser.add_argument_group("Options for filtering BIDS queries")
    g_bids.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="participants to process (with or without 'sub-'); default: all",
    )
    g_bids.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        default=[],
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
        help="do not check file names against the BIDS specification",
    )

    g_perf = parser.add_argument_group("Options to handle performance")
    g_perf.add_argument(
        "--nprocs",
        "--n-cpus",
        "--n_cpus",
        dest="nprocs",
        type=int,
        default=available_cpus(),
        help="maximum number of processes (default: the CPUs this job may use)",
    )
    g_perf.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        dest="omp_nthreads",
        type=int,
        default=0,
        help="threads per process (0: min(nprocs, 8))",
    )
    g_perf.add_argument(
        "--mem-mb",
        "--mem_mb",
        dest="mem_mb",
        type=int,
        default=0,
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
    g_perf.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="torch device for the deep models (auto: CUDA when available)",
    )

    g_wf = parser.add_argument_group("Workflow configuration")
    g_wf.add_argument(
        "--output-spaces",
        "--output_spaces",
        dest="output_spaces",
        nargs="+",
        choices=OUTPUT_SPACES,
        default=list(OUTPUT_SPACES),
        help="spaces of the PET outputs",
    )
    g_wf.add_argument(
        "--reference-region",
        "--reference_region",
        dest="reference_region",
        choices=REFERENCE_REGIONS,
        default="gm-mean",
        help="SUVR reference region for PET intensity normalization",
    )
    g_wf.add_argument(
        "--registration",
        dest="registration_preset",
        choices=REGISTRATION_PRESETS,
        default="default",
        help="T1w-to-MNI registration preset (see docs/usage.md)",
    )
    g_wf.add_argument(
        "--brain-extraction",
        "--brain_extraction",
        dest="brain_extraction",
        choices=["deepbet", "ants"],
        default="deepbet",
        help="brain extraction method (deepbet falls back to ants on failure)",
    )
    g_wf.add_argument(
        "--mni-resolution",
        "--mni_resolution",
        dest="mni_resolution",
        type=int,
        choices=[1, 2],
        default=2,
        help="voxel size (mm) of the MNI-space outputs",
    )
    g_syn = parser.add_argument_group("Synthesis")
    g_syn.add_argument(
        "--model-weights",
        "--model_weights",
        dest="model_weights",
        type=Path,
        default=None,
        help="synthesis model (.safetensors with its .json card, from petsynth-train); "
        "default: the shipped cyclegan-mse trained on phantoms",
    )
    g_syn.add_argument(
        "--synthesis-fwhm",
        "--synthesis_fwhm",
        dest="synthesis_fwhm",
        type=float,
        default=None,
        help="Gaussian smoothing (mm FWHM) of the restacked pseudo-normal PET (default: the "
        f"value tuned on validation SSIM in the model card, else {SYNTHESIS_FWHM_MM})",
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
        default=Z_THRESHOLD,
        help="voxel threshold (one-sided, lower tail): Z below it is hypometabolic",
    )
    g_hypo.add_argument(
        "--min-cluster-size",
        "--min_cluster_size",
        dest="min_cluster_mm3",
        type=float,
        default=MIN_CLUSTER_MM3,
        metavar="MM3",
        help="minimum cluster volume in mm³",
    )
    g_hypo.add_argument(
        "--cluster-rank",
        "--cluster_rank",
        dest="cluster_rank",
        choices=RANK_METHODS,
        default=RANK_BY,
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
        "--normative-model",
        "--normative_model",
        dest="normative_model",
        type=Path,
        default=None,
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
        default=Z_THRESHOLD,
        help="voxel threshold on the self-standardized OC-SVM score (SD units; lower tail)",
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
        default=OCSVM_NU,
        help="group: one-class SVM nu (bound on the fraction of controls outside the support)",
    )
    g_ano.add_argument(
        "--ocsvm-gamma",
        "--ocsvm_gamma",
        dest="ocsvm_gamma",
        default=OCSVM_GAMMA,
        help="group: RBF gamma, a number or 'scale' (1 / (64 x variance), per voxel)",
    )
    g_ano.add_argument(
        "--siamese-epochs",
        "--siamese_epochs",
        dest="siamese_epochs",
        type=int,
        default=SIAMESE_EPOCHS,
        help="group: siamese autoencoder training epochs",
    )
    g_wf.add_argument(
        "--random-seed",
        "--random_seed",
        dest="random_seed",
        type=int,
        default=0,
        help="seed for every random step (registration sampling, models)",
    )
    g_wf.add_argument(
        "--sloppy",
        action="store_true",
        help="fast, low-accuracy settings for testing only",
    )

    g_other = parser.add_argument_group("Other options")
    g_other.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        dest="work_dir",
        type=Path,
        default=Path("work").absolute(),
        help="Nipype working directory (reused on reruns to resume)",
    )
    g_other.add_argument(
        "--stop-on-first-crash",
        "--stop_on_first_crash",
        dest="stop_on_first_crash",
        action="store_true",
        help="stop at the first failing step",
    )
    g_other.add_argument(
        "-v",
        "--verbose",
        dest="verbose",
        action="count",
        default=0,
        help="more log output (-vv for debug)",
    )
    return parser


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def settings_from_args(opts: argparse.Namespace) -> Settings:
    """Check the paths and options and build the Settings (UsageError when invalid)."""
    bids_dir = opts.bids_dir.absolute()
    output_dir = opts.output_dir.absolute()
    work_dir = opts.work_dir.absolute()
    if bids_dir.exists() and not bids_dir.is_dir():
        raise UsageError("BIDS_DIR is not a directory", str(bids_dir))
    if _inside(output_dir, bids_dir):
        raise UsageError(
            "OUTPUT_DIR must not be the BIDS directory or inside it "
            "(use e.g. BIDS_DIR/derivatives/petsynth only via a path outside the raw data)",
            str(output_dir),
        )
    if _inside(work_dir, bids_dir):
        raise UsageError("the work directory must not be inside the BIDS directory", str(work_dir))
    if opts.nprocs < 1 or opts.omp_nthreads < 0 or opts.mem_mb < 0:
        raise UsageError("--nprocs must be >= 1, --omp-nthreads and --mem-mb >= 0")
    filters = {}
    if opts.bids_filter_file:
        try:
            filters = json.loads(Path(opts.bids_filter_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"cannot read the BIDS filter file ({exc})", str(opts.bids_filter_file)
            ) from None
        bad = set(filters) - {"t1w", "pet"}
        if not isinstance(filters, dict) or bad:
            raise UsageError(
                "BIDS filter file must be a JSON object with keys 't1w' and/or 'pet'",
                str(opts.bids_filter_file),
            )
    if opts.synthesis_fwhm is not None and opts.synthesis_fwhm < 0:
        raise UsageError("--synthesis-fwhm must be >= 0")
    if opts.min_cluster_mm3 < 0:
        raise UsageError("--min-cluster-size must be >= 0 (mm³)")
    if opts.normative_model and not any(
        (opts.normative_model / f).is_file() for f in ("normative.json", "anomaly.json")
    ):
        raise UsageError(
            "not a normative model folder (no normative.json or anomaly.json)",
            str(opts.normative_model),
        )
    gamma = opts.ocsvm_gamma
    if gamma != "scale":
        try:
            gamma = float(gamma)
        except ValueError:
            raise UsageError("--ocsvm-gamma must be a positive number or 'scale'") from None
        if gamma <= 0:
            raise UsageError("--ocsvm-gamma must be a positive number or 'scale'")
    if not 0 < opts.ocsvm_nu <= 1:
        raise UsageError("--ocsvm-nu must be in (0, 1]")
    if opts.siamese_epochs < 1:
        raise UsageError("--siamese-epochs must be >= 1")
    if opts.use_plugin and not Path(opts.use_plugin).is_file():
        raise UsageError("plugin file does not exist", str(opts.use_plugin))
    return Settings(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=opts.analysis_level,
        work_dir=work_dir,
        participant_label=list(opts.participant_label),
        session_label=list(opts.session_label),
        bids_filters=filters,
        nprocs=opts.nprocs,
        omp_nthreads=opts.omp_nthreads,
        mem_mb=opts.mem_mb,
        use_plugin=opts.use_plugin.absolute() if opts.use_plugin else None,
        skip_bids_validation=opts.skip_bids_validation,
        random_seed=opts.random_seed,
        output_spaces=list(dict.fromkeys(opts.output_spaces)),
        reference_region=opts.reference_region,
        device=opts.device,
        stop_on_first_crash=opts.stop_on_first_crash,
        sloppy=opts.sloppy,
        registration_preset=opts.registration_preset,
        brain_extraction=opts.brain_extraction,
        mni_resolution=opts.mni_resolution,
        model_weights=opts.model_weights.absolute() if opts.model_weights else None,
        synthesis_fwhm=opts.synthesis_fwhm,
        skip_synthesis=opts.skip_synthesis,
        z_threshold=opts.z_threshold,
        min_cluster_mm3=opts.min_cluster_mm3,
        cluster_rank=opts.cluster_rank,
        histogram_matching=opts.histogram_matching,
        normative_model=opts.normative_model.absolute() if opts.normative_model else None,
        ocsvm_threshold=opts.ocsvm_threshold,
        augment_synthetic=opts.augment_synthetic,
        ocsvm_nu=opts.ocsvm_nu,
        ocsvm_gamma=gamma,
        siamese_epochs=opts.siamese_epochs,
        verbose=opts.verbose,
    )


def _setup_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        format="%(asctime)s [%(name)s] %(levelname)s: %(message)s",
        force=True,
    )
    LOGGER.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.getLogger("bidsschematools").setLevel(logging.WARNING)


def _error(exc: Exception) -> None:
    print(f"petsynth: error: {exc}", file=sys.stderr)


def guarded(parser: argparse.ArgumentParser, func, interrupted: str) -> int:
    """Run ``func()`` and turn user-facing errors into one line and an exit code
    (usage errors also print the usage; Ctrl-C prints ``interrupted``, exit 130)."""
    try:
        return func()
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _error(exc)
        return exc.exit_code
    except PetSynthError as exc:
        _error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _error(interrupted)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run the BIDS-App; returns the exit code (0 ok, 1 input/processing error, 2 usage)."""
    parser = get_parser()
    opts = parser.parse_args(argv)

    def run() -> int:
        settings = settings_from_args(opts)
        _setup_logging(settings.verbose)
        if settings.analysis_level == "participant":
            return run_participant(settings)
        return run_group(settings)

    return guarded(parser, run, "interrupted; rerun with the same --work-dir to resume")


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is usable, else `cpu`; a clear error for unusable cuda."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise PetSynthError("--device cuda requested but no CUDA device is available")
    return device


def new_run_id() -> str:
    """``<date>-<time>-<random>``: unique even for array jobs starting in the same second."""
    import uuid

    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_participant(settings: Settings) -> int:
    """Validate inputs, build and run the participant workflow; 1 if any unit failed."""
    from .. import bids as pbids

    layout = pbids.load_layout(settings.bids_dir, validate=not settings.skip_bids_validation)
    units, errors = pbids.collect_inputs(
        layout, settings.participant_label, settings.session_label, settings.bids_filters
    )
    good = []
    for unit in units:
        problems = pbids.validate_inputs(unit)
        if problems:
            errors.extend(PetSynthError(f"{unit.name} skipped: {p}") for p in problems)
        else:
            good.append(unit)
    for err in errors:
        _error(err)
    if not good:
        raise PetSynthError("no participant has usable inputs; nothing was written")

    device = resolve_device(settings.device)
    if not settings.skip_synthesis:  # refuse bad models before anything is written
        _preflight_models(settings)
    run_id = new_run_id()
    log_dir = settings.output_dir / "logs"
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings_file = settings.to_toml(log_dir / f"config-{run_id}.toml")
    pbids.write_derivative_description(
        settings.bids_dir, settings.output_dir, container=_container_info()
    )
    LOGGER.info(
        "PetSynth %s: %d unit(s) to process on device %s (nprocs=%d, omp_nthreads=%d)",
        __version__,
        len(good),
        device,
        settings.nprocs,
        settings.omp_nthreads,
    )
    for unit in good:  # the report is written last: its absence marks an unfinished unit
        report = settings.output_dir / f"sub-{unit.subject}.html"
        report.unlink(missing_ok=True)

    # ITK reads its thread count once per process: set it before any worker starts
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(settings.omp_nthreads)
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.omp_nthreads))
    from ..workflows.base import init_petsynth_wf, run_workflow

    wf = init_petsynth_wf(settings, good, device=device, run_id=run_id)
    failed = run_workflow(wf, settings, run_id)
    for name, message in failed:
        _error(PetSynthError(f"{name} failed: {message}"))
    _write_citation(wf, log_dir)
    from ..reports.subject import write_subject_report

    failed_names = {name for name, _ in failed}
    done_subjects = {u.subject for u in good} if "workflow" not in failed_names else set()
    for unit in good:  # a subject is done when all its sessions are
        if unit.name in failed_names:
            done_subjects.discard(unit.subject)
    for subject in sorted(done_subjects):
        write_subject_report(settings.output_dir, subject, run_id, settings_file)
    if (settings.output_dir / "group" / "report.html").is_file():  # keep it current
        _write_group_report(settings)
    n_ok = len(good) - len(failed)
    LOGGER.info("finished: %d of %d unit(s) succeeded", n_ok, len(units) + len(errors))
    return 1 if (failed or errors) else 0


def _preflight_models(settings: Settings) -> None:
    """Check the synthesis weights and the normative model against this run's settings and
    record their resolved paths in ``settings`` (saved with the run)."""
    from ..analysis import normative
    from ..preproc.templates import get_template
    from ..synthesis.weights import load_generator
    from ..workflows.hypometabolism import normative_model_dir
    from ..workflows.synthesis import model_weights

    weights = model_weights(settings)
    _, card = load_generator(weights)
    trained = card["input"].get("pet_reference_region", "gm-mean")
    if trained != settings.reference_region:
        raise PetSynthError(
            f"the synthesis model was trained on SUVR with reference region {trained}; "
            f"--reference-region {settings.reference_region} would compare the real and "
            "pseudo-normal PET on different scales",
            str(weights),
        )
    settings.model_weights = weights
    folder = normative_model_dir(settings)
    if folder is not None:
        ref = get_template("T1w", settings.mni_resolution)
        normative.preflight(
            folder, card["sha256"], settings.histogram_matching, ref.affine, ref.shape[:3]
        )
        settings.normative_model = folder


def _write_citation(wf, log_dir: Path) -> None:
    """Methods boilerplate collected from the workflows' descriptions."""
    from ..boilerplate import write_citation

    try:
        write_citation(log_dir, "participant", wf.visit_desc())
    except Exception as exc:  # the boilerplate must never fail a run
        LOGGER.warning("could not write the methods boilerplate: %s", exc)


def run_group(settings: Settings) -> int:
    """Group level: control normative models and synthesis quality (needs finished
    participant outputs)."""
    out = settings.output_dir
    if not (out / "dataset_description.json").is_file():
        raise PetSynthError(
            "no participant-level outputs found; run the participant level first", str(out)
        )
    reports = sorted(out.glob("sub-*.html"))
    if not reports:
        raise PetSynthError("no finished participant (no sub-*.html report)", str(out))
    from ..group import run_group_level

    settings.to_toml(out / "logs" / f"config-group-{new_run_id()}.toml")
    code = run_group_level(settings)
    _write_group_report(settings)
    return code


def _write_group_report(settings: Settings) -> None:
    """``<out>/group/report.html``, with the detection curve when the BIDS dataset carries
    ground truth (``derivatives/truth/lesions.tsv``, as simulated cohorts do)."""
    from ..reports.group_report import write_group_report

    truth = settings.bids_dir / "derivatives" / "truth"
    report = write_group_report(
        settings.output_dir, truth if (truth / "lesions.tsv").is_file() else None
    )
    LOGGER.info("group report: %s", report)


def _container_info() -> dict | None:
    kind = os.environ.get("PETSYNTH_CONTAINER")
    if not kind:
        return None
    return {"Type": kind, "Tag": os.environ.get("PETSYNTH_CONTAINER_TAG", __version__)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
