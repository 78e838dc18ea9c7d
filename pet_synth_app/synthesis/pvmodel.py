"""Partial-volume forward model: the mean control PET adjusted to one brain's anatomy.

A PET voxel measures the uptake of the tissues inside it, blurred by the scanner:
``PET ~ blur(u_GM * f_GM + u_WM * f_WM + u_CSF * f_CSF)`` with ``f`` the tissue volume
fractions. The ``"mni-pv"`` input representation (``synthesis.inputs``) carries each
participant's GM and CSF fractions blurred in T1w space and then warped to MNI, i.e. in
the same order as the real PET. With the relative uptakes ``r_WM = u_WM / u_GM`` and
``r_CSF = u_CSF / u_GM`` as global constants, the tissue signal of a voxel is

    F = pv_gm + r_WM * pv_wm + r_CSF * pv_csf,   pv_wm = clip(1 - pv_gm - pv_csf, 0, 1),

and a participant's expected PET is the mean control PET times its tissue signal over
the controls' mean tissue signal, ``mean_PET * (F / F_mean) ** gamma``, renormalized so
that its mean over the participant's SUVR reference region equals the mean PET's there
(an atrophied cortex lowers the reference value as it lowers the PET; the real PET's
SUVR has the same mean there). The local GM uptake
(the regional FDG pattern) stays in the mean PET; only the anatomy moves the prediction.

Three numbers are fitted on the training controls (:func:`fit_pv_params`, an inner
leave-one-out search), so the model cannot overfit a handful of brains as a network can:
measured on the phantoms in docs/benchmarks.md ("Anatomy-aware synthesis inputs",
issue 14). Arrays are float (x, y, z) on one MNI grid: PET in SUVR, fractions in [0, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RATIO_CLIP = (0.2, 5.0)
"""Bounds of ``F / F_mean``: outside the brain both go to 0."""


@dataclass(frozen=True)
class PVParams:
    """Relative uptakes (WM/GM, CSF/GM) and the exponent of the tissue-signal ratio."""

    wm_ratio: float = 0.45
    csf_ratio: float = 0.05
    gamma: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


DEFAULT_GRID = {
    "wm_ratio": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7),
    "csf_ratio": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    "gamma": (0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0),
}
"""Grid of :func:`fit_pv_params`; FDG's WM/GM is ~0.3-0.5, its CSF/GM ~0.1-0.2."""


def tissue_signal(pv_gm: np.ndarray, pv_csf: np.ndarray, params: PVParams) -> np.ndarray:
    """``pv_gm + r_WM * pv_wm + r_CSF * pv_csf`` (relative to GM uptake) per voxel."""
    pv_wm = np.clip(1.0 - pv_gm - pv_csf, 0.0, 1.0)
    return pv_gm + params.wm_ratio * pv_wm + params.csf_ratio * pv_csf


def anatomy_adjusted_pet(
    mean_pet: np.ndarray,
    mean_pv_gm: np.ndarray,
    mean_pv_csf: np.ndarray,
    pv_gm: np.ndarray,
    pv_csf: np.ndarray,
    params: PVParams,
    reference: np.ndarray | None = None,
    level: float | None = None,
) -> np.ndarray:
    """The expected PET (SUVR) of a participant with fractions ``pv_gm``/``pv_csf``:
    ``mean_pet * (F / F_mean) ** gamma`` (``F_mean``: the :func:`tissue_signal` of the
    controls' mean fractions ``mean_pv_gm``/``mean_pv_csf``), rescaled so that its mean
    over the participant's boolean ``reference`` region is ``level`` (the controls'
    :func:`reference_level`; None for either: no rescaling)."""
    mean_signal = tissue_signal(mean_pv_gm, mean_pv_csf, params)
    ratio = tissue_signal(pv_gm, pv_csf, params) / np.maximum(mean_signal, 1e-3)
    pred = mean_pet * np.clip(ratio, *RATIO_CLIP) ** params.gamma
    if reference is not None and level is not None and reference.any():
        now = float(pred[reference].mean())
        if now > 0:
            pred = pred * (float(level) / now)
    return pred.astype(np.float32)


def reference_level(
    pets: Sequence[np.ndarray], references: Sequence[np.ndarray | None]
) -> float | None:
    """The controls' mean PET value over each one's own reference region (~1 for SUVR
    computed on that region; None without regions)."""
    values = [float(p[r].mean()) for p, r in zip(pets, references, strict=True) if r is not None]
    return float(np.mean(values)) if values else None


