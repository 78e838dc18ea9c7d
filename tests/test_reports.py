"""Participant and group HTML reports on a tiny fake derivative tree (real naming scheme)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis.clusters import CLUSTER_COLUMNS
from pet_synth_app.reports.group_report import write_group_report
from pet_synth_app.reports.subject import SECTIONS, write_subject_report

SPACE = "MNI152NLin2009aSym"
SHAPE = (30, 36, 30)
AFFINE = np.array([[2.0, 0, 0, -30], [0, 2.0, 0, -40], [0, 0, 2.0, -25], [0, 0, 0, 1]])
CLUSTER_HEADER = list(CLUSTER_COLUMNS)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, meta: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data), affine).to_filename(str(path))
    if meta is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(meta))
    return path


def _tissues(shape=SHAPE):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    brain = r < 0.8
    wm = np.clip((0.55 - r) / 0.1 + 0.5, 0, 1) * brain
    gm = np.clip(1 - wm, 0, 1) * brain
    return brain, gm.astype(np.float32), wm.astype(np.float32)


def _blob(shape, center, radius):
    idx = np.indices(shape)
    return sum((idx[i] - center[i]) ** 2 for i in range(3)) <= radius**2


def make_tree(
    out: Path,
    subject: str = "01",
    series=("trc-FDG",),
    session: str | None = None,
    ocsvm: bool = True,
    pet: bool = True,
    pseudo: bool = True,
    n_clusters: int = 2,
) -> Path:
    """Write a participant's derivatives (T1w, MNI, PET series, maps, tables) in ``out``."""
    from pet_synth_app.preproc.templates import get_template

    rng = np.random.default_rng(0)
    ent = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    unit = out / f"sub-{subject}" / (f"ses-{session}" if session else "")
    anat, petd = unit / "anat", unit / "pet"
    brain, gm, wm = _tissues()
    t1w = 0.3 * brain + 0.4 * gm * 0 + 0.9 * wm + 0.5 * gm + rng.normal(0, 0.02, SHAPE)
    src_t1 = f"bids:raw:sub-{subject}/anat/sub-{subject}_T1w.nii.gz"
    _save(
        anat / f"{ent}_desc-preproc_T1w.nii.gz", t1w.astype(np.float32), meta={"Sources": [src_t1]}
    )
    _save(anat / f"{ent}_desc-brain_mask.nii.gz", brain.astype(np.uint8))
    _save(anat / f"{ent}_label-GM_probseg.nii.gz", gm)
    _save(anat / f"{ent}_label-WM_probseg.nii.gz", wm)
    tpl, tmask = get_template("T1w", 2), get_template("mask", 2)
    tgm, twm = get_template("GM", 2).get_fdata(), get_template("WM", 2).get_fdata()
    _save(
        anat / f"{ent}_space-{SPACE}_desc-preproc_T1w.nii.gz",
        tpl.get_fdata().astype(np.float32),
        tpl.affine,
    )
    _save(
        anat / f"{ent}_space-{SPACE}_desc-brain_mask.nii.gz",
        np.asarray(tmask.dataobj).astype(np.uint8),
        tpl.affine,
    )
    pet_mni = (2.0 * tgm + 0.8 * twm).astype(np.float32)
    if pseudo:
        meta = {
            "Model": "cyclegan-mse",
            "ModelWeights": "w.safetensors",
            "ModelWeightsSha256": "ab" * 32,
            "SmoothingFWHM": 3.0,
            "Device": "cpu",
            "Sources": [src_t1],
            "SoftwareVersion": "petsynth test",
        }
        _save(
            petd / f"{ent}_space-{SPACE}_desc-pseudonormal_pet.nii.gz",
            pet_mni * 0.95,
            tpl.affine,
            meta,
        )
        _save(
            petd / f"{ent}_space-T1w_desc-pseudonormal_pet.nii.gz",
            (2.0 * gm + 0.8 * wm).astype(np.float32),
            meta=meta,
        )
    if not pet:
        return unit
    for s in series:
        pre = f"{ent}_{s}"
        src = [f"bids:raw:sub-{subject}/pet/{pre}_pet.nii.gz", src_t1]
        _save(
            petd / f"{pre}_space-T1w_desc-preproc_pet.nii.gz",
            (2.0 * gm + 0.8 * wm).astype(np.float32),
            meta={"Sources": src, "ReferenceRegion": "gm-mean", "IntensityNormalization": "SUVR"},
        )
        _save(petd / f"{pre}_space-{SPACE}_desc-preproc_pet.nii.gz", pet_mni, tpl.affine)
        blobs = [_blob(SHAPE, (10, 18, 15), 3), _blob(SHAPE, (20, 12, 15), 2)][:n_clusters]
        for desc, stat in (("hypometabolism", "z"), ("controlpet", "z"), ("ocsvm", "score")):
            if desc != "hypometabolism" and not ocsvm:  # both appear after the group level
                continue
            zmap = rng.normal(0, 0.5, SHAPE).astype(np.float32) * brain
            dseg = np.zeros(SHAPE, np.int16)
            for k, b in enumerate(blobs, start=1):
                zmap[b] = -4.0 + k * 0.5
                dseg[b] = k
            meta = {
                "Threshold": -1.65,
                "Tail": "lower",
                "MinimumClusterVolume": 100.0,
                "MinimumClusterVolumeUnits": "mm^3",
                "NumberOfClusters": len(blobs),
                "RankedBy": "mass",
                "Sources": src,
            }
            if desc != "ocsvm":  # the Z maps' analysis smoothing
                meta["SmoothingFWHM"] = 8.0
            _save(
                petd / f"{pre}_space-T1w_desc-{desc}_stat-{stat}_statmap.nii.gz", zmap, meta=meta
            )
            _save(petd / f"{pre}_space-T1w_desc-{desc}_dseg.nii.gz", dseg)
            rows = ["\t".join(CLUSTER_HEADER)]
            for k in range(1, len(blobs) + 1):
                rows.append(
                    "\t".join(
                        [
                            str(k),
                            "200",
                            "-4",
                            "-3",
                            "-20",
                            "0",
                            "5",
                            "L",
                            "temporal",
                            "Left_Temporal_Pole",
                            "20",
                            "25",
                        ]
                    )
                )
            (petd / f"{pre}_desc-{desc}_clusters.tsv").write_text("\n".join(rows) + "\n")
    return unit


