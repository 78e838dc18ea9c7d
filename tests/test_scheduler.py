"""Participant-ordered (depth-first) MultiProc scheduling."""

from __future__ import annotations

from pet_synth_app.workflows.scheduler import (
    ParticipantOrderMultiProcPlugin,
    participant_order,
    unit_of,
)


def test_unit_of_finds_the_participant_workflow():
    assert unit_of("petsynth_wf.single_subject_c01_wf.anat_preproc_wf.n4") == (
        "single_subject_c01_wf"
    )
    assert unit_of("petsynth_wf.single_subject_01_ses_a_wf.x") == "single_subject_01_ses_a_wf"
    assert unit_of("petsynth_wf.collect_qc") is None


def test_ready_steps_of_earlier_participants_go_first():
    units = ["single_subject_c01_wf", "single_subject_c02_wf", "single_subject_p01_wf"]
    ready = [  # graph (breadth-first) order: participants interleaved
        "petsynth_wf.single_subject_p01_wf.anat_preproc_wf.n4",
        "petsynth_wf.single_subject_c02_wf.anat_preproc_wf.n4",
        "petsynth_wf.single_subject_c01_wf.pet_wf.mcflirt",
        "petsynth_wf.single_subject_c01_wf.anat_preproc_wf.n4",
        "petsynth_wf.summary",
    ]
    order = [ready[i] for i in participant_order(ready, units)]
    assert order == [
        "petsynth_wf.summary",
        "petsynth_wf.single_subject_c01_wf.pet_wf.mcflirt",
        "petsynth_wf.single_subject_c01_wf.anat_preproc_wf.n4",
        "petsynth_wf.single_subject_c02_wf.anat_preproc_wf.n4",
        "petsynth_wf.single_subject_p01_wf.anat_preproc_wf.n4",
    ]


def test_the_pet_chain_head_goes_first_within_a_participant():
    """With the anatomy reused, the PET coregistration is the longest chain: it must not
    wait behind the anatomical derivative sinks that are ready at the same time."""
    units = ["single_subject_c01_wf", "single_subject_c02_wf"]
    ready = [
        "petsynth_wf.single_subject_c01_wf.anat_derivatives_wf.ds_t1w_preproc",
        "petsynth_wf.single_subject_c02_wf.pet_trc_FDG_wf.frame_average",
        "petsynth_wf.single_subject_c01_wf.anat_derivatives_wf.ds_gm",
        "petsynth_wf.single_subject_c01_wf.pet_trc_FDG_wf.coregister",
        "petsynth_wf.single_subject_c01_wf.pet_ses_a_trc_FDG_wf.frame_average",
    ]
    order = [ready[i] for i in participant_order(ready, units)]
    assert order == [
        "petsynth_wf.single_subject_c01_wf.pet_trc_FDG_wf.coregister",
        "petsynth_wf.single_subject_c01_wf.pet_ses_a_trc_FDG_wf.frame_average",
        "petsynth_wf.single_subject_c01_wf.anat_derivatives_wf.ds_t1w_preproc",
        "petsynth_wf.single_subject_c01_wf.anat_derivatives_wf.ds_gm",
        "petsynth_wf.single_subject_c02_wf.pet_trc_FDG_wf.frame_average",
    ]


def test_plugin_sorts_jobs_by_participant():
    plugin = ParticipantOrderMultiProcPlugin(
        plugin_args={"n_procs": 1, "unit_order": ["single_subject_b_wf", "single_subject_a_wf"]}
    )
    assert plugin.processors == 1 and "unit_order" not in plugin.plugin_args

    class _Node:
        def __init__(self, fullname):
            self.fullname = fullname

    plugin.procs = [_Node("w.single_subject_a_wf.x"), _Node("w.single_subject_b_wf.y")]
    assert plugin._sort_jobs([0, 1]) == [1, 0]


def _echo(x):
    return x


def _tiny_wf(base_dir):
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    top = pe.Workflow(name="petsynth_wf", base_dir=str(base_dir))
    for label in ("a", "b"):
        unit = pe.Workflow(name=f"single_subject_{label}_wf")
        one = pe.Node(niu.Function(function=_echo), name="one")  # identity nodes vanish
        one.inputs.x = label
        two = pe.Node(niu.Function(function=_echo), name="two")
        unit.connect(one, "out", two, "x")
        ident = pe.Node(niu.IdentityInterface(fields=["x"]), name="outputnode")  # removed
        unit.connect(two, "out", ident, "x")
        top.add_nodes([unit])
    return top


def test_progress_reports_each_unit_once_when_all_its_steps_ended(tmp_path):
    from pet_synth_app.workflows.progress import Progress

    done = []
    wf = _tiny_wf(tmp_path)
    progress = Progress(wf, on_unit_done=done.append)
    assert progress.unit_total == {"single_subject_a_wf": 2, "single_subject_b_wf": 2}
    wf.run(plugin="Linear", plugin_args={"status_callback": progress})
    assert sorted(done) == ["single_subject_a_wf", "single_subject_b_wf"]
    wf.run(plugin="Linear", plugin_args={"status_callback": progress})  # cached rerun
    assert len(done) == 2


