"""Integration: participant runs reusing sMRIPrep- and PETPrep-shaped derivatives of a
native run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from smriprep_fixtures import petsynth_files, petsynth_pet_files, write_petprep, write_smriprep

from pet_synth_app import layout as L
from pet_synth_app import reuse
from pet_synth_app.cli import run
from pet_synth_app.cli import simulate as sim_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The native run, then one with ``--derivatives`` (its own files under sMRIPrep's
    names, sub-p01 only) and one with its anatomy and PET reference + PET -> T1w transform
    under PETPrep's names, each in a new work dir (log lines in ``out[name][4]``)."""
    base = tmp_path_factory.mktemp("reuse")
    bids = base / "bids"
    sim = ["--n-controls", "1", "--n-patients", "1", "--n-t1w-only", "0", "--n-4d", "0"]
    assert sim_cli.main([str(bids), *sim, "--seed", "7", "--voxel-size", "2", "--quiet"]) == 0
    # --deterministic: multithreaded ITK sampling alone moves cluster sizes by a few voxels
    common = ["participant", "--sloppy", "--nprocs", "2", "--deterministic"]
    common += ["--random-seed", "3", "--participant-label", "p01"]
    out = {}
    for name in ("native", "reused", "petprep"):
        extra = []
        if name != "native":
            files = petsynth_files(out["native"][0], "p01")
            if name == "reused":
                deriv = write_smriprep(base / "smriprep", "p01", files)
            else:
                pet = next((bids / "sub-p01" / "pet").glob("*_pet.nii.gz"))
                own = petsynth_pet_files(out["native"][0], out["native"][1], "p01")
                deriv = write_petprep(base / "petprep", "p01", files, {pet: own})
            extra = ["--derivatives", str(deriv)]
        o, w = base / f"out_{name}", base / f"work_{name}"
        lines = _Lines()
        logging.getLogger("petsynth").addHandler(lines)
        t0 = time.time()
        try:
            code = run.main([str(bids), str(o), *common, "-w", str(w), *extra])
        finally:
            logging.getLogger("petsynth").removeHandler(lines)
        out[name] = (o, w, code, time.time() - t0, lines.messages)
    return out


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _clusters(out: Path) -> str:
    return L.find(out, "p01", "clusters", desc="hypometabolism").read_text()


def test_reuse_skips_the_steps_and_gives_the_same_clusters(runs):
    (o0, w0, c0, *_), (o1, w1, c1, *_) = runs["native"], runs["reused"]  # times: benchmarks.md
    assert c0 == 0 and c1 == 0
    anat = "petsynth_wf/single_subject_p01_wf/anat_preproc_wf"
    for step in ("skullstrip", "n4", "register", "segment"):
        assert (w0 / anat / step).is_dir()
        assert not (w1 / anat / step).exists(), step
    # the template-space T1w, mask and GM come with the transforms: not resampled again
    for step in ("t1w_to_std", "mask_to_std", "gm_to_std"):
        assert (w0 / anat / step).is_dir()
        assert not (w1 / anat / step).exists(), step
    assert (w1 / anat / "normalize_t1w").is_dir()
    assert _clusters(o1) == _clusters(o0)
    stat = L.find(o1, "p01", "statmap", L.TEMPLATE_SPACE, "hypometabolism")
    side = json.loads(L.sidecar(stat).read_text())
    assert "bids:smriprep:sub-p01/anat/sub-p01_desc-preproc_T1w.nii.gz" in side["Sources"]
    desc = json.loads((o1 / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["smriprep"].startswith("file://")
    # stage transforms are not written when the registration is reused
    assert L.find(o1, "p01", "t1w2affine_xfm") is None
    assert L.find(o0, "p01", "t1w2affine_xfm") is not None


def test_petprep_reuse_skips_frame_average_and_coregistration(runs):
    (o0, w0, *_), (o2, w2, c2, _, log) = runs["native"], runs["petprep"]
    assert c2 == 0
    unit = "petsynth_wf/single_subject_p01_wf"
    (pet0,) = (w0 / unit).glob("pet_*_wf")
    pet2 = w2 / unit / pet0.name
    for step in ("frame_average", "coregister"):
        assert (pet0 / step).is_dir()
        assert not (pet2 / step).exists(), step
    assert (pet2 / "reused_pet2t1w_xfm").is_dir() and (pet2 / "pet_to_t1w").is_dir()
    for step in ("skullstrip", "n4", "register", "segment"):  # the anatomy from the same folder
        assert not (w2 / unit / "anat_preproc_wf" / step).exists(), step
    assert _clusters(o2) == _clusters(o0)
    (line,) = [m for m in log if m.startswith("sub-p01: reused")]
    assert line.endswith("_pet.nii.gz: reused frame average and coregistration"), line
    assert "computed nothing" in line
    stat = L.find(o2, "p01", "statmap", L.TEMPLATE_SPACE, "hypometabolism")
    sources = json.loads(L.sidecar(stat).read_text())["Sources"]
    assert any(
        s.startswith("bids:petprep:sub-p01/pet/") and s.endswith("_petref.nii.gz") for s in sources
    )
    assert any(s.endswith("_xfm.txt") for s in sources)
    # the transform PetSynth writes is the reused one, back in ANTs .mat form
    from pet_synth_app.preproc.pet import read_ants_rigid

    mat0, mat2 = (L.find(o, "p01", "pet2t1w_xfm") for o in (o0, o2))
    assert (read_ants_rigid(str(mat0)) == read_ants_rigid(str(mat2))).all()


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
