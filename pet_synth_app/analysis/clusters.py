"""Suprathreshold clusters of a Z (or anomaly score) map, ranked, labelled and tabulated.

Chen et al. 2025 (section 2.2) keep voxels with Z < -1.65 (one-sided p = 0.05) inside
grey matter and clusters larger than 1500; here the extent is in mm³, so the rule is the
same at any voxel size. Clusters are ranked (by mass unless configured) and the label
image carries the rank: label 1 = top-ranked cluster, as in the ``dseg`` output and the
``clusters.tsv`` table (docs/outputs.md).

Definitions, for the lower tail (``tail="lower"``: voxels with ``z < threshold``); the
upper tail (``z > threshold``, e.g. anomaly scores) mirrors them:

- excess of a voxel: ``threshold - z`` (> 0), how far it goes beyond the threshold;
- mass: sum of the excesses over the cluster (the "sum of |Z| beyond threshold");
- peak: the most extreme z (minimum for the lower tail), at the first such voxel in C
  order; mean: the mean z over the cluster;
- extent: a cluster is kept when ``n_voxels * voxel_volume >= min_volume_mm3`` (voxel
  volume = |det| of the affine's 3x3 part, mm³), so 1500 mm³ is 1500 voxels at 1 mm and
  188 voxels at 2 mm (187.5 rounded up).

Ranking ties are broken by larger size, then by the lower label index of
``scipy.ndimage.label`` (scan order), so the order is deterministic. Coordinates are world
mm from the map's affine; atlas labels assume that world is MNI152NLin2009aSym.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..config import MIN_CLUSTER_MM3, RANK_BY, RANK_METHODS, Z_THRESHOLD
from . import atlas as atlas_lib

CONNECTIVITY = 26
"""Voxel neighbourhood for clusters: 26 (faces, edges, corners), 18 or 6 (faces)."""
TAIL = "lower"
"""Which side of the threshold is suprathreshold: "lower" (Z maps) or "upper" (scores)."""
TAILS = ("lower", "upper")
_STRUCTURE_RANK = {6: 1, 18: 2, 26: 3}
_VOLUME_RTOL = 1e-9  # float slack on the extent rule (|det| of a 1 mm affine may be 0.99..)

CLUSTER_COLUMNS = (
    "rank",
    "size_mm3",
    "peak_z",
    "mean_z",
    "peak_x",
    "peak_y",
    "peak_z_mm",
    "hemisphere",
    "lobe",
    "region",
    "mass",
    "n_voxels",
)
"""Column order of ``clusters.tsv``; caller-supplied extra columns follow."""
CLUSTER_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "rank": {"Description": "Cluster rank (1 = top); equals the label value in the dseg map"},
    "size_mm3": {"Description": "Cluster volume", "Units": "mm^3"},
    "peak_z": {"Description": "Most extreme statistic in the cluster (Z or score)"},
    "mean_z": {"Description": "Mean statistic over the cluster"},
    "peak_x": {"Description": "Peak x, MNI152NLin2009aSym", "Units": "mm"},
    "peak_y": {"Description": "Peak y, MNI152NLin2009aSym", "Units": "mm"},
    "peak_z_mm": {"Description": "Peak z, MNI152NLin2009aSym", "Units": "mm"},
    "hemisphere": {"Description": "L (x <= -1 mm), R (x >= 1 mm) or M, at the peak"},
    "lobe": {"Description": "Lobe of the peak's atlas region (analysis.atlas)"},
    "region": {"Description": "Atlas region at the peak (Harvard-Oxford, else AAL)"},
    "mass": {"Description": "Sum over the cluster of the excess beyond the threshold"},
    "n_voxels": {"Description": "Number of voxels in the cluster"},
}
"""JSON sidecar content for ``clusters.tsv``."""
T1W_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "peak_x_t1w": {"Description": "Peak x in the participant's T1w space", "Units": "mm"},
    "peak_y_t1w": {"Description": "Peak y in the participant's T1w space", "Units": "mm"},
    "peak_z_t1w_mm": {"Description": "Peak z in the participant's T1w space", "Units": "mm"},
}
"""The columns the participant workflow appends: each cluster's peak in native T1w mm."""
CALIBRATION_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "expected_fp": {
        "Description": "Clusters at least this massive per healthy control scan (leave-one-out "
        "null of the group level; n/a: uncalibrated map)"
    },
    "p_fwe": {
        "Description": "Family-wise p-value: share of healthy control scans whose largest "
        "cluster is at least this massive, (1 + count) / (1 + n) (n/a: uncalibrated map)"
    },
    "significant": {
        "Description": "True when expected_fp < 0.25 (analysis.calibration.MAX_EXPECTED_FP; "
        "n/a: uncalibrated map)"
    },
}
"""The calibration columns of ``clusters.tsv`` (``analysis.calibration``)."""