def make_outputs(out: Path) -> Path:
    """Dataset-level files: description, citation and a settings file."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "x",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "PetSynth", "Version": "0.test"}],
            }
        )
    )
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / "CITATION.md").write_text(
        "# Methods\n\nThe T1w was `skull-stripped`.\n\n## References\n\n- one\n- two\n"
    )
    settings = out / "logs" / "config-1.toml"
    settings.write_text("[petsynth]\n")
    return settings


def _links(html_path: Path) -> list[str]:
    text = html_path.read_text()
    return re.findall(r"(?:src|href|data)=['\"]([^'\"]+)['\"]", text)


def _check_links(html_path: Path) -> None:
    from urllib.parse import unquote

    for link in _links(html_path):
        assert not link.startswith(("http://", "https://", "//")), link
        if link.startswith("#"):
            continue
        assert (html_path.parent / unquote(link)).exists(), link


def _section(text: str, anchor: str) -> str:
    m = re.search(rf"<section id='{anchor}'>(.*?)</section>", text, flags=re.S)
    assert m, anchor
    return m.group(1)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    settings = make_outputs(out)
    make_tree(out, "01")
    path = write_subject_report(out, "01", "run1", settings)
    return out, path


def test_subject_report_has_all_sections(full_report):
    out, path = full_report
    assert path == out / "sub-01.html"
    text = path.read_text()
    for anchor, _ in SECTIONS:
        body = _section(text, anchor)
        assert "Not available because" not in body, anchor
        assert "class='error'" not in body, (anchor, body[:500])
    figs = sorted(p.name for p in (out / "sub-01" / "figures").glob("*.svg"))
    assert figs == sorted(
        [
            "sub-01_desc-brainmask_T1w.svg",
            "sub-01_desc-normalization_T1w.svg",
            "sub-01_trc-FDG_desc-coreg_pet.svg",
            "sub-01_trc-FDG_desc-synthesis_pet.svg",
            "sub-01_trc-FDG_desc-hypometabolism_statmap.svg",
            "sub-01_trc-FDG_desc-controlpet_statmap.svg",
            "sub-01_trc-FDG_desc-ocsvm_statmap.svg",
        ]
    )
    assert "ab" * 32 in text and "cyclegan-mse" in text  # model sha256
    assert "-1.65" in text and "gm-mean" in text  # thresholds, reference region
    assert "config-1.toml" in text and "run1" in text
    assert "Left_Temporal_Pole" in text  # cluster table
    assert "<h3>References</h3>" in text or "References" in _section(text, "methods")
    assert "SSIM" in _section(text, "synthesis")
    assert "sub-01/anat/sub-01_T1w.nii.gz" in text  # Sources
    _check_links(path)
    assert not list(out.glob("*.tmp*"))


def test_flicker_svg_is_self_contained(full_report):
    out, _ = full_report
    svg = (out / "sub-01" / "figures" / "sub-01_desc-normalization_T1w.svg").read_text()
    assert "@keyframes" in svg and "foreground-svg" in svg and "background-svg" in svg
    assert not re.search(r"(?:href|src)=['\"]https?://", svg)


def test_printed_normalization_figure_shows_the_participant(full_report):
    """The flicker figure shows its foreground unless hovered (and in print): that layer
    is the participant's T1w, the template is the hover layer (issue 16 item 8)."""
    out, _ = full_report
    svg = (out / "sub-01" / "figures" / "sub-01_desc-normalization_T1w.svg").read_text()
    assert re.search(r"@keyframes \S+ \{ 0% \{opacity: 1;\}", svg)  # shown until hovered
    assert re.search(r"\.foreground-svg \{ animation: [^}]* paused", svg)
    background, foreground = svg.split('class="foreground-svg"')
    assert "participant T1w" in foreground and "MNI template" not in foreground
    assert "MNI template" in background and "participant T1w" not in background


