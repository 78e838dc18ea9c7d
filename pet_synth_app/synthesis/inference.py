"""Pseudo-normal PET inference: volume -> slices or patches -> batched forward pass ->
stacked volume -> 3D Gaussian smoothing -> NIfTI in the input's (MNI) space.

Arrays are (x, y, z) voxel grids with z the axial (inferior-superior) axis, as in the
RAS-oriented MNI152NLin2009aSym grids. Model-side images are in [0, 1]; the generator
sees them mapped to [-1, 1] (tanh range).
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..config import SYNTHESIS_FWHM_MM
from ..errors import PetSynthError
from ..preproc.templates import get_template
from ..threads import with_thread_limits
from .model import kind_from_config
from .weights import load_generator, smoothing_fwhm

DEFAULT_FWHM_MM = SYNTHESIS_FWHM_MM
DEFAULT_BATCH_SIZE = 8
CONTEXT_SLICES = 3


# ------------------------------------------------------------------ slices (semi-3D)
def volume_to_slices(volume: np.ndarray, context: int = CONTEXT_SLICES) -> np.ndarray:
    """(x, y, z) volume -> (z, context, x, y) stack of adjacent axial slices.

    Channel c of sample z is slice ``z + c - context // 2`` (edges replicated).
    """
    if volume.ndim != 3 or context % 2 != 1:
        raise ValueError("need a 3D volume and an odd number of context slices")
    half = context // 2
    padded = np.pad(volume, ((0, 0), (0, 0), (half, half)), mode="edge")
    nz = volume.shape[2]
    idx = np.arange(nz)[:, None] + np.arange(context)[None, :]
    return np.ascontiguousarray(np.moveaxis(padded[:, :, idx], (2, 3), (0, 1)))


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """Inverse of ``volume_to_slices``: the centre channel of each sample, restacked."""
    centre = slices.shape[1] // 2
    return np.ascontiguousarray(np.moveaxis(slices[:, centre], 0, 2))


# ------------------------------------------------------------------ 3D patches
def patch_grid(shape: tuple[int, ...], patch: int, keep: int) -> tuple[list, tuple]:
    """Corner positions of patches whose central ``keep``^3 cubes tile a volume.

    Returns (corners in the padded volume, pad widths). The volume is zero-padded by
    ``(patch - keep) / 2`` plus enough to reach a multiple of ``keep``.
    """
    if keep > patch or (patch - keep) % 2:
        raise ValueError("keep must be <= patch with an even difference")
    margin = (patch - keep) // 2
    pads = tuple((margin, margin + (-n) % keep) for n in shape)
    counts = [math.ceil(n / keep) for n in shape]
    corners = [
        (i * keep, j * keep, k * keep)
        for i in range(counts[0])
        for j in range(counts[1])
        for k in range(counts[2])
    ]
    return corners, pads


def volume_to_patches(volume: np.ndarray, patch: int = 32, keep: int = 16) -> np.ndarray:
    """(x, y, z) volume -> (n, 1, patch, patch, patch) patches for central-part stitching."""
    corners, pads = patch_grid(volume.shape, patch, keep)
    padded = np.pad(volume, pads)
    out = np.empty((len(corners), 1, patch, patch, patch), dtype=volume.dtype)
    for n, (i, j, k) in enumerate(corners):
        out[n, 0] = padded[i : i + patch, j : j + patch, k : k + patch]
    return out


def patches_to_volume(
    patches: np.ndarray, shape: tuple[int, ...], patch: int = 32, keep: int = 16
) -> np.ndarray:
    """Stitch the central ``keep``^3 of each patch back into a volume of ``shape``."""
    corners, pads = patch_grid(shape, patch, keep)
    margin = (patch - keep) // 2
    full = np.zeros([n + sum(p) for n, p in zip(shape, pads, strict=True)], patches.dtype)
    for n, (i, j, k) in enumerate(corners):
        full[
            i + margin : i + margin + keep,
            j + margin : j + margin + keep,
            k + margin : k + margin + keep,
        ] = patches[n, 0, margin : margin + keep, margin : margin + keep, margin : margin + keep]
    return full[tuple(slice(p[0], p[0] + n) for n, p in zip(shape, pads, strict=True))]


# ------------------------------------------------------------------ forward pass
def _pad_inplane(arr: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    nx, ny = arr.shape[-2:]
    px, py = (-nx) % multiple, (-ny) % multiple
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, px), (0, py)]
    return np.pad(arr, pad), (nx, ny)


def _batched(
    generator: nn.Module,
    samples: np.ndarray,
    batch_size: int,
    device: str,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """[0, 1] samples (n, c, ...) -> [0, 1] outputs (n, c_out, ...); ``prior`` samples
    (same shape) are appended as channels."""
    outs = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            x = torch.from_numpy(samples[start : start + batch_size]).to(device)
            if prior is not None:
                p = torch.from_numpy(prior[start : start + batch_size]).to(device)
                x = torch.cat([x, p], 1)
            y = generator(x * 2.0 - 1.0)
            outs.append(((y + 1.0) * 0.5).clamp(0, 1).cpu().numpy().astype(samples.dtype))
    return np.concatenate(outs) if outs else np.empty_like(samples)


def channel_slices(channels: np.ndarray, context: int = CONTEXT_SLICES) -> np.ndarray:
    """(C, x, y, z) channels -> (z, C * context, x, y) semi-3D samples, channel-major
    (the ``context`` adjacent slices of channel 0, then of channel 1, ...)."""
    return np.concatenate([volume_to_slices(c, context) for c in channels], 1)


def prior_slices(prior: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Semi-3D samples of a residual model's prior volume cropped to ``box`` ((x, y) or
    (x, y, z) slices): (z, context, x, y) for an (x, y, z) prior, channel-major
    (z, C * context, x, y) for a (C, x, y, z) prior (one mean per input channel), as the
    images of its domain are cut."""
    if prior.ndim == 4:
        return channel_slices(prior[(slice(None), *box)])
    return volume_to_slices(prior[tuple(box)])


