"""Lesion detection metrics against ground truth (phantom cohort or clinical masks).

Inputs are integer label images on one common grid (``petsynth-evaluate`` uses the native
T1w grid: the ``space-T1w`` ``dseg`` cluster maps as written, the truth lesion masks
resampled to that grid with nearest neighbour when they differ): ``dseg`` holds clusters
1..n with 1 = top rank (``clusters.py``), ``lesion_labels`` lesions 1..m (the phantom's
``desc-lesion_mask``), 0 = background.

Metrics follow Zotova et al. 2021 and Chen et al. 2025: the detection sensitivity as a
function of the number of clusters considered per patient and the mean rank of the first
cluster that hits a lesion (Zotova et al. 2021, Fig. 4); the detection rate and the lobe
localization accuracy among detected patients (Chen et al. 2025, section 3.2); and false
positives as the mean number of clusters per healthy control. A cluster "hits" a lesion
when they share at least ``MIN_OVERLAP_VOXELS`` voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .clusters import write_tsv

MIN_OVERLAP_VOXELS = 1
"""Voxels a cluster must share with a lesion to hit it (1: any overlap, the lenient
reading of "a cluster in the lesion region" used by both papers)."""
SENSITIVITY_MAX_K = 10
"""Largest number of clusters per patient on the sensitivity curve."""
SUMMARY_TOP_K = (1, 3, 5)
"""Cluster counts k reported as ``sensitivity_top<k>`` in ``summarize``."""


def _labels(image: Any, name: str) -> np.ndarray:
    data = np.asanyarray(image.dataobj) if hasattr(image, "dataobj") else np.asarray(image)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.rint(data)):
            raise ValueError(f"{name} must hold integer labels")
    elif data.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer labels, got dtype {data.dtype}")
    if np.any(data < 0):
        raise ValueError(f"{name} has negative labels")
    return data.astype(np.int64)


def _pair(dseg: Any, lesion_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    clusters = _labels(dseg, "dseg")
    lesions = _labels(lesion_labels, "lesion_labels")
    if clusters.shape != lesions.shape:
        raise ValueError(
            f"dseg {clusters.shape} and lesion_labels {lesions.shape} are not on one grid"
        )
    return clusters, lesions


def count_clusters(dseg: Any) -> int:
    """Number of distinct nonzero cluster labels in a dseg map."""
    return int(np.count_nonzero(np.unique(_labels(dseg, "dseg"))))


def match_clusters(
    dseg: Any, lesion_labels: Any, min_overlap_voxels: int = MIN_OVERLAP_VOXELS
) -> list[dict[str, Any]]:
    """Per cluster, in rank order, the lesions it hits.

    Rows: ``rank`` (the dseg label), ``n_voxels``, ``overlap_voxels`` ({lesion: shared
    voxels}, all overlaps), ``hit_lesions`` (lesions sharing at least
    ``min_overlap_voxels``, largest overlap first) and ``hit`` (any lesion hit).
    """
    clusters, lesions = _pair(dseg, lesion_labels)
    ranks, sizes = np.unique(clusters[clusters > 0], return_counts=True)
    both = (clusters > 0) & (lesions > 0)
    pairs, counts = np.unique(
        np.stack([clusters[both], lesions[both]]), axis=1, return_counts=True
    )
    overlaps: dict[int, dict[int, int]] = {int(r): {} for r in ranks}
    for (rank, lesion), count in zip(pairs.T, counts, strict=True):
        overlaps[int(rank)][int(lesion)] = int(count)
    rows = []
    for rank, size in zip(ranks, sizes, strict=True):
        overlap = overlaps[int(rank)]
        hits = sorted(
            (les for les, n in overlap.items() if n >= min_overlap_voxels),
            key=lambda les: (-overlap[les], les),
        )
        rows.append(
            {
                "rank": int(rank),
                "n_voxels": int(size),
                "overlap_voxels": overlap,
                "hit_lesions": hits,
                "hit": bool(hits),
            }
        )
    return rows


def lesion_best_ranks(
    dseg: Any, lesion_labels: Any, min_overlap_voxels: int = MIN_OVERLAP_VOXELS
) -> dict[int, int | None]:
    """For each lesion label, the best (lowest) rank of a cluster hitting it, else None."""
    clusters, lesions = _pair(dseg, lesion_labels)
    return _best_ranks(match_clusters(clusters, lesions, min_overlap_voxels), lesions)


def _best_ranks(rows: list[dict[str, Any]], lesions: np.ndarray) -> dict[int, int | None]:
    best: dict[int, int | None] = {int(v): None for v in np.unique(lesions[lesions > 0])}
    for row in rows:  # rank order
        for lesion in row["hit_lesions"]:
            if best[lesion] is None:
                best[lesion] = row["rank"]
    return best


def _same_lobe(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().lower() == b.strip().lower()


def lobe_key(hemisphere: str, lobe: str) -> str:
    """Hemisphere-and-lobe label such as "L temporal" (Chen et al. score 8 such regions)."""
    return f"{hemisphere} {lobe}"


def evaluate_patient(
    dseg: Any,
    lesion_labels: Any,
    lesion_lobes: Mapping[int, str] | None = None,
    cluster_lobes: Mapping[int, str] | None = None,
    min_overlap_voxels: int = MIN_OVERLAP_VOXELS,
) -> dict[str, Any]:
    """Detection outcome of one patient.

    ``lesion_lobes`` maps lesion label -> lobe (truth ``lesions.tsv``), ``cluster_lobes``
    maps cluster rank -> lobe of its peak (``cluster_table``); pass ``lobe_key(hemisphere,
    lobe)`` strings in both to score hemisphere and lobe together (compared
    case-insensitively). Returns ``n_clusters``, ``n_lesions``, ``first_hit_rank`` (rank
    of the best cluster hitting any lesion, None if missed), ``first_hit_lesions`` (the
    lesions it hits), ``hit_lesions`` (lesions hit by any cluster), ``lesion_ranks``
    ({lesion: best rank or None}) and ``lobe_correct``: whether the first hitting
    cluster's lobe is the lobe of a lesion it hits (None when missed or lobes not given).
    """
    clusters, lesions = _pair(dseg, lesion_labels)
    rows = match_clusters(clusters, lesions, min_overlap_voxels)
    ranks = _best_ranks(rows, lesions)
    first = next((row for row in rows if row["hit"]), None)
    lobe_correct = None
    if first is not None and lesion_lobes is not None and cluster_lobes is not None:
        found = cluster_lobes.get(first["rank"])
        lobe_correct = any(
            _same_lobe(found, lesion_lobes.get(les)) for les in first["hit_lesions"]
        )
    return {
        "n_clusters": len(rows),
        "n_lesions": len(ranks),
        "first_hit_rank": None if first is None else first["rank"],
        "first_hit_lesions": [] if first is None else list(first["hit_lesions"]),
        "hit_lesions": sorted(les for les, rank in ranks.items() if rank is not None),
        "lesion_ranks": ranks,
        "lobe_correct": lobe_correct,
    }


def _check_ranks(first_hit_ranks: Sequence[int | None]) -> list[int | None]:
    ranks = list(first_hit_ranks)
    if not ranks:
        raise ValueError("no patients")
    if any(r is not None and r < 1 for r in ranks):
        raise ValueError("ranks start at 1")
    return ranks


def sensitivity_curve(
    first_hit_ranks: Sequence[int | None], max_k: int = SENSITIVITY_MAX_K
) -> list[tuple[int, float]]:
    """``[(k, sensitivity)]`` for k = 1..max_k: fraction of patients hit within the top k.

    ``first_hit_ranks`` has one entry per patient (``evaluate_patient``'s
    ``first_hit_rank``, None = missed). Seed 001, Fig. 4.
    """
    ranks = _check_ranks(first_hit_ranks)
    n = len(ranks)
    return [
        (k, sum(1 for r in ranks if r is not None and r <= k) / n) for k in range(1, max_k + 1)
    ]


def detection_rate(first_hit_ranks: Sequence[int | None]) -> float:
    """Fraction of patients with any cluster hitting a lesion (any rank)."""
    ranks = _check_ranks(first_hit_ranks)
    return sum(r is not None for r in ranks) / len(ranks)


def mean_rank(first_hit_ranks: Sequence[int | None]) -> float | None:
    """Mean first-hit rank over detected patients (None if none is detected)."""
    found = [r for r in _check_ranks(first_hit_ranks) if r is not None]
    return float(np.mean(found)) if found else None


def lobe_accuracy(per_patient: Sequence[Mapping[str, Any]]) -> float | None:
    """Fraction of detected patients with ``lobe_correct`` (None if none is scorable)."""
    scored = [p["lobe_correct"] for p in per_patient if p.get("lobe_correct") is not None]
    return sum(bool(v) for v in scored) / len(scored) if scored else None


def false_positive_clusters(dseg_controls: Sequence[Any]) -> float:
    """Mean number of clusters per healthy control (all of them are false positives)."""
    counts = [count_clusters(d) for d in dseg_controls]
    if not counts:
        raise ValueError("no controls")
    return float(np.mean(counts))


def _control_count(control: Any) -> int:
    if isinstance(control, Mapping):
        return int(control["n_clusters"])
    if np.ndim(control) == 0:
        return int(control)
    return count_clusters(control)


def summarize(
    per_patient: Sequence[Mapping[str, Any]], per_control: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Cohort summary: ``sensitivity_top{1,3,5}``, ``detection_rate``, ``mean_rank``,
    ``lobe_accuracy``, ``fp_per_control`` and the group sizes.

    ``per_patient``: ``evaluate_patient`` results; ``per_control``: the controls' dseg
    maps, or their cluster counts (ints), or dicts with ``n_clusters``; None or empty
    gives ``fp_per_control`` None.
    """
    ranks = [p["first_hit_rank"] for p in per_patient]
    curve = dict(sensitivity_curve(ranks, max(SUMMARY_TOP_K)))
    counts = [_control_count(c) for c in (per_control or [])]
    return {
        "n_patients": len(ranks),
        "n_controls": len(counts),
        **{f"sensitivity_top{k}": curve[k] for k in SUMMARY_TOP_K},
        "detection_rate": detection_rate(ranks),
        "mean_rank": mean_rank(ranks),
        "lobe_accuracy": lobe_accuracy(per_patient),
        "fp_per_control": float(np.mean(counts)) if counts else None,
    }


def plot_sensitivity_curve(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    title: str = "Lesion detection",
) -> Path:
    """Plot sensitivity vs clusters per patient (one line per method name) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    max_k = 1
    for name, curve in curves.items():
        ks = [k for k, _ in curve]
        ax.plot(ks, [s for _, s in curve], marker="o", label=name)
        max_k = max([max_k, *ks])
    ax.set_xlabel("clusters considered per patient (top k)")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(0.5, max_k + 0.5)
    ax.set_xticks(range(1, max_k + 1))
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    if curves:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


__all__ = [
    "MIN_OVERLAP_VOXELS",
    "SENSITIVITY_MAX_K",
    "SUMMARY_TOP_K",
    "count_clusters",
    "detection_rate",
    "evaluate_patient",
    "false_positive_clusters",
    "lesion_best_ranks",
    "lobe_accuracy",
    "lobe_key",
    "match_clusters",
    "mean_rank",
    "plot_sensitivity_curve",
    "sensitivity_curve",
    "summarize",
    "write_tsv",
]
