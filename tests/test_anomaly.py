"""The OC-SVM anomaly detector end to end (analysis.anomaly, the OCSVMScore interface,
the group-level fit with --augment-synthetic) on small synthetic PET volumes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pet_synth_app.analysis import anomaly

SHAPE = (28, 32, 24)


def _cohort(n: int, seed: int = 0):
    """Smooth 'PET' volumes sharing one regional pattern plus subject noise; GM shell."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    centre = np.array(SHAPE)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (np.array(SHAPE)[:, None, None, None] / 2.4)) ** 2).sum(0))
    mask = r < 1.0
    gm = np.clip(1 - np.abs(r - 0.8) / 0.15, 0, 1)  # a cortical ribbon
    pattern = gaussian_filter(rng.normal(0, 1, SHAPE), 2) * 3
    pets = []
    for _ in range(n):
        noise = gaussian_filter(rng.normal(0, 1, SHAPE), 1.5)
        pets.append(np.where(mask, 1.0 + 0.5 * gm + 0.1 * pattern + 0.05 * noise, 0.0))
    return [p.astype(np.float32) for p in pets], mask, gm


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    pets, mask, gm = _cohort(8)
    folder = tmp_path_factory.mktemp("detector")
    res = anomaly.fit(
        pets,
        [mask] * 8,
        gm,
        np.diag([2.0, 2, 2, 1]),
        folder,
        nu=0.1,
        gamma="scale",
        epochs=2,
        pairs_per_epoch=4000,
        seed=0,
        threads=1,
        meta={
            "participants_real": [f"sub-c{i}" for i in range(6)],
            "participants_synthetic": ["sub-s1", "sub-s2"],
        },
    )
    return folder, res, mask, gm


def test_fit_writes_a_complete_model(fitted):
    folder, res, mask, gm = fitted
    assert anomaly.has_model(folder) and not anomaly.has_model(folder / "nothing")
    meta = anomaly.read_meta(folder)
    assert meta["n_voxels"] == res.n_voxels == int(anomaly.model_voxels(gm, [mask]).sum())
    assert meta["participants_synthetic"] == ["sub-s1", "sub-s2"]
    for key in ("autoencoder_sha256", "ocsvm_sha256"):
        assert len(meta[key]) == 64
    assert len(res.log) == 2


def test_lesion_scores_lowest(fitted):
    folder, _, mask, gm = fitted
    pets, _, _ = _cohort(1, seed=99)  # a new subject
    pet = pets[0].copy()
    ijk = np.argwhere(gm > 0.9)[0]
    grid = np.indices(SHAPE)
    lesion = (((grid - ijk[:, None, None, None]) ** 2).sum(0) <= 9) & (gm > 0.3)
    pet[lesion] *= 0.6
    standardized, decision, _ = anomaly.score(folder, pet, mask, threads=1)
    voxels = anomaly.model_voxels(gm, [mask])
    assert standardized[~voxels].max() == 0 and decision[~voxels].max() == 0
    inside, outside = lesion & voxels, voxels & ~lesion
    # anomalies score lower: the lesion's mean standardized score is far below the rest
    assert standardized[inside].mean() < -2.0 < standardized[outside].mean()
    assert np.median(standardized[voxels]) == pytest.approx(0, abs=1e-6)
    # the same PET without the lesion has no such outlier region
    clean, _, _ = anomaly.score(folder, pets[0], mask, threads=1)
    assert clean[inside].mean() > standardized[inside].mean() + 1.5


def test_score_refuses_another_grid(fitted):
    folder, _, mask, _ = fitted
    with pytest.raises(ValueError, match="grid"):
        anomaly.score(folder, np.zeros((10, 10, 10), np.float32), np.ones((10, 10, 10), bool))


def test_fit_needs_two_controls(tmp_path):
    pets, mask, gm = _cohort(1)
    with pytest.raises(ValueError, match="at least 2"):
        anomaly.fit(pets, [mask], gm, np.eye(4), tmp_path, nu=0.1, gamma="scale", epochs=1)


def test_interface_metadata(fitted, tmp_path):
    from pet_synth_app.interfaces.anomaly import OCSVMScore

    folder, _, mask, _ = fitted
    pets, _, _ = _cohort(1, seed=5)
    affine = np.diag([2.0, 2, 2, 1])
    nib.Nifti1Image(pets[0], affine).to_filename(tmp_path / "pet.nii.gz")
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(tmp_path / "mask.nii.gz")
    res = OCSVMScore(
        pet=str(tmp_path / "pet.nii.gz"),
        mask=str(tmp_path / "mask.nii.gz"),
        model=str(folder),
        participant_id="sub-s1",
        nthreads=1,
    ).run(cwd=str(tmp_path))
    meta = res.outputs.metadata
    assert meta["InTrainingSet"] is True
    assert meta["TrainingControlsReal"] == 6 and meta["TrainingControlsSynthetic"] == 2
    assert meta["OCSVMSha256"] == anomaly.read_meta(folder)["ocsvm_sha256"]
    json.dumps(meta)  # sidecar-serializable
    img = nib.load(res.outputs.out_file)
    assert img.shape == SHAPE and np.allclose(img.affine, affine)