def test_calibration_is_said_in_the_summary_and_above_each_table(tmp_path):
    """Issue 16 item 1: an uncalibrated map says so in plain words in the summary (the
    report header) and above its clusters; a calibrated one gives its significant count."""
    from pet_synth_app.analysis.calibration import UNCALIBRATED, describe

    settings = make_outputs(tmp_path)
    unit = make_tree(tmp_path, "06")
    pet = unit / "pet"
    sides = {
        "hypometabolism": {"Calibration": UNCALIBRATED, "NumberSignificant": None},
        "controlpet": {"Calibration": describe([[5.0], [], [], []]), "NumberSignificant": 1},
    }
    for desc, meta in sides.items():
        (pet / f"sub-06_trc-FDG_desc-{desc}_clusters.json").write_text(json.dumps(meta))
    text = write_subject_report(tmp_path, "06", "run1", settings).read_text()
    summary = _section(text, "summary")
    rows = re.findall(r"<tr>(.*?)</tr>", summary.split("Thresholds and reference")[1])
    cells = {re.findall(r"<td>(.*?)</td>", r)[1]: r for r in rows if r.count("<td") > 3}  # by map
    assert "uncalibrated: healthy scans show clusters too" in cells["Z"]
    assert "1 (vs healthy controls)" in cells["control-PET Z"]
    assert "<td>n/a</td>" in cells["OC-SVM score"]  # no cluster-table sidecar
    assert "<td>8 mm</td>" in cells["Z"] and "<td>8 mm</td>" in cells["control-PET Z"]
    assert "<th>analysis smoothing (FWHM)</th>" in summary
    # the pseudo-PET's own smoothing (its sidecar's SmoothingFWHM: 3) is named apart
    hypo = _section(text, "hypometabolism")
    assert "Uncalibrated map:" in hypo and "not findings by themselves" in hypo
    assert "<b>1 cluster significant</b> against healthy controls" in text
    assert "<dt>pseudo-PET smoothing (FWHM)</dt><dd>3 mm</dd>" in text
    assert "<dt>analysis smoothing (FWHM)</dt><dd>8 mm</dd>" in hypo
    assert "<dt>SmoothingFWHM</dt>" not in text  # never the bare key for two settings


