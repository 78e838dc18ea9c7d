"""Inference of the synthesis models: slicing/patching, the batched forward pass,
smoothing, .safetensors weights with their model cards, and ``synthesize_pet``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from pet_synth_app.errors import PetSynthError
from pet_synth_app.synthesis import inference, weights
from pet_synth_app.synthesis.networks import count_parameters
from pet_synth_app.synthesis.registry import build_model, model_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Identity(nn.Module):
    def forward(self, x):
        return x


class Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.full_like(x, self.value)


def blob_volume(shape=(24, 28, 20), lo=(5, 6, 4), hi=(17, 20, 13), seed=0) -> np.ndarray:
    """Zeros with a cuboid of values in (0, 1] between ``lo`` and ``hi`` (exclusive)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vol[box] = rng.uniform(0.05, 1.0, vol[box].shape)
    return vol


# ------------------------------------------------------------------ slices
def test_volume_to_slices_layout_and_round_trip():
    vol = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    s = inference.volume_to_slices(vol)
    assert s.shape == (7, 3, 5, 6) and s.dtype == vol.dtype and s.flags.c_contiguous
    for z in range(7):
        for c in range(3):
            src = min(max(z + c - 1, 0), 6)  # replicated edges
            assert np.array_equal(s[z, c], vol[:, :, src])
    back = inference.slices_to_volume(s)
    assert back.shape == vol.shape and np.array_equal(back, vol)


def test_volume_to_slices_wider_context():
    vol = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    s = inference.volume_to_slices(vol, 5)
    assert s.shape == (4, 5, 2, 3)
    assert np.array_equal(s[0, 0], vol[:, :, 0]) and np.array_equal(s[0, 4], vol[:, :, 2])
    assert np.array_equal(s[3, 4], vol[:, :, 3])
    assert np.array_equal(inference.slices_to_volume(s), vol)


def test_volume_to_slices_rejects_bad_input():
    with pytest.raises(ValueError):
        inference.volume_to_slices(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        inference.volume_to_slices(np.zeros((4, 4, 4)), context=2)


# ------------------------------------------------------------------ patches
@pytest.mark.parametrize("shape", [(20, 23, 17), (16, 16, 16), (33, 9, 40), (1, 5, 2)])
@pytest.mark.parametrize("patch,keep", [(32, 16), (16, 8), (8, 8)])
def test_patches_round_trip(shape, patch, keep):
    vol = np.random.default_rng(1).random(shape).astype(np.float32)
    patches = inference.volume_to_patches(vol, patch, keep)
    counts = [math.ceil(n / keep) for n in shape]
    assert patches.shape == (int(np.prod(counts)), 1, patch, patch, patch)
    back = inference.patches_to_volume(patches, shape, patch, keep)
    assert back.shape == shape and np.array_equal(back, vol)


def test_patch_centres_tile_the_volume():
    vol = np.random.default_rng(2).random((20, 23, 17)).astype(np.float32)
    patch, keep = 16, 8
    m = (patch - keep) // 2
    patches = inference.volume_to_patches(vol, patch, keep)
    corners, pads = inference.patch_grid(vol.shape, patch, keep)
    assert pads[0] == (m, m + 4) and pads[1] == (m, m + 1) and pads[2] == (m, m + 7)
    for n, (i, j, k) in enumerate(corners):
        centre = patches[n, 0, m : m + keep, m : m + keep, m : m + keep]
        ref = vol[i : i + keep, j : j + keep, k : k + keep]
        assert np.array_equal(centre[: ref.shape[0], : ref.shape[1], : ref.shape[2]], ref)


def test_patch_grid_rejects_bad_keep():
    with pytest.raises(ValueError):
        inference.patch_grid((8, 8, 8), 16, 7)
    with pytest.raises(ValueError):
        inference.patch_grid((8, 8, 8), 16, 32)


# ------------------------------------------------------------------ predict_volume
@pytest.mark.parametrize("kind", ["slices", "patches"])
def test_predict_identity_reproduces_input(kind):
    vol = blob_volume()
    out = inference.predict_volume(vol, Identity(), kind=kind, batch_size=3)
    assert out.shape == vol.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, vol, atol=1e-6, rtol=0)
    # brain touching the volume border (no zero margin): clipped bounding box
    full = np.random.default_rng(3).uniform(0.01, 1, (18, 21, 11)).astype(np.float32)
    out = inference.predict_volume(full, Identity(), kind=kind, patch=16, keep=8)
    np.testing.assert_allclose(out, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["slices", "patches"])