def _leave_one_out_means(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For each array, the mean of all the others (float32)."""
    total = np.sum(arrays, 0, dtype=np.float64)
    return [((total - a) / (len(arrays) - 1)).astype(np.float32) for a in arrays]


def fit_pv_params(
    pets: Sequence[np.ndarray],
    pv_gms: Sequence[np.ndarray],
    pv_csfs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    references: Sequence[np.ndarray | None] | None = None,
    grid: dict[str, Sequence[float]] | None = None,
) -> tuple[PVParams, dict[tuple[float, float, float], float]]:
    """The :class:`PVParams` of ``grid`` (default ``DEFAULT_GRID``) with the smallest
    leave-one-out error on the training controls: each control predicted from the others'
    mean PET and mean fractions, mean squared error (SUVR^2) inside its boolean
    ``masks``. Returns the best parameters and the error of every grid point."""
    n = len(pets)
    if n < 3:
        raise ValueError("fitting the partial-volume model needs >= 3 controls")
    grid = grid or DEFAULT_GRID
    references = list(references) if references is not None else [None] * n
    # every array cut to the voxels inside any mask (1D): the same sums, ~5x less work
    inside = np.any(masks, 0)
    pets = [np.asarray(p, np.float32)[inside] for p in pets]
    pv_gms = [np.asarray(g, np.float32)[inside] for g in pv_gms]
    pv_csfs = [np.asarray(c, np.float32)[inside] for c in pv_csfs]
    masks = [np.asarray(m, bool)[inside] for m in masks]
    references = [None if r is None else np.asarray(r, bool)[inside] for r in references]
    means = [_leave_one_out_means(a) for a in (pets, pv_gms, pv_csfs)]
    loo = list(zip(*means, strict=True))  # (mean PET, mean GM, mean CSF) without control i
    levels = [  # the others' reference level, per left-out control
        reference_level(
            [p for j, p in enumerate(pets) if j != i],
            [r for j, r in enumerate(references) if j != i],
        )
        for i in range(n)
    ]
    errors: dict[tuple[float, float, float], float] = {}
    for wm, csf, gamma in itertools.product(grid["wm_ratio"], grid["csf_ratio"], grid["gamma"]):
        params = PVParams(wm, csf, gamma)
        err = 0.0
        for i, (mean_pet, mean_gm, mean_csf) in enumerate(loo):
            pred = anatomy_adjusted_pet(
                mean_pet,
                mean_gm,
                mean_csf,
                pv_gms[i],
                pv_csfs[i],
                params,
                references[i],
                levels[i],
            )
            m = masks[i]
            err += float(np.mean((pred[m] - pets[i][m]) ** 2))
        errors[(wm, csf, gamma)] = err / n
    best = min(errors, key=errors.get)
    return PVParams(*best), errors


def fit_prior_spec(
    pets: Sequence[np.ndarray],
    channels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    channel_names: Sequence[str],
    grid: dict[str, Sequence[float]] | None = None,
) -> dict:
    """The ``pv_prior`` entry of a model config (``--prior-anatomy``): the parameters
    :func:`fit_pv_params` finds on the training controls' [0, 1] PETs and (C, x, y, z)
    input channels (``channel_names``, which must include ``pv_gm`` and ``pv_csf``), the
    controls' PET level over their brain masks (the rescaling region), and where the
    fractions are among the channels."""
    names = list(channel_names)
    missing = [c for c in ("pv_gm", "pv_csf") if c not in names]
    if missing:
        raise ValueError(f"the partial-volume prior needs input channels {missing}")
    gi, ci = names.index("pv_gm"), names.index("pv_csf")
    brains = [np.asarray(m, bool) for m in masks]
    params, errors = fit_pv_params(
        pets, [c[gi] for c in channels], [c[ci] for c in channels], brains, brains, grid
    )
    return {
        **params.as_dict(),
        "level": reference_level(pets, brains),
        "gm_channel": gi,
        "csf_channel": ci,
        "reference": "brain mask",
        "loo_mse": errors[(params.wm_ratio, params.csf_ratio, params.gamma)],
    }


def participant_prior(
    channels: np.ndarray, mean_pet: np.ndarray, mean_channels: np.ndarray, spec: dict
) -> np.ndarray:
    """A residual model's prior for one participant (``--prior-anatomy``): the model's
    mean PET ([0, 1], x, y, z) adjusted to the participant's (C, x, y, z) [0, 1] input
    channels (zero outside the brain, which is the rescaling region) by
    :func:`anatomy_adjusted_pet` with the ``pv_prior`` ``spec`` of its config;
    ``mean_channels``: the training controls' mean channels. [0, 1], (x, y, z)."""
    gi, ci = int(spec["gm_channel"]), int(spec["csf_channel"])
    params = PVParams(float(spec["wm_ratio"]), float(spec["csf_ratio"]), float(spec["gamma"]))
    brain = (channels > 0).any(0)
    pred = anatomy_adjusted_pet(
        mean_pet,
        mean_channels[gi],
        mean_channels[ci],
        channels[gi],
        channels[ci],
        params,
        brain,
        spec.get("level"),
    )
    return np.clip(pred * brain, 0.0, 1.0).astype(np.float32)


__all__ = [
    "DEFAULT_GRID",
    "PVParams",
    "anatomy_adjusted_pet",
    "fit_prior_spec",
    "fit_pv_params",
    "participant_prior",
    "reference_level",
    "tissue_signal",
]
