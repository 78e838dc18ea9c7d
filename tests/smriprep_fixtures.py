"""Derivatives folders shaped like sMRIPrep/fMRIPrep's, built from PetSynth files.

Names follow sMRIPrep's documented outputs (and its CI list ``ds054_outputs.txt``):
``sub-X[_ses-Y]_desc-preproc_T1w.nii.gz``, ``_desc-brain_mask.nii.gz``,
``_label-{GM,WM,CSF}_probseg.nii.gz``, ``_from-T1w_to-<space>_mode-image_xfm.h5`` and
``_from-<space>_to-T1w_mode-image_xfm.h5``; the files themselves are copies of a PetSynth
run's (or of the raw T1w, for tests that do not run a workflow).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pet_synth_app import layout as L

IMAGES = ("t1w", "mask", "gm", "wm", "csf")
XFMS = ("t1w2std_xfm", "std2t1w_xfm")


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
    """Copy ``files`` (keys ``IMAGES`` + ``XFMS``) into an sMRIPrep-shaped folder ``root``.

    ``space``: template named in the transform files (``MNI152NLin2009cAsym`` for
    fMRIPrep's default); ``transforms=False`` leaves them out; ``raw_sources`` go into the
    preprocessed T1w's sidecar (``Sources``, as BIDS URIs).
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
    if raw_sources is not None:
        side = L.sidecar(anat / L.filename(stem, "t1w"))
        side.write_text(json.dumps({"Sources": [f"bids:raw:{s}" for s in raw_sources]}))
    return root


def petsynth_files(out: Path, subject: str) -> dict[str, Path]:
    """A PetSynth run's anatomical outputs of ``subject`` (keys ``IMAGES`` + ``XFMS``)."""
    found = {key: L.find(out, subject, key) for key in (*IMAGES, *XFMS)}
    missing = [k for k, v in found.items() if v is None]
    assert not missing, missing
    return found