def column_help(column: str, sidecar: dict | None = None) -> str:
    """One-line description of a ``clusters.tsv`` column, with its units: from the
    table's JSON ``sidecar`` when it describes the column, else the defaults above."""
    entry = (sidecar or {}).get(column)
    if not (isinstance(entry, dict) and entry.get("Description")):
        entry = {
            **CLUSTER_COLUMN_DESCRIPTIONS,
            **T1W_COLUMN_DESCRIPTIONS,
            **CALIBRATION_COLUMN_DESCRIPTIONS,
        }.get(column, {})
    text, unit = entry.get("Description", ""), entry.get("Units")
    return f"{text} ({unit})" if unit and unit not in text else text


@dataclass(frozen=True)
class Cluster:
    """One ranked cluster. ``label`` is its value in the label image (= ``rank``)."""

    rank: int
    label: int
    n_voxels: int
    size_mm3: float
    peak_z: float
    mean_z: float
    mass: float
    peak_ijk: tuple[int, int, int]
    peak_mm: tuple[float, float, float]
    center_of_mass_mm: tuple[float, float, float]  # unweighted centroid of its voxels


def _data(image: Any) -> np.ndarray:
    return np.asanyarray(image.dataobj) if hasattr(image, "dataobj") else np.asarray(image)


def voxel_volume_mm3(affine: Any) -> float:
    """Voxel volume (mm³) of a 4x4 voxel-to-world affine: |det| of its 3x3 part."""
    det = np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])
    return float(round(abs(det), 9))  # drop float noise: 2 mm gives 8, not 7.999999999999


def _world(affine: np.ndarray, ijk: Sequence[float]) -> tuple[float, float, float]:
    xyz = affine[:3, :3] @ np.asarray(ijk, dtype=np.float64) + affine[:3, 3]
    return (float(xyz[0]), float(xyz[1]), float(xyz[2]))


def _peaks(raw: np.ndarray, excess: np.ndarray, ids: np.ndarray) -> list[tuple[int, int, int]]:
    """Voxel index of the largest excess of each cluster in ``ids`` (first in C order)."""
    keep = np.zeros(int(raw.max()) + 1, dtype=bool)
    keep[ids] = True
    flat = np.flatnonzero(keep[raw])
    lab = raw.ravel()[flat]
    order = np.lexsort((flat, -excess.ravel()[flat], lab))
    _, first = np.unique(lab[order], return_index=True)  # ids are sorted ascending
    coords = np.unravel_index(flat[order[first]], raw.shape)
    return [(int(i), int(j), int(k)) for i, j, k in zip(*coords, strict=True)]


