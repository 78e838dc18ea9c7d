"""Workflow construction and run plumbing, without executing the heavy steps."""

from __future__ import annotations

import json

import pytest
from conftest import make_bids
from nipype.interfaces.base import isdefined

from pet_synth_app import bids as pbids
from pet_synth_app.config import Settings
from pet_synth_app.errors import PetSynthError
from pet_synth_app.plan import resolve_device
from pet_synth_app.workflows import base


def _units(tmp_path, **kw):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"), **kw)
    units, _ = pbids.collect_inputs(pbids.load_layout(root))
    return root, units


def test_graph_has_every_step_and_sink(tmp_path):
    root, units = _units(tmp_path, frames=2)
    settings = Settings(bids_dir=root, output_dir=tmp_path / "out", work_dir=tmp_path / "w")
    wf = base.init_petsynth_wf(settings, units)
    names = set(wf.list_node_names())
    for step in (
        "anat_preproc_wf.skullstrip",
        "anat_preproc_wf.n4",
        "anat_preproc_wf.register",
        "anat_preproc_wf.segment",
        "pet_trc_FDG_wf.frame_average",
        "pet_trc_FDG_wf.coregister",
        "pet_trc_FDG_wf.suvr",
        "pet_trc_FDG_wf_derivatives.ds_pet_std",
        "pet_trc_FDG_wf_derivatives.ds_pet_t1w",
        "synthesis_wf.synthesize",
        "synthesis_wf.pseudo_to_t1w",
        "synthesis_derivatives_wf.ds_pseudo_std",
        "pet_trc_FDG_wf_hypo.zmap",
        "pet_trc_FDG_wf_hypo.clusters",
        "pet_trc_FDG_wf_hypo.cluster_table",
        "pet_trc_FDG_wf_hypo_derivatives.ds_stat_std",
        "pet_trc_FDG_wf_hypo_derivatives.ds_dseg_t1w",
        "pet_trc_FDG_wf_hypo_derivatives.ds_clusters",
    ):
        for sub in ("01", "02"):
            assert f"single_subject_{sub}_wf.{step}" in names, step
    # the frame durations from the sidecar reach the frame-average step
    node = wf.get_node("single_subject_01_wf.pet_trc_FDG_wf.frame_average")
    assert node.inputs.frame_durations == [600.0, 600.0]
    assert "N4" in wf.visit_desc() and "pseudo-normal" in wf.visit_desc()
    assert "mean PET of its training participants" in wf.visit_desc()  # shipped: prior
    # two subjects describe the same steps: the boilerplate keeps one copy of each
    from pet_synth_app.boilerplate import unique_paragraphs

    assert unique_paragraphs(wf.visit_desc()).count("Results included in this") == 1
    # no group model in the output folder yet: self-referenced Z
    zmap = wf.get_node("single_subject_01_wf.pet_trc_FDG_wf_hypo.zmap")
    assert not isdefined(zmap.inputs.normative)


def test_normative_model_adds_the_control_pet_map(tmp_path):
    """With a group normative model in the output folder, every PET series also gets the
    classic control-PET Z map (no synthesis), clustered and written as desc-controlpet."""
    import numpy as np

    from pet_synth_app.analysis import normative
    from pet_synth_app.preproc.templates import get_template
    from pet_synth_app.synthesis.weights import default_weights, read_card

    ref = get_template("mask", 2)
    mask = np.asanyarray(ref.dataobj) > 0
    pets = [np.where(mask, 1.0 + 0.01 * i, 0.0) for i in range(3)]
    sha = read_card(default_weights())["sha256"]
    model = normative.fit_from_controls(
        pets, pets, [mask] * 3, ref.affine, {"model_sha256": sha, "histogram_matching": False}
    )
    normative.save(model, tmp_path / "out" / "group" / "normative")
    root, units = _units(tmp_path)
    settings = Settings(bids_dir=root, output_dir=tmp_path / "out", work_dir=tmp_path / "w")
    wf = base.init_petsynth_wf(settings, units)
    names = set(wf.list_node_names())
    for step in (
        "pet_trc_FDG_wf_controlpet.zmap",
        "pet_trc_FDG_wf_controlpet.clusters",
        "pet_trc_FDG_wf_controlpet_derivatives.ds_stat_std",
        "pet_trc_FDG_wf_controlpet_derivatives.ds_clusters",
    ):
        assert f"single_subject_01_wf.{step}" in names, step
    ds = wf.get_node("single_subject_01_wf.pet_trc_FDG_wf_controlpet_derivatives.ds_stat_std")
    assert ds.inputs.desc == "controlpet" and ds.inputs.stat == "z"
    hypo = wf.get_node("single_subject_01_wf.pet_trc_FDG_wf_hypo.zmap")
    assert isdefined(hypo.inputs.normative)  # the synthesis map is control-referenced too
    assert "without synthesis" in wf.visit_desc()


