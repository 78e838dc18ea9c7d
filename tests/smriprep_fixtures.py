"""Derivatives folders shaped like sMRIPrep/fMRIPrep's, built from PetSynth files.

Names follow sMRIPrep's documented outputs (and its CI list ``ds054_outputs.txt``):
``sub-X[_ses-Y]_desc-preproc_T1w.nii.gz``, ``_desc-brain_mask.nii.gz``,
``_label-{GM,WM,CSF}_probseg.nii.gz``, ``_from-T1w_to-<space>_mode-image_xfm.h5`` and
``_from-<space>_to-T1w_mode-image_xfm.h5``, and for the template output space
``_space-<space>_desc-preproc_T1w.nii.gz``, ``_space-<space>_desc-brain_mask.nii.gz`` and
``_space-<space>_label-GM_probseg.nii.gz``; the files themselves are copies of a PetSynth
run's (or of the raw T1w, for tests that do not run a workflow).

``write_petprep`` adds the PET derivatives PETPrep writes per PET series (nipreps/petprep
f2b49ca, 2025-06-12, ``workflows/pet/outputs.py``: ``init_ds_petref_wf(desc="hmc")`` and
``init_ds_registration_wf(source="petref", dest="T1w")``, named after the raw series):
``<series>_desc-hmc_petref.nii.gz`` (+ sidecar with ``Sources``) and
``<series>_from-petref_to-T1w_mode-image_xfm.txt`` (ITK text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pet_synth_app import layout as L

IMAGES = ("t1w", "mask", "gm", "wm", "csf")
XFMS = ("t1w2std_xfm", "std2t1w_xfm")
STD_IMAGES = {"t1w_std": "t1w", "mask_std": "mask", "gm_std": "gm"}
"""Template-space images (``reuse.STD_ROLES``) by their ``layout.OUTPUTS`` key."""


def _xfm_name(stem: str, key: str, space: str) -> str:
    """Transform name with the template ``space`` in place of PetSynth's."""
    name = L.filename(stem, key)
    return name.replace(L.TEMPLATE_SPACE, space)


def write_smriprep(
    root: Path,
    subject: str,
    files: dict[str, Path],
    session: str | None = None,
    space: str = L.TEMPLATE_SPACE,
    transforms: bool = True,
    raw_sources: list[str] | None = None,
    name: str = "sMRIPrep",
) -> Path:
    """Copy ``files`` (keys ``IMAGES`` + ``XFMS`` + ``STD_IMAGES``) into an sMRIPrep-shaped
    folder ``root``.

    ``space``: template named in the transform and template-space files
    (``MNI152NLin2009cAsym`` for fMRIPrep's default); ``transforms=False`` leaves the
    transforms out; ``raw_sources`` go into the preprocessed T1w's sidecar (``Sources``, as
    BIDS URIs).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": f"{name} - sMRI PREProcessing workflow",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": name, "Version": "0.16.1"}],
            }
        )
    )
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    anat = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for key in IMAGES:
        if key in files:
            shutil.copyfile(files[key], anat / L.filename(stem, key))
    if transforms:
        for key in XFMS:
            if key in files:
                shutil.copyfile(files[key], anat / _xfm_name(stem, key, space))
    for role, key in STD_IMAGES.items():
        if role in files:
            shutil.copyfile(files[role], anat / L.filename(stem, key, space))
    if raw_sources is not None:
        side = L.sidecar(anat / L.filename(stem, "t1w"))
        side.write_text(json.dumps({"Sources": [f"bids:raw:{s}" for s in raw_sources]}))
    return root


def petsynth_files(out: Path, subject: str) -> dict[str, Path]:
    """A PetSynth run's anatomical outputs of ``subject`` (keys ``IMAGES`` + ``XFMS`` +
    ``STD_IMAGES``)."""
    found = {key: L.find(out, subject, key) for key in (*IMAGES, *XFMS)}
    found.update({r: L.find(out, subject, k, L.TEMPLATE_SPACE) for r, k in STD_IMAGES.items()})
    missing = [k for k, v in found.items() if v is None]
    assert not missing, missing
    return found


def series_stem(pet: Path) -> str:
    """``sub-X[_ses-Y]_trc-.._..`` of a raw PET file name."""
    return Path(pet).name.split(".")[0].removesuffix("_pet")


def write_petprep(
    root: Path,
    subject: str,
    anat: dict[str, Path],
    pets: dict[Path, dict[str, Path]],
    session: str | None = None,
    transform: bool = True,
    reference: bool = True,
    xfm_desc: str | None = None,
) -> Path:
    """A PETPrep-shaped folder: the anatomical ``anat`` files (as ``write_smriprep``) and,
    per raw PET path in ``pets``, its ``pet_ref`` as ``desc-hmc_petref`` and its
    ``pet2t1w_xfm`` (ITK or ANTs, converted to ITK text in double precision) as
    ``from-petref_to-T1w_mode-image[_desc-<xfm_desc>]_xfm.txt``; ``transform=False`` /
    ``reference=False`` leave those out."""
    import ants

    write_smriprep(root, subject, anat, session=session, name="PETPrep")
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "pet"
    folder.mkdir(parents=True, exist_ok=True)
    for pet, files in pets.items():
        stem = series_stem(pet)
        if reference:
            ref = folder / f"{stem}_desc-hmc_petref.nii.gz"
            shutil.copyfile(files["pet_ref"], ref)
            rel = Path(pet).relative_to(Path(pet).parents[2 if session else 1].parent)
            L.sidecar(ref).write_text(json.dumps({"Sources": [f"bids:raw:{rel}"]}))
        if transform:
            desc = f"_desc-{xfm_desc}" if xfm_desc else ""
            xfm = folder / f"{stem}_from-petref_to-T1w_mode-image{desc}_xfm.txt"
            ants.write_transform(
                ants.read_transform(str(files["pet2t1w_xfm"]), "double"), str(xfm)
            )
    return root


def petsynth_pet_files(out: Path, work: Path, subject: str) -> dict[str, Path]:
    """A PetSynth run's PET reference (its frame average, from the work folder) and PET ->
    T1w transform of ``subject``'s single PET series."""
    refs = sorted(
        Path(work).glob(
            f"petsynth_wf/single_subject_{subject}_wf/pet_*_wf/frame_average/pet_mean.nii.gz"
        )
    )
    assert len(refs) == 1, refs
    return {"pet_ref": refs[0], "pet2t1w_xfm": L.find(out, subject, "pet2t1w_xfm")}
