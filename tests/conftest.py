"""Shared fixtures: paths to ../shared/realdata and tiny hand-made BIDS datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NO_ET", "1")  # no Nipype telemetry/version checks in tests
# the hand-made datasets lack required PET sidecar fields: the official BIDS validator
# runs only in the tests that ask for it (tests/test_validator.py)
os.environ["PETSYNTH_BIDS_VALIDATOR"] = ""

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} not available")
    return REALDATA


def write_nifti(path: Path, data: np.ndarray, zooms=(2.0, 2.0, 2.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(zooms[:3]) + [1.0])
    nib.Nifti1Image(data, affine).to_filename(str(path))
    return path


def head_like(shape=(40, 48, 40), seed=0) -> np.ndarray:
    """A smooth ellipsoid 'head' with noise (float32)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    data = np.clip(1.2 - r, 0, None) * 1000 + rng.normal(0, 5, shape)
    return np.clip(data, 0, None).astype(np.float32)


def make_bids(root: Path, subjects=("01",), pet=True, frames=1, group="control") -> Path:
    """A minimal valid BIDS dataset with small synthetic T1w (and PET) images."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    )
    rows = ["participant_id\tgroup"]
    for i, sub in enumerate(subjects):
        rows.append(f"sub-{sub}\t{group}")
        write_nifti(root / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", head_like(seed=i))
        if pet:
            data = head_like((32, 32, 24), seed=100 + i)
            if frames > 1:
                data = np.stack([data] * frames, axis=-1)
            write_nifti(root / f"sub-{sub}/pet/sub-{sub}_trc-FDG_pet.nii.gz", data, (3, 3, 3))
            meta = {
                "TracerName": "FDG",
                "FrameTimesStart": [600.0 * k for k in range(frames)],
                "FrameDuration": [600.0] * frames,
            }
            (root / f"sub-{sub}/pet/sub-{sub}_trc-FDG_pet.json").write_text(json.dumps(meta))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def make_tiny_weights(path: Path, model: str = "cyclegan-mse", voxel_size: float = 2.0) -> Path:
    """A randomly initialised tiny model (.safetensors + card) for plumbing tests."""
    import torch

    from pet_synth_app.synthesis.registry import build_model, get_spec, model_config
    from pet_synth_app.synthesis.weights import save_generator

    torch.manual_seed(0)
    small = {"ngf": 4, "ndf": 4, "unet_channels": [4, 8], "sample_steps": 2}
    defaults = get_spec(model).defaults
    config = model_config(model, **{k: v for k, v in small.items() if k in defaults})
    card = {
        "model": model,
        "config": config,
        "input": {
            "space": "MNI152NLin2009aSym",
            "voxel_size_mm": voxel_size,
            "pet_scale": 2.5,
            "pet_units": "SUVR",
        },
        "training": {"data": "random initialisation (tests)", "participants": []},
    }
    save_generator(build_model(model, config).generator, path, card)
    return path


@pytest.fixture
def tiny_weights(tmp_path) -> Path:
    return make_tiny_weights(tmp_path / "model" / "tiny.safetensors")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one thread (stable timings on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
