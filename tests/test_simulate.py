"""Digital phantom cohort generator (simulate/ and petsynth-simulate), on fast 2 mm cohorts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from pet_synth_app.cli.simulate import main
from pet_synth_app.simulate import phantom
from pet_synth_app.simulate.cohort import (
    CohortConfig,
    cohort_name,
    plan_cohort,
    write_cohort,
    write_subject,
)

SEED = 7
CONFIG = CohortConfig(n_controls=2, n_patients=1, seed=SEED, voxel_size=2.0, n_t1w_only=1, n_4d=1)
TRUTH = Path("derivatives") / "truth"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """c01: T1w + 3D PET, c02: T1w only, p01: patient with 4D PET."""
    out = tmp_path_factory.mktemp("sim") / "bids"
    write_cohort(out, CONFIG)
    return out


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(), dtype=np.float64)


def _truth(root: Path, sub: str, name: str) -> Path:
    return root / TRUTH / sub / "anat" / f"{sub}_{name}.nii.gz"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_plan_defaults() -> None:
    plans = plan_cohort(CohortConfig(n_controls=8, n_patients=4, seed=1))
    labels = [p.label for p in plans]
    assert labels[:2] == ["c01", "c02"] and labels[-1] == "p04"
    t1_only = [p.label for p in plans if not p.with_pet]
    assert t1_only == ["c07", "c08"]  # 8 // 4 controls, the last ones
    assert sum(p.is_4d for p in plans) == 10 // 3
    assert all(p.with_pet for p in plans if p.is_4d)
    assert {p.orientation for p in plans} >= {"LAS", "PSR", "RAS"}
    assert not any(not p.with_pet for p in plan_cohort(CohortConfig(3, 1, 0)))
    with pytest.raises(ValueError, match="--n-4d"):
        plan_cohort(CohortConfig(n_controls=1, n_patients=0, n_4d=2))
    with pytest.raises(ValueError, match="--lesion-loss"):
        plan_cohort(CohortConfig(lesion_loss=(0.3, 0.1)))


def test_bids_layout(cohort: Path) -> None:
    import bids

    layout = bids.BIDSLayout(str(cohort), validate=True)
    assert sorted(layout.get_subjects()) == ["c01", "c02", "p01"]
    t1 = layout.get(suffix="T1w", extension=[".nii.gz"])
    pet = layout.get(suffix="pet", extension=[".nii.gz"])
    assert len(t1) == 3
    assert sorted(f.entities["subject"] for f in pet) == ["c01", "p01"]
    assert all(f.entities["tracer"] == "FDG" for f in pet)
    meta = pet[0].get_metadata()
    from pet_synth_app.inputcheck import PET_REQUIRED_FIELDS

    for key in PET_REQUIRED_FIELDS:  # every field BIDS requires of a PET sidecar
        assert key in meta, key
    assert meta["Units"] == "Bq/mL" and meta["TracerRadionuclide"] == "F18"
    desc = json.loads((cohort / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["DatasetType"] == "raw"
    assert desc["GeneratedBy"][0]["Name"] == "petsynth-simulate"
    # the Name says what fixes a control's images: another seed, voxel size, control age
    # range or phantom model is another dataset (the model-training check compares it)
    assert (
        desc["Name"]
        == cohort_name(CONFIG)
        == (
            f"PetSynth phantom cohort (seed {CONFIG.seed}, 2 mm, "
            f"phantom model {phantom.PHANTOM_MODEL})"
        )
    )
    others = [replace(CONFIG, seed=CONFIG.seed + 1), replace(CONFIG, voxel_size=1.0)]
    others.append(replace(CONFIG, control_ages=(30, 40)))
    assert len({cohort_name(c) for c in [CONFIG, *others]}) == 4
    assert cohort_name(replace(CONFIG, n_controls=9, n_patients=0)) == desc["Name"]
    truth_desc = json.loads((cohort / TRUTH / "dataset_description.json").read_text())
    assert truth_desc["DatasetType"] == "derivative"
    rows = (cohort / "participants.tsv").read_text().split("\n")
    assert rows[0].split("\t") == ["participant_id", "group", "age", "sex"]
    groups = dict(r.split("\t")[:2] for r in rows[1:] if r)
    assert groups == {"sub-c01": "control", "sub-c02": "control", "sub-p01": "patient"}


def test_t1w_only_and_4d(cohort: Path) -> None:
    assert not (cohort / "sub-c02" / "pet").exists()
    assert (cohort / "sub-c02" / "anat" / "sub-c02_T1w.nii.gz").is_file()
    pet3d = nib.load(cohort / "sub-c01" / "pet" / "sub-c01_trc-FDG_pet.nii.gz")
    assert pet3d.ndim == 3
    img = nib.load(cohort / "sub-p01" / "pet" / "sub-p01_trc-FDG_pet.nii.gz")
    side = json.loads((cohort / "sub-p01" / "pet" / "sub-p01_trc-FDG_pet.json").read_text())
    assert img.ndim == 4 and img.shape[3] in (3, 4)
    assert len(side["FrameTimesStart"]) == len(side["FrameDuration"]) == img.shape[3]
    starts, durations = np.array(side["FrameTimesStart"]), np.array(side["FrameDuration"])
    assert np.allclose(starts[1:], starts[:-1] + durations[:-1])
    assert side["ScanStart"] == starts[0]
    geo = json.loads((cohort / TRUTH / "sub-p01" / "sub-p01_geometry.json").read_text())
    frames = np.array(geo["pet_frames_from_t1w"])
    assert frames.shape == (img.shape[3], 4, 4)
    assert np.allclose(frames[0], geo["pet_from_t1w"])
    # frame motion is small but present (<= ~3 mm at the brain)
    centre = np.append(geo["pet_from_t1w_center_mm"], 1.0)
    shifts = [np.linalg.norm((f - frames[0]) @ centre) for f in frames[1:]]
    assert all(0.05 < s < 6.0 for s in shifts)


def test_t1w_geometry_and_contrast(cohort: Path) -> None:
    codes = set()
    for sub in ("c01", "c02", "p01"):
        t1 = nib.load(cohort / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        codes.add(nib.aff2axcodes(t1.affine))
        assert np.allclose(t1.header.get_zooms(), 2.0)
        assert t1.get_data_dtype() == np.int16
        data = _load(cohort / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        gm = _load(_truth(cohort, f"sub-{sub}", "label-GM_probseg"))
        wm = _load(_truth(cohort, f"sub-{sub}", "label-WM_probseg"))
        csf = _load(_truth(cohort, f"sub-{sub}", "label-CSF_probseg"))
        brain = _load(_truth(cohort, f"sub-{sub}", "desc-brain_mask")) > 0
        assert gm.shape == data.shape and np.allclose(
            nib.load(_truth(cohort, f"sub-{sub}", "label-GM_probseg")).affine, t1.affine
        )
        # atrophy (5-45 % of the GM turned to CSF) leaves few voxels of > 0.9 GM
        m_wm, m_gm, m_csf = (data[p > t].mean() for p, t in ((wm, 0.9), (gm, 0.7), (csf, 0.9)))
        assert m_wm > 1.2 * m_gm > 1.2 * 1.2 * m_csf
        # Skull and scalp: a shell 8-16 mm outside the brain holds bright scalp (fat)
        dist = ndi.distance_transform_edt(~brain, sampling=2.0)
        shell = data[(dist > 8) & (dist < 16)]
        assert np.percentile(shell, 95) > max(m_csf, 0.6 * m_wm)
        near = data[(dist > 4) & (dist < 10)]
        assert np.percentile(near, 5) < m_csf  # dark bone close to the brain
        volume_l = brain.sum() * 8.0 / 1e6
        assert 1.0 < volume_l < 1.8
        assert np.all(gm + wm + csf <= 1.0 + 1e-4)
    assert ("R", "A", "S") in codes and len(codes) >= 2


def test_truth_geometry_maps_to_mni(cohort: Path) -> None:
    from nilearn import datasets

    sub = "sub-p01"
    geo = json.loads((cohort / TRUTH / sub / f"{sub}_geometry.json").read_text())
    warp = nib.load(cohort / TRUTH / sub / geo["warp_file"])
    # WM: the template's WM maps back onto the subject's (atrophy thins the GM
    # geometrically, so the GM correlates less: >= 0.6 for this 69-year-old at 2 mm)
    for label, floor, load in (
        ("WM", 0.9, datasets.load_mni152_wm_template),
        ("GM", 0.6, datasets.load_mni152_gm_template),
    ):
        img = nib.load(_truth(cohort, sub, f"label-{label}_probseg"))
        frac = np.asarray(img.dataobj)
        ijk = np.array(np.nonzero(frac > 0.02))[:, ::7].astype(float)
        pts = (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).T
        mni = phantom.t1w_points_to_mni(pts, np.array(geo["mni_from_t1w"]), warp)
        tpl = load(resolution=2)
        vox = np.linalg.solve(tpl.affine, np.vstack([mni.T, np.ones(len(mni))]))[:3]
        expected = ndi.map_coordinates(tpl.get_fdata(), vox, order=1)
        assert np.corrcoef(expected, frac[tuple(ijk.astype(int))])[0, 1] > floor, label
    # MNI -> T1w -> MNI round trip of the lesion centres
    lesions = geo["lesions"]
    assert 1 <= len(lesions) <= 2
    centres_t1 = np.array([les["center_t1w"] for les in lesions])
    back = phantom.t1w_points_to_mni(centres_t1, np.array(geo["mni_from_t1w"]), warp)
    assert np.allclose(back, [les["center_mni"] for les in lesions], atol=0.05)
    assert np.allclose(np.linalg.inv(geo["mni_from_t1w"]), geo["t1w_from_mni"])
    assert 1.0 < geo["warp_max_displacement_mm"] < 5.0


def test_pet_grid_alignment_and_values(cohort: Path) -> None:
    sub = "sub-c01"
    t1 = nib.load(cohort / sub / "anat" / f"{sub}_T1w.nii.gz")
    pet = nib.load(cohort / sub / "pet" / f"{sub}_trc-FDG_pet.nii.gz")
    assert pet.shape != t1.shape or not np.allclose(pet.affine, t1.affine)
    geo = json.loads((cohort / TRUTH / sub / f"{sub}_geometry.json").read_text())
    pet_from_t1w = np.array(geo["pet_from_t1w"])
    assert not np.allclose(pet_from_t1w, np.eye(4), atol=1e-3)
    err = phantom.pet_coregistration_error_mm(np.eye(4), pet_from_t1w, np.zeros((1, 3)))
    assert err[0] > 0.5  # a real misalignment to recover
    assert np.allclose(
        phantom.pet_coregistration_error_mm(
            np.array(geo["t1w_from_pet"]),
            pet_from_t1w,
            np.random.default_rng(0).normal(0, 50, (20, 3)),
        ),
        0.0,
        atol=1e-6,
    )
    # Truth GM/WM cores mapped through the true transform into the PET grid.
    data = np.asarray(pet.get_fdata())
    gm = _load(_truth(cohort, sub, "label-GM_probseg"))
    wm = _load(_truth(cohort, sub, "label-WM_probseg"))

    def pet_at(mask: np.ndarray) -> np.ndarray:
        ijk = np.array(np.nonzero(mask)).astype(float)
        world = t1.affine[:3, :3] @ ijk + t1.affine[:3, 3:4]
        world_pet = pet_from_t1w[:3, :3] @ world + pet_from_t1w[:3, 3:4]
        vox = np.linalg.solve(pet.affine, np.vstack([world_pet, np.ones(world.shape[1])]))
        return ndi.map_coordinates(data, vox[:3], order=1)

    gm_pet, wm_pet = pet_at(gm > 0.7).mean(), pet_at(wm > 0.95).mean()  # GM: atrophy
    assert gm_pet > 1.4 * wm_pet
    assert 3000.0 < gm_pet < 25000.0  # Bq/mL


def test_lesion_uptake_loss_before_blur() -> None:
    space = phantom.load_template_space(2)
    rng = np.random.default_rng(3)
    anat = phantom.random_anatomy(rng)
    uptake = phantom.random_uptake(rng)
    lesions = phantom.place_lesions(rng, space, 2, (0.2, 0.2), (6.0, 6.0), jacobian=0.75)
    assert len(lesions) == 2
    args = (space, uptake, anat, space.dist_out)
    pattern = space.uptake_pattern
    with_les = phantom.pet_activity_mni(None, *args, lesions, pattern_field=pattern)
    without = phantom.pet_activity_mni(None, *args, (), pattern_field=pattern)
    mirrored = with_les[::-1]  # the work grid is symmetric about x = 0
    for lesion in lesions:
        assert lesion.hemisphere in ("L", "R") and lesion.lobe != "unknown"
        sl, prof = lesion.profile_box(space)
        core = (prof > 0.9) & (space.gm[sl] > 0.8)
        assert core.sum() > 5
        ratio = with_les[sl][core].mean() / without[sl][core].mean()
        assert 0.78 < ratio < 0.86  # 20 % GM loss, diluted by WM/CSF partial volume
        mirror = with_les[sl][core].mean() / mirrored[sl][core].mean()
        assert 0.7 < mirror < 0.95
        # GM-weighted native volume ~ the requested 6 ml
        gm_ml = (prof * space.gm[sl]).sum() * 8.0 * 0.75 / 1000.0
        assert gm_ml == pytest.approx(6.0, rel=0.02)


def test_lesion_truth_written(cohort: Path) -> None:
    sub = "sub-p01"
    mask = _load(_truth(cohort, sub, "desc-lesion_mask")).astype(int)
    rows = [r.split("\t") for r in (cohort / TRUTH / "lesions.tsv").read_text().split("\n") if r]
    header, body = rows[0], rows[1:]
    assert header[:13] == [
        "participant_id",
        "lesion",
        "hemisphere",
        "lobe",
        "region",
        "center_mni_x",
        "center_mni_y",
        "center_mni_z",
        "center_t1w_x",
        "center_t1w_y",
        "center_t1w_z",
        "volume_ml",
        "uptake_loss",
    ]
    assert {r[0] for r in body} == {sub}
    assert set(np.unique(mask)) == {0, *range(1, len(body) + 1)}
    gm = _load(_truth(cohort, sub, "label-GM_probseg"))
    assert gm[mask > 0].min() >= 0.3
    for row in body:
        rec = dict(zip(header, row, strict=True))
        assert 0.10 <= float(rec["uptake_loss"]) <= 0.30
        assert 0.7 <= float(rec["volume_ml"]) <= 22.0
        assert rec["hemisphere"] in ("L", "R")
        vox_ml = (mask == int(rec["lesion"])).sum() * 8.0 / 1000.0
        assert vox_ml == pytest.approx(float(rec["mask_volume_ml"]), abs=1e-3)
        # The mask surrounds the recorded T1w centre.
        img = nib.load(_truth(cohort, sub, "desc-lesion_mask"))
        centre = [float(rec[f"center_t1w_{a}"]) for a in "xyz"]
        ijk = np.array(np.nonzero(mask == int(rec["lesion"])))
        world = img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]
        assert np.linalg.norm(world.mean(1) - centre) < 15.0


def test_deterministic(cohort: Path, tmp_path: Path) -> None:
    plan = next(p for p in plan_cohort(CONFIG) if p.label == "p01")
    write_subject(tmp_path / "again", plan, CONFIG)
    files = [
        Path("sub-p01/anat/sub-p01_T1w.nii.gz"),
        Path("sub-p01/pet/sub-p01_trc-FDG_pet.nii.gz"),
        TRUTH / "sub-p01/anat/sub-p01_desc-lesion_mask.nii.gz",
        TRUTH / "sub-p01/anat/sub-p01_label-GM_probseg.nii.gz",
        TRUTH / "sub-p01/sub-p01_geometry.json",
    ]
    for rel in files:
        assert _digest(cohort / rel) == _digest(tmp_path / "again" / rel), rel
    other = CohortConfig(**{**CONFIG.__dict__, "seed": SEED + 1})
    write_subject(tmp_path / "other", plan, other)
    a = _load(cohort / files[0])
    b = _load(tmp_path / "other" / files[0])
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("x")
    assert main([str(out), "--n-controls", "1", "--n-patients", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("petsynth-simulate: error:") and "not empty" in err
    assert "Traceback" not in err and err.count("\n") == 1
    # --overwrite never deletes a folder that is not a petsynth-simulate dataset
    assert main([str(out), "--overwrite", "--n-controls", "1", "--n-patients", "0"]) == 1
    assert (out / "something.txt").exists()
    assert main([str(tmp_path / "x"), "--lesion-loss", "0.5", "0.1"]) == 1
    assert "--lesion-loss" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--control-ages", "60", "40"]) == 1
    assert "--control-ages" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "y"), "--n-controls", "many"])


def test_atrophy_thins_the_cortex_in_t1w_and_pet_and_keeps_pure_gm() -> None:
    """Regional atrophy is geometric: the pial boundary moves in, the remaining cortex
    stays pure GM (so a T1w can see it), and the T1w and PET both lose GM there."""
    space = phantom.load_template_space(2)
    rng = np.random.default_rng(5)
    loss, params = phantom.random_atrophy(rng, space)
    assert 0.0 <= params["atrophy_global"] <= 0.10 and 0.15 <= params["atrophy_local"] <= 0.35
    assert loss.shape == space.shape and 0.0 <= loss.min() and loss.max() <= 0.45
    brain = loss[space.brain > 0.5]  # regional: from the global loss to global + local
    assert brain.min() == pytest.approx(params["atrophy_global"], abs=1e-6)
    assert brain.max() == pytest.approx(
        params["atrophy_global"] + params["atrophy_local"], abs=1e-6
    )
    factor = phantom.subject_thickness(np.full(space.shape, 0.9, np.float32), loss)
    np.testing.assert_allclose(
        factor, np.clip(0.9 * (1 - loss), phantom.THICKNESS_MIN, 1.0), atol=1e-6
    )
    sub = phantom.morphed_space(space, factor, 0.0)
    np.testing.assert_allclose(sub.gm + sub.csf, space.gm + space.csf, atol=1e-5)
    assert space.gm.sum() > sub.gm.sum() and space.gm.max() == pytest.approx(sub.gm.max())
    # the deepest cortex keeps its GM: atrophy is not a within-voxel dilution
    reach = (1.0 - phantom.THICKNESS_MIN) * space.ribbon_mm  # deepest possible thinning
    deep = (space.ribbon_mm > 0) & (space.pial_depth - space.resolution >= reach)
    deep &= space.gm > 0.9
    assert deep.sum() > 100
    np.testing.assert_allclose(sub.gm[deep], space.gm[deep], atol=1e-6)
    anat, uptake = phantom.random_anatomy(rng), phantom.random_uptake(rng)
    lost = space.gm - sub.gm
    hit = lost > 0.2
    assert hit.sum() > 1000
    t1_before = phantom.t1w_template_image(space, anat, space.dist_out)
    t1_after = phantom.t1w_template_image(sub, anat, space.dist_out)
    pattern = space.uptake_pattern
    pet_before = phantom.pet_activity_mni(
        None, space, uptake, anat, space.dist_out, pattern_field=pattern
    )
    pet_after = phantom.pet_activity_mni(
        None, sub, uptake, anat, space.dist_out, pattern_field=pattern
    )
    # both drops are the lost GM fraction times the GM-CSF difference of each modality
    d_t1, d_pet = (t1_before - t1_after)[hit], (pet_before - pet_after)[hit]
    np.testing.assert_allclose(d_t1, lost[hit] * (anat["t1_gm"] - anat["t1_csf"]), rtol=1e-4)
    np.testing.assert_allclose(d_pet, lost[hit] * (pattern[hit] - uptake["csf"]), rtol=1e-4)


def test_age_in_participants_and_truth(cohort: Path) -> None:
    rows = [r.split("\t") for r in (cohort / "participants.tsv").read_text().split("\n") if r]
    ages = {r[0]: int(r[2]) for r in rows[1:]}
    assert 20 <= ages["sub-c01"] <= 85 and 20 <= ages["sub-c02"] <= 85
    assert 50 <= ages["sub-p01"] <= 85
    desc = json.loads((cohort / "participants.json").read_text())
    assert desc["age"]["Units"] == "year" and "ventricle" in desc["age"]["Description"]
    for sub, age in ages.items():
        geo = json.loads((cohort / TRUTH / sub / f"{sub}_geometry.json").read_text())
        assert geo["age"] == age and geo["anatomy"]["age"] == age
        assert 0.6 <= geo["anatomy"]["thickness_global"] <= 1.0
        assert 0.0 <= geo["anatomy"]["ventricle_mm"] <= 11.0
        assert geo["uptake"]["age_uptake_decline"] == pytest.approx(0.007 * max(age - 60, 0))
        assert 0.12 <= geo["uptake"]["csf"] <= 0.18
        assert 8.0 < geo["ventricle_volume_ml"] < 60.0
        assert 300.0 < geo["gm_volume_ml"] < 1000.0


def test_older_subject_larger_ventricles_thinner_cortex_lower_frontal_uptake() -> None:
    """Same random draws, only the age differs: the 80-year-old has the older anatomy."""
    young = phantom.simulate_subject(np.random.default_rng(11), voxel_size=4.0, age=25.0)
    old = phantom.simulate_subject(np.random.default_rng(11), voxel_size=4.0, age=80.0)
    gy, go = young.geometry, old.geometry
    assert go["ventricle_volume_ml"] > 1.3 * gy["ventricle_volume_ml"]
    assert go["csf_volume_ml"] > gy["csf_volume_ml"] + 40.0
    assert go["gm_volume_ml"] < 0.95 * gy["gm_volume_ml"]
    assert old.anatomy["thickness_global"] < young.anatomy["thickness_global"] - 0.1
    assert young.uptake["age_uptake_decline"] == 0.0
    assert old.uptake["age_uptake_decline"] == pytest.approx(0.14)
    # native GM probabilities follow: less GM, more CSF in the T1w truth
    gm_y, gm_o = (np.asarray(s.gm.dataobj).sum() for s in (young, old))
    assert gm_o < 0.95 * gm_y
    # frontal GM uptake before blur: 14 % lower at the same anatomy and pattern
    space = phantom.load_template_space(2)
    pattern = np.ones(space.shape, np.float32)
    args = (space, young.uptake, young.anatomy, space.dist_out)
    act_y = phantom.pet_activity_mni(None, *args, pattern_field=pattern)
    args = (space, old.uptake, young.anatomy, space.dist_out)
    act_o = phantom.pet_activity_mni(None, *args, pattern_field=pattern)
    assert space.age_regions is not None and space.region_labels is not None
    frontal = (space.age_regions > 0.95) & (space.gm > 0.8)
    occipital = (space.region_labels == 95) | (space.region_labels == 96)  # occipital pole
    occipital &= (space.gm > 0.8) & (space.age_regions < 0.01)
    assert frontal.sum() > 100 and occipital.sum() > 10
    gm_term = space.gm * young.uptake["csf"]  # only GM uptake differs between the two
    ratio = (act_o - gm_term)[frontal].mean() / (act_y - gm_term)[frontal].mean()
    assert ratio < 0.9
    np.testing.assert_allclose(act_o[occipital], act_y[occipital], rtol=2e-3)


def test_csf_uptake_is_15_percent_of_gm() -> None:
    space = phantom.load_template_space(2)
    rng = np.random.default_rng(2)
    anat, uptake = phantom.random_anatomy(rng), phantom.random_uptake(rng)
    assert 0.12 <= uptake["csf"] <= 0.18
    pattern = np.ones(space.shape, np.float32)
    act = phantom.pet_activity_mni(None, space, uptake, anat, space.dist_out, (), pattern)
    csf_core = (space.csf > 0.97) & (space.icv > 0.99)
    gm_core = space.gm > 0.9
    assert csf_core.sum() > 50 and gm_core.sum() > 50
    ratio = np.median(act[csf_core]) / np.median(act[gm_core])
    assert ratio == pytest.approx(uptake["csf"], abs=0.02)  # 1-3 % GM in the CSF core
    assert 0.11 < ratio < 0.19


def test_cortical_thickness_moves_the_pial_boundary() -> None:
    space = phantom.load_template_space(2)
    assert space.pial_depth is not None and space.ribbon_mm is not None
    same = phantom.morphed_space(space, 1.0, 0.0)
    np.testing.assert_array_equal(same.gm, space.gm)
    volumes = [
        phantom.tissue_volumes_ml(phantom.morphed_space(space, t, 0.0)) for t in (1, 0.9, 0.8)
    ]
    gm = [v["gm_volume_ml"] for v in volumes]
    assert gm[0] > gm[1] > gm[2] and 0.8 < gm[2] / gm[0] < 0.92
    assert {v["wm_volume_ml"] for v in volumes} == {volumes[0]["wm_volume_ml"]}
    thin = phantom.morphed_space(space, 0.9, 0.0)
    np.testing.assert_allclose(thin.gm + thin.csf, space.gm + space.csf, atol=1e-5)
    # GM is lost at the outer (CSF) side only: 10 % of <= 8 mm is < one 2 mm voxel
    deep = space.pial_depth >= 2 * space.resolution
    np.testing.assert_array_equal(thin.gm[deep], space.gm[deep])
    outer = (space.pial_depth == 0) & (space.gm > 0.2) & (space.ribbon_mm > 0)
    assert (thin.gm[outer] < space.gm[outer]).mean() > 0.9


def test_ventricles_grow_and_tissue_is_conserved() -> None:
    space = phantom.load_template_space(2)
    base = phantom.tissue_volumes_ml(space)
    grown = phantom.morphed_space(space, 1.0, 4.0)
    vol = phantom.tissue_volumes_ml(grown)
    assert 18.0 < base["ventricle_volume_ml"] < 25.0  # MNI-space lateral ventricles
    assert vol["ventricle_volume_ml"] > 1.5 * base["ventricle_volume_ml"]
    assert vol["wm_volume_ml"] < base["wm_volume_ml"] - 5.0
    total = sum(base[k] for k in ("gm_volume_ml", "wm_volume_ml", "csf_volume_ml"))
    total_grown = sum(vol[k] for k in ("gm_volume_ml", "wm_volume_ml", "csf_volume_ml"))
    assert total_grown == pytest.approx(total, rel=0.005)  # the skull does not move
    outside = np.ones(space.shape, bool)
    assert space.ventricle_box is not None
    outside[space.ventricle_box] = False
    np.testing.assert_array_equal(grown.gm[outside], space.gm[outside])


def test_morphometry_deterministic_and_age_driven() -> None:
    space = phantom.load_template_space(2)
    f1, p1 = phantom.random_morphometry(np.random.default_rng(4), space, 70.0)
    f2, p2 = phantom.random_morphometry(np.random.default_rng(4), space, 70.0)
    np.testing.assert_array_equal(f1, f2)
    assert p1 == p2
    m1 = phantom.regional_metabolism(np.random.default_rng(4), space)
    m2 = phantom.regional_metabolism(np.random.default_rng(4), space)
    np.testing.assert_array_equal(m1, m2)
    assert 0.75 < m1.min() and m1.max() < 1.3 and m1.std() > 0.01
    ages = np.arange(20, 86, 5)
    runs = [phantom.random_morphometry(np.random.default_rng(0), space, a)[1] for a in ages]
    assert np.all(np.diff([r["ventricle_mm"] for r in runs]) >= 0)
    assert np.all(np.diff([r["thickness_global"] for r in runs]) <= 0)


def test_tissue_fractions_are_one_brains_not_population_probabilities() -> None:
    """The phantom's tissue maps are sharp like one brain's (partial volume only at edges)."""
    gm = np.array([0.64, 0.2, 0.05, 0.5, 0.0], np.float32)
    wm = np.array([0.13, 0.7, 0.05, 0.5, 0.0], np.float32)
    same = phantom.individual_tissue_fractions(gm, wm, 1.0)
    np.testing.assert_allclose(same[0], gm, atol=1e-5)
    np.testing.assert_allclose(same[1], wm, atol=1e-5)
    g, w = phantom.individual_tissue_fractions(gm, wm, 4.0)
    # the most likely tissue is kept and fills most of the voxel; ties stay mixed
    assert g[0] > 0.98 and w[1] > 0.99 and g[2] + w[2] < 0.001
    assert g[3] == pytest.approx(0.5, abs=1e-4) and w[3] == pytest.approx(0.5, abs=1e-4)
    assert g[4] + w[4] < 1e-6
    # the 2 mm grid averages the 1 mm volume it covers (tissue volume is kept)
    vol = np.zeros((8, 8, 8), np.float32)
    vol[2:6, 3:5, 1:7] = 1.0
    down = phantom._block_average_2mm(vol, (4, 4, 4))
    assert down.shape == (4, 4, 4) and down.sum() * 8 == pytest.approx(vol.sum())
    # the work grid: most GM voxels are (nearly) pure GM, as in one brain at 2 mm
    space = phantom.load_template_space(2)
    in_gm = space.gm > 0.5
    assert (space.gm[in_gm] > 0.9).mean() > 0.3
    assert np.all(space.gm + space.wm + space.csf <= 1.0 + 1e-5)
