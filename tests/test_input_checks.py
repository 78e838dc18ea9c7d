"""Bad and suspect input (issue 16, item 7): one-line errors for what cannot be
processed while the other participants run, named warnings (log, report, sidecar) for
what is suspect, the run summary and ``--qc-fail-exit``.

The workflow itself is replaced by a stand-in that records the units it was given and
writes one stat-map sidecar per unit (the real workflow is covered by test_workflow.py);
everything before and after it (input collection, checks, reports, summary) is real.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import CARD, head_like, make_bids, template_head, write_nifti

from pet_synth_app import inputcheck, runner
from pet_synth_app import layout as L
from pet_synth_app.analysis import qc
from pet_synth_app.cli import run
from pet_synth_app.synthesis.weights import default_weights


def _run(bids: Path, out: Path, *extra: str) -> int:
    return run.main([str(bids), str(out), "participant", "-w", str(out.parent / "w"), *extra])


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def _saved(out: Path, subject: str) -> list[str]:
    return inputcheck.read_warnings(L.input_warnings_file(out, subject))


def test_invalid_json_sidecar_skips_its_participant_only(tmp_path, fake_run, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    bad = bids / "sub-01" / "pet" / "sub-01_trc-FDG_pet.json"
    bad.write_text('{"TracerName": "FDG",')
    code = _run(bids, tmp_path / "out")
    lines = [ln for ln in _err_lines(capsys) if ln.startswith("petsynth: error")]
    assert code == 1
    assert fake_run == ["sub-02"]  # the healthy participant ran
    assert lines == [
        f"petsynth: error: {bad}: sub-01 skipped: sidecar is not valid JSON "
        "(Expecting property name enclosed in double quotes, line 1 column 22)"
    ]
    assert (tmp_path / "out" / "sub-02.html").is_file()
    assert not (tmp_path / "out" / "sub-01.html").exists()


def test_output_folder_not_writable_is_one_line(tmp_path, fake_run, capsys):
    bids = make_bids(tmp_path / "bids")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = _run(bids, blocker / "out")
    lines = _err_lines(capsys)
    assert code == 1 and len(lines) == 1 and fake_run == []
    assert str(blocker) in lines[0] and "not a directory" in lines[0]


def test_read_only_output_folder_is_one_line(tmp_path, fake_run, monkeypatch, capsys):
    import tempfile

    bids = make_bids(tmp_path / "bids")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root writes to read-only folders: refuse as a read-only mount
        real = tempfile.NamedTemporaryFile

        def refuse(*args, dir=None, **kwargs):
            if Path(dir) == ro:
                raise PermissionError(13, "Permission denied", str(ro))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    try:
        code = _run(bids, ro / "out")
    finally:
        ro.chmod(0o700)
    lines = _err_lines(capsys)
    assert code == 1 and len(lines) == 1 and fake_run == [], lines
    assert lines[0] == (
        f"petsynth: error: {ro}: the output folder is not writable (Permission denied); "
        f"cannot create {ro / 'out'}"
    )
    assert not (ro / "out").exists()


def test_summary_counts_two_participants_with_one_skipped(tmp_path, fake_run, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_text("<html>" + " " * 400)
    code = _run(bids, tmp_path / "out")
    assert code == 1 and fake_run == ["sub-02"]
    assert "finished: 1 of 2 unit(s) succeeded; 1 skipped, 0 failed" in capsys.readouterr().err


def _broken_case(bids: Path, case: str) -> tuple[Path | None, str, tuple[str, ...]]:
    """Break sub-01's input as in issue 16 item 7; the file named by the error (None:
    none), the expected problem and extra command-line arguments."""
    t1w = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    pet = bids / "sub-01" / "pet" / "sub-01_trc-FDG_pet.nii.gz"
    if case == "nan_pet":
        data = head_like((32, 32, 24), seed=9)
        data[10:14, 10:14, 10:14] = np.nan
        write_nifti(pet, data, (3, 3, 3))
        return pet, "sub-01 skipped: contains 64 NaN/Inf voxels", ()
    if case == "frame_list":
        side = pet.with_name("sub-01_trc-FDG_pet.json")
        meta = json.loads(side.read_text())
        side.write_text(
            json.dumps({**meta, "FrameTimesStart": [0, 600, 1200], "FrameDuration": [600] * 3})
        )
        return pet, "image has 1 frame(s), sidecar lists 3", ()
    if case == "frame_lengths":
        side = pet.with_name("sub-01_trc-FDG_pet.json")
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "FrameDuration": [600, 600]}))
        return pet, "1 FrameTimesStart vs 2 FrameDuration", ()
    if case == "t1w_4d":
        write_nifti(t1w, np.stack([head_like(seed=3)] * 2, axis=-1))
        return t1w, "T1w must be a 3D image, got shape (40, 48, 40, 2)", ()
    if case == "t1w_2d":
        write_nifti(t1w, head_like(seed=3)[:, :, 20])
        return t1w, "T1w must be a 3D image, got shape (40, 48)", ()
    assert case == "unknown_label"
    return None, "participant sub-99 not found in the dataset", ("--participant-label", "99", "02")


@pytest.mark.parametrize(
    "case", ["nan_pet", "frame_list", "frame_lengths", "t1w_4d", "t1w_2d", "unknown_label"]
)
def test_broken_input_is_one_line_and_the_other_participant_runs(tmp_path, fake_run, capsys, case):
    """The clearly broken inputs of issue 16 item 7 (NaN PET, frame lists of the wrong
    length, 4D or 2D T1w, an unknown label): exit 1, one error line naming the file and
    the problem, no traceback, the other participant runs and the summary counts both."""
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    path, problem, extra = _broken_case(bids, case)
    out = tmp_path / "out"
    code = _run(bids, out, *extra)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("petsynth: error")]
    assert code == 1 and fake_run == ["sub-02"]
    assert len(lines) == 1, lines
    assert problem in lines[0] and "\n" not in lines[0]
    if path is not None:
        assert lines[0].startswith(f"petsynth: error: {path}: sub-01 skipped: ")
    assert "Traceback" not in err
    assert "finished: 1 of 2 unit(s) succeeded; 1 skipped, 0 failed" in err
    assert (out / "sub-02.html").is_file() and not (out / "sub-01.html").exists()
    assert not (out / "sub-01").exists()


def _affine_case(bids: Path, kind: str) -> Path:
    t1w = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = nib.load(t1w)
    affine = img.affine.copy()
    if kind == "shear":
        affine[0, 1] = (
            0.3  # x moves 0.3 mm per voxel along y: 8.8 mm off a rotation at the corners
        )
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), affine)
    else:
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), affine)
        qform = affine.copy()
        qform[0, 3] += 10.0  # the qform is 10 mm away from the sform
        out.set_qform(qform, code=1)
        out.set_sform(affine, code=1)
    out.to_filename(t1w)
    return t1w


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("shear", "sheared affine (up to 8.8 mm"),
        ("qform", "qform and sform disagree by up to 10.0 mm"),
    ],
)
def test_suspect_t1w_header_is_a_named_warning(tmp_path, fake_run, capsys, kind, expected):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    t1w = _affine_case(bids, kind)
    out = tmp_path / "out"
    code = _run(bids, out)
    assert code == 0 and fake_run == ["sub-01", "sub-02"]
    err = capsys.readouterr().err
    assert any(str(t1w) in ln and expected in ln for ln in err.splitlines())
    assert any(expected in w and t1w.name in w for w in _saved(out, "01"))
    assert not any(expected in w for w in _saved(out, "02"))
    report = (out / "sub-01.html").read_text()
    assert expected in report
    side = json.loads(next((out / "sub-01").rglob("*statmap.json")).read_text())
    assert any(expected in w for w in side["InputWarnings"])


def test_missing_pet_sidecar_negative_and_non_quantitative_values(tmp_path, fake_run, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    (bids / "sub-01" / "pet" / "sub-01_trc-FDG_pet.json").unlink()
    pet2 = bids / "sub-02" / "pet" / "sub-02_trc-FDG_pet.nii.gz"
    data = head_like((32, 32, 24), seed=5) - 300.0  # a third of the head below zero
    write_nifti(pet2, data, (3, 3, 3))
    side3 = bids / "sub-03" / "pet" / "sub-03_trc-FDG_pet.json"
    side3.write_text(json.dumps({**json.loads(side3.read_text()), "Units": "counts"}))
    out = tmp_path / "out"
    code = _run(bids, out)
    assert code == 0 and fake_run == ["sub-01", "sub-02", "sub-03"]
    err = capsys.readouterr().err.splitlines()
    expected = {
        "01": "no JSON sidecar",
        "02": "negative values in",
        "03": "Units 'counts' is not an activity concentration",
    }
    for sub, text in expected.items():
        pet = bids / f"sub-{sub}" / "pet" / f"sub-{sub}_trc-FDG_pet.nii.gz"
        # terminal (naming the file), saved warnings, report and the outputs' sidecars
        assert any(text in ln and str(pet.parent) in ln for ln in err), (sub, text)
        assert any(text in w for w in _saved(out, sub))
        assert text in (out / f"sub-{sub}.html").read_text().replace("&#x27;", "'")
        side = json.loads(next((out / f"sub-{sub}").rglob("*statmap.json")).read_text())
        assert any(text in w for w in side["InputWarnings"])
        others = [w for o in expected if o != sub for w in _saved(out, o)]
        assert not any(text in w for w in others)
    assert any("negative values in" in w and pet2.name in w for w in _saved(out, "02"))
    # the hand-made sidecars of sub-02 and sub-03 lack the BIDS-required PET fields: named
    (missing,) = [w for w in _saved(out, "02") if "BIDS-required PET field" in w]
    assert "InjectedRadioactivity" in missing and "TracerName" not in missing
    assert any("BIDS-required PET field" in ln and "InjectedRadioactivity" in ln for ln in err)
    assert "InjectedRadioactivity" in (out / "sub-02.html").read_text()


def _put(img: nib.Nifti1Image, path: Path) -> Path:
    img.to_filename(str(path))
    return path


def test_modality_features_of_phantom_heads():
    """T1w (WM > GM) and FDG PET (GM > WM) tell apart, also a PET resampled onto a finer
    grid; the featureless blob of ``make_bids`` gets no verdict (no false alarm)."""
    from nibabel.processing import resample_to_output

    from pet_synth_app.preproc import modality

    t1w = modality.modality_features(template_head("T1w", skull=False))
    pet = modality.modality_features(template_head("pet"))
    resampled = modality.modality_features(resample_to_output(template_head("pet"), 1.5))
    blob = modality.modality_features(nib.Nifti1Image(head_like(), np.diag([2, 2, 2, 1.0])))
    assert t1w.wm_gm > 1.2 and t1w.sharpness > 0.3
    assert pet.wm_gm < 0.7 and resampled.wm_gm < 0.7
    assert modality.t1w_findings(t1w) == (None, None)
    assert modality.pet_findings(pet) is None
    assert modality.t1w_findings(pet)[0].startswith("does not look like a T1w: grey matter")
    assert modality.t1w_findings(resampled)[0] is not None
    assert "looks like a T1w, not an FDG PET" in modality.pet_findings(t1w)
    assert blob.wm_gm is None
    assert modality.t1w_findings(blob) == (None, None) and modality.pet_findings(blob) is None


def _phantom_bids(root: Path, subjects: tuple[str, ...]) -> Path:
    bids = make_bids(root, subjects=subjects)
    for sub in subjects:
        _put(template_head("T1w", skull=False), bids / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")
        _put(template_head("pet"), bids / f"sub-{sub}/pet/sub-{sub}_trc-FDG_pet.nii.gz")
    return bids


def test_swapped_or_pet_as_t1w_skips_that_participant_only(tmp_path, fake_run, capsys):
    """T1w and PET swapped, and a resampled PET given as the T1w (issue 16, item 7): one
    line each, those participants skipped, the other two run. Four participants and two
    processes: the checks run in worker processes (``runner.MODALITY_POOL_MIN_UNITS``)."""
    from nibabel.processing import resample_to_output

    bids = _phantom_bids(tmp_path / "bids", ("01", "02", "03", "04"))
    t1w1, pet1 = (
        bids / "sub-01/anat/sub-01_T1w.nii.gz",
        bids / "sub-01/pet/sub-01_trc-FDG_pet.nii.gz",
    )
    _put(template_head("pet"), t1w1)
    _put(template_head("T1w", skull=False), pet1)
    t1w2 = _put(
        resample_to_output(template_head("pet"), 1.5), bids / "sub-02/anat/sub-02_T1w.nii.gz"
    )
    out = tmp_path / "out"
    code = _run(bids, out, "--nprocs", "2")
    lines = [ln for ln in _err_lines(capsys) if ln.startswith("petsynth: error")]
    assert code == 1 and sorted(fake_run) == ["sub-03", "sub-04"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        f"petsynth: error: {t1w1}: sub-01 skipped: does not look like a T1w"
    )
    assert lines[0].endswith("were the T1w and PET swapped?")
    assert lines[1].startswith(
        f"petsynth: error: {t1w2}: sub-02 skipped: does not look like a T1w"
    )
    assert not lines[1].endswith("swapped?")
    assert (out / "sub-03.html").is_file() and (out / "sub-04.html").is_file()
    assert not (out / "sub-01.html").exists() and not (out / "sub-02.html").exists()


def test_pet_that_looks_like_a_t1w_is_a_named_warning(tmp_path, fake_run, capsys):
    bids = _phantom_bids(tmp_path / "bids", ("01", "02"))
    pet = _put(template_head("T1w", skull=False), bids / "sub-01/pet/sub-01_trc-FDG_pet.nii.gz")
    out = tmp_path / "out"
    code = _run(bids, out)
    expected = "looks like a T1w, not an FDG PET"
    assert code == 0 and fake_run == ["sub-01", "sub-02"]
    err = capsys.readouterr().err
    assert any(str(pet) in ln and expected in ln for ln in err.splitlines())
    assert any(expected in w and pet.name in w for w in _saved(out, "01"))
    assert not any(expected in w for w in _saved(out, "02"))
    assert expected in (out / "sub-01.html").read_text()
    side = json.loads(next((out / "sub-01").rglob("*statmap.json")).read_text())
    assert any(expected in w for w in side["InputWarnings"])


def test_missing_bids_required_pet_fields_are_named(tmp_path):
    meta = {"TracerName": "FDG", "FrameTimesStart": [0], "FrameDuration": [600]}
    (line,) = inputcheck.pet_metadata_warnings("x_pet.nii.gz", meta)
    assert line.startswith("sidecar lacks 22 BIDS-required PET field(s): Manufacturer,")
    assert "InjectedRadioactivity" in line and "TracerName" not in line
    full = {k: 1 for k in inputcheck.PET_REQUIRED_FIELDS}
    assert inputcheck.pet_metadata_warnings("x_pet.nii.gz", full) == []


def test_shipped_model_on_real_data_warns_once_per_run(tmp_path, fake_run, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    assert _run(bids, out) == 0
    assert capsys.readouterr().err.count("trained on SIMULATED phantoms") == 1
    for sub in ("01", "02"):
        assert any("petsynth-train" in w for w in _saved(out, sub))
        assert "trained on SIMULATED phantoms" in (out / f"sub-{sub}.html").read_text()
        side = json.loads(next((out / f"sub-{sub}").rglob("*statmap.json")).read_text())
        assert any("SIMULATED" in w for w in side["InputWarnings"])


def test_shipped_model_on_a_phantom_cohort_does_not_warn(tmp_path):
    bids = make_bids(tmp_path / "bids")
    desc = bids / "dataset_description.json"
    desc.write_text(
        json.dumps(
            {**json.loads(desc.read_text()), "GeneratedBy": [{"Name": "petsynth-simulate"}]}
        )
    )
    got = inputcheck.model_warnings(CARD, default_weights(), default_weights(), bids, [], 2)
    assert got == []
    other = inputcheck.model_warnings(CARD, default_weights(), default_weights(), tmp_path, [], 2)
    assert len(other) == 1


def test_model_card_trained_on_other_grid_or_tracer(tmp_path):
    from pet_synth_app.bids import PETInput, SubjectInputs

    unit = SubjectInputs("01", None, "t1.nii", [PETInput("p_pet.nii", {"TracerName": "PiB"})])
    own = tmp_path / "own.safetensors"
    got = [
        str(w)
        for w in inputcheck.model_warnings(CARD, own, default_weights(), tmp_path, [unit], 1)
    ]
    assert len(got) == 2
    assert "trained on a 2 mm grid; this run uses --mni-resolution 1" in got[0]
    assert "tracer PiB, but own.safetensors was trained on FDG PET" in got[1]
    assert inputcheck.model_warnings(CARD, own, default_weights(), tmp_path, [], 2) == []


def test_qc_failures_are_listed_and_qc_fail_exit(tmp_path, fake_run, monkeypatch, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    failing = {"sub-01": ["mni_ncc 0.612 < 0.8"]}
    monkeypatch.setattr(qc, "failed_checks", lambda out, sub: failing if sub == "01" else {})
    assert _run(bids, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "QC failed for sub-01: mni_ncc 0.612 < 0.8" in err
    assert "1 unit(s) with failed checks" in err
    assert _run(bids, tmp_path / "out2", "--qc-fail-exit") == runner.QC_FAIL_EXIT == 3
    monkeypatch.setattr(qc, "failed_checks", lambda out, sub: {})
    assert _run(bids, tmp_path / "out3", "--qc-fail-exit") == 0


def test_qc_compares_at_the_displayed_precision():
    low = qc.THRESHOLDS["mni_dice"]
    shown_equal, below = low - 0.0002, low - 0.0006  # shown as e.g. 0.940 and 0.939
    assert not qc.below(shown_equal, low) and qc.below(below, low)
    assert qc.check({"mni_dice": shown_equal}) == []
    (line,) = qc.check({"mni_dice": below})
    assert f"mni_dice = {below:.3f} < {low:g}" in line
    assert not qc.below(0.9498, 0.95)  # sub-c03 of the demo: shown 0.950, ">= 0.95" passes


def _double(x):
    return 2 * x


def test_progress_lines_count_steps_of_a_real_workflow(tmp_path):
    import nipype.pipeline.engine as pe
    from nipype.interfaces.utility import Function

    from pet_synth_app.workflows.progress import Progress

    wf = pe.Workflow("petsynth_wf", base_dir=str(tmp_path))
    sub = pe.Workflow("single_subject_01_wf")
    a = pe.Node(Function(["x"], ["out"], _double), name="a")
    a.inputs.x = 1
    b = pe.Node(Function(["x"], ["out"], _double), name="b")
    sub.connect(a, "out", b, "x")
    wf.add_nodes([sub])
    ticks = iter(range(0, 1000, 40))
    progress = Progress(wf, every_s=30, clock=lambda: next(ticks))
    lines = []
    progress_log = progress.line
    progress.line = lambda last="": lines.append(progress_log(last)) or lines[-1]
    wf.run(plugin="Linear", plugin_args={"status_callback": progress})
    assert progress.total == 2 and len(progress.done) == 2
    assert lines[-1].startswith("progress: 2 of 2 steps finished (100 %), 0 running, elapsed ")
    assert lines[-1].endswith("last: sub-01 b")


def test_progress_lines_count_the_steps_that_run(caplog):
    """Along a chain of steps (what MultiProc does for one participant, and what Linear
    always does) a step ends before the next one starts: the lines are logged when a step
    starts, so they count it (they said "0 running" while steps were running)."""
    import logging
    from types import SimpleNamespace

    from pet_synth_app.workflows.progress import Progress

    def node(name):
        return SimpleNamespace(fullname=f"petsynth_wf.single_subject_01_wf.{name}")

    nodes = [node(n) for n in ("n4", "mask", "register", "synthesis")]
    wf = SimpleNamespace(name="petsynth_wf", _get_all_nodes=lambda: nodes)
    ticks = iter(range(0, 10_000, 40))
    progress = Progress(wf, every_s=30, clock=lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="petsynth"):
        for n in nodes:
            progress(n, "start")
            progress(n, "end")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert [ln.split(", elapsed")[0] for ln in lines] == [
        "progress: 0 of 4 steps finished (0 %), 1 running",
        "progress: 1 of 4 steps finished (25 %), 1 running",
        "progress: 2 of 4 steps finished (50 %), 1 running",
        "progress: 3 of 4 steps finished (75 %), 1 running",
        "progress: 4 of 4 steps finished (100 %), 0 running",
    ]
    assert lines[1].endswith("last: sub-01 n4") and lines[-1].endswith("last: sub-01 synthesis")
    # two steps in parallel, one fails: the other still counts as running
    progress = Progress(wf, every_s=0, clock=lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="petsynth"):
        caplog.clear()
        progress(nodes[0], "start")
        progress(nodes[1], "start")
        progress(nodes[1], "exception")
        progress(nodes[2], "start")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("progress: step sub-01 mask failed") for m in messages)
    assert ", 2 running," in messages[-1]


# --- report and CLI fixes (issue 16, item 8) -------------------------------------------


def test_box_plot_has_no_empty_group_column(tmp_path):
    from pet_synth_app.reports.figures import plot_strip

    svg = plot_strip(
        {"control": {"sub-c1": 0.9, "sub-c2": 0.8}, "patient": {}}, tmp_path / "b.svg"
    ).read_text()
    assert "control" in svg and "patient" not in svg


def test_long_column_names_can_wrap():
    from pet_synth_app.reports.html import STYLE, table

    html = table(["peak_z_t1w_mm"], [["-12.0"]])
    assert "<th>peak_z_t1w_mm</th>" in html and "class='num'" in html
    assert "overflow-wrap:anywhere" in STYLE and "white-space:nowrap" in STYLE
    assert "@media print" in STYLE


def test_help_states_each_default_once(capsys):
    from pet_synth_app.cli.parser import get_parser

    text = " ".join(get_parser().format_help().split())
    assert "(default: [])" not in text and "(default: None)" not in text
    assert "default: all (default" not in text
    assert "(default: -1.65)" in text  # plain defaults are still shown
    assert "petsynth-work-" in text  # the work dir default is documented


def test_default_work_dir_is_not_the_current_folder(tmp_path, monkeypatch):
    from pet_synth_app.config import Settings

    monkeypatch.chdir(tmp_path)
    a = Settings.from_options({"bids_dir": tmp_path / "b", "output_dir": tmp_path / "o1"})
    b = Settings.from_options({"bids_dir": tmp_path / "b", "output_dir": tmp_path / "o1"})
    c = Settings.from_options({"bids_dir": tmp_path / "b", "output_dir": tmp_path / "o2"})
    assert a.work_dir == b.work_dir != c.work_dir  # reruns into one output folder resume
    assert tmp_path not in a.work_dir.parents and a.work_dir.name.startswith("petsynth-work-")


@pytest.mark.slow
def test_two_t1w_runs_outputs_and_report_agree(tmp_path):
    """Two T1w runs: the first is used, its outputs are named sub-X_* (no run-) and the
    report finds them (it said "T1w missing" with run-1_* names)."""
    import shutil

    from pet_synth_app.cli import simulate as sim_cli

    bids = tmp_path / "bids"
    args = [str(bids), "--n-controls", "1", "--n-patients", "0", "--seed", "7"]
    assert sim_cli.main([*args, "--voxel-size", "2", "--n-t1w-only", "0", "--n-4d", "0"]) == 0
    anat = next(bids.glob("sub-*/anat"))
    sub = anat.parent.name
    t1w = anat / f"{sub}_T1w.nii.gz"
    for run_ in (1, 2):
        shutil.copy(t1w, anat / f"{sub}_run-{run_}_T1w.nii.gz")
        shutil.copy(anat / f"{sub}_T1w.json", anat / f"{sub}_run-{run_}_T1w.json")
    t1w.unlink()
    (anat / f"{sub}_T1w.json").unlink()
    out = tmp_path / "out"
    code = run.main(
        [str(bids), str(out), "participant", "-w", str(tmp_path / "w"), "--sloppy"]
        + ["--nprocs", "2", "--omp-nthreads", "1", "--output-spaces", "MNI152NLin2009aSym"]
    )
    assert code == 0
    names = [p.name for p in (out / sub).rglob("*") if p.is_file()]
    assert f"{sub}_desc-preproc_T1w.nii.gz" in names
    assert not [n for n in names if "run-" in n and "trc-" not in n]
    report = (out / f"{sub}.html").read_text()
    assert "the preprocessed T1w is missing" not in report
    assert "no pseudo-normal PET" not in report
    assert f"ignoring {sub}_run-2_T1w.nii.gz" in report


def _check_unit(root: Path, name: str, t1w: nib.Nifti1Image, pet: nib.Nifti1Image):
    from types import SimpleNamespace

    t1w_path = _put(t1w, root / f"{name}_T1w.nii.gz")
    pet_path = _put(pet, root / f"{name}_pet.nii.gz")
    return SimpleNamespace(name=name, t1w=str(t1w_path), pet=[SimpleNamespace(path=pet_path)])


def test_modality_checks_in_a_started_worker_equal_the_checks_here(tmp_path):
    """With 2 processes the checks run in one ``spawn`` worker that was started (ANTs
    imported, templates made) before the units were known; same verdicts as in this
    process, in unit order. Stopped early, a busy worker is terminated at once."""
    import time

    good = _check_unit(tmp_path, "sub-01", template_head("T1w", skull=False), template_head("pet"))
    swapped = _check_unit(
        tmp_path, "sub-02", template_head("pet"), template_head("T1w", skull=False)
    )
    checks = runner.ModalityChecks(2, 2)
    assert checks._pool is not None and checks._pool._max_workers == 1
    checks.submit([good, swapped])
    there = checks.results()
    assert checks._pool is None  # shut down once the results are in
    again = runner.ModalityChecks(2, 2)
    again.submit([good, swapped])
    assert [str(r[0]) for r in again.results()] == [str(r[0]) for r in there]  # 1 ITK thread
    here = [runner.modality_checks(u) for u in (good, swapped)]
    assert there[0] == here[0] == (None, [])
    # here ITK runs on this process's thread count: the features may differ in the 2nd digit
    numbers = re.compile(r"\d+\.\d+")
    assert numbers.sub("#", str(there[1][0])) == numbers.sub("#", str(here[1][0]))
    for a, b in zip(
        numbers.findall(str(there[1][0])), numbers.findall(str(here[1][0])), strict=True
    ):
        assert float(a) == pytest.approx(float(b), abs=0.02)
    assert "sub-02 skipped: does not look like a T1w" in str(there[1][0])
    assert str(there[1][0]).endswith("were the T1w and PET swapped?")
    inline = runner.ModalityChecks(1, 2)
    assert inline._pool is None
    inline.submit([good])
    assert inline.results() == [(None, [])]
    early = runner.ModalityChecks(2, 1)  # the run stops (e.g. an invalid dataset)
    procs = list(early._pool._processes.values())
    t0 = time.monotonic()
    early.close()  # returns once the workers are gone (SIGKILL after CLOSE_GRACE_S)
    assert not any(proc.is_alive() for proc in procs)
    assert time.monotonic() - t0 < 4 * runner.CLOSE_GRACE_S + 1  # not the ~20 s warm-up
