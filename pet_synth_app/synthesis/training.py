"""Training of the synthesis models on preprocessed control T1w/PET pairs in MNI space.

Volumes are (x, y, z) float32 arrays on the MNI152NLin2009aSym grid of the
preprocessing: the T1w scaled to [0, 1] exactly as at inference
(``normalize_t1_intensity`` of the MNI-space T1w in the MNI brain mask) and the PET in
SUVR divided by ``pet_scale`` and clipped to [0, 1]. Training state (all networks,
optimizers, image pools, RNG) is checkpointed to ``.safetensors`` + JSON every epoch, so
an interrupted run resumes where it stopped and gives the same result.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..analysis.metrics import image_metrics
from ..errors import PetSynthError
from . import pvmodel
from .inference import (
    CONTEXT_SLICES,
    DEFAULT_FWHM_MM,
    channel_slices,
    gaussian_smooth,
    predict_with_config,
    prior_slices,
    volume_to_slices,
)
from .model import SynthesisModel
from .registry import build_model, get_spec, prior_models, supports_prior
from .weights import save_generator

LOGGER = logging.getLogger("petsynth.train")
DEFAULT_PET_SCALE = 2.5  # SUVR mapped to 1.0 (GM-mean SUVR of FDG rarely exceeds ~2)
MIN_SLICE_FRACTION = 0.1  # slices with less brain than this fraction of the largest skip


@dataclass
class Volumes:
    """One participant's training volumes on the MNI grid (x, y, z), in the space of its
    input representation (``synthesis.inputs``: MNI, or the affine space)."""

    name: str
    t1w: np.ndarray  # [0, 1], the first input channel
    pet: np.ndarray | None  # [0, 1] (SUVR / pet_scale); None for T1w-only participants
    mask: np.ndarray  # bool brain mask
    affine: np.ndarray
    pet_suvr: np.ndarray | None = None  # SUVR, for validation metrics
    extra: np.ndarray | None = None  # (C - 1, x, y, z) further input channels, [0, 1]
    representation: str = "mni"

    @property
    def channels(self) -> np.ndarray:
        """The model input: (x, y, z) for one channel, else (C, x, y, z)."""
        if self.extra is None or len(self.extra) == 0:
            return self.t1w
        return np.concatenate([self.t1w[None], self.extra])

    @property
    def masked_channels(self) -> np.ndarray:
        return self.channels * self.mask


def load_participant(
    name: str,
    sources,
    representation: str = "mni",
    pet_scale: float = DEFAULT_PET_SCALE,
    with_pet: bool = True,
) -> Volumes:
    """Model-ready volumes of one participant from its ``synthesis.inputs.InputSources``
    in ``representation``, through ``build_model_input`` (the function inference uses).
    ValueError when a file the representation needs is missing or grids differ."""
    from .inputs import build_model_input

    try:
        mi = build_model_input(representation, sources, with_pet=with_pet)
    except PetSynthError as exc:
        raise ValueError(f"{name}: {exc}") from None
    pet = suvr = None
    if mi.pet_suvr is not None:
        suvr = mi.pet_suvr
        pet = np.clip(suvr / pet_scale, 0.0, 1.0) * mi.mask
    extra = mi.channels[1:] if len(mi.channels) > 1 else None
    return Volumes(name, mi.channels[0], pet, mi.mask, mi.affine, suvr, extra, representation)


def load_volumes(
    name: str,
    t1w_std: str | Path,
    mask_std: str | Path,
    pet_std: str | Path | None,
    pet_scale: float = DEFAULT_PET_SCALE,
) -> Volumes:
    """Model-ready volumes from MNI-space derivatives (T1w, brain mask, SUVR PET): the
    ``"mni"`` representation of :func:`load_participant`."""
    from .inputs import InputSources

    sources = InputSources(t1w_std=t1w_std, mask_std=mask_std, pet_std=pet_std)
    return load_participant(name, sources, "mni", pet_scale)


# ------------------------------------------------------------------ sampling
def _slice_indices(mask: np.ndarray) -> np.ndarray:
    area = mask.sum((0, 1))
    return np.flatnonzero(area >= MIN_SLICE_FRACTION * max(area.max(), 1))


def inplane_box(volumes: list[Volumes], multiple: int) -> tuple[slice, slice]:
    """The union in-plane bounding box of the brain masks, grown to ``multiple``."""
    union = np.any([v.mask.any(2) for v in volumes], axis=0)
    idx = np.argwhere(union)
    lo, hi = idx.min(0), idx.max(0) + 1
    out = []
    for a, b, n in zip(lo, hi, union.shape, strict=True):
        size = min(int(math.ceil((b - a) / multiple) * multiple), n - n % multiple)
        start = int(min(max(0, (a + b - size) // 2), n - size))
        out.append(slice(start, start + size))
    return out[0], out[1]


@dataclass
class SampleSet:
    """All training samples of one epoch (T1w and PET stacks, aligned when paired)."""

    t1w: np.ndarray
    pet: np.ndarray
    sources: list[str] = field(default_factory=list)
    z_t1w: np.ndarray | None = None  # axial index of each T1w sample (slices only)
    z_pet: np.ndarray | None = None  # axial index of each PET sample (slices only)
    corners: np.ndarray | None = None  # (n, 3) first voxel of each patch (patches only)
    prior_t1w: np.ndarray | None = None  # each T1w sample's participant prior (slices)
    prior_pet: np.ndarray | None = None  # each PET sample's participant prior (slices)


def slice_samples(
    volumes: list[Volumes],
    box: tuple[slice, slice],
    paired: bool = True,
    priors: list[np.ndarray] | None = None,
) -> SampleSet:
    """Semi-3D samples (n, 3, bx, by): every brain slice of the volumes.

    Paired: T1w and PET stacks of the volumes with PET, aligned sample by sample.
    Unpaired: T1w stacks of every volume (T1w-only ones too) and PET stacks of the
    volumes with PET, of different lengths. ``priors`` (one (x, y, z) volume per
    participant, ``--prior-anatomy``): their slices at every T1w and PET sample.
    """
    t1s, pets, src, z_t1, z_pet, pr_t1, pr_pet = [], [], [], [], [], [], []
    for i, v in enumerate(volumes):
        if v.pet is None and paired:
            continue
        zs = _slice_indices(v.mask)
        chans = v.channels if v.channels.ndim == 4 else v.channels[None]
        t1s.append(channel_slices(chans[(slice(None),) + box], CONTEXT_SLICES)[zs])
        z_t1.append(zs)
        own = None if priors is None else volume_to_slices(priors[i][box], CONTEXT_SLICES)[zs]
        pr_t1.append(own)
        if v.pet is not None:
            pets.append(volume_to_slices(v.pet[box], CONTEXT_SLICES)[zs])
            z_pet.append(zs)
            pr_pet.append(own)
        src += [f"{v.name}:z{z}" for z in zs]
    if not t1s or not pets:
        raise PetSynthError("no training slices (no brain voxels or no PET)")
    return SampleSet(
        np.concatenate(t1s),
        np.concatenate(pets),
        src,
        np.concatenate(z_t1),
        np.concatenate(z_pet),
        prior_t1w=None if priors is None else np.concatenate(pr_t1),
        prior_pet=None if priors is None else np.concatenate(pr_pet),
    )


def _fit_pv_prior(
    model_name: str, prior: bool, representation: str, volumes: list[Volumes]
) -> dict:
    """The ``pv_prior`` config entry of ``--prior-anatomy`` (``pvmodel.fit_prior_spec``
    on the training volumes with PET); PetSynthError when the model or the input
    representation cannot take it."""
    from .inputs import REPRESENTATIONS

    names = REPRESENTATIONS[representation]["channels"]
    if not prior:
        raise PetSynthError("--prior-anatomy adjusts the mean-image prior: it needs --prior")
    if (
        get_spec(model_name).kind != "slices"
        or not get_spec(model_name).builder.multichannel_prior
    ):
        raise PetSynthError(
            f"--prior-anatomy: {model_name} does not take an anatomy-adjusted prior (the "
            "semi-3D CycleGANs do)"
        )
    if not {"pv_gm", "pv_csf"} <= set(names):
        raise PetSynthError(
            f"--prior-anatomy needs the GM and CSF fractions of the mni-pv input "
            f"representation, not {representation}"
        )
    with_pet = [v for v in volumes if v.pet is not None]
    if len(with_pet) < 3:
        raise PetSynthError("--prior-anatomy needs >= 3 training participants with PET")
    spec = pvmodel.fit_prior_spec(
        [v.pet for v in with_pet],
        [v.masked_channels for v in with_pet],
        [v.mask for v in with_pet],
        names,
    )
    LOGGER.info(
        "partial-volume prior fitted on %d controls: WM/GM %.2f, CSF/GM %.2f, gamma %.1f",
        len(with_pet),
        spec["wm_ratio"],
        spec["csf_ratio"],
        spec["gamma"],
    )
    return spec


def mean_images(volumes: list[Volumes]) -> tuple[np.ndarray, np.ndarray]:
    """Voxelwise mean [0, 1] T1w (all volumes) and PET (volumes with PET), each over the
    participants whose brain mask contains the voxel (0 where none does), so the brain
    edge is not diluted by zeros: the priors of a residual model (running sums). With a
    multi-channel input representation the T1w mean is (C, x, y, z), one per channel."""
    if not any(v.pet is not None for v in volumes):
        raise PetSynthError("a prior needs training participants with PET")
    shape = volumes[0].t1w.shape
    t1 = np.zeros(volumes[0].channels.shape, np.float64)
    pet = np.zeros(shape, np.float64)
    n_t1, n_pet = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for v in volumes:
        if v.t1w.shape != shape:
            raise PetSynthError(f"{v.name}: MNI grid {v.t1w.shape} differs from {shape}")
        if v.channels.shape != t1.shape:
            raise PetSynthError(f"{v.name}: input channels {v.channels.shape} differ")
        t1 += v.channels * v.mask
        n_t1 += v.mask
        if v.pet is not None:
            pet += v.pet * v.mask
            n_pet += v.mask
    return (
        (t1 / np.maximum(n_t1, 1)).astype(np.float32),
        (pet / np.maximum(n_pet, 1)).astype(np.float32),
    )


def patch_samples(
    volumes: list[Volumes], patch: int, stride: int, max_per_volume: int | None, seed: int
) -> SampleSet:
    """3D samples (n, 1, p, p, p) on a ``stride`` grid whose centre voxel is in the brain."""
    rng = np.random.default_rng(seed)
    t1s, pets, src, corners = [], [], [], []
    half = patch // 2
    for v in volumes:
        if v.pet is None:
            continue
        shape = np.array(v.mask.shape)
        starts = [np.arange(0, max(n - patch, 0) + 1, stride) for n in shape]
        grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, 3)
        centres = grid + half
        grid = grid[v.mask[centres[:, 0], centres[:, 1], centres[:, 2]]]
        if max_per_volume and len(grid) > max_per_volume:
            grid = grid[np.sort(rng.choice(len(grid), max_per_volume, replace=False))]
        chans = v.channels if v.channels.ndim == 4 else v.channels[None]
        for i, j, k in grid:
            sl = (slice(i, i + patch), slice(j, j + patch), slice(k, k + patch))
            t1s.append(chans[(slice(None),) + sl])
            pets.append(v.pet[sl][None])
            src.append(f"{v.name}:{i},{j},{k}")
            corners.append((i, j, k))
    if not t1s:
        raise PetSynthError(f"no {patch}^3 training patch is centred in a brain mask")
    return SampleSet(np.stack(t1s), np.stack(pets), src, corners=np.array(corners))


def patches_at(volume: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
    """(n, 1, p, p, p) patches of an (x, y, z) ``volume`` at ``corners`` (n, 3), the
    positions ``patch_samples`` drew (``SampleSet.corners``): prior patches of a batch."""
    return np.stack([volume[i : i + patch, j : j + patch, k : k + patch] for i, j, k in corners])[
        :, None
    ]


# ------------------------------------------------------------------ checkpoints
def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    state = opt.state_dict()
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{prefix}.state.{idx}.{key}"] = t.detach().cpu().contiguous()
    return {"param_groups": state["param_groups"]}


def _unflatten_optimizer(prefix: str, meta: dict, tensors: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + ".state."):
            idx, key = name[len(prefix) + 7 :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: Path, model: SynthesisModel, optimizers: dict, extra: dict) -> None:
    """Full training state as ``path`` (.safetensors) + ``path.json`` (no pickle)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"extra": extra, "optimizers": {}, "pools": {}}
    for name, opt in optimizers.items():
        meta["optimizers"][name] = _flatten_optimizer(f"opt.{name}", opt, tensors)
    for pname in ("pool_A", "pool_B"):
        pool = getattr(model, pname, None)
        if pool is not None:
            meta["pools"][pname] = len(pool.images)
            for i, img in enumerate(pool.images):
                tensors[f"{pname}.{i}"] = img.cpu().contiguous()
    rng = getattr(model, "_rng", None)
    if rng is not None:
        tensors["rng.model"] = rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    # both files are written to temporaries first; the JSON (epoch, best score) is put in
    # place before the tensors so a kill never pairs new tensors with an older epoch count
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=1))
    tmp_json.replace(path.with_suffix(".json"))
    tmp.replace(path)


