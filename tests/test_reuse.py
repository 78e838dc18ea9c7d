"""``--derivatives``: finding, checking and plugging in sMRIPrep/fMRIPrep derivatives."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import make_bids, write_nifti
from nipype.interfaces.base import isdefined
from smriprep_fixtures import petsynth_files, write_petprep, write_smriprep

from pet_synth_app import bids as pbids
from pet_synth_app import reuse
from pet_synth_app.cli import run
from pet_synth_app.config import TEMPLATE_SPACE, Settings
from pet_synth_app.errors import PetSynthError
from pet_synth_app.plan import resolve_plan
from pet_synth_app.runner import resolve_reuse
from pet_synth_app.workflows import base


def _raw_files(raw: Path, tmp: Path, subject: str = "01") -> dict[str, Path]:
    """Stand-ins for a preprocessing run: copies of the raw T1w and empty transforms."""
    t1w = raw / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz"
    files = {k: t1w for k in ("t1w", "mask", "gm", "wm", "csf")}
    for key in ("t1w2std_xfm", "std2t1w_xfm"):
        files[key] = tmp / f"{key}.h5"
        files[key].write_bytes(b"\x89HDF\r\n")
    return files


@pytest.fixture
def raw(tmp_path) -> Path:
    return make_bids(tmp_path / "raw", subjects=("01", "02"))


def _find(deriv, raw, subject="01", session=None, transforms=True):
    layouts = reuse.load_derivatives([deriv] if isinstance(deriv, Path) else deriv)
    t1w = str(raw / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz")
    return reuse.find_anat(layouts, subject, session, t1w, transforms)


def test_finds_everything_by_entities(raw, tmp_path):
    deriv = write_smriprep(tmp_path / "smriprep", "01", _raw_files(raw, tmp_path))
    found = _find(deriv, raw)
    assert sorted(found.files) == sorted(reuse.IMAGE_ROLES + reuse.XFM_ROLES)
    assert found.files["gm"].endswith("sub-01_label-GM_probseg.nii.gz")
    assert found.files["t1w2std_xfm"].endswith(
        f"sub-01_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.h5"
    )
    assert found.skipped_steps == ["skull stripping", "N4", "segmentation", "registration"]
    assert found.computed_steps == [] and found.notes == []
    uris = reuse.source_uris(found)
    assert uris[0] == "bids:smriprep:sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"
    assert len(uris) == 7
    # another subject of the same folder: nothing
    assert _find(deriv, raw, subject="02").files == {}


def test_fmriprep_default_template_is_refused(raw, tmp_path):
    deriv = write_smriprep(
        tmp_path / "fmriprep",
        "01",
        _raw_files(raw, tmp_path),
        space=reuse.FMRIPREP_TEMPLATE,
        name="fMRIPrep",
    )
    found = _find(deriv, raw)
    assert sorted(found.files) == sorted(reuse.IMAGE_ROLES)
    assert found.computed_steps == ["registration"]
    assert len(found.notes) == 1 and "MNI152NLin2009cAsym transforms refused" in found.notes[0]
    assert "--output-spaces MNI152NLin2009aSym" in found.notes[0]


def test_missing_transforms_and_partial_tissues_are_computed(raw, tmp_path):
    files = _raw_files(raw, tmp_path)
    del files["csf"]
    deriv = write_smriprep(tmp_path / "d", "01", files, transforms=False)
    found = _find(deriv, raw)
    assert sorted(found.files) == ["mask", "t1w"]
    assert found.computed_steps == ["segmentation", "registration"]
    assert any("only GM, WM probseg found" in n for n in found.notes)
    assert any("no MNI152NLin2009aSym transforms" in n for n in found.notes)
    # the model needs the registration stages: transforms found but not reused
    deriv2 = write_smriprep(tmp_path / "d2", "01", _raw_files(raw, tmp_path))
    found = _find(deriv2, raw, transforms=False)
    assert "registration" in found.computed_steps
    assert "needs the registration stages" in found.notes[0]


def test_session_files_win_over_subject_files(tmp_path):
    raw = make_bids(tmp_path / "raw")
    files = _raw_files(raw, tmp_path)
    deriv = write_smriprep(tmp_path / "d", "01", files, session="A", transforms=False)
    write_smriprep(tmp_path / "d", "01", {"t1w": files["t1w"]})  # subject level
    assert "ses-A" in _find(deriv, raw, session="A").files["t1w"]
    assert "ses-A" not in _find(deriv, raw, session="B").files["t1w"]  # falls back
    assert "mask" in _find(deriv, raw, session="A").files
    assert "mask" not in _find(deriv, raw, session="B").files


def test_grid_mismatch_is_one_clear_error(raw, tmp_path):
    files = _raw_files(raw, tmp_path)
    files["mask"] = write_nifti(
        tmp_path / "other.nii.gz", np.ones((40, 48, 40), np.uint8), zooms=(2.0, 2.0, 2.5)
    )
    deriv = write_smriprep(tmp_path / "d", "01", files)
    with pytest.raises(PetSynthError) as exc:
        _find(deriv, raw)
    msg = str(exc.value)
    assert "\n" not in msg and "does not match the raw T1w sub-01_T1w.nii.gz" in msg
    assert "desc-brain_mask" in msg


def test_reoriented_grid_is_accepted_with_its_t1w(raw, tmp_path):
    files = _raw_files(raw, tmp_path)
    img = nib.load(files["t1w"])
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = img.shape[0] - 1
    data = np.asanyarray(img.dataobj)[::-1]  # same voxels in space, LAS storage order
    flipped = nib.Nifti1Image(data, img.affine @ flip)
    nib.save(flipped, tmp_path / "las.nii.gz")
    files.update(t1w=tmp_path / "las.nii.gz", mask=tmp_path / "las.nii.gz")
    found = _find(write_smriprep(tmp_path / "d", "01", files), raw)
    assert {"t1w", "mask"} <= set(found.files)
    del files["t1w"]  # the mask alone on a reoriented grid: not reused
    found = _find(write_smriprep(tmp_path / "d2", "01", files), raw)
    assert "mask" not in found.files and any("mask not reused" in n for n in found.notes)


def test_sources_naming_another_t1w_is_an_error(raw, tmp_path):
    files = _raw_files(raw, tmp_path)
    ok = write_smriprep(
        tmp_path / "ok", "01", files, raw_sources=["sub-01/anat/sub-01_T1w.nii.gz"]
    )
    assert "t1w" in _find(ok, raw).files
    bad = write_smriprep(
        tmp_path / "bad", "01", files, raw_sources=["sub-01/anat/sub-01_run-2_T1w.nii.gz"]
    )
    with pytest.raises(PetSynthError, match="made from sub-01_run-2_T1w.nii.gz, not from"):
        _find(bad, raw)


def _std_files(tmp: Path, resolution: int = 2, shift: float = 0.0) -> dict[str, Path]:
    """Template-space stand-ins on the template grid (``shift`` mm off it in x)."""
    from pet_synth_app.preproc.templates import template_grid

    shape, affine = template_grid(resolution)
    affine = affine.copy()
    affine[0, 3] += shift
    out = {}
    for role in reuse.STD_ROLES:
        out[role] = tmp / f"{role}.nii.gz"
        nib.Nifti1Image(np.zeros(shape, np.float32), affine).to_filename(out[role])
    return out


def test_template_space_images_are_reused_with_the_transforms(raw, tmp_path):
    files = {**_raw_files(raw, tmp_path), **_std_files(tmp_path)}
    deriv = write_smriprep(tmp_path / "smriprep", "01", files)
    layouts = reuse.load_derivatives([deriv])
    t1w = str(raw / "sub-01/anat/sub-01_T1w.nii.gz")
    found = reuse.find_anat(layouts, "01", None, t1w, mni_resolution=2)
    assert sorted(found.files) == sorted(reuse.ROLES) and found.notes == []
    assert found.files["t1w_std"].endswith(
        f"sub-01_space-{TEMPLATE_SPACE}_desc-preproc_T1w.nii.gz"
    )
    assert found.skipped_steps[-1] == "template resampling"
    assert len(reuse.source_uris(found)) == 10
    # another run grid (1 mm), or no resolution given: resampled as usual
    other = reuse.find_anat(layouts, "01", None, t1w, mni_resolution=1)
    assert "t1w_std" not in other.files and other.computed_steps == []
    assert "not on the 1 mm template grid; " in other.notes[0]
    assert "t1w_std" not in reuse.find_anat(layouts, "01", None, t1w).files
    # with images at two resolutions (res-1, res-2), the one on the run's grid is taken
    (tmp_path / "one").mkdir()
    for role, f in _std_files(tmp_path / "one", resolution=1).items():
        space = f"space-{TEMPLATE_SPACE}_"
        name = Path(found.files[role]).name.replace(space, f"{space}res-1_")
        shutil.copyfile(f, deriv / "sub-01" / "anat" / name)
    layouts = reuse.load_derivatives([deriv])
    both = reuse.find_anat(layouts, "01", None, t1w, mni_resolution=1)
    assert "_res-1_desc-preproc_T1w" in both.files["t1w_std"] and both.notes == []
    two = reuse.find_anat(layouts, "01", None, t1w, mni_resolution=2)
    assert "res-1" not in two.files["gm_std"] and two.notes == []
    # without the transforms (or with refused ones) they are never reused
    found = reuse.find_anat(layouts, "01", None, t1w, transforms=False, mni_resolution=2)
    assert "t1w_std" not in found.files
    # nor without the T1w-space images they are made from (here the segmentation)
    files = {k: v for k, v in files.items() if k not in ("gm", "wm", "csf")}
    nogm = write_smriprep(tmp_path / "nogm", "01", files)
    found = reuse.find_anat(reuse.load_derivatives([nogm]), "01", None, t1w, mni_resolution=2)
    assert "registration" in found.skipped_steps and "gm_std" not in found.files


def test_template_space_images_off_grid_or_partial_are_resampled(raw, tmp_path):
    files = {**_raw_files(raw, tmp_path), **_std_files(tmp_path, shift=0.5)}
    write_smriprep(tmp_path / "a", "01", files)
    t1w = str(raw / "sub-01/anat/sub-01_T1w.nii.gz")
    found = reuse.find_anat(
        reuse.load_derivatives([tmp_path / "a"]), "01", None, t1w, mni_resolution=2
    )
    assert not set(reuse.STD_ROLES) & set(found.files)
    assert len(found.notes) == 1 and "not on the 2 mm template grid" in found.notes[0]
    files = {**_raw_files(raw, tmp_path), **_std_files(tmp_path)}
    del files["gm_std"]
    deriv = write_smriprep(tmp_path / "b", "01", files)
    found = reuse.find_anat(reuse.load_derivatives([deriv]), "01", None, t1w, mni_resolution=2)
    assert not set(reuse.STD_ROLES) & set(found.files)
    assert "(no gm_std)" in found.notes[0] and "resampled from the T1w space" in found.notes[0]


def test_graph_takes_the_template_space_images_and_writes_one_template(raw, tmp_path):
    files = {**_raw_files(raw, tmp_path), **_std_files(tmp_path)}
    deriv = write_smriprep(tmp_path / "smriprep", "01", files)
    plan, units, errors, wf = _plan_and_wf(raw, tmp_path, deriv)
    assert errors == [] and "t1w_std" in plan.reused["sub-01"].files
    names = set(wf.list_node_names())
    anat = "single_subject_{}_wf.anat_preproc_wf.{}"
    for step in ("t1w_to_std", "mask_to_std", "gm_to_std", "tpl_reg"):
        assert anat.format("01", step) not in names, step
        assert anat.format("02", step) in names, step
    norm = wf.get_node(anat.format("01", "normalize_t1w"))
    assert norm.inputs.in_file == plan.reused["sub-01"].files["t1w_std"]
    assert norm.inputs.mask == plan.reused["sub-01"].files["mask_std"]
    outputs = wf.get_node(anat.format("01", "outputnode")).inputs
    assert outputs.gm_std == plan.reused["sub-01"].files["gm_std"]  # to the PET, the sinks
    # the template node writes only the grid the graph still reads; sub-02's all five
    assert wf.get_node(anat.format("01", "tpl_out")).inputs.kinds == ["t1w"]
    assert not isdefined(wf.get_node(anat.format("02", "tpl_out")).inputs.kinds)


def test_template_files_writes_the_kinds_asked_for(tmp_path):
    from pet_synth_app.interfaces.anat import TemplateFiles
    from pet_synth_app.preproc.templates import GRIDS, get_template, template_grid

    res = TemplateFiles(resolution=2, kinds=["t1w"]).run(cwd=str(tmp_path)).outputs
    assert Path(res.t1w).is_file() and not isdefined(res.gm)
    assert [p.name for p in tmp_path.glob("*.nii.gz")] == [Path(res.t1w).name]
    for r in GRIDS:  # the grid known without nilearn is the template's
        shape, affine = template_grid(r)
        img = get_template("T1w", r)
        assert img.shape == shape and np.array_equal(img.affine, affine)


def test_not_a_derivatives_folder(tmp_path):
    with pytest.raises(PetSynthError, match="does not exist"):
        reuse.load_derivatives([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PetSynthError, match="no dataset_description.json"):
        reuse.load_derivatives([tmp_path / "empty"])


def _plan_and_wf(raw, tmp_path, deriv, **kw):
    settings = Settings(
        bids_dir=raw,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "w",
        derivatives=[deriv],
        **kw,
    )
    units, _ = pbids.collect_inputs(pbids.load_layout(raw))
    plan = resolve_plan(settings, check=False, device="cpu")
    plan, units, errors = resolve_reuse(settings, units, plan)
    return plan, units, errors, base.init_petsynth_wf(settings, units, plan)


def test_graph_skips_the_reused_steps(raw, tmp_path):
    deriv = write_smriprep(tmp_path / "smriprep", "01", _raw_files(raw, tmp_path))
    plan, units, errors, wf = _plan_and_wf(raw, tmp_path, deriv)
    assert errors == [] and len(units) == 2
    names = set(wf.list_node_names())
    anat = "single_subject_{}_wf.anat_preproc_wf.{}"
    for step in ("skullstrip", "n4", "segment", "register", "priors_to_t1w", "t1w_to_affine"):
        assert anat.format("01", step) not in names, step
        assert anat.format("02", step) in names, step  # sub-02 has nothing to reuse
    for step in ("t1w_to_std", "mask_to_std", "gm_to_std", "normalize_t1w", "apply_mask"):
        assert anat.format("01", step) in names
    sinks = "single_subject_01_wf.anat_derivatives_wf.{}"
    assert sinks.format("ds_t1w2affine_xfm") not in names
    assert sinks.format("ds_t1w_std") in names
    # the reused files reach the readers of the removed steps
    t1w_std = wf.get_node(anat.format("01", "t1w_to_std"))
    assert t1w_std.inputs.in_file.endswith("sub-01_desc-preproc_T1w.nii.gz")
    assert t1w_std.inputs.transforms[0].endswith(f"to-{TEMPLATE_SPACE}_mode-image_xfm.h5")
    ds = wf.get_node(sinks.format("ds_t1w_mask"))
    assert (
        "bids:smriprep:sub-01/anat/sub-01_desc-brain_mask.nii.gz"
        in ds.interface._metadata["Sources"]
    )
    assert ds.interface._metadata["Sources"][0] == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    ds2 = wf.get_node("single_subject_02_wf.anat_derivatives_wf.ds_t1w_mask")
    assert len(ds2.interface._metadata["Sources"]) == 1
    assert "reused from earlier derivatives" in wf.visit_desc()


def test_graph_with_refused_transforms_still_registers(raw, tmp_path):
    deriv = write_smriprep(
        tmp_path / "fmriprep", "01", _raw_files(raw, tmp_path), space=reuse.FMRIPREP_TEMPLATE
    )
    *_, wf = _plan_and_wf(raw, tmp_path, deriv)
    names = set(wf.list_node_names())
    anat = "single_subject_01_wf.anat_preproc_wf."
    assert anat + "register" in names and anat + "t1w_to_affine" in names
    assert anat + "n4" not in names and anat + "segment" not in names
    reg = wf.get_node(anat + "register")
    # registration of the brain made from the reused T1w and mask
    assert wf.get_node(anat + "apply_mask").inputs.in_file.endswith("desc-preproc_T1w.nii.gz")
    assert "single_subject_01_wf.anat_derivatives_wf.ds_t1w2affine_xfm" in names
    assert reg is not None


def test_mismatch_skips_the_unit_with_one_line(raw, tmp_path, capsys):
    files = _raw_files(raw, tmp_path)
    files["t1w"] = raw / "sub-02/anat/sub-02_T1w.nii.gz"  # same grid: accepted by grid...
    bad = tmp_path / "bad.nii.gz"
    img = nib.load(files["t1w"])
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine * 1.1), bad)
    files["gm"] = bad
    deriv = write_smriprep(tmp_path / "d", "01", files)
    plan, units, errors, _ = _plan_and_wf(raw, tmp_path, deriv)
    assert [u.subject for u in units] == ["02"]
    assert len(errors) == 1 and str(errors[0]).startswith("sub-01 skipped: sub-01:")
    assert "label-GM_probseg" in str(errors[0]) and "\n" not in str(errors[0])


def test_cli_mismatch_is_printed_and_nothing_written(raw, tmp_path, capsys, monkeypatch):
    files = _raw_files(raw, tmp_path)
    files["mask"] = write_nifti(tmp_path / "m.nii.gz", np.ones((8, 8, 8), np.uint8))
    deriv = write_smriprep(tmp_path / "d", "01", files)
    import pet_synth_app.runner as runner

    monkeypatch.setattr(runner, "resolve_plan", lambda s: resolve_plan(s, check=False))
    argv = [str(raw), str(tmp_path / "out"), "participant", "--participant-label", "01"]
    code = run.main([*argv, "--derivatives", str(deriv)])
    err = capsys.readouterr().err
    assert code == 1
    assert "petsynth: error: sub-01 skipped: sub-01: " in err
    assert "does not match the raw T1w" in err and "Traceback" not in err
    assert "no participant has usable inputs; nothing was written" in err
    assert not (tmp_path / "out" / "dataset_description.json").exists()


def test_cli_bad_derivatives_folder(raw, tmp_path, capsys):
    code = run.main(
        [str(raw), str(tmp_path / "out"), "participant", "--derivatives", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "--derivatives folder does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "dataset_description.json").exists()


def test_dataset_links(tmp_path):
    deriv = write_smriprep(tmp_path / "smriprep", "01", {})
    desc = tmp_path / "dataset_description.json"
    desc.write_text(json.dumps({"Name": "x", "DatasetLinks": {"raw": "file:///raw"}}))
    reuse.add_dataset_links(desc, reuse.dataset_links([deriv]))
    links = json.loads(desc.read_text())["DatasetLinks"]
    assert links == {"raw": "file:///raw", "smriprep": deriv.absolute().as_uri()}


def test_fixture_helper_copies_a_petsynth_run(tmp_path):
    out = tmp_path / "out"
    names = {}
    from pet_synth_app import layout as L

    keys = {k: (k, None) for k in ("t1w", "mask", "gm", "wm", "csf", "t1w2std_xfm")}
    keys["std2t1w_xfm"] = ("std2t1w_xfm", None)
    keys.update({f"{k}_std": (k, TEMPLATE_SPACE) for k in ("t1w", "mask", "gm")})
    for role, (key, space) in keys.items():
        p = L.path(out / "sub-01", "sub-01", key, space)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        names[role] = p
    files = petsynth_files(out, "01")
    assert files == names
    deriv = write_smriprep(tmp_path / "d", "01", files, space=reuse.FMRIPREP_TEMPLATE)
    got = sorted(p.name for p in (deriv / "sub-01" / "anat").iterdir())
    assert "sub-01_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5" in got
    assert "sub-01_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz" in got
    shutil.rmtree(deriv)


# ----------------------------------------------------------------- PET (PETPrep-shaped)
XFM_TAIL = "from-petref_to-T1w_mode-image_xfm.txt"


def _pet_files(raw: Path, tmp: Path, subject: str = "01") -> dict[Path, dict[str, Path]]:
    """The raw PET as its own reference and a small rigid ANTs transform."""
    import ants

    pet = raw / f"sub-{subject}/pet/sub-{subject}_trc-FDG_pet.nii.gz"
    xfm = tmp / "pet2t1w.mat"
    rot = np.array([[1.0, 0.02, 0.0], [-0.02, 1.0, 0.0], [0.0, 0.0, 1.0]])
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=rot, offset=[1.5, -2.25, 0.125]
    )
    ants.write_transform(tx, str(xfm))
    return {pet: {"pet_ref": pet, "pet2t1w_xfm": xfm}}


def _find_pet(deriv, raw, subject="01"):
    layouts = reuse.load_derivatives([deriv] if isinstance(deriv, Path) else deriv)
    t1w = str(raw / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz")
    found = reuse.find_anat(layouts, subject, None, t1w)
    pet = str(raw / f"sub-{subject}/pet/sub-{subject}_trc-FDG_pet.nii.gz")
    return found, reuse.find_pet(layouts, found, None, pet, t1w)


def test_petprep_pair_is_found_by_the_series_entities(raw, tmp_path):
    deriv = write_petprep(
        tmp_path / "petprep", "01", _raw_files(raw, tmp_path), _pet_files(raw, tmp_path)
    )
    found, pet = _find_pet(deriv, raw)
    assert pet.reused and found.notes == []
    assert pet.files["pet_ref"].endswith("sub-01_trc-FDG_desc-hmc_petref.nii.gz")
    assert pet.files["pet2t1w_xfm"].endswith(
        "sub-01_trc-FDG_from-petref_to-T1w_mode-image_xfm.txt"
    )
    assert reuse.pet_source_uris(pet) == [
        "bids:petprep:sub-01/pet/sub-01_trc-FDG_desc-hmc_petref.nii.gz",
        "bids:petprep:sub-01/pet/sub-01_trc-FDG_from-petref_to-T1w_mode-image_xfm.txt",
    ]
    assert found.summary().endswith(
        "PET sub-01_trc-FDG_pet.nii.gz: reused frame average and coregistration"
    )
    # fMRIPrep's spelling of the transform (desc-coreg) is found as well
    deriv2 = write_petprep(
        tmp_path / "fp",
        "01",
        _raw_files(raw, tmp_path),
        _pet_files(raw, tmp_path),
        xfm_desc="coreg",
    )
    assert _find_pet(deriv2, raw)[1].files["pet2t1w_xfm"].endswith("desc-coreg_xfm.txt")


def test_petprep_other_series_or_subject_is_not_taken(raw, tmp_path):
    files = _pet_files(raw, tmp_path)
    (pet,) = files
    other = tmp_path / "sub-01_trc-FDG_rec-OSEM_pet.nii.gz"  # another reconstruction
    deriv = write_petprep(tmp_path / "d", "01", _raw_files(raw, tmp_path), {other: files[pet]})
    found, got = _find_pet(deriv, raw)
    assert got.files == {} and found.notes == []
    assert "PET sub-01_trc-FDG_pet.nii.gz: computed frame average" in found.summary()
    assert _find_pet(deriv, raw, subject="02")[1].files == {}


@pytest.mark.parametrize("missing", ["transform", "reference"])
def test_petprep_half_pair_is_one_line_and_computed(raw, tmp_path, missing):
    files, pets = _raw_files(raw, tmp_path), _pet_files(raw, tmp_path)
    deriv = write_petprep(tmp_path / "d", "01", files, pets, **{missing: False})
    found, pet = _find_pet(deriv, raw)
    assert not pet.reused and pet.files == {}
    has = "reference" if missing == "transform" else "transform"
    assert found.notes == [
        f"sub-01: PET sub-01_trc-FDG_pet.nii.gz: d has a PETPrep PET {has} but no PET "
        f"{missing}; frame average and coregistration computed"
    ]
    assert found.computed_steps == []  # the anatomy is still reused


def test_petprep_mismatches_give_one_line_each(raw, tmp_path):
    files = _pet_files(raw, tmp_path)
    (pet,) = files
    files[pet]["pet_ref"] = write_nifti(
        tmp_path / "ref.nii.gz", np.ones((30, 32, 24), np.float32), zooms=(3.0, 3.0, 3.0)
    )
    deriv = write_petprep(tmp_path / "d", "01", _raw_files(raw, tmp_path), files)
    (deriv / "sub-01/pet" / f"sub-01_trc-FDG_{XFM_TAIL}").write_text("not a transform\n")
    side = deriv / "sub-01/pet/sub-01_trc-FDG_desc-hmc_petref.json"
    side.write_text(json.dumps({"Sources": ["bids:raw:sub-01/pet/sub-01_trc-PIB_pet.nii.gz"]}))
    found, got = _find_pet(deriv, raw)
    assert got.files == {} and len(found.notes) == 3
    assert all(n.endswith("; frame average and coregistration computed") for n in found.notes)
    assert all("\n" not in n for n in found.notes)
    assert "is not on the grid of the raw PET sub-01_trc-FDG_pet.nii.gz" in found.notes[0]
    assert "made from sub-01_trc-PIB_pet.nii.gz, not from" in found.notes[1]
    assert "is not an ITK AffineTransform: unreadable" in found.notes[2]


def test_petprep_transform_needs_the_t1w_it_targets(raw, tmp_path):
    pets = _pet_files(raw, tmp_path)
    alone = write_petprep(tmp_path / "petprep", "01", {}, pets)  # PET files only
    found, pet = _find_pet(alone, raw)
    assert pet.files == {} and len(found.notes) == 2  # + "no MNI transforms found"
    assert "no preprocessed T1w of sub-01 in petprep (nor a reused one)" in found.notes[1]
    # PETPrep run on precomputed sMRIPrep anatomy: both folders, the reused T1w is the target
    smriprep = write_smriprep(tmp_path / "smriprep", "01", _raw_files(raw, tmp_path))
    found, pet = _find_pet([alone, smriprep], raw)
    assert pet.reused and found.notes == []
    # a T1w in the PETPrep folder that is not the raw T1w's: the transform is refused
    files = _raw_files(raw, tmp_path)
    files["t1w"] = write_nifti(tmp_path / "t.nii.gz", np.ones((8, 8, 8), np.float32))
    bad = write_petprep(tmp_path / "bad", "01", {"t1w": files["t1w"]}, pets)
    layouts = reuse.load_derivatives([bad])
    t1w = str(raw / "sub-01/anat/sub-01_T1w.nii.gz")
    found = reuse.ReusedAnat("sub-01")
    pet = reuse.find_pet(layouts, found, None, str(next(iter(pets))), t1w)
    assert pet.files == {} and "the T1w its transform targets does not match" in found.notes[0]


def test_itk_text_transform_round_trips_exactly(raw, tmp_path):
    import ants

    from pet_synth_app.preproc.pet import read_ants_rigid, to_ants_affine

    ((pet, files),) = _pet_files(raw, tmp_path).items()
    deriv = write_petprep(tmp_path / "d", "01", {}, {pet: files})
    txt = deriv / "sub-01/pet" / f"sub-01_trc-FDG_{XFM_TAIL}"
    assert txt.read_text().startswith("#Insight Transform File")
    mat = to_ants_affine(str(txt), str(tmp_path / "back.mat"))
    a, b = (ants.read_transform(str(p), "double") for p in (files["pet2t1w_xfm"], mat))
    assert np.array_equal(a.parameters, b.parameters)
    assert np.array_equal(a.fixed_parameters, b.fixed_parameters)
    assert np.allclose(read_ants_rigid(mat)[:3, 3], [-1.5, 2.25, 0.125])  # LPS -> RAS
    with pytest.raises(ValueError, match="not an AffineTransform"):
        ants.write_transform(
            ants.create_ants_transform(dimension=3, transform_type="Euler3DTransform"),
            str(tmp_path / "e.txt"),
        )
        to_ants_affine(str(tmp_path / "e.txt"), str(tmp_path / "e.mat"))


def test_graph_takes_out_frame_average_and_coregistration(raw, tmp_path):
    deriv = write_petprep(
        tmp_path / "petprep", "01", _raw_files(raw, tmp_path), _pet_files(raw, tmp_path)
    )
    plan, units, errors, wf = _plan_and_wf(raw, tmp_path, deriv)
    assert errors == [] and len(units) == 2
    names = set(wf.list_node_names())
    pet = "single_subject_{}_wf.pet_trc_FDG_wf.{}"
    for step in ("frame_average", "coregister"):
        assert pet.format("01", step) not in names, step
        assert pet.format("02", step) in names, step
    for step in ("reused_pet2t1w_xfm", "pet_to_t1w", "pet_to_std", "suvr"):
        assert pet.format("01", step) in names, step
    to_std = wf.get_node(pet.format("01", "pet_to_std"))
    assert to_std.inputs.in_file.endswith("sub-01_trc-FDG_desc-hmc_petref.nii.gz")
    ds = wf.get_node("single_subject_01_wf.pet_trc_FDG_wf_derivatives.ds_pet2t1w_xfm")
    sources = ds.interface._metadata["Sources"]
    assert "bids:petprep:sub-01/pet/sub-01_trc-FDG_desc-hmc_petref.nii.gz" in sources
    assert f"bids:petprep:sub-01/pet/sub-01_trc-FDG_{XFM_TAIL}" in sources
    ds2 = wf.get_node("single_subject_02_wf.pet_trc_FDG_wf_derivatives.ds_pet2t1w_xfm")
    assert not any("petprep" in s for s in ds2.interface._metadata["Sources"])
    assert "reused from PETPrep derivatives" in wf.visit_desc()


def test_petprep_session_series_match_their_session(raw, tmp_path):
    ((pet, files),) = _pet_files(raw, tmp_path).items()
    ses = {}
    for label in ("A", "B"):
        ses[label] = raw / f"sub-01/ses-{label}/pet/sub-01_ses-{label}_trc-FDG_pet.nii.gz"
        ses[label].parent.mkdir(parents=True)
        shutil.copyfile(pet, ses[label])
    deriv = write_petprep(
        tmp_path / "d", "01", _raw_files(raw, tmp_path), {ses["A"]: files}, session="A"
    )
    layouts = reuse.load_derivatives([deriv])
    t1w = str(raw / "sub-01/anat/sub-01_T1w.nii.gz")
    got = {}
    for label in ("A", "B"):
        found = reuse.find_anat(layouts, "01", label, t1w)
        got[label] = reuse.find_pet(layouts, found, label, str(ses[label]), t1w)
    assert got["A"].reused
    assert (
        got["A"].files["pet_ref"].endswith("ses-A/pet/sub-01_ses-A_trc-FDG_desc-hmc_petref.nii.gz")
    )
    assert got["B"].files == {}  # no ses-B PET derivatives; the ses-A ones are not taken


def test_lookup_then_resolve_equals_resolve(raw, tmp_path):
    """The run looks the derivatives up while the modality checks run (``lookup_reuse``)
    and logs/uses them afterwards: same plan, units and errors as one ``resolve_reuse``;
    an unusable folder is raised by ``resolve_reuse``, where the run raised it before."""
    from pet_synth_app.runner import lookup_reuse

    deriv = write_smriprep(tmp_path / "smriprep", "01", _raw_files(raw, tmp_path))
    settings = Settings(
        bids_dir=raw, output_dir=tmp_path / "out", work_dir=tmp_path / "w", derivatives=[deriv]
    )
    units, _ = pbids.collect_inputs(pbids.load_layout(raw))
    plan = resolve_plan(settings, check=False, device="cpu")
    found = lookup_reuse(settings, units, plan)
    assert sorted(found) == ["sub-01", "sub-02"]
    one = resolve_reuse(settings, units, plan)
    two = resolve_reuse(settings, units, plan, found)
    assert [u.name for u in one[1]] == [u.name for u in two[1]] == ["sub-01", "sub-02"]
    assert one[2] == two[2] == []
    assert dict(one[0].reused["sub-01"].files) == dict(two[0].reused["sub-01"].files)
    assert "t1w2std_xfm" in two[0].reused["sub-01"].files
    missing = dataclasses.replace(settings, derivatives=[tmp_path / "nope"])
    error = lookup_reuse(missing, units, plan)
    assert isinstance(error, PetSynthError) and "does not exist" in str(error)
    with pytest.raises(PetSynthError, match="does not exist"):
        resolve_reuse(missing, units, plan, error)
