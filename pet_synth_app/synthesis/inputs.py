"""Input representations of the synthesis models: what the network sees of a T1w.

One function, :func:`build_model_input`, turns a participant's preprocessing outputs
(workflow outputs or derivatives, :class:`InputSources`) into the model's input channels;
training (``training.load_participant``/``load_volumes``), inference
(``inference.synthesize_from_sources``) and the workflow all go through it, for every model
of the registry. The model card records the representation (``input.representation``;
cards without it mean ``"mni"``).

Representations (``REPRESENTATIONS``):

- ``"mni"`` (cards before issue 14): the T1w after the full nonlinear (SyN) registration
  to MNI. SyN removes most individual anatomy (atrophy, thickness, ventricle size) while
  the PET warped the same way keeps its partial-volume consequences.
- ``"affine"``: the T1w resampled with the *affine stage only* onto the MNI grid (the
  "affine space"), so the individual anatomy stays. The model predicts the PET in affine
  space; the workflow takes it to MNI with the nonlinear warp and to T1w space with the
  inverse affine, the same transforms as the real PET's. The training target PET is the
  T1w-space PET through the affine (or, without it, the MNI PET through the inverse warp).
- ``"mni-jacobian"``: the MNI T1w plus two channels that keep volume information as in
  VBM: the log-Jacobian determinant of the T1w -> MNI warp (``0.5 + log J``, clipped to
  [0, 1]) and the Jacobian-modulated GM (``GM_mni * J / 2``, clipped to [0, 1]).
- ``"mni-pv"``: the MNI T1w plus the participant's own GM and CSF *volume fractions*
  (``preproc.anat.partial_volume_fractions``), blurred in T1w space by a Gaussian of
  ``PV_FWHM_MM`` (a PET-like resolution) and only then taken to MNI by the T1w -> MNI
  transforms: the same order of blur and warp as the real PET's, so the partial-volume
  loss of a thin or atrophied cortex (which SyN stretches back to template thickness)
  stays visible. Measured in docs/benchmarks.md ("Anatomy-aware synthesis inputs").

All channels are float32 in [0, 1], 0 outside the brain mask, on the MNI grid.
Interpolation: linear for images and the PET, nearest neighbour for the brain mask.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import PetSynthError

DEFAULT_REPRESENTATION = "mni"
PV_FWHM_MM = 6.0
"""Blur of the tissue fractions of ``"mni-pv"`` in T1w space (mm FWHM): a typical FDG PET
resolution after reconstruction (the phantoms' PSF is 5-6 mm)."""
REPRESENTATIONS: dict[str, dict] = {
    "mni": {
        "channels": ["t1w_mni"],
        "space": "mni",
        "description": "T1w after nonlinear (SyN) registration to MNI, [0, 1]",
    },
    "affine": {
        "channels": ["t1w_affine"],
        "space": "affine",
        "description": "T1w resampled with the affine stage only onto the MNI grid, "
        "[0, 1]; the prediction is taken to MNI by the nonlinear warp and to T1w space "
        "by the inverse affine",
    },
    "mni-jacobian": {
        "channels": ["t1w_mni", "log_jacobian", "gm_modulated"],
        "space": "mni",
        "description": "MNI T1w [0, 1]; 0.5 + log det Jacobian of the T1w->MNI warp, "
        "clipped to [0, 1]; Jacobian-modulated MNI GM / 2, clipped to [0, 1]",
    },
    "mni-pv": {
        "channels": ["t1w_mni", "pv_gm", "pv_csf"],
        "space": "mni",
        "description": "MNI T1w [0, 1]; GM and CSF volume fractions of the T1w voxels "
        f"(partial-volume mixing model), blurred in T1w space by a {PV_FWHM_MM:g} mm FWHM "
        "Gaussian, "
        "then taken to MNI by the T1w->MNI transforms, [0, 1]",
    },
}


def needs_registration_stages(representation: str) -> bool:
    """Whether the representation needs the registration's stages (the affine and the
    nonlinear warp apart), not only the composite T1w <-> MNI transforms that
    sMRIPrep/fMRIPrep write: their transforms can be reused (``--derivatives``) only
    when it does not."""
    return check_representation(representation) in ("affine", "mni-jacobian")


def check_representation(name: str) -> str:
    """``name`` if it is a known representation, else PetSynthError listing them."""
    if name not in REPRESENTATIONS:
        raise PetSynthError(
            f"unknown input representation {name!r}; choose from {', '.join(REPRESENTATIONS)}"
        )
    return name


def card_representation(card: dict) -> str:
    """The representation a model card was trained with (``"mni"`` for older cards)."""
    return check_representation(card.get("input", {}).get("representation") or "mni")


def n_channels(representation: str) -> int:
    """Number of image channels (before the 3 adjacent slices of the semi-3D models)."""
    return len(REPRESENTATIONS[check_representation(representation)]["channels"])


def input_space(representation: str) -> str:
    """``"mni"`` or ``"affine"``: the space of the input and of the raw prediction."""
    return REPRESENTATIONS[check_representation(representation)]["space"]


def card_space(representation: str) -> str:
    """The ``input.space`` label of a model card: the template space of the input
    (``layout.AFFINE_SPACE`` for the affine-only grid of the "affine" representation)."""
    from ..layout import AFFINE_SPACE, TEMPLATE_SPACE

    return TEMPLATE_SPACE if input_space(representation) == "mni" else AFFINE_SPACE


def card_fields(representation: str) -> dict:
    """The ``input`` fields of a model card that describe the representation."""
    spec = REPRESENTATIONS[check_representation(representation)]
    return {
        "representation": representation,
        "input_channels": list(spec["channels"]),
        "representation_description": spec["description"],
    }


@dataclass
class InputSources:
    """A participant's files (paths or images) that the representations are built from.

    ``t1w_std``/``mask_std``/``gm_std``: MNI-space N4 T1w, brain mask, GM (composite
    transform); ``t1w``/``t1w_mask``: T1w-space N4 T1w and brain mask; ``affine``: the
    affine stage T1w -> MNI (``.mat``); ``warp``/``inverse_warp``: the nonlinear part
    (affine space -> MNI, MNI -> affine space; displacement field ``.nii.gz`` or ``.h5``);
    ``log_jacobian_std``: log det Jacobian of ``warp`` on the MNI grid (computed from
    ``warp`` when absent); ``t1w2std``: the composite T1w -> MNI transform (``.h5``, the
    two stages in one; what sMRIPrep/fMRIPrep provide); ``pet_t1w``/``pet_std``: SUVR PET
    (training targets).
    """

    t1w_std: str | Path | nib.Nifti1Image | None = None
    mask_std: str | Path | nib.Nifti1Image | None = None
    gm_std: str | Path | nib.Nifti1Image | None = None
    t1w: str | Path | nib.Nifti1Image | None = None
    t1w_mask: str | Path | nib.Nifti1Image | None = None
    affine: str | Path | None = None
    warp: str | Path | None = None
    inverse_warp: str | Path | None = None
    log_jacobian_std: str | Path | nib.Nifti1Image | None = None
    pet_t1w: str | Path | nib.Nifti1Image | None = None
    pet_std: str | Path | nib.Nifti1Image | None = None
    gm: str | Path | nib.Nifti1Image | None = None
    wm: str | Path | nib.Nifti1Image | None = None
    csf: str | Path | nib.Nifti1Image | None = None
    t1w2std: str | Path | None = None

    def need(self, *names: str, why: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise PetSynthError(f"{why} needs {', '.join(missing)} (not found)")


@dataclass
class ModelInput:
    """A participant's model input on the MNI grid (the affine space is on it too)."""

    representation: str
    channels: np.ndarray  # (C, x, y, z) float32 in [0, 1], 0 outside ``mask``
    mask: np.ndarray  # bool
    affine: np.ndarray  # voxel -> world of the grid
    names: list[str] = field(default_factory=list)
    pet_suvr: np.ndarray | None = None  # the target PET on the same grid (SUVR)

    @property
    def t1w(self) -> np.ndarray:
        return self.channels[0]


def _img(obj: str | Path | nib.Nifti1Image) -> nib.Nifti1Image:
    img = obj if isinstance(obj, nib.Nifti1Image) else nib.load(str(obj))
    return nib.squeeze_image(img)


def _array(img: nib.Nifti1Image) -> np.ndarray:
    return np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float32))


