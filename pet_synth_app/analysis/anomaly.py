"""The unsupervised anomaly detector of Zotova et al. (after Alaverdyan et al. 2020):
siamese-autoencoder features of 15x15 axial PET patches, one RBF one-class SVM per
gray-matter voxel fitted on control PET, patients scored voxel by voxel.

A fitted detector lives in one folder (``<out>/group/normative`` next to the Z-map
normative model)::

    autoencoder.safetensors + autoencoder.json   patch encoder (siamese.py)
    ocsvm.safetensors + ocsvm.json               per-voxel OC-SVMs (ocsvm.py)
    anomaly.json                                 participants (real / synthetic), settings

All images are SUVR PET on one MNI152NLin2009aSym grid.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import OCSVM_BLOCK_VOXELS, OCSVM_CODES_MB, OCSVM_GM_THRESHOLD
from ..threads import thread_limits, worker_pool

LOGGER = logging.getLogger("petsynth")
META = "anomaly.json"
AE_FILE = "autoencoder.safetensors"


def has_model(folder: str | Path | None) -> bool:
    """True when ``folder`` holds a fitted anomaly detector."""
    return folder is not None and (Path(folder) / META).is_file()


def model_voxels(gm_prob: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Voxels that get an OC-SVM: template GM probability > ``OCSVM_GM_THRESHOLD`` inside
    every training image's brain mask (bool, template grid)."""
    keep = np.asarray(gm_prob) > OCSVM_GM_THRESHOLD
    for m in masks:
        keep &= np.asarray(m) > 0
    return keep


@dataclass
class FitResult:
    """What :func:`fit` produced (also saved to the folder). ``seconds`` and
    ``cpu_seconds``: wall and process CPU time (all threads) per phase (``scale``,
    ``autoencoder``, ``encode``, ``ocsvm``, ``save``)."""

    folder: Path
    n_voxels: int
    seconds_autoencoder: float
    seconds_ocsvm: float
    log: list[dict]
    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)