def channel_patches(channels: np.ndarray, patch: int = 32, keep: int = 16) -> np.ndarray:
    """(C, x, y, z) channels -> (n, C, p, p, p) 3D patches (``volume_to_patches`` each)."""
    return np.concatenate([volume_to_patches(c, patch, keep) for c in channels], 1)


def _as_channels(t1w: np.ndarray) -> np.ndarray:
    t1w = np.asarray(t1w, dtype=np.float32)
    if t1w.ndim == 3:
        return t1w[None]
    if t1w.ndim != 4:
        raise ValueError(f"expected an (x, y, z) or (C, x, y, z) input, got {t1w.shape}")
    return t1w


def generator_prior(generator: nn.Module, shape: tuple[int, ...]) -> np.ndarray | None:
    """The [0, 1] prior volume a residual generator carries (None without one).

    PetSynthError when the volume's grid ``shape`` is not the one the model was trained on.
    """
    return _prior_volume(getattr(generator, "prior", None), shape)


def generator_input_prior(generator: nn.Module, shape: tuple[int, ...]) -> np.ndarray | None:
    """The [0, 1] mean image of the input domain a residual generator carries
    (``ResnetGenerator(input_prior=True)``; None without one). PetSynthError on another
    grid."""
    return _prior_volume(getattr(generator, "input_prior", None), shape)


