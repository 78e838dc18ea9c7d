"""Offline atlas look-ups (analysis.atlas)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import atlas


def _mni_grid(res: float = 2.0) -> nib.Nifti1Image:
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    shape = tuple(int(n / res) + 1 for n in (180, 216, 180))
    return nib.Nifti1Image(np.zeros(shape, np.float32), affine)


def test_load_atlas_labels() -> None:
    ho, ho_labels = atlas.load_atlas("harvard_oxford")
    aal, aal_labels = atlas.load_atlas("aal")
    assert ho.ndim == 3 and aal.ndim == 3
    assert len(ho_labels) == 113 and ho_labels[1] == "Left_Frontal_Pole"
    assert aal_labels[2001] == "Precentral_L"
    values = np.unique(np.asarray(ho.dataobj))
    assert values[0] == 0 and set(values[1:]) <= set(ho_labels)
    assert atlas.load_atlas("aal")[0] is aal  # cached
    with pytest.raises(ValueError, match="unknown atlas"):
        atlas.load_atlas("nonexistent")


@pytest.mark.parametrize(
    ("region", "lobe"),
    [
        ("Left_Middle_Temporal_Gyrus_posterior_division", "temporal"),
        ("Temporal_Mid_L", "temporal"),
        ("Right_Inferior_Frontal_Gyrus_pars_triangularis", "frontal"),
        ("Left_Paracingulate_Gyrus", "frontal"),
        ("Cingulate_Post_R", "limbic"),
        ("Left_Parahippocampal_Gyrus_anterior_division", "limbic"),
        ("Hippocampus_L", "limbic"),
        ("Right_Amygdala", "limbic"),
        ("Left_Precuneous_Cortex", "parietal"),
        ("Cuneus_R", "occipital"),
        ("Left_Occipital_Fusiform_Gyrus", "occipital"),
        ("Fusiform_L", "temporal"),
        ("Right_Insular_Cortex", "insula"),
        ("Left_Putamen", "subcortical"),
        ("Thalamus_R", "subcortical"),
        ("Cerebelum_Crus1_L", "cerebellum"),
        ("Vermis_4_5", "cerebellum"),
        ("Brain-Stem", "brainstem"),
        ("Angular_R", "parietal"),
        ("something else", "unknown"),
    ],
)
def test_lobe_from_region(region: str, lobe: str) -> None:
    assert atlas.lobe_from_region(region) == lobe
    assert atlas.lobe_from_region(region) in atlas.LOBES


@pytest.mark.parametrize(
    ("xyz", "hemisphere", "lobe", "region_part"),
    [
        ((-55, -20, -10), "L", "temporal", "Temporal"),
        ((40, 30, 30), "R", "frontal", "Frontal"),
        ((0, -60, -30), "M", "cerebellum", ""),
        ((20, -60, -30), "R", "cerebellum", "Cerebelum"),
        ((2, -60, 20), "R", "parietal", "Precun"),
        ((-30, -20, -15), "L", "limbic", "Hippocampus"),
        ((20, -95, 0), "R", "occipital", "Occipital"),
        ((-40, -10, 8), "L", "insula", "Insula"),
        ((12, -18, 8), "R", "subcortical", "Thalamus"),
        ((5, -25, -35), "R", "brainstem", "Brain-Stem"),
    ],
)
def test_label_coordinate(xyz: tuple, hemisphere: str, lobe: str, region_part: str) -> None:
    out = atlas.label_coordinate(xyz)
    assert set(out) == {"hemisphere", "region", "lobe"}
    assert out["hemisphere"] == hemisphere
    assert out["lobe"] == lobe
    assert region_part in out["region"]


def test_label_coordinate_fallbacks() -> None:
    # Far outside the brain: nothing within 5 mm.
    assert atlas.label_coordinate((0, 0, 140)) == {
        "hemisphere": "M",
        "region": "unknown",
        "lobe": "unknown",
    }
    # Just outside the cortex (no direct HO/AAL label): nearest labelled voxel <= 5 mm.
    ho, _ = atlas.load_atlas("harvard_oxford")
    aal, _ = atlas.load_atlas("aal")
    point = np.array([-73.0, -20.0, 0.0])
    assert atlas._lookup(ho, point) == 0 and atlas._lookup(aal, point) == 0
    out = atlas.label_coordinate(point)
    assert out["hemisphere"] == "L" and out["lobe"] == "temporal"
    assert out["region"].startswith("Left_")  # Harvard-Oxford tried first
    # Between the two direct look-ups: HO unlabelled, AAL labelled.
    assert atlas.label_coordinate((-70.0, -20.0, 0.0))["region"] == "Temporal_Mid_L"
    with pytest.raises(ValueError):
        atlas.label_coordinate((1.0, 2.0))


def test_reference_region_masks() -> None:
    target = _mni_grid(2.0)
    cereb = atlas.reference_region_mask("cerebellum", target)
    assert cereb.shape == target.shape
    assert np.allclose(cereb.affine, target.affine)
    data = np.asarray(cereb.dataobj)
    assert set(np.unique(data)) == {0, 1}
    vol_ml = data.sum() * 8.0 / 1000.0
    assert 120.0 < vol_ml < 260.0
    ijk = np.array(np.nonzero(data))
    xyz = target.affine[:3, :3] @ ijk + target.affine[:3, 3:4]
    assert xyz[2].mean() < -25 and xyz[1].mean() < -45  # inferior and posterior

    pons = np.asarray(atlas.reference_region_mask("pons", target).dataobj)
    assert 3.0 < pons.sum() * 8.0 / 1000.0 < 40.0
    ijk = np.array(np.nonzero(pons))
    xyz = target.affine[:3, :3] @ ijk + target.affine[:3, 3:4]
    assert xyz[2].min() >= -42.0 and xyz[2].max() <= -20.0
    assert abs(xyz[0].mean()) < 3.0  # midline
    assert not (pons.astype(bool) & data.astype(bool)).any()  # cerebellum removed

    with pytest.raises(ValueError, match="unknown reference region"):
        atlas.reference_region_mask("thalamus", target)


def test_reference_mask_on_flipped_4d_grid() -> None:
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (90.0, -126.0, -72.0)
    target = nib.Nifti1Image(np.zeros((181, 217, 181, 2), np.float32), affine)
    mask = atlas.reference_region_mask("cerebellum", target)
    assert mask.shape == (181, 217, 181)
    ml = np.asarray(mask.dataobj).sum() / 1000.0
    assert 120.0 < ml < 260.0


def test_missing_atlas_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atlas.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="atlas files not found"):
        atlas.atlas_directory()
