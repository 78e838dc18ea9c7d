"""Input collection and validation (pet_synth_app.bids)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import head_like, make_bids, write_nifti

from pet_synth_app import bids as pbids
from pet_synth_app.errors import PetSynthError


def test_strip_label():
    assert pbids.strip_label("sub-01", "sub") == "01"
    assert pbids.strip_label("01", "sub") == "01"
    assert pbids.strip_label(" ses-A ", "ses") == "A"


def test_collect_inputs_finds_t1w_pet_and_group(tmp_path):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"), frames=3, group="patient")
    layout = pbids.load_layout(root, validate=True)
    units, errors = pbids.collect_inputs(layout)
    assert errors == []
    assert [u.subject for u in units] == ["01", "02"]
    assert units[0].t1w.endswith("sub-01_T1w.nii.gz")
    assert len(units[0].pet) == 1
    assert units[0].pet[0].frame_durations == [600.0, 600.0, 600.0]
    assert units[0].group == "patient"
    assert units[0].name == "sub-01"


def test_collect_inputs_labels_with_and_without_prefix(tmp_path):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))
    layout = pbids.load_layout(root)
    units, errors = pbids.collect_inputs(layout, ["sub-02", "03"])
    assert [u.subject for u in units] == ["02"]
    assert len(errors) == 1 and "sub-03" in str(errors[0])
    with pytest.raises(PetSynthError, match="no participant matches"):
        pbids.collect_inputs(layout, ["99"])


def test_several_t1w_rule(tmp_path):
    root = make_bids(tmp_path / "ds", pet=False)
    write_nifti(root / "sub-01/anat/sub-01_run-2_T1w.nii.gz", head_like(seed=5))
    write_nifti(root / "sub-01/anat/sub-01_run-1_T1w.nii.gz", head_like(seed=6))
    (root / "sub-01/anat/sub-01_T1w.nii.gz").unlink()
    units, _ = pbids.collect_inputs(pbids.load_layout(root))
    assert units[0].t1w.endswith("sub-01_run-1_T1w.nii.gz")
    assert [p.split("/")[-1] for p in units[0].ignored_t1w] == ["sub-01_run-2_T1w.nii.gz"]


def test_missing_t1w_is_an_error(tmp_path):
    root = make_bids(tmp_path / "ds", subjects=("01", "02"))
    (root / "sub-02/anat/sub-02_T1w.nii.gz").unlink()
    units, errors = pbids.collect_inputs(pbids.load_layout(root))
    assert [u.subject for u in units] == ["01"]
    assert "sub-02 has no T1w" in str(errors[0])


def test_not_bids(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(PetSynthError, match="not a BIDS dataset"):
        pbids.load_layout(tmp_path / "x")
    with pytest.raises(PetSynthError, match="does not exist"):
        pbids.load_layout(tmp_path / "nope")


@pytest.mark.parametrize(
    "maker, kind, message",
    [
        (lambda p: p.write_bytes(b"\x00"), "T1w", "1 byte"),
        (lambda p: p.write_text("<!DOCTYPE html><html>" + "x" * 600), "T1w", "HTML"),
        (lambda p: write_nifti(p, np.zeros((20, 20, 20), np.float32)), "T1w", "all voxels"),
        (lambda p: write_nifti(p, head_like()[..., None].repeat(2, -1)), "T1w", "3D"),
        (lambda p: write_nifti(p, np.where(head_like() > 500, np.nan, head_like())), "T1w", "NaN"),
        (lambda p: write_nifti(p, np.ones((20, 20, 20), np.float32)), "T1w", "constant"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + b"garbage" * 100), "T1w", "corrupt gzip"),
    ],
)
def test_check_image_errors(tmp_path, maker, kind, message):
    path = tmp_path / "img.nii.gz" if "gzip" in message else tmp_path / "img.nii"
    maker(path)
    with pytest.raises(PetSynthError, match=message) as info:
        pbids.check_image(path, kind)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_check_image_accepts_4d_pet_with_consistent_frames(tmp_path):
    path = write_nifti(tmp_path / "pet.nii.gz", head_like()[..., None].repeat(3, -1))
    meta = {"FrameTimesStart": [0, 300, 600], "FrameDuration": [300, 300, 300]}
    img = pbids.check_image(path, "pet", meta)
    assert img.shape[3] == 3


@pytest.mark.parametrize(
    "meta, n, message",
    [
        ({"FrameTimesStart": [0, 10], "FrameDuration": [10]}, 2, "2 FrameTimesStart vs 1"),
        ({"FrameTimesStart": [0, 10], "FrameDuration": [10, 10]}, 3, "image has 3 frame"),
        ({"FrameTimesStart": [0, 10], "FrameDuration": [20, 10]}, 2, "frame 1 ends at 20"),
        ({"FrameTimesStart": [0, 10], "FrameDuration": [10, 0]}, 2, "<= 0"),
        ({}, 4, "no FrameTimesStart"),
        ({"FrameDuration": [10]}, 1, "only one of"),
    ],
)
def test_frame_timing_errors(meta, n, message):
    with pytest.raises(PetSynthError, match=message):
        pbids.check_frame_timing(meta, n, "x.nii.gz")


def test_frame_timing_ok_with_gaps_and_3d_without_metadata():
    pbids.check_frame_timing({"FrameTimesStart": [0, 100], "FrameDuration": [60, 60]}, 2, "x")
    pbids.check_frame_timing({}, 1, "x")


def test_write_derivative_description(tmp_path):
    root = make_bids(tmp_path / "ds")
    path = pbids.write_derivative_description(root, tmp_path / "out", {"Type": "docker"})
    desc = json.loads(path.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "PetSynth"
    assert desc["GeneratedBy"][0]["Container"]["Type"] == "docker"
    assert desc["SourceDatasets"][0]["URL"].startswith("file://")
    assert desc["DatasetLinks"]["raw"].startswith("file://")
