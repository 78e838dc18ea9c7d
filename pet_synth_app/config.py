"""One typed settings object for a PetSynth run; every default has its home here."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import tomli_w

from .errors import UsageError
from .lockinfo import lock_hash

TEMPLATE_SPACE = "MNI152NLin2009aSym"
OUTPUT_SPACES = (TEMPLATE_SPACE, "T1w")
REFERENCE_REGIONS = ("gm-mean", "cerebellum", "pons")
REGISTRATION_PRESETS = ("sloppy", "default", "precise")
DEVICES = ("auto", "cpu", "cuda")
SYNTHESIS_FWHM_MM = 1.5  # Gaussian after restacking slices/patches (Zotova et al. 2021); a model
# card's ``input.smoothing_fwhm_mm`` (tuned on validation SSIM by petsynth-train) wins
GM_THRESHOLD = 0.5
"""GM probability above which a voxel counts as grey matter (SUVR gm-mean reference,
Z standardization, figures)."""
Z_THRESHOLD = -1.65
"""Voxel threshold: Z < -1.65 is one-sided p < 0.05 (Chen et al.)."""
Z_FWHM_MM = 8.0
"""Gaussian FWHM (mm) of the analysis smoothing (``analysis.zscore.smooth_in_mask``):
every participant's and control's PET and pseudo-normal PET are smoothed inside their
own analysis mask before the residual, the Z maps and the normative model, as voxelwise
single-subject FDG comparisons with controls do (SPM: typically 8-12 mm). It pools the
noise of voxels that the ~6 mm PET resolution leaves partly independent, so an extended,
shallow uptake loss reaches the Z threshold as one cluster. Chosen by lesion detection on
held-out phantom controls (docs/benchmarks.md, issue 14, "Analysis smoothing"). 0 = none."""
MIN_CLUSTER_MM3 = 1500.0
"""Minimum cluster extent (mm³), Chen et al.'s K > 1500 (1 mm voxels) made grid-free."""
MIN_BRAIN_COVERAGE = 0.95
"""Fraction of the brain mask the PET field of view must cover; below it the run warns
(terminal QC summary, report, sidecars): no finding is possible outside the field of view
(``preproc.pet.pet_coverage``)."""
RANK_BY = "mass"
"""Cluster ranking: "mass" (sum of excess beyond threshold), "size" or "peak"."""
RANK_METHODS = ("mass", "size", "peak")
OCSVM_NU = 0.1
"""One-class SVM nu: upper bound on the fraction of controls treated as outliers and lower
bound on the fraction of support vectors. 0.1 lets ~10 % of a (possibly imperfect) control
population fall outside the normal support at each voxel without making the boundary hug
every control. With 10-75 samples in 64 dimensions nearly every control is a support
vector whatever nu is."""
OCSVM_GAMMA = "scale"
"""RBF width rule: "scale" = scikit-learn's rule applied to each voxel's own samples,
``1 / (d x variance)``, so kernel values between controls are ~exp(-2) whatever the
latent scale of that voxel, which keeps decision values comparable between voxels."""
OCSVM_GM_THRESHOLD = 0.3
"""Voxels with a template GM probability above this get an OC-SVM."""
OCSVM_BLOCK_VOXELS = 12 * 16384
"""Most voxels encoded and fitted at a time at the group level (a multiple of the
solver's chunk); fewer when their codes would exceed ``OCSVM_CODES_MB``."""
OCSVM_CODES_MB = 1024.0
"""Memory (MB) for the controls' float32 codes of one voxel block at the group level
(controls x block x 64 x 4 bytes: 196 608 voxels for up to 21 controls, 49 152 for 75)."""
SIAMESE_EPOCHS = 10
"""Siamese autoencoder training epochs (20 000 patch pairs each) at the group level."""


