"""The run plan: what a participant-level run resolves from its settings, once.

``resolve_plan(settings)`` finds and checks the synthesis weights (card and sha256), the
normative model and OC-SVM detector folders, the torch device, the synthesis smoothing
and the thread count, and returns them as a frozen ``RunPlan`` that
``workflows.base.init_petsynth_wf`` hands to the workflow factories. The settings are
never changed (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import TEMPLATE_SPACE, Settings
from .errors import PetSynthError


@dataclass(frozen=True)
class RunPlan:
    """Resolved inputs of one run (read-only)."""

    weights: Path | None
    """Synthesis weights (``.safetensors``); None with ``--skip-synthesis``."""
    card: Any
    """The weights' model card (read-only mapping; empty without synthesis)."""
    weights_sha256: str
    normative_dir: Path | None
    """Folder of the control normative model (``normative.json``), or None."""
    detector_dir: Path | None
    """Folder of the fitted OC-SVM detector, or None."""
    device: str
    """``cpu`` or ``cuda`` (``auto`` resolved)."""
    synthesis_fwhm: float | None
    """Smoothing of the pseudo-normal PET (mm FWHM); None without synthesis."""
    omp_nthreads: int
    """Threads per process (``threads.thread_limits``)."""
    template: str = TEMPLATE_SPACE
    mni_resolution: int = 2
    reused: Any = field(default_factory=lambda: MappingProxyType({}))
    """Reused anatomical derivatives by unit name (``reuse.ReusedAnat``; ``--derivatives``)."""
    synthesis_samples: int = 1
    """Pseudo-normal PET samples drawn (> 1: mean and SD map; diffusion models only)."""
    synthesis_seed: int = 0
    """Seed of the first sample (sample i uses ``synthesis_seed + i``)."""

    @property
    def synthesis(self) -> bool:
        return self.weights is not None


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is usable, else `cpu`; a clear error for unusable cuda."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise PetSynthError("--device cuda requested but no CUDA device is available")
    return device


def normative_folder(settings: Settings) -> Path:
    """``--normative-model``, else ``<out>/group/normative`` (written by the group level)."""
    if settings.normative_model:
        return Path(settings.normative_model)
    return Path(settings.output_dir) / "group" / "normative"


def resolve_plan(settings: Settings, check: bool = True, device: str | None = None) -> RunPlan:
    """Resolve the run's inputs. With ``check`` (a real run) the weights are loaded once
    to verify them against their card and the run's reference region, and the normative
    model is checked against the weights and the template grid; without it (building a
    graph in tests) only the card is read. ``device``: already resolved (else resolved
    from ``settings.device``)."""
    from .analysis.anomaly import has_model
    from .synthesis.weights import default_weights, load_generator, read_card, smoothing_fwhm

    device = device or resolve_device(settings.device)
    weights = card = None
    if not settings.skip_synthesis:
        weights = Path(settings.model_weights) if settings.model_weights else default_weights()
        card = load_generator(weights)[1] if check else read_card(weights)
        trained = card["input"].get("pet_reference_region", "gm-mean")
        if check and trained != settings.reference_region:
            raise PetSynthError(
                f"the synthesis model was trained on SUVR with reference region {trained}; "
                f"--reference-region {settings.reference_region} would compare the real and "
                "pseudo-normal PET on different scales",
                str(weights),
            )
    if card is not None and settings.synthesis_samples > 1:
        from .synthesis.registry import is_stochastic

        if not is_stochastic(card["model"]):
            raise PetSynthError(
                f"--synthesis-samples > 1 needs a diffusion model; {card['model']} is "
                "deterministic (every sample would be the same)",
                str(weights),
            )
    folder = normative_folder(settings)
    normative_dir = folder if (folder / "normative.json").is_file() else None
    if check and card is not None and normative_dir is not None:
        from .analysis import normative
        from .preproc.templates import get_template

        ref = get_template("T1w", settings.mni_resolution)
        normative.preflight(
            normative_dir,
            card["sha256"],
            settings.histogram_matching,
            ref.affine,
            ref.shape[:3],
            settings.z_fwhm,
        )
    return RunPlan(
        weights=weights,
        card=MappingProxyType(dict(card or {})),
        weights_sha256=card["sha256"] if card else "",
        normative_dir=normative_dir if card is not None else None,
        detector_dir=folder if has_model(folder) else None,
        device=device,
        synthesis_fwhm=smoothing_fwhm(card, settings.synthesis_fwhm) if card else None,
        omp_nthreads=settings.omp_nthreads,
        mni_resolution=settings.mni_resolution,
        synthesis_samples=settings.synthesis_samples,
        synthesis_seed=settings.random_seed,
    )


__all__ = ["RunPlan", "normative_folder", "resolve_device", "resolve_plan"]
