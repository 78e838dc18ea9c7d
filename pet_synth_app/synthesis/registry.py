"""The synthesis model registry: one home for every model name and its defaults.

Defaults follow the papers (Zotova et al. 2021; Isola et al.; Zhu et al.):
Adam lr 2e-4, beta1 0.5; semi-3D models batch 5, 100 epochs constant lr then 100 of
linear decay; 3D-patch models batch 10, 100 epochs at constant lr, 32^3 patches with
stride 8 for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cyclegan import CycleGAN
from .ddpm3d import DDPM3D
from .model import SynthesisModel, kind_from_config
from .pix2pix import Pix2Pix
from .syndiff import SynDiff

DEFAULT_MODEL = "cyclegan-mse"

_TRAINING = {"lr": 2e-4, "beta1": 0.5, "batch_size": 5, "n_epochs": 100, "n_epochs_decay": 100}
_SEMI3D = {"spatial_dims": 2, "channels": 3, "ngf": 64, "ndf": 64}
_SEMI3D_CYCLE = {
    **_TRAINING,
    **_SEMI3D,
    "n_blocks": 9,
    "lambda_cycle": 10.0,
    "pool_size": 50,
    "prior_shape": None,
    "prior_input": None,
    "pv_prior": None,
    "input_channels": None,
}
# the diffusion models (docs/models.md): 3D patches of 32^3 tiling the volume without
# overlap at inference (patch_keep 32: 27 patches per 2 mm brain; keeping the central 24^3
# runs 64, 2.4x the time of every reverse step), time-
# conditioned 3D U-Net with 8/16/32 channels (diffusion.TimeUNet3D); sizes measured on
# 2 CPU cores in docs/benchmarks.md
_DIFFUSION = {
    **_TRAINING,
    "batch_size": 4,
    "n_epochs_decay": 0,
    "spatial_dims": 3,
    "channels": 1,
    "patch_size": 32,
    "patch_stride": 8,
    "patch_keep": 32,
    "unet_channels": [8, 16, 32],
    "input_channels": None,
    "prior_shape": None,
    "prior_input": None,
}
# prior_shape: grid of the mean-training-image prior (PetSynth's residual option; None in
# the papers): set by ``petsynth-train --prior`` from the training data; prior_input: the
# generators also see the mean image of their input domain (set by --prior; None in
# models trained before it, which see only the output-domain mean); input_channels: image
# channels of the input representation (synthesis.inputs; None = 1, as before issue 14);
# pv_prior: the partial-volume forward model that adjusts the prior to each participant
# (set by --prior-anatomy from the training data, synthesis/pvmodel.py)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class, default hyper-parameters and provenance."""

    name: str
    builder: type[SynthesisModel]
    defaults: dict
    paired: bool  # needs same-subject T1w/PET pairs
    description: str
    citation: str  # key in data/boilerplate.bib that the methods boilerplate cites
    references: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """``"slices"`` (semi-3D) or ``"patches"`` (3D): how inference cuts a volume."""
        return kind_from_config(self.defaults)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "cyclegan-mse",
            CycleGAN,
            {**_SEMI3D_CYCLE, "lambda_mse": 10.0},
            paired=True,
            citation="cyclegan",
            description="semi-3D CycleGAN (ResNet-9 generators, 70x70 PatchGAN, LSGAN, "
            "cycle L1) with the paired MSE term in both directions",
            references=("zotova2021", "zhu2017"),
        ),
        ModelSpec(
            "cyclegan",
            CycleGAN,
            {**_SEMI3D_CYCLE, "lambda_mse": 0.0},
            paired=False,
            citation="cyclegan",
            description="semi-3D CycleGAN without the MSE term (unpaired T1w/PET)",
            references=("zhu2017", "chen2025"),
        ),
        ModelSpec(
            "cyclegan-3dpatch",
            CycleGAN,
            {
                **_TRAINING,
                "batch_size": 10,
                "n_epochs_decay": 0,
                "spatial_dims": 3,
                "channels": 1,
                "ngf": 32,
                "ndf": 32,
                "n_blocks": 2,
                "lambda_cycle": 10.0,
                "lambda_mse": 10.0,
                "pool_size": 50,
                "patch_size": 32,
                "patch_stride": 8,
                "input_channels": None,
            },
            paired=True,
            citation="cyclegan",
            description="3D-patch CycleGAN with MSE (ResNet-2 3D generators on 32^3 "
            "patches; inference keeps the central part of each patch)",
            references=("zotova2021",),
        ),
        ModelSpec(
            "pix2pix",
            Pix2Pix,
            {
                **_TRAINING,
                **_SEMI3D,
                "n_down": 4,
                "lambda_l1": 100.0,
                "gan_mode": "vanilla",
                "input_channels": None,
            },
            paired=True,
            citation="pix2pix",
            description="semi-3D Pix2Pix (U-Net generator, conditional PatchGAN, L1 x100)",
            references=("isola2017",),
        ),
        ModelSpec(
            "ddpm3d",
            DDPM3D,
            {
                **_DIFFUSION,
                "lr": 1e-4,
                "beta1": 0.9,
                "lambda_lap": 0.25,
                "lap_levels": 5,
                "sample_steps": 5,
                "pretrain_steps": 0,
                "prediction_type": "epsilon",
            },
            paired=True,
            citation="mri2pet",
            description="MRI2PET conditional 3D DDPM on 32^3 patches (noise MSE + 0.25 x "
            "Laplacian-pyramid loss, DDIM sampling)",
            references=("mri2pet", "ho2020", "song2021ddim"),
        ),
        ModelSpec(
            "syndiff",
            SynDiff,
            {
                **_DIFFUSION,
                "n_steps": 4,
                "ngf": 8,
                "ndf": 8,
                "n_blocks": 2,
                "lambda_l1": 1.0,
                "lambda_cycle": 0.5,
            },
            paired=False,
            citation="syndiff",
            description="SynDiff adversarial diffusion (4 large reverse steps, step-"
            "conditioned discriminators) with a cycle-consistent non-diffusive module "
            "for unpaired training, 3D patches",
            references=("ozbey2023", "chen2025"),
        ),
    )
}


