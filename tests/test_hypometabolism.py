"""Hypometabolism interfaces, normative-model IO, group level and petsynth-evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import normative
from pet_synth_app.analysis.zscore import smooth_in_mask
from pet_synth_app.config import TEMPLATE_SPACE, Z_FWHM_MM, Settings
from pet_synth_app.errors import PetSynthError
from pet_synth_app.interfaces.hypometabolism import (
    ClusterTable,
    ControlPetZ,
    FindClusters,
    HypometabolismZ,
)
from pet_synth_app.preproc.templates import get_template

SP = f"space-{TEMPLATE_SPACE}"


@pytest.fixture(scope="module")
def mni():
    """2 mm MNI grid: brain mask, GM probability, a smooth PET and its pseudo-normal PET."""
    ref = get_template("mask", 2)
    mask = np.asanyarray(ref.dataobj) > 0
    gm = np.asanyarray(get_template("GM", 2).dataobj).astype(np.float64)
    rng = np.random.default_rng(0)
    pseudo = np.where(mask, 0.4 + 0.7 * gm, 0.0)
    pet = pseudo + np.where(mask, rng.normal(0, 0.03, mask.shape), 0.0)
    # a hypometabolic blob around MNI (-50, -20, -10) mm (left temporal)
    ijk = np.rint(np.linalg.inv(ref.affine) @ [-50, -20, -10, 1])[:3].astype(int)
    grid = np.indices(mask.shape)
    blob = ((grid - ijk[:, None, None, None]) ** 2).sum(0) <= 36  # radius 6 voxels = 12 mm
    pet = np.where(blob & mask, pet * 0.6, pet)
    return {
        "affine": ref.affine,
        "mask": mask,
        "gm": gm,
        "pet": pet,
        "pseudo": pseudo,
        "blob": blob,
        "ijk": ijk,
    }


def _save(path: Path, data, affine, dtype=np.float32) -> str:
    nib.Nifti1Image(np.asarray(data, dtype=dtype), affine).to_filename(str(path))
    return str(path)


def _inputs(tmp_path, m):
    return {
        k: _save(tmp_path / f"{k}.nii.gz", m[k], m["affine"])
        for k in ("pet", "pseudo", "gm", "mask")
    }


def test_self_referenced_z_and_clusters(tmp_path, mni):
    files = _inputs(tmp_path, mni)
    res = HypometabolismZ(
        pet=files["pet"], pseudo=files["pseudo"], gm=files["gm"], mask=files["mask"]
    ).run(cwd=str(tmp_path))
    z = np.asanyarray(nib.load(res.outputs.out_file).dataobj)
    gm = mni["gm"] > 0.5
    assert abs(z[gm].mean()) < 1e-3 and abs(z[gm].std() - 1) < 1e-3
    assert z[mni["blob"] & gm].mean() < -3  # the blob is strongly hypometabolic
    assert res.outputs.metadata["ZReference"].startswith("self")
    cl = FindClusters(in_file=res.outputs.out_file, gm=files["gm"], mask=files["mask"]).run(
        cwd=str(tmp_path)
    )
    dseg = np.asanyarray(nib.load(cl.outputs.dseg).dataobj)
    assert cl.outputs.n_clusters >= 1 and dseg[tuple(mni["ijk"])] == 1  # top rank = the blob
    rows = json.loads(Path(cl.outputs.clusters).read_text())
    assert rows[0]["hemisphere"] == "L" and rows[0]["lobe"] == "temporal"
    assert rows[0]["size_mm3"] >= 1500
    assert cl.outputs.metadata["Threshold"] == -1.65


def test_cluster_table_t1w_peaks_follow_the_inverse_warp(tmp_path, mni):
    """The MNI cluster mapped to a rotated, shifted T1w grid lands where the transform
    says, and the table's T1w peak lies inside it."""
    from pet_synth_app.interfaces.anat import ApplyTransforms
    from pet_synth_app.preproc.pet import write_ants_rigid

    files = _inputs(tmp_path, mni)
    z = (
        HypometabolismZ(
            pet=files["pet"], pseudo=files["pseudo"], gm=files["gm"], mask=files["mask"]
        )
        .run(cwd=str(tmp_path))
        .outputs.out_file
    )
    cl = FindClusters(in_file=z, gm=files["gm"], mask=files["mask"]).run(cwd=str(tmp_path))
    a = np.deg2rad(12)
    m = np.eye(4)  # T1w world -> MNI world (ANTs fixed -> moving)
    m[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    m[:3, 3] = [8.0, -5.0, 6.0]
    xfm = write_ants_rigid(m, str(tmp_path / "std2t1w.mat"))
    t1w_aff = np.diag([1.5, 1.5, 1.5, 1.0])
    t1w_aff[:3, 3] = [-90, -120, -80]
    t1w_ref = _save(tmp_path / "t1w.nii.gz", np.zeros((120, 150, 120)), t1w_aff)
    dseg_t1w = ApplyTransforms(
        in_file=cl.outputs.dseg,
        reference=t1w_ref,
        transforms=[xfm],
        interpolation="nearestNeighbor",
    ).run(cwd=str(tmp_path))
    z_t1w = ApplyTransforms(
        in_file=z, reference=t1w_ref, transforms=[xfm], out_name="z_t1w.nii.gz"
    ).run(cwd=str(tmp_path))
    lab = np.asanyarray(nib.load(dseg_t1w.outputs.out_file).dataobj)
    mni_lab = np.asanyarray(nib.load(cl.outputs.dseg).dataobj)
    c_mni = nib.affines.apply_affine(mni["affine"], np.argwhere(mni_lab == 1).mean(0))
    c_t1w = nib.affines.apply_affine(t1w_aff, np.argwhere(lab == 1).mean(0))
    assert np.linalg.norm(m @ [*c_t1w, 1] - [*c_mni, 1]) < 1.5  # mm
    tab = ClusterTable(
        clusters=cl.outputs.clusters,
        dseg_t1w=dseg_t1w.outputs.out_file,
        stat_t1w=z_t1w.outputs.out_file,
    ).run(cwd=str(tmp_path))
    with open(tab.outputs.out_file, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    peak = np.array([float(rows[0][k]) for k in ("peak_x_t1w", "peak_y_t1w", "peak_z_t1w_mm")])
    ijk = np.rint(np.linalg.inv(t1w_aff) @ [*peak, 1])[:3].astype(int)
    assert lab[tuple(ijk)] == 1
    assert "peak_x_t1w" in tab.outputs.metadata and rows[0]["rank"] == "1"


def test_empty_cluster_table_keeps_header(tmp_path, mni):
    files = _inputs(tmp_path, mni)
    zero = _save(tmp_path / "z0.nii.gz", np.zeros(mni["mask"].shape), mni["affine"])
    cl = FindClusters(in_file=zero, gm=files["gm"], mask=files["mask"]).run(cwd=str(tmp_path))
    assert cl.outputs.n_clusters == 0
    tab = ClusterTable(clusters=cl.outputs.clusters, dseg_t1w=cl.outputs.dseg, stat_t1w=zero).run(
        cwd=str(tmp_path)
    )
    header = Path(tab.outputs.out_file).read_text().splitlines()
    assert len(header) == 1 and header[0].startswith("rank\tsize_mm3")
    assert "peak_x_t1w" in header[0]


def _normative(tmp_path, mni, sha="abc", folder="normative", **meta):
    rng = np.random.default_rng(1)
    pets = [
        mni["pseudo"] + np.where(mni["mask"], rng.normal(0, 0.03, mni["mask"].shape), 0)
        for _ in range(4)
    ]
    model = normative.fit_from_controls(
        pets, [mni["pseudo"]] * 4, [mni["mask"]] * 4, mni["affine"], {"model_sha256": sha, **meta}
    )
    return normative.save(model, tmp_path / folder)


def test_normative_roundtrip_and_control_referenced_z(tmp_path, mni):
    folder = _normative(tmp_path, mni)
    model = normative.load(folder)
    assert model.meta["n_controls"] == 4 and model.mask.sum() > 1000
    assert (model.residual_sd[model.mask] > 0).all()
    pet_mean = model.pet_mean[model.mask].mean()
    assert abs(pet_mean - mni["pseudo"][model.mask].mean()) < 0.01
    files = _inputs(tmp_path, mni)

    def z_of(normative_folder, sha="abc"):
        return HypometabolismZ(
            pet=files["pet"],
            pseudo=files["pseudo"],
            gm=files["gm"],
            mask=files["mask"],
            normative=str(normative_folder),
            weights_sha256=sha,
        ).run(cwd=str(tmp_path))

    res = z_of(folder)
    z = np.asanyarray(nib.load(res.outputs.out_file).dataobj)
    assert res.outputs.metadata["ZReference"] == "controls"
    assert res.outputs.metadata["NormativeControlsInModelTraining"] is None  # not recorded
    assert z[mni["blob"] & (mni["gm"] > 0.5)].mean() < -3
    insample = _normative(
        tmp_path, mni, folder="insample", controls_in_model_training=["sub-c01", "sub-c02"]
    )
    res = z_of(insample)
    assert res.outputs.metadata["NormativeControlsInModelTraining"] == ["sub-c01", "sub-c02"]
    with pytest.raises(PetSynthError, match="fitted with synthesis weights abc"):
        z_of(folder, "xyz")


def test_control_pet_z_needs_no_synthesis(tmp_path, mni):
    """The classic comparison: the real PET against the controls' PET mean and SD (the
    pseudo-normal PET plays no part; any synthesis weights are accepted)."""
    folder = _normative(tmp_path, mni, sha="abc")
    model = normative.load(folder)
    files = _inputs(tmp_path, mni)
    res = ControlPetZ(pet=files["pet"], mask=files["mask"], normative=str(folder)).run(
        cwd=str(tmp_path)
    )
    z = np.asanyarray(nib.load(res.outputs.out_file).dataobj)
    inside = model.mask & mni["mask"]
    zooms = nib.affines.voxel_sizes(mni["affine"])
    pet = smooth_in_mask(mni["pet"], mni["mask"], Z_FWHM_MM, zooms)  # analysis smoothing
    expected = (pet[inside] - model.pet_mean[inside]) / model.pet_sd[inside]
    np.testing.assert_allclose(z[inside], expected, rtol=1e-4, atol=1e-4)
    assert (z[~inside] == 0).all()
    assert z[mni["blob"] & (mni["gm"] > 0.5)].mean() < -3
    assert "no synthesis" in res.outputs.metadata["ZReference"]
    assert res.outputs.metadata["NormativeControls"] == 4
    assert res.outputs.metadata["SmoothingFWHM"] == Z_FWHM_MM == model.meta["z_fwhm_mm"]
    other = Z_FWHM_MM + 2
    with pytest.raises(PetSynthError, match=f"--z-fwhm {Z_FWHM_MM:g} mm, this run uses {other:g}"):
        ControlPetZ(
            pet=files["pet"], mask=files["mask"], normative=str(folder), fwhm_mm=other
        ).run(cwd=str(tmp_path))


def test_controlpet_workflow_clusters_the_blob(tmp_path, mni):
    from pet_synth_app.workflows.hypometabolism import STAT_INPUTS, init_controlpet_wf

    folder = _normative(tmp_path, mni)
    files = _inputs(tmp_path, mni)
    wf = init_controlpet_wf(
        normative=folder, z_threshold=-1.65, min_cluster_mm3=1500, cluster_rank="mass"
    )
    wf.base_dir = str(tmp_path / "work")
    from pet_synth_app.preproc.pet import write_ants_rigid

    ident = write_ants_rigid(np.eye(4), str(tmp_path / "ident.mat"))
    inputs = {
        "pet_std": files["pet"],
        "gm_std": files["gm"],
        "mask_std": files["mask"],
        "std2t1w_xfm": ident,
        "t1w_preproc": files["mask"],
        "coverage_std": files["mask"],  # the PET field of view covers the brain
        "coverage_metadata": {"BrainCoverage": 1.0},
    }
    assert set(inputs) == set(STAT_INPUTS)
    for k, v in inputs.items():
        setattr(wf.get_node("inputnode").inputs, k, v)
    res = wf.run()
    out = {n.name: n for n in res.nodes()}
    rows = json.loads(Path(out["clusters"].result.outputs.clusters).read_text())
    assert len(rows) >= 1
    peak = np.array([rows[0][k] for k in ("peak_x", "peak_y", "peak_z_mm")], dtype=float)
    assert np.linalg.norm(peak - [-50, -20, -10]) < 15  # the blob is the top cluster


def test_normative_load_refuses_incomplete(tmp_path):
    (tmp_path / "n").mkdir()
    with pytest.raises(PetSynthError, match="not a normative model"):
        normative.load(tmp_path / "n")


def _fake_out(root: Path, subjects, mni, html=True, sha="abc"):
    for i, s in enumerate(subjects):
        pet, anat = root / f"sub-{s}" / "pet", root / f"sub-{s}" / "anat"
        pet.mkdir(parents=True)
        anat.mkdir(parents=True)
        rng = np.random.default_rng(i)
        noise = np.where(mni["mask"], rng.normal(0, 0.03, mni["mask"].shape), 0)
        _save(
            pet / f"sub-{s}_trc-FDG_{SP}_desc-preproc_pet.nii.gz",
            mni["pseudo"] + noise,
            mni["affine"],
        )
        _save(pet / f"sub-{s}_{SP}_desc-pseudonormal_pet.nii.gz", mni["pseudo"], mni["affine"])
        (pet / f"sub-{s}_{SP}_desc-pseudonormal_pet.json").write_text(
            json.dumps({"ModelWeightsSha256": sha})
        )
        _save(anat / f"sub-{s}_{SP}_desc-brain_mask.nii.gz", mni["mask"], mni["affine"], np.uint8)
        if html:
            (root / f"sub-{s}.html").write_text("<html></html>")


def test_group_level_fits_normative_and_quality(tmp_path, mni):
    from conftest import make_bids

    from pet_synth_app.group import run_group_level

    bids = make_bids(tmp_path / "bids", subjects=("01", "02", "03", "04"))
    out = tmp_path / "out"
    _fake_out(out, ("01", "02", "03", "04"), mni)
    # sub-04 is a T1w-only control: its pseudo-normal PET but no real PET
    next((out / "sub-04" / "pet").glob("*desc-preproc_pet.nii.gz")).unlink()
    settings = Settings(bids_dir=bids, output_dir=out, siamese_epochs=1, augment_synthetic=True)
    assert run_group_level(settings) == 0
    model = normative.load(out / "group" / "normative")
    assert model.meta["participants"] == ["sub-01", "sub-02", "sub-03"]
    # the OC-SVM detector sits next to it: real PET of 3 controls + 1 synthetic
    from pet_synth_app.analysis import anomaly

    meta = anomaly.read_meta(out / "group" / "normative")
    assert meta["participants_real"] == ["sub-01", "sub-02", "sub-03"]
    assert meta["participants_synthetic"] == ["sub-04"]
    assert meta["autoencoder_epochs"] == 1 and meta["n_voxels"] > 10000
    assert not (out / "group" / "normative.new").exists()
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "## Group level" in citation and "@scholkopf2001" in citation
    assert model.meta["model_sha256"] == "abc"
    rows = list(csv.DictReader(open(out / "group" / "synthesis_quality.tsv"), delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    assert all(0.5 < float(r["ssim"]) <= 1 for r in rows)
    # the participant level picks the group model up by default
    from pet_synth_app.plan import resolve_plan

    assert resolve_plan(settings, check=False).normative_dir == out / "group" / "normative"


def test_group_level_needs_two_controls(tmp_path, mni):
    from conftest import make_bids

    from pet_synth_app.group import run_group_level

    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    _fake_out(out, ("01",), mni)
    _fake_out(out, ("02",), mni, html=False)  # unfinished: ignored
    with pytest.raises(PetSynthError, match="at least 2 finished controls"):
        run_group_level(Settings(bids_dir=bids, output_dir=out))


def test_controls_in_training_counts_only_the_same_dataset():
    from pet_synth_app.synthesis.weights import controls_in_training

    card = {
        "training": {
            "dataset": "PetSynth phantom cohort (seed 7)",
            "participants": ["c01", "c02", "c03"],
            "validation_participants": ["c11"],
        }
    }
    labels = ["c01", "sub-c11", "c13", "c03"]
    got = controls_in_training(card, "PetSynth phantom cohort (seed 7)", labels)
    assert got == ["c01", "c11", "c03"]  # validation counts too; order of `labels`
    # the same labels in another dataset are other people
    assert controls_in_training(card, "PetSynth phantom cohort (seed 1)", labels) == []
    # a card without training participants or without a training dataset: nothing known
    assert controls_in_training({"training": {"data": "phantoms"}}, "x", labels) == []
    no_dataset = {"training": {"participants": ["c01"]}}
    assert controls_in_training(no_dataset, "PetSynth phantom cohort (seed 7)", labels) == []
    assert controls_in_training({}, "PetSynth phantom cohort (seed 7)", labels) == []


def test_check_controls_in_training_finds_the_card_by_sha(tmp_path, caplog):
    """The card is that of --model-weights (or a shipped model) with the sha256 of the
    controls' pseudo-normal PETs; without one the answer is unknown (None), said once."""
    from conftest import make_bids

    from pet_synth_app.bids import dataset_name
    from pet_synth_app.group import check_controls_in_training

    bids = make_bids(tmp_path / "bids", subjects=("01", "02"), pet=False)
    assert dataset_name(bids) == "tiny"  # dataset_description.json Name, as petsynth-train
    assert dataset_name(tmp_path / "no-description") == "no-description"
    weights = tmp_path / "model.safetensors"
    card = {"sha256": "abc", "training": {"dataset": "tiny", "participants": ["02"]}}
    weights.with_suffix(".json").write_text(json.dumps(card))
    settings = Settings(bids_dir=bids, output_dir=tmp_path / "out", model_weights=weights)
    assert check_controls_in_training(settings, ["01", "02"], "abc") == ["sub-02"]
    with caplog.at_level("WARNING", logger="petsynth"):
        assert check_controls_in_training(settings, ["01", "02"], "other") is None
    assert "cannot tell whether the controls trained the synthesis model" in caplog.text
    assert "(other)" in caplog.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [("the default model's training cohort", ["sub-c01", "sub-c12"]), ("my controls", [])],
)
def test_group_level_records_and_warns_controls_that_trained_the_model(
    tmp_path, mni, monkeypatch, caplog, name, expected
):
    """Controls c01 and c12 trained and validated the shipped default model; they count
    only in a dataset of the same Name (another dataset's c01 is someone else)."""
    from conftest import make_bids

    from pet_synth_app import group
    from pet_synth_app.reports.group_report import write_group_report
    from pet_synth_app.synthesis.weights import default_weights, read_card

    subjects = ("c01", "c12", "c13")
    bids = make_bids(tmp_path / "bids", subjects=subjects, pet=False)
    if expected:  # the Name of the cohort the shipped default was trained on
        name = read_card(default_weights())["training"]["dataset"]
        assert name.startswith("PetSynth phantom cohort (seed 7")
    desc = bids / "dataset_description.json"
    desc.write_text(json.dumps({**json.loads(desc.read_text()), "Name": name}))
    out = tmp_path / "out"
    _fake_out(out, subjects, mni, sha=read_card(default_weights())["sha256"])
    monkeypatch.setattr(group, "fit_anomaly_detector", lambda *a: 0)  # not under test
    with caplog.at_level("WARNING", logger="petsynth"):
        assert group.run_group_level(Settings(bids_dir=bids, output_dir=out)) == 0
    model = normative.load(out / "group" / "normative")
    assert model.meta["controls_in_model_training"] == expected
    warned = [r.getMessage() for r in caplog.records if "trained or validated" in r.message]
    report = write_group_report(out, groups={}).read_text()
    if expected:
        assert len(warned) == 1
        assert "sub-c01, sub-c12 trained or validated the synthesis model" in warned[0]
        assert "too narrow" in warned[0] and "--participant-label" in warned[0]
        assert "<div class='warn'>&#9888; sub-c01, sub-c12 trained or validated" in report
    else:
        assert warned == []
        assert "trained or validated" not in report
        assert "<dt>Controls that trained the synthesis model</dt><dd>none</dd>" in report


def test_evaluate_cli(tmp_path, mni, capsys):
    from pet_synth_app.cli import evaluate

    out, truth = tmp_path / "out", tmp_path / "truth"
    shape = (20, 20, 20)
    aff = np.eye(4)
    lesion = np.zeros(shape)
    lesion[2:6, 2:6, 2:6] = 1
    lesion[12:16, 12:16, 12:16] = 2
    dseg = np.zeros(shape)
    dseg[8:10, 8:10, 8:10] = 1  # rank 1: false positive
    dseg[3:5, 3:5, 3:5] = 2  # rank 2 hits lesion 1
    ctrl = np.zeros(shape)
    ctrl[0:2, 0:2, 0:2] = 1
    for s, d in (("p01", dseg), ("c01", ctrl)):
        pet = out / f"sub-{s}" / "pet"
        pet.mkdir(parents=True)
        _save(pet / f"sub-{s}_trc-FDG_space-T1w_desc-hypometabolism_dseg.nii.gz", d, aff, np.int16)
        (pet / f"sub-{s}_trc-FDG_desc-hypometabolism_clusters.tsv").write_text(
            "rank\themisphere\tlobe\n1\tR\tfrontal\n2\tL\ttemporal\n"
        )
        (truth / f"sub-{s}" / "anat").mkdir(parents=True)
    _save(truth / "sub-p01" / "anat" / "sub-p01_desc-lesion_mask.nii.gz", lesion, aff, np.int16)
    (truth / "lesions.tsv").write_text(
        "participant_id\tlesion\themisphere\tlobe\tvolume_ml\tuptake_loss\n"
        "sub-p01\t1\tL\ttemporal\t0.06\t0.3\nsub-p01\t2\tR\tparietal\t0.06\t0.2\n"
    )
    assert evaluate.main([str(out), "--truth", str(truth)]) == 0
    summary = json.loads(
        (out / "group" / "evaluation" / "desc-hypometabolism_summary.json").read_text()
    )
    assert summary["sensitivity_top1"] == 0 and summary["sensitivity_top3"] == 1
    assert summary["mean_rank"] == 2 and summary["lobe_accuracy"] == 1
    assert summary["lesion_sensitivity_top3"] == 0.5 and summary["fp_per_control"] == 1
    assert (out / "group" / "evaluation" / "desc-hypometabolism_sensitivity.png").stat().st_size
    printed = capsys.readouterr().out
    assert "sensitivity within top 3" in printed and "calibrated" not in printed
    assert summary["significant_sensitivity_top3"] is None  # no calibration: not claimed
    # calibrated tables: only significant clusters count (the lesion's cluster is rank 2)
    for s, sig in (("p01", ("false", "true")), ("c01", ("true", "false"))):
        table = out / f"sub-{s}" / "pet" / f"sub-{s}_trc-FDG_desc-hypometabolism_clusters.tsv"
        table.write_text(
            "rank\themisphere\tlobe\tsignificant\n"
            f"1\tR\tfrontal\t{sig[0]}\n2\tL\ttemporal\t{sig[1]}\n"
        )
        table.with_suffix("").with_suffix(".json").write_text(
            json.dumps({"Calibration": "calibrated on 3 healthy controls (leave-one-out)"})
        )
    assert evaluate.main([str(out), "--truth", str(truth)]) == 0
    summary = json.loads(
        (out / "group" / "evaluation" / "desc-hypometabolism_summary.json").read_text()
    )
    assert summary["significant_sensitivity_top3"] == 1.0
    assert summary["significant_fp_per_control_held_out"] == 1.0
    rows = (out / "group" / "evaluation" / "desc-hypometabolism_patients.tsv").read_text()
    assert "first_hit_significant" in rows.splitlines()[0]
    assert "patients within top 3 1.00, false-positive clusters per held-out control 1.00" in (
        capsys.readouterr().out
    )
    # the lesion's cluster not significant: not found by the calibrated rule
    table = out / "sub-p01" / "pet" / "sub-p01_trc-FDG_desc-hypometabolism_clusters.tsv"
    table.write_text(
        "rank\themisphere\tlobe\tsignificant\n1\tR\tfrontal\ttrue\n2\tL\ttemporal\tfalse\n"
    )
    assert evaluate.main([str(out), "--truth", str(truth)]) == 0
    summary = json.loads(
        (out / "group" / "evaluation" / "desc-hypometabolism_summary.json").read_text()
    )
    assert summary["significant_sensitivity_top3"] == 0.0 and summary["sensitivity_top3"] == 1
    assert evaluate.main([str(out), "--truth", str(tmp_path / "nope")]) == 2