def test_predict_zero_input_gives_zeros_without_running(kind):
    gen = Constant(0.5)
    out = inference.predict_volume(np.zeros((12, 16, 8), np.float32), gen, kind=kind)
    assert out.shape == (12, 16, 8) and not out.any()
    assert gen.calls == 0


@pytest.mark.parametrize("kind", ["slices", "patches"])
@pytest.mark.parametrize("c,expected", [(0.3, 0.65), (-1.0, 0.0), (3.0, 1.0)])
def test_predict_constant_fills_bounding_box(kind, c, expected):
    lo, hi = (5, 6, 4), (17, 20, 13)
    vol = blob_volume(lo=lo, hi=hi)
    out = inference.predict_volume(vol, Constant(c), kind=kind)
    # bounding box of the nonzero voxels grown by 2 voxels; (tanh + 1) / 2, clamped to [0, 1]
    box = tuple(slice(a - 2, b + 2) for a, b in zip(lo, hi, strict=True))
    ref = np.zeros_like(vol)
    ref[box] = expected
    np.testing.assert_allclose(out, ref, atol=1e-7)


def test_predict_slices_pads_inplane_to_size_multiple():
    seen = []

    class Probe(Identity):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x

    vol = blob_volume()  # in-plane box 16 x 18 -> padded to 16 x 32 with multiple 16
    inference.predict_volume(vol, Probe(), kind="slices", size_multiple=16, batch_size=64)
    assert seen == [(20, 3, 16, 32)]  # every z (real context), one batch


def test_predict_batch_size_does_not_change_result():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
    vol = blob_volume()
    a = inference.predict_volume(vol, net, kind="slices", batch_size=1)
    b = inference.predict_volume(vol, net, kind="slices", batch_size=7)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert 0 <= a.min() and a.max() <= 1 and a.any()


def test_predict_unknown_kind():
    with pytest.raises(ValueError, match="voxels"):
        inference.predict_volume(blob_volume(), Identity(), kind="voxels")


# ------------------------------------------------------------------ smoothing
def test_gaussian_smooth_zero_fwhm_is_identity():
    vol = np.random.default_rng(0).random((4, 5, 6))
    assert inference.gaussian_smooth(vol, 0, (2, 2, 2)) is vol
    const = np.full((6, 6, 6), 3.0)
    np.testing.assert_allclose(inference.gaussian_smooth(const, 8.0, (2, 2, 2)), const)


@pytest.mark.parametrize("fwhm", [6.0, 8.0, 12.0])
@pytest.mark.parametrize("zooms", [(2.0, 2.0, 2.0), (1.5, 2.0, 3.0)])
def test_gaussian_smooth_delta_width(fwhm, zooms):
    n = 41
    delta = np.zeros((n, n, n))
    delta[20, 20, 20] = 1.0
    out = inference.gaussian_smooth(delta, fwhm, zooms)
    assert out.sum() == pytest.approx(1.0, rel=1e-6)
    sigma_mm = fwhm / 2.3548
    for axis, zoom in enumerate(zooms):
        other = tuple(a for a in range(3) if a != axis)
        profile = out.sum(other)
        x_mm = (np.arange(n) - 20) * zoom
        assert (profile * x_mm).sum() == pytest.approx(0.0, abs=1e-9)
        var = (profile * x_mm**2).sum() / profile.sum()
        assert var == pytest.approx(sigma_mm**2, rel=0.05)


# ------------------------------------------------------------------ weights
def tiny_generator(name="cyclegan-mse", seed=0, **overrides):
    torch.manual_seed(seed)
    config = model_config(name, **{"ngf": 4, "ndf": 4, **overrides})
    return build_model(name, config).generator, config


def save_tiny(path: Path, name="cyclegan-mse", seed=0, pet_scale=2.5, **overrides):
    gen, config = tiny_generator(name, seed, **overrides)
    card = {
        "model": name,
        "config": config,
        "input": {"voxel_size_mm": 2.0, "pet_scale": pet_scale},
        "training": {"data": "synthetic test data"},
    }
    return gen, weights.save_generator(gen, path, card)