def test_progress_with_a_report_pool_survives_nipypes_copies(tmp_path):
    """MapNodes carry the plugin arguments (this callback) and Nipype deep-copies and
    pickles them for the workers, also after the report writer has started its pool."""
    import copy
    import pickle
    import threading

    from pet_synth_app.workflows.progress import Progress

    class Holder:  # stands for SubjectReports with its process pool
        lock = None

        def __init__(self):
            self.lock = threading.RLock()

        def unit_done(self, unit):
            pass

    progress = Progress(_tiny_wf(tmp_path), on_unit_done=Holder().unit_done)
    assert copy.deepcopy({"status_callback": progress})["status_callback"] is progress
    clone = pickle.loads(pickle.dumps(progress))
    assert clone.on_unit_done is None and clone.unit_total == progress.unit_total


def test_report_workers_are_warmed_up_once_the_graph_starts(tmp_path):
    """``warm_up`` (``run_workflow``'s ``on_start``) starts one report worker per subject
    (at most ``workers``) and imports the report's modules in it; nothing with one
    worker, the only core of a ``--nprocs 1`` run."""
    from pet_synth_app.reports.background import SubjectReports

    units = {"single_subject_01_wf": "01"}
    reports = SubjectReports(tmp_path, units, {}, "run", tmp_path / "c.toml", workers=2)
    reports.warm_up()
    assert len(reports.warming) == 1
    assert reports.warming[0].result(timeout=300) is True
    assert reports.finish([]) == [] and reports.futures == {}
    single = SubjectReports(tmp_path, units, {}, "run", tmp_path / "c.toml", workers=1)
    single.warm_up()
    assert single.warming == [] and single._pool is None


def test_registration_qc_is_computed_once_the_template_space_t1w_is_written(tmp_path, monkeypatch):
    """``step_done``: once a unit's template-space T1w and mask sinks have ended, the
    report worker computes its participant's registration QC (``prefetch_qc``), which
    the report then reads from ``analysis.qc``'s memo instead of computing it again."""
    import nibabel as nib

    from pet_synth_app import layout as L
    from pet_synth_app.analysis import qc
    from pet_synth_app.preproc.templates import get_template
    from pet_synth_app.reports import background
    from pet_synth_app.reports.background import SubjectReports, prefetch_qc

    unit = "single_subject_01_wf"
    reports = SubjectReports(tmp_path, {unit: "01"}, {}, "run", tmp_path / "c.toml", workers=2)
    reports.step_done(f"{unit}.anat_derivatives_wf.ds_t1w_std")
    reports.step_done("single_subject_02_wf.anat_derivatives_wf.ds_mask_std")  # not ours
    assert reports.prefetching == {}
    reports.step_done(f"{unit}.anat_derivatives_wf.ds_mask_std")
    assert reports.prefetching["01"].result(timeout=300) == 0  # no output folder yet
    reports.step_done(f"{unit}.anat_derivatives_wf.ds_mask_std")  # once per participant
    assert len(reports.prefetching) == 1
    reports.finish([])
    single = SubjectReports(tmp_path, {unit: "01"}, {}, "run", tmp_path / "c.toml", workers=1)
    for step in background.PREFETCH_AFTER:
        single.step_done(f"{unit}.anat_derivatives_wf.{step}")
    assert single.prefetching == {} and single._pool is None

    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(get_template("T1w", 2), L.path(anat.parent, "sub-01", "t1w", "MNI152NLin2009aSym"))
    nib.save(get_template("mask", 2), L.path(anat.parent, "sub-01", "mask", "MNI152NLin2009aSym"))
    assert prefetch_qc(out, "01") == 1
    first = qc.unit_registration_qc(*qc.anat_of(out / "sub-01", "01"))
    assert first["mni_ncc"] > 0.99 and first["mni_dice"] > 0.99

    def again(*_a):
        raise AssertionError("computed again")

    monkeypatch.setattr(qc, "_registration", again)
    assert qc.unit_registration_qc(*qc.anat_of(out / "sub-01", "01")) == first


def test_progress_reports_each_ended_step(tmp_path):
    """``on_step_done`` gets every ended step (unit-relative names), and a pickled copy
    (a worker's) carries no callback."""
    import pickle

    from pet_synth_app.workflows.progress import Progress

    steps = []
    wf = _tiny_wf(tmp_path)
    progress = Progress(wf, on_step_done=steps.append)
    wf.run(plugin="Linear", plugin_args={"status_callback": progress})
    assert sorted(steps) == [
        "single_subject_a_wf.one",
        "single_subject_a_wf.two",
        "single_subject_b_wf.one",
        "single_subject_b_wf.two",
    ]
    assert pickle.loads(pickle.dumps(progress)).on_step_done is None
