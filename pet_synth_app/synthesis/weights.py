"""Model weights (.safetensors only) and their JSON model cards.

A model is two files: ``<stem>.safetensors`` (the T1w -> PET generator's tensors) and
``<stem>.json`` (the card: architecture, input contract, training data, validation
metrics, sha256 of the weights, library versions). Loading never unpickles anything and
refuses weights whose sha256 or tensor names do not match their card.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from ..config import SYNTHESIS_FWHM_MM, TEMPLATE_SPACE, shipped_weights_file
from ..errors import PetSynthError
from ..weightfiles import card_path, library_versions, load_tensors, save_weights, sha256_file
from .inputs import card_representation, card_space
from .registry import build_model, get_spec

CARD_FORMAT = "petsynth-model-card/1"
DEFAULT_WEIGHTS = "cyclegan-mse-pv_phantom.safetensors"
_REQUIRED = ("format", "model", "config", "input", "sha256")


PRIOR_BUFFERS = frozenset({"prior", "input_prior"})
"""Generator buffers holding mean training images (residual models), stored as float16."""


def default_weights() -> Path:
    """The shipped default model (trained on phantoms; see its card)."""
    return shipped_weights_file(Path(DEFAULT_WEIGHTS).stem)


def save_generator(generator: nn.Module, path: str | Path, card: dict) -> dict:
    """Write the generator's tensors to ``path`` (.safetensors) and the card next to it.

    ``card`` must hold ``model``, ``config`` and ``input``; ``format``, ``sha256``,
    ``n_parameters`` and ``versions`` are filled in. Prior buffers (``PRIOR_BUFFERS``) are
    written as float16. Returns the written card.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    for k in PRIOR_BUFFERS & tensors.keys():  # mean images: float16 halves the file
        tensors[k] = tensors[k].half()  # (|error| <= 5e-4 on [-1, 1]); loaded as float32
    card = {
        "format": CARD_FORMAT,
        **card,
        "weights_file": path.name,
        "sha256": None,
        "n_parameters": int(sum(p.numel() for p in generator.parameters())),
        "versions": card.get("versions"),
    }
    return save_weights(tensors, path, CARD_FORMAT, card)


def smoothing_fwhm(card: Any, override: float | None = None) -> float:
    """Smoothing (mm FWHM) of the restacked pseudo-normal PET: ``override``
    (``--synthesis-fwhm``), else the card's value tuned on validation SSIM
    (``input.smoothing_fwhm_mm``), else ``SYNTHESIS_FWHM_MM`` (Zotova et al. 2021)."""
    if override is not None:
        return float(override)
    return float(card["input"].get("smoothing_fwhm_mm", SYNTHESIS_FWHM_MM))


def controls_in_training(card: Any, dataset: str, labels: Iterable[str]) -> list[str]:
    """The ``labels`` (participant labels, with or without ``sub-``; returned without it,
    in their order) that trained or validated the model of ``card``.

    They are the card's ``training.participants`` and ``training.validation_participants``,
    and count only when its ``training.dataset`` equals ``dataset`` (the ``Name`` of the
    BIDS dataset the labels come from, ``bids.dataset_name``): another dataset may reuse
    the same labels for other people. [] when the card records no training dataset or
    participants."""
    training = card.get("training") if isinstance(card, dict) else None
    if not isinstance(training, dict) or not training.get("dataset"):
        return []
    if training["dataset"] != dataset:
        return []
    seen = {
        str(name).removeprefix("sub-")
        for key in ("participants", "validation_participants")
        for name in training.get(key) or []
    }
    return [s for s in (str(x).removeprefix("sub-") for x in labels) if s in seen]


def read_card(weights: str | Path) -> dict:
    """Read and check the card of ``weights`` (one-line PetSynthError if unusable)."""
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        raise PetSynthError(
            "model weights must be a .safetensors file (pickled checkpoints are refused)",
            str(weights),
        )
    if not weights.is_file():
        raise PetSynthError("model weights not found", str(weights))
    cpath = card_path(weights)
    if not cpath.is_file():
        raise PetSynthError(
            f"model card {cpath.name} is missing next to the weights", str(weights)
        )
    try:
        card = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PetSynthError(f"model card is not valid JSON ({exc})", str(cpath)) from None
    missing = [k for k in _REQUIRED if k not in card] if isinstance(card, dict) else _REQUIRED
    if missing or card.get("format") != CARD_FORMAT:
        raise PetSynthError(
            f"not a PetSynth model card (missing {', '.join(missing) or 'format'})", str(cpath)
        )
    if not isinstance(card["model"], str):
        raise PetSynthError("model card: `model` must be a model name", str(cpath))
    try:
        get_spec(card["model"])
    except ValueError as exc:
        raise PetSynthError(str(exc), str(cpath)) from None
    if not isinstance(card["config"], dict) or not isinstance(card["input"], dict):
        raise PetSynthError("model card: `config` and `input` must be objects", str(cpath))
    spec_in = card["input"]
    for key in ("pet_scale", "voxel_size_mm"):
        value = spec_in.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise PetSynthError(f"model card: input.{key} must be a positive number", str(cpath))
    try:
        expected = card_space(card_representation(card))
    except (ValueError, PetSynthError) as exc:
        raise PetSynthError(f"model card: {exc}", str(cpath)) from None
    # the label that training wrote for affine-input models before it used AFFINE_SPACE
    legacy = {f"{TEMPLATE_SPACE} grid, affine-only"} if expected != TEMPLATE_SPACE else set()
    if spec_in.get("space", expected) not in {expected, *legacy}:
        raise PetSynthError(
            f"model card: trained in {spec_in['space']}, but its "
            f"{card_representation(card)!r} input representation works in {expected}",
            str(cpath),
        )
    return card


def load_generator(weights: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load the T1w -> PET generator of ``weights`` (eval mode on ``device``) and its card.

    Refuses (one-line PetSynthError) anything but a .safetensors file whose sha256
    equals its card's and whose tensors match the card's architecture exactly.
    """
    weights = Path(weights)
    card = read_card(weights)
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise PetSynthError(
            f"sha256 {digest[:12]}... does not match the model card ({card['sha256'][:12]}...): "
            "the weights are corrupt or belong to another model",
            str(weights),
        )
    try:
        tensors = load_tensors(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise PetSynthError(f"cannot read safetensors weights ({exc})", str(weights)) from None
    try:
        generator = build_model(card["model"], dict(card["config"])).generator
    except (KeyError, TypeError, ValueError) as exc:
        raise PetSynthError(
            f"model card config does not describe a {card['model']} network ({exc!r})",
            str(card_path(weights)),
        ) from None
    try:
        generator.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise PetSynthError(
            f"weights do not fit the {card['model']} architecture of the card ({first})",
            str(weights),
        ) from None
    return generator.eval().to(device), card


__all__ = [
    "CARD_FORMAT",
    "DEFAULT_WEIGHTS",
    "card_path",
    "controls_in_training",
    "default_weights",
    "library_versions",
    "load_generator",
    "read_card",
    "save_generator",
    "sha256_file",
    "smoothing_fwhm",
]