def test_safetensors_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    gen, card = save_tiny(path)
    assert weights.card_path(path) == tmp_path / "m.json"
    assert card["format"] == weights.CARD_FORMAT and card["weights_file"] == "m.safetensors"
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["sha256"] == weights.sha256_file(path)
    assert card["n_parameters"] == count_parameters(gen)
    assert card["n_parameters"] == sum(t.numel() for t in gen.state_dict().values())
    assert {"torch", "monai", "safetensors", "numpy", "python", "petsynth"} <= set(
        card["versions"]
    )
    assert json.loads((tmp_path / "m.json").read_text()) == card
    assert path.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, JSON header

    loaded, card2 = weights.load_generator(path)
    assert card2 == card and not loaded.training
    ref, got = gen.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key, value in ref.items():
        assert torch.equal(value, got[key]), key
    x = torch.rand(1, 3, 16, 16)
    gen.eval()
    with torch.no_grad():
        assert torch.equal(gen(x), loaded(x))


def test_round_trip_3d_and_pix2pix(tmp_path):
    for name in ("cyclegan-3dpatch", "pix2pix"):
        path = tmp_path / f"{name}.safetensors"
        gen, _ = save_tiny(path, name)
        loaded, card = weights.load_generator(path)
        assert card["model"] == name
        assert type(loaded) is type(gen)
        for key, value in gen.state_dict().items():
            assert torch.equal(value, loaded.state_dict()[key])


def test_save_generator_refuses_pickle_suffix(tmp_path):
    gen, config = tiny_generator()
    with pytest.raises(ValueError, match="safetensors"):
        card = {"model": "cyclegan-mse", "config": config, "input": {}}
        weights.save_generator(gen, tmp_path / "m.pt", card)
    assert not list(tmp_path.iterdir())


def _refused(path: Path, match: str) -> PetSynthError:
    with pytest.raises(PetSynthError, match=match) as exc:
        weights.load_generator(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg
    assert exc.value.exit_code == 1
    return exc.value


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_refuses_pickled_checkpoints(tmp_path, suffix):
    gen, card = save_tiny(tmp_path / "m.safetensors")
    path = tmp_path / f"m{suffix}"
    torch.save(gen.state_dict(), path)
    err = _refused(path, "safetensors")
    assert str(path) in str(err)


def test_refuses_missing_files(tmp_path):
    path = tmp_path / "m.safetensors"
    _refused(path, "not found")
    save_tiny(path)
    (tmp_path / "m.json").unlink()
    _refused(path, "m.json is missing")


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[1, 2]", "not a PetSynth model card"),
        ('"card"', "not a PetSynth model card"),
    ],
)
def test_refuses_unreadable_card(tmp_path, text, match):
    path = tmp_path / "m.safetensors"
    save_tiny(path)
    (tmp_path / "m.json").write_bytes(text.encode("latin-1"))
    err = _refused(path, match)
    assert "m.json" in str(err)


@pytest.mark.parametrize(
    "edit,match",
    [
        ({"format": "other-card/1"}, "not a PetSynth model card"),
        ({"format": None}, "not a PetSynth model card"),
        ({"sha256": None}, "missing sha256"),
        ({"input": None}, "missing input"),
        ({"model": "stargan"}, "unknown model 'stargan'"),
    ],
)
def test_refuses_bad_card_content(tmp_path, edit, match):
    path = tmp_path / "m.safetensors"
    _, card = save_tiny(path)
    for key, value in edit.items():
        if value is None:
            card.pop(key)
        else:
            card[key] = value
    weights.card_path(path).write_text(json.dumps(card))
    _refused(path, match)


def test_refuses_sha256_mismatch(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tiny(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(data))
    _refused(path, "does not match the model card")


def _update_sha(path: Path) -> None:
    cpath = weights.card_path(path)
    card = json.loads(cpath.read_text())
    card["sha256"] = weights.sha256_file(path)
    cpath.write_text(json.dumps(card))


@pytest.mark.parametrize(
    "other", [{"n_blocks": 8}, {"ngf": 8}, {"name": "pix2pix"}], ids=["blocks", "ngf", "unet"]
)
def test_refuses_weights_of_another_architecture(tmp_path, other):
    path = tmp_path / "m.safetensors"
    save_tiny(path)
    other = dict(other)
    name = other.pop("name", "cyclegan-mse")
    gen, _ = tiny_generator(name, **other)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(path))
    _update_sha(path)  # right checksum, wrong tensors
    _refused(path, "do not fit the cyclegan-mse architecture")


