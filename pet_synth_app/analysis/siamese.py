"""Siamese autoencoder features of FDG PET patches (Alaverdyan et al. 2020, as used by
Zotova et al. 2021 sec. 2.2) for voxelwise one-class SVM anomaly detection.

Control PET images on one MNI grid (the 2 mm template grid, ~100 x 120 x 100 voxels) are
scaled to [0, 1] each (``scale_unit``); 2D axial patches of 15 x 15 voxels centred on
brain voxels are encoded to ``latent_dim`` = 64 features. Training sees pairs of patches
centred on the same voxel in two different controls: each branch reconstructs its patch
and the codes of the pair are pulled together (cosine), so the features describe the
normal pattern at a location rather than one person's. ``encode_volume`` then gives
one latent vector per mask voxel, the input of ``analysis.ocsvm``.

Weights are stored as ``<stem>.safetensors`` with a JSON card ``<stem>.json`` next to
them (architecture, sha256, library versions), like the synthesis models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..threads import thread_limits
from ..weightfiles import card_path, load_tensors, save_weights, verified_card

LATENT_DIM = 64
PATCH_SIZE = 15
CHANNELS = (16, 32, 64)
ALPHA = 1.0
"""Default weight of the siamese term ``mean(1 - cos(z1, z2))`` (in [0, 2]) against the
two per-pixel reconstruction MSEs (of [0, 1] patches, ~1e-3..1e-2 once trained). With
alpha = 1 the codes of a pair become nearly parallel early on; reconstruction still has
to be carried by the codes' other directions and their norm."""
ENCODE_BATCH = 4096
"""Patches per forward pass when encoding (measured: 4096 runs at ~80 % of the float32
matmul rate per core, 1024 and 16384 are 1.5-2x slower; docs/benchmarks.md)."""
ENCODE_PRECISIONS = ("float32", "bfloat16")
ENCODE_PRECISION = "bfloat16"
"""Precision of the encoder's convolutions when encoding in eval mode (training is always
float32; the last linear layer and the codes stay float32). bfloat16 runs the encoding,
~3/4 of the 1 mm group fit, ~2.6x faster on CPUs with AVX512-BF16 and changes the
OC-SVM decisions by far less than their spread (measured in docs/benchmarks.md, "Group
fit at 1 mm"). Recorded in the autoencoder's card (``architecture.encode_precision``) so
that participants are encoded as the controls were; cards without it are float32. Used
only where the CPU computes bfloat16 natively (``native_bfloat16``): elsewhere torch
emulates it, slower than float32, so the fit records float32 and a bfloat16 detector
encodes in float32 (decisions within the measured agreement)."""


