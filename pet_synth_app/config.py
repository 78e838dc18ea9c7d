"""One typed settings object for a PetSynth run; every default has its home here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomli_w

from .lockinfo import lock_hash

TEMPLATE_SPACE = "MNI152NLin2009aSym"
OUTPUT_SPACES = (TEMPLATE_SPACE, "T1w")
REFERENCE_REGIONS = ("gm-mean", "cerebellum", "pons")
REGISTRATION_PRESETS = ("sloppy", "default", "precise")
DEVICES = ("auto", "cpu", "cuda")
SYNTHESIS_FWHM_MM = 1.5  # Gaussian after restacking slices/patches (seed 001); a model
# card's ``input.smoothing_fwhm_mm`` (tuned on validation SSIM by petsynth-train) wins
Z_THRESHOLD = -1.65
"""Voxel threshold: Z < -1.65 is one-sided p < 0.05 (Chen et al.)."""
MIN_CLUSTER_MM3 = 1500.0
"""Minimum cluster extent (mm³), Chen et al.'s K > 1500 (1 mm voxels) made grid-free."""
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
"""Voxels encoded and fitted at a time at the group level (memory: controls x block x 64
float32 codes, 0.9 GB for 20 controls, 3.8 GB for 75); a multiple of the solver's chunk."""
SIAMESE_EPOCHS = 10
"""Siamese autoencoder training epochs (20 000 patch pairs each) at the group level."""


def available_cpus() -> int:
    """CPUs this process may use (the job's allocation on a cluster, not the node's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Settings:
    """All options of one run (CLI flags map 1:1 to these fields)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path = field(default_factory=lambda: Path("work").absolute())
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    nprocs: int = field(default_factory=lambda: available_cpus())
    omp_nthreads: int = 0  # 0: min(nprocs, 8)
    mem_mb: int = 0  # 0: no limit
    use_plugin: Path | None = None
    skip_bids_validation: bool = False
    random_seed: int = 0
    output_spaces: list[str] = field(default_factory=lambda: list(OUTPUT_SPACES))
    reference_region: str = "gm-mean"
    device: str = "auto"
    stop_on_first_crash: bool = False
    sloppy: bool = False
    registration_preset: str = "default"
    brain_extraction: str = "deepbet"
    mni_resolution: int = 2
    model_weights: Path | None = None  # None: the shipped default model
    synthesis_fwhm: float | None = None  # None: the model card's tuned value, else 1.5 mm
    skip_synthesis: bool = False  # preprocessing only (petsynth-train reuses it)
    z_threshold: float = Z_THRESHOLD
    min_cluster_mm3: float = MIN_CLUSTER_MM3
    cluster_rank: str = RANK_BY
    histogram_matching: bool = False
    normative_model: Path | None = None  # None: OUT/group/normative when it exists
    ocsvm_threshold: float = Z_THRESHOLD  # on the self-standardized OC-SVM score
    augment_synthetic: bool = False  # group: add T1w-only controls' pseudo-normal PET
    ocsvm_nu: float = OCSVM_NU
    ocsvm_gamma: float | str = OCSVM_GAMMA
    siamese_epochs: int = SIAMESE_EPOCHS
    verbose: int = 0

    def __post_init__(self) -> None:
        if not self.omp_nthreads:
            self.omp_nthreads = min(self.nprocs, 8)
        if self.sloppy and self.registration_preset == "default":
            self.registration_preset = "sloppy"

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
        path.write_text(tomli_w.dumps(data))
        return path


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
    "OUTPUT_SPACES",
    "REFERENCE_REGIONS",
    "REGISTRATION_PRESETS",
    "SYNTHESIS_FWHM_MM",
    "MIN_CLUSTER_MM3",
    "OCSVM_BLOCK_VOXELS",
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
