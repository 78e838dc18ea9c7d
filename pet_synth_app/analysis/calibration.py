"""Cluster-level calibration: how often a healthy scan shows a cluster this large.

A Z map thresholded at -1.65 flags ~5 % of any brain's gray matter, healthy or not, so
the existence of clusters says little; their size does. The group level therefore
builds a *null* from the controls (docs/architecture.md, "Statistics"): each control's
map is computed against a normative model fitted on the *other* controls
(leave-one-out), clustered with the participant workflow's rule, and the clusters' masses
are kept (``loo_cluster_null``, written to ``group/normative/cluster_null.json``). A
participant's cluster of mass ``m`` then gets

- ``expected_fp``: the mean number of clusters with mass >= ``m`` per healthy scan
  (null clusters >= m / number of null scans);
- ``p_fwe``: the family-wise (per-scan) p-value ``(1 + #scans whose largest cluster
  has mass >= m) / (1 + n_scans)``;
- ``significant``: ``expected_fp`` < ``MAX_EXPECTED_FP`` (0.25): a healthy scan is
  expected to show fewer than 0.25 clusters this massive, so the expected number of
  significant clusters in a healthy scan is below 0.25 (by exchangeability).

The rule was chosen on phantoms with atrophy and regional metabolic variation (8 patients,
8 held-out controls, docs/benchmarks.md): the family-wise rule (``p_fwe`` <= 1/(n+1),
more massive than every null scan's largest cluster) kept 0.12 false-positive clusters per
control but found only 38 % of the patients' lesions in the top 3; ``expected_fp`` < 0.25
kept 0.12 and found 62 %; < 1 found 75 % with 1.0.
Mass is the cluster statistic of the ranking (sum of |Z - threshold| over the cluster,
``analysis.clusters``). Maps without a null (self-referenced Z, OC-SVM) are
*uncalibrated*, and their sidecars and reports say so in plain words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ..config import GM_THRESHOLD, MIN_CLUSTER_MM3, Z_FWHM_MM, Z_THRESHOLD
from .clusters import CONNECTIVITY, find_clusters

if TYPE_CHECKING:
    from .normative import ControlMaps

NULL_FILE = "cluster_null.json"
MAX_EXPECTED_FP = 0.25
"""A cluster is significant when healthy scans show fewer clusters this massive per scan."""
CALIBRATED_MAPS = ("hypometabolism", "controlpet")
LOO_GROUP = 16
"""Controls whose leave-one-out models are fitted together (``zscore.loo_normative_voxels``:
one sort of the controls' values per group; (16, N) float64 statistics x 2 held)."""
UNCALIBRATED = (
    "uncalibrated: no null distribution of cluster sizes from healthy controls was "
    "available, so these clusters are not findings by themselves (a healthy scan also "
    "shows clusters at this threshold); fit the group level on controls to calibrate them"
)


def loo_cluster_null(
    pets: Sequence[np.ndarray],
    pseudos: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    gms: Sequence[np.ndarray],
    affine: np.ndarray,
    *,
    histogram_matching: bool = False,
    threshold: float = Z_THRESHOLD,
    min_volume_mm3: float = MIN_CLUSTER_MM3,
    connectivity: int = CONNECTIVITY,
    coverages: Sequence[np.ndarray] | None = None,
    fwhm_mm: float = Z_FWHM_MM,
) -> dict:
    """Leave-one-out cluster null of the two control-referenced maps (SUVR, MNI), the
    controls given as lists of full volumes (GM probability maps ``gms``):
    ``loo_cluster_null_maps`` of their ``normative.control_maps`` (analysis smoothing
    ``fwhm_mm``, mm)."""
    from .normative import control_maps

    views = None if coverages is None else list(coverages)
    maps = control_maps(
        list(pets),
        list(pseudos),
        list(masks),
        views,
        histogram_matching,
        fwhm_mm,
        nib.affines.voxel_sizes(affine),
    )
    gm = np.stack([(np.asarray(g) > GM_THRESHOLD)[maps.voxels] for g in gms])
    return loo_cluster_null_maps(
        maps,
        gm,
        affine,
        threshold=threshold,
        min_volume_mm3=min_volume_mm3,
        connectivity=connectivity,
    )


def loo_cluster_null_maps(
    maps: ControlMaps,
    gm: np.ndarray,
    affine: np.ndarray,
    *,
    threshold: float = Z_THRESHOLD,
    min_volume_mm3: float = MIN_CLUSTER_MM3,
    connectivity: int = CONNECTIVITY,
    workers: int = 1,
) -> dict:
    """Leave-one-out cluster null of the two control-referenced maps (SUVR, MNI grid of
    ``affine``) from the controls' ``normative.ControlMaps``; ``gm`` (n, N) bool: each
    control's GM (probability > ``GM_THRESHOLD``) at ``maps.voxels``.

    For each control: the control-referenced Z of its residual (``hypometabolism``) and
    of its PET (``controlpet``) against normative models fitted on the other controls
    (``zscore.loo_normative_voxels``: ``fit_normative_voxels`` without it, as
    ``normative.fit_from_maps``, from one sort per voxel), clustered in its
    GM with the given rule. With fields of view (``maps.view``) a control enters the
    others' models only inside its own and its own map is clustered only inside it and
    their model's support, as the participant workflow does. One control's volumes are
    rebuilt at a time; with ``workers`` >= 2 the two maps are built in two threads (same
    result). Returns the JSON-ready null: per map the list of cluster masses of every
    scan (control order), plus the rule.
    """
    from .compact import to_volume
    from .zscore import _min_covered, control_referenced_z, loo_normative_voxels

    n = len(maps.pet)
    if n < 3:
        raise ValueError(f"a leave-one-out null needs at least 3 controls, got {n}")
    vox = maps.voxels
    grid_mask = maps.grid_mask()
    zooms = nib.affines.voxel_sizes(affine)
    count = None if maps.view is None else maps.view.sum(axis=0)

    def one_map(data: np.ndarray) -> list[list[float]]:
        masses = []
        for first in range(0, n, LOO_GROUP):
            group = range(first, min(n, first + LOO_GROUP))
            fits = loo_normative_voxels(
                data, vox, grid_mask, list(group), zooms=zooms, valid=maps.view
            )
            for i, mean, sd in fits:
                inside = maps.mask
                if maps.view is not None:
                    inside = (
                        inside & maps.view[i] & ((count - maps.view[i]) >= _min_covered(n - 1))
                    )
                gm_i = to_volume(np.asarray(gm[i]) & inside, vox, bool)
                inside_grid = to_volume(inside, vox, bool)
                z = control_referenced_z(
                    to_volume(data[i], vox, np.float64), mean, sd, inside_grid
                )
                del mean, sd
                _, clusters = find_clusters(
                    z,
                    gm_i,
                    affine,
                    threshold=threshold,
                    min_volume_mm3=min_volume_mm3,
                    connectivity=connectivity,
                )
                masses.append(sorted((round(c.mass, 4) for c in clusters), reverse=True))
        return masses

    data = {"hypometabolism": maps.residual, "controlpet": maps.z_pet}
    if workers >= 2:  # the two maps in two threads (sorts, filters and labels release the GIL)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2, thread_name_prefix="cluster-null") as pool:
            done = dict(
                zip(
                    CALIBRATED_MAPS,
                    pool.map(one_map, [data[k] for k in CALIBRATED_MAPS]),
                    strict=True,
                )
            )
    else:
        done = {k: one_map(data[k]) for k in CALIBRATED_MAPS}
    scans: dict[str, list[list[float]]] = {k: done[k] for k in CALIBRATED_MAPS}
    return {
        "Description": "Leave-one-out cluster masses of healthy controls (each control "
        "against the normative model of the others), per map; analysis/calibration.py",
        "n_scans": n,
        "rule": {
            "threshold": threshold,
            "min_volume_mm3": min_volume_mm3,
            "connectivity": connectivity,
            "gm_threshold": GM_THRESHOLD,
            "statistic": "mass",
            "z_fwhm_mm": maps.fwhm_mm,
        },
        "scans": scans,
    }


def save_null(null: dict, folder: str | Path) -> Path:
    """Write ``null`` to ``<folder>/cluster_null.json``."""
    path = Path(folder) / NULL_FILE
    path.write_text(json.dumps(null, indent=1) + "\n")
    return path


def load_null(folder: str | Path | None, desc: str, rule: dict) -> list[list[float]] | None:
    """The per-scan cluster masses of map ``desc`` in ``folder``'s null, or None when
    there is no null, it lacks ``desc`` or it was built with another cluster rule."""
    if folder is None:
        return None
    try:
        null = json.loads((Path(folder) / NULL_FILE).read_text())
        scans = null["scans"][desc]
        built = null["rule"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = all(
        np.isclose(float(built.get(k, np.nan)), float(v)) for k, v in rule.items() if k in built
    )
    return scans if same and len(scans) >= 1 else None


def calibrate(mass: float, scans: list[list[float]]) -> dict[str, float | bool]:
    """``expected_fp``, ``p_fwe`` and ``significant`` of a cluster of ``mass`` against the
    null ``scans`` (each a list of cluster masses; see the module docstring)."""
    n = len(scans)
    all_masses = np.array([m for scan in scans for m in scan], dtype=np.float64)
    maxima = np.array([max(scan) if scan else 0.0 for scan in scans], dtype=np.float64)
    expected_fp = float((all_masses >= mass).sum() / n)
    p_fwe = float((1 + (maxima >= mass).sum()) / (1 + n))
    return {
        "expected_fp": round(expected_fp, 4),
        "p_fwe": round(p_fwe, 4),
        "significant": bool(expected_fp < MAX_EXPECTED_FP),
    }


def describe(scans: list[list[float]] | None) -> str:
    """The plain-words calibration statement of a cluster table's sidecar and report."""
    if scans is None:
        return UNCALIBRATED
    n = len(scans)
    rate = np.mean([any(s) for s in scans]) if scans else 0.0
    return (
        f"calibrated on {n} healthy controls (leave-one-out): {100 * rate:.0f} % of them "
        "showed at least one cluster at this threshold; expected_fp is the number of "
        "clusters at least as massive per healthy scan, and a cluster is significant when "
        f"expected_fp < {MAX_EXPECTED_FP:g}"
    )


__all__ = [
    "CALIBRATED_MAPS",
    "MAX_EXPECTED_FP",
    "NULL_FILE",
    "UNCALIBRATED",
    "calibrate",
    "describe",
    "load_null",
    "loo_cluster_null",
    "loo_cluster_null_maps",
    "save_null",
]
