"""The residual-to-prior option of the semi-3D CycleGANs (``petsynth-train --prior``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy import ndimage
from test_synthesis_training import SHAPE, make_volumes, slab, tiny_config

from pet_synth_app.errors import PetSynthError
from pet_synth_app.synthesis import pvmodel, training
from pet_synth_app.synthesis.inference import (
    generator_input_prior,
    generator_prior,
    predict_volume,
    predict_with_config,
    prior_slices,
    volume_to_slices,
)
from pet_synth_app.synthesis.networks import ResnetGenerator
from pet_synth_app.synthesis.registry import build_model, model_config
from pet_synth_app.synthesis.weights import load_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_one_epoch_with_prior(train, val, out, name="cyclegan-mse") -> training.TrainResult:
    """One epoch of a tiny ``name`` with ``--prior`` (no smoothing tuning)."""
    return training.train(
        name,
        tiny_config(name, n_epochs=1),
        train,
        val,
        out,
        epochs=1,
        seed=0,
        resume=False,
        prior=True,
        tune_fwhm=False,
    )


def residual_generator(shape=(12, 16, 10), seed=0) -> ResnetGenerator:
    torch.manual_seed(seed)
    gen = ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1, prior_shape=shape)
    with torch.no_grad():
        gen.prior.copy_(torch.rand(shape) * 2 - 1)
    return gen.eval()


def test_untrained_residual_generator_returns_the_prior_channels():
    gen = residual_generator()
    x, prior = torch.rand(2, 3, 12, 16) * 2 - 1, torch.rand(2, 3, 12, 16) * 1.6 - 0.8
    with torch.no_grad():
        out = gen(torch.cat([x, prior], 1))
    assert out.shape == (2, 3, 12, 16)
    assert torch.equal(out, prior)  # zero-initialised last convolution: residual 0


def test_residual_output_is_clamped_to_tanh_range():
    gen = residual_generator()
    with torch.no_grad():
        gen.model[-2].bias.fill_(5.0)  # tanh(5) ~ 1: prior + 1 > 1 where the prior > 0
        out = gen(torch.cat([torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)], 1))
    assert float(out.max()) == 1.0 and float(out.min()) == 1.0


def test_input_prior_generator_sees_image_input_mean_and_prior_and_returns_the_prior():
    gen = ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1, prior_shape=(8, 8, 4), input_prior=True)
    assert gen.input_prior_channels and gen.model[1].in_channels == 9
    x, mean_in, prior = (torch.rand(2, 3, 8, 8) * 2 - 1 for _ in range(3))
    with torch.no_grad():
        out = gen(torch.cat([x, mean_in, prior], 1))
    assert torch.equal(out, prior)
    assert not ResnetGenerator(
        2, 3, 3, ngf=4, n_blocks=1, prior_shape=(8, 8, 4)
    ).input_prior_channels
    with pytest.raises(ValueError, match="prior_shape"):
        ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1, input_prior=True)


def test_predict_volume_feeds_image_then_input_mean_then_prior():
    shape = (12, 16, 10)
    gen = ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1, prior_shape=shape, input_prior=True)
    with torch.no_grad():
        gen.input_prior.fill_(-0.4)  # 0.3 in [0, 1]
        gen.prior.fill_(0.6)  # 0.8 in [0, 1]
    seen = []
    gen.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    t1w = np.zeros(shape, np.float32)
    t1w[2:10, 3:13, 2:8] = 0.5
    out = predict_volume(t1w, gen.eval(), size_multiple=4)
    np.testing.assert_allclose(generator_input_prior(gen, shape), 0.3, atol=1e-6)
    x = torch.cat(seen)
    assert x.shape[1] == 9
    centre = x[:, :, 5, 7]  # inside the T1w box in-plane (crop starts at x 0, y 1)
    assert torch.all((centre[:, 0:3] == 0.0) | (centre[:, 0:3] == -1.0))  # T1w 0.5 or 0
    torch.testing.assert_close(centre[:, 3:6], torch.full_like(centre[:, 3:6], -0.4))
    torch.testing.assert_close(centre[:, 6:9], torch.full_like(centre[:, 6:9], 0.6))
    np.testing.assert_allclose(out[2:10, 3:13, 2:8], 0.8, atol=1e-6)


def test_cyclegan_chains_give_each_generator_its_input_mean_and_prior():
    """G_B (T1w -> PET) sees [image, mean T1w, mean PET]; G_A [image, mean PET, mean T1w],
    in the forward and the cycle passes."""
    config = model_config("cyclegan-mse", ngf=4, ndf=4, n_blocks=1)
    config.update(prior_shape=[32, 32, 4], prior_input=True)
    model = build_model("cyclegan-mse", config)
    seen = {"G_A": [], "G_B": []}
    for name in seen:
        getattr(model, name).register_forward_pre_hook(
            lambda _m, args, name=name: seen[name].append(args[0].detach())
        )

    def const(v):
        return torch.full((2, 3, 32, 32), v)

    a, b, pa, pb = const(0.1), const(0.2), const(0.3), const(0.4)
    model.generator_losses(a, b, True, priors=((pa, pb), (pa, pb)))
    means = {
        name: [tuple(round(float(x[:, i].mean()), 4) for i in (0, 3, 6)) for x in xs]
        for name, xs in seen.items()
    }
    # untrained residual generators return their prior: fake_b = pb, fake_a = pa
    assert means["G_B"] == [(0.1, 0.3, 0.4), (0.3, 0.3, 0.4)]  # G_B(a), cycle G_B(fake_a)
    assert means["G_A"] == [(0.2, 0.4, 0.3), (0.4, 0.4, 0.3)]  # G_A(b), cycle G_A(fake_b)


def test_prior_needs_a_3d_grid_shape():
    with pytest.raises(ValueError, match="grid shape"):
        ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1, prior_shape=(8, 8))


def test_3d_patch_model_refuses_a_prior():
    config = model_config("cyclegan-3dpatch", ngf=4, ndf=4)
    config["prior_shape"] = [8, 8, 8]
    with pytest.raises(ValueError, match="semi-3D"):
        build_model("cyclegan-3dpatch", config)


def test_predict_volume_with_untrained_residual_generator_gives_the_prior():
    shape = (12, 16, 10)
    gen = residual_generator(shape)
    t1w = np.zeros(shape, np.float32)
    t1w[2:10, 3:13, 2:8] = np.random.default_rng(0).random((8, 10, 6))
    out = predict_volume(t1w, gen, size_multiple=4)
    prior01 = generator_prior(gen, shape)
    assert prior01.min() >= 0 and prior01.max() <= 1
    # the nonzero box grown by 2 voxels below and 2 above (z: the full range here)
    box = (slice(0, 12), slice(1, 15), slice(0, 10))
    np.testing.assert_allclose(out[box], prior01[box], atol=1e-6)
    assert not out[:, 0].any() and not out[:, 15].any()  # nothing predicted outside


def test_predict_volume_refuses_a_grid_other_than_the_prior():
    gen = residual_generator((12, 16, 10))
    with pytest.raises(PetSynthError, match="grid"):
        predict_volume(np.ones((12, 16, 11), np.float32), gen)


def test_mean_images_average_over_the_masks_that_contain_each_voxel():
    a, b = make_volumes("a", 0), make_volumes("b", 1)
    c = make_volumes("c", 2, with_pet=False)
    a.mask[:, :, 6:9] = False  # a's brain stops earlier: its zeros must not dilute b's
    t1, pet = training.mean_images([a, b, c])
    n = a.mask.astype(int) + b.mask + c.mask
    expect_t1 = np.where(
        n > 0, (a.t1w * a.mask + b.t1w * b.mask + c.t1w * c.mask) / np.maximum(n, 1), 0
    )
    np.testing.assert_allclose(t1, expect_t1, atol=1e-6)
    only_b = ~a.mask & b.mask
    assert only_b.any()
    np.testing.assert_allclose(pet[only_b], (b.pet * b.mask)[only_b], atol=1e-6)
    both = a.mask & b.mask
    np.testing.assert_allclose(pet[both], ((a.pet + b.pet) / 2)[both], atol=1e-6)
    assert not pet[~(a.mask | b.mask)].any()
    with pytest.raises(PetSynthError, match="PET"):
        training.mean_images([c])


def test_slice_samples_record_axial_positions():
    v = slab()
    box = training.inplane_box([v], 4)
    samples = training.slice_samples([v], box)
    assert list(samples.z_t1w) == list(range(14, 20)) == list(samples.z_pet)
    prior = volume_to_slices(v.t1w[box])
    np.testing.assert_array_equal(prior[samples.z_t1w], samples.t1w)


def test_train_with_prior_stores_mean_pet_and_starts_from_it(tmp_path):
    vols = [slab("a", 0), slab("b", 1)]
    res = train_one_epoch_with_prior(vols, [slab("v", 2)], tmp_path)
    gen, card = load_generator(res.weights)
    assert card["config"]["prior_shape"] == list(SHAPE)
    assert "mean" in card["input"]["prior"]
    mean_t1, mean_pet = training.mean_images(vols)
    assert gen.prior.dtype == torch.float32  # stored as float16, loaded as float32
    np.testing.assert_allclose(generator_prior(gen, SHAPE), mean_pet, atol=3e-4)
    assert card["config"]["prior_input"] is True and "mean [0, 1] T1w" in card["input"]["prior"]
    np.testing.assert_allclose(generator_input_prior(gen, SHAPE), mean_t1, atol=3e-4)
    with safe_open(res.weights, "pt") as f:
        assert f.get_tensor("prior").dtype == torch.float16
        assert f.get_tensor("model.1.weight").dtype == torch.float32
    # the card's parameter count excludes the prior buffer
    assert card["n_parameters"] == sum(p.numel() for p in gen.parameters())
    assert np.isfinite(res.history[0]["loss_mse_B"])


def test_residual_generator_learns_what_the_prior_cannot_follow():
    """Target = prior - 0.4 x (T1w - 0.5): the MSE gradient reaches the zero-initialised
    head and 60 Adam steps cut the error of the prior by more than half."""
    torch.manual_seed(0)
    gen = ResnetGenerator(2, 3, 3, ngf=8, n_blocks=1, prior_shape=(16, 16, 4))
    t1 = torch.rand(4, 3, 16, 16) * 2 - 1
    prior = torch.full((4, 3, 16, 16), 0.2)
    target = prior - 0.4 * t1
    x = torch.cat([t1, prior], 1)
    opt = torch.optim.Adam(gen.parameters(), lr=2e-3)
    with torch.no_grad():
        start = float(((gen(x) - target) ** 2).mean())
    assert start == pytest.approx(float(((prior - target) ** 2).mean()))
    for _ in range(60):
        opt.zero_grad()
        loss = ((gen(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * start, (float(loss.detach()), start)


def test_pix2pix_refuses_a_prior(tmp_path):
    with pytest.raises(PetSynthError, match="prior"):
        training.train(
            "pix2pix",
            tiny_config("pix2pix"),
            [slab()],
            [],
            tmp_path,
            epochs=1,
            resume=False,
            prior=True,
        )


def z_coded(name: str, with_pet: bool = True) -> training.Volumes:
    """T1w = z / 50 and PET = 1 - z / 50 in a box mask: every slice tells its z."""
    mask = np.zeros(SHAPE, bool)
    mask[6:34, 6:38, 10:22] = True
    z = np.arange(SHAPE[2], dtype=np.float32)[None, None, :] / 50.0
    t1 = (np.broadcast_to(z, SHAPE) * mask).astype(np.float32)
    pet = ((1.0 - np.broadcast_to(z, SHAPE)) * mask).astype(np.float32) if with_pet else None
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    return training.Volumes(name, t1, pet, mask, affine, None if pet is None else pet * 2.5)


@pytest.mark.parametrize("paired", [True, False])
def test_train_feeds_prior_slices_of_each_samples_own_position(tmp_path, monkeypatch, paired):
    """The T1w batch and the PET batch (other slices when unpaired) each get the priors
    of their own axial positions."""
    from pet_synth_app.synthesis.cyclegan import CycleGAN

    seen = []

    def record(self, t1, pet, optimizers, paired=True, priors=None):
        seen.append((t1.clone(), pet.clone(), priors))
        return {"G": 0.0}

    monkeypatch.setattr(CycleGAN, "train_step", record)
    vols = [z_coded("a"), z_coded("b"), z_coded("c", with_pet=paired)]
    name = "cyclegan-mse" if paired else "cyclegan"
    training.train(
        name,
        tiny_config(name),
        vols,
        [],
        tmp_path,
        epochs=1,
        paired=paired,
        resume=False,
        prior=True,
        tune_fwhm=False,
    )
    assert seen
    inside = (slice(None), 1, slice(8, 12), slice(8, 12))  # centre channel, in the box
    for t1, pet, ((pa_a, pb_a), (pa_b, pb_b)) in seen:
        z_a = torch.round((t1[inside].mean((1, 2)) + 1) / 2 * 50)
        z_b = torch.round((1 - (pet[inside].mean((1, 2)) + 1) / 2) * 50)
        if paired:
            assert torch.equal(z_a, z_b)
        # T1w prior = mean T1w = z/50; PET prior = mean PET = 1 - z/50 (in [-1, 1])
        for prior_t1, prior_pet, zs in ((pa_a, pb_a, z_a), (pa_b, pb_b, z_b)):
            expect_t1 = (2 * zs / 50 - 1)[:, None, None]
            expect_pet = (2 * (1 - zs / 50) - 1)[:, None, None]
            torch.testing.assert_close(prior_t1[inside], expect_t1.expand(-1, 4, 4))
            torch.testing.assert_close(prior_pet[inside], expect_pet.expand(-1, 4, 4))
    if not paired:  # the PET batch came from other slices than the T1w batch somewhere
        assert any(not torch.equal(pa_a, pa_b) for _, _, ((pa_a, _), (pa_b, _)) in seen)


def test_prior_model_forward_needs_the_prior():
    config = model_config("cyclegan-mse", ngf=4, ndf=4)
    config["prior_shape"] = [8, 8, 8]
    with pytest.raises(ValueError, match="prior"):
        build_model("cyclegan-mse", config)(torch.zeros(1, 3, 8, 8))


def test_fingerprint_leaves_out_unset_options():
    config = model_config("cyclegan-mse")
    assert config["prior_shape"] is None
    fp = training.run_fingerprint("cyclegan-mse", config, [], [], True, 2.5)
    assert "prior_shape" not in fp["config"] and "ngf" in fp["config"]


# ------------------------------------------------------------------ multi-channel input
def pv_slab(name: str, seed: int) -> training.Volumes:
    """A 3-channel input (as ``mni-pv``): the T1w and two extra channels; the PET also
    depends on the second channel, which the T1w does not show."""
    v = slab(name, seed)
    rng = np.random.default_rng(100 + seed)
    extra = (rng.random((2, *SHAPE)) * v.mask).astype(np.float32)
    pet = (np.clip(v.pet - 0.3 * (extra[0] - 0.5), 0, 1) * v.mask).astype(np.float32)
    return training.Volumes(
        name, v.t1w, pet, v.mask, v.affine, pet * 2.5, extra, representation="mni-pv"
    )


def test_multichannel_prior_has_one_mean_per_input_channel(tmp_path):
    """``--prior`` with a 3-channel input: the T1w-domain priors are (3, x, y, z) means of
    each channel, the generator is fed image, input means and PET prior slices
    channel-major, an untrained model predicts the mean PET, and the weights round-trip."""
    vols = [pv_slab("a", 0), pv_slab("b", 1)]
    mean_in, mean_pet = training.mean_images(vols)
    assert mean_in.shape == (3, *SHAPE)
    both = vols[0].mask & vols[1].mask
    np.testing.assert_allclose(
        mean_in[2][both], ((vols[0].extra[1] + vols[1].extra[1]) / 2)[both], atol=1e-6
    )
    res = train_one_epoch_with_prior(vols, [pv_slab("v", 2)], tmp_path)
    gen, card = load_generator(res.weights)
    assert card["config"]["input_channels"] == 3
    assert tuple(gen.input_prior.shape) == (3, *SHAPE) and tuple(gen.prior.shape) == SHAPE
    assert gen.model[1].in_channels == 3 * 3 * 2 + 3  # image, input means, PET prior
    np.testing.assert_allclose(generator_input_prior(gen, SHAPE), mean_in, atol=3e-4)
    np.testing.assert_allclose(generator_prior(gen, SHAPE), mean_pet, atol=3e-4)
    assert np.isfinite(res.history[0]["loss_mse_B"])

    model = build_model("cyclegan-mse", dict(card["config"]))  # untrained: returns the prior
    model.set_priors(torch.from_numpy(mean_in * 2 - 1), torch.from_numpy(mean_pet * 2 - 1))
    assert tuple(model.G_A.prior.shape) == (3, *SHAPE)
    out = predict_volume(vols[0].masked_channels, model.generator.eval(), size_multiple=4)
    z = slice(14, 20)
    np.testing.assert_allclose(out[:, :, z], mean_pet[:, :, z], atol=1e-5)


def test_prior_slices_are_channel_major_like_the_images():
    rng = np.random.default_rng(0)
    prior = rng.random((2, 8, 8, 5)).astype(np.float32)
    box = (slice(1, 7), slice(0, 8))
    got = prior_slices(prior, box)
    assert got.shape == (5, 6, 6, 8)
    np.testing.assert_array_equal(got[:, :3], volume_to_slices(prior[0][box]))
    np.testing.assert_array_equal(got[:, 3:], volume_to_slices(prior[1][box]))
    np.testing.assert_array_equal(prior_slices(prior[0], box), got[:, :3])


@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_diffusion_models_refuse_a_multichannel_prior(tmp_path, name):
    with pytest.raises(PetSynthError, match="single-channel"):
        train_one_epoch_with_prior(
            [pv_slab("a", 0), pv_slab("b", 1)], [pv_slab("v", 2)], tmp_path, name
        )


# ------------------------------------------------------------------ anatomy-adjusted prior
def physics_slab(name: str, seed: int) -> training.Volumes:
    """``mni-pv``-like volumes whose PET is the partial-volume forward model's physics:
    uptake pattern x (GM + 0.4 WM + 0.1 CSF) of each participant's own smooth fractions."""
    v = slab(name, seed)
    rng = np.random.default_rng(200 + seed)
    smooth = [ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 2) for _ in range(2)]
    gm = np.clip(0.45 + 2.0 * smooth[0], 0.05, 0.9)
    csf = np.minimum(np.clip(0.15 + smooth[1], 0.0, 0.3), 1 - gm)
    x = np.linspace(0.8, 1.2, SHAPE[0])[:, None, None]
    signal = pvmodel.tissue_signal(gm, csf, pvmodel.PVParams(0.4, 0.1, 1.0))
    pet = (np.clip(0.6 * x * signal, 0, 1) * v.mask).astype(np.float32)
    extra = (np.stack([gm, csf]) * v.mask).astype(np.float32)
    return training.Volumes(
        name, v.t1w, pet, v.mask, v.affine, pet * 2.5, extra, representation="mni-pv"
    )


