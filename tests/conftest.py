"""Shared fixtures: paths to ../shared/realdata and tiny hand-made BIDS datasets."""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
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


@functools.lru_cache(maxsize=8)
def template_head(kind: str, voxel_mm: float = 3.0, skull: bool = True) -> nib.Nifti1Image:
    """A tiny phantom head from the MNI template: ``"T1w"`` (WM > GM > CSF, with the
    synthetic skull and scalp unless ``skull=False``) or ``"pet"`` (FDG-like: GM > WM,
    no skull signal, 6 mm FWHM), on a ``voxel_mm`` grid (cached: do not modify it)."""
    from scipy import ndimage as ndi

    from pet_synth_app.preproc.templates import get_template, synthetic_head

    if kind == "T1w":
        img = synthetic_head(2) if skull else get_template("T1w", 2)
        data = img.get_fdata(dtype=np.float32)
    else:
        img = get_template("GM", 2)
        gm, wm = (get_template(k, 2).get_fdata(dtype=np.float32) for k in ("GM", "WM"))
        data = ndi.gaussian_filter(gm + 0.35 * wm, 6.0 / 2.355 / 2.0)
    factor = 2.0 / voxel_mm
    data = ndi.zoom(data, factor, order=1) * 1000.0
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] / factor
    rng = np.random.default_rng(0)
    data = np.clip(data + rng.normal(0, 5, data.shape), 0, None)
    return nib.Nifti1Image(data.astype(np.float32), affine)


# --- a participant run with a stand-in workflow (test_input_checks.py, test_validator.py)

CARD = {"input": {"voxel_size_mm": 2.0}, "training": {"data": "phantoms"}, "sha256": "x"}


class FakeWorkflow:
    def __init__(self, units):
        self.units = units

    def visit_desc(self):
        return ""


def run_participant(bids: Path, out: Path, *extra: str) -> int:
    """``petsynth bids out participant -w out/../w ...``; the exit code."""
    from pet_synth_app.cli import run

    return run.main([str(bids), str(out), "participant", "-w", str(out.parent / "w"), *extra])


@pytest.fixture
def fake_run(monkeypatch):
    """Run ``petsynth`` with a stand-in workflow that records the units it was given and
    writes one stat-map sidecar per unit; returns the units the workflow got."""
    from pet_synth_app import layout as L
    from pet_synth_app import runner
    from pet_synth_app.analysis import qc
    from pet_synth_app.plan import RunPlan
    from pet_synth_app.synthesis.weights import default_weights

    seen: list[str] = []

    def plan(settings, check=True, device=None):
        return RunPlan(default_weights(), CARD, "x", None, None, "cpu", 1.5, 1)

    def init_wf(settings, units, plan, run_id=""):
        seen.extend(u.name for u in units)
        return FakeWorkflow(units)

    def run_wf(wf, settings, run_id, on_unit_done=None, on_start=None, on_step_done=None):
        for unit in wf.units:
            folder = settings.output_dir / f"sub-{unit.subject}"
            side = L.sidecar(L.path(folder, unit.name, "statmap", "T1w", "hypometabolism"))
            side.parent.mkdir(parents=True, exist_ok=True)
            side.write_text(json.dumps({"Threshold": -1.65}))
        return []

    monkeypatch.setattr(runner, "resolve_plan", plan)
    monkeypatch.setattr("pet_synth_app.workflows.base.init_petsynth_wf", init_wf)
    monkeypatch.setattr("pet_synth_app.workflows.base.run_workflow", run_wf)
    monkeypatch.setattr(qc, "failed_checks", lambda out, sub: {})
    # reports in threads of this process, so that they see the patched QC checks
    monkeypatch.setattr("pet_synth_app.interrupt.worker_pool", ThreadPoolExecutor)
    return seen
