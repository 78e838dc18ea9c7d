"""The diffusion synthesis models (issue 15): MRI2PET's ddpm3d and SynDiff."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pet_synth_app.synthesis.ddpm3d import DDPM3D, pet_like_t1w, set_sample_steps
from pet_synth_app.synthesis.diffusion import (
    laplacian_loss,
    laplacian_pyramid,
    make_ddim_scheduler,
    make_ddpm_scheduler,
    predicted_x0,
)
from pet_synth_app.synthesis.inference import patch_keep, predict_with_config
from pet_synth_app.synthesis.registry import build_model, get_spec, model_config
from pet_synth_app.synthesis.syndiff import SynDiff, VPSchedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"unet_channels": [4, 8]}


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    small = {**TINY, **({"ngf": 4, "ndf": 4, "n_blocks": 1} if name == "syndiff" else {})}
    return build_model(name, model_config(name, **small, **overrides))


def rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------ Laplacian pyramid
def test_laplacian_pyramid_hand_computation():
    """On a 2x2x2 cube one level exists: x - mean(x) (average-pool to 1 voxel, then
    trilinear upsampling of one voxel is that voxel everywhere)."""
    x = torch.arange(8, dtype=torch.float32).view(1, 1, 2, 2, 2)  # mean 3.5
    (level,) = laplacian_pyramid(x, levels=5)
    np.testing.assert_allclose(level.flatten().numpy(), np.arange(8) - 3.5)
    y = torch.zeros_like(x)
    y[0, 0, 0, 0, 0] = 8.0  # mean 1: its level is (7, -1, -1, ...)
    expected = np.mean((np.arange(8) - 3.5 - np.array([7.0] + [-1.0] * 7)) ** 2)
    assert float(laplacian_loss(x, y)) == pytest.approx(expected)
    # a constant offset has no detail at any level
    z = torch.rand(1, 1, 32, 32, 32)
    assert len(laplacian_pyramid(z)) == 5
    assert float(laplacian_loss(z, z + 0.3)) == pytest.approx(0.0, abs=1e-10)


def test_laplacian_pyramid_two_levels_by_hand():
    """4x4 image (2D): level 1 = x - up(avgpool(x)), level 2 = the 2x2 pool minus its mean."""
    x = torch.tensor([[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 4.0]] + [[0.0] * 4] * 2)
    x = x.view(1, 1, 4, 4)
    levels = laplacian_pyramid(x, levels=2)
    pooled = np.array([[4.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(levels[1].view(2, 2).numpy(), pooled - pooled.mean())
    # bilinear (align_corners=False) upsampling of the 2x2 pool, by hand at the corner
    # pixel (0, 0): it lies on the first pooled pixel exactly (clamped), so 4
    assert float(levels[0][0, 0, 0, 0]) == pytest.approx(1.0 - 4.0)


# ------------------------------------------------------------------ schedulers
def test_scheduler_round_trip_recovers_the_input():
    """Noise x0 to step t, then one DDIM step with the true noise as the network output:
    the predicted clean image is x0 and the previous sample is x0 noised to t_prev."""
    x0 = rand((2, 1, 8, 8, 8), 0) * 0.9
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    train = make_ddpm_scheduler()
    ddim = make_ddim_scheduler()
    ddim.set_timesteps(2)  # timesteps 999?, ...: the step size is 500
    t = 700
    x_t = train.add_noise(x0, noise, torch.tensor([t, t]))
    prev, pred_x0 = ddim.step(noise, t, x_t)
    torch.testing.assert_close(pred_x0, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        prev, train.add_noise(x0, noise, torch.tensor([200, 200])), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        predicted_x0(x_t, noise, torch.tensor([t, t]), train.alphas_cumprod), x0, atol=1e-4, rtol=0
    )
    # the last step (to t < 0) returns the clean image itself
    last, _ = ddim.step(noise, 0, train.add_noise(x0, noise, torch.tensor([0, 0])))
    torch.testing.assert_close(last, x0, atol=1e-4, rtol=0)


def test_syndiff_posterior_is_exact_at_the_last_step():
    """q(x_0 | x_1, x0) has zero variance: the posterior sample is x0 itself."""
    sched = VPSchedule(4)
    x0 = rand((2, 1, 4, 4, 4), 3)
    x1 = sched.q_sample(x0, torch.tensor([1, 1]), torch.randn_like(x0))
    out = sched.posterior(x0, x1, torch.tensor([1, 1]), torch.randn_like(x0))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert float(sched.abar[-1]) < 1e-3  # 4 large steps reach (almost) pure noise


# ------------------------------------------------------------------ training and sampling
def _fit(model, t1, pet, steps, paired=True):
    opts = model.make_optimizers()
    for g in opts.values():
        for group in g.param_groups:
            group["lr"] = 2e-3
    return [model.train_step(t1, pet, opts, paired=paired) for _ in range(steps)]


def test_ddpm3d_loss_falls():
    torch.manual_seed(0)
    model = tiny("ddpm3d")
    t1, pet = rand((2, 1, 16, 16, 16), 1), rand((2, 1, 16, 16, 16), 2) * 0.2
    losses = [r["noise_mse"] for r in _fit(model, t1, pet, 40)]
    assert set(_fit(tiny("ddpm3d"), t1, pet, 1)[0]) == {"noise_mse", "laplacian", "G"}
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


@pytest.mark.parametrize("paired", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_syndiff_trains_and_loss_falls(paired):
    model = tiny("syndiff")
    # the PatchGANs (3 stride-2 layers, instance norm) need 32^3
    t1, pet = rand((2, 1, 32, 32, 32), 1), rand((2, 1, 32, 32, 32), 2) * 0.2
    rows = _fit(model, t1, pet, 25, paired=paired)
    key = "G_B_l1" if paired else "cycle_B"
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert np.mean([r[key] for r in rows[-5:]]) < np.mean([r[key] for r in rows[:5]])
    expected = (
        {"G_B_adv", "G_B_l1"}
        if paired
        else {"G_B_adv", "G_A_adv", "cycle_B", "cycle_A", "N_B_gan", "N_A_gan"}
    )
    assert set(rows[0]) - {"G", "D"} == expected


def test_ddpm3d_pretraining_target_is_pet_like():
    t1 = torch.full((1, 1, 8, 8, 8), -1.0)
    t1[0, 0, 2:6, 2:6, 2:6] = torch.linspace(-0.5, 1.0, 64).view(4, 4, 4)
    target = pet_like_t1w(t1, smooth_sigma_vox=0)
    inside = t1 > -0.999
    assert float(target[~inside].max()) == -1.0
    values = sorted({round(float(v), 4) for v in target[inside]})
    assert values == [round(0.8 * u * 2 - 1, 4) for u in (0.1, 0.4, 1.0)]
    # the brightest T1w (WM) gets the WM uptake, the darkest (CSF) the CSF uptake
    assert float(target[0, 0, 5, 5, 5]) == pytest.approx(0.8 * 0.4 * 2 - 1)
    assert float(target[0, 0, 2, 2, 2]) == pytest.approx(0.8 * 0.1 * 2 - 1)
    model = tiny("ddpm3d", pretrain_steps=1)
    assert model.train_step(t1, t1, model.make_optimizers())["G"] > 0


@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_sampling_is_deterministic_with_a_seed(name):
    gen = tiny(name).generator.eval()
    cond = rand((1, 1, 16, 16, 16), 4)
    with torch.inference_mode():
        a = gen(cond)
        gen.eval()  # resets the noise generator
        b = gen(cond)
        gen.reset_rng(5)
        c = gen(cond)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == cond.shape and float(a.abs().max()) <= 1.0


def test_sample_steps_override_and_timing_knob():
    model = tiny("ddpm3d")
    assert model.generator.sample_steps == get_spec("ddpm3d").defaults["sample_steps"]
    set_sample_steps(model.generator, 2)
    assert model.generator.sample_steps == 2
    sd = tiny("syndiff").generator
    assert sd.sample_steps == 4
    set_sample_steps(sd, 2)
    assert sd.sample_steps == 2 and sd.schedule.n_steps == 2


def test_whole_volume_prediction_on_patches():
    """predict_with_config tiles a volume with non-overlapping 32^3 patches (patch_keep)."""
    model = tiny("ddpm3d", sample_steps=1)
    vol = np.zeros((40, 36, 34), np.float32)
    vol[4:36, 4:30, 3:30] = np.random.default_rng(0).random((32, 26, 27))
    gen = model.generator.eval()
    out = predict_with_config(vol, gen, model.config)
    gen.eval()
    again = predict_with_config(vol, gen, model.config)
    assert out.shape == vol.shape and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, again)
    assert patch_keep(model.config) == 32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["ddpm3d", "syndiff"])
def test_cuda_matches_cpu(name):
    model = tiny(name)
    cond = rand((1, 1, 16, 16, 16), 6)
    gen = model.generator.eval()
    with torch.inference_mode():
        cpu = gen(cond)
        gen.to("cuda").eval()
        gpu = gen(cond.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)


def test_classes():
    assert isinstance(tiny("ddpm3d"), DDPM3D)
    assert isinstance(tiny("syndiff"), SynDiff)
    assert get_spec("ddpm3d").paired and not get_spec("syndiff").paired
    assert model_config("ddpm3d")["lambda_lap"] == 0.25  # MRI2PET
    assert model_config("syndiff")["n_steps"] == 4  # SynDiff


# ------------------------------------------------------------------ samples and uncertainty
def test_synthesize_samples_mean_sd_and_seeds(tmp_path):
    """2 samples of a (tiny, briefly trained) ddpm3d: mean = average of the samples drawn
    with seeds s and s + 1, SD > 0 everywhere in the brain, the same again with the same
    seed; a deterministic GAN model refuses more than one sample."""
    from conftest import make_tiny_weights
    from test_synthesis_inputs import toy_participant

    from pet_synth_app.errors import PetSynthError
    from pet_synth_app.synthesis.inference import synthesize_samples
    from pet_synth_app.synthesis.inputs import build_model_input

    toy = toy_participant(tmp_path / "toy", "toy", 1.5, 1.0)
    weights = make_tiny_weights(tmp_path / "m" / "ddpm.safetensors", "ddpm3d")
    mean, sd, meta = synthesize_samples(toy, weights, 2, seed=3, fwhm_mm=0)
    assert meta["SampleSeeds"] == [3, 4] and meta["NumberOfSamples"] == 2
    one = [synthesize_samples(toy, weights, 1, seed=s, fwhm_mm=0)[0] for s in (3, 4)]
    a, b = (np.asanyarray(i.dataobj, dtype=np.float64) for i in one)
    np.testing.assert_allclose(np.asanyarray(mean.dataobj), (a + b) / 2, atol=1e-5)
    np.testing.assert_allclose(np.asanyarray(sd.dataobj), np.abs(a - b) / 2, atol=1e-5)
    brain = build_model_input("mni", toy).mask
    assert (np.asanyarray(sd.dataobj)[brain] > 0).all()  # zero-free inside the brain
    again = synthesize_samples(toy, weights, 2, seed=3, fwhm_mm=0)[1]
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), np.asanyarray(sd.dataobj))
    gan = make_tiny_weights(tmp_path / "g" / "gan.safetensors")
    with pytest.raises(PetSynthError, match="deterministic"):
        synthesize_samples(toy, gan, 2)


def test_z_with_model_variance_by_hand():
    from pet_synth_app.analysis.zscore import control_referenced_z, self_referenced_z

    d = np.array([-3.0, 0.0, 3.0, 1.0])
    gm = np.array([True, True, True, False])  # GM mean 0, population SD sqrt(6)
    model_sd = np.array([1.0, 2.0, 0.0, 3.0])
    z = self_referenced_z(d, gm, None, model_sd)
    np.testing.assert_allclose(z, d / np.sqrt(6.0 + model_sd**2))
    np.testing.assert_allclose(self_referenced_z(d, gm), d / np.sqrt(6.0))  # default: off
    zc = control_referenced_z(d, np.ones(4), np.full(4, 0.5), None, model_sd)
    np.testing.assert_allclose(zc, (d - 1) / np.sqrt(0.25 + model_sd**2))


def test_workflow_graph_with_two_samples(tmp_path):
    from conftest import make_bids, make_tiny_weights

    from pet_synth_app import bids as pbids
    from pet_synth_app.config import Settings
    from pet_synth_app.errors import UsageError
    from pet_synth_app.workflows import base

    root = make_bids(tmp_path / "ds", subjects=("01",))
    units, _ = pbids.collect_inputs(pbids.load_layout(root))
    weights = make_tiny_weights(tmp_path / "m" / "ddpm.safetensors", "ddpm3d")
    settings = Settings(
        bids_dir=root,
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "w",
        model_weights=weights,
        synthesis_samples=2,
        z_model_variance=True,
        random_seed=5,
    )
    wf = base.init_petsynth_wf(settings, units)
    names = set(wf.list_node_names())
    sub = "single_subject_01_wf"
    for step in (
        "synthesis_wf.sd_to_t1w",
        "synthesis_derivatives_wf.ds_pseudo_sd_std",
        "synthesis_derivatives_wf.ds_pseudo_sd_t1w",
    ):
        assert f"{sub}.{step}" in names, step
    synth = wf.get_node(f"{sub}.synthesis_wf.synthesize")
    assert synth.inputs.n_samples == 2 and synth.inputs.seed == 5
    desc = wf.visit_desc()
    assert "2 samples were drawn" in desc and "variance of the pseudo-normal PET" in desc
    with pytest.raises(UsageError, match="synthesis-samples"):
        Settings.from_options(
            {"bids_dir": root, "output_dir": tmp_path / "o", "z_model_variance": True}
        )


@pytest.mark.parametrize(
    "space", ["MNI152NLin2009aSym grid, affine-only", "MNI152NLin2009aSymAffine"]
)
def test_cards_of_affine_models_load(tmp_path, space):
    """petsynth-train writes "<template> grid, affine-only" into the card of an "affine"
    model; read_card used to refuse it, so such a model failed at its own smoothing
    tuning (found training ddpm3d/syndiff with --input-representation affine)."""
    from conftest import make_tiny_weights

    from pet_synth_app.errors import PetSynthError
    from pet_synth_app.synthesis.weights import card_path, read_card

    weights = make_tiny_weights(tmp_path / "m" / "ddpm.safetensors", "ddpm3d")
    card = json.loads(card_path(weights).read_text())
    card["input"]["space"] = space
    card["input"]["representation"] = "affine"
    card_path(weights).write_text(json.dumps(card))
    assert read_card(weights)["input"]["space"] == space
    card["input"]["space"] = "MNI152NLin6Asym"
    card_path(weights).write_text(json.dumps(card))
    with pytest.raises(PetSynthError, match="trained in"):
        read_card(weights)


def test_ddpm3d_clean_image_prediction_variant():
    """prediction_type "sample": the loss is the MSE to the clean image, it falls, and the
    DDIM sampler takes the network output as the clean image."""
    model = tiny("ddpm3d", prediction_type="sample", sample_steps=2)
    t1, pet = rand((2, 1, 16, 16, 16), 1), rand((2, 1, 16, 16, 16), 2) * 0.2
    rows = _fit(model, t1, pet, 30)
    assert set(rows[0]) == {"x0_mse", "laplacian", "G"}
    assert np.mean([r["x0_mse"] for r in rows[-5:]]) < np.mean([r["x0_mse"] for r in rows[:5]])
    with torch.inference_mode():
        out = model.generator.eval()(t1)
    assert out.shape == pet.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="prediction_type"):
        tiny("ddpm3d", prediction_type="v")
