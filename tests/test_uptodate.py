"""A finished participant's rerun is skipped only while nothing it depends on changed
(``uptodate.py``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pet_synth_app import uptodate
from pet_synth_app.config import Settings


def _dataset(tmp_path: Path) -> Settings:
    bids, out = tmp_path / "bids", tmp_path / "out"
    for sub in ("01", "02"):
        (bids / f"sub-{sub}" / "anat").mkdir(parents=True)
        (bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz").write_bytes(b"t1w" + sub.encode())
        (out / f"sub-{sub}" / "pet").mkdir(parents=True)
        (out / f"sub-{sub}" / "pet" / "z.nii.gz").write_bytes(b"z")
        (out / f"sub-{sub}.html").write_text("report")
    (bids / "dataset_description.json").write_text("{}")
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    return Settings(bids_dir=bids, output_dir=out, work_dir=tmp_path / "work", nprocs=2)


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_requested_subjects(tmp_path):
    settings = _dataset(tmp_path)
    assert uptodate.requested_subjects(settings) == ["01", "02"]
    only = dataclasses.replace(settings, participant_label=["sub-02", "02"])
    assert uptodate.requested_subjects(only) == ["02"]


def test_finished_subject_is_up_to_date_until_something_changes(tmp_path):
    settings = _dataset(tmp_path)
    assert uptodate.up_to_date(settings, ["01", "02"]) == []  # nothing recorded yet
    uptodate.record_finished(settings, ["01", "02"])
    assert uptodate.up_to_date(settings, ["01", "02"]) == ["01", "02"]

    # options that only change how the run executes keep the record
    other = dataclasses.replace(settings, nprocs=1, omp_nthreads=1, verbose=2, mem_mb=3000)
    assert uptodate.up_to_date(other, ["01", "02"]) == ["01", "02"]
    # options that change outputs do not
    assert uptodate.up_to_date(dataclasses.replace(settings, z_threshold=-2.0), ["01"]) == []
    assert uptodate.up_to_date(dataclasses.replace(settings, skip_synthesis=True), ["01"]) == []

    # a touched raw file of sub-01 reruns sub-01 only
    _touch(settings.bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert uptodate.up_to_date(settings, ["01", "02"]) == ["02"]
    # a changed top-level file (participants.tsv: age) reruns everyone
    (settings.bids_dir / "participants.tsv").write_text("participant_id\tage\nsub-01\t70\n")
    assert uptodate.up_to_date(settings, ["01", "02"]) == []
    uptodate.record_finished(settings, ["01", "02"])
    assert uptodate.up_to_date(settings, ["01", "02"]) == ["01", "02"]

    # an edited output, a removed report, a new group-level normative model
    (settings.output_dir / "sub-01" / "pet" / "z.nii.gz").write_bytes(b"edited")
    (settings.output_dir / "sub-02.html").unlink()
    assert uptodate.up_to_date(settings, ["01", "02"]) == []
    uptodate.record_finished(settings, ["01", "02"])  # sub-02 has no report: not recorded
    assert not uptodate.record_file(settings, "02").exists()
    assert uptodate.up_to_date(settings, ["01"]) == ["01"]
    normative = settings.output_dir / "group" / "normative"
    normative.mkdir(parents=True)
    (normative / "normative.json").write_text("{}")
    assert uptodate.up_to_date(settings, ["01"]) == []

    # a run that starts forgets the record
    uptodate.record_finished(settings, ["01"])
    uptodate.forget(settings, ["01"])
    assert uptodate.up_to_date(settings, ["01"]) == []


def test_weights_file_is_part_of_the_fingerprint(tmp_path):
    settings = _dataset(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w1")
    (tmp_path / "model.json").write_text("{}")
    with_model = dataclasses.replace(settings, model_weights=weights)
    uptodate.record_finished(with_model, ["01"])
    assert uptodate.up_to_date(with_model, ["01"]) == ["01"]
    assert uptodate.up_to_date(settings, ["01"]) == []  # the default model instead
    weights.write_bytes(b"w2-retrained")
    assert uptodate.up_to_date(with_model, ["01"]) == []