def available_cpus() -> int:
    """CPUs this process may use (the job's allocation on a cluster, not the node's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_omp_nthreads(nprocs: int, analysis_level: str = "participant") -> int:
    """Threads per process when ``--omp-nthreads`` is not given.

    Participant level: ``nprocs - 1`` (at least 1, at most 8), fMRIPrep's rule. Nipype's
    MultiProc runs a step only when its declared threads fit in ``--nprocs``, so with
    2 CPUs and 2 threads per step one step ran at a time and, most steps scaling poorly
    to 2 threads, half the CPU sat idle: 4 participants at 1 mm took 683 s with 2 threads
    and 474 s with 1 (docs/benchmarks.md, "Cohort scale"). Group level (one process):
    ``min(nprocs, 8)``."""
    n = int(nprocs) if analysis_level == "group" else int(nprocs) - 1
    return max(1, min(n, 8))


def default_work_dir(output_dir: Path) -> Path:
    """``<temp>/petsynth-work-<hash of the output folder>``: outside the current folder
    and the derivatives, the same for every run into one output folder (reruns resume
    while the temp folder lasts; pass ``-w`` on clusters and in containers)."""
    import hashlib
    import tempfile

    key = hashlib.sha1(str(Path(output_dir).absolute()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"petsynth-work-{key}"


@dataclass(frozen=True)
class Settings:
    """All options of one run (CLI flags map 1:1 to these fields; their defaults are the
    parser's). Frozen: what a run resolves from them (weights, model folders, device...)
    goes into its ``RunPlan`` (``plan.py``), never back into the settings."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path | None = None  # None: default_work_dir(output_dir), under the temp folder
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    nprocs: int = field(default_factory=lambda: available_cpus())
    omp_nthreads: int = 0  # 0: default_omp_nthreads(nprocs, analysis_level)
    mem_mb: int = 0  # 0: no limit
    use_plugin: Path | None = None
    skip_bids_validation: bool = False
    derivatives: list[Path] = field(default_factory=list)  # sMRIPrep/fMRIPrep to reuse
    random_seed: int = 0
    deterministic: bool = False  # one thread per process, deterministic torch (determinism.py)
    output_spaces: list[str] = field(default_factory=lambda: list(OUTPUT_SPACES))
    reference_region: str = "gm-mean"
    device: str = "auto"
    stop_on_first_crash: bool = False
    qc_fail_exit: bool = False  # exit code 3 (runner.QC_FAIL_EXIT) when a QC check fails
    sloppy: bool = False
    registration_preset: str = "default"
    brain_extraction: str = "deepbet"
    mni_resolution: int = 2
    model_weights: Path | None = None  # None: the shipped default model
    synthesis_fwhm: float | None = None  # None: the model card's tuned value, else 1.5 mm
    skip_synthesis: bool = False  # preprocessing only (petsynth-train reuses it)
    synthesis_samples: int = 1  # > 1: mean and SD of that many samples (diffusion models)
    z_threshold: float = Z_THRESHOLD
    min_cluster_mm3: float = MIN_CLUSTER_MM3
    cluster_rank: str = RANK_BY
    histogram_matching: bool = False
    z_fwhm: float = Z_FWHM_MM  # analysis smoothing (mm) before every Z map
    z_model_variance: bool = False  # Z: add the synthesis SD map's variance (issue 15)
    normative_model: Path | None = None  # None: OUT/group/normative when it exists
    ocsvm_threshold: float = Z_THRESHOLD  # on the self-standardized OC-SVM score
    augment_synthetic: bool = False  # group: add T1w-only controls' pseudo-normal PET
    reports_only: bool = False  # group: only rewrite group/report.html
    ocsvm_nu: float = OCSVM_NU
    ocsvm_gamma: float | str = OCSVM_GAMMA
    siamese_epochs: int = SIAMESE_EPOCHS
    verbose: int = 0

    def __post_init__(self) -> None:
        if self.deterministic:  # multithreaded sums differ run to run (determinism.py)
            object.__setattr__(self, "omp_nthreads", 1)
        if self.work_dir is None:
            object.__setattr__(self, "work_dir", default_work_dir(Path(self.output_dir)))
        if not self.omp_nthreads:
            object.__setattr__(
                self, "omp_nthreads", default_omp_nthreads(self.nprocs, self.analysis_level)
            )
        if self.sloppy and self.registration_preset == "default":
            object.__setattr__(self, "registration_preset", "sloppy")

    @classmethod
    def default(cls, name: str):
        """The default of field ``name`` (what the parser shows and uses)."""
        f = next(f for f in fields(cls) if f.name == name)
        if f.default_factory is not MISSING:
            return f.default_factory()
        return f.default

    @classmethod
    def from_options(cls, options: dict) -> Settings:
        """Check the parsed command-line options (``vars(opts)``: field names, plus
        ``bids_filter_file``) and build the Settings; UsageError when invalid. Options
        that are absent or None keep the field's default."""
        opts = {k: v for k, v in options.items() if v is not None}
        names = {f.name for f in fields(cls)}
        filter_file = opts.pop("bids_filter_file", None)
        unknown = set(opts) - names
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(sorted(unknown))}")
        if "model_weights" in opts:
            opts["model_weights"] = shipped_model(opts["model_weights"]) or opts["model_weights"]
        for key in ("bids_dir", "output_dir", "work_dir", "use_plugin", "model_weights"):
            if key in opts:
                opts[key] = Path(opts[key]).absolute()
        if "normative_model" in opts:
            opts["normative_model"] = Path(opts["normative_model"]).absolute()
        _check_paths(opts)
        if filter_file:
            opts["bids_filters"] = _read_filters(Path(filter_file))
        for key in ("participant_label", "session_label"):
            if key in opts:
                opts[key] = list(opts[key])
        if "derivatives" in opts:
            opts["derivatives"] = [Path(p).absolute() for p in opts["derivatives"]]
        if "output_spaces" in opts:
            opts["output_spaces"] = list(dict.fromkeys(opts["output_spaces"]))
        if "ocsvm_gamma" in opts:
            opts["ocsvm_gamma"] = _gamma(opts["ocsvm_gamma"])
        settings = cls(**opts)
        settings._check_values()
        return settings

    def _check_values(self) -> None:
        if self.nprocs < 1 or self.omp_nthreads < 0 or self.mem_mb < 0:
            raise UsageError("--nprocs must be >= 1, --omp-nthreads and --mem-mb >= 0")
        if self.synthesis_fwhm is not None and self.synthesis_fwhm < 0:
            raise UsageError("--synthesis-fwhm must be >= 0")
        if self.synthesis_samples < 1:
            raise UsageError("--synthesis-samples must be >= 1")
        if self.z_model_variance and self.synthesis_samples < 2:
            raise UsageError("--z-model-variance needs --synthesis-samples >= 2")
        if self.z_fwhm < 0:
            raise UsageError("--z-fwhm must be >= 0 (mm)")
        if self.min_cluster_mm3 < 0:
            raise UsageError("--min-cluster-size must be >= 0 (mm³)")
        if self.normative_model and not any(
            (self.normative_model / f).is_file() for f in ("normative.json", "anomaly.json")
        ):
            raise UsageError(
                "not a normative model folder (no normative.json or anomaly.json)",
                str(self.normative_model),
            )
        if not 0 < self.ocsvm_nu <= 1:
            raise UsageError("--ocsvm-nu must be in (0, 1]")
        if self.siamese_epochs < 1:
            raise UsageError("--siamese-epochs must be >= 1")
        if self.use_plugin and not Path(self.use_plugin).is_file():
            raise UsageError("plugin file does not exist", str(self.use_plugin))

    def to_dict(self) -> dict:
        """Plain-types view (paths as strings, None dropped) for TOML/JSON."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = _plain(value)
        return out

    def to_toml(self, path: Path) -> Path:
        """Write the settings to a TOML file and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"petsynth": self.to_dict()}
        if lock := lock_hash():
            data["install"] = {"requirements_lock_sha256": lock}
        from . import atomicio

        return atomicio.write_text(path, tomli_w.dumps(data))


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


