"""Model weights (.safetensors only) and their JSON model cards.

A model is two files: ``<stem>.safetensors`` (the T1w -> PET generator's tensors) and
``<stem>.json`` (the card: architecture, input contract, training data, validation
metrics, sha256 of the weights, library versions). Loading never unpickles anything and
refuses weights whose sha256 or tensor names do not match their card.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import TEMPLATE_SPACE
from ..errors import PetSynthError
from .registry import build_model, get_spec

CARD_FORMAT = "petsynth-model-card/1"
DEFAULT_WEIGHTS = "cyclegan-mse_phantom.safetensors"
_REQUIRED = ("format", "model", "config", "input", "sha256")


PRIOR_BUFFERS = frozenset({"prior", "input_prior"})
"""Generator buffers holding mean training images (residual models), stored as float16."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(weights: str | Path) -> Path:
    """The model card that belongs to a weights file (same stem, ``.json``)."""
    return Path(weights).with_suffix(".json")


def default_weights() -> Path:
    """The shipped default model (trained on phantoms; see its card)."""
    return Path(str(resources.files("pet_synth_app") / "data" / DEFAULT_WEIGHTS))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import monai
    import numpy
    import safetensors

    from .. import __version__

    return {
        "petsynth": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def save_generator(generator: nn.Module, path: str | Path, card: dict) -> dict:
    """Write the generator's tensors to ``path`` (.safetensors) and the card next to it.

    ``card`` must hold ``model``, ``config`` and ``input``; ``format``, ``sha256``,
    ``n_parameters`` and ``versions`` are filled in. Prior buffers (``PRIOR_BUFFERS``) are
    written as float16. Returns the written card.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights must be saved as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    for k in PRIOR_BUFFERS & tensors.keys():  # mean images: float16 halves the file
        tensors[k] = tensors[k].half()  # (|error| <= 5e-4 on [-1, 1]); loaded as float32
    # one metadata key only: safetensors writes several keys in random order, which
    # would make the bytes (and the sha256) of identical weights differ
    save_file(tensors, str(path), metadata={"format": CARD_FORMAT})
    card = {
        "format": CARD_FORMAT,
        **card,
        "weights_file": path.name,
        "sha256": sha256_file(path),
        "n_parameters": int(sum(p.numel() for p in generator.parameters())),
        "versions": card.get("versions") or library_versions(),
    }
    card_path(path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def verified_card(
    tensors: str | Path, card: str | Path, fmt: str, required: tuple[str, ...] = ()
) -> dict:
    """The JSON ``card`` of a ``.safetensors`` file, checked: a ``fmt`` card with the
    ``required`` keys whose ``sha256`` is the file's. ValueError (one line) otherwise."""
    tensors, card = Path(tensors), Path(card)
    try:
        data = json.loads(card.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{card}: invalid card ({' '.join(str(exc).split())})") from None
    if (
        not isinstance(data, dict)
        or any(k not in data for k in ("format", "sha256", *required))
        or data["format"] != fmt
    ):
        raise ValueError(f"{card}: not a {fmt} card")
    digest = sha256_file(tensors)
    if digest != data["sha256"]:
        raise ValueError(
            f"{tensors}: sha256 {digest[:12]}... does not match the card "
            f"({str(data['sha256'])[:12]}...): corrupt or from another model"
        )
    return data


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
    if spec_in.get("space", TEMPLATE_SPACE) != TEMPLATE_SPACE:
        raise PetSynthError(
            f"model card: trained in {spec_in['space']}, PetSynth works in {TEMPLATE_SPACE}",
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
        tensors = load_file(str(weights), device="cpu")
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
    "default_weights",
    "library_versions",
    "load_generator",
    "read_card",
    "save_generator",
    "sha256_file",
]