def load_checkpoint(path: Path, model: SynthesisModel, optimizers: dict) -> dict:
    """Restore a ``save_checkpoint`` state into ``model``/``optimizers``; returns extra."""
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(f"opt.{name}", meta["optimizers"][name], tensors))
    device = next(model.parameters()).device
    for pname, n in meta["pools"].items():
        getattr(model, pname).images = [tensors[f"{pname}.{i}"].to(device) for i in range(n)]
    if "rng.model" in tensors:
        model._rng.set_state(tensors["rng.model"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["extra"]


# ------------------------------------------------------------------ training
@dataclass
class TrainResult:
    """Outcome of one training run."""

    weights: Path
    card: dict
    history: list[dict]
    best_epoch: int
    best_metrics: dict


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """CycleGAN schedule: 1 for ``n_epochs`` epochs, then linear decay towards 0
    (never negative when training runs past the schedule)."""
    return max(0.0, 1.0 - max(0, epoch - n_epochs + 1) / float(n_epochs_decay + 1))


def predict_pet_suvr(
    model: SynthesisModel,
    v: Volumes,
    pet_scale: float,
    fwhm_mm: float,
    device: str,
    inplane_box: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """Full-volume SUVR prediction as at inference (stack, rescale, smooth, mask)."""
    model.eval()
    pred = predict_with_config(
        v.masked_channels, model.generator, model.config, device, inplane_box=inplane_box
    )
    zooms = np.sqrt((v.affine[:3, :3] ** 2).sum(0))
    suvr = gaussian_smooth(pred * pet_scale, fwhm_mm, tuple(zooms))
    model.train()
    return suvr * v.mask


def validate(
    model: SynthesisModel,
    volumes: list[Volumes],
    pet_scale: float,
    fwhm_mm: float,
    device: str,
    inplane_box: tuple[slice, slice] | None = None,
) -> dict[str, float]:
    """Mean SSIM/PSNR/RMSE/MAE (in-brain, [0, 1]-scaled) over validation volumes."""
    rows = [
        image_metrics(
            predict_pet_suvr(model, v, pet_scale, fwhm_mm, device, inplane_box), v.pet_suvr, v.mask
        )
        for v in volumes
        if v.pet is not None
    ]
    if not rows:
        return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


FWHM_CANDIDATES_MM = tuple(float(f) for f in np.arange(0.0, 6.01, 0.5))
"""Smoothing FWHMs (mm) tried by ``tune_smoothing``: Zotova et al. 2021 swept 0-3 mm and found 1.5
best on its scanner; the range is extended to 6 mm for PET of lower resolution."""


def tune_smoothing(
    weights: Path,
    val_volumes: list[Volumes],
    device: str = "cpu",
    candidates: tuple[float, ...] = FWHM_CANDIDATES_MM,
) -> dict:
    """Choose the Gaussian FWHM applied after restacking on the validation volumes.

    Predicts each validation volume once with the saved model, smooths it with every
    candidate FWHM (mm), and moves from the FWHM used during training to another only if
    that raises the mean SSIM without lowering the PSNR (:func:`is_better`, candidates in
    increasing order). Writes the result into the card (``input.smoothing_fwhm_mm``,
    ``validation_metrics`` at that FWHM, the sweep under ``training.smoothing_sweep``).
    Returns the updated card. The weights (and their sha256) are unchanged.
    """
    from .weights import card_path, load_generator

    generator, card = load_generator(weights, device)
    pet_scale = float(card["input"]["pet_scale"])
    trained_box = card["input"].get("training_inplane_box")
    box = tuple(slice(int(a), int(b)) for a, b in trained_box) if trained_box else None
    preds = []
    for v in val_volumes:
        if v.pet is None:
            continue
        pred = predict_with_config(
            v.masked_channels, generator, card["config"], device, inplane_box=box
        )
        preds.append((v, pred * pet_scale))
    sweep = []
    for fwhm in candidates:
        rows = []
        for v, pred in preds:
            zooms = tuple(np.sqrt((v.affine[:3, :3] ** 2).sum(0)))
            rows.append(
                image_metrics(gaussian_smooth(pred, fwhm, zooms) * v.mask, v.pet_suvr, v.mask)
            )
        sweep.append(
            {"fwhm_mm": fwhm, **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}}
        )
    trained = card["input"].get("smoothing_fwhm_mm")  # the FWHM validated during training
    best = next((r for r in sweep if r["fwhm_mm"] == trained), sweep[0])
    for row in sweep:
        if is_better(row, {"ssim": best["ssim"], "metrics": best}):
            best = row
    card["input"]["smoothing_fwhm_mm"] = best["fwhm_mm"]
    card["validation_metrics"] = {k: v for k, v in best.items() if k != "fwhm_mm"}
    card["training"]["smoothing_sweep"] = sweep
    card_path(weights).write_text(json.dumps(card, indent=2) + "\n")
    LOGGER.info(
        "smoothing tuned on validation SSIM and PSNR: %.1f mm FWHM (SSIM %.4f, PSNR %.2f)",
        best["fwhm_mm"],
        best["ssim"],
        best["psnr"],
    )
    return card


def run_fingerprint(
    model_name: str,
    config: dict,
    train_v: list[Volumes],
    val_v: list[Volumes],
    paired: bool,
    pet_scale: float,
) -> dict:
    """What must not change between an interrupted run and its resumption (the epoch
    schedule may: a finished run can be extended with a longer one)."""
    schedule = {"n_epochs", "n_epochs_decay"}
    reps = {v.representation for v in train_v + val_v} - {"mni"}
    # unset options (None) and the "mni" input are left out, so runs of versions without
    # them still resume
    return {
        **({"input_representation": sorted(reps)} if reps else {}),
        "model": model_name,
        "config": {
            k: config[k] for k in sorted(config) if k not in schedule and config[k] is not None
        },
        "train": [v.name for v in train_v],
        "validation": [v.name for v in val_v],
        "paired": paired,
        "pet_scale": pet_scale,
    }


def train(
    model_name: str,
    config: dict,
    train_volumes: list[Volumes],
    val_volumes: list[Volumes],
    out_dir: Path,
    *,
    epochs: int | None = None,
    paired: bool = True,
    patience: int = 0,
    seed: int = 0,
    device: str = "cpu",
    pet_scale: float = DEFAULT_PET_SCALE,
    fwhm_mm: float = DEFAULT_FWHM_MM,
    max_patches: int | None = None,
    max_steps_per_epoch: int | None = None,
    resume: bool = True,
    card_extra: dict | None = None,
    progress: Callable | None = None,
    tune_fwhm: bool = True,
    prior: bool = False,
    prior_anatomy: bool = False,
) -> TrainResult:
    """Train ``model_name``, write ``out_dir/model.safetensors`` (kept epoch: :func:`is_better`).

    Every epoch writes ``checkpoints/last.safetensors`` (full state) and a row of
    ``training_log.tsv``. With ``resume`` an existing checkpoint continues the run.
    ``patience`` > 0 stops after that many epochs without a better validation SSIM.
    With ``tune_fwhm`` the best model's post-stacking smoothing is then chosen on the
    validation SSIM (``tune_smoothing``, the protocol of Zotova et al. 2021).
    ``prior``: the generators predict a residual to the mean training image
    (``mean_images``, stored with the weights; the semi-3D CycleGANs and the diffusion
    models, whose samples are then residuals to it). ``prior_anatomy`` (semi-3D
    CycleGANs on an input representation with GM/CSF fractions, ``mni-pv``): each
    participant's prior is the mean PET adjusted to its own anatomy by the
    partial-volume forward model (``synthesis.pvmodel``; its three numbers fitted on the
    training controls by leave-one-out, stored in the config as ``pv_prior``), and the
    untrained generator (its prior alone) is validated as epoch 0: the saved model is
    never worse on validation than the prior it started from.
    """
    spec = get_spec(model_name)
    if spec.paired and not paired:
        raise ValueError(f"{model_name} needs paired T1w/PET")
    reps = {v.representation for v in train_volumes + val_volumes}
    if len(reps) > 1:
        raise PetSynthError(f"training volumes mix input representations {sorted(reps)}")
    representation = reps.pop() if reps else "mni"
    n_in = 1 if train_volumes[0].extra is None else 1 + len(train_volumes[0].extra)
    if n_in > 1:
        config = {**config, "input_channels": n_in}
    if prior:
        if not supports_prior(model_name):
            raise PetSynthError(
                f"{model_name} does not take a prior ({', '.join(prior_models())} do)"
            )
        if n_in > 1 and not supports_prior(model_name, n_in):
            raise PetSynthError(
                f"{model_name} takes a prior only with a single-channel input, not the "
                f"{n_in}-channel {representation} ({', '.join(prior_models(n_in))} do)"
            )
        config = {
            **config,
            "prior_shape": [int(n) for n in train_volumes[0].t1w.shape],
            "prior_input": True,
        }
    if prior_anatomy:
        config = {
            **config,
            "pv_prior": _fit_pv_prior(model_name, prior, representation, train_volumes),
        }
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = {**config, "seed": seed}
    model = build_model(model_name, config).to(device)
    model.train()
    optimizers = model.make_optimizers()
    n_epochs, n_decay = int(config["n_epochs"]), int(config["n_epochs_decay"])
    total = epochs if epochs is not None else n_epochs + n_decay
    batch = int(config["batch_size"])

    if model.uses_prior:
        prior_t1, prior_pet = mean_images(train_volumes)
        model.set_priors(torch.from_numpy(prior_t1 * 2 - 1), torch.from_numpy(prior_pet * 2 - 1))
    own_priors = None
    if config.get("pv_prior"):  # each participant's anatomy-adjusted prior, [0, 1]
        t1_mean, pet_mean = (p.detach().cpu().numpy() * 0.5 + 0.5 for p in model.prior_volumes())
        pv_spec = config["pv_prior"]
        own_priors = [  # in [-1, 1], as the generators see their priors
            pvmodel.participant_prior(v.masked_channels, pet_mean, t1_mean, pv_spec) * 2 - 1
            for v in train_volumes
        ]
    if model.kind == "slices":
        box = inplane_box(train_volumes, model.size_multiple)
        samples = slice_samples(train_volumes, box, paired, own_priors)
    else:
        box = None
        samples = patch_samples(
            train_volumes,
            int(config["patch_size"]),
            int(config["patch_stride"]),
            max_patches,
            seed,
        )
    n, n_pet = len(samples.t1w), len(samples.pet)
    LOGGER.info("%s: %d training samples from %d volume(s)", model_name, n, len(train_volumes))

    history: list[dict] = []
    start_epoch, best = 0, {"epoch": -1, "ssim": -math.inf, "metrics": {}}
    stopped = False
    fingerprint = run_fingerprint(
        model_name, model.config, train_volumes, val_volumes, paired, pet_scale
    )
    last = ckpt_dir / "last.safetensors"
    if resume and last.is_file():
        try:
            previous = json.loads(last.with_suffix(".json").read_text())["extra"]
        except (OSError, ValueError, KeyError):
            previous = {}
        if "fingerprint" not in previous:
            LOGGER.warning(
                "checkpoint without a run fingerprint (older PetSynth): resuming "
                "without checking that the settings are the same"
            )
        elif previous["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise PetSynthError(
                "the checkpoint belongs to a run with other settings or participants; "
                "rerun with the same options or pass --no-resume to start over",
                str(last),
            )
        extra = load_checkpoint(last, model, optimizers)
        start_epoch, best, history = extra["next_epoch"], extra["best"], extra["history"]
        stopped = bool(extra.get("stopped"))
        LOGGER.info(
            "resuming %s at epoch %d%s",
            model_name,
            start_epoch + 1,
            " (it had stopped early: nothing to do)" if stopped else "",
        )

    prior_samples = None
    if model.uses_prior:  # from the buffers, which a resumed checkpoint has restored
        # (T1w, PET) prior volumes in [-1, 1]; a model without the T1w one gets the PET's
        # in its place, unused
        vols = [p.detach().cpu().numpy() for p in model.prior_volumes() if p is not None]
        vols = vols if len(vols) == 2 else vols * 2
        if model.kind == "slices":
            prior_samples = tuple(prior_slices(p, box) for p in vols)
        else:
            prior_samples = tuple(vols)

    def save_best(best: dict) -> dict:
        """Save the generator as the run's model with its card; return the card."""
        card = _card(
            model_name,
            model.config,
            pet_scale,
            fwhm_mm,
            train_volumes,
            val_volumes,
            paired,
            seed,
            history,
            best,
            box,
            card_extra,
            representation,
        )
        return save_generator(model.generator, out_dir / "model.safetensors", card)

    card = None
    if own_priors is not None and start_epoch == 0 and val_volumes:
        # epoch 0: the untrained residual generator returns its prior, the partial-volume
        # forward model; an epoch is kept only if it does better on validation
        t0 = time.time()
        metrics = validate(model, val_volumes, pet_scale, fwhm_mm, device, box)
        history.append(
            {
                "epoch": 0,
                **{f"val_{k}": v for k, v in metrics.items()},
                "seconds": round(time.time() - t0, 2),
            }
        )
        best = {"epoch": 0, "ssim": metrics["ssim"], "metrics": metrics}
        card = save_best(best)
        LOGGER.info(
            "epoch 0 (the partial-volume prior alone): val SSIM %.4f PSNR %.2f",
            metrics["ssim"],
            metrics["psnr"],
        )
    for epoch in range(start_epoch, 0 if stopped else total):
        t0 = time.time()
        factor = lr_factor(epoch, n_epochs, n_decay)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] = float(config["lr"]) * factor
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        pet_order = (
            order
            if paired
            else torch.randperm(
                n_pet, generator=torch.Generator().manual_seed(seed + 7 * epoch + 1)
            )
        )
        steps = math.ceil(n / batch)
        if max_steps_per_epoch:
            steps = min(steps, max_steps_per_epoch)
        sums: dict[str, float] = {}
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch].numpy()
            pidx = pet_order[np.arange(step * batch, step * batch + len(idx)) % n_pet].numpy()
            t1 = torch.from_numpy(samples.t1w[idx]).to(device) * 2 - 1
            pet = torch.from_numpy(samples.pet[pidx]).to(device) * 2 - 1
            priors = None
            if samples.prior_t1w is not None:  # the T1w prior by slice, the PET's own
                priors = tuple(
                    (
                        torch.from_numpy(prior_samples[0][z]).to(device),
                        torch.from_numpy(own[i]).to(device),
                    )
                    for z, own, i in (
                        (samples.z_t1w[idx], samples.prior_t1w, idx),
                        (samples.z_pet[pidx], samples.prior_pet, pidx),
                    )
                )
            elif prior_samples is not None and model.kind == "slices":
                priors = tuple(
                    tuple(torch.from_numpy(p[z]).to(device) for p in prior_samples)
                    for z in (samples.z_t1w[idx], samples.z_pet[pidx])
                )
            elif prior_samples is not None:  # the patches at the samples' positions
                patch = int(config["patch_size"])
                priors = tuple(
                    tuple(
                        torch.from_numpy(patches_at(p, samples.corners[i], patch)).to(device)
                        for p in prior_samples
                    )
                    for i in (idx, pidx)
                )
            losses = model.train_step(t1, pet, optimizers, paired=paired, priors=priors)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress:
                progress(epoch, step + 1, steps, losses)
        metrics = validate(model, val_volumes, pet_scale, fwhm_mm, device, box)
        row = {
            "epoch": epoch + 1,
            "lr": float(config["lr"]) * factor,
            "steps": steps,
            **{f"loss_{k}": v / steps for k, v in sums.items()},
            **{f"val_{k}": v for k, v in metrics.items()},
            "seconds": round(time.time() - t0, 2),
        }
        history.append(row)
        score = metrics.get("ssim", -float(sums.get("G", 0.0)) / steps)
        improved = is_better({**metrics, "ssim": score}, best)
        if improved:
            best = {"epoch": epoch + 1, "ssim": score, "metrics": metrics}
            card = save_best(best)
        _write_log(out_dir / "training_log.tsv", history)
        stopped = bool(patience) and epoch + 1 - best["epoch"] >= patience
        save_checkpoint(
            last,
            model,
            optimizers,
            {
                "next_epoch": epoch + 1,
                "best": best,
                "history": history,
                "fingerprint": fingerprint,
                "stopped": stopped,
            },
        )
        LOGGER.info(
            "epoch %d/%d  %s  val SSIM %.4f PSNR %.2f  (%.0f s)%s",
            epoch + 1,
            total,
            "  ".join(f"{k} {v / steps:.4f}" for k, v in sums.items() if k in ("G", "D", "D_B")),
            metrics.get("ssim", float("nan")),
            metrics.get("psnr", float("nan")),
            row["seconds"],
            "  *best*" if improved else "",
        )
        if stopped:
            LOGGER.info(
                "early stopping: no better validation SSIM and PSNR for %d epochs", patience
            )
            break
    weights = out_dir / "model.safetensors"
    if not weights.is_file():
        raise PetSynthError("training produced no model (zero epochs?)", str(out_dir))
    # the card's history covers the whole run, not only up to the best epoch
    card = json.loads(weights.with_suffix(".json").read_text())
    _merge_card(card, card_extra)  # e.g. a resumed run's new description
    card["training"]["epochs_run"] = len(history)
    card["training"]["history"] = history
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    if val_volumes and tune_fwhm:
        card = tune_smoothing(weights, val_volumes, device)
    best_metrics = card.get("validation_metrics", best["metrics"])
    return TrainResult(weights, card, history, best["epoch"], best_metrics)


