"""Integration: a participant run reusing sMRIPrep-shaped derivatives of a native run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from smriprep_fixtures import petsynth_files, write_smriprep

from pet_synth_app import layout as L
from pet_synth_app import reuse
from pet_synth_app.cli import run
from pet_synth_app.cli import simulate as sim_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The native run, then one with ``--derivatives`` (its own files under sMRIPrep's
    names, sub-p01 only) in a new work dir."""
    base = tmp_path_factory.mktemp("reuse")
    bids = base / "bids"
    sim = ["--n-controls", "1", "--n-patients", "1", "--n-t1w-only", "0", "--n-4d", "0"]
    assert sim_cli.main([str(bids), *sim, "--seed", "7", "--voxel-size", "2", "--quiet"]) == 0
    # --deterministic: multithreaded ITK sampling alone moves cluster sizes by a few voxels
    common = ["participant", "--sloppy", "--nprocs", "2", "--deterministic"]
    common += ["--random-seed", "3", "--participant-label", "p01"]
    out = {}
    for name in ("native", "reused"):
        extra = []
        if name == "reused":
            files = petsynth_files(out["native"][0], "p01")
            deriv = write_smriprep(base / "smriprep", "p01", files)
            extra = ["--derivatives", str(deriv)]
        o, w = base / f"out_{name}", base / f"work_{name}"
        t0 = time.time()
        code = run.main([str(bids), str(o), *common, "-w", str(w), *extra])
        out[name] = (o, w, code, time.time() - t0)
    return out


def _clusters(out: Path) -> str:
    return L.find(out, "p01", "clusters", desc="hypometabolism").read_text()


def test_reuse_skips_the_steps_and_gives_the_same_clusters(runs):
    (o0, w0, c0, _), (o1, w1, c1, _) = runs["native"], runs["reused"]  # times: benchmarks.md
    assert c0 == 0 and c1 == 0
    anat = "petsynth_wf/single_subject_p01_wf/anat_preproc_wf"
    for step in ("skullstrip", "n4", "register", "segment"):
        assert (w0 / anat / step).is_dir()
        assert not (w1 / anat / step).exists(), step
    assert (w1 / anat / "t1w_to_std").is_dir()
    assert _clusters(o1) == _clusters(o0)
    stat = L.find(o1, "p01", "statmap", L.TEMPLATE_SPACE, "hypometabolism")
    side = json.loads(L.sidecar(stat).read_text())
    assert "bids:smriprep:sub-p01/anat/sub-p01_desc-preproc_T1w.nii.gz" in side["Sources"]
    desc = json.loads((o1 / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["smriprep"].startswith("file://")
    # stage transforms are not written when the registration is reused
    assert L.find(o1, "p01", "t1w2affine_xfm") is None
    assert L.find(o0, "p01", "t1w2affine_xfm") is not None


def test_outputs_load_as_a_pybids_derivatives_dataset(runs):
    from bids import BIDSLayout

    out = runs["native"][0]
    layout = BIDSLayout(str(out), validate=False, is_derivative=True)
    assert layout.get_subjects() == ["p01"]
    t1w = layout.get(subject="p01", desc="preproc", suffix="T1w", extension=".nii.gz")
    assert len(t1w) == 2  # T1w space and template space
    assert {f.entities.get("space") for f in t1w} == {None, L.TEMPLATE_SPACE}
    xfm = layout.get(subject="p01", suffix="xfm", extension=".h5", to=L.TEMPLATE_SPACE)
    assert sorted(f.entities["from"] for f in xfm) == [L.AFFINE_SPACE, "T1w"]
    stat = layout.get(subject="p01", suffix="statmap", desc="hypometabolism", extension=".nii.gz")
    assert stat and all(f.entities["datatype"] == "pet" for f in stat)
    # and a PetSynth output folder is itself a valid --derivatives source
    found = reuse.find_anat(
        reuse.load_derivatives([out]),
        "p01",
        None,
        str(next((out.parent / "bids" / "sub-p01" / "anat").glob("*_T1w.nii.gz"))),
    )
    assert found.computed_steps == []