def _prior_volume(prior: torch.Tensor | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if prior is None:
        return None
    if tuple(prior.shape[-3:]) != tuple(shape):
        raise PetSynthError(
            f"the model's prior is on a {tuple(prior.shape[-3:])} grid, the input is "
            f"{tuple(shape)}"
        )
    return ((prior.detach().float().cpu().numpy() + 1.0) * 0.5).astype(np.float32)


def predict_volume(
    t1w: np.ndarray,
    generator: nn.Module,
    kind: str = "slices",
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    size_multiple: int = 4,
    patch: int = 32,
    keep: int = 16,
    inplane_box: tuple[slice, slice] | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Translate a [0, 1] T1w volume (x, y, z), or the (C, x, y, z) channels of an input
    representation (``synthesis.inputs``), into a [0, 1] PET volume on the same grid.

    Only slices/patches overlapping nonzero input are run through the network (the rest
    is 0). Slices are cropped in-plane to ``inplane_box`` (the training crop, so instance
    normalization sees the same field of view as in training) when it contains all
    nonzero input, else to the input's bounding box, and zero-padded to
    ``size_multiple``. Memory is bounded by ``batch_size`` samples on the device.
    A generator with a prior (``ResnetGenerator(prior_shape=...)``, the diffusion
    samplers with ``prior_shape``) gets the prior's slices or patches at the same
    positions as extra channels (after those of its input-domain mean, if it has one);
    ``prior`` ([0, 1], x, y, z) replaces the generator's own (a participant's
    anatomy-adjusted prior, :func:`model_prior`).
    """
    chans = _as_channels(t1w)
    grid = chans.shape[1:]
    own = generator_prior(generator, grid)
    if prior is not None and own is None:
        raise ValueError("a prior volume was given for a generator without a prior")
    prior = own if prior is None else np.asarray(prior, np.float32)
    input_prior = generator_input_prior(generator, grid)
    out = np.zeros(grid, np.float32)
    nonzero = np.argwhere((chans > 0).any(0))
    if nonzero.size == 0:
        return out
    lo = np.maximum(nonzero.min(0) - 2, 0)
    hi = np.minimum(nonzero.max(0) + 3, grid)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = chans[(slice(None),) + box]
    if kind == "slices":
        # keep the full z range so neighbour slices are real context, not padding
        xy = (box[0], box[1])
        if inplane_box is not None and all(
            b.start <= a.start and a.stop <= b.stop for a, b in zip(xy, inplane_box, strict=True)
        ):
            xy = inplane_box
        zbox = (xy[0], xy[1], slice(None))
        sub = chans[(slice(None),) + zbox]
        samples, (nx, ny) = _pad_inplane(channel_slices(sub), size_multiple)
        prior_samples = None
        if prior is not None:
            priors = [p for p in (input_prior, prior) if p is not None]
            prior_samples = np.concatenate(
                [_pad_inplane(prior_slices(p, zbox), size_multiple)[0] for p in priors], 1
            )
        pred = _batched(generator, samples, batch_size, device, prior_samples)[..., :nx, :ny]
        pred_vol = slices_to_volume(pred)
        zs = np.zeros(grid[2], bool)
        zs[box[2]] = True
        pred_vol[:, :, ~zs] = 0.0
        out[zbox] = pred_vol
    elif kind == "patches":
        patches = channel_patches(sub, patch, keep)
        run = patches.reshape(len(patches), -1).max(1) > 0
        prior_patches = None
        if prior is not None:  # the same patch grid on the same box
            priors = [p[box] for p in (input_prior, prior) if p is not None]
            prior_patches = channel_patches(np.stack(priors), patch, keep)[run]
        pred = np.zeros_like(patches[:, :1])
        if run.any():
            pred[run] = _batched(generator, patches[run], batch_size, device, prior_patches)
        out[box] = patches_to_volume(pred, sub.shape[1:], patch, keep)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return out


def patch_keep(config: dict) -> int:
    """Edge of the central cube kept from each 3D patch when stitching: the config's
    ``patch_keep`` (diffusion models), else half the patch."""
    return int(config.get("patch_keep") or int(config["patch_size"]) // 2)


def predict_with_config(
    t1w: np.ndarray,
    generator: nn.Module,
    config: dict,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    inplane_box: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """``predict_volume`` with the slicing/patching that a model ``config`` implies and
    the prior it describes (:func:`model_prior`)."""
    patches = kind_from_config(config) == "patches"
    return predict_volume(
        t1w,
        generator,
        kind="patches" if patches else "slices",
        batch_size=batch_size,
        device=device,
        size_multiple=int(getattr(generator, "size_multiple", 4)),
        patch=int(config["patch_size"]) if patches else 32,
        keep=patch_keep(config) if patches else 16,
        inplane_box=inplane_box,
        prior=model_prior(t1w, generator, config),
    )


def model_prior(t1w: np.ndarray, generator: nn.Module, config: dict) -> np.ndarray | None:
    """The participant's own prior of a model trained with ``--prior-anatomy`` (config
    ``pv_prior``): the generator's mean PET adjusted to the [0, 1] input channels ``t1w``
    by the partial-volume forward model (``synthesis.pvmodel.participant_prior``);
    None for every other model (the generator's own prior, if any, is used)."""
    spec = config.get("pv_prior")
    if not spec:
        return None
    from .pvmodel import participant_prior

    chans = _as_channels(t1w)
    mean_pet = generator_prior(generator, chans.shape[1:])
    mean_channels = generator_input_prior(generator, chans.shape[1:])
    if mean_pet is None or mean_channels is None or mean_channels.ndim != 4:
        raise PetSynthError("a pv_prior model needs its mean PET and mean input channels")
    return participant_prior(chans, mean_pet, mean_channels, spec)


def prior_summary(card: dict) -> str:
    """One line saying what a model's generator adds its output to (for sidecars and
    reports): nothing, the mean training PET, or that mean adjusted to the participant's
    anatomy by the partial-volume forward model (with its fitted numbers)."""
    config = card.get("config", {})
    if not config.get("prior_shape"):
        return "none: the generator predicts the PET itself"
    spec = config.get("pv_prior")
    if not spec:
        return "the mean training PET; the generator predicts a residual to it"
    return (
        "the mean training PET adjusted to this participant's GM/CSF fractions by the "
        f"partial-volume forward model (WM/GM {float(spec['wm_ratio']):.2f}, CSF/GM "
        f"{float(spec['csf_ratio']):.2f}, gamma {float(spec['gamma']):.2f}); the generator "
        "predicts a residual to it"
    )


def gaussian_smooth(volume: np.ndarray, fwhm_mm: float, zooms: tuple[float, ...]) -> np.ndarray:
    """3D Gaussian smoothing with an isotropic FWHM in mm (0: unchanged)."""
    if not fwhm_mm:
        return volume
    sigma = [fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / z for z in zooms[:3]]
    return ndimage.gaussian_filter(volume, sigma, mode="nearest")


def _resample_to(img: nib.Nifti1Image, ref: nib.Nifti1Image, order: int) -> nib.Nifti1Image:
    from nilearn.image import resample_to_img

    return resample_to_img(
        img,
        ref,
        interpolation="continuous" if order else "nearest",
        force_resample=True,
        copy_header=True,
    )


@with_thread_limits("nthreads")
def synthesize_pet(
    t1w_norm: nib.Nifti1Image,
    mask: nib.Nifti1Image,
    weights: str | Path,
    device: str = "cpu",
    nthreads: int = 1,
    fwhm_mm: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    extra_channels: list[nib.Nifti1Image] | None = None,
) -> tuple[nib.Nifti1Image, dict]:
    """Pseudo-normal FDG PET (SUVR units, 0 outside ``mask``) from a [0, 1] T1w in MNI.

    The T1w is resampled to the model's training grid when its voxel size differs, the
    prediction is rescaled by the card's ``pet_scale`` to SUVR, smoothed with a 3D
    Gaussian of ``fwhm_mm`` (None: the card's tuned ``smoothing_fwhm_mm``, else the
    seed's 1.5 mm) and returned on the input grid. Metadata names the model,
    the weights' sha256 and the settings used.

    ``t1w_norm`` (and ``extra_channels``, same grid) are the channels of the card's input
    representation, already built (:func:`synthesize_from_sources` builds them from a
    participant's files with ``synthesis.inputs.build_model_input``); the output is in
    the space of the input (MNI, or the affine space of an ``"affine"`` model).
    """
    generator, card = load_generator(weights, device)
    return _synthesize(
        [t1w_norm, *(extra_channels or [])],
        mask,
        generator,
        card,
        weights,
        device,
        fwhm_mm,
        batch_size,
    )


@with_thread_limits("nthreads")
def synthesize_from_sources(
    sources,
    weights: str | Path,
    device: str = "cpu",
    nthreads: int = 1,
    fwhm_mm: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[nib.Nifti1Image, dict]:
    """:func:`synthesize_pet` of a participant's ``synthesis.inputs.InputSources``: the
    model input is built in the card's representation (``input.representation``, "mni"
    for older cards) by ``build_model_input``. The pseudo-PET is on the MNI grid, in MNI
    space for "mni"/"mni-jacobian" and in affine space for "affine" (``metadata
    ["InputRepresentation"]`` says which)."""
    from .inputs import build_model_input, card_representation

    generator, card = load_generator(weights, device)
    rep = card_representation(card)
    model_input = build_model_input(rep, sources)
    imgs = [nib.Nifti1Image(c, model_input.affine) for c in model_input.channels]
    mask = nib.Nifti1Image(model_input.mask.astype(np.uint8), model_input.affine)
    return _synthesize(imgs, mask, generator, card, weights, device, fwhm_mm, batch_size)


@with_thread_limits("nthreads")
def synthesize_samples(
    sources,
    weights: str | Path,
    n_samples: int,
    seed: int = 0,
    device: str = "cpu",
    nthreads: int = 1,
    fwhm_mm: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image | None, dict]:
    """``n_samples`` pseudo-normal PETs of a diffusion model (sample ``i`` drawn with the
    noise seed ``seed + i``): their voxelwise mean and SD (population, SUVR, after the
    smoothing; None for one sample), same grid and space as
    :func:`synthesize_from_sources`. ``metadata["SampleSeeds"]`` lists the seeds.

    The model input is built once; PetSynthError for a deterministic (GAN) model with
    ``n_samples`` > 1."""
    from .inputs import build_model_input, card_representation
    from .registry import is_stochastic

    generator, card = load_generator(weights, device)
    if n_samples > 1 and not is_stochastic(card["model"]):
        raise PetSynthError(
            f"{card['model']} is deterministic: more than one sample needs a diffusion model"
        )
    model_input = build_model_input(card_representation(card), sources)
    imgs = [nib.Nifti1Image(c, model_input.affine) for c in model_input.channels]
    mask = nib.Nifti1Image(model_input.mask.astype(np.uint8), model_input.affine)
    seeds = [int(seed) + i for i in range(int(n_samples))]
    total = total_sq = None
    out = meta = None
    for s in seeds:
        if hasattr(generator, "reset_rng"):
            generator.reset_rng(s)
        out, meta = _synthesize(imgs, mask, generator, card, weights, device, fwhm_mm, batch_size)
        data = np.asanyarray(out.dataobj, dtype=np.float64)
        total = data if total is None else total + data
        total_sq = data**2 if total_sq is None else total_sq + data**2
    mean = total / len(seeds)
    if is_stochastic(card["model"]):
        meta = {**meta, "NumberOfSamples": len(seeds), "SampleSeeds": seeds}
    mean_img = nib.Nifti1Image(mean.astype(np.float32), out.affine, out.header)
    if len(seeds) < 2:
        return mean_img, None, meta
    sd = np.sqrt(np.maximum(total_sq / len(seeds) - mean**2, 0.0))
    return mean_img, nib.Nifti1Image(sd.astype(np.float32), out.affine, out.header), meta


def _synthesize(
    channels: list[nib.Nifti1Image],
    mask: nib.Nifti1Image,
    generator: nn.Module,
    card: dict,
    weights: str | Path,
    device: str,
    fwhm_mm: float | None,
    batch_size: int,
) -> tuple[nib.Nifti1Image, dict]:
    from ..determinism import apply_in_process
    from .inputs import card_representation
    from .networks import input_channels

    apply_in_process()  # --deterministic (a Nipype worker: told by the environment)

    rep = card_representation(card)
    if len(channels) != input_channels(card["config"]):
        raise PetSynthError(
            f"the model takes {input_channels(card['config'])} input channel(s) "
            f"({rep} representation), got {len(channels)}"
        )
    spec_in = card["input"]
    fwhm_mm = smoothing_fwhm(card, fwhm_mm)
    original = nib.squeeze_image(channels[0])  # the output goes back on this grid
    canon = [nib.as_closest_canonical(nib.squeeze_image(c)) for c in channels]
    t1w_norm = canon[0]  # z = inferior-superior for slicing
    mask = nib.as_closest_canonical(nib.squeeze_image(mask))
    model_vox = float(spec_in["voxel_size_mm"])
    work, work_mask = canon, mask
    resampled = not np.allclose(t1w_norm.header.get_zooms()[:3], model_vox, atol=1e-3)
    prior_grid = card["config"].get("prior_shape")
    if prior_grid and list(t1w_norm.shape[:3]) != list(prior_grid):
        resampled = True  # a prior lives on the training grid: bring the input there
    if resampled:
        ref = get_template("T1w", int(round(model_vox)))
        work = [_resample_to(c, ref, 1) for c in canon]
        work_mask = _resample_to(mask, ref, 0)
    keep = np.asanyarray(work_mask.dataobj) > 0
    data = np.stack(
        [np.clip(np.nan_to_num(np.asanyarray(c.dataobj, dtype=np.float32)), 0, 1) for c in work]
    )
    data[:, ~keep] = 0.0
    box = None
    trained_box = spec_in.get("training_inplane_box")
    if trained_box and list(spec_in.get("grid_shape", [])) == list(data.shape[1:]):
        box = tuple(slice(int(a), int(b)) for a, b in trained_box)
    model_in = data[0] if len(data) == 1 else data
    pet01 = predict_with_config(model_in, generator, card["config"], device, batch_size, box)
    suvr = pet01 * float(spec_in["pet_scale"])
    zooms = work[0].header.get_zooms()[:3]
    suvr = gaussian_smooth(suvr, fwhm_mm, zooms)
    suvr[~keep] = 0.0
    out = nib.Nifti1Image(suvr.astype(np.float32), work[0].affine)
    if resampled:
        out = _resample_to(out, t1w_norm, 1)
        final = np.asanyarray(out.dataobj, dtype=np.float32) * (np.asanyarray(mask.dataobj) > 0)
        out = nib.Nifti1Image(final, t1w_norm.affine)
    back = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(out.affine),
        nib.orientations.io_orientation(original.affine),
    )
    out = out.as_reoriented(back)
    out.header.set_xyzt_units("mm", "sec")
    meta = {
        "Model": card["model"],
        "ModelCard": Path(weights).with_suffix(".json").name,
        "ModelWeights": Path(weights).name,
        "ModelWeightsSha256": card["sha256"],  # verified against the file on load
        "ModelTrainingData": card.get("training", {}).get("data", "unknown"),
        "InputRepresentation": rep,
        "ModelPrior": prior_summary(card),
        "ModelKeptEpoch": card.get("training", {}).get("best_epoch"),
        "SmoothingFWHM": fwhm_mm,
        "Units": "SUVR",
        "ReferenceRegion": spec_in.get("pet_reference_region", "gm-mean"),
        "Device": device,
    }
    return out, meta


__all__ = [
    "CONTEXT_SLICES",
    "channel_patches",
    "channel_slices",
    "DEFAULT_FWHM_MM",
    "gaussian_smooth",
    "generator_input_prior",
    "generator_prior",
    "model_prior",
    "patch_grid",
    "patch_keep",
    "patches_to_volume",
    "predict_volume",
    "predict_with_config",
    "prior_summary",
    "slices_to_volume",
    "synthesize_from_sources",
    "synthesize_pet",
    "synthesize_samples",
    "volume_to_patches",
    "volume_to_slices",
]