def test_z_map_of_controls_that_trained_the_model_is_warned_about(tmp_path):
    """A Z map whose normative controls trained the synthesis model
    (``NormativeControlsInModelTraining``) carries the group level's warning in the
    report's warnings; an empty list does not."""
    settings = make_outputs(tmp_path)
    for subject, in_training in (("07", ["sub-c01", "sub-c02"]), ("08", [])):
        unit = make_tree(tmp_path, subject)
        stat = next((unit / "pet").glob("*desc-hypometabolism_stat-z_statmap.json"))
        meta = json.loads(stat.read_text())
        stat.write_text(json.dumps({**meta, "NormativeControlsInModelTraining": in_training}))
        text = write_subject_report(tmp_path, subject, "run1", settings).read_text()
        warnings = _section(text, "summary").split("<h3>Warnings</h3>")[1].split("<h3>")[0]
        said = "sub-c01, sub-c02 trained or validated the synthesis model" in warnings
        assert said == bool(in_training), subject
        assert ("too narrow" in warnings) == bool(in_training)


def test_missing_inputs_give_not_available(tmp_path):
    settings = make_outputs(tmp_path)
    make_tree(tmp_path, "02", ocsvm=False, pseudo=False, n_clusters=0)
    text = write_subject_report(tmp_path, "02", "run1", settings).read_text()
    assert "Not available because" in _section(text, "anomaly")
    assert "Not available because" in _section(text, "synthesis")
    assert "No cluster" in _section(text, "hypometabolism")
    summary = _section(text, "summary")
    assert "zero hypometabolism clusters" in summary and "synthesis skipped" in summary
    assert "Not available because" not in _section(text, "anatomical")
    _check_links(tmp_path / "sub-02.html")


def test_t1w_only_participant(tmp_path):
    settings = make_outputs(tmp_path)
    make_tree(tmp_path, "03", pet=False)
    text = write_subject_report(tmp_path, "03", "run1", settings).read_text()
    assert "no PET series" in _section(text, "coregistration")
    assert "desc-synthesis_pet.svg" in _section(text, "synthesis")
    _check_links(tmp_path / "sub-03.html")


def test_broken_figure_input_does_not_abort(tmp_path):
    settings = make_outputs(tmp_path)
    unit = make_tree(tmp_path, "04")
    (unit / "pet" / "sub-04_trc-FDG_space-T1w_desc-preproc_pet.nii.gz").write_bytes(b"junk")
    (unit / "pet" / "sub-04_trc-FDG_space-T1w_desc-hypometabolism_dseg.nii.gz").write_bytes(b"")
    path = write_subject_report(tmp_path, "04", "run1", settings)
    text = path.read_text()
    assert "could not be made" in _section(text, "coregistration")
    assert "could not be made" in _section(text, "hypometabolism")
    assert "desc-brainmask_T1w.svg" in text  # the other figures are still there
    _check_links(path)


def test_sessions_and_several_series(tmp_path):
    settings = make_outputs(tmp_path)
    make_tree(tmp_path, "05", series=("trc-FDG_run-1", "trc-FDG_run-2"), session="A", ocsvm=False)
    make_tree(tmp_path, "05", session="B", pet=False)
    text = write_subject_report(tmp_path, "05", "run1", settings).read_text()
    hypo = _section(text, "hypometabolism")
    assert "sub-05_ses-A_trc-FDG_run-1" in hypo and "sub-05_ses-A_trc-FDG_run-2" in hypo
    assert "sub-05_ses-B" in _section(text, "anatomical")
    figs = {p.name for p in (tmp_path / "sub-05" / "figures").glob("*.svg")}
    assert "sub-05_ses-A_trc-FDG_run-2_desc-hypometabolism_statmap.svg" in figs
    assert "sub-05_ses-B_desc-brainmask_T1w.svg" in figs
    _check_links(tmp_path / "sub-05.html")


