"""Suprathreshold clusters, ranking and the cluster table (analysis.clusters)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pet_synth_app.analysis import clusters as cl

EYE1 = np.eye(4)
EYE2 = np.diag([2.0, 2.0, 2.0, 1.0])


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_threshold_direction_lower_and_upper_tail() -> None:
    z = np.zeros((20, 20, 20))
    z[2:6, 2:6, 2:6] = -3.0
    z[12:16, 12:16, 12:16] = 3.0
    labels, found = cl.find_clusters(z, None, EYE1, min_volume_mm3=0)
    assert len(found) == 1 and found[0].peak_z == -3.0 and found[0].n_voxels == 64
    assert np.all(labels[2:6, 2:6, 2:6] == 1) and labels.sum() == 64
    assert labels.dtype == np.int16
    _, up = cl.find_clusters(z, None, EYE1, threshold=2.0, min_volume_mm3=0, tail="upper")
    assert len(up) == 1 and up[0].peak_z == 3.0 and up[0].mass == pytest.approx(64.0)
    # Exactly at the threshold is not beyond it; the mask restricts the search.
    z[2:6, 2:6, 2:6] = cl.Z_THRESHOLD
    assert cl.find_clusters(z, None, EYE1, min_volume_mm3=0)[1] == []
    z[2:6, 2:6, 2:6] = -3.0
    mask = np.ones(z.shape, bool)
    mask[2:6, 2:6, 2:6] = False
    assert cl.find_clusters(z, mask, EYE1, min_volume_mm3=0)[1] == []


def _cube(shape: tuple[int, ...], edge: int, value: float = -3.0) -> np.ndarray:
    z = np.zeros(shape)
    z[2 : 2 + edge, 2 : 2 + edge, 2 : 2 + edge] = value
    return z


def test_min_extent_in_mm3_at_1_and_2_mm() -> None:
    assert cl.MIN_CLUSTER_MM3 == 1500.0
    kept = cl.find_clusters(_cube((16, 16, 16), 12), None, EYE1)[1]
    assert len(kept) == 1 and kept[0].n_voxels == 1728 and kept[0].size_mm3 == 1728.0
    assert cl.find_clusters(_cube((16, 16, 16), 11), None, EYE1)[1] == []  # 1331 mm³
    # 2 mm voxels: a 12 mm cube (6³ = 216 voxels, 1728 mm³) is kept, 10 mm (1000 mm³) not.
    kept2 = cl.find_clusters(_cube((10, 10, 10), 6), None, EYE2)[1]
    assert len(kept2) == 1 and kept2[0].size_mm3 == 1728.0
    assert cl.find_clusters(_cube((10, 10, 10), 5), None, EYE2)[1] == []
    # The rule n * 8 mm³ >= 1500 mm³: 188 voxels kept (1504 mm³), 187 dropped (1496 mm³).
    for n_vox, n_found in ((188, 1), (187, 0)):
        z = np.zeros((12, 12, 12))
        z.reshape(-1)[:n_vox] = -2.0  # one connected run in C order
        assert len(cl.find_clusters(z, None, EYE2)[1]) == n_found
    # Oblique affine with the same voxel volume gives the same answer.
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0, 5], [s, c, 0, -3], [0, 0, 1, 7], [0, 0, 0, 1]]) @ EYE2
    assert len(cl.find_clusters(_cube((10, 10, 10), 6), None, rot)[1]) == 1


def _three_blobs() -> np.ndarray:
    """A: big and shallow; B: medium and deep; C: small with one very deep voxel."""
    z = np.zeros((40, 40, 40))
    z[1:21, 1:11, 1:11] = -1.75  # A: 2000 voxels, mass 200, peak -1.75
    z[25:31, 25:35, 25:30] = -3.65  # B: 300 voxels, mass 600, peak -3.65
    z[30:35, 2:7, 30:34] = -2.65  # C: 100 voxels, mass ~108, peak -10
    z[32, 4, 32] = -10.0
    return z


@pytest.mark.parametrize(
    ("rank_by", "order"),
    [("mass", "BAC"), ("size", "ABC"), ("peak", "CBA")],
)
def test_ranking_mass_size_peak(rank_by: str, order: str, tmp_path: Path) -> None:
    z = _three_blobs()
    where = {"A": (5, 5, 5), "B": (27, 27, 27), "C": (31, 3, 31)}
    sizes = {"A": 2000, "B": 300, "C": 100}
    labels, found = cl.find_clusters(z, None, EYE1, min_volume_mm3=50, rank_by=rank_by)
    assert [c.rank for c in found] == [1, 2, 3] == [c.label for c in found]
    assert [c.n_voxels for c in found] == [sizes[b] for b in order]
    for rank, blob in enumerate(order, start=1):
        assert labels[where[blob]] == rank
    mass = {c.n_voxels: c.mass for c in found}
    assert mass[300] == pytest.approx(600.0) and mass[2000] == pytest.approx(200.0)
    assert mass[100] == pytest.approx(99 * 1.0 + 8.35)
    peak_c = next(c for c in found if c.n_voxels == 100)
    assert peak_c.peak_z == -10.0 and peak_c.peak_ijk == (32, 4, 32)
    assert peak_c.mean_z == pytest.approx((99 * -2.65 - 10.0) / 100)
    # The table and the TSV keep the rank order of the label image.
    rows = cl.cluster_table(found, atlas=None)
    path = cl.write_cluster_tsv(rows, tmp_path / "clusters.tsv")
    table = _read_tsv(path)
    assert list(table[0]) == list(cl.CLUSTER_COLUMNS)
    assert [int(r["rank"]) for r in table] == [1, 2, 3]
    assert [int(r["n_voxels"]) for r in table] == [sizes[b] for b in order]
    assert [float(r["size_mm3"]) for r in table] == [float(sizes[b]) for b in order]
    assert all(r["region"] == "n/a" and r["lobe"] == "n/a" for r in table)


def test_ties_are_deterministic() -> None:
    z = np.zeros((20, 20, 20))
    z[10:14, 2:6, 2:6] = -3.0  # later in scan order
    z[2:6, 10:14, 2:6] = -3.0  # first in scan order
    z[2:5, 2:5, 12:15] = -3.6  # deeper but smaller: third by size
    _, found = cl.find_clusters(z, None, EYE1, min_volume_mm3=0, rank_by="size")
    # Equal sizes: lower scan-order label first; equal values: peak at the first voxel.
    assert [c.peak_ijk for c in found] == [(2, 10, 2), (10, 2, 2), (2, 2, 12)]
    _, again = cl.find_clusters(z, None, EYE1, min_volume_mm3=0, rank_by="size")
    assert found == again


def test_connectivity_diagonal_voxels() -> None:
    z = np.zeros((6, 6, 6))
    z[1, 1, 1] = z[2, 2, 2] = -3.0  # corner contact only
    z[1, 4, 1] = z[2, 5, 1] = -3.0  # edge contact only
    counts = {
        conn: len(cl.find_clusters(z, None, EYE1, min_volume_mm3=0, connectivity=conn)[1])
        for conn in (26, 18, 6)
    }
    assert counts == {26: 2, 18: 3, 6: 4}
    with pytest.raises(ValueError, match="connectivity"):
        cl.find_clusters(z, None, EYE1, connectivity=8)


def test_coordinates_world_mm() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10.0, -20.0, -30.0)
    z = np.zeros((10, 10, 10))
    z[2:5, 3, 4] = [-2.0, -4.0, -2.0]
    (found,) = cl.find_clusters(z, None, affine, min_volume_mm3=0)[1]
    assert found.peak_ijk == (3, 3, 4)
    assert found.peak_mm == (-4.0, -14.0, -22.0)
    assert found.center_of_mass_mm == pytest.approx((-4.0, -14.0, -22.0))
    assert found.size_mm3 == 24.0 and found.mass == pytest.approx(0.35 * 2 + 2.35)


def test_left_temporal_peak_on_mni_grid(tmp_path: Path) -> None:
    from pet_synth_app.preproc.templates import get_template

    tpl = get_template("mask", 2)
    affine = tpl.affine
    target = np.array([-55.0, -20.0, -15.0])
    centre = np.rint(np.linalg.solve(affine, np.append(target, 1.0))[:3]).astype(int)
    ijk = np.indices(tpl.shape).reshape(3, -1).T
    dist = np.linalg.norm((ijk - centre) * 2.0, axis=1).reshape(tpl.shape)
    z = np.where(dist <= 8.0, -2.0 - (8.0 - dist) / 4.0, 0.0)  # deepest at the centre
    labels, found = cl.find_clusters(z, tpl, affine)
    assert len(found) == 1 and found[0].size_mm3 >= cl.MIN_CLUSTER_MM3
    assert np.all(np.abs(np.asarray(found[0].peak_mm) - target) <= 1.0)
    extra = {"peak_x_t1w": [1.5]}
    rows = cl.cluster_table(found, extra_coords=extra)
    assert rows[0]["hemisphere"] == "L" and rows[0]["lobe"] == "temporal"
    assert "Temporal" in rows[0]["region"]
    assert (rows[0]["peak_x"], rows[0]["peak_y"]) == found[0].peak_mm[:2]
    assert rows[0]["peak_z_mm"] == found[0].peak_mm[2]
    aal = cl.cluster_table(found, atlas="aal")[0]
    assert aal["hemisphere"] == "L" and aal["lobe"] == "temporal"
    table = _read_tsv(cl.write_cluster_tsv(rows, tmp_path / "c.tsv"))
    assert list(table[0])[-1] == "peak_x_t1w" and table[0]["peak_x_t1w"] == "1.5"
    with pytest.raises(ValueError, match="extra column"):
        cl.cluster_table(found, extra_coords={"x": [1, 2]})


def test_empty_table_still_has_header(tmp_path: Path) -> None:
    labels, found = cl.find_clusters(np.zeros((5, 5, 5)), None, EYE1)
    assert found == [] and not labels.any()
    path = cl.write_cluster_tsv(cl.cluster_table(found), tmp_path / "sub" / "empty.tsv")
    assert path.read_text() == "\t".join(cl.CLUSTER_COLUMNS) + "\n"


def test_write_tsv_formats_missing_values(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": None, "c": float("nan")}, {"a": 2.5, "d": [1, 2], "e": True}]
    text = cl.write_tsv(rows, tmp_path / "t.tsv").read_text().splitlines()
    assert text == ["a\tb\tc\td\te", "1\tn/a\tn/a\tn/a\tn/a", "2.5\tn/a\tn/a\t1,2\ttrue"]