def native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot products (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # another torch: assume not
        return False


ROBUST_MAX_PERCENTILE = 99.9
"""Percentile of the in-mask intensities used as an image's maximum by ``scale_unit``
(a handful of hot voxels must not set the scale)."""
FORMAT = "petsynth-siamese-ae/1"
_REQUIRED = ("format", "architecture", "sha256")


def scale_unit(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Image-level scaling of a PET volume (any units, e.g. SUVR) to [0, 1] (float32).

    Inside ``mask`` (nonzero = inside) the volume is divided by its robust maximum, the
    ``ROBUST_MAX_PERCENTILE`` (99.9th) percentile of the in-mask values, and clipped to
    [0, 1]; voxels outside the mask are 0. Same grid as the input. ValueError if the mask
    is empty, of another shape, or the robust maximum is not positive.
    """
    data = np.asarray(volume, dtype=np.float64)
    inside = np.asarray(mask) != 0
    if inside.shape != data.shape:
        raise ValueError(f"mask shape {inside.shape} does not match volume {data.shape}")
    if not inside.any():
        raise ValueError("mask is empty")
    values = data[inside]
    values = values[np.isfinite(values)]
    top = float(np.percentile(values, ROBUST_MAX_PERCENTILE)) if values.size else 0.0
    if not top > 0:
        raise ValueError("robust maximum of the volume inside the mask is not positive")
    out = np.zeros(data.shape, dtype=np.float32)
    out[inside] = np.clip(np.nan_to_num(data[inside] / top), 0.0, 1.0)
    return out


def _padded(volume: np.ndarray, size: int) -> np.ndarray:
    """float32 volume zero-padded by ``size // 2`` voxels in i and j (not in k)."""
    h = size // 2
    return np.pad(np.asarray(volume, dtype=np.float32), ((h, h), (h, h), (0, 0)))


def _windows(padded: np.ndarray, size: int) -> np.ndarray:
    """Read-only view (..., X, Y, Z, size, size) of all axial windows of padded volumes."""
    axes = (padded.ndim - 3, padded.ndim - 2)
    return np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=axes)


def _check_ijk(ijk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ijk = np.asarray(ijk)
    if ijk.ndim != 2 or ijk.shape[1] != 3 or not np.issubdtype(ijk.dtype, np.integer):
        raise ValueError(f"ijk must be (N, 3) integer voxel indices, got {ijk.shape} {ijk.dtype}")
    if ijk.size and (ijk.min() < 0 or np.any(ijk.max(0) >= np.asarray(shape[-3:]))):
        raise ValueError(f"voxel indices outside the volume of shape {shape[-3:]}")
    return ijk


def extract_patches(volume: np.ndarray, ijk: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """2D axial patches (N, size, size) float32 of ``volume`` centred on voxels ``ijk``.

    ``ijk`` (N, 3) integer voxel indices; patch ``n`` is ``volume[i-h:i+h+1, j-h:j+h+1,
    k]`` with ``h = size // 2`` (first axis i, second j) and zeros where it leaves the
    volume. ``size`` must be odd. One padding of the volume, then a single fancy index
    into a sliding-window view (no Python loop over centres).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"patch size must be odd and positive, got {size}")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    ijk = _check_ijk(ijk, volume.shape)
    view = _windows(_padded(volume, size), size)
    return np.ascontiguousarray(view[ijk[:, 0], ijk[:, 1], ijk[:, 2]])


def _out_size(n: int) -> int:
    """Side after a 3x3 convolution with stride 2 and padding 1."""
    return (n - 1) // 2 + 1


class SiameseAutoencoder(nn.Module):
    """Convolutional autoencoder of 2D patches (B, 1, P, P) in [0, 1] (178,689 parameters
    with the defaults).

    Encoder: conv 3x3 stride 2 -> c1 (8 x 8 for P = 15), conv 3x3 stride 2 -> c2 (4 x 4),
    conv 3x3 -> c3, LeakyReLU after each, flatten, linear -> ``latent_dim`` (no
    activation). Decoder, the mirror: linear -> c3 x 4 x 4, conv 3x3 -> c2, transposed
    conv stride 2 -> c1 (8 x 8), transposed conv stride 2 -> 1 (P x P), sigmoid. The
    strided first layer keeps every full-resolution layer single-channel on one side,
    ~5x cheaper on CPU than a stride-1 first convolution. Both siamese branches share
    this one network.
    """

    def __init__(
        self,
        latent_dim: int = LATENT_DIM,
        patch_size: int = PATCH_SIZE,
        channels: tuple[int, int, int] = CHANNELS,
        encode_precision: str = "float32",
    ) -> None:
        super().__init__()
        if encode_precision not in ENCODE_PRECISIONS:
            raise ValueError(
                f"encode_precision must be one of {ENCODE_PRECISIONS}, got {encode_precision!r}"
            )
        self.encode_precision = encode_precision
        c1, c2, c3 = (int(c) for c in channels)
        self.latent_dim, self.patch_size = int(latent_dim), int(patch_size)
        self.channels = (c1, c2, c3)
        s1 = _out_size(patch_size)
        s2 = _out_size(s1)
        self._grid = (c3, s2, s2)
        act = nn.LeakyReLU(0.1)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1),
            act,
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            act,
            nn.Conv2d(c2, c3, 3, padding=1),
            act,
            nn.Flatten(),
            nn.Linear(c3 * s2 * s2, latent_dim),
        )
        self.decoder_fc = nn.Sequential(nn.Linear(latent_dim, c3 * s2 * s2), act)
        self.decoder = nn.Sequential(
            nn.Conv2d(c3, c2, 3, padding=1),
            act,
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=s1 - (2 * s2 - 1)),
            act,
            nn.ConvTranspose2d(
                c1, 1, 3, stride=2, padding=1, output_padding=patch_size - (2 * s1 - 1)
            ),
            nn.Sigmoid(),
        )

    def config(self) -> dict:
        """Architecture parameters (rebuild with ``SiameseAutoencoder(**config)``)."""
        return {
            "latent_dim": self.latent_dim,
            "patch_size": self.patch_size,
            "channels": list(self.channels),
            "encode_precision": self.encode_precision,
        }

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim), float32, of patches (B, 1, P, P) or (B, P, P); in
        eval mode the convolutions run in ``encode_precision``."""
        if x.dim() == 3:
            x = x[:, None]
        if self.training or self.encode_precision == "float32" or not native_bfloat16():
            return self.encoder(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            h = self.encoder[:-1](x)
        return self.encoder[-1](h.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Patches (B, 1, P, P) in (0, 1) from codes (B, latent_dim)."""
        return self.decoder(self.decoder_fc(z).view(-1, *self._grid))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction (B, 1, P, P), z (B, latent_dim))``."""
        z = self.encode(x)
        return self.decode(z), z


def siamese_loss(
    x1: torch.Tensor,
    x2: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    alpha: float = ALPHA,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Siamese autoencoder loss of a batch of pairs (patches ``x``, reconstructions ``r``,
    codes ``z`` of both branches).

    ``total = MSE(r1, x1) + MSE(r2, x2) + alpha * mean(1 - cos(z1, z2))``: per-pixel mean
    squared reconstruction errors (intensity units of [0, 1] images, squared) plus the
    siamese regulariser in [0, 2] (0 for parallel codes, 2 for opposite ones). Returns
    the differentiable total and its parts as floats (``reconstruction1``,
    ``reconstruction2``, ``similarity`` (the mean 1 - cos), ``total``).
    """
    rec1 = F.mse_loss(r1.reshape(x1.shape), x1)
    rec2 = F.mse_loss(r2.reshape(x2.shape), x2)
    sim = (1.0 - F.cosine_similarity(z1, z2, dim=1, eps=1e-8)).mean()
    total = rec1 + rec2 + alpha * sim
    parts = {
        k: float(v.detach())
        for k, v in (
            ("reconstruction1", rec1),
            ("reconstruction2", rec2),
            ("similarity", sim),
            ("total", total),
        )
    }
    return total, parts


def sample_pairs(
    n_subjects: int,
    n_voxels: int,
    n_pairs: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training pairs: ``(subject_a, subject_b, voxel)`` int64 arrays of length
    ``n_pairs``, ``subject_a != subject_b`` always (b uniform over the other subjects),
    ``voxel`` uniform in ``[0, n_voxels)``. Needs at least 2 subjects."""
    if n_subjects < 2:
        raise ValueError(f"siamese pairs need at least 2 subjects, got {n_subjects}")
    if n_voxels < 1:
        raise ValueError("no voxels to sample from")
    a = rng.integers(0, n_subjects, n_pairs)
    b = (a + rng.integers(1, n_subjects, n_pairs)) % n_subjects
    voxel = rng.integers(0, n_voxels, n_pairs)
    return a, b, voxel


@dataclass
class PatchStack:
    """Control volumes (already scaled to [0, 1]) cropped to a mask's bounding box, with
    a zero margin of ``size // 2`` voxels in i and j, so that the axial patch centred on
    every mask voxel is one window of ``data``.

    ``data`` (S, X, Y, Z) float32, one volume per subject; ``ijk`` (N, 3) the mask voxels
    in ``data``'s window coordinates, in ``np.argwhere(mask)`` order (C order);
    ``size`` the patch side.
    """

    data: np.ndarray
    ijk: np.ndarray
    size: int

    def patches(self, subjects: np.ndarray | int, rows: np.ndarray | slice) -> np.ndarray:
        """Patches (B, size, size) float32 of ``subjects`` at mask voxels ``ijk[rows]``."""
        i, j, k = self.ijk[rows].T
        view = _windows(self.data, self.size)  # (S, X, Y, Z, P, P), no copy
        return np.ascontiguousarray(view[subjects, i, j, k])


def patch_stack(
    volumes: Iterable[np.ndarray],
    mask: np.ndarray,
    size: int = PATCH_SIZE,
    count: int | None = None,
) -> PatchStack:
    """:class:`PatchStack` of ``volumes`` around the voxels of ``mask``. ``volumes`` may
    be any iterable (e.g. a generator that scales one volume at a time); with its length
    known (``len`` or ``count``) the stack is allocated once and only it is kept."""
    inside = np.asarray(mask) != 0
    if not inside.any():
        raise ValueError("mask is empty")
    ijk = np.argwhere(inside)
    h = size // 2
    lo = np.maximum(ijk.min(0) - [h, h, 0], 0)
    hi = np.minimum(ijk.max(0) + [h + 1, h + 1, 1], inside.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shape = (int(hi[0] - lo[0]) + 2 * h, int(hi[1] - lo[1]) + 2 * h, int(hi[2] - lo[2]))
    if count is None and hasattr(volumes, "__len__"):
        count = len(volumes)  # type: ignore[arg-type]
    data = np.zeros((count or 0, *shape), np.float32)
    extra = []  # volumes beyond ``count`` (length unknown up front)
    n = 0
    for n, v in enumerate(volumes):
        if np.shape(v) != inside.shape:
            raise ValueError(f"volume {n} has shape {np.shape(v)}, mask {inside.shape}")
        if n < len(data):
            data[n, h : shape[0] - h, h : shape[1] - h] = np.asarray(v)[box]
        else:
            extra.append(np.zeros(shape, np.float32))
            extra[-1][h : shape[0] - h, h : shape[1] - h] = np.asarray(v)[box]
    if extra:
        data = np.concatenate([data, np.stack(extra)])
    return PatchStack(data, ijk - lo, int(size))


def train_siamese(
    volumes: list[np.ndarray],
    mask: np.ndarray,
    *,
    epochs: int = 10,
    pairs_per_epoch: int = 20000,
    batch_size: int = 256,
    lr: float = 1e-3,
    alpha: float = ALPHA,
    seed: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[SiameseAutoencoder, list[dict]]:
    """Train a ``SiameseAutoencoder`` on control PET volumes already scaled to [0, 1]
    (``scale_unit``), all on one grid; patches are centred on the voxels of ``mask``.

    Each epoch draws ``pairs_per_epoch`` pairs (same mask voxel, two different controls;
    ``sample_pairs``) and takes Adam steps (``lr``) on ``siamese_loss`` with ``alpha``
    per batch of ``batch_size`` pairs. Deterministic for a ``seed`` (weights from
    ``torch.manual_seed``, pairs from ``numpy.random.default_rng``): the same call on
    the same machine and thread count gives bitwise identical weights. ``threads`` sets
    torch's thread count for the call. ``log`` receives one line per epoch. Returns the
    model (eval mode, on CPU) and one row per epoch (mean loss parts, seconds).
    """
    if len(volumes) < 2:
        raise ValueError(f"siamese training needs at least 2 control volumes, got {len(volumes)}")
    inside = np.asarray(mask) != 0
    if not inside.any():
        raise ValueError("mask is empty")
    for n, v in enumerate(volumes):
        if np.shape(v) != inside.shape:
            raise ValueError(f"volume {n} has shape {np.shape(v)}, mask {inside.shape}")
        if not (np.min(v) >= 0.0 and np.max(v) <= 1.0):  # NaN fails too
            raise ValueError(f"volume {n} is not scaled to [0, 1] (use scale_unit)")
    return train_siamese_stack(
        patch_stack(volumes, inside, PATCH_SIZE),
        epochs=epochs,
        pairs_per_epoch=pairs_per_epoch,
        batch_size=batch_size,
        lr=lr,
        alpha=alpha,
        seed=seed,
        threads=threads,
        device=device,
        log=log,
    )


def train_siamese_stack(
    stack: PatchStack,
    *,
    epochs: int = 10,
    pairs_per_epoch: int = 20000,
    batch_size: int = 256,
    lr: float = 1e-3,
    alpha: float = ALPHA,
    seed: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[SiameseAutoencoder, list[dict]]:
    """:func:`train_siamese` on a prepared :class:`PatchStack` (same pairs, same
    weights); the volumes must already be in [0, 1]."""
    if len(stack.data) < 2:
        raise ValueError(
            f"siamese training needs at least 2 control volumes, got {len(stack.data)}"
        )
    with thread_limits(threads, env=False):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = SiameseAutoencoder(patch_size=stack.size).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        ijk = stack.ijk
        view = _windows(stack.data, model.patch_size)  # (S, X, Y, Z, P, P)
        rows: list[dict] = []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            a, b, vox = sample_pairs(len(stack.data), len(ijk), pairs_per_epoch, rng)
            i, j, k = ijk[vox].T
            p1 = torch.from_numpy(np.ascontiguousarray(view[a, i, j, k]))[:, None]
            p2 = torch.from_numpy(np.ascontiguousarray(view[b, i, j, k]))[:, None]
            sums: dict[str, float] = {}
            model.train()
            for s in range(0, pairs_per_epoch, batch_size):
                x1 = p1[s : s + batch_size].to(device)
                x2 = p2[s : s + batch_size].to(device)
                r, z = model(torch.cat([x1, x2]))  # both branches, one shared network
                r1, r2, z1, z2 = r[: len(x1)], r[len(x1) :], z[: len(x1)], z[len(x1) :]
                loss, parts = siamese_loss(x1, x2, r1, r2, z1, z2, alpha)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value * len(x1)
            row = {
                "epoch": epoch,
                **{k: v / pairs_per_epoch for k, v in sums.items()},
                "seconds": round(time.perf_counter() - start, 3),
            }
            rows.append(row)
            if log is not None:
                log(
                    f"siamese epoch {epoch}/{epochs}: loss {row['total']:.5f} (reconstruction "
                    f"{row['reconstruction1']:.5f} + {row['reconstruction2']:.5f}, similarity "
                    f"{row['similarity']:.4f}) {row['seconds']:.1f}s"
                )
    return model.cpu().eval(), rows


def encode_volume(
    model: SiameseAutoencoder, volume: np.ndarray, mask: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """Latent vectors (n_vox, latent_dim) float32 of the patches centred on every voxel of
    ``mask``, in ``np.nonzero(mask)`` order; ``volume`` scaled to [0, 1] like the
    training data. Runs under ``torch.inference_mode`` in eval mode."""
    volume = np.asarray(volume)
    inside = np.asarray(mask) != 0
    if volume.shape != inside.shape or volume.ndim != 3:
        raise ValueError(f"volume {volume.shape} and mask {inside.shape} must be one 3D grid")
    ijk = np.argwhere(inside)
    view = _windows(_padded(volume, model.patch_size), model.patch_size)
    device = next(model.parameters()).device
    out = np.empty((len(ijk), model.latent_dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(ijk), batch_size):
                i, j, k = ijk[s : s + batch_size].T
                x = torch.from_numpy(np.ascontiguousarray(view[i, j, k]))[:, None].to(device)
                out[s : s + batch_size] = model.encode(x).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def encode_stack(
    model: SiameseAutoencoder,
    stack: PatchStack,
    rows: slice,
    batch_size: int = ENCODE_BATCH,
    out: np.ndarray | None = None,
    pool: Executor | None = None,
) -> np.ndarray:
    """Latent vectors (S, n_rows, latent_dim) float32 of every subject of ``stack`` at the
    mask voxels ``stack.ijk[rows]`` (same codes as :func:`encode_volume` of each scaled
    volume). Batches of ``batch_size`` patches under ``torch.inference_mode``; ``out``
    may be a preallocated array of that shape. With a ``pool`` (``threads.worker_pool``)
    the subjects are encoded in its threads, one subject per task, in the same batches:
    the same codes."""
    n_rows = len(range(*rows.indices(len(stack.ijk))))
    shape = (len(stack.data), n_rows, model.latent_dim)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    first = rows.indices(len(stack.ijk))[0]

    def one(s: int) -> None:
        with torch.inference_mode():  # thread-local: entered in the worker
            for b in range(0, n_rows, batch_size):
                e = min(n_rows, b + batch_size)
                x = torch.from_numpy(stack.patches(s, slice(first + b, first + e)))
                out[s, b:e] = model.encode(x[:, None]).numpy()

    was_training = model.training
    model.eval()
    try:
        if pool is None:
            for s in range(len(stack.data)):
                one(s)
        else:
            list(pool.map(one, range(len(stack.data))))
    finally:
        model.train(was_training)
    return out


def save_autoencoder(model: SiameseAutoencoder, path: str | Path, card: dict) -> dict:
    """Write the weights to ``path`` (.safetensors) and the card ``<stem>.json`` next to it.

    ``card`` holds anything to record (training data, settings, losses); ``format``,
    ``architecture``, ``sha256``, ``n_parameters`` and ``versions`` are filled in. Same
    weights -> same bytes. Returns the written card.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {
        **card,
        "format": FORMAT,
        "architecture": model.config(),
        "weights_file": path.name,
        "sha256": None,
        "n_parameters": int(sum(t.numel() for t in tensors.values())),
        "versions": card.get("versions"),
    }
    return save_weights(tensors, path, FORMAT, full)


def load_autoencoder(path: str | Path) -> tuple[SiameseAutoencoder, dict]:
    """Load weights written by ``save_autoencoder`` (eval mode, CPU) and their card.

    Raises ValueError (one line) when the card is missing or invalid, the file's sha256
    differs from the card's, or the tensors do not fit the card's architecture.
    """
    from safetensors import SafetensorError

    path = Path(path)
    cpath = card_path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"{path}: no .safetensors weights there")
    if not cpath.is_file():
        raise ValueError(f"{path}: model card {cpath.name} is missing next to the weights")
    card = verified_card(path, cpath, FORMAT, tuple(_REQUIRED))
    try:
        tensors = load_tensors(path)
        arch = card["architecture"]
        model = SiameseAutoencoder(
            int(arch["latent_dim"]),
            int(arch["patch_size"]),
            tuple(arch["channels"]),
            str(arch.get("encode_precision", "float32")),
        )
        model.load_state_dict(tensors, strict=True)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [repr(exc)])[0]
        raise ValueError(f"{path}: weights do not fit the card's architecture ({first})") from None
    return model.eval(), card


__all__ = [
    "ALPHA",
    "ENCODE_PRECISION",
    "ENCODE_PRECISIONS",
    "native_bfloat16",
    "CHANNELS",
    "ENCODE_BATCH",
    "PatchStack",
    "FORMAT",
    "LATENT_DIM",
    "PATCH_SIZE",
    "ROBUST_MAX_PERCENTILE",
    "SiameseAutoencoder",
    "encode_stack",
    "encode_volume",
    "extract_patches",
    "load_autoencoder",
    "sample_pairs",
    "save_autoencoder",
    "scale_unit",
    "siamese_loss",
    "patch_stack",
    "train_siamese",
    "train_siamese_stack",
]