def test_group_report_qc_table_and_detection(tmp_path):
    out = tmp_path / "out"
    settings = make_outputs(out)
    for sub in ("c1", "p1"):
        make_tree(out, sub, ocsvm=False)
        write_subject_report(out, sub, "run1", settings)
    truth = tmp_path / "truth"
    (truth / "sub-c1").mkdir(parents=True)
    lesion = np.zeros(SHAPE, np.int16)
    lesion[_blob(SHAPE, (20, 12, 15), 2)] = 1
    _save(truth / "sub-p1" / "anat" / "sub-p1_desc-lesion_mask.nii.gz", lesion)
    (truth / "lesions.tsv").write_text(
        "participant_id\tlesion\themisphere\tlobe\tvolume_ml\tuptake_loss\n"
        "sub-p1\t1\tL\ttemporal\t0.2\t0.3\n"
    )
    path = write_group_report(out, truth_dir=truth, groups={"c1": "control", "p1": "patient"})
    assert path == out / "group" / "report.html"
    text = path.read_text()
    qc_rows = re.findall(
        r"<tr(?: class='bad')?><td><a href='[^']*sub-(\w+)\.html'", _section(text, "qc")
    )
    assert qc_rows == ["c1", "p1"]
    detection = _section(text, "detection")
    assert "desc-hypometabolism_sensitivity.png" in detection
    assert "sensitivity_top1" in detection
    assert (out / "group" / "figures" / "desc-hypometabolism_sensitivity.png").is_file()
    assert (out / "group" / "qc.tsv").read_text().count("\n") == 3
    _check_links(path)
    # without truth and without evaluation files: a "not available" line
    text = write_group_report(out).read_text()
    assert "Not available because" in _section(text, "detection")


def test_group_report_before_any_patient_ran_says_so_without_warning(tmp_path, caplog):
    """Demo/HPC order: controls, group level, then patients. The first group report has
    control maps but no patient maps: a plain "not yet", not a failed evaluation."""
    out = tmp_path / "out"
    settings = make_outputs(out)
    make_tree(out, "c1", ocsvm=False)
    write_subject_report(out, "c1", "run1", settings)
    truth = tmp_path / "truth"
    (truth / "sub-c1").mkdir(parents=True)
    (truth / "sub-p1").mkdir(parents=True)
    (truth / "lesions.tsv").write_text(
        "participant_id\tlesion\themisphere\tlobe\tvolume_ml\tuptake_loss\n"
        "sub-p1\t1\tL\ttemporal\t0.2\t0.3\n"
    )
    with caplog.at_level("WARNING", logger="petsynth"):
        text = write_group_report(out, truth_dir=truth).read_text()
    detection = _section(text, "detection")
    assert "no patient of the truth folder has space-T1w desc-hypometabolism" in detection
    assert "Evaluation failed" not in detection
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_group_reports_only_rewrites_the_group_report_without_a_fit(tmp_path, capsys):
    """`group --reports-only` writes group/report.html from the outputs on disk and fits
    nothing; at the participant level the option is refused in one line."""
    from pet_synth_app.cli import run

    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    settings = make_outputs(out)
    for sub in ("c1", "p1"):
        make_tree(out, sub, ocsvm=False)
        write_subject_report(out, sub, "run1", settings)
    assert run.main([str(bids), str(out), "group", "--reports-only"]) == 0
    text = (out / "group" / "report.html").read_text()
    assert "sub-c1.html" in text and "sub-p1.html" in text
    assert not (out / "group" / "normative").exists()  # no model was fitted
    capsys.readouterr()
    code = run.main([str(bids), str(out), "participant", "--reports-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--reports-only is a group-level option" in err[0]


def test_failed_coregistration_qc_is_said_above_the_clusters(tmp_path, monkeypatch):
    """A PET of another person (sub-chris of the real heads: coreg_gm_corr 0.128) gets
    clusters at the rim and ventricles: the map sections say they are not findings."""
    from pet_synth_app.reports import subject as S

    settings = make_outputs(tmp_path)
    make_tree(tmp_path, "01", ocsvm=False)
    text = write_subject_report(tmp_path, "01", "run1", settings).read_text()
    assert "Quality control failed" not in text
    real = S._Report._series_qc

    def bad_coreg(self, unit, series):
        return {**real(self, unit, series), "coreg_gm_corr": 0.128}

    monkeypatch.setattr(S._Report, "_series_qc", bad_coreg)
    text = write_subject_report(tmp_path, "01", "run1", settings).read_text()
    hypo = _section(text, "hypometabolism")
    assert "Quality control failed (coreg_gm_corr)" in hypo
    assert "not from metabolism" in hypo