def test_output_spaces_select_sinks(tmp_path):
    root, units = _units(tmp_path)
    settings = Settings(
        bids_dir=root, output_dir=tmp_path / "o", work_dir=tmp_path / "w", output_spaces=["T1w"]
    )
    names = base.init_petsynth_wf(settings, units).list_node_names()
    assert any(n.endswith("ds_pet_t1w") for n in names)
    assert not any(n.endswith("ds_pet_std") for n in names)


def test_names():
    unit = pbids.SubjectInputs(subject="01", session="A", t1w="x")
    assert base.unit_wf_name(unit) == "single_subject_01_ses_A_wf"
    assert base._pet_wf_name("/d/sub-01_ses-A_trc-FDG_run-2_pet.nii.gz") == "pet_trc_FDG_run_2_wf"
    assert base._pet_wf_name("/d/sub-01_pet.nii.gz") == "pet_main_wf"


def test_plugin_selection(tmp_path):
    s = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", nprocs=1)
    assert base._plugin(s) == ("Linear", {})
    s = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", nprocs=2, mem_mb=4096)
    plugin, args = base._plugin(s)
    assert plugin == "MultiProc" and args["n_procs"] == 2 and args["memory_gb"] == 4
    yml = tmp_path / "plugin.yml"
    yml.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n")
    s = Settings(bids_dir=tmp_path, output_dir=tmp_path / "o", use_plugin=yml)
    assert base._plugin(s) == ("SLURM", {"sbatch_args": "--time=1:00:00"})


def test_failed_units_from_crash_files(tmp_path):
    (tmp_path / "crash-1-root-register-abc.txt").write_text(
        "Node: petsynth_wf.single_subject_02_ses_B_wf.anat_preproc_wf.register\n"
        "Working directory: /w\n\nTraceback (most recent call last):\n  File x\n"
        "ValueError: registration diverged\n"
    )
    failed = base.failed_units(tmp_path)
    assert failed[0][0] == "sub-02_ses-B"
    assert "register" in failed[0][1] and "ValueError: registration diverged" in failed[0][1]


def test_bids_filters_are_applied(tmp_path):
    root = make_bids(tmp_path / "ds", subjects=("01",))
    src = root / "sub-01/pet/sub-01_trc-FDG_pet"
    for ext in (".nii.gz", ".json"):
        dst = root / f"sub-01/pet/sub-01_trc-FDG_rec-acdyn_pet{ext}"
        dst.write_bytes(src.with_name(src.name + ext).read_bytes())
    layout = pbids.load_layout(root)
    units, _ = pbids.collect_inputs(layout)
    assert len(units[0].pet) == 2
    units, _ = pbids.collect_inputs(layout, bids_filters={"pet": {"reconstruction": "acdyn"}})
    assert [p.path.rsplit("/", 1)[1] for p in units[0].pet] == [
        "sub-01_trc-FDG_rec-acdyn_pet.nii.gz"
    ]
    assert json.loads(json.dumps(units[0].pet[0].metadata))["TracerName"] == "FDG"


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(PetSynthError, match="no CUDA device"):
            resolve_device("cuda")


def test_run_config_reaches_the_workflow_copy(tmp_path, monkeypatch):
    """A workflow copies Nipype's global config when built; the run's execution settings
    must reach that copy, or node hashes differ between the first and later runs of a
    process (remove_unnecessary_outputs puts the needed outputs into the hash)."""
    from nipype import config as ncfg

    ncfg.set("execution", "remove_unnecessary_outputs", "true")  # Nipype's default
    root, units = _units(tmp_path)
    settings = Settings(bids_dir=root, output_dir=tmp_path / "o", work_dir=tmp_path / "w")
    wf = base.init_petsynth_wf(settings, units)
    assert wf.config["execution"]["remove_unnecessary_outputs"] in (True, "true")
    seen = {}
    monkeypatch.setattr(wf, "run", lambda **kw: seen.update(wf.config["execution"]))
    assert base.run_workflow(wf, settings, "run1") == []
    assert seen["remove_unnecessary_outputs"] == "false"
    assert float(seen["poll_sleep_duration"]) <= 0.5
    assert seen["crashdump_dir"].endswith("crash-run1")