def is_better(metrics: dict, best: dict) -> bool:
    """Whether an epoch's validation ``metrics`` (``ssim``, optional ``psnr`` in dB) beat
    the ``best`` so far (``{"ssim": ..., "metrics": {...}}``): a higher SSIM that does not
    cost PSNR. An epoch that trades PSNR for a slightly higher SSIM is not kept (measured:
    such an epoch cost 0.23 dB held out for +0.0002 validation SSIM, docs/benchmarks.md)."""
    if metrics["ssim"] <= best["ssim"]:
        return False
    psnr, best_psnr = metrics.get("psnr"), best.get("metrics", {}).get("psnr")
    return psnr is None or best_psnr is None or psnr >= best_psnr


def _card(
    name,
    config,
    pet_scale,
    fwhm_mm,
    train_v,
    val_v,
    paired,
    seed,
    history,
    best,
    box,
    extra,
    representation="mni",
) -> dict:
    from .inputs import card_fields, card_space

    spec = get_spec(name)
    zooms = np.sqrt((train_v[0].affine[:3, :3] ** 2).sum(0))
    card = {
        "model": name,
        "description": spec.description,
        "references": list(spec.references),
        "config": {k: v for k, v in config.items()},
        "input": {
            "space": card_space(representation),
            **card_fields(representation),
            "voxel_size_mm": float(zooms[0]),
            "grid_shape": list(train_v[0].t1w.shape),
            "t1w_normalization": "robust min-max (0.5-99.5 percentiles in the brain mask) "
            "to [0, 1], zero outside the brain",
            "context_slices": CONTEXT_SLICES if spec.kind == "slices" else 1,
            "pet_units": "SUVR",
            "pet_scale": pet_scale,
            "smoothing_fwhm_mm": fwhm_mm,
            "training_inplane_box": [[box[0].start, box[0].stop], [box[1].start, box[1].stop]]
            if box
            else None,
            "prior": (
                "voxelwise mean [0, 1] PET of the training participants (tensor "
                "`prior` of the weights); the generator predicts a residual to it"
                + (
                    "; it also sees the mean [0, 1] T1w (tensor `input_prior`"
                    + (
                        f", one mean per input channel: {config['input_channels']} x grid)"
                        if int(config.get("input_channels") or 1) > 1
                        else ")"
                    )
                    if config.get("prior_input")
                    else ""
                )
                + (
                    "; each participant's prior is that mean adjusted to its own GM/CSF "
                    "fractions by the partial-volume forward model of config.pv_prior "
                    "(synthesis/pvmodel.py)"
                    if config.get("pv_prior")
                    else ""
                )
            )
            if config.get("prior_shape")
            else None,
        },
        "training": {
            "data": "unknown",
            "paired": paired,
            "participants": [v.name for v in train_v],
            "validation_participants": [v.name for v in val_v],
            "n_train": len(train_v),
            "n_validation": len(val_v),
            "random_seed": seed,
            "best_epoch": best["epoch"],
        },
        "validation_metrics": best["metrics"],
    }
    return _merge_card(card, extra)


def _merge_card(card: dict, extra: dict | None) -> dict:
    """Update ``card`` with ``extra`` (one level deep for dict sections) in place."""
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key].update(value)
        else:
            card[key] = value
    return card


def _write_log(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, keys, delimiter="\t", restval="n/a")
        writer.writeheader()
        writer.writerows(history)


__all__ = [
    "DEFAULT_PET_SCALE",
    "SampleSet",
    "TrainResult",
    "Volumes",
    "inplane_box",
    "load_checkpoint",
    "load_participant",
    "load_volumes",
    "lr_factor",
    "mean_images",
    "patch_samples",
    "patches_at",
    "predict_pet_suvr",
    "save_checkpoint",
    "slice_samples",
    "train",
    "tune_smoothing",
    "validate",
]
