"""The residual-to-prior option (``petsynth-train --prior``) of the diffusion models
``ddpm3d`` and ``syndiff`` (issue 15): 3D patches of the mean training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_synthesis_training import SHAPE, make_volumes, tiny_config

from pet_synth_app.synthesis import training
from pet_synth_app.synthesis.inference import (
    generator_input_prior,
    generator_prior,
    predict_with_config,
)
from pet_synth_app.synthesis.registry import build_model, model_config, supports_prior
from pet_synth_app.synthesis.weights import load_generator, save_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {
    "ddpm3d": {"unet_channels": [4, 8], "sample_steps": 3, "prediction_type": "sample"},
    "syndiff": {"unet_channels": [4, 8], "ngf": 4, "ndf": 4, "n_blocks": 1},
}


def prior_model(name: str, shape=SHAPE, seed: int = 0, **overrides):
    """A tiny untrained residual model whose priors are random volumes in [-1, 1]."""
    torch.manual_seed(seed)
    config = model_config(
        name, **SMALL[name], prior_shape=list(shape), prior_input=True, **overrides
    )
    model = build_model(name, config)
    g = torch.Generator().manual_seed(seed + 1)
    model.set_priors(
        torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 2 - 1
    )
    return model


def rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_untrained_prior_sample_is_the_prior_exactly(name):
    """Zero last layer: the predicted clean residual is 0 and the last reverse step returns
    it unchanged (DDIM with alpha_bar_prev = 1, SynDiff's posterior at abar_0 = 1), so the
    sample is the prior patch bit for bit, whatever the noise and the seed."""
    model = prior_model(name)
    assert model.uses_prior and supports_prior(name)
    gen = model.generator.eval()
    x, mean_t1 = rand((2, 1, 16, 16, 16), 1), rand((2, 1, 16, 16, 16), 2)
    prior = rand((2, 1, 16, 16, 16), 3) * 0.9
    with torch.inference_mode():
        out = gen(torch.cat([x, mean_t1, prior], 1))
        gen.reset_rng(7)
        again = gen(torch.cat([x, mean_t1, prior], 1))
    assert torch.equal(out, prior) and torch.equal(again, prior)


def test_prior_output_is_clamped():
    gen = prior_model("syndiff").generator.eval()
    with torch.no_grad():
        gen.unet.out[-1].bias.fill_(5.0)  # tanh(5) ~ 1: x0 = prior + ~1 > 1 where prior > 0
        cond = torch.cat([torch.zeros(1, 2, 8, 8, 8), torch.full((1, 1, 8, 8, 8), 0.5)], 1)
        out = gen(cond)
    assert float(out.max()) == 1.0 and float(out.min()) == 1.0


@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_untrained_prior_model_predicts_the_prior_volume(name):
    """Whole-volume inference cuts the prior into the same patches as the input: an
    untrained model returns the [0, 1] prior wherever a patch ran."""
    model = prior_model(name)
    vol = np.zeros(SHAPE, np.float32)
    vol[5:35, 6:38, 4:30] = np.random.default_rng(0).random((30, 32, 26))
    out = predict_with_config(vol, model.generator.eval(), model.config)
    prior01 = generator_prior(model.generator, SHAPE)
    ran = out > 0
    assert ran[5:35, 6:38, 4:30].all()
    np.testing.assert_array_equal(out[ran], np.clip(prior01, 0, 1)[ran])


def test_prior_patches_share_the_image_patch_positions():
    vols = [make_volumes("a", 0), make_volumes("b", 1)]
    samples = training.patch_samples(vols, 32, 8, 3, seed=0)
    assert len(samples.corners) == len(samples.t1w) == 6
    for v, rows in ((vols[0], slice(0, 3)), (vols[1], slice(3, 6))):
        at = samples.corners[rows]
        np.testing.assert_array_equal(training.patches_at(v.t1w, at, 32), samples.t1w[rows])
        np.testing.assert_array_equal(training.patches_at(v.pet, at, 32), samples.pet[rows])


def _fit(model, t1, pet, priors, steps, paired=True):
    opts = model.make_optimizers()
    for g in opts.values():
        for group in g.param_groups:
            group["lr"] = 2e-3
    return [model.train_step(t1, pet, opts, paired=paired, priors=priors) for _ in range(steps)]


@pytest.mark.parametrize(
    "name, key, paired",
    [
        ("ddpm3d", "x0_mse", True),
        ("syndiff", "G_B_l1", True),
        pytest.param("syndiff", "cycle_B", False, marks=pytest.mark.slow),
    ],
)
def test_tiny_prior_model_trains_and_loss_falls(name, key, paired):
    side = 32 if name == "syndiff" else 16  # SynDiff's PatchGANs need 32^3
    shape = (2, 1, side, side, side)
    torch.manual_seed(0)
    model = prior_model(name, shape=(side,) * 3)
    t1, pet_prior = rand(shape, 1), rand(shape, 2) * 0.5
    pet = pet_prior + 0.3 + 0.1 * t1  # a residual (mostly an offset) from the T1w
    priors = ((rand(shape, 3), pet_prior),) * 2
    rows = _fit(model, t1, pet, priors, 30, paired)
    assert all(np.isfinite(v) for r in rows for v in r.values())
    # the zero-initialised residual starts at 0, off by ~0.3
    assert np.mean([r[key] for r in rows[-5:]]) < 0.8 * np.mean([r[key] for r in rows[:5]])


@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_train_with_prior_stores_the_means_and_they_round_trip(tmp_path, name):
    vols = [make_volumes("a", 0), make_volumes("b", 1)]
    overrides = {"prediction_type": "sample"} if name == "ddpm3d" else {}
    res = training.train(
        name,
        tiny_config(name, n_epochs=1, **overrides),
        vols,
        [make_volumes("v", 2)],
        tmp_path,
        epochs=1,
        seed=0,
        resume=False,
        prior=True,
        tune_fwhm=False,
        max_patches=2,
    )
    gen, card = load_generator(res.weights)
    assert card["config"]["prior_shape"] == list(SHAPE) and card["config"]["prior_input"]
    mean_t1, mean_pet = training.mean_images(vols)
    assert gen.prior.dtype == torch.float32  # stored as float16, loaded as float32
    np.testing.assert_allclose(generator_prior(gen, SHAPE), mean_pet, atol=3e-4)
    np.testing.assert_allclose(generator_input_prior(gen, SHAPE), mean_t1, atol=3e-4)
    with safe_open(res.weights, "pt") as f:
        assert f.get_tensor("prior").dtype == torch.float16
        assert f.get_tensor("input_prior").dtype == torch.float16
    assert card["n_parameters"] == sum(p.numel() for p in gen.parameters())
    assert np.isfinite(res.history[0]["val_ssim"])


def test_untrained_prior_weights_synthesize_the_prior_on_a_phantom(tmp_path):
    """Inference from a participant's files (``synthesize_from_sources``) with saved
    untrained prior weights: the pseudo-PET is the stored prior (float16) x pet_scale in
    the brain, 0 outside."""
    from test_synthesis_inputs import toy_participant

    from pet_synth_app.synthesis.inference import synthesize_from_sources
    from pet_synth_app.synthesis.inputs import build_model_input

    toy = toy_participant(tmp_path / "toy", "toy", 1.5, 1.0)
    mi = build_model_input("mni", toy)
    grid = mi.channels[0].shape
    model = prior_model("syndiff", shape=grid)
    with torch.no_grad():  # a PET-like prior: positive in the brain
        model.G_B.prior.copy_(torch.from_numpy(mi.mask * 1.2 - 1.0) * 0.5 + 0.1)
    weights = tmp_path / "m" / "syndiff.safetensors"
    weights.parent.mkdir()
    card = {
        "model": "syndiff",
        "config": model.config,
        "input": {
            "space": "MNI152NLin2009aSym",
            "voxel_size_mm": float(np.sqrt((mi.affine[:3, :3] ** 2).sum(0))[0]),
            "pet_scale": 2.5,
            "pet_units": "SUVR",
        },
        "training": {"data": "random initialisation (tests)", "participants": []},
    }
    save_generator(model.generator, weights, card)
    img, meta = synthesize_from_sources(toy, weights, fwhm_mm=0)
    pet = np.asanyarray(img.dataobj)
    gen, _ = load_generator(weights)
    expected = generator_prior(gen, grid) * 2.5
    assert pet.shape == grid
    np.testing.assert_allclose(pet[mi.mask], expected[mi.mask], atol=1e-5)
    assert (pet[~mi.mask] == 0).all() and pet[mi.mask].min() > 0
    assert meta["InputRepresentation"] == "mni"
