"""The PET field of view (coverage mask): from the frames, through resampling, into the
reference region, the normative models, the Z / OC-SVM maps, the clusters, QC and the
report (issue 16, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import zscore
from pet_synth_app.config import MIN_BRAIN_COVERAGE, TEMPLATE_SPACE
from pet_synth_app.preproc import pet as ppet

# ----------------------------------------------------------------- unit: coverage rule


def test_coverage_of_4d_pet_needs_data_in_every_frame():
    shape = (10, 12, 8, 3)
    data = np.ones(shape, np.float32)
    data[..., 1][:, :, 6:] = 0.0  # frame 1 ends two slices early (its field of view)
    data[4, 5, 3, 2] = 0.0  # an isolated zero inside the data is a value, not a hole
    data[0, 0, 0, 0] = np.nan  # not finite: no data (at the border)
    cov = ppet.pet_coverage(nib.Nifti1Image(data, np.eye(4)))
    assert cov.shape == shape[:3] and cov.dtype == bool
    assert not cov[:, :, 6:].any()  # the slices one frame lacks
    assert cov[:, :, :6].sum() == 10 * 12 * 6 - 1  # all the rest but the NaN corner
    assert cov[4, 5, 3]
    # 3D: finite and non-zero; zero air reaching the border is outside
    vol = np.zeros((9, 9, 9), np.float32)
    vol[2:7, 2:7, 2:7] = 5.0
    vol[4, 4, 4] = 0.0
    three = ppet.pet_coverage(vol)
    assert three.sum() == 125 and three[4, 4, 4] and not three[0].any()
    # frame_average reports the same field of view without motion correction
    mean, _, cov_img = ppet.frame_average(
        nib.Nifti1Image(np.nan_to_num(data), np.eye(4)), motion_correct=False, return_coverage=True
    )
    assert np.array_equal(
        np.asanyarray(cov_img.dataobj) > 0, ppet.pet_coverage(np.nan_to_num(data))
    )
    assert mean.shape == shape[:3]


def test_resampled_coverage_keeps_only_fully_covered_voxels(tmp_path):
    """Linear interpolation then >= 0.999: a 2 mm mask covering z < 10 mm, moved 3 mm
    and put on a 1 mm grid, covers the 1 mm voxels whose neighbourhood is covered."""
    aff2 = np.diag([2.0, 2.0, 2.0, 1.0])
    cov = np.zeros((10, 10, 10), np.uint8)
    cov[:, :, :5] = 1  # voxel centres z = 0..8 mm covered, 10.. not
    cov_img = nib.Nifti1Image(cov, aff2)
    ref = nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    ident = ppet.write_ants_rigid(np.eye(4), str(tmp_path / "id.mat"))
    out = np.asanyarray(ppet.resample_coverage(cov_img, ref, [ident]).dataobj)
    assert out.dtype == np.uint8
    # 1 mm centres z = 0..8 interpolate covered voxels only; z = 9 mixes in z = 10 mm
    assert out[5:15, 5:15, :9].all() and not out[:, :, 9:].any()
    # a fixed->moving point map shifting by +3 mm in z: output z samples input z + 3
    shift = np.eye(4)
    shift[2, 3] = 3.0
    moved = ppet.write_ants_rigid(shift, str(tmp_path / "shift.mat"))
    out = np.asanyarray(ppet.resample_coverage(cov_img, ref, [moved]).dataobj)
    assert out[5:15, 5:15, :6].all() and not out[:, :, 6:].any()


def test_coverage_fraction_warning_and_sidecar_entries():
    brain = np.zeros((10, 10, 10), bool)
    brain[2:8, 2:8, 2:8] = True  # 216 voxels
    cov = np.ones_like(brain)
    cov[:, :, :3] = False  # one of six brain slices lost
    f = ppet.coverage_fraction(cov, brain)
    assert f == pytest.approx(180 / 216)
    meta = ppet.coverage_metadata(f)
    assert meta["BrainCoverage"] == pytest.approx(0.8333, abs=1e-4)
    assert meta["BrainCoverageMinimum"] == MIN_BRAIN_COVERAGE
    assert "83.3 % of the brain mask" in meta["BrainCoverageWarning"]
    assert "BrainCoverageWarning" not in ppet.coverage_metadata(0.96)
    # compared at the 3 decimals QC shows (qc.below): 0.9496 shows as 0.950
    assert ppet.coverage_warning(0.9494) is not None and ppet.coverage_warning(0.9496) is None
    assert np.isnan(ppet.coverage_fraction(cov, np.zeros_like(brain)))
    with pytest.raises(ValueError, match="does not cover any voxel"):
        ppet.covered_brain(brain, np.zeros_like(brain))


def test_suvr_reference_excludes_uncovered_voxels():
    aff = np.eye(4)
    pet = np.full((6, 6, 6), 2.0, np.float32)
    pet[:, :, :2] = 0.0  # outside the field of view
    ref = np.ones((6, 6, 6), np.uint8)
    cov = (pet > 0).astype(np.uint8)
    _, whole = ppet.suvr_normalize(nib.Nifti1Image(pet, aff), nib.Nifti1Image(ref, aff))
    _, covered = ppet.suvr_normalize(
        nib.Nifti1Image(pet, aff), nib.Nifti1Image(ref, aff), nib.Nifti1Image(cov, aff)
    )
    assert whole == pytest.approx(2.0 * 4 / 6) and covered == pytest.approx(2.0)
    ref_low = np.zeros_like(ref)
    ref_low[:, :, :2] = 1  # e.g. a cerebellum reference the scan left out
    with pytest.raises(ValueError, match="outside the PET field of view"):
        ppet.suvr_normalize(
            nib.Nifti1Image(pet, aff), nib.Nifti1Image(ref_low, aff), nib.Nifti1Image(cov, aff)
        )


def test_normative_fit_ignores_uncovered_voxels_of_a_control():
    rng = np.random.default_rng(0)
    shape = (6, 6, 6)
    mask = np.ones(shape, bool)
    controls = [1.0 + rng.normal(0, 0.1, shape) for _ in range(5)]
    cut = [np.ones(shape, bool) for _ in range(5)]
    cut[0][:, :, :2] = False
    controls[0][:, :, :2] = 0.0  # no data there: would drag the mean down
    nofloor = {"fwhm_mm": 0, "sd_floor": 1e-9, "sd_floor_fraction": 0}
    mean, sd = zscore.fit_normative(controls, mask, valid=cut, **nofloor)
    ref_mean, ref_sd = zscore.fit_normative(controls[1:], mask, **nofloor)
    low = (slice(None), slice(None), slice(0, 2))
    assert np.allclose(mean[low], ref_mean[low]) and np.allclose(sd[low], ref_sd[low])
    full_mean, _ = zscore.fit_normative(controls, mask, **nofloor)
    assert np.allclose(mean[:, :, 2:], full_mean[:, :, 2:])
    # support: at least 2 and half of the controls must cover a voxel
    sparse = [np.zeros(shape, bool) for _ in range(5)]
    sparse[0][0] = sparse[1][0] = sparse[2][0] = True  # 3 of 5 cover x = 0
    sparse[3][1] = sparse[4][1] = True  # 2 of 5 cover x = 1: too few
    support = zscore.normative_support(sparse, mask, shape)
    assert support[0].all() and not support[1:].any()
    m2, s2 = zscore.fit_normative(controls, mask, fwhm_mm=0, valid=sparse)
    assert (s2[1:] == 0).all() and (s2[0] > 0).all()


# ------------------------------------------------- integration: cut fields of view (MNI)


@pytest.fixture(scope="module")
def cohort():
    """2 mm MNI cohort cropped to the lower brain (fast): 8 controls, one with a scan
    ending 14 mm into the cerebellum, and a patient with a left temporal lesion."""
    from scipy import ndimage

    from pet_synth_app.preproc.templates import get_template

    ref = get_template("mask", 2)
    keep = (slice(None), slice(None), slice(0, 56))  # MNI z < ~ +40 mm
    affine = ref.affine
    mask = (np.asanyarray(ref.dataobj) > 0)[keep]
    gm = np.asanyarray(get_template("GM", 2).dataobj).astype(np.float64)[keep]
    rng = np.random.default_rng(1)
    pseudo = np.where(mask, 0.4 + 0.7 * gm, 0.0)

    def scan(seed):
        noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, mask.shape), 1.5)
        return np.where(mask, pseudo * (1 + 0.04 * noise / noise.std()), 0.0)

    z_mm = nib.affines.apply_affine(affine, np.argwhere(np.ones(mask.shape)))[:, 2].reshape(
        mask.shape
    )
    bottom = z_mm[mask].min()

    def view(cut_mm):
        return z_mm >= bottom + cut_mm

    controls = [scan(s) for s in range(8)]
    views = [np.ones(mask.shape, bool) for _ in controls]
    views[0] = view(12.0)
    controls[0] = np.where(views[0], controls[0], 0.0)
    ijk = np.rint(np.linalg.inv(affine) @ [-50, -20, -10, 1])[:3].astype(int)
    grid = np.indices(mask.shape)
    lesion = (((grid - ijk[:, None, None, None]) ** 2).sum(0) <= 16) & mask
    patient = np.where(lesion, scan(100) * 0.6, scan(100))
    del rng
    return {
        "affine": affine,
        "mask": mask,
        "gm": gm,
        "pseudo": pseudo,
        "controls": controls,
        "views": views,
        "patient": patient,
        "lesion": lesion,
        "view": view,
        "z_mm": z_mm,
        "bottom": bottom,
    }


def _save(path: Path, data, affine, dtype=np.float32) -> str:
    nib.Nifti1Image(np.asarray(data, dtype=dtype), affine).to_filename(str(path))
    return str(path)


def _maps(tmp_path, c, pet, view, normative=None):
    """Z map and clusters through the interfaces, with the field of view ``view``
    (None: the old behaviour, no coverage input)."""
    from pet_synth_app.interfaces.hypometabolism import FindClusters, HypometabolismZ
    from pet_synth_app.interfaces.pet import BrainCoverage

    tmp_path.mkdir(parents=True, exist_ok=True)
    f = {
        "pet": _save(
            tmp_path / "pet.nii.gz",
            np.where(view, pet, 0) if view is not None else pet,
            c["affine"],
        ),
        "pseudo": _save(tmp_path / "pseudo.nii.gz", c["pseudo"], c["affine"]),
        "gm": _save(tmp_path / "gm.nii.gz", c["gm"], c["affine"]),
        "mask": _save(tmp_path / "mask.nii.gz", c["mask"], c["affine"], np.uint8),
    }
    extra, meta = {}, {}
    if view is not None:
        f["coverage"] = _save(tmp_path / "cov.nii.gz", view, c["affine"], np.uint8)
        meta = BrainCoverage(coverage=f["coverage"], brain_mask=f["mask"]).run().outputs.metadata
        extra = {"coverage": f["coverage"], "coverage_metadata": meta}
    z_in = {**{k: f[k] for k in ("pet", "pseudo", "gm", "mask")}, **extra}
    if normative is not None:
        z_in["normative"] = str(normative)
    zres = HypometabolismZ(**z_in).run(cwd=str(tmp_path))
    cl_in = {"in_file": zres.outputs.out_file, "gm": f["gm"], "mask": f["mask"]}
    if view is not None:
        cl_in["coverage"] = f["coverage"]
    cres = FindClusters(**cl_in, min_volume_mm3=400).run(cwd=str(tmp_path))
    labels = np.asanyarray(nib.load(cres.outputs.dseg).dataobj)
    z = np.asanyarray(nib.load(zres.outputs.out_file).dataobj)
    return z, labels, zres.outputs.metadata, meta


@pytest.mark.parametrize("cut_mm", [10.0, 20.0])
def test_cut_cerebellum_gives_no_finding_outside_the_view_and_keeps_the_lesion(
    tmp_path, cohort, cut_mm
):
    """Done-when of issue 16 item 5 (self-referenced Z): the scan ends 10-20 mm into the
    cerebellum; without the coverage mask the missing tissue is the top cluster, with it
    nothing lies outside the view and the lesion is the top cluster."""
    c = cohort
    view = c["view"](cut_mm)
    pet = np.where(view, c["patient"], 0.0)  # what the scanner gave
    _, old_labels, _, _ = _maps(tmp_path / "old", c, pet, None)
    assert (old_labels[~view & c["mask"]] == 1).any()  # the old top "finding": missing data
    z, labels, meta, cov_meta = _maps(tmp_path / "new", c, pet, view)
    assert not labels[~view].any() and not z[~view].any()
    assert (labels[c["lesion"]] == 1).any()  # the lesion is the top-ranked cluster
    assert meta["BrainCoverage"] == cov_meta["BrainCoverage"] < 1.0


@pytest.mark.slow  # ~3 min: the OC-SVM detector on 7 controls
def test_cut_view_in_the_group_models_and_the_oc_svm(tmp_path, cohort):
    """A control cut 12 mm into the cerebellum: the normative models still cover the
    cerebellum from the others and ignore its missing voxels; the patient, cut 16 mm, gets
    no cluster and no OC-SVM anomaly outside its view and its lesion tops both maps."""
    from pet_synth_app.analysis import anomaly, normative
    from pet_synth_app.analysis.calibration import loo_cluster_null
    from pet_synth_app.analysis.clusters import find_clusters
    from pet_synth_app.interfaces.anomaly import OCSVMScore

    c = cohort
    pseudos = [c["pseudo"]] * len(c["controls"])
    masks = [c["mask"]] * len(c["controls"])
    model = normative.fit_from_controls(
        c["controls"], pseudos, masks, c["affine"], {}, False, c["views"]
    )
    cerebellum = c["mask"] & ~c["views"][0]
    assert model.mask[cerebellum].all()  # 7 of 8 controls cover it
    blind = normative.fit_from_controls(
        c["controls"][1:], pseudos[1:], masks[1:], c["affine"], {}, False
    )
    # its missing cerebellum does not enter the model (the rest: the 4 mm smoothing
    # across the cut edge; its zeros there would be residuals of -0.4 to -1.1 SUVR)
    diff = np.abs(model.residual_mean - blind.residual_mean)[cerebellum]
    assert diff.mean() < 1e-3 and diff.max() < 0.01
    null = loo_cluster_null(
        c["controls"],
        pseudos,
        masks,
        [c["gm"]] * 8,
        c["affine"],
        min_volume_mm3=400,
        coverages=c["views"],
    )
    assert null["n_scans"] == 8
    folder = tmp_path / "normative"
    normative.save(model, folder)

    view = c["view"](16.0)
    pet = np.where(view, c["patient"], 0.0)
    z, labels, meta, _ = _maps(tmp_path / "ctrl", c, pet, view, normative=folder)
    assert meta["ZReference"] == "controls"
    assert not labels[~view].any() and (labels[c["lesion"]] == 1).any()

    det = tmp_path / "detector"
    anomaly.fit(
        [p.astype(np.float32) for p in c["controls"][1:]],
        [m & v for m, v in zip(masks[1:], c["views"][1:], strict=True)],
        c["gm"],
        c["affine"],
        det,
        nu=0.1,
        gamma="scale",
        epochs=1,
        pairs_per_epoch=2000,
        seed=0,
        threads=1,
    )
    f = {
        "pet": _save(tmp_path / "p.nii.gz", pet, c["affine"]),
        "mask": _save(tmp_path / "m.nii.gz", c["mask"], c["affine"], np.uint8),
        "coverage": _save(tmp_path / "v.nii.gz", view, c["affine"], np.uint8),
    }
    res = OCSVMScore(
        **f, model=str(det), nthreads=1, coverage_metadata={"BrainCoverage": 0.9}
    ).run(cwd=str(tmp_path))
    score = np.asanyarray(nib.load(res.outputs.out_file).dataobj)
    assert not score[~view].any() and res.outputs.metadata["BrainCoverage"] == 0.9
    from pet_synth_app.interfaces.hypometabolism import analysis_mask

    inside = analysis_mask(f["mask"], f["coverage"])
    ocl, clusters = find_clusters(score, (c["gm"] > 0.5) & inside, c["affine"], min_volume_mm3=400)
    assert clusters and not ocl[~view].any()
    assert (ocl[c["lesion"]] > 0).any() and (ocl[c["lesion"]] <= 3).any()


def test_top_half_view_warns_everywhere_and_finds_nothing_outside(tmp_path, cohort):
    """Bad input of issue 16: a PET covering only the top of the brain (the lesion below
    it is missed): named warnings in the Z map's sidecar, the QC summary of the run and
    the report; no finding outside the view."""
    from pet_synth_app import layout as L
    from pet_synth_app.analysis import qc
    from pet_synth_app.reports.subject import write_subject_report

    c = cohort
    z_mm = c["z_mm"]
    top = z_mm >= np.median(z_mm[c["mask"]])  # the upper half of (this crop of) the brain
    assert not (top & c["lesion"]).any()
    z, labels, meta, cov_meta = _maps(tmp_path / "maps", c, c["patient"], top)
    assert not labels[~top].any() and not z[~top].any()
    assert not labels[c["lesion"]].any()  # missed: it is outside the view
    assert (
        meta["BrainCoverage"] < 0.6 and "field of view covers only" in meta["BrainCoverageWarning"]
    )
    # the derivatives of that run: the coverage mask with its sidecar (as the DataSink writes)
    out = tmp_path / "out"
    unit = out / "sub-01"
    stem = "sub-01_trc-FDG"
    path = L.path(unit, stem, "coverage", TEMPLATE_SPACE)
    path.parent.mkdir(parents=True)
    _save(path, top, c["affine"], np.uint8)
    L.sidecar(path).write_text(json.dumps(cov_meta))
    failed = qc.failed_checks(out, "01")
    assert list(failed) == ["sub-01 (trc-FDG)"]
    assert any(s.startswith("pet_brain_coverage 0.") for s in failed["sub-01 (trc-FDG)"])
    warnings = qc.check({"pet_brain_coverage": cov_meta["BrainCoverage"]})
    assert warnings and warnings[0].startswith("the PET field of view misses part of the brain")
    (out / "dataset_description.json").write_text("{}")
    html = write_subject_report(out, "01", "test", Path("none.toml")).read_text()
    assert "the PET field of view misses part of the brain" in html
    assert "pet_brain_coverage" in html


# ------------------------------------------------------------------ simulate: the cut


def test_simulated_fov_cut_zeroes_the_pet_below_the_cut(tmp_path):
    from pet_synth_app.simulate.cohort import CohortConfig, plan_cohort
    from pet_synth_app.simulate.phantom import PET_FOV_TOP_MARGIN_MM, simulate_subject

    plans = plan_cohort(CohortConfig(n_controls=2, n_patients=8))
    assert [p.label for p in plans if p.fov_cut] == ["p04", "p08"]  # one in four patients
    assert not any(p.fov_cut for p in plan_cohort(CohortConfig(n_controls=2, n_patients=3)))
    with pytest.raises(ValueError, match="n-fov-cut"):
        plan_cohort(CohortConfig(n_controls=2, n_patients=1, n_fov_cut=2))

    rng = np.random.default_rng(3)
    subject = simulate_subject(rng, voxel_size=2.0, n_lesions=0, pet_fov_cut_mm=15.0)
    geo = subject.geometry
    low, high = geo["pet_fov_z_mm"]
    assert geo["pet_fov_brain_cut_mm"] == 15.0 and geo["pet_fov_mm"] == pytest.approx(high - low)
    pet = subject.pet
    cov = ppet.pet_coverage(pet)
    z = nib.affines.apply_affine(pet.affine, np.argwhere(np.ones(pet.shape[:3])))[:, 2]
    z = z.reshape(pet.shape[:3])
    assert not cov[(z < low) | (z > high)].any()
    # the brain inside the window has data; the one below it has none
    brain = np.argwhere(np.asanyarray(subject.brain_mask.dataobj) > 0)
    t1w = nib.affines.apply_affine(subject.brain_mask.affine, brain)
    pz = nib.affines.apply_affine(np.asarray(geo["pet_from_t1w"]), t1w)[:, 2]
    assert high == pytest.approx(pz.max() + PET_FOV_TOP_MARGIN_MM, abs=0.01)
    assert low == pytest.approx(pz.min() + 15.0, abs=0.01)