def _warp_file(path: str | Path, reference: nib.Nifti1Image, tmp: str) -> str:
    """A displacement-field ``.nii.gz`` for ``path`` (an ``.h5`` is sampled on ``reference``)."""
    path = str(path)
    if not path.endswith(".h5"):
        return path
    import ants

    from ..preproc.anat import nib_to_ants

    ref = nib_to_ants(nib.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    # the .h5 is a composite holding one displacement field: compose it into a field file
    return ants.apply_transforms(ref, ref, [path], compose=os.path.join(tmp, "warp_"))


def log_jacobian_std(sources: InputSources, reference: nib.Nifti1Image) -> np.ndarray:
    """log det Jacobian on the ``reference`` (MNI) grid: the precomputed map, else from
    the warp."""
    if sources.log_jacobian_std is not None:
        img = _img(sources.log_jacobian_std)
    else:
        sources.need("warp", why="the log-Jacobian")
        from ..preproc.anat import log_jacobian

        with tempfile.TemporaryDirectory(prefix="petsynth_jac_") as tmp:
            img = log_jacobian(_warp_file(sources.warp, reference, tmp), reference)
    if img.shape[:3] != reference.shape[:3]:
        from ..preproc.anat import apply_transforms

        img = apply_transforms(img, reference, [])
    return _array(img)


def pv_fractions_std(
    sources: InputSources, reference: nib.Nifti1Image, fwhm_mm: float = PV_FWHM_MM
) -> tuple[np.ndarray, np.ndarray]:
    """GM and CSF volume fractions of the T1w (``preproc.anat.partial_volume_fractions``),
    blurred by ``fwhm_mm`` in T1w space, then resampled onto the ``reference`` (MNI) grid
    through the composite T1w -> MNI transform ``t1w2std`` or, without it, ``[warp,
    affine]`` (the same mapping: T1w -> affine -> MNI, the transforms of the real PET).
    Float32 arrays in [0, 1]."""
    from scipy import ndimage as ndi

    from ..analysis.zscore import FWHM_TO_SIGMA
    from ..preproc.anat import apply_transforms, partial_volume_fractions

    sources.need("t1w", "t1w_mask", "gm", "wm", "csf", why="the mni-pv representation")
    if sources.t1w2std is not None:
        transforms = [str(sources.t1w2std)]
    else:  # the two stages, applied as the composite would be
        sources.need("affine", "warp", why="the mni-pv representation (or t1w2std)")
        transforms = [str(sources.warp), str(sources.affine)]
    t1 = _img(sources.t1w)
    fractions = partial_volume_fractions(
        t1, _img(sources.t1w_mask), (_img(sources.gm), _img(sources.wm), _img(sources.csf))
    )
    zooms = np.asarray(t1.header.get_zooms()[:3], float)
    sigma = fwhm_mm * FWHM_TO_SIGMA / zooms
    blurred = [ndi.gaussian_filter(_array(fractions[i]), sigma) for i in (0, 2)]
    stack = nib.Nifti1Image(np.stack(blurred, -1), t1.affine)
    out = _array(apply_transforms(stack, reference, transforms))
    out = np.clip(out.reshape(reference.shape[:3] + (2,)), 0.0, 1.0)
    return np.ascontiguousarray(out[..., 0]), np.ascontiguousarray(out[..., 1])


def to_affine_space(
    img: str | Path | nib.Nifti1Image,
    reference: nib.Nifti1Image,
    affine: str | Path,
    interpolation: str = "linear",
) -> nib.Nifti1Image:
    """A T1w-space image resampled with the affine stage only onto the MNI grid."""
    from ..preproc.anat import apply_transforms

    return apply_transforms(_img(img), reference, [str(affine)], interpolation=interpolation)


def build_model_input(
    representation: str, sources: InputSources, with_pet: bool = False
) -> ModelInput:
    """The model input channels of one participant in ``representation`` (see module doc).

    With ``with_pet`` the SUVR PET target is brought to the same grid and space
    (``affine``: the T1w-space PET through the affine if given, else the MNI PET through
    the inverse warp; other representations: the MNI PET).
    """
    from ..preproc.anat import normalize_t1_intensity

    check_representation(representation)
    sources.need("mask_std", why="every input representation (the MNI grid)")
    mask_std = _img(sources.mask_std)
    names = list(REPRESENTATIONS[representation]["channels"])
    pet = None
    if input_space(representation) == "affine":
        sources.need("t1w", "t1w_mask", "affine", why="the affine representation")
        t1_img = to_affine_space(sources.t1w, mask_std, sources.affine)
        mask_img = to_affine_space(sources.t1w_mask, mask_std, sources.affine, "nearest")
        mask = _array(mask_img) > 0
        if mask.sum() < 10:
            raise PetSynthError("the brain mask is empty in affine space")
        mask_img = nib.Nifti1Image(mask.astype(np.uint8), mask_std.affine)
        t1 = _array(normalize_t1_intensity(t1_img, mask_img))
        channels = [t1]
        if with_pet:
            if sources.pet_t1w is not None:
                pet = _array(to_affine_space(sources.pet_t1w, mask_std, sources.affine))
            elif sources.pet_std is not None:
                sources.need("inverse_warp", why="the MNI PET in affine space")
                from ..preproc.anat import apply_transforms

                pet = _array(
                    apply_transforms(_img(sources.pet_std), mask_std, [str(sources.inverse_warp)])
                )
    else:
        sources.need("t1w_std", why=f"the {representation} representation")
        t1_img = _img(sources.t1w_std)
        mask = _array(mask_std) > 0
        if t1_img.shape[:3] != mask.shape:
            raise PetSynthError("the MNI T1w and brain mask grids differ")
        t1 = _array(normalize_t1_intensity(t1_img, mask_std))
        channels = [t1]
        if representation == "mni-jacobian":
            sources.need("gm_std", why="the mni-jacobian representation")
            logj = log_jacobian_std(sources, mask_std)
            gm = np.clip(_array(_img(sources.gm_std)), 0, 1)
            channels.append(np.clip(0.5 + logj, 0.0, 1.0))
            channels.append(np.clip(gm * np.exp(np.clip(logj, -3, 3)) / 2.0, 0.0, 1.0))
        if representation == "mni-pv":
            channels.extend(pv_fractions_std(sources, mask_std))
        if with_pet and sources.pet_std is not None:
            pet = _array(_img(sources.pet_std))
    stack = np.stack(channels).astype(np.float32) * mask[None]
    if pet is not None and pet.shape != mask.shape:
        raise PetSynthError("PET and T1w grids differ")
    return ModelInput(representation, stack, mask, np.asarray(mask_std.affine), names, pet)


def sources_from_derivatives(deriv: Path, subject: str) -> InputSources:
    """A participant's :class:`InputSources` in a PetSynth output folder (None roles are
    absent files)."""
    from ..layout import find_inputs

    return InputSources(**find_inputs(Path(deriv), subject))


__all__ = [
    "DEFAULT_REPRESENTATION",
    "REPRESENTATIONS",
    "InputSources",
    "ModelInput",
    "build_model_input",
    "card_fields",
    "card_representation",
    "check_representation",
    "input_space",
    "log_jacobian_std",
    "n_channels",
    "needs_registration_stages",
    "pv_fractions_std",
    "sources_from_derivatives",
    "to_affine_space",
]
