"""Weights files: one home for writing, verifying and lazily reading model tensors.

Every model PetSynth stores (the synthesis generators, the siamese autoencoder, the
voxelwise OC-SVMs) is a ``.safetensors`` file with a JSON card next to it. The card
holds the card format, the sha256 of the tensors file and the library versions, plus
what the model itself records. Loading never unpickles anything and refuses tensors whose
sha256 differs from their card's. This module knows nothing about the models, so that
``synthesis/`` and ``analysis/`` can both use it without importing each other
(docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(weights: str | Path) -> Path:
    """The card that belongs to a tensors file (same stem, ``.json``)."""
    return Path(weights).with_suffix(".json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers."""
    import monai
    import safetensors
    import torch

    from . import __version__

    return {
        "petsynth": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def write_card(path: str | Path, card: dict) -> Path:
    """Write ``card`` as indented JSON (one trailing newline)."""
    path = Path(path)
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


_SAFETENSORS_DTYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}


def _save_numpy(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """Write numpy arrays as a ``.safetensors`` file, streamed from the arrays' memory
    (``safetensors.numpy.save_file`` first copies every array into one bytes object,
    which doubles the peak memory of a multi-GB OC-SVM model). A tensor may also be a
    source of C-order row blocks (``shape``, ``dtype`` and ``chunks()``, e.g.
    ``ocsvm.BlockRows``), written block by block. Tensors are laid out by decreasing
    item size, then name; same arrays -> same bytes."""
    arrays = {
        k: v if hasattr(v, "chunks") else np.ascontiguousarray(v) for k, v in tensors.items()
    }
    for k, a in arrays.items():
        if a.dtype.newbyteorder("<") != a.dtype or a.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {k} has an unsupported dtype {a.dtype}")
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for k in order:
        a = arrays[k]
        nbytes = int(np.prod(a.shape)) * a.dtype.itemsize
        header[k] = {
            "dtype": _SAFETENSORS_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for k in order:
            a = arrays[k]
            for block in a.chunks() if hasattr(a, "chunks") else [a]:
                block = np.ascontiguousarray(block, dtype=a.dtype)
                if block.nbytes:
                    fh.write(memoryview(block.reshape(-1)).cast("B"))


def save_weights(
    tensors: dict[str, Any], path: str | Path, fmt: str, card: dict, card_file: Path | None = None
) -> dict:
    """Write ``tensors`` (torch tensors or numpy arrays) to ``path`` (.safetensors) and
    their card (default ``<stem>.json``); returns the card.

    ``card`` gives the keys in the order they are written: ``sha256`` is filled in (added
    at the end if absent), ``versions`` too when missing or empty; ``format`` is ``fmt``.
    Only ``{"format": fmt}`` goes into the file's metadata: safetensors writes several
    keys in random order, which would make the bytes (and the sha256) of identical
    weights differ.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights must be saved as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    if all(isinstance(t, np.ndarray) or hasattr(t, "chunks") for t in tensors.values()):
        _save_numpy(tensors, path, {"format": fmt})
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"format": fmt})
    out = {**card, "format": fmt, "sha256": sha256_file(path)}
    if not out.get("versions"):
        out["versions"] = library_versions()
    write_card(card_file or card_path(path), out)
    return out


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
    check_sha256(tensors, data["sha256"])
    return data


def check_sha256(tensors: str | Path, expected: str) -> None:
    """ValueError (one line) unless the sha256 of ``tensors`` is ``expected``."""
    digest = sha256_file(tensors)
    if digest != expected:
        raise ValueError(
            f"{tensors}: sha256 {digest[:12]}... does not match the card "
            f"({str(expected)[:12]}...): corrupt or from another model"
        )


def load_tensors(path: str | Path) -> dict:
    """All tensors of a ``.safetensors`` file as CPU torch tensors."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


class LazyRows:
    """Rows of one tensor of a safetensors file, read on demand (``safe_open``, numpy)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.key, self.shape, self.dtype = path, key, tuple(shape), np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        from safetensors import safe_open

        if not isinstance(rows, slice):
            raise TypeError("lazily loaded tensors can only be sliced by rows")
        with safe_open(str(self.path), framework="np") as fh:
            return fh.get_slice(self.key)[rows]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)


__all__ = [
    "LazyRows",
    "card_path",
    "check_sha256",
    "library_versions",
    "load_tensors",
    "save_weights",
    "sha256_file",
    "verified_card",
    "write_card",
]