@pytest.mark.parametrize(
    "payload",
    [b"garbage, not safetensors at all", b"ab", b"", "pickle"],
    ids=["text", "short", "empty", "pickle"],
)
def test_refuses_non_safetensors_payload(tmp_path, payload):
    path = tmp_path / "m.safetensors"
    gen, _ = save_tiny(path)
    if payload == "pickle":
        torch.save(gen.state_dict(), path)  # a pickled checkpoint renamed .safetensors
    else:
        path.write_bytes(payload)
    _update_sha(path)
    _refused(path, "cannot read safetensors weights")


def test_refuses_card_with_incomplete_config(tmp_path):
    path = tmp_path / "m.safetensors"
    _, card = save_tiny(path)
    card["config"] = {}
    weights.card_path(path).write_text(json.dumps(card))
    _refused(path, "config")


def test_refuses_card_with_non_string_model(tmp_path):
    path = tmp_path / "m.safetensors"
    _, card = save_tiny(path)
    card["model"] = ["cyclegan-mse"]
    weights.card_path(path).write_text(json.dumps(card))
    _refused(path, "model")


def test_saved_weights_bytes_are_reproducible(tmp_path):
    gen, config = tiny_generator(n_blocks=1)
    card = {"model": "cyclegan-mse", "config": config, "input": {}, "versions": {"x": "1"}}
    # 20 saves: an accidental pass of the random key order has probability 2**-19
    digests = {
        weights.save_generator(gen, tmp_path / f"m{i}.safetensors", card)["sha256"]
        for i in range(20)
    }
    assert len(digests) == 1


def test_default_weights_path_is_a_safetensors_file():
    path = weights.default_weights()
    assert path.name == weights.DEFAULT_WEIGHTS and path.suffix == ".safetensors"