SHIPPED_MODELS = ("cyclegan-mse-pv_phantom", "cyclegan-mse_phantom", "syndiff-prior_phantom")
"""Synthesis models that ship in the package (``data/<name>.safetensors`` + card; trained
on phantoms, docs/models.md): ``--model-weights`` takes these names as well as paths."""


def shipped_weights_file(name: str) -> Path:
    """Where the weights of the shipped model ``name`` (one of ``SHIPPED_MODELS``) live."""
    from importlib import resources

    return Path(str(resources.files("pet_synth_app") / "data" / f"{name}.safetensors"))


def shipped_model(value: str | Path) -> Path | None:
    """The weights file of the shipped model named ``value`` (None if ``value`` is not
    one of ``SHIPPED_MODELS``, or names an existing file or folder)."""
    name = str(value)
    if name not in SHIPPED_MODELS or Path(name).exists():
        return None
    return shipped_weights_file(name)


def _check_paths(opts: dict) -> None:
    bids_dir, output_dir = opts.get("bids_dir"), opts.get("output_dir")
    if bids_dir is None or output_dir is None:
        raise UsageError("BIDS_DIR and OUTPUT_DIR are required")
    work_dir = opts.get("work_dir") or default_work_dir(output_dir)
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


def _read_filters(path: Path) -> dict:
    """The ``--bids-filter-file``: a JSON object with keys ``t1w`` and/or ``pet``."""
    try:
        filters = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read the BIDS filter file ({exc})", str(path)) from None
    if not isinstance(filters, dict) or set(filters) - {"t1w", "pet"}:
        raise UsageError(
            "BIDS filter file must be a JSON object with keys 't1w' and/or 'pet'", str(path)
        )
    return filters


def _gamma(value: float | str) -> float | str:
    if value == "scale":
        return value
    try:
        gamma = float(value)
    except ValueError:
        raise UsageError("--ocsvm-gamma must be a positive number or 'scale'") from None
    if gamma <= 0:
        raise UsageError("--ocsvm-gamma must be a positive number or 'scale'")
    return gamma


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "DEVICES",
    "SHIPPED_MODELS",
    "shipped_model",
    "shipped_weights_file",
    "default_omp_nthreads",
    "GM_THRESHOLD",
    "MIN_BRAIN_COVERAGE",
    "OUTPUT_SPACES",
    "REFERENCE_REGIONS",
    "REGISTRATION_PRESETS",
    "SYNTHESIS_FWHM_MM",
    "MIN_CLUSTER_MM3",
    "OCSVM_BLOCK_VOXELS",
    "OCSVM_CODES_MB",
    "OCSVM_GAMMA",
    "OCSVM_GM_THRESHOLD",
    "OCSVM_NU",
    "SIAMESE_EPOCHS",
    "RANK_BY",
    "RANK_METHODS",
    "TEMPLATE_SPACE",
    "Z_THRESHOLD",
    "Settings",
]
