"""Synthesis networks, loss terms, the model registry and one training step per model.

All networks are tiny (ngf = ndf = 4) so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pet_synth_app.synthesis import losses
from pet_synth_app.synthesis.cyclegan import CycleGAN
from pet_synth_app.synthesis.model import ImagePool, set_requires_grad
from pet_synth_app.synthesis.networks import (
    PatchGAN,
    ResnetBlock,
    ResnetGenerator,
    UnetGenerator,
    count_parameters,
)
from pet_synth_app.synthesis.pix2pix import Pix2Pix
from pet_synth_app.synthesis.registry import (
    DEFAULT_MODEL,
    MODELS,
    build_model,
    get_spec,
    model_config,
)

DIFFUSION = ("ddpm3d", "syndiff")  # tested in test_synthesis_diffusion.py
NAMES = sorted(n for n in MODELS if n not in DIFFUSION)  # the GAN models
SLICE_SHAPE = (2, 3, 64, 64)  # semi-3D: 3 adjacent axial slices as channels
PATCH_SHAPE = (2, 1, 32, 32, 32)  # 3D patches


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(name, model_config(name, ngf=4, ndf=4, **overrides))


def input_shape(name: str) -> tuple[int, ...]:
    return SLICE_SHAPE if get_spec(name).kind == "slices" else PATCH_SHAPE


def rand_images(shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("name", NAMES)
def test_generator_forward_shape_and_tanh_range(name):
    model = tiny(name)
    shape = input_shape(name)
    assert model.kind == get_spec(name).kind
    x = rand_images(shape) * 5  # well outside [-1, 1]: the output must still be tanh-bounded
    with torch.no_grad():
        y = model.generator(x)
        assert torch.equal(model(x), y)  # forward() is the T1w -> PET generator
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    assert float(y.std()) > 0  # not a constant map


@pytest.mark.parametrize("name", NAMES)
def test_discriminator_output_shape(name):
    model = tiny(name)
    shape = input_shape(name)
    x = rand_images(shape)
    # 3 stride-2 convs then 2 stride-1 k4/p1 convs: n -> n/8 - 2
    out_spatial = tuple(n // 8 - 2 for n in shape[2:])
    with torch.no_grad():
        if isinstance(model, Pix2Pix):  # conditional: sees (T1w, PET) stacked as channels
            logits = [model.D(torch.cat([x, x], 1))]
        else:
            logits = [model.D_A(x), model.D_B(x)]
    for out in logits:
        assert tuple(out.shape) == (shape[0], 1, *out_spatial)


def receptive_field(net: nn.Module, conv_type: type) -> int:
    rf, jump = 1, 1
    for mod in net.modules():
        if isinstance(mod, conv_type):
            k, s = mod.kernel_size[0], mod.stride[0]
            rf += (k - 1) * jump
            jump *= s
    return rf


@pytest.mark.parametrize("dims,conv", [(2, nn.Conv2d), (3, nn.Conv3d)])
def test_patchgan_receptive_field_is_70(dims, conv):
    # instance norm mixes every position, so a gradient-based RF probe would see the whole
    # image; compute the RF analytically from the conv stack instead
    net = PatchGAN(dims, 3, 4)
    convs = [m for m in net.modules() if isinstance(m, conv)]
    assert [m.kernel_size[0] for m in convs] == [4, 4, 4, 4, 4]
    assert [m.stride[0] for m in convs] == [2, 2, 2, 1, 1]
    assert receptive_field(net, conv) == 70


def test_receptive_field_helper_on_known_stack():
    net = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3))
    assert receptive_field(net, nn.Conv2d) == 1 + 2 + 2 + 4


@pytest.mark.parametrize(
    "name,blocks", [("cyclegan-mse", 9), ("cyclegan", 9), ("cyclegan-3dpatch", 2)]
)
def test_resnet_generator_block_count(name, blocks):
    model = tiny(name)
    for gen in (model.G_A, model.G_B):
        assert isinstance(gen, ResnetGenerator)
        assert sum(isinstance(m, ResnetBlock) for m in gen.modules()) == blocks
    conv = nn.Conv2d if get_spec(name).kind == "slices" else nn.Conv3d
    assert all(
        not isinstance(m, (nn.Conv2d, nn.Conv3d)) or isinstance(m, conv) for m in model.modules()
    )


def test_resnet_block_is_residual():
    block = ResnetBlock(2, 4)
    for p in block.parameters():
        nn.init.zeros_(p)  # zero convs: the block branch is 0, the output is the input
    x = rand_images((1, 4, 8, 8))
    assert torch.equal(block(x), x)


def test_unet_generator_size_multiple_and_range():
    gen = UnetGenerator(2, 3, 3, ngf=4, n_down=4)
    assert gen.size_multiple == 16
    assert tiny("pix2pix").size_multiple == 16
    assert tiny("cyclegan-mse").size_multiple == 4
    with torch.no_grad():
        y = gen(rand_images((1, 3, 32, 48)) * 10)
    assert y.shape == (1, 3, 32, 48)
    assert float(y.abs().max()) <= 1.0


def test_networks_reject_bad_dims():
    for cls in (ResnetGenerator, UnetGenerator, PatchGAN):
        with pytest.raises(ValueError, match="spatial_dims"):
            cls(spatial_dims=1)


def test_count_parameters_and_set_requires_grad():
    gen = ResnetGenerator(2, 3, 3, ngf=4, n_blocks=1)
    n = sum(p.numel() for p in gen.parameters())
    assert count_parameters(gen) == n > 0
    # c7s1-4 + 2 downsamplings + 1 block + 2 upsamplings + c7s1-3, weights + biases
    expected = (
        (3 * 4 * 49 + 4)
        + (4 * 8 * 9 + 8)
        + (8 * 16 * 9 + 16)
        + 2 * (16 * 16 * 9 + 16)
        + (16 * 8 * 9 + 8)
        + (8 * 4 * 9 + 4)
        + (4 * 3 * 49 + 3)
    )
    assert n == expected
    set_requires_grad([gen], False)
    assert count_parameters(gen) == 0
    set_requires_grad([gen], True)
    assert count_parameters(gen) == n


# ------------------------------------------------------------------ registry
def test_registry_names_and_kinds():
    assert set(MODELS) == {
        "cyclegan-mse",
        "cyclegan",
        "cyclegan-3dpatch",
        "pix2pix",
        "ddpm3d",
        "syndiff",
    }
    assert DEFAULT_MODEL in MODELS
    kinds = {name: spec.kind for name, spec in MODELS.items()}
    assert kinds == {
        "cyclegan-mse": "slices",
        "cyclegan": "slices",
        "cyclegan-3dpatch": "patches",
        "pix2pix": "slices",
        "ddpm3d": "patches",
        "syndiff": "patches",
    }
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.description and spec.references


def test_unknown_model_lists_choices():
    for call in (get_spec, model_config, build_model):
        with pytest.raises(ValueError) as exc:
            call("cyclegan-xl")
        msg = str(exc.value)
        assert "cyclegan-xl" in msg
        for name in MODELS:
            assert name in msg


def test_unknown_hyperparameter_rejected():
    with pytest.raises(ValueError, match="ngff"):
        model_config("cyclegan-mse", ngff=4)
    with pytest.raises(ValueError, match="lambda_l1"):
        model_config("cyclegan-mse", lambda_l1=1.0)  # a pix2pix-only parameter
    # None means "not given"; seed is always accepted
    config = model_config("cyclegan-mse", ngf=None, ngff=None, seed=3)
    assert config["ngf"] == 64 and config["seed"] == 3 and "ngff" not in config


def test_model_config_overrides_and_name():
    config = model_config("pix2pix", ngf=8, lr=1e-3)
    assert config["ngf"] == 8 and config["lr"] == 1e-3 and config["model"] == "pix2pix"
    assert MODELS["pix2pix"].defaults["ngf"] == 64  # defaults not mutated
    assert model_config("pix2pix")["ngf"] == 64


def test_plain_cyclegan_has_no_mse_and_is_unpaired():
    spec = get_spec("cyclegan")
    assert spec.defaults["lambda_mse"] == 0
    assert spec.paired is False
    assert get_spec("cyclegan-mse").defaults["lambda_mse"] > 0
    assert all(MODELS[n].paired for n in ("cyclegan-mse", "cyclegan-3dpatch", "pix2pix"))


def test_defaults_match_seed_001():
    for name in NAMES:
        c = model_config(name)
        assert c["lr"] == 2e-4 and c["beta1"] == 0.5
        assert c["n_epochs"] == 100
    for name in ("cyclegan-mse", "cyclegan", "pix2pix"):
        c = model_config(name)
        assert (c["batch_size"], c["n_epochs_decay"]) == (5, 100)
        assert (c["spatial_dims"], c["channels"]) == (2, 3)
    c = model_config("cyclegan-3dpatch")
    assert (c["batch_size"], c["n_epochs_decay"]) == (10, 0)
    assert (c["patch_size"], c["patch_stride"]) == (32, 8)
    assert (c["spatial_dims"], c["channels"], c["n_blocks"]) == (3, 1, 2)
    c = model_config("pix2pix")
    assert c["lambda_l1"] == 100 and c["gan_mode"] == "vanilla"
    for name in ("cyclegan-mse", "cyclegan-3dpatch"):
        c = model_config(name)
        assert c["lambda_cycle"] == 10 and c["lambda_mse"] == 10 and c["pool_size"] == 50
    assert model_config("cyclegan-mse")["n_blocks"] == 9


def test_build_model_classes_and_optimizers():
    assert isinstance(tiny("cyclegan-mse"), CycleGAN)
    assert isinstance(tiny("pix2pix"), Pix2Pix)
    default = build_model("cyclegan")
    assert default.config["ngf"] == 64 and default.config["lambda_mse"] == 0
    model = tiny("cyclegan-mse", lr=1e-3, beta1=0.7)
    opts = model.make_optimizers()
    assert set(opts) == {"G", "D"}
    for opt in opts.values():
        assert isinstance(opt, torch.optim.Adam)
        (group,) = opt.param_groups
        assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.7, 0.999)
    ids = {id(p) for opt in opts.values() for p in opt.param_groups[0]["params"]}
    assert ids == {id(p) for p in model.parameters()}
    assert {id(p) for p in opts["G"].param_groups[0]["params"]} == {
        id(p) for net in (model.G_A, model.G_B) for p in net.parameters()
    }


# ------------------------------------------------------------------ loss terms
def test_lsgan_loss_hand_values():
    x = torch.tensor([0.5, 1.5])
    assert losses.gan_loss(x, True, "lsgan").item() == pytest.approx(0.25)  # mean((x-1)^2)
    assert losses.gan_loss(x, False, "lsgan").item() == pytest.approx(1.25)  # mean(x^2)
    assert losses.gan_loss(x, True).item() == pytest.approx(0.25)  # lsgan is the default


def test_vanilla_loss_hand_values():
    x = torch.tensor([0.0, 2.0])
    real = (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2  # -log(sigmoid(x))
    fake = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2  # -log(1 - sigmoid(x))
    assert losses.gan_loss(x, True, "vanilla").item() == pytest.approx(real, rel=1e-6)
    assert losses.gan_loss(x, False, "vanilla").item() == pytest.approx(fake, rel=1e-6)


def test_gan_loss_unknown_mode():
    with pytest.raises(ValueError, match="wgan"):
        losses.gan_loss(torch.zeros(2), True, "wgan")


def test_discriminator_loss_is_half_sum():
    real, fake = torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0])
    # lsgan: 0.5 * (mean((real-1)^2) + mean(fake^2)) = 0.5 * (0.25 + 0.5)
    assert losses.discriminator_loss(real, fake).item() == pytest.approx(0.375)
    v_real, v_fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])
    expected = 0.5 * (
        (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2
        + (math.log(2.0) + math.log(1 + math.exp(-2.0))) / 2
    )
    got = losses.discriminator_loss(v_real, v_fake, "vanilla").item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_reconstruction_losses_hand_values():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 6.0])
    assert losses.cycle_loss(a, b).item() == pytest.approx(5 / 3)
    assert losses.paired_l1_loss(a, b).item() == pytest.approx(5 / 3)
    assert losses.paired_mse_loss(a, b).item() == pytest.approx(13 / 3)


# ------------------------------------------------------------------ model losses
def ab_pair(shape=(2, 3, 32, 32)):
    return rand_images(shape, 1), rand_images(shape, 2)


def test_cyclegan_generator_losses_without_mse():
    a, b = ab_pair()
    base = {"G_B_gan", "G_A_gan", "cycle_A", "cycle_B"}
    with torch.no_grad():
        terms, _, _ = tiny("cyclegan").generator_losses(a, b, paired=True)  # lambda_mse 0
        assert set(terms) == base
        terms, _, _ = tiny("cyclegan-mse").generator_losses(a, b, paired=False)
        assert set(terms) == base
        terms, _, _ = tiny("cyclegan-mse").generator_losses(a, b, paired=True)
        assert set(terms) == base | {"mse_A", "mse_B"}


def test_cyclegan_generator_losses_hand_values():
    model = tiny("cyclegan-mse", lambda_mse=2.0, lambda_cycle=3.0)
    a, b = ab_pair()
    with torch.no_grad():
        terms, fake_a, fake_b = model.generator_losses(a, b, paired=True)
        # instance norm keeps no running statistics: recomputing gives the same outputs
        g_b_a, g_a_b = model.G_B(a), model.G_A(b)
        assert torch.equal(fake_b, g_b_a) and torch.equal(fake_a, g_a_b)
        mse_b = 2.0 * ((g_b_a - b) ** 2).mean()
        mse_a = 2.0 * ((g_a_b - a) ** 2).mean()
        cyc_a = 3.0 * (model.G_A(g_b_a) - a).abs().mean()
        cyc_b = 3.0 * (model.G_B(g_a_b) - b).abs().mean()
        gan_b = ((model.D_B(g_b_a) - 1) ** 2).mean()
        gan_a = ((model.D_A(g_a_b) - 1) ** 2).mean()
    for key, value in {
        "mse_B": mse_b,
        "mse_A": mse_a,
        "cycle_A": cyc_a,
        "cycle_B": cyc_b,
        "G_B_gan": gan_b,
        "G_A_gan": gan_a,
    }.items():
        assert terms[key].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), key
    assert terms["mse_B"].item() > 0


def test_pix2pix_generator_losses_hand_values():
    model = tiny("pix2pix", lambda_l1=7.0)
    a, b = ab_pair()
    with torch.no_grad():
        terms, fake_b = model.generator_losses(a, b)
        g_a = model.G(a)
        assert torch.equal(fake_b, g_a)
        l1 = 7.0 * (g_a - b).abs().mean()
        logits = model.D(torch.cat([a, g_a], 1))
        bce = torch.log1p(torch.exp(-logits)).mean()  # BCE with logits against "real"
    assert set(terms) == {"G_gan", "l1"}
    assert terms["l1"].item() == pytest.approx(l1.item(), rel=1e-5)
    assert terms["G_gan"].item() == pytest.approx(bce.item(), rel=1e-5)


# ------------------------------------------------------------------ training step
def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _changed(before: dict, net: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_train_step_updates_all_networks(name):
    model = tiny(name)
    model.train()
    opts = model.make_optimizers()
    shape = input_shape(name)
    if model.kind == "slices":
        shape = (2, 3, 32, 32)
    t1, pet = rand_images(shape, 1), rand_images(shape, 2)
    nets = (
        {"G": model.G, "D": model.D}
        if isinstance(model, Pix2Pix)
        else {"G_A": model.G_A, "G_B": model.G_B, "D_A": model.D_A, "D_B": model.D_B}
    )
    before = {k: _snapshot(net) for k, net in nets.items()}
    out = model.train_step(t1, pet, opts, paired=get_spec(name).paired)
    for key, net in nets.items():
        assert _changed(before[key], net), f"{key} was not updated"
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    gen_terms = [k for k in out if k not in ("G", "D", "D_A", "D_B")]
    assert out["G"] == pytest.approx(sum(out[k] for k in gen_terms), rel=1e-5)
    if isinstance(model, Pix2Pix):
        assert set(gen_terms) == {"G_gan", "l1"} and out["D"] > 0
    else:
        expected = {"G_B_gan", "G_A_gan", "cycle_A", "cycle_B"}
        if model.config["lambda_mse"] > 0:
            expected |= {"mse_A", "mse_B"}
        assert set(gen_terms) == expected and out["D_A"] > 0 and out["D_B"] > 0
    # discriminators are trainable again after the step
    assert all(p.requires_grad for p in model.parameters())


def test_cyclegan_unpaired_step_has_no_mse():
    model = tiny("cyclegan-mse")
    opts = model.make_optimizers()
    out = model.train_step(*ab_pair(), opts, paired=False)
    assert "mse_A" not in out and "mse_B" not in out
    assert out["G"] == pytest.approx(
        sum(out[k] for k in ("G_B_gan", "G_A_gan", "cycle_A", "cycle_B")), rel=1e-5
    )


def test_pix2pix_unpaired_step_refused():
    model = tiny("pix2pix")
    opts = model.make_optimizers()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="paired"):
        model.train_step(*ab_pair(), opts, paired=False)
    assert not _changed(before, model)


# ------------------------------------------------------------------ image pool
def test_image_pool_size_zero_is_identity():
    pool = ImagePool(0)
    x = rand_images((3, 1, 4, 4))
    assert pool.query(x) is x
    assert pool.images == []


def test_image_pool_history():
    pool = ImagePool(3, torch.Generator().manual_seed(0))
    first = rand_images((3, 1, 4, 4), 1)
    out = pool.query(first)
    assert torch.equal(out, first)  # the first `size` images come back unchanged
    assert len(pool.images) == 3
    seen = list(first)
    swapped = kept = 0
    for step in range(5):
        new = rand_images((4, 1, 4, 4), 10 + step)
        out = pool.query(new)
        assert out.shape == new.shape and not out.requires_grad
        for i in range(len(new)):
            if torch.equal(out[i], new[i]):
                kept += 1
            else:
                swapped += 1
                # an older image: from earlier batches or stored earlier in this one
                assert any(torch.equal(out[i], old) for old in seen + list(new[:i]))
        seen += list(new)
        assert len(pool.images) == 3
    assert swapped > 0 and kept > 0


def test_image_pool_deterministic_under_seed():
    outs = []
    for _ in range(2):
        pool = ImagePool(2, torch.Generator().manual_seed(5))
        outs.append([pool.query(rand_images((3, 1, 2, 2), s)) for s in range(4)])
    for x, y in zip(*outs, strict=True):
        assert torch.equal(x, y)


def test_image_pool_detaches():
    x = rand_images((2, 1, 2, 2)).requires_grad_(True)
    assert not ImagePool(4).query(x * 2).requires_grad