def model_config(name: str, **overrides) -> dict:
    """The registered defaults of ``name`` with ``overrides`` applied (None ignored)."""
    spec = get_spec(name)
    config = dict(spec.defaults)
    unknown = {k for k, v in overrides.items() if v is not None} - set(config) - {"seed"}
    if unknown:
        raise ValueError(f"{name}: unknown hyper-parameter(s) {sorted(unknown)}")
    config.update({k: v for k, v in overrides.items() if v is not None})
    config["model"] = name
    return config


def get_spec(name: str) -> ModelSpec:
    """The registered spec of ``name`` (ValueError listing the choices otherwise)."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def is_stochastic(name: str) -> bool:
    """Whether model ``name`` samples (a diffusion model: different seeds, different
    pseudo-PETs), so that ``--synthesis-samples`` > 1 makes sense."""
    return get_spec(name).builder in (DDPM3D, SynDiff)


def supports_prior(name: str, input_channels: int = 1) -> bool:
    """Whether model ``name`` takes the mean-training-image prior (``--prior``) with an
    input representation of ``input_channels`` channels."""
    spec = get_spec(name)
    if "prior_shape" not in spec.defaults:
        return False
    return input_channels == 1 or spec.builder.multichannel_prior


def prior_models(input_channels: int = 1) -> list[str]:
    """Names of the models that take a prior (with ``input_channels`` input channels)."""
    return [n for n in MODELS if supports_prior(n, input_channels)]


def build_model(name: str, config: dict | None = None) -> SynthesisModel:
    """Instantiate model ``name`` with ``config`` (default: the registered defaults)."""
    spec = get_spec(name)
    return spec.builder(config if config is not None else model_config(name))


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "build_model",
    "get_spec",
    "is_stochastic",
    "model_config",
    "prior_models",
    "supports_prior",
]
