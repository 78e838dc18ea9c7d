"""Input representations of the synthesis models (synthesis/inputs.py, issue 14).

The first test is the fast regression guard of issue 14: toy participants whose PET
follows their cortical thickness (partial volume); the SyN-space ("mni") input is the
same template for everyone, the affine-space input shows the thickness. A tiny conv net
trained with MSE on the affine input follows the relation, on the MNI input it cannot.
Both inputs are built by ``build_model_input`` from files, as in training and inference,
so a regression of the "affine" representation to template space fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_tiny_weights
from scipy import ndimage
from torch import nn

from pet_synth_app.errors import PetSynthError
from pet_synth_app.preproc.anat import normalize_t1_intensity
from pet_synth_app.synthesis import inputs, training
from pet_synth_app.synthesis.inference import (
    channel_slices,
    predict_volume,
    synthesize_from_sources,
    synthesize_pet,
    volume_to_slices,
)
from pet_synth_app.synthesis.inputs import InputSources, build_model_input
from pet_synth_app.synthesis.registry import MODELS, build_model, get_spec, model_config

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TOY_SHAPE = (32, 32, 6)
TEMPLATE_THICKNESS = 2.5  # voxels
LR = 5e-3
WIDTH = 16
STEPS = 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(path: Path, data: np.ndarray, dtype=np.float32) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE), str(path))
    return path


def _identity_mat(path: Path) -> Path:
    import ants

    ants.write_transform(ants.create_ants_transform(dimension=3), str(path))
    return path


def _scaling_mat(path: Path, scale: float) -> Path:
    """An affine 'T1w -> MNI' transform (maps MNI points to T1w points x -> scale x)."""
    import ants

    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.eye(3) * scale
    )
    ants.write_transform(tx, str(path))
    return path


# ------------------------------------------------------------------ toy anatomy
def toy_tissues(thickness: float) -> dict[str, np.ndarray]:
    """A cylinder brain: WM core, a GM ring of ``thickness`` voxels (partial volume at the
    edges), CSF outside; the outer brain radius is fixed, so a thin cortex is atrophy."""
    x, y = np.meshgrid(np.arange(TOY_SHAPE[0]), np.arange(TOY_SHAPE[1]), indexing="ij")
    r = np.hypot(x - 15.5, y - 15.5)
    outer = 11.0

    def inside(radius):
        return np.clip(radius - r + 0.5, 0.0, 1.0)

    wm = inside(outer - thickness)
    gm = inside(outer) - wm
    csf = inside(outer + 2.0) - inside(outer)
    mask = r < outer + 2.5
    rep = lambda a: np.repeat(a[..., None], TOY_SHAPE[2], 2).astype(np.float32)  # noqa: E731
    return {"wm": rep(wm), "gm": rep(gm), "csf": rep(csf), "mask": rep(mask) > 0}


def toy_t1w(t: dict) -> np.ndarray:
    return (1.0 * t["wm"] + 0.6 * t["gm"] + 0.2 * t["csf"]) * t["mask"]


def toy_pet(t: dict, gain: float) -> np.ndarray:
    """FDG-like: GM 1, WM 0.35, CSF 0.15, blurred in-plane by the scanner PSF."""
    uptake = gain * (1.0 * t["gm"] + 0.35 * t["wm"] + 0.15 * t["csf"])
    return ndimage.gaussian_filter(uptake, (1.5, 1.5, 0)) * t["mask"]


def toy_participant(folder: Path, name: str, thickness: float, gain: float) -> InputSources:
    """Files of one toy participant as the preprocessing writes them. The T1w-space images
    carry the individual thickness; the affine stage is the identity (same head size);
    the SyN-space T1w is the template (SyN erased the thickness) while the PET keeps the
    partial-volume consequence."""
    folder.mkdir(parents=True, exist_ok=True)
    tissues, tpl = toy_tissues(thickness), toy_tissues(TEMPLATE_THICKNESS)
    pet = toy_pet(tissues, gain)
    logj = np.where(tpl["gm"] > 0.5, np.log(thickness / TEMPLATE_THICKNESS), 0.0)
    return InputSources(
        t1w_std=_save(folder / f"{name}_t1w_std.nii.gz", toy_t1w(tpl) * 800),
        mask_std=_save(folder / f"{name}_mask_std.nii.gz", tpl["mask"], np.uint8),
        gm_std=_save(folder / f"{name}_gm_std.nii.gz", tpl["gm"]),
        log_jacobian_std=_save(folder / f"{name}_logjac.nii.gz", logj),
        t1w=_save(folder / f"{name}_t1w.nii.gz", toy_t1w(tissues) * 800),
        t1w_mask=_save(folder / f"{name}_mask.nii.gz", tissues["mask"], np.uint8),
        affine=_identity_mat(folder / f"{name}_affine.mat"),
        warp=_identity_mat(folder / f"{name}_warp.mat"),
        gm=_save(folder / f"{name}_gm.nii.gz", tissues["gm"]),
        wm=_save(folder / f"{name}_wm.nii.gz", tissues["wm"]),
        csf=_save(folder / f"{name}_csf.nii.gz", tissues["csf"]),
        pet_t1w=_save(folder / f"{name}_pet_t1w.nii.gz", pet),
        pet_std=_save(folder / f"{name}_pet_std.nii.gz", pet),
    )


class TinyNet(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, WIDTH, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(WIDTH, 1, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


def _samples(mi: inputs.ModelInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The semi-3D samples of the models (3 adjacent slices per channel) at the middle
    slice (the toy is constant along z)."""
    z = slice(TOY_SHAPE[2] // 2, TOY_SHAPE[2] // 2 + 1)
    x = channel_slices(mi.channels)[z]
    y = volume_to_slices(mi.pet_suvr)[z, 1:2]
    m = volume_to_slices(mi.mask.astype(np.float32))[z, 1:2]
    return x, y, m


def _fit_and_test(train: list, test: list, steps: int | None = None) -> float:
    torch.manual_seed(0)
    xs, ys, _ = (np.concatenate(a) for a in zip(*[_samples(mi) for mi in train], strict=True))
    net = TinyNet(xs.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    x, y = torch.from_numpy(xs), torch.from_numpy(ys)
    for _ in range(steps or STEPS):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    errs = []
    with torch.no_grad():
        for mi in test:
            tx, ty, tm = _samples(mi)
            pred = net(torch.from_numpy(tx)).numpy()
            errs.append(float((((pred - ty) ** 2) * tm).sum() / tm.sum()))
    return float(np.mean(errs))


def test_affine_input_follows_anatomy_that_syn_space_hides(tmp_path):
    """Held-out MSE of the PET: the affine-input model is well below the MNI-input model
    and the mean training PET; the mni-jacobian input (volume kept as a channel) too."""
    rng = np.random.default_rng(3)
    train_t = np.linspace(1.0, 4.0, 10)
    test_t = np.array([1.4, 2.1, 2.9, 3.6])
    people = []
    for i, t in enumerate(np.concatenate([train_t, test_t])):
        gain = float(rng.normal(1.0, 0.02))  # metabolism the T1w cannot show
        people.append(toy_participant(tmp_path / f"p{i}", f"p{i}", float(t), gain))
    n_train = len(train_t)
    built = {
        rep: [build_model_input(rep, s, with_pet=True) for s in people]
        for rep in ("mni", "affine", "mni-jacobian", "mni-pv")
    }
    # the SyN-space input is the same for everyone, the affine one is not
    assert np.ptp([mi.channels[0].sum() for mi in built["mni"]]) == 0
    assert np.ptp([mi.channels[0].sum() for mi in built["affine"]]) > 1.0
    err = {rep: _fit_and_test(mis[:n_train], mis[n_train:]) for rep, mis in built.items()}
    mean_pet = np.mean([mi.pet_suvr for mi in built["mni"][:n_train]], 0)
    base = float(
        np.mean([((mean_pet - mi.pet_suvr) ** 2)[mi.mask].mean() for mi in built["mni"][n_train:]])
    )
    msg = f"held-out MSE {err}, mean PET {base:.2e}"
    assert err["affine"] < 0.5 * err["mni"], msg
    assert err["affine"] < 0.5 * base, msg
    assert err["mni-jacobian"] < 0.5 * err["mni"], msg
    assert err["mni-pv"] < 0.5 * err["mni"], msg
    assert err["mni-pv"] < 0.5 * base, msg


# ------------------------------------------------------------------ build_model_input
@pytest.fixture
def toy(tmp_path) -> InputSources:
    return toy_participant(tmp_path / "toy", "toy", 1.5, 1.0)


@pytest.mark.parametrize(
    ("rep", "n"), [("mni", 1), ("affine", 1), ("mni-jacobian", 3), ("mni-pv", 3)]
)
def test_channel_counts_and_ranges(toy, rep, n):
    mi = build_model_input(rep, toy, with_pet=True)
    assert inputs.n_channels(rep) == n == mi.channels.shape[0] == len(mi.names)
    assert mi.channels.shape[1:] == TOY_SHAPE and mi.channels.dtype == np.float32
    assert mi.channels.min() >= 0 and mi.channels.max() <= 1
    assert not mi.channels[:, ~mi.mask].any()
    assert mi.pet_suvr.shape == TOY_SHAPE
    np.testing.assert_allclose(mi.affine, AFFINE)


def test_mni_is_the_input_of_before(toy):
    """ "mni" = normalize_t1_intensity(MNI T1w, MNI mask), as t1w_std_norm was."""
    mi = build_model_input("mni", toy)
    ref = normalize_t1_intensity(nib.load(str(toy.t1w_std)), nib.load(str(toy.mask_std)))
    np.testing.assert_array_equal(mi.channels[0], np.asanyarray(ref.dataobj))


def test_affine_uses_the_affine_stage(toy, tmp_path):
    """Identity affine: the T1w-space image itself; a scaling affine shrinks the brain on
    the MNI grid (MNI points x -> T1w points 1.2 x)."""
    same = build_model_input("affine", toy)
    ref = normalize_t1_intensity(nib.load(str(toy.t1w)), nib.load(str(toy.t1w_mask)))
    np.testing.assert_allclose(same.channels[0], np.asanyarray(ref.dataobj), atol=1e-5)
    toy.affine = _scaling_mat(tmp_path / "scale.mat", 1.2)
    small = build_model_input("affine", toy, with_pet=True)
    assert small.mask.sum() < 0.85 * same.mask.sum()
    # the target PET goes through the same affine
    assert not small.pet_suvr[~ndimage.binary_dilation(small.mask, iterations=2)].any()


def test_mni_jacobian_channels(toy):
    mi = build_model_input("mni-jacobian", toy)
    logj = np.asanyarray(nib.load(str(toy.log_jacobian_std)).dataobj)
    gm = np.asanyarray(nib.load(str(toy.gm_std)).dataobj)
    m = mi.mask
    np.testing.assert_allclose(mi.channels[1][m], np.clip(0.5 + logj, 0, 1)[m], atol=1e-6)
    np.testing.assert_allclose(mi.channels[2][m], np.clip(gm * np.exp(logj) / 2, 0, 1)[m], 1e-5)
    assert mi.names == ["t1w_mni", "log_jacobian", "gm_modulated"]


def test_mni_pv_channels_are_blurred_fractions(toy):
    """The toy T1w is an exact WM/GM/CSF mix (1.0/0.6/0.2): the pv channels are its GM
    and CSF fractions blurred by PV_FWHM_MM in T1w space (identity transforms here)."""
    mi = build_model_input("mni-pv", toy)
    assert mi.names == ["t1w_mni", "pv_gm", "pv_csf"]
    sigma = inputs.PV_FWHM_MM / 2.3548 / 2.0  # toy voxels are 2 mm
    tissues = toy_tissues(1.5)
    inside = ndimage.binary_erosion(mi.mask, iterations=1)
    brain = tissues["mask"].astype(np.float32)
    # inside the brain mask whatever is neither GM nor WM is CSF (darkest tissue)
    fractions = {"gm": tissues["gm"] * brain, "csf": brain - tissues["gm"] - tissues["wm"]}
    for channel, key in ((1, "gm"), (2, "csf")):
        expected = ndimage.gaussian_filter(fractions[key], sigma)
        np.testing.assert_allclose(mi.channels[channel][inside], expected[inside], atol=2e-3)
    # a thinner cortex has less GM at PET resolution although SyN gives the same MNI T1w
    thin = toy_participant(toy.t1w.parent / "thin", "thin", 1.0, 1.0)
    thin_mi = build_model_input("mni-pv", thin)
    assert thin_mi.channels[1].sum() < 0.75 * mi.channels[1].sum()
    np.testing.assert_array_equal(thin_mi.channels[0], mi.channels[0])


def test_missing_files_are_named(toy):
    toy.t1w = None
    with pytest.raises(PetSynthError, match="t1w"):
        build_model_input("affine", toy)
    toy.gm_std = None
    with pytest.raises(PetSynthError, match="gm_std"):
        build_model_input("mni-jacobian", toy)
    toy.csf = None
    with pytest.raises(PetSynthError, match="csf"):
        build_model_input("mni-pv", toy)
    with pytest.raises(PetSynthError, match="unknown input representation"):
        build_model_input("talairach", toy)


def test_card_representation_back_compat():
    assert inputs.card_representation({"input": {}}) == "mni"
    assert inputs.card_representation({}) == "mni"
    assert inputs.card_representation({"input": {"representation": "affine"}}) == "affine"
    with pytest.raises(PetSynthError):
        inputs.card_representation({"input": {"representation": "nope"}})
    fields = inputs.card_fields("mni-jacobian")
    assert fields["representation"] == "mni-jacobian" and len(fields["input_channels"]) == 3


def test_old_card_runs_through_the_one_function(toy, tmp_path):
    """A card without input.representation means "mni": synthesize_from_sources gives what
    synthesize_pet gave on the normalized MNI T1w."""
    weights = make_tiny_weights(tmp_path / "m" / "tiny.safetensors")
    assert "representation" not in json.loads(weights.with_suffix(".json").read_text())["input"]
    out, meta = synthesize_from_sources(toy, weights, fwhm_mm=0)
    norm = normalize_t1_intensity(nib.load(str(toy.t1w_std)), nib.load(str(toy.mask_std)))
    ref, _ = synthesize_pet(norm, nib.load(str(toy.mask_std)), weights, fwhm_mm=0)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(ref.dataobj))
    assert meta["InputRepresentation"] == "mni"


# ------------------------------------------------------------------ models, training, card
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_multichannel_input(name):
    """3 channels x 3 context slices in (or 3 channels for 3D patches), one PET out."""
    kind = get_spec(name).kind
    small = {"ngf": 4, "ndf": 4, "unet_channels": [4, 8]}
    defaults = get_spec(name).defaults
    config = model_config(
        name, input_channels=3, **{k: v for k, v in small.items() if k in defaults}
    )
    model = build_model(name, config)
    # the U-Net's 4 stride-2 levels need >= 32 voxels in-plane (instance norm)
    vol = np.random.default_rng(0).random((3, 32, 32, 8)).astype(np.float32)
    vol[:, :2] = 0
    model.eval()
    out = predict_volume(
        vol, model.generator, kind=kind, patch=16, keep=8, size_multiple=model.size_multiple
    )
    assert out.shape == (32, 32, 8) and np.isfinite(out).all()
    model.train()
    # PatchGAN (3 stride-2 layers) and the U-Net (4) need > 1 element left for instance norm
    n = 64 if name == "pix2pix" else 32
    if kind == "slices":
        t1 = torch.rand(2, 9, n, n) * 2 - 1
        pet = torch.rand(2, 3, n, n) * 2 - 1
    else:
        t1 = torch.rand(2, 3, n, n, n) * 2 - 1
        pet = torch.rand(2, 1, n, n, n) * 2 - 1
    losses = model.train_step(t1, pet, model.make_optimizers(), paired=True)
    assert all(np.isfinite(v) for v in losses.values())


def test_training_records_the_representation(toy, tmp_path):
    """train() on mni-jacobian volumes: input_channels 3 in the config, the
    representation in the card; the saved model runs through synthesize_from_sources."""
    vols = [
        training.load_participant(f"p{i}", toy, "mni-jacobian", pet_scale=2.5) for i in range(2)
    ]
    assert vols[0].channels.shape == (3,) + TOY_SHAPE
    config = model_config("cyclegan-mse", ngf=4, ndf=4, batch_size=2, n_epochs=1, n_epochs_decay=0)
    res = training.train(
        "cyclegan-mse", config, vols[:1], vols[1:], tmp_path / "m", epochs=1, resume=False
    )
    card = json.loads(res.weights.with_suffix(".json").read_text())
    assert card["input"]["representation"] == "mni-jacobian"
    assert card["config"]["input_channels"] == 3
    assert inputs.card_representation(card) == "mni-jacobian"
    out, meta = synthesize_from_sources(toy, res.weights)
    assert out.shape == TOY_SHAPE and meta["InputRepresentation"] == "mni-jacobian"
    # --prior with the multi-channel input: one T1w-domain mean per channel, and the
    # synthesis path from the participant's files takes it
    res = training.train(
        "cyclegan-mse", config, vols[:1], vols[1:], tmp_path / "p", epochs=1, prior=True
    )
    card = json.loads(res.weights.with_suffix(".json").read_text())
    assert card["config"]["prior_shape"] == list(TOY_SHAPE) and "3 x grid" in str(card["input"])
    out, _ = synthesize_from_sources(toy, res.weights)
    mask = np.asanyarray(nib.load(str(toy.mask_std)).dataobj) > 0
    arr = np.asanyarray(out.dataobj)
    assert arr.shape == TOY_SHAPE and np.isfinite(arr).all() and arr[mask].max() > 0


def test_affine_model_card_is_readable(toy, tmp_path):
    """A model trained on the affine representation records the affine-only template
    space in its card, and loads back (a card naming another space is refused)."""
    toy.affine = _scaling_mat(tmp_path / "scale.mat", 1.0)
    vols = [training.load_participant(f"p{i}", toy, "affine", pet_scale=2.5) for i in range(2)]
    config = model_config("cyclegan-mse", ngf=4, ndf=4, batch_size=2, n_epochs=1, n_epochs_decay=0)
    res = training.train(
        "cyclegan-mse", config, vols[:1], vols[1:], tmp_path / "m", epochs=1, resume=False
    )
    cpath = res.weights.with_suffix(".json")
    card = json.loads(cpath.read_text())
    assert card["input"]["space"] == inputs.card_space("affine") == "MNI152NLin2009aSymAffine"
    assert inputs.card_space("mni-jacobian") == "MNI152NLin2009aSym"
    out, meta = synthesize_from_sources(toy, res.weights, fwhm_mm=0)
    assert out.shape == TOY_SHAPE and meta["InputRepresentation"] == "affine"
    card["input"]["space"] = "MNI152NLin2009aSym"
    cpath.write_text(json.dumps(card))
    with pytest.raises(PetSynthError, match="'affine' input representation works in"):
        synthesize_from_sources(toy, res.weights)


def test_affine_training_target_and_prior_in_affine_space(toy, tmp_path):
    """The affine representation's target PET is the T1w-space PET through the affine;
    the mean-PET prior is computed from those volumes (affine space)."""
    toy.affine = _scaling_mat(tmp_path / "scale.mat", 1.2)
    v = training.load_participant("p", toy, "affine", pet_scale=2.5)
    assert v.representation == "affine" and v.extra is None
    ref = inputs.to_affine_space(toy.pet_t1w, nib.load(str(toy.mask_std)), toy.affine)
    np.testing.assert_allclose(v.pet_suvr, np.asanyarray(ref.dataobj), atol=1e-6)
    _, mean_pet = training.mean_images([v, v])
    np.testing.assert_allclose(mean_pet, v.pet * v.mask, atol=1e-6)
