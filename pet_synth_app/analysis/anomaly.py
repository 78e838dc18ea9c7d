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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import OCSVM_BLOCK_VOXELS, OCSVM_GM_THRESHOLD
from ..threads import thread_limits

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
    """What :func:`fit` produced (also saved to the folder)."""

    folder: Path
    n_voxels: int
    seconds_autoencoder: float
    seconds_ocsvm: float
    log: list[dict]


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
    block_voxels: int = OCSVM_BLOCK_VOXELS,
) -> FitResult:
    """Fit the detector on control PETs (SUVR, MNI, each with its brain mask) and save it.

    Each image is scaled to [0, 1] (``siamese.scale_unit``); the autoencoder is trained on
    pairs of patches at the same voxel of two different controls; every control is then
    encoded at every model voxel and one OC-SVM is fitted per voxel on those codes, one
    block of ``block_voxels`` voxels at a time (the codes of all controls for all voxels
    would not fit in memory at 1 mm with tens of controls).
    """
    from . import ocsvm, siamese

    if len(pets) < 2:
        raise ValueError(f"the anomaly detector needs at least 2 control PETs, got {len(pets)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    voxels = model_voxels(gm_prob, masks)
    if not voxels.any():
        raise ValueError("no gray-matter voxel is inside every control's brain mask")
    scaled = [siamese.scale_unit(p, m) for p, m in zip(pets, masks, strict=True)]
    t0 = time.time()
    ae, log = siamese.train_siamese(
        scaled, voxels, epochs=epochs, seed=seed, threads=threads, pairs_per_epoch=pairs_per_epoch
    )
    t_ae = time.time() - t0
    ijk = np.argwhere(voxels).astype(np.int32)  # C order, as np.nonzero
    parts, t_svm = [], 0.0
    for start in range(0, len(ijk), block_voxels):
        block = np.zeros(voxels.shape, dtype=bool)
        block[tuple(ijk[start : start + block_voxels].T)] = True
        latents = np.stack([siamese.encode_volume(ae, v, block) for v in scaled])
        t1 = time.time()
        parts.append(
            ocsvm.fit_model(
                latents,
                ijk[start : start + block_voxels],
                voxels.shape,
                np.asarray(affine),
                nu=nu,
                gamma=gamma,
                meta=dict(meta or {}),
            )
        )
        t_svm += time.time() - t1
        del latents
    model = ocsvm.concat_models(parts)
    ae_card = siamese.save_autoencoder(ae, folder / AE_FILE, {"seed": seed, "log": log})
    ocsvm.save_model(model, folder)
    svm_card = json.loads((folder / ocsvm.CARD).read_text())
    info = {
        **(meta or {}),
        "n_voxels": int(voxels.sum()),
        "gm_threshold": OCSVM_GM_THRESHOLD,
        "nu": nu,
        "gamma": gamma,
        "autoencoder_epochs": epochs,
        "autoencoder_sha256": ae_card["sha256"],
        "ocsvm_sha256": svm_card["sha256"],
        "random_seed": seed,
        "fit_seconds": {"autoencoder": round(t_ae, 1), "ocsvm": round(t_svm, 1)},
    }
    (folder / META).write_text(json.dumps(info, indent=2))
    return FitResult(folder, int(voxels.sum()), t_ae, t_svm, log)


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


__all__ = ["FitResult", "fit", "has_model", "model_voxels", "read_meta", "score"]