def test_anatomy_adjusted_prior_is_fitted_validated_as_epoch_0_and_used(tmp_path):
    """``prior_anatomy``: the config carries the fitted partial-volume model, epoch 0 (the
    prior alone) is validated and saved first, and a model whose residual is 0 predicts
    each participant's own anatomy-adjusted prior, which follows the PET where the mean
    cannot."""
    train = [physics_slab(n, i) for i, n in enumerate("abcd")]
    val = [physics_slab("v", 9)]
    res = training.train(
        "cyclegan-mse",
        tiny_config("cyclegan-mse", n_epochs=1),
        train,
        val,
        tmp_path,
        epochs=1,
        seed=0,
        resume=False,
        prior=True,
        prior_anatomy=True,
        tune_fwhm=False,
    )
    spec = res.card["config"]["pv_prior"]
    assert (spec["wm_ratio"], spec["csf_ratio"]) == (0.4, 0.1)
    assert (spec["gm_channel"], spec["csf_channel"]) == (1, 2) and spec["level"] > 0
    assert [row["epoch"] for row in res.history] == [0, 1]
    assert res.best_epoch in (0, 1)

    gen, card = load_generator(res.weights)
    model = build_model("cyclegan-mse", dict(card["config"]))  # residual 0: the prior
    mean_in, mean_pet = training.mean_images(train)
    model.set_priors(torch.from_numpy(mean_in * 2 - 1), torch.from_numpy(mean_pet * 2 - 1))
    test = physics_slab("t", 7)
    out = predict_with_config(test.masked_channels, model.generator.eval(), card["config"])
    own = pvmodel.participant_prior(test.masked_channels, mean_pet, mean_in, spec)
    z = slice(14, 20)
    np.testing.assert_allclose(out[:, :, z], own[:, :, z], atol=1e-5)
    m = test.mask[:, :, z]
    err_own = np.abs(own[:, :, z] - test.pet[:, :, z])[m].mean()
    err_mean = np.abs(mean_pet[:, :, z] - test.pet[:, :, z])[m].mean()
    assert err_own < 0.5 * err_mean
    # the trained generator goes through the same prior
    trained = predict_with_config(test.masked_channels, gen, card["config"])
    assert np.isfinite(trained).all() and trained[:, :, z][m].mean() > 0


def test_anatomy_adjusted_prior_needs_the_prior_and_the_fractions(tmp_path):
    vols = [physics_slab(n, i) for i, n in enumerate("abc")]
    kw = dict(epochs=1, seed=0, resume=False, tune_fwhm=False, prior_anatomy=True)
    cfg = tiny_config("cyclegan-mse", n_epochs=1)
    with pytest.raises(PetSynthError, match="needs --prior"):
        training.train("cyclegan-mse", cfg, vols, [], tmp_path / "a", **kw)
    single = [slab(n, i) for i, n in enumerate("abc")]
    with pytest.raises(PetSynthError, match="fractions of the mni-pv"):
        training.train("cyclegan-mse", cfg, single, [], tmp_path / "b", prior=True, **kw)
