"""Integration: the participant workflow on a tiny phantom cohort (2 mm, --sloppy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.cli import run, train
from pet_synth_app.cli import simulate as sim_cli
from pet_synth_app.synthesis.weights import default_weights

pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "bids"
    code = sim_cli.main(
        [
            str(root),
            "--n-controls",
            "1",
            "--n-patients",
            "1",
            "--seed",
            "7",
            "--voxel-size",
            "2",
            "--n-t1w-only",
            "0",
            "--n-4d",
            "1",
        ]
    )
    assert code == 0
    return root


@pytest.fixture(scope="module")
def first_run(phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    out, work = base / "out", base / "work"
    args = [
        str(phantom),
        str(out),
        "participant",
        "-w",
        str(work),
        "--sloppy",
        "--nprocs",
        "2",
        "--omp-nthreads",
        "1",
        "--random-seed",
        "3",
    ]
    t0 = time.time()
    code = run.main(args)
    return {"code": code, "out": out, "work": work, "args": args, "wall": time.time() - t0}


def _one(out: Path, pattern: str) -> Path:
    hits = sorted(out.glob(pattern))
    assert len(hits) == 1, (pattern, [str(h) for h in out.rglob("*")][:50])
    return hits[0]


def test_participant_outputs(first_run):
    assert first_run["code"] == 0
    out = first_run["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert list((out / "logs").glob("config-*.toml"))
    assert "N4" in (out / "logs" / "CITATION.md").read_text()
    for sub in ("c01", "p01"):
        anat = out / f"sub-{sub}" / "anat"
        t1w = _one(anat, f"sub-{sub}_desc-preproc_T1w.nii.gz")
        mask = _one(anat, f"sub-{sub}_desc-brain_mask.nii.gz")
        for label in ("GM", "WM", "CSF"):
            _one(anat, f"sub-{sub}_label-{label}_probseg.nii.gz")
        _one(anat, f"sub-{sub}_from-T1w_to-{SPACE}_mode-image_xfm.h5")
        _one(anat, f"sub-{sub}_from-{SPACE}_to-T1w_mode-image_xfm.h5")
        std = _one(anat, f"sub-{sub}_space-{SPACE}_desc-preproc_T1w.nii.gz")
        assert nib.load(std).shape == (99, 117, 95)
        assert nib.load(t1w).shape == nib.load(mask).shape
        vol_ml = (
            np.asarray(nib.load(mask).dataobj).astype(bool).sum()
            * np.prod(nib.load(mask).header.get_zooms()[:3])
            / 1000
        )
        assert 900 < vol_ml < 2000
        side = json.loads(mask.with_name(mask.name.replace(".nii.gz", ".json")).read_text())
        assert side["Sources"] == [f"bids:raw:sub-{sub}/anat/sub-{sub}_T1w.nii.gz"]
        assert side["RandomSeed"] == 3 and side["BrainExtractionMethod"] in ("deepbet", "ants")
        pet = out / f"sub-{sub}" / "pet"
        pet_std = _one(pet, f"sub-{sub}_trc-FDG_space-{SPACE}_desc-preproc_pet.nii.gz")
        pet_t1w = _one(pet, f"sub-{sub}_trc-FDG_space-T1w_desc-preproc_pet.nii.gz")
        _one(pet, f"sub-{sub}_trc-FDG_from-petref_to-T1w_mode-image_xfm.mat")
        meta = json.loads(pet_std.with_name(pet_std.name.replace(".nii.gz", ".json")).read_text())
        assert meta["IntensityNormalization"] == "SUVR" and meta["ReferenceValue"] > 0
        # SUVR against mean GM: the GM mean in MNI must be ~1
        gm = np.asarray(nib.load(_one(anat, f"sub-{sub}_label-GM_probseg.nii.gz")).dataobj)
        suvr_t1w = np.asarray(nib.load(pet_t1w).dataobj)
        assert suvr_t1w.shape == gm.shape
        assert 0.8 < suvr_t1w[gm > 0.5].mean() < 1.2
        # pseudo-normal PET from the shipped default model, in both spaces
        pseudo_std = _one(pet, f"sub-{sub}_space-{SPACE}_desc-pseudonormal_pet.nii.gz")
        pseudo_t1w = _one(pet, f"sub-{sub}_space-T1w_desc-pseudonormal_pet.nii.gz")
        assert nib.load(pseudo_std).shape == (99, 117, 95)
        assert nib.load(pseudo_t1w).shape == gm.shape
        pseudo = np.asarray(nib.load(pseudo_t1w).dataobj)
        assert 0.7 < pseudo[gm > 0.5].mean() < 1.3  # SUVR scale, like the real PET
        mask_std = _one(anat, f"sub-{sub}_space-{SPACE}_desc-brain_mask.nii.gz")
        assert (
            np.asarray(nib.load(pseudo_std).dataobj)[np.asarray(nib.load(mask_std).dataobj) == 0]
            == 0
        ).all()
        _one(anat, f"sub-{sub}_space-{SPACE}_label-GM_probseg.nii.gz")
        side = json.loads(
            pseudo_std.with_name(pseudo_std.name.replace(".nii.gz", ".json")).read_text()
        )
        card = json.loads(default_weights().with_suffix(".json").read_text())
        assert side["Model"] == "cyclegan-mse"
        assert side["ModelWeightsSha256"] == card["sha256"]
        assert side["SmoothingFWHM"] == card["input"]["smoothing_fwhm_mm"]
        assert side["Units"] == "SUVR"
        # hypometabolism: Z map, cluster labels (MNI and T1w) and the ranked table
        hypo = "desc-hypometabolism_stat-z_statmap.nii.gz"
        z_std = _one(pet, f"sub-{sub}_trc-FDG_space-{SPACE}_{hypo}")
        z_t1w = _one(pet, f"sub-{sub}_trc-FDG_space-T1w_{hypo}")
        dseg_std = _one(pet, f"sub-{sub}_trc-FDG_space-{SPACE}_desc-hypometabolism_dseg.nii.gz")
        dseg_t1w = _one(pet, f"sub-{sub}_trc-FDG_space-T1w_desc-hypometabolism_dseg.nii.gz")
        table = _one(pet, f"sub-{sub}_trc-FDG_desc-hypometabolism_clusters.tsv")
        zside = json.loads(z_std.with_name(z_std.name.replace(".nii.gz", ".json")).read_text())
        assert zside["ZReference"].startswith("self") and zside["Threshold"] == -1.65
        zd = np.asarray(nib.load(z_std).dataobj)
        gm_std = np.asarray(
            nib.load(_one(anat, f"sub-{sub}_space-{SPACE}_label-GM_probseg.nii.gz")).dataobj
        )
        sel = (gm_std > 0.5) & (np.asarray(nib.load(mask_std).dataobj) > 0)
        assert abs(zd[sel].mean()) < 0.05 and abs(zd[sel].std() - 1) < 0.05
        assert nib.load(z_t1w).shape == gm.shape == nib.load(dseg_t1w).shape
        rows = table.read_text().splitlines()
        assert rows[0].startswith("rank\tsize_mm3\tpeak_z") and "peak_x_t1w" in rows[0]
        labels = np.asarray(nib.load(dseg_std).dataobj)
        assert len(rows) - 1 == zside["NumberOfClusters"] == len(np.unique(labels)) - 1
        assert (out / f"sub-{sub}.html").is_file()
        assert list((out / f"sub-{sub}" / "figures").glob("*.svg"))


def test_rerun_reuses_finished_nodes(first_run):
    """A rerun of the command with the same work dir reuses the finished steps."""
    work = first_run["work"]
    result = next(work.rglob("anat_preproc_wf/register/result_register.pklz"))
    before = result.stat().st_mtime
    (first_run["out"] / "sub-c01.html").unlink()
    res = subprocess.run(
        [sys.executable, "-m", "pet_synth_app.cli.run", *first_run["args"]],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert result.stat().st_mtime == before  # cached, not recomputed
    assert (first_run["out"] / "sub-c01.html").is_file()


def test_finished_participant_is_not_rerun(first_run):
    """A rerun of finished participants whose inputs, options and outputs are unchanged
    builds no workflow (what invalidates it: tests/test_uptodate.py)."""
    logs = first_run["out"] / "logs"
    configs = set(logs.glob("config-*.toml"))
    cmd = [sys.executable, "-m", "pet_synth_app.cli.run", *first_run["args"]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sub-c01: finished, and no input, option, model or output changed" in res.stderr
    assert "2 participant(s) up to date, not rerun" in res.stderr
    assert set(logs.glob("config-*.toml")) == configs  # no run was started


def _keep_top_half(pet_path: Path) -> None:
    """Zero the PET below the middle of the head (world z): a scan covering only the
    top half of the brain (issue 16 item 7)."""
    img = nib.load(pet_path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    mean = data if data.ndim == 3 else data.mean(axis=3)
    z = nib.affines.apply_affine(img.affine, np.indices(mean.shape).reshape(3, -1).T)[:, 2]
    z = z.reshape(mean.shape)
    head = mean > 0.2 * np.percentile(mean, 99)
    below = z < np.median(z[head])
    data[below] = 0.0
    nib.Nifti1Image(data, img.affine, img.header).to_filename(pet_path)


def test_one_bad_subject_others_finish(phantom, tmp_path, capsys):
    """sub-c01's T1w is unusable: one line, skipped. sub-p01's PET covers only the top
    half of the brain: processed, with the coverage named on the terminal, in the
    report and the Z map's sidecar, and no cluster outside its field of view."""
    bids = tmp_path / "bids"
    shutil.copytree(phantom, bids)
    bad = bids / "sub-c01" / "anat" / "sub-c01_T1w.nii.gz"
    bad.write_text("<!DOCTYPE html><html>not an image</html>" + " " * 400)
    _keep_top_half(next((bids / "sub-p01" / "pet").glob("*_pet.nii.gz")))
    out = tmp_path / "out"
    code = run.main(
        [
            str(bids),
            str(out),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--sloppy",
            "--nprocs",
            "2",
            "--output-spaces",
            SPACE,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "sub-c01 skipped" in err and "HTML" in err and "Traceback" not in err
    assert (out / "sub-p01.html").is_file() and not (out / "sub-c01.html").exists()
    assert not (out / "sub-c01").exists()
    pet = out / "sub-p01" / "pet"
    assert not list(pet.glob("*space-T1w*"))  # only MNI requested
    assert "finished: 1 of 2 unit(s) succeeded; 1 skipped, 0 failed" in err
    qc_line = next(ln for ln in err.splitlines() if "QC failed for sub-p01 (trc-FDG)" in ln)
    coverage = float(qc_line.split("pet_brain_coverage ")[1].split()[0])
    assert 0.2 < coverage < 0.8, qc_line
    assert "the PET field of view misses part of the brain" in (out / "sub-p01.html").read_text()
    zside = json.loads(_one(pet, "*desc-hypometabolism_stat-z_statmap.json").read_text())
    assert "field of view covers only" in zside["BrainCoverageWarning"]
    view = np.asanyarray(nib.load(_one(pet, "*desc-coverage_mask.nii.gz")).dataobj) > 0
    dseg = np.asanyarray(nib.load(_one(pet, "*desc-hypometabolism_dseg.nii.gz")).dataobj)
    zmap = np.asanyarray(nib.load(_one(pet, "*desc-hypometabolism_stat-z_statmap.nii.gz")).dataobj)
    assert view.shape == dseg.shape and not view.all()
    assert not dseg[~view].any() and not zmap[~view].any()


def test_train_then_use_the_model(phantom, first_run, tmp_path):
    """petsynth-train preprocesses with the participant workflow (same work dir: cached
    nodes), trains a tiny model and `petsynth --model-weights` uses it."""
    model = tmp_path / "model"
    code = train.main(
        [
            str(phantom),
            str(model),
            "--participant-label",
            "c01",
            "p01",
            "--val-participants",
            "p01",
            "-w",
            str(first_run["work"]),
            "--sloppy",
            "--random-seed",
            "3",
            "--nprocs",
            "2",
            "--omp-nthreads",
            "1",
            "--ngf",
            "4",
            "--ndf",
            "4",
            "--batch-size",
            "2",
            "--epochs",
            "2",
            "--max-steps-per-epoch",
            "2",
        ]
    )
    assert code == 0
    card = json.loads((model / "model.json").read_text())
    assert card["training"]["participants"] == ["c01"]
    assert card["training"]["validation_participants"] == ["p01"]
    assert card["training"]["epochs_run"] == 2 and 0 < card["validation_metrics"]["ssim"] <= 1
    log = (model / "training_log.tsv").read_text().splitlines()
    assert len(log) == 3 and "val_ssim" in log[0]
    assert _one(model / "preproc", f"sub-c01/anat/sub-c01_space-{SPACE}_desc-brain_mask.nii.gz")
    out = tmp_path / "out"
    code = run.main(
        [
            str(phantom),
            str(out),
            "participant",
            "--participant-label",
            "c01",
            "-w",
            str(first_run["work"]),
            "--sloppy",
            "--random-seed",
            "3",
            "--nprocs",
            "2",
            "--omp-nthreads",
            "1",
            "--model-weights",
            str(model / "model.safetensors"),
        ]
    )
    assert code == 0
    side = _one(out, f"sub-c01/pet/sub-c01_space-{SPACE}_desc-pseudonormal_pet.json")
    assert json.loads(side.read_text())["ModelWeightsSha256"] == card["sha256"]