def test_fit_block_by_block_matches_one_block(fitted, tmp_path):
    """Encoding and fitting one voxel block at a time (memory) gives the same detector."""
    folder, _, mask, gm = fitted
    pets, _, _ = _cohort(8)
    blocked = anomaly.fit(
        pets,
        [mask] * 8,
        gm,
        np.diag([2.0, 2, 2, 1]),
        tmp_path,
        nu=0.1,
        gamma="scale",
        epochs=2,
        pairs_per_epoch=4000,
        seed=0,
        threads=1,
        block_voxels=500,
    )
    assert blocked.n_voxels > 1500  # several blocks
    test_pet = _cohort(1, seed=42)[0][0]
    _, one, _ = anomaly.score(folder, test_pet, mask, threads=1)
    _, many, _ = anomaly.score(tmp_path, test_pet, mask, threads=1)
    assert np.abs(one - many).max() < 2e-3  # the solver stops per chunk: tiny differences
    assert np.corrcoef(one[mask], many[mask])[0, 1] > 0.9999


def test_block_size_bounds_the_codes_memory():
    assert anomaly.block_size(75, 64, codes_mb=1024) == 49152  # 0.94 GB of codes
    assert anomaly.block_size(10, 64, codes_mb=1024) == 12 * 16384  # OCSVM_BLOCK_VOXELS
    assert anomaly.block_size(75, 64, codes_mb=1) == 16384  # at least one solver chunk


def test_concat_models_pads_support_vectors():
    from pet_synth_app.analysis import ocsvm

    rng = np.random.default_rng(0)
    shape, aff = (4, 4, 4), np.eye(4)
    ijk = np.argwhere(np.ones(shape, bool)).astype(np.int32)
    lat = rng.normal(size=(6, 64, 8)).astype(np.float32)
    a = ocsvm.fit_model(lat[:, :20], ijk[:20], shape, aff, nu=0.5)
    b = ocsvm.fit_model(lat[:, 20:], ijk[20:], shape, aff, nu=0.9)
    parts = [a, b]
    whole = ocsvm.concat_models(parts)
    assert parts == []  # consumed: the blocks are freed as they are copied
    assert whole.n_voxels == 64 and whole.sv.shape[1] == max(a.sv.shape[1], b.sv.shape[1])
    z = rng.normal(size=(64, 8)).astype(np.float32)
    parts = np.concatenate([ocsvm.score(a, z[:20]), ocsvm.score(b, z[20:])])
    assert np.allclose(ocsvm.score(whole, z), parts, atol=1e-6)


def test_spilled_blocks_save_the_same_model(tmp_path):
    """Support vectors spilled to disk block by block (``ocsvm.spill``, as ``fit`` does)
    are saved to the same bytes as the blocks concatenated in memory."""
    from pet_synth_app.analysis import ocsvm

    rng = np.random.default_rng(1)
    shape, aff = (4, 4, 4), np.eye(4)
    ijk = np.argwhere(np.ones(shape, bool)).astype(np.int32)
    lat = rng.normal(size=(6, 64, 8)).astype(np.float32)
    blocks = [(0, 20, 0.5), (20, 50, 0.9), (50, 64, 0.3)]

    def parts():
        return [ocsvm.fit_model(lat[:, a:b], ijk[a:b], shape, aff, nu=nu) for a, b, nu in blocks]

    dense = ocsvm.concat_models(parts())
    spilled = [ocsvm.spill(p, tmp_path / f"sv{i}.npy") for i, p in enumerate(parts())]
    assert isinstance(spilled[0].sv, ocsvm.BlockRows)
    lazy = ocsvm.concat_models(spilled)
    assert isinstance(lazy.sv, ocsvm.BlockRows) and lazy.sv.shape == dense.sv.shape
    np.testing.assert_array_equal(lazy.sv[13:57], dense.sv[13:57])
    ocsvm.save_model(dense, tmp_path / "dense")
    ocsvm.save_model(lazy, tmp_path / "lazy")
    for name in (ocsvm.TENSORS, ocsvm.CARD):
        want = (tmp_path / "dense" / name).read_bytes()
        assert (tmp_path / "lazy" / name).read_bytes() == want
    z = rng.normal(size=(64, 8)).astype(np.float32)
    loaded = ocsvm.load_model(tmp_path / "lazy")
    assert np.allclose(ocsvm.score(loaded, z), ocsvm.score(dense, z), atol=1e-6)


def test_fit_in_worker_threads_saves_the_serial_model(tmp_path, monkeypatch):
    """The group fit's encoding and OC-SVMs in 2 single-threaded workers save the same
    detector files, byte for byte, as the serial path (``--nprocs 1``: one thread), so
    the detector does not depend on the process count."""
    pets, mask, gm = _cohort(6)
    kwargs = dict(
        nu=0.1,
        gamma="scale",
        epochs=1,
        pairs_per_epoch=1000,
        seed=0,
        threads=2,
        block_voxels=700,
        meta={"created": "now"},
    )
    pooled = anomaly.fit(pets, [mask] * 6, gm, np.eye(4), tmp_path / "pool", **kwargs)
    serial_pool = anomaly.worker_pool
    monkeypatch.setattr(anomaly, "worker_pool", lambda n: serial_pool(1))  # yields None
    serial = anomaly.fit(pets, [mask] * 6, gm, np.eye(4), tmp_path / "serial", **kwargs)
    assert pooled.n_voxels == serial.n_voxels > 1400  # several blocks
    for name in ("ocsvm.safetensors", "autoencoder.safetensors"):
        assert (tmp_path / "pool" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    test_pet = _cohort(1, seed=42)[0][0]
    _, decision, _ = anomaly.score(tmp_path / "pool", test_pet, mask, threads=1)
    assert np.ptp(decision[anomaly.model_voxels(gm, [mask])]) > 0
