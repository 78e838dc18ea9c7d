"""Siamese autoencoder of PET patches (analysis.siamese): scaling, patches, loss, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from pet_synth_app.analysis import siamese as S


def _cohort(n: int = 3, shape=(20, 22, 6), seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Smooth [0, 1] 'PET' volumes sharing one pattern, and a central mask."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.random(shape), 1.5)
    base = (base - base.min()) / np.ptp(base)
    vols = [
        np.clip(base + 0.03 * rng.normal(size=shape), 0, 1).astype(np.float32) for _ in range(n)
    ]
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 1:-1] = True
    return vols, mask


def test_scale_unit_range_and_robust_max() -> None:
    vol = np.arange(1, 1001, dtype=np.float64).reshape(10, 10, 10)
    mask = np.zeros_like(vol, bool)
    mask[:, :, :5] = True  # values 1..5 + 10*k ... inside
    vol[0, 0, 0] = 1e6  # one hot voxel inside the mask must not set the scale
    out = S.scale_unit(vol, mask)
    assert out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.all(out[~mask] == 0)
    top = np.percentile(vol[mask], 99.9)
    np.testing.assert_allclose(out[1, 1, 1], vol[1, 1, 1] / top, rtol=1e-6)
    assert out[0, 0, 0] == 1.0  # clipped
    assert np.mean(out[mask] == 1.0) < 0.01  # only the top 0.1 % saturate
    with pytest.raises(ValueError, match="empty"):
        S.scale_unit(vol, np.zeros_like(mask))
    with pytest.raises(ValueError, match="not positive"):
        S.scale_unit(np.zeros((4, 4, 4)), np.ones((4, 4, 4)))


def test_extract_patches_values_and_zero_padding() -> None:
    vol = np.arange(7 * 8 * 3, dtype=np.float32).reshape(7, 8, 3)
    ijk = np.array([[3, 4, 1], [0, 0, 2], [6, 7, 0]])
    p = S.extract_patches(vol, ijk, size=5)
    assert p.shape == (3, 5, 5) and p.dtype == np.float32
    np.testing.assert_array_equal(p[0], vol[1:6, 2:7, 1])
    # corner (0, 0): the first two rows and columns are padding
    assert np.all(p[1][:2] == 0) and np.all(p[1][:, :2] == 0)
    np.testing.assert_array_equal(p[1][2:, 2:], vol[0:3, 0:3, 2])
    # far corner (6, 7)
    np.testing.assert_array_equal(p[2][:3, :3], vol[4:7, 5:8, 0])
    assert np.all(p[2][3:] == 0) and np.all(p[2][:, 3:] == 0)
    # default size and many centres: each patch is the slice around its centre
    rng = np.random.default_rng(1)
    big = rng.random((30, 32, 5)).astype(np.float32)
    centres = np.argwhere(np.ones(big.shape, bool))
    patches = S.extract_patches(big, centres)
    assert patches.shape == (len(centres), 15, 15)
    i, j, k = 15, 16, 2
    n = int(np.flatnonzero((centres == [i, j, k]).all(1))[0])
    np.testing.assert_array_equal(patches[n], big[i - 7 : i + 8, j - 7 : j + 8, k])
    with pytest.raises(ValueError, match="odd"):
        S.extract_patches(vol, ijk, size=4)
    with pytest.raises(ValueError, match="outside"):
        S.extract_patches(vol, np.array([[7, 0, 0]]), size=5)


def test_model_shapes_range_and_size() -> None:
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    assert sum(p.numel() for p in model.parameters()) < 200_000
    x = torch.rand(5, 1, 15, 15)
    with torch.no_grad():
        r, z = model(x)
        torch.testing.assert_close(model.encode(x[:, 0]), z)
        other = S.SiameseAutoencoder(latent_dim=8, patch_size=9, channels=(4, 8, 8))
        r9, z9 = other(torch.rand(2, 1, 9, 9))
    assert r.shape == (5, 1, 15, 15) and z.shape == (5, 64)
    assert float(r.min()) >= 0 and float(r.max()) <= 1
    assert r9.shape == (2, 1, 9, 9) and z9.shape == (2, 8)


def test_siamese_loss_hand_computed() -> None:
    x1 = torch.zeros(2, 1, 2, 2)
    x2 = torch.ones(2, 1, 2, 2)
    r1 = torch.full((2, 1, 2, 2), 0.5)  # MSE 0.25
    r2 = torch.full((2, 1, 2, 2), 0.9)  # MSE 0.01
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    total, parts = S.siamese_loss(x1, x2, r1, r2, z, 3 * z, alpha=2.0)  # parallel codes
    assert parts["reconstruction1"] == pytest.approx(0.25)
    assert parts["reconstruction2"] == pytest.approx(0.01)
    assert parts["similarity"] == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(0.26, abs=1e-6)
    _, opposite = S.siamese_loss(x1, x2, r1, r2, z, -z, alpha=2.0)
    assert opposite["similarity"] == pytest.approx(2.0)
    assert opposite["total"] == pytest.approx(0.26 + 2.0 * 2.0)
    ortho = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    _, mixed = S.siamese_loss(x1, x2, r1, r2, *ortho, alpha=1.0)
    # pair 1 orthogonal (1 - 0), pair 2 at 45 degrees (1 - 1/sqrt 2)
    assert mixed["similarity"] == pytest.approx((1.0 + 1.0 - 2**-0.5) / 2, abs=1e-6)


def test_sample_pairs_never_same_subject() -> None:
    rng = np.random.default_rng(0)
    a, b, v = S.sample_pairs(3, 50, 10_000, rng)
    assert a.shape == b.shape == v.shape == (10_000,)
    assert np.all(a != b)
    assert set(np.unique(a)) == set(np.unique(b)) == {0, 1, 2}
    assert v.min() >= 0 and v.max() < 50
    a2, b2, _ = S.sample_pairs(2, 5, 1000, rng)
    assert np.all(a2 + b2 == 1)
    with pytest.raises(ValueError, match="2 subjects"):
        S.sample_pairs(1, 5, 10, rng)


def test_train_decreases_loss_and_is_repeatable() -> None:
    vols, mask = _cohort()
    kwargs = dict(epochs=4, pairs_per_epoch=512, batch_size=128, lr=3e-3, seed=3, threads=1)
    lines: list[str] = []
    model, rows = S.train_siamese(vols, mask, log=lines.append, **kwargs)
    assert len(rows) == 4 and len(lines) == 4
    assert {"reconstruction1", "reconstruction2", "similarity", "total"} <= set(rows[0])
    assert rows[-1]["total"] < rows[0]["total"]
    assert not model.training
    again, rows2 = S.train_siamese(vols, mask, **kwargs)
    for (k, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), k
    assert [r["total"] for r in rows] == [r["total"] for r in rows2]
    other, _ = S.train_siamese(vols, mask, **{**kwargs, "seed": 4})
    assert not torch.equal(other.encoder[0].weight, model.encoder[0].weight)
    with pytest.raises(ValueError, match="at least 2"):
        S.train_siamese(vols[:1], mask)
    with pytest.raises(ValueError, match="scaled"):
        S.train_siamese([vols[0] * 2 + 0.5, vols[1]], mask)


def test_encode_volume_order_and_shape() -> None:
    vols, mask = _cohort(2)
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    latents = S.encode_volume(model, vols[0], mask, batch_size=100)
    assert latents.shape == (int(mask.sum()), 64) and latents.dtype == np.float32
    ijk = np.stack(np.nonzero(mask), axis=1)
    for n in (0, 137, len(ijk) - 1):
        patch = torch.from_numpy(S.extract_patches(vols[0], ijk[n : n + 1]))
        with torch.no_grad():
            expected = model.encode(patch).numpy()[0]
        np.testing.assert_allclose(latents[n], expected, rtol=1e-5, atol=1e-6)
    assert model.training  # mode restored


def test_patch_stack_encodes_and_trains_like_the_volumes() -> None:
    """The cropped stack of the group level gives the same codes as ``encode_volume`` of
    each volume and the same weights as ``train_siamese`` on the volumes."""
    vols, mask = _cohort(3)
    sub = mask.copy()
    sub[:10] = False  # i >= 10: a contiguous block at the end of the C order
    stack = S.patch_stack(iter(vols), mask, count=3)
    assert stack.data.shape[0] == 3 and len(stack.ijk) == int(mask.sum())
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    codes = S.encode_stack(model, stack, slice(None), batch_size=97)
    for s in range(3):
        np.testing.assert_allclose(codes[s], S.encode_volume(model, vols[s], mask), atol=1e-6)
    rows = np.flatnonzero(sub[mask])
    block = S.encode_stack(model, stack, slice(int(rows[0]), int(rows[-1]) + 1))
    np.testing.assert_allclose(block[1], S.encode_volume(model, vols[1], sub), atol=1e-6)
    kwargs = dict(epochs=2, pairs_per_epoch=256, batch_size=128, seed=5, threads=1)
    a, _ = S.train_siamese(vols, mask, **kwargs)
    b, _ = S.train_siamese_stack(S.patch_stack(vols, mask), **kwargs)
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="shape"):
        S.patch_stack([vols[0][:-1]], mask)


def test_save_load_round_trip_and_tampering(tmp_path) -> None:
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    path = tmp_path / "ae" / "siamese.safetensors"
    card = S.save_autoencoder(model, path, {"training": {"participants": ["sub-01"]}})
    assert card["architecture"] == {
        "latent_dim": 64,
        "patch_size": 15,
        "channels": [16, 32, 64],
        "encode_precision": "float32",
    }
    assert card["n_parameters"] == sum(p.numel() for p in model.parameters())
    first = path.read_bytes()
    S.save_autoencoder(model, path, {"training": {"participants": ["sub-01"]}})
    assert path.read_bytes() == first  # byte-reproducible
    loaded, card2 = S.load_autoencoder(path)
    assert card2["sha256"] == card["sha256"] and card2["training"]["participants"] == ["sub-01"]
    x = torch.rand(3, 1, 15, 15)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[1], model.eval()(x)[1])
    # tampered weights
    data = bytearray(first)
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as err:
        S.load_autoencoder(path)
    assert "\n" not in str(err.value)
    # wrong tensors with a matching sha256 (card rewritten)
    S.save_autoencoder(S.SiameseAutoencoder(latent_dim=8), path, {})
    card_file = path.with_suffix(".json")
    bad = json.loads(card_file.read_text())
    bad["architecture"]["latent_dim"] = 64
    card_file.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="architecture"):
        S.load_autoencoder(path)
    card_file.unlink()
    with pytest.raises(ValueError, match="missing"):
        S.load_autoencoder(path)


def test_bfloat16_encoding_is_close_to_float32_and_recorded(tmp_path, monkeypatch) -> None:
    """In eval mode a bfloat16 encoder's codes are float32 and within 1 % (relative norm)
    of the float32 codes; training mode always runs float32; the precision survives the
    card, and a card without it (detectors fitted before it) loads as float32."""
    vols, mask = _cohort(2)
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    ref = S.encode_volume(model.eval(), vols[0], mask)
    model.encode_precision = "bfloat16"
    low = S.encode_volume(model, vols[0], mask)
    assert low.dtype == np.float32
    err = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    if S.native_bfloat16():
        assert 0 < err < 0.01
    monkeypatch.setattr(S, "native_bfloat16", lambda: False)
    # emulated bfloat16 would be slower than float32: float32 is used
    np.testing.assert_array_equal(S.encode_volume(model, vols[0], mask), ref)
    monkeypatch.undo()
    x = torch.from_numpy(S.extract_patches(vols[0], np.argwhere(mask)[:8]))[:, None]
    with torch.no_grad():
        torch.testing.assert_close(model.train().encode(x), model.encoder(x))
    path = tmp_path / "siamese.safetensors"
    S.save_autoencoder(model, path, {})
    assert S.load_autoencoder(path)[0].encode_precision == "bfloat16"
    card_file = path.with_suffix(".json")
    old = json.loads(card_file.read_text())
    del old["architecture"]["encode_precision"]
    card_file.write_text(json.dumps(old))
    assert S.load_autoencoder(path)[0].encode_precision == "float32"
    with pytest.raises(ValueError, match="encode_precision"):
        S.SiameseAutoencoder(encode_precision="float16")


def test_encode_stack_in_worker_threads_gives_the_same_codes() -> None:
    """Subjects encoded by single-threaded workers (``threads.worker_pool``, the group
    fit) give bit-identical codes to one call on 1 torch thread, in both encode
    precisions; on 2 intra-op threads the GEMM's reduction order depends on the CPU
    (AVX-512: differences up to ~1e-7), which the group fit never uses."""
    from pet_synth_app.threads import thread_limits, worker_pool

    vols, mask = _cohort(5)
    stack = S.patch_stack(vols, mask)
    torch.manual_seed(0)
    model = S.SiameseAutoencoder()
    for precision in S.ENCODE_PRECISIONS:
        model.encode_precision = precision
        with thread_limits(2, env=False):
            two = S.encode_stack(model, stack, slice(3, None), batch_size=97)
        with thread_limits(1, env=False):
            one = S.encode_stack(model, stack, slice(3, None), batch_size=97)
        with worker_pool(2) as pool:
            assert pool is not None
            assert pool.submit(torch.get_num_threads).result() == 1
            pooled = S.encode_stack(model, stack, slice(3, None), batch_size=97, pool=pool)
        assert pooled.shape == (5, int(mask.sum()) - 3, S.LATENT_DIM)
        assert np.abs(pooled).max() > 0
        np.testing.assert_array_equal(pooled, one)
        np.testing.assert_allclose(pooled, two, rtol=0, atol=1e-5 * np.abs(one).max())
    assert model.training  # mode restored