def find_clusters(
    z: Any,
    mask: Any,
    affine: Any = None,
    threshold: float = Z_THRESHOLD,
    min_volume_mm3: float = MIN_CLUSTER_MM3,
    rank_by: str = RANK_BY,
    connectivity: int = CONNECTIVITY,
    tail: str = TAIL,
) -> tuple[np.ndarray, list[Cluster]]:
    """Ranked suprathreshold clusters of a statistic map.

    ``z``: 3D Z (or score) map, array or image; ``mask``: where clusters may lie (e.g.
    GM), nonzero = inside, None = everywhere; ``affine``: voxel-to-world (mm), taken from
    ``z`` when it is an image. Voxels with ``z < threshold`` (``tail="lower"``) or ``z >
    threshold`` (``"upper"``) inside the mask are grouped with ``connectivity`` 6, 18 or
    26 and kept when at least ``min_volume_mm3`` (mm³) large; see the module docstring
    for mass, peak, extent and tie rules. ``rank_by``: "mass", "size" (voxels) or "peak"
    (most extreme value). Returns ``(labels, clusters)``: an int16 image with 1 = top
    rank, 0 = background, and the clusters in rank order.
    """
    data = np.asarray(_data(z), dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D map, got shape {data.shape}")
    if affine is None:
        if not hasattr(z, "affine"):
            raise ValueError("affine is required when z is a plain array")
        affine = z.affine
    affine = np.asarray(affine, dtype=np.float64)
    if rank_by not in RANK_METHODS:
        raise ValueError(f"rank_by must be one of {RANK_METHODS}, got {rank_by!r}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    if connectivity not in _STRUCTURE_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")

    inside = np.ones(data.shape, bool) if mask is None else _data(mask) != 0
    if inside.shape != data.shape:
        raise ValueError(f"mask shape {inside.shape} does not match map shape {data.shape}")
    sign = -1.0 if tail == "lower" else 1.0
    with np.errstate(invalid="ignore"):
        excess = sign * (data - threshold)  # > 0 beyond the threshold
        supra = inside & np.isfinite(data) & (excess > 0)
    labels = np.zeros(data.shape, dtype=np.int16)
    structure = ndimage.generate_binary_structure(3, _STRUCTURE_RANK[connectivity])
    raw, n_raw = ndimage.label(supra, structure=structure)
    if n_raw == 0:
        return labels, []

    flat = raw.ravel()
    sizes = np.bincount(flat, minlength=n_raw + 1)
    voxvol = voxel_volume_mm3(affine)
    ids = np.arange(1, n_raw + 1)
    ids = ids[sizes[1:] * voxvol >= min_volume_mm3 * (1.0 - _VOLUME_RTOL)]
    if ids.size == 0:
        return labels, []
    if ids.size > np.iinfo(np.int16).max:
        raise ValueError(f"{ids.size} clusters do not fit an int16 label image")
    mass = np.bincount(flat, weights=np.where(supra, excess, 0.0).ravel(), minlength=n_raw + 1)
    zsum = np.bincount(flat, weights=np.where(supra, data, 0.0).ravel(), minlength=n_raw + 1)
    peaks = _peaks(raw, excess, ids)
    centres = ndimage.center_of_mass(supra, raw, ids)

    stats = []
    for pos, label in enumerate(ids):
        peak_z = float(data[peaks[pos]])
        primary = {
            "mass": float(mass[label]),
            "size": float(sizes[label]),
            "peak": sign * (peak_z - threshold),
        }[rank_by]
        stats.append((-primary, -int(sizes[label]), int(label), pos))
    stats.sort()

    lut = np.zeros(n_raw + 1, dtype=np.int16)
    clusters = []
    for rank, (_, _, label, pos) in enumerate(stats, start=1):
        lut[label] = rank
        n = int(sizes[label])
        clusters.append(
            Cluster(
                rank=rank,
                label=rank,
                n_voxels=n,
                size_mm3=n * voxvol,
                peak_z=float(data[peaks[pos]]),
                mean_z=float(zsum[label] / n),
                mass=float(mass[label]),
                peak_ijk=peaks[pos],
                peak_mm=_world(affine, peaks[pos]),
                center_of_mass_mm=_world(affine, centres[pos]),
            )
        )
    labels = lut[raw]
    return labels, clusters


def _hemisphere(x_mm: float) -> str:
    if x_mm <= -atlas_lib.MIDLINE_MM:
        return "L"
    if x_mm >= atlas_lib.MIDLINE_MM:
        return "R"
    return "M"


def _aal_label(xyz: tuple[float, float, float]) -> dict[str, str]:
    """AAL region of the voxel containing an MNI coordinate ("unknown" if unlabelled)."""
    img, names = atlas_lib.load_atlas("aal")
    ijk = np.rint(np.linalg.solve(img.affine, np.append(xyz, 1.0))[:3]).astype(int)
    region = "unknown"
    if np.all(ijk >= 0) and np.all(ijk < np.asarray(img.shape[:3])):
        region = names.get(int(np.asarray(img.dataobj)[tuple(ijk)]), "unknown")
    return {
        "hemisphere": _hemisphere(xyz[0]),
        "region": region,
        "lobe": atlas_lib.lobe_from_region(region),
    }


def cluster_table(
    clusters: Sequence[Cluster],
    atlas: str | None = "harvard_oxford",
    extra_coords: dict[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``clusters.tsv`` (``CLUSTER_COLUMNS``), one per cluster in rank order.

    Peak coordinates are the cluster's world mm, which must be MNI152NLin2009aSym (cluster
    the MNI map). ``atlas`` labels the peak: "harvard_oxford" uses
    ``atlas.label_coordinate`` (Harvard-Oxford, else AAL, else nearest label within 5 mm);
    "aal" the AAL label of the peak voxel only; None skips the atlas (hemisphere from x,
    lobe and region None). ``extra_coords`` adds columns, one value per cluster in rank
    order (e.g. ``{"peak_x_t1w": [...], ...}``).
    """
    if atlas not in (*atlas_lib.ATLAS_NAMES, None):
        raise ValueError(f"atlas must be one of {atlas_lib.ATLAS_NAMES} or None, got {atlas!r}")
    extra = dict(extra_coords or {})
    for name, values in extra.items():
        if len(values) != len(clusters):
            raise ValueError(
                f"extra column {name!r} has {len(values)} values for {len(clusters)} clusters"
            )
    rows = []
    for pos, cluster in enumerate(clusters):
        x, y, z = cluster.peak_mm
        if atlas == "harvard_oxford":
            info: dict[str, Any] = atlas_lib.label_coordinate(cluster.peak_mm)
        elif atlas == "aal":
            info = _aal_label(cluster.peak_mm)
        else:
            info = {"hemisphere": _hemisphere(x), "lobe": None, "region": None}
        row = {
            "rank": cluster.rank,
            "size_mm3": round(cluster.size_mm3, 3),
            "peak_z": round(cluster.peak_z, 4),
            "mean_z": round(cluster.mean_z, 4),
            "peak_x": round(x, 2),
            "peak_y": round(y, 2),
            "peak_z_mm": round(z, 2),
            "hemisphere": info["hemisphere"],
            "lobe": info["lobe"],
            "region": info["region"],
            "mass": round(cluster.mass, 4),
            "n_voxels": cluster.n_voxels,
        }
        row.update({name: values[pos] for name, values in extra.items()})
        rows.append(row)
    return rows


def _format(value: Any) -> str:
    """One TSV cell: None/NaN -> n/a, bools lower case, floats up to 10 digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{float(value):.10g}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, list | tuple):
        return ",".join(_format(v) for v in value) if value else "n/a"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    text = " ".join(str(value).split())
    return text if text else "n/a"


def write_tsv(
    rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Write rows as a BIDS-style TSV (header always, "n/a" for missing); return the path.

    ``columns`` defaults to the keys of the rows in order of first appearance; keys not in
    ``columns`` are dropped, missing ones are "n/a". Lists are comma-joined.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_format(row.get(c)) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cluster_tsv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write ``cluster_table`` rows: ``CLUSTER_COLUMNS`` then any extra columns, in order.

    The header is written even when there are no clusters.
    """
    extra = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in CLUSTER_COLUMNS]
    return write_tsv(rows, path, [*CLUSTER_COLUMNS, *extra])


__all__ = [
    "CLUSTER_COLUMNS",
    "CLUSTER_COLUMN_DESCRIPTIONS",
    "CONNECTIVITY",
    "MIN_CLUSTER_MM3",
    "RANK_BY",
    "RANK_METHODS",
    "TAIL",
    "TAILS",
    "Z_THRESHOLD",
    "Cluster",
    "cluster_table",
    "find_clusters",
    "voxel_volume_mm3",
    "write_cluster_tsv",
    "write_tsv",
]