# ------------------------------------------------------------------ synthesize_pet
def mni_like(shape=(32, 36, 28), zoom=2.0):
    """A [0, 1] 'brain' (ellipsoid with texture) on a RAS grid, and a smaller mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    rng = np.random.default_rng(0)
    t1 = np.clip(1.1 - r, 0, 1) * rng.uniform(0.5, 1.0, shape) * (r < 0.9)
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = [-(n - 1) * zoom / 2 for n in shape]
    mask = (r < 0.75).astype(np.uint8)
    return (
        nib.Nifti1Image(t1.astype(np.float32), affine),
        nib.Nifti1Image(mask, affine),
    )


def test_synthesize_pet_end_to_end(tmp_path):
    path = tmp_path / "tiny.safetensors"
    gen, _ = save_tiny(path, pet_scale=2.5)
    t1_img, mask_img = mni_like()
    out, meta = inference.synthesize_pet(t1_img, mask_img, path, fwhm_mm=4.0, batch_size=4)
    data = np.asanyarray(out.dataobj)
    mask = np.asanyarray(mask_img.dataobj) > 0
    assert data.shape == t1_img.shape and data.dtype == np.float32
    np.testing.assert_allclose(out.affine, t1_img.affine)
    assert not data[~mask].any()
    assert data.min() >= 0 and data.max() <= 2.5 + 1e-5
    assert (data[mask] > 0).mean() > 0.5
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert meta["Model"] == "cyclegan-mse"
    assert meta["ModelWeightsSha256"] == weights.sha256_file(path)
    assert meta["ModelWeights"] == "tiny.safetensors" and meta["ModelCard"] == "tiny.json"
    assert meta["ModelTrainingData"] == "synthetic test data"
    assert meta["SmoothingFWHM"] == 4.0 and meta["Units"] == "SUVR"
    assert meta["Device"] == "cpu"
    assert meta["InputRepresentation"] == "mni"
    assert meta["ModelPrior"] == inference.prior_summary(weights.read_card(path))


def test_prior_summary_says_what_the_generator_adds_to():
    from pet_synth_app.synthesis.weights import default_weights, read_card

    assert inference.prior_summary({"config": {}}).startswith("none")
    mean = inference.prior_summary({"config": {"prior_shape": [1, 8, 8]}})
    assert mean.startswith("the mean training PET;")
    card = read_card(default_weights())
    pv = card["config"]["pv_prior"]
    shipped = inference.prior_summary(card)
    assert (
        f"partial-volume forward model (WM/GM {pv['wm_ratio']:.2f}, "
        f"CSF/GM {pv['csf_ratio']:.2f}, gamma {pv['gamma']:.2f})"
    ) in shipped
    assert "(WM/GM 0.30, CSF/GM 0.30, gamma 1.60)" in shipped  # the shipped fit


def test_synthesize_pet_matches_manual_pipeline(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_tiny(path, pet_scale=2.5)
    t1_img, mask_img = mni_like()
    out, _ = inference.synthesize_pet(t1_img, mask_img, path, fwhm_mm=0)
    gen, _ = weights.load_generator(path)
    mask = np.asanyarray(mask_img.dataobj) > 0
    t1 = np.asanyarray(t1_img.dataobj) * mask
    ref = inference.predict_volume(t1, gen, kind="slices", size_multiple=4) * 2.5 * mask
    np.testing.assert_allclose(np.asanyarray(out.dataobj), ref, atol=1e-6)
    # another pet_scale scales the output linearly
    cpath = weights.card_path(path)
    card = json.loads(cpath.read_text())
    card["input"]["pet_scale"] = 1.25
    cpath.write_text(json.dumps(card))
    out2, _ = inference.synthesize_pet(t1_img, mask_img, path, fwhm_mm=0)
    np.testing.assert_allclose(np.asanyarray(out2.dataobj), ref / 2, atol=1e-6)


def test_synthesize_pet_clips_input_to_unit_range(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_tiny(path)
    t1_img, mask_img = mni_like()
    t1 = np.asanyarray(t1_img.dataobj).copy()
    wild = t1.copy()
    wild[t1 > 0.5] = 7.0  # above 1 -> 1
    wild[t1 == 0] = np.nan  # NaN outside the brain -> 0
    ref_t1 = np.where(t1 > 0.5, 1.0, t1).astype(np.float32)
    out_ref, _ = inference.synthesize_pet(
        nib.Nifti1Image(ref_t1, t1_img.affine), mask_img, path, fwhm_mm=2.0
    )
    out, _ = inference.synthesize_pet(
        nib.Nifti1Image(wild, t1_img.affine), mask_img, path, fwhm_mm=2.0
    )
    assert np.isfinite(np.asanyarray(out.dataobj)).all()
    np.testing.assert_allclose(np.asanyarray(out.dataobj), np.asanyarray(out_ref.dataobj))


def test_synthesize_pet_keeps_non_ras_input_grid(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_tiny(path)
    t1_img, mask_img = mni_like()
    ref, _ = inference.synthesize_pet(t1_img, mask_img, path, fwhm_mm=0)
    las = t1_img.affine.copy()
    las[0, 0], las[0, 3] = -las[0, 0], -las[0, 3]  # same voxel centres, x axis reversed
    flip = [
        nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1].copy(), las) for img in (t1_img, mask_img)
    ]
    assert nib.aff2axcodes(las) == ("L", "A", "S")
    out, _ = inference.synthesize_pet(flip[0], flip[1], path, fwhm_mm=0)
    np.testing.assert_allclose(out.affine, las)
    np.testing.assert_allclose(np.asanyarray(out.dataobj), np.asanyarray(ref.dataobj)[::-1])


def test_shipped_models_resolve_by_name_load_and_synthesize(tmp_path):
    """Each shipped model is found by its name (``--model-weights NAME``), passes the
    sha256 check of its card, and the syndiff one (a prior model) turns the template T1w
    into a PET-like image in the brain: GM brighter than WM, as FDG."""
    from pet_synth_app.config import SHIPPED_MODELS, Settings, shipped_model
    from pet_synth_app.preproc.templates import get_template

    for name in SHIPPED_MODELS:
        path = shipped_model(name)
        assert path is not None and path.is_file() and path.stat().st_size < 30e6, name
        _, card = weights.load_generator(path)
        assert card["weights_file"] == path.name
    assert shipped_model("no-such-model") is None
    opts = {"bids_dir": tmp_path / "b", "output_dir": tmp_path / "o"}
    settings = Settings.from_options({**opts, "model_weights": "syndiff-prior_phantom"})
    assert settings.model_weights == shipped_model("syndiff-prior_phantom")
    t1, mask = get_template("T1w", 2), get_template("mask", 2)
    out, meta = inference.synthesize_pet(t1, mask, shipped_model("syndiff-prior_phantom"))
    pet = np.asanyarray(out.dataobj)
    gm, wm = (get_template(k, 2).get_fdata() > 0.6 for k in ("GM", "WM"))
    assert np.isfinite(pet).all() and pet[gm].mean() > 1.15 * pet[wm].mean()
