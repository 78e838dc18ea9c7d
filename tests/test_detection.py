"""Detection metrics against ground-truth lesion masks (analysis.detection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pet_synth_app.analysis import detection as det


def _patient() -> tuple[np.ndarray, np.ndarray]:
    """Clusters 1 (false positive), 2 (hits lesion 1), 3 (hits lesions 1 and 2)."""
    dseg = np.zeros((10, 10, 10), np.int16)
    lesions = np.zeros((10, 10, 10), np.uint8)
    dseg[0:2, 0:2, 0:2] = 1
    lesions[4:8, 4:8, 4:8] = 1
    lesions[8:10, 0:3, 0:3] = 2
    lesions[0:2, 8:10, 8:10] = 3  # missed
    dseg[4:6, 4:6, 4:6] = 2  # 8 voxels inside lesion 1
    dseg[7, 7, 7:10] = 3  # 1 voxel in lesion 1 (7,7,7)
    dseg[8:10, 0:3, 0] = 3  # 6 voxels in lesion 2 (not connected; fine for the test)
    return dseg, lesions


def test_match_clusters_and_best_ranks() -> None:
    dseg, lesions = _patient()
    rows = det.match_clusters(dseg, lesions)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["n_voxels"] for r in rows] == [8, 8, 9]
    assert [r["hit"] for r in rows] == [False, True, True]
    assert rows[1]["overlap_voxels"] == {1: 8}
    assert rows[2]["overlap_voxels"] == {1: 1, 2: 6}
    assert rows[2]["hit_lesions"] == [2, 1]  # largest overlap first
    assert det.lesion_best_ranks(dseg, lesions) == {1: 2, 2: 3, 3: None}
    # A stricter minimum overlap drops the 1-voxel touch.
    strict = det.match_clusters(dseg, lesions, min_overlap_voxels=2)
    assert strict[2]["hit_lesions"] == [2]
    with pytest.raises(ValueError, match="one grid"):
        det.match_clusters(dseg, lesions[:-1])


def test_evaluate_patient_first_hit_and_lobe() -> None:
    dseg, lesions = _patient()
    lesion_lobes = {1: "L temporal", 2: "R frontal", 3: "L occipital"}
    result = det.evaluate_patient(
        dseg, lesions, lesion_lobes, cluster_lobes={1: "R parietal", 2: "l temporal"}
    )
    assert result["n_clusters"] == 3 and result["n_lesions"] == 3
    assert result["first_hit_rank"] == 2 and result["first_hit_lesions"] == [1]
    assert result["hit_lesions"] == [1, 2]
    assert result["lesion_ranks"] == {1: 2, 2: 3, 3: None}
    assert result["lobe_correct"] is True
    wrong = det.evaluate_patient(dseg, lesions, lesion_lobes, {2: det.lobe_key("R", "temporal")})
    assert wrong["lobe_correct"] is False
    assert det.evaluate_patient(dseg, lesions)["lobe_correct"] is None
    missed = det.evaluate_patient(np.where(dseg == 1, 1, 0), lesions, lesion_lobes, {1: "x"})
    assert missed["first_hit_rank"] is None and missed["lobe_correct"] is None
    assert missed["n_clusters"] == 1 and missed["hit_lesions"] == []


def test_sensitivity_curve_mean_rank_detection_rate() -> None:
    ranks = [1, 3, None, 2, 7]
    curve = det.sensitivity_curve(ranks, max_k=8)
    assert [k for k, _ in curve] == list(range(1, 9))
    assert [s for _, s in curve] == pytest.approx([0.2, 0.4, 0.6, 0.6, 0.6, 0.6, 0.8, 0.8])
    assert len(det.sensitivity_curve(ranks)) == det.SENSITIVITY_MAX_K
    assert det.mean_rank(ranks) == pytest.approx(3.25)
    assert det.detection_rate(ranks) == pytest.approx(0.8)
    assert det.mean_rank([None, None]) is None
    with pytest.raises(ValueError):
        det.sensitivity_curve([])


def test_false_positives_and_summary() -> None:
    controls = [np.zeros((5, 5, 5), np.int16) for _ in range(3)]
    controls[1][0, 0, 0] = 1
    controls[1][4, 4, 4] = 2
    controls[2][2, 2, 2] = 1
    assert det.false_positive_clusters(controls) == pytest.approx(1.0)
    per_patient = [
        {"first_hit_rank": 1, "lobe_correct": True},
        {"first_hit_rank": 4, "lobe_correct": False},
        {"first_hit_rank": None, "lobe_correct": None},
        {"first_hit_rank": 2, "lobe_correct": True},
    ]
    summary = det.summarize(per_patient, controls)
    assert summary == {
        "n_patients": 4,
        "n_controls": 3,
        "sensitivity_top1": 0.25,
        "sensitivity_top3": 0.5,
        "sensitivity_top5": 0.75,
        "detection_rate": 0.75,
        "mean_rank": pytest.approx(7 / 3),
        "lobe_accuracy": pytest.approx(2 / 3),
        "fp_per_control": 1.0,
    }
    assert det.summarize(per_patient, [0, 2, {"n_clusters": 1}])["fp_per_control"] == 1.0
    assert det.summarize(per_patient)["fp_per_control"] is None


def test_plot_and_tsv(tmp_path: Path) -> None:
    curves = {
        "pseudo-normal Z": det.sensitivity_curve([1, 2, None, 1]),
        "controls Z": det.sensitivity_curve([3, None, None, 5]),
    }
    png = det.plot_sensitivity_curve(curves, tmp_path / "fig" / "sensitivity.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    rows = [{"participant_id": "sub-p01", "first_hit_rank": None, "hit_lesions": [1, 2]}]
    text = det.write_tsv(rows, tmp_path / "detection.tsv").read_text()
    assert text == "participant_id\tfirst_hit_rank\thit_lesions\nsub-p01\tn/a\t1,2\n"