def block_size(n_subjects: int, latent_dim: int, codes_mb: float = OCSVM_CODES_MB) -> int:
    """Voxels encoded and fitted at a time: the controls' float32 codes of one block take
    at most ``codes_mb`` MB, in whole solver chunks (16384 voxels, at least one), and at
    most ``OCSVM_BLOCK_VOXELS``."""
    chunk = 16384
    fit = int(codes_mb * 2**20 // (4 * max(1, n_subjects) * latent_dim))
    return max(chunk, min(OCSVM_BLOCK_VOXELS, fit // chunk * chunk))


class _Clock:
    """Wall and CPU seconds per named phase."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._t = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        t = (time.perf_counter(), time.process_time())
        self.wall[name] = self.wall.get(name, 0.0) + t[0] - self._t[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + t[1] - self._t[1]
        self._t = t


def fit(
    pets: list[np.ndarray],
    masks: list[np.ndarray],
    gm_prob: np.ndarray,
    affine: np.ndarray,
    folder: str | Path,
    *,
    nu: float,
    gamma: float | str,
    epochs: int,
    pairs_per_epoch: int = 20000,
    seed: int = 0,
    threads: int | None = None,
    meta: dict | None = None,
    block_voxels: int | None = None,
    encode_precision: str | None = None,
) -> FitResult:
    """Fit the detector on control PETs (SUVR, MNI, each with its brain mask) and save it.

    Each image is scaled to [0, 1] (``siamese.scale_unit``) and kept only as a crop
    around the model voxels (``siamese.patch_stack``); the autoencoder is trained on
    pairs of patches at the same voxel of two different controls; every control is then
    encoded at every model voxel and one OC-SVM is fitted per voxel on those codes, one
    block of voxels at a time (the codes of all controls for all voxels would not fit in
    memory at 1 mm with tens of controls): ``block_voxels``, by default
    :func:`block_size` (codes of one block <= ``OCSVM_CODES_MB``). The autoencoder
    trains on ``threads`` torch threads; encoding and fitting run in ``threads``
    single-threaded workers (``threads.worker_pool``; the same detector as one thread
    computes it, tested); the encoder's convolutions run in ``encode_precision``
    (default ``siamese.ENCODE_PRECISION`` where the CPU has native bfloat16, else
    float32), recorded in its card for the participants.
    """
    from . import ocsvm, siamese

    if len(pets) < 2:
        raise ValueError(f"the anomaly detector needs at least 2 control PETs, got {len(pets)}")
    if len(pets) != len(masks):
        raise ValueError(f"{len(pets)} PETs but {len(masks)} masks")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    voxels = model_voxels(gm_prob, masks)
    if not voxels.any():
        raise ValueError("no gray-matter voxel is inside every control's brain mask")
    stack = siamese.patch_stack(
        (siamese.scale_unit(p, m) for p, m in zip(pets, masks, strict=True)),
        voxels,
        count=len(pets),
    )
    clock.lap("scale")
    ae, log = siamese.train_siamese_stack(
        stack, epochs=epochs, seed=seed, threads=threads, pairs_per_epoch=pairs_per_epoch
    )
    clock.lap("autoencoder")
    native = siamese.ENCODE_PRECISION if siamese.native_bfloat16() else "float32"
    ae.encode_precision = encode_precision or native
    if ae.encode_precision not in siamese.ENCODE_PRECISIONS:
        raise ValueError(f"encode_precision must be one of {siamese.ENCODE_PRECISIONS}")
    ijk = np.argwhere(voxels).astype(np.int32)  # C order, as np.nonzero and stack.ijk
    block = int(block_voxels or block_size(len(pets), ae.latent_dim))
    latents = np.empty((len(pets), min(block, len(ijk)), ae.latent_dim), np.float32)
    parts = []
    # each block's support vectors wait on disk until the model is saved, streamed from
    # there (~0.07 GB a block at 1 mm / 75 controls, ~2 GB in all)
    spilled = Path(tempfile.mkdtemp(prefix=".ocsvm-blocks-", dir=folder))
    try:
        # ``threads`` single-threaded workers share each block's encoding (a subject per
        # task) and OC-SVMs (a solver chunk per task): both cores busy, same results
        with worker_pool(threads) as pool:
            for start in range(0, len(ijk), block):
                stop = min(len(ijk), start + block)
                codes = siamese.encode_stack(
                    ae, stack, slice(start, stop), out=latents[:, : stop - start], pool=pool
                )
                clock.lap("encode")
                part = ocsvm.fit_model(
                    codes,
                    ijk[start:stop],
                    voxels.shape,
                    np.asarray(affine),
                    nu=nu,
                    gamma=gamma,
                    meta=dict(meta or {}),
                    pool=pool,
                )
                parts.append(ocsvm.spill(part, spilled / f"sv-{len(parts):05d}.npy"))
                del part
                clock.lap("ocsvm")
                LOGGER.info(
                    "OC-SVM fit: %d/%d voxels (encode %.0f s, OC-SVMs %.0f s wall; "
                    "%.0f / %.0f s CPU)",
                    stop,
                    len(ijk),
                    clock.wall["encode"],
                    clock.wall["ocsvm"],
                    clock.cpu["encode"],
                    clock.cpu["ocsvm"],
                )
        del latents, stack
        model = ocsvm.concat_models(parts)  # support vectors stay in ``spilled``
        ae_card = siamese.save_autoencoder(ae, folder / AE_FILE, {"seed": seed, "log": log})
        ocsvm.save_model(model, folder)
        del model
    finally:
        shutil.rmtree(spilled, ignore_errors=True)
    svm_card = json.loads((folder / ocsvm.CARD).read_text())
    clock.lap("save")
    info = {
        **(meta or {}),
        "n_voxels": int(voxels.sum()),
        "gm_threshold": OCSVM_GM_THRESHOLD,
        "nu": nu,
        "gamma": gamma,
        "autoencoder_epochs": epochs,
        "encode_precision": ae.encode_precision,
        "autoencoder_sha256": ae_card["sha256"],
        "ocsvm_sha256": svm_card["sha256"],
        "random_seed": seed,
        "fit_seconds": {k: round(v, 1) for k, v in clock.wall.items()},
    }
    (folder / META).write_text(json.dumps(info, indent=2))
    return FitResult(
        folder,
        int(voxels.sum()),
        clock.wall["autoencoder"],
        clock.wall["ocsvm"],
        log,
        dict(clock.wall),
        dict(clock.cpu),
    )


def read_meta(folder: str | Path) -> dict:
    """The detector's ``anomaly.json``."""
    return json.loads((Path(folder) / META).read_text())


def score(
    folder: str | Path, pet: np.ndarray, mask: np.ndarray, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Score one PET (SUVR, MNI, with its brain mask) against the detector in ``folder``.

    Returns ``(standardized, decision, meta)``: the OC-SVM decision values robustly
    standardized over this brain's scored voxels (``ocsvm.standardize``: SD units, negative
    = anomalous; the map that is thresholded and clustered); the raw decision values on
    the model voxels inside ``mask`` (scikit-learn convention: negative = outside the
    controls' support; 0 elsewhere); the detector's ``anomaly.json`` plus the median
    decision value and the fraction of scored voxels outside the support.
    """
    with thread_limits(threads or None, env=False):
        return _score(folder, pet, mask)


def _score(folder, pet, mask):
    from . import ocsvm, siamese

    ae, _ = siamese.load_autoencoder(Path(folder) / AE_FILE)
    model = ocsvm.load_model(folder, lazy=True)
    if tuple(model.shape) != tuple(pet.shape[:3]):
        raise ValueError(f"the PET grid {pet.shape[:3]} differs from the model's {model.shape}")
    voxels = model.mask()
    latents = siamese.encode_volume(ae, siamese.scale_unit(pet, mask), voxels)
    decision = ocsvm.score_volume(model, latents)
    scored = voxels & (np.asarray(mask) > 0)
    if not scored.any():
        raise ValueError("the PET's brain mask does not overlap the detector's voxels")
    decision = np.where(scored, decision, 0.0).astype(np.float32)
    standardized = ocsvm.standardize(decision, scored)
    info = {
        **read_meta(folder),
        "decision_median": float(np.median(decision[scored])),
        "fraction_outside_support": float(np.mean(decision[scored] < 0)),
    }
    return standardized.astype(np.float32), decision, info


__all__ = ["FitResult", "block_size", "fit", "has_model", "model_voxels", "read_meta", "score"]
