"""Digital phantom: one subject's T1w head, FDG PET and ground truth from the MNI template.

Spaces and conventions (all coordinates are RAS world millimetres, as in NIfTI sform/qform;
4x4 matrices act on homogeneous column vectors):

- **MNI**: MNI152NLin2009aSym, the template nilearn ships (brain only). The phantom is
  built on a *work grid*: the nilearn grid (1 or 2 mm) padded so that it holds the
  synthesized CSF, skull and scalp.
- **T1w**: the subject's scanner space. ``x_t1w = t1w_from_mni @ y`` is a rigid + per-axis
  scale transform of the affinely aligned MNI point ``y``; the nonlinear part is a smooth
  displacement ``u`` defined on ``y``: ``x_mni = y + u(y)``, so
  T1w -> MNI is ``x_mni = y + u(y)`` with ``y = mni_from_t1w @ x_t1w``. ``u`` is stored as a
  small 4D float32 image (i, j, k, 3; mm, RAS) and interpolated trilinearly (edge values
  outside its grid): see :func:`t1w_points_to_mni`.
- **PET**: the PET scanner space. ``x_pet = pet_from_t1w @ x_t1w`` (rigid). For 4D PET
  every frame has its own matrix; frame 0 is the reference (``pet_from_t1w``).

Subject anatomy and PET (all on the work grid, before the subject transforms): the
template tissue maps (the MNI152 probabilities sharpened into one brain's volume
fractions, :func:`individual_tissue_fractions`) get the subject's lateral ventricle
growth and cortical thinning (:func:`random_morphometry`, :func:`morphed_space`; driven
by ``age``) and a smooth regional atrophy that thins the cortex further
(:func:`random_atrophy`); the T1w and the
FDG activity (:func:`pet_activity_mni`: GM x regional pattern x age decline x lesions +
WM + CSF at ~15 % of GM + scalp) are both computed from these same tissue fractions, and the PET is
then blurred with the PSF. What registration to MNI removes (ventricle and sulcal
geometry) therefore still shows in the PET as partial volume, as in real FDG data.

Everything is deterministic for a given ``numpy.random.Generator`` state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from ..analysis.atlas import label_coordinate, load_atlas, lobe_from_region
from ..config import TEMPLATE_SPACE

PHANTOM_MODEL = "2026.12.07"
"""Version of the phantom model: changes whenever a seed gives other images (here:
regional atrophy became geometric cortical thinning). Part of the cohort's dataset Name."""
HEAD_MARGIN_MM = 28.0
"""Work grid extends at least this far beyond the template brain mask (CSF + skull + scalp)."""
WARP_SPACING_MM = 4.0
"""Grid spacing of the stored nonlinear displacement field."""
MNI_BRAIN_SCALE = 0.91
"""Mean linear scale MNI -> subject (the MNI152 brain is larger than an average brain)."""
T1W_ORIENTATIONS = ("LAS", "PSR", "RAS", "LPS")
"""Voxel orders cycled through the cohort (PSR = sagittal slices, like a 3D sagittal MPRAGE)."""
LESION_PROFILE_THRESHOLD = 0.5
LESION_GM_THRESHOLD = 0.3
"""Truth lesion mask = lesion profile >= 0.5 and truth GM fraction >= 0.3."""
PET_FOV_TOP_MARGIN_MM = 5.0
"""A field of view that cuts the brain (``pet_fov_cut_mm``) ends this far above the
brain's top: the scan was centred on the cerebrum and ended in the cerebellum."""
FDG_FRAME_START_S = 1800.0
"""Static FDG acquisition starts 30 min after injection (TimeZero = injection)."""


@dataclass(frozen=True)
class PetScanner:
    """A PET scanner reconstruction grid (voxel order, matrix, voxel size in mm)."""

    name: str
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    orientation: str
    recon_method: str
    recon_labels: tuple[str, ...]
    recon_values: tuple[float, ...]


PET_SCANNERS = (
    PetScanner(
        "PetSynth HR+-like",
        (128, 128, 81),
        (2.06, 2.06, 2.43),
        "LPI",
        "OSEM2D",
        ("subsets", "iterations"),
        (16, 4),
    ),
    PetScanner(
        "PetSynth PET/CT-like",
        (144, 144, 90),
        (2.0, 2.0, 2.0),
        "LAS",
        "OSEM3D+TOF",
        ("subsets", "iterations"),
        (21, 3),
    ),
    PetScanner(
        "PetSynth PET/MR-like",
        (112, 112, 76),
        (2.5, 2.5, 2.5),
        "RAS",
        "OP-OSEM",
        ("subsets", "iterations"),
        (21, 3),
    ),
)


# --------------------------------------------------------------------------------------
# Template space (cached, subject independent)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TemplateSpace:
    """Subject-independent maps on the padded MNI work grid (float32 unless stated).

    ``gm``/``wm``/``csf``: tissue volume fractions of one brain (sum <= 1, CSF only
    inside the skull; the MNI152 probabilities sharpened by
    :func:`individual_tissue_fractions`);
    ``brain``: nilearn brain mask (0/1); ``icv``: soft intracranial mask; ``dist_out``:
    distance (mm) outside the intracranial surface (0 inside); ``uptake_pattern``: relative
    regional FDG uptake of GM (~0.8-1.1); ``cortex``: flat indices of cortical GM voxels
    (Harvard-Oxford cortical label, GM >= 0.6, |x| >= 4 mm) used as lesion centres.

    Anatomy-variation maps (see :func:`morphed_space`): ``region_labels`` (uint8
    Harvard-Oxford label, 0 = none); ``age_regions``: soft (4 mm) mask of the regions
    whose FDG uptake declines with age (frontal, cingulate, insular, calcarine cortex);
    ``pial_depth``: distance (mm) from the outer (CSF-side) boundary of the tissue
    (GM + WM >= 0.5; 0 outside it); ``ribbon_mm``: local cortical thickness estimate
    ``distance to WM + pial_depth`` (mm, <= 8), 0 outside cerebral cortex;
    ``ventricle_box``: work-grid slices around the lateral ventricles; ``ventricle_field``
    (3, box): outward-pointing unit-max direction field (RAS, minus the gradient of the
    ventricle mask smoothed with a 6 mm Gaussian) used to enlarge the ventricles.
    """

    resolution: int
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    icv: np.ndarray
    dist_out: np.ndarray
    uptake_pattern: np.ndarray
    cortex: np.ndarray
    region_labels: np.ndarray | None = None
    age_regions: np.ndarray | None = None
    pial_depth: np.ndarray | None = None
    ribbon_mm: np.ndarray | None = None
    ventricle_box: tuple[slice, slice, slice] | None = None
    ventricle_field: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Work grid shape (voxels)."""
        return self.gm.shape  # type: ignore[return-value]

    def image(self, data: np.ndarray) -> nib.Nifti1Image:
        """Wrap a work-grid array as a NIfTI image in MNI space."""
        img = nib.Nifti1Image(data, self.affine)
        img.set_qform(self.affine, code=4)
        img.set_sform(self.affine, code=4)
        return img


def _resample_labels(img: nib.Nifti1Image, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    vox2vox = np.linalg.solve(img.affine, affine)
    data = np.asarray(img.dataobj)
    return ndi.affine_transform(
        data, vox2vox, output_shape=tuple(shape), order=0, mode="constant", cval=0
    )


def _region_pattern(space_affine: np.ndarray, shape: Sequence[int], res: int) -> np.ndarray:
    """Relative GM uptake by region (FDG-like), smoothed with a 4 mm Gaussian."""
    ho, ho_labels = load_atlas("harvard_oxford")
    aal, aal_labels = load_atlas("aal")
    ho_data = _resample_labels(ho, space_affine, shape)
    aal_data = _resample_labels(aal, space_affine, shape)
    pattern = np.ones(shape, np.float32)
    rules = (
        (("hippocampus", "amygdala"), 0.80),
        (("parahippocampal",), 0.85),
        (("temporal_pole", "temporal_fusiform_cortex_anterior"), 0.90),
        (("inferior_temporal_gyrus_anterior",), 0.92),
        (("precuneous", "cingulate_gyrus_posterior"), 1.10),
        (("intracalcarine", "supracalcarine", "cuneal", "occipital_pole", "lingual"), 1.10),
        (("lateral_occipital",), 1.05),
        (("putamen",), 1.05),
        (("caudate",), 0.95),
        (("pallidum",), 0.85),
        (("brain-stem",), 0.60),
    )
    for value, name in ho_labels.items():
        key = name.lower()
        for keywords, factor in rules:
            if any(k in key for k in keywords):
                pattern[ho_data == value] = factor
                break
    cerebellum = [v for v, n in aal_labels.items() if lobe_from_region(n) == "cerebellum"]
    pattern[np.isin(aal_data, cerebellum)] = 0.85
    pattern = ndi.gaussian_filter(pattern, 4.0 / res, mode="nearest")
    return pattern.astype(np.float32)


TISSUE_SHARPNESS = 4.0
"""Exponent that turns the MNI152 tissue *probabilities* into one brain's tissue *fractions*
(:func:`individual_tissue_fractions`)."""


def individual_tissue_fractions(
    gm: np.ndarray, wm: np.ndarray, power: float = TISSUE_SHARPNESS
) -> tuple[np.ndarray, np.ndarray]:
    """GM and WM volume fractions of one brain from population tissue probabilities (1 mm).

    The MNI152 maps average 152 registered brains: a "pure" cortex voxel there is ~65 % GM,
    and the sharpest quarter of the GM/WM edges of a T1w built from them is wider (3.7 mm)
    than a real 1 mm T1w's (3.1-3.3 mm; docs/benchmarks.md, "Anatomy-aware synthesis
    inputs", ``bench/bench_tissue_edges.py``). One brain's voxels are mostly one
    tissue, with partial volume only at boundaries. With the third class
    ``rest = 1 - gm - wm`` (CSF inside the skull): ``f_k = p_k ** power / sum_j p_j **
    power``, which keeps the most likely tissue of each voxel and narrows every boundary
    (``power`` 1 = the probabilities). float32, same grid.
    """
    rest = np.clip(1.0 - gm - wm, 0.0, 1.0)
    probs = np.stack([gm, wm, rest]).astype(np.float32) + np.float32(1e-6)
    probs **= np.float32(power)
    probs /= probs.sum(0)
    return probs[0], probs[1]


def _block_average_2mm(vol_1mm: np.ndarray, shape_2mm: Sequence[int]) -> np.ndarray:
    """1 mm map -> the nilearn 2 mm grid (same origin): each 2 mm voxel averages the 1 mm
    volume it covers (weights 1/4, 1/2, 1/4 per axis)."""
    out = vol_1mm
    for axis in range(3):
        out = ndi.correlate1d(out, [0.25, 0.5, 0.25], axis=axis, mode="constant")
    out = out[::2, ::2, ::2]
    return np.ascontiguousarray(out[: shape_2mm[0], : shape_2mm[1], : shape_2mm[2]], np.float32)


@lru_cache(maxsize=2)
def load_template_space(resolution: int = 1) -> TemplateSpace:
    """Build (once per process) the padded MNI work grid at 1 or 2 mm.

    Takes ~10 s at 1 mm (~0.5 GB), ~2 s at 2 mm.
    """
    from nilearn import datasets

    if resolution not in (1, 2):
        raise ValueError("template resolution must be 1 or 2 mm")
    res = float(resolution)
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    gm, wm = individual_tissue_fractions(
        np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32),
        np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32),
        TISSUE_SHARPNESS,
    )
    if resolution == 2:
        gm, wm = (_block_average_2mm(v, gm_img.shape) for v in (gm, wm))
    brain = np.asarray(
        datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0.5, np.float32
    )
    affine0 = gm_img.affine
    # Pad so the grid covers the brain mask bounding box +- HEAD_MARGIN_MM.
    idx = np.array(np.nonzero(brain))
    lo_mm = idx.min(1) * res + affine0[:3, 3] - HEAD_MARGIN_MM
    hi_mm = idx.max(1) * res + affine0[:3, 3] + HEAD_MARGIN_MM
    start_mm = affine0[:3, 3]
    stop_mm = start_mm + (np.array(brain.shape) - 1) * res
    pad_lo = np.maximum(np.ceil((start_mm - lo_mm) / res), 0).astype(int)
    pad_hi = np.maximum(np.ceil((hi_mm - stop_mm) / res), 0).astype(int)
    pad_x = max(pad_lo[0], pad_hi[0])  # keep the grid symmetric about x = 0
    pad_lo[0] = pad_hi[0] = pad_x
    pad = [(int(a), int(b)) for a, b in zip(pad_lo, pad_hi, strict=True)]
    gm = np.pad(gm, pad)
    wm = np.pad(wm, pad)
    brain = np.pad(brain, pad)
    affine = affine0.copy()
    affine[:3, 3] -= pad_lo * res
    shape = gm.shape

    # Intracranial volume: brain mask closed (~6 mm) and dilated by 2 mm.
    dil = ndi.distance_transform_edt(brain < 0.5, sampling=res) <= 8.0
    icv_bin = ndi.distance_transform_edt(dil, sampling=res) > 6.0
    icv_bin |= brain > 0.5
    icv = ndi.gaussian_filter(icv_bin.astype(np.float32), 0.7 / res)
    dist_out = ndi.distance_transform_edt(~icv_bin, sampling=res).astype(np.float32)
    tissue = np.minimum(gm + wm, 1.0)
    scale = np.where(tissue > 1e-6, np.minimum(tissue, icv) / np.maximum(tissue, 1e-6), 0)
    gm = (gm * scale).astype(np.float32)
    wm = (wm * scale).astype(np.float32)
    csf = np.clip(icv - gm - wm, 0.0, 1.0).astype(np.float32)

    pattern = _region_pattern(affine, shape, resolution)
    ho, _ = load_atlas("harvard_oxford")
    ho_data = _resample_labels(ho, affine, shape)
    x_mm = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]
    cortical = (ho_data >= 1) & (ho_data <= 96) & (gm >= 0.6)
    cortical &= (np.abs(x_mm) >= 4.0)[:, None, None]
    cortex = np.flatnonzero(cortical)
    maps = _anatomy_maps(affine, gm, wm, ho_data, resolution)
    return TemplateSpace(
        resolution=resolution,
        affine=affine,
        gm=gm,
        wm=wm,
        csf=csf,
        brain=brain,
        icv=icv.astype(np.float32),
        dist_out=dist_out,
        uptake_pattern=pattern,
        cortex=cortex,
        **maps,
    )


AGE_UPTAKE_KEYWORDS = ("frontal", "precentral", "cingulate", "insular", "calcarine")
"""Harvard-Oxford regions with an age-related FDG decline after PVC (Greve et al. 2016)."""
VENTRICLE_LABELS = ("lateral_ventric",)
VENTRICLE_SIGMA_MM = 8.0
VENTRICLE_STEP_MM = 3.0
RIBBON_MAX_MM = 8.0


def _anatomy_maps(
    affine: np.ndarray, gm: np.ndarray, wm: np.ndarray, ho_data: np.ndarray, resolution: int
) -> dict[str, Any]:
    """Subject-independent maps for cortical thinning, ventricle growth and age uptake."""
    _, ho_labels = load_atlas("harvard_oxford")
    res = float(resolution)
    names = {v: n.lower() for v, n in ho_labels.items()}
    age_ids = [v for v, n in names.items() if any(k in n for k in AGE_UPTAKE_KEYWORDS)]
    age_regions = ndi.gaussian_filter(np.isin(ho_data, age_ids).astype(np.float32), 4.0 / res)
    # Cortical ribbon: distance to the CSF side and to the WM core (mm), computed in the
    # bounding box of the tissue (+ 12 mm) to keep the template build fast.
    idx = np.array(np.nonzero((gm + wm) > 0.01))
    pad = int(np.ceil(12.0 / res))
    lo = np.maximum(idx.min(1) - pad, 0)
    hi = np.minimum(idx.max(1) + pad + 1, gm.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    tissue = (gm[crop] + wm[crop]) >= 0.5
    pial_depth = np.zeros(gm.shape, np.float32)
    pial_depth[crop] = ndi.distance_transform_edt(tissue, sampling=res)
    d_wm = ndi.distance_transform_edt(wm[crop] < 0.5, sampling=res).astype(np.float32)
    cortical = ((ho_data[crop] >= 1) & (ho_data[crop] <= 96)).astype(np.float32)
    near_cortex = ndi.gaussian_filter(cortical, 1.5 / res) > 0.02  # ~3 mm dilation
    ribbon = np.zeros(gm.shape, np.float32)
    ribbon[crop] = np.where(near_cortex, np.minimum(d_wm + pial_depth[crop], RIBBON_MAX_MM), 0)
    del d_wm, near_cortex, cortical, tissue
    # Lateral ventricles: outward direction field in a box around them.
    vent_ids = [v for v, n in names.items() if any(k in n for k in VENTRICLE_LABELS)]
    vent = np.isin(ho_data, vent_ids)
    idx = np.array(np.nonzero(vent))
    margin = int(np.ceil(4.0 * VENTRICLE_SIGMA_MM / res))
    lo = np.maximum(idx.min(1) - margin, 0)
    hi = np.minimum(idx.max(1) + margin + 1, vent.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    phi = ndi.gaussian_filter(vent[box].astype(np.float32), VENTRICLE_SIGMA_MM / res)
    grad = np.stack(np.gradient(phi, res))
    # voxel axes -> RAS directions (the work grid is axis aligned with positive steps)
    grad *= np.sign(np.diag(affine)[:3])[:, None, None, None]
    field_ = -grad / max(float(np.linalg.norm(grad, axis=0).max()), 1e-12)
    return {
        "region_labels": ho_data.astype(np.uint8),
        "age_regions": age_regions.astype(np.float32),
        "pial_depth": pial_depth,
        "ribbon_mm": ribbon.astype(np.float32),
        "ventricle_box": box,
        "ventricle_field": field_.astype(np.float32),
    }


# --------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation ``Rz @ Ry @ Rx`` for angles (degrees) about the x, y, z axes."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_matrix(
    angles_deg: Sequence[float],
    translation_mm: Sequence[float],
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    scales: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """4x4 world transform ``x' = R S (x - c) + c + t`` (mm)."""
    c = np.asarray(center_mm, dtype=float)
    lin = rotation_matrix(angles_deg) @ np.diag(np.asarray(scales, dtype=float))
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = c + np.asarray(translation_mm, dtype=float) - lin @ c
    return out


def oriented_affine(
    orientation: str,
    shape: Sequence[int],
    voxel_size_mm: Sequence[float],
    center_mm: Sequence[float],
) -> np.ndarray:
    """Axis-aligned voxel-to-world affine with voxel order ``orientation`` (e.g. "LAS").

    ``voxel_size_mm`` is per voxel axis; the grid centre maps to ``center_mm``.
    """
    letters = {
        "R": (0, 1.0),
        "L": (0, -1.0),
        "A": (1, 1.0),
        "P": (1, -1.0),
        "S": (2, 1.0),
        "I": (2, -1.0),
    }
    code = orientation.upper()
    axes = [letters[c][0] for c in code] if len(code) == 3 and set(code) <= set(letters) else []
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"invalid voxel orientation {orientation!r}")
    affine = np.eye(4)
    for i, c in enumerate(code):
        world, sign = letters[c]
        affine[:3, i] = 0.0
        affine[world, i] = sign * float(voxel_size_mm[i])
    centre_vox = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - affine[:3, :3] @ centre_vox
    return affine


def _grid_for_extent(
    orientation: str, lo_mm: np.ndarray, hi_mm: np.ndarray, voxel_size_mm: float
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Smallest even-sized grid with voxel order ``orientation`` covering a world box."""
    world_axis = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    extent = hi_mm - lo_mm
    shape = []
    for c in orientation.upper():
        n = int(np.ceil(extent[world_axis[c]] / voxel_size_mm)) + 1
        shape.append(n + (n % 2))
    centre = np.round((lo_mm + hi_mm) / 2.0, 1)
    affine = oriented_affine(orientation, shape, (voxel_size_mm,) * 3, centre)
    return (shape[0], shape[1], shape[2]), affine


@dataclass(frozen=True, eq=False)
class Warp:
    """Smooth displacement ``u`` (mm, RAS) on a regular grid: ``x_mni = y + u(y)``."""

    data: np.ndarray  # (i, j, k, 3) float32
    affine: np.ndarray

    def displacement(self, points_mm: np.ndarray) -> np.ndarray:
        """Trilinear ``u`` at points (3, N) in mm; edge values outside the grid."""
        inv = np.linalg.inv(self.affine)
        vox = inv[:3, :3] @ points_mm + inv[:3, 3:4]
        return np.stack(
            [
                ndi.map_coordinates(self.data[..., c], vox, order=1, mode="nearest")
                for c in range(3)
            ]
        )

    def to_image(self) -> nib.Nifti1Image:
        """The field as a 4D float32 NIfTI (last axis = x, y, z displacement in mm)."""
        img = nib.Nifti1Image(self.data.astype(np.float32), self.affine)
        img.set_qform(self.affine, code=4)
        img.set_sform(self.affine, code=4)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = b"x_mni = y + u(y), u in mm RAS, trilinear"
        return img


def random_warp(rng: np.random.Generator, space: TemplateSpace, amplitude_mm: float) -> Warp:
    """Smooth random displacement over the work grid (~12 mm correlation, max |u| given)."""
    lo = space.affine[:3, 3]
    hi = lo + (np.array(space.shape) - 1) * space.resolution
    shape = tuple(int(n) + 1 for n in np.ceil((hi - lo) / WARP_SPACING_MM))
    noise = rng.standard_normal((*shape, 3))
    field_ = np.stack(
        [ndi.gaussian_filter(noise[..., c], 3.0, mode="nearest") for c in range(3)], axis=-1
    )
    field_ *= amplitude_mm / max(float(np.linalg.norm(field_, axis=-1).max()), 1e-9)
    affine = np.diag([WARP_SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = lo
    return Warp(data=field_.astype(np.float32), affine=affine)


def t1w_points_to_mni(
    points_t1w_mm: np.ndarray, mni_from_t1w: np.ndarray, warp: Warp | nib.Nifti1Image
) -> np.ndarray:
    """Exact truth mapping of T1w world points (N, 3) to MNI mm (N, 3)."""
    if isinstance(warp, nib.Nifti1Image):
        warp = Warp(np.asarray(warp.dataobj, dtype=np.float32), warp.affine)
    pts = np.asarray(points_t1w_mm, dtype=float).reshape(-1, 3).T
    y = mni_from_t1w[:3, :3] @ pts + mni_from_t1w[:3, 3:4]
    return (y + warp.displacement(y)).T


def mni_points_to_t1w(
    points_mni_mm: np.ndarray, t1w_from_mni: np.ndarray, warp: Warp, iterations: int = 20
) -> np.ndarray:
    """Inverse truth mapping MNI mm (N, 3) -> T1w world mm (N, 3) (fixed-point, < 1e-3 mm)."""
    c = np.asarray(points_mni_mm, dtype=float).reshape(-1, 3).T
    y = c.copy()
    for _ in range(iterations):
        y = c - warp.displacement(y)
    return (t1w_from_mni[:3, :3] @ y + t1w_from_mni[:3, 3:4]).T


def pet_coregistration_error_mm(
    estimated_t1w_from_pet: np.ndarray, true_pet_from_t1w: np.ndarray, points_t1w_mm: np.ndarray
) -> np.ndarray:
    """Per-point error (mm) of an estimated PET->T1w rigid transform at T1w points (N, 3).

    A point ``p`` of the T1w world appears at ``true_pet_from_t1w @ p`` in the PET; the
    estimate maps it back to ``estimated_t1w_from_pet @ true_pet_from_t1w @ p``.
    """
    pts = np.asarray(points_t1w_mm, dtype=float).reshape(-1, 3)
    hom = np.hstack([pts, np.ones((len(pts), 1))])
    back = hom @ (estimated_t1w_from_pet @ true_pet_from_t1w).T
    return np.linalg.norm(back[:, :3] - pts, axis=1)


def _smooth_field(rng: np.random.Generator, axes: Sequence[np.ndarray], degree: int) -> np.ndarray:
    """Random smooth field (max |f| = 1) from a Legendre tensor basis on [-1, 1] axes."""
    coeffs = rng.standard_normal((degree + 1,) * 3)
    order = np.add.outer(
        np.add.outer(np.arange(degree + 1), np.arange(degree + 1)), np.arange(degree + 1)
    )
    coeffs /= 1.0 + order
    coeffs[0, 0, 0] = 0.0
    vander = [legendre.legvander(np.asarray(a, dtype=float), degree) for a in axes]
    out = np.einsum("ia,jb,kc,abc->ijk", *vander, coeffs, optimize=True)
    return (out / max(float(np.abs(out).max()), 1e-12)).astype(np.float32)


def _unit_axes(shape: Sequence[int]) -> list[np.ndarray]:
    return [np.linspace(-1.0, 1.0, int(n)) for n in shape]


# --------------------------------------------------------------------------------------
# Tissue, head and uptake models (on the MNI work grid)
# --------------------------------------------------------------------------------------


def random_anatomy(rng: np.random.Generator) -> dict[str, float]:
    """Per-subject T1w contrast (relative to WM = 1) and head layer thicknesses (mm)."""
    return {
        "t1_gm": float(rng.uniform(0.55, 0.68)),
        "t1_csf": float(rng.uniform(0.12, 0.25)),
        "t1_bone": float(rng.uniform(0.03, 0.08)),
        "t1_diploe": float(rng.uniform(0.15, 0.35)),
        "t1_muscle": float(rng.uniform(0.35, 0.50)),
        "t1_fat": float(rng.uniform(0.85, 1.05)),
        "t1_skin": float(rng.uniform(0.45, 0.60)),
        "skull_mm": float(rng.uniform(5.0, 7.5)),
        "scalp_mm": float(rng.uniform(5.0, 8.0)),
        "t1_scale": float(rng.uniform(450.0, 900.0)),
        "t1_noise": float(rng.uniform(0.015, 0.035)),
        "bias_amplitude": float(rng.uniform(0.15, 0.20)),
    }


def _layer_profile(anat: dict[str, float], values: dict[str, float]) -> tuple[np.ndarray, ...]:
    """1D profile over the normalized distance outside the intracranial surface (mm)."""
    ts, tc = anat["skull_mm"], anat["scalp_mm"]
    d = np.arange(0.0, ts + tc + 6.0, 0.1)
    prof = np.zeros_like(d)
    table = 0.3 * ts  # inner and outer tables (dark cortical bone)
    prof[d < ts] = values["bone"]
    prof[(d >= table) & (d < ts - table)] = values["diploe"]
    prof[(d >= ts) & (d < ts + 0.3 * tc)] = values["muscle"]
    prof[(d >= ts + 0.3 * tc) & (d < ts + 0.85 * tc)] = values["fat"]
    prof[(d >= ts + 0.85 * tc) & (d < ts + tc)] = values["skin"]
    prof = ndi.gaussian_filter1d(prof, 4.0, mode="nearest")  # 0.4 mm
    return d, prof


def random_atrophy(
    rng: np.random.Generator, space: TemplateSpace
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-subject regional cortical atrophy: the fraction (0-0.45) of the cortical
    thickness lost, smooth over the work grid.

    ``loss = global + local x f`` with ``f`` a random smooth field (Legendre degree 4)
    scaled to [0, 1] over the brain, ``global`` ~ U(0, 0.10) and ``local`` ~ U(0.15, 0.35):
    the least affected region loses ``global``, the most affected ``global + local`` (up to
    45 %) of its cortical thickness. :func:`simulate_subject` multiplies the thickness
    factor of :func:`random_morphometry` by ``1 - loss`` and :func:`morphed_space` moves
    the pial boundary inward accordingly: atrophy is geometric (thinner cortex, wider
    sulci), as in real brains, so the remaining cortex keeps pure-GM voxels and both the
    T1w and the PET (partial volume: less GM within the PSF) show it.
    """
    params = {
        "atrophy_global": float(rng.uniform(0.0, 0.10)),
        "atrophy_local": float(rng.uniform(0.15, 0.35)),
    }
    field = _smooth_field(rng, _unit_axes(space.shape), 4)
    inside = field[space.brain > 0.5]
    field = np.clip((field - inside.min()) / max(float(np.ptp(inside)), 1e-6), 0.0, 1.0)
    loss = params["atrophy_global"] + params["atrophy_local"] * field
    return np.clip(loss, 0.0, 0.45).astype(np.float32), params


THICKNESS_MIN = 0.4
"""Smallest cortical thickness factor (age, individual and regional atrophy combined)."""


def subject_thickness(thickness: np.ndarray, atrophy: np.ndarray) -> np.ndarray:
    """Cortical thickness factor (relative to the template, work grid) of a subject:
    the age/individual factor of :func:`random_morphometry` times ``1 - atrophy``
    (:func:`random_atrophy`), clipped to [``THICKNESS_MIN``, 1]."""
    return np.clip(thickness * (1.0 - atrophy), THICKNESS_MIN, 1.0).astype(np.float32)


def random_subject_anatomy(
    rng: np.random.Generator, template: TemplateSpace, age: float
) -> tuple[TemplateSpace, dict[str, float]]:
    """One subject's tissue maps on the work grid and anatomy parameters: T1w contrast and
    head layers (:func:`random_anatomy`), regional atrophy (:func:`random_atrophy`),
    age-driven thickness and ventricles (:func:`random_morphometry`), applied by
    :func:`morphed_space`. Draws in this order from ``rng``."""
    anat = random_anatomy(rng)
    thinning, atrophy = random_atrophy(rng, template)
    anat.update(atrophy)
    thickness, morph = random_morphometry(rng, template, age)
    anat.update(morph)
    thickness = subject_thickness(thickness, thinning)
    return morphed_space(template, thickness, morph["ventricle_mm"]), anat


AGE_RANGE = (20.0, 85.0)
"""Default age distribution of a phantom, uniform (years)."""
THICKNESS_AT_20 = 0.95
THICKNESS_PER_YEAR = 0.0025
THICKNESS_SD = 0.04
VENTRICLE_MAX_MM = 8.0
VENTRICLE_SD = 0.25
AGE_UPTAKE_ONSET = 60.0
AGE_UPTAKE_PER_DECADE = 0.07
CSF_UPTAKE = (0.12, 0.18)
"""CSF FDG uptake relative to GM, uniform: Greve et al. 2016 measured ~15 % of GM."""


def random_morphometry(
    rng: np.random.Generator, space: TemplateSpace, age: float
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-subject geometric anatomy driven by ``age``: cortical thickness and ventricles.

    Returns the cortical thickness factor field (relative to the template, work grid) and
    the parameters:

    - ``thickness_global`` = 0.95 - 0.0025 x (age - 20) + N(0, 0.04), clipped to
      [0.6, 1.0]: the template (young adults) thinned by ~0.25 % of its thickness per year
      (~16 % from 20 to 85; the order of magnitude of the cross-sectional cortical
      thinning of Salat et al. 2004, Cereb Cortex 14:721, an assumption of this phantom,
      not a fit) plus individual variation;
    - ``thickness_regional`` ~ U(0.04, 0.10): amplitude of a smooth regional field
      (Legendre degree 3, [-1, 1]); the local factor is ``global x (1 + regional x f)``;
    - ``ventricle_mm`` = 8 x ((age - 20) / 65) ** 1.5 x exp(N(0, 0.25)) (<= 11 mm): the
      lateral ventricles grow outward by up to this many mm (see :func:`morphed_space`):
      at the median from ~23 ml (MNI volume; ~17 ml native) at 20 years to ~55 ml at 85
      (~2.5-fold; cross-sectional lifespan studies report roughly two- to threefold
      larger lateral ventricles in the ninth than in the third decade; an assumption of
      this phantom, not a fit).
    """
    ageing = float(np.clip((age - AGE_RANGE[0]) / (AGE_RANGE[1] - AGE_RANGE[0]), 0.0, 1.5))
    base = THICKNESS_AT_20 - THICKNESS_PER_YEAR * (age - AGE_RANGE[0])
    params = {
        "age": float(age),
        "thickness_global": float(np.clip(base + THICKNESS_SD * rng.standard_normal(), 0.6, 1.0)),
        "thickness_regional": float(rng.uniform(0.04, 0.10)),
        "ventricle_mm": float(
            min(
                VENTRICLE_MAX_MM * ageing**1.5 * np.exp(VENTRICLE_SD * rng.standard_normal()), 11.0
            )
        ),
    }
    f = _smooth_field(rng, _unit_axes(space.shape), 3)
    factor = params["thickness_global"] * (1.0 + params["thickness_regional"] * f)
    return np.clip(factor, 0.5, 1.0).astype(np.float32), params


def _expand_ventricles(space: TemplateSpace, volumes: list[np.ndarray], mm: float) -> None:
    """In place: move tissue outward from the lateral ventricles by ``mm x field``."""
    if space.ventricle_box is None or space.ventricle_field is None or mm <= 0.0:
        return
    box = space.ventricle_box
    grid = np.indices(space.ventricle_field.shape[1:], dtype=np.float32)
    offset = np.array([s.start for s in box], dtype=np.float32)[:, None, None, None]
    # steps of <= VENTRICLE_STEP_MM keep every step's Jacobian positive (no folding)
    steps = int(np.ceil(mm / VENTRICLE_STEP_MM))
    src = grid + offset - (mm / steps / space.resolution) * space.ventricle_field
    for _ in range(steps):
        for vol in volumes:
            vol[box] = ndi.map_coordinates(vol, src, order=1, mode="nearest")


def morphed_space(
    space: TemplateSpace, thickness: np.ndarray | float, ventricle_mm: float
) -> TemplateSpace:
    """Copy of ``space`` with this subject's ventricles and cortical thickness.

    1. Ventricles: the tissue maps are resampled at ``x - ventricle_mm x v(x)`` with ``v``
       the outward direction field (``space.ventricle_field``, smooth, max |v| = 1), in
       steps of <= 3 mm (each step folds nothing), so the ventricle walls move out by up
       to ``ventricle_mm`` and the periventricular tissue is
       compressed (CSF volume grows, tissue volume shrinks; the ICV is unchanged).
    2. Cortical thinning by moving the pial boundary: the cortex is thinned by
       ``delta = (1 - thickness) x ribbon_mm`` (mm); a voxel whose outer edge lies ``e``
       mm below the CSF-side boundary (``max(pial_depth - voxel, 0)``; the partial-volume
       voxels outside the boundary share layer 0) loses the fraction
       ``clip((delta - e) / voxel, 0, 1)`` of its GM to CSF, so the sulci and the
       subarachnoid space widen. ``thickness`` 1 = the template.
    """
    gm, wm, csf = space.gm.copy(), space.wm.copy(), space.csf.copy()
    _expand_ventricles(space, [gm, wm, csf], ventricle_mm)
    if space.ribbon_mm is not None and space.pial_depth is not None:
        delta = (1.0 - np.asarray(thickness, np.float32)) * space.ribbon_mm
        res = space.resolution
        # depth of the voxel's outer edge below the boundary; the first tissue layer and
        # the partial-volume voxels just outside it form layer 0
        edge = np.maximum(space.pial_depth - res, 0.0)
        lost = np.clip((delta - edge) / res, 0.0, 1.0)
        lost *= gm
        gm -= lost
        csf += lost
        del lost, delta
    return replace(space, gm=gm, wm=wm, csf=csf)


def tissue_volumes_ml(space: TemplateSpace, jacobian: float = 1.0) -> dict[str, float]:
    """GM, WM, CSF and lateral-ventricle CSF volumes (ml) of a work-grid space.

    ``jacobian`` scales work-grid (MNI) volumes to the subject (determinant of the MNI ->
    T1w affine). Ventricle CSF: the CSF within 12 mm of the Harvard-Oxford lateral
    ventricles.
    """
    vox = space.resolution**3 * jacobian / 1000.0
    out = {
        "gm_volume_ml": float(space.gm.sum(dtype=np.float64)) * vox,
        "wm_volume_ml": float(space.wm.sum(dtype=np.float64)) * vox,
        "csf_volume_ml": float(space.csf.sum(dtype=np.float64)) * vox,
    }
    if space.ventricle_box is not None and space.region_labels is not None:
        box = space.ventricle_box
        zone = _ventricle_zone(space.region_labels[box], space.resolution)
        out["ventricle_volume_ml"] = float(space.csf[box][zone].sum(dtype=np.float64)) * vox
    return out


def _ventricle_zone(labels: np.ndarray, res: float) -> np.ndarray:
    """Harvard-Oxford lateral ventricles dilated by 12 mm (where they can grow)."""
    _, names = load_atlas("harvard_oxford")
    ids = [v for v, n in names.items() if any(k in n.lower() for k in VENTRICLE_LABELS)]
    return ndi.distance_transform_edt(~np.isin(labels, ids), sampling=res) <= 12.0


def age_uptake(age: float) -> dict[str, float]:
    """Age effect on GM FDG uptake in frontal, cingulate, insular and calcarine cortex.

    Greve et al. 2016 (NeuroImage 132:334, 99 subjects aged 65-87, SGTM PVC) found about
    7 % decline per decade in frontal and cingulate (and primary visual and insular)
    cortex. Implemented: uptake x (1 - 0.07 x max(age - 60, 0) / 10) in those regions
    (Harvard-Oxford, 4 mm soft edges); no decline assumed before 60 (not measured there).
    """
    decline = AGE_UPTAKE_PER_DECADE * max(age - AGE_UPTAKE_ONSET, 0.0) / 10.0
    return {"age_uptake_decline": float(decline)}


def head_layers(
    rng: np.random.Generator, space: TemplateSpace, anat: dict[str, float]
) -> np.ndarray:
    """Normalized distance (float32, mm) outside the skull's inner surface, work grid.

    The true distance is divided by a smooth random thickness factor (0.82-1.22) so the
    skull and scalp thickness vary over the head.
    """
    factor = np.exp(0.2 * _smooth_field(rng, _unit_axes(space.shape), 2))
    return (space.dist_out / factor).astype(np.float32)


def t1w_template_image(
    space: TemplateSpace, anat: dict[str, float], layers: np.ndarray
) -> np.ndarray:
    """Noise- and bias-free T1w head (WM = 1) on the work grid: tissue mix + skull/scalp."""
    d, prof = _layer_profile(
        anat,
        {k: anat[f"t1_{k}"] for k in ("bone", "diploe", "muscle", "fat", "skin")},
    )
    outside = np.interp(layers, d, prof, right=0.0).astype(np.float32)
    inside = space.gm * anat["t1_gm"] + space.wm + space.csf * anat["t1_csf"]
    return inside + (1.0 - space.icv) * outside


def head_mask(space: TemplateSpace, anat: dict[str, float], layers: np.ndarray) -> np.ndarray:
    """Boolean head (intracranial + skull + scalp) on the work grid."""
    return (space.icv > 0.5) | (layers < anat["skull_mm"] + anat["scalp_mm"])


def random_uptake(rng: np.random.Generator) -> dict[str, float]:
    """Per-subject FDG uptake ratios (GM = 1), PET scale (Bq/mL), PSF and noise."""
    return {
        "gm_bqml": float(rng.uniform(7000.0, 15000.0)),
        "wm": float(rng.uniform(0.25, 0.35)),
        "csf": float(rng.uniform(*CSF_UPTAKE)),
        "skull": float(rng.uniform(0.0, 0.03)),
        "muscle": float(rng.uniform(0.15, 0.25)),
        "fat": float(rng.uniform(0.03, 0.08)),
        "skin": float(rng.uniform(0.08, 0.15)),
        "pattern_gamma": float(rng.uniform(0.7, 1.3)),
        "pattern_random": float(rng.uniform(0.01, 0.03)),
        "psf_fwhm_mm": float(rng.uniform(5.0, 6.0)),
        "noise": float(rng.uniform(0.03, 0.05)),
    }


@dataclass
class Lesion:
    """One hypometabolic lesion (smooth ellipsoidal blob centred in cortical GM).

    ``profile(x) = 0.5 (1 - tanh((r(x) - radius_mm) / edge_mm))`` where ``r`` is the
    ellipsoidal distance (MNI mm) from ``center_mni``; GM uptake is multiplied by
    ``1 - uptake_loss * profile``. ``volume_ml`` is the GM-weighted volume
    (sum of profile x GM fraction x voxel volume) on the native T1w grid;
    ``mask_volume_ml`` the volume of the truth mask (label ``label``).
    """

    label: int
    center_mni: tuple[float, float, float]
    radius_mm: float
    edge_mm: float
    axes: tuple[float, float, float]
    rotation: np.ndarray
    uptake_loss: float
    target_volume_ml: float
    center_t1w: tuple[float, float, float] = (0.0, 0.0, 0.0)
    volume_ml: float = 0.0
    mask_volume_ml: float = 0.0
    hemisphere: str = "unknown"
    lobe: str = "unknown"
    region: str = "unknown"

    def profile_box(
        self, space: TemplateSpace, radius_mm: float | None = None
    ) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """(work-grid slices, profile values in [0, 1]) of this lesion."""
        radius = self.radius_mm if radius_mm is None else radius_mm
        res = space.resolution
        reach = radius * max(self.axes) + 4.0 * self.edge_mm + res
        centre_vox = np.linalg.solve(space.affine, np.append(self.center_mni, 1.0))[:3]
        lo = np.maximum(np.floor(centre_vox - reach / res).astype(int), 0)
        hi = np.minimum(np.ceil(centre_vox + reach / res).astype(int) + 1, space.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        offs = [(g - c) * res for g, c in zip(grids, centre_vox, strict=True)]
        local = np.einsum("ji,j...->i...", self.rotation, np.stack(offs))
        r = np.sqrt(sum((local[i] / self.axes[i]) ** 2 for i in range(3)))
        prof = 0.5 * (1.0 - np.tanh((r - radius) / self.edge_mm))
        return sl, prof.astype(np.float32)  # type: ignore[return-value]


def _gm_weighted_ml(space: TemplateSpace, lesion: Lesion, radius: float, jac: float) -> float:
    sl, prof = lesion.profile_box(space, radius)
    return float((prof * space.gm[sl]).sum()) * space.resolution**3 * jac / 1000.0


def place_lesions(
    rng: np.random.Generator,
    space: TemplateSpace,
    n_lesions: int,
    loss_range: tuple[float, float],
    volume_range_ml: tuple[float, float],
    jacobian: float,
) -> list[Lesion]:
    """Draw ``n_lesions`` non-overlapping lesions centred in cortical GM (MNI work grid).

    The radius is solved so that the GM-weighted volume in native space (MNI volume x
    ``jacobian``, the determinant of the MNI -> T1w affine) matches a volume drawn from
    ``volume_range_ml``.
    """
    lesions: list[Lesion] = []
    ijk_all = space.cortex
    for label in range(1, n_lesions + 1):
        target = float(rng.uniform(*volume_range_ml))
        loss = float(rng.uniform(*loss_range))
        axes = np.exp(rng.uniform(-0.2, 0.2, 3))
        axes /= np.prod(axes) ** (1.0 / 3.0)
        rotation = rotation_matrix(rng.uniform(-90.0, 90.0, 3))
        for _attempt in range(50):
            flat = int(ijk_all[rng.integers(len(ijk_all))])
            ijk = np.array(np.unravel_index(flat, space.shape), dtype=float)
            centre = space.affine[:3, :3] @ ijk + space.affine[:3, 3]
            lesion = Lesion(
                label=label,
                center_mni=(float(centre[0]), float(centre[1]), float(centre[2])),
                radius_mm=0.0,
                edge_mm=2.5,
                axes=(float(axes[0]), float(axes[1]), float(axes[2])),
                rotation=rotation,
                uptake_loss=loss,
                target_volume_ml=target,
            )
            lo_r, hi_r = 0.5, 10.0
            while _gm_weighted_ml(space, lesion, hi_r, jacobian) < target and hi_r < 80:
                lo_r, hi_r = hi_r, hi_r * 2.0
            for _ in range(30):
                mid = 0.5 * (lo_r + hi_r)
                if _gm_weighted_ml(space, lesion, mid, jacobian) < target:
                    lo_r = mid
                else:
                    hi_r = mid
            lesion.radius_mm = float(0.5 * (lo_r + hi_r))
            reach = lesion.radius_mm * max(lesion.axes) + 2 * lesion.edge_mm
            clear = all(
                np.linalg.norm(np.subtract(lesion.center_mni, o.center_mni))
                > reach + o.radius_mm * max(o.axes) + 2 * o.edge_mm
                for o in lesions
            )
            if clear:
                info = label_coordinate(lesion.center_mni)
                lesion.hemisphere = info["hemisphere"]
                lesion.region = info["region"]
                lesion.lobe = info["lobe"]
                lesions.append(lesion)
                break
    return lesions


def lesion_maps(space: TemplateSpace, lesions: Sequence[Lesion]) -> tuple[np.ndarray, np.ndarray]:
    """Work-grid (uptake loss factor 1 - sum loss*profile, label of the dominant lesion)."""
    factor = np.ones(space.shape, np.float32)
    best = np.zeros(space.shape, np.float32)
    label = np.zeros(space.shape, np.uint8)
    for lesion in lesions:
        sl, prof = lesion.profile_box(space)
        factor[sl] -= lesion.uptake_loss * prof
        win = (prof > best[sl]) & (prof >= 0.01)
        label[sl][win] = lesion.label
        best[sl] = np.maximum(best[sl], prof)
    return factor, label


def pet_activity_mni(
    rng: np.random.Generator | None,
    space: TemplateSpace,
    uptake: dict[str, float],
    anat: dict[str, float],
    layers: np.ndarray,
    lesions: Sequence[Lesion] = (),
    pattern_field: np.ndarray | None = None,
) -> np.ndarray:
    """True FDG activity (relative, GM ~1) on the work grid, before PSF blur.

    ``GM x pattern x lesion factor + WM x wm + CSF x csf + skull/scalp layers``. The
    regional pattern is the atlas pattern to the power ``pattern_gamma`` times a smooth
    random field (+-``pattern_random``); pass ``pattern_field`` to reuse one.
    """
    if pattern_field is None:
        if rng is None:
            raise ValueError("need rng or pattern_field")
        pattern_field = random_pattern_field(rng, space, uptake)
    factor, _ = lesion_maps(space, lesions)
    d, prof = _layer_profile(
        anat,
        {
            "bone": uptake["skull"],
            "diploe": uptake["skull"],
            "muscle": uptake["muscle"],
            "fat": uptake["fat"],
            "skin": uptake["skin"],
        },
    )
    outside = np.interp(layers, d, prof, right=0.0).astype(np.float32)
    decline = float(uptake.get("age_uptake_decline", 0.0))
    if decline and space.age_regions is not None:
        factor = factor * (1.0 - decline * space.age_regions)
    act = space.gm * pattern_field * factor + space.wm * uptake["wm"] + space.csf * uptake["csf"]
    return (act + (1.0 - space.icv) * outside).astype(np.float32)


METABOLIC_REGION_SD = 0.07
"""SD of the per-region (both hemispheres) log uptake factor of a subject."""
METABOLIC_SIDE_SD = 0.02
"""SD of the additional per-hemisphere log uptake factor of a region."""


def regional_metabolism(rng: np.random.Generator, space: TemplateSpace) -> np.ndarray:
    """Per-subject regional GM uptake factors (smooth at 4 mm; ~1 +- 7 %) on the work grid.

    Every Harvard-Oxford region gets ``exp(0.07 z_region + 0.02 z_side)``; ``z_region`` is
    shared by the left and right region of the same name. This is the metabolic
    variation that the T1w cannot show. With the gamma and the smooth field of
    :func:`random_pattern_field` it gives a regional GM SUVR CoV (metabolism alone,
    noise-free, template anatomy, 111 Harvard-Oxford regions, 100 draws) of median 4.0 %
    (10-90 %: 3.2-4.6 %); without these factors it was 0.4 % (with SDs of 4 and 1.5 %:
    2.4 %). Healthy-control regional FDG SUVR CoVs are ~5-10 % with anatomy, partial
    volume and noise included.
    """
    if space.region_labels is None:
        return np.ones(space.shape, np.float32)
    _, names = load_atlas("harvard_oxford")
    n = int(max(names)) + 1
    pairs = sorted({names[v].lower().replace("left_", "").replace("right_", "") for v in names})
    z_pair = rng.standard_normal(len(pairs))
    z_side = rng.standard_normal(n)
    lut = np.ones(max(n, 256), np.float32)
    for v, name in names.items():
        key = name.lower().replace("left_", "").replace("right_", "")
        z = METABOLIC_REGION_SD * z_pair[pairs.index(key)] + METABOLIC_SIDE_SD * z_side[v]
        lut[v] = np.exp(z)
    out = lut[space.region_labels]
    return ndi.gaussian_filter(out, 4.0 / space.resolution, mode="nearest").astype(np.float32)


def random_pattern_field(
    rng: np.random.Generator, space: TemplateSpace, uptake: dict[str, float]
) -> np.ndarray:
    """Subject GM uptake pattern: atlas pattern ** gamma x (1 + smooth random field) x
    regional factors (:func:`regional_metabolism`)."""
    rand = _smooth_field(rng, _unit_axes(space.shape), 3)
    out = space.uptake_pattern ** uptake["pattern_gamma"] * (1.0 + uptake["pattern_random"] * rand)
    out *= regional_metabolism(rng, space)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------
# Sampling onto native grids
# --------------------------------------------------------------------------------------


def _sample(
    volumes: Sequence[tuple[np.ndarray, int]],
    space: TemplateSpace,
    out_shape: Sequence[int],
    out_affine: np.ndarray,
    mni_from_world: np.ndarray,
    warp: Warp,
    chunk: int = 2_000_000,
) -> list[np.ndarray]:
    """Resample work-grid volumes (with interpolation order) onto a native grid, once.

    Native voxel -> world (``out_affine``) -> affinely aligned MNI (``mni_from_world``)
    -> MNI via the warp -> work voxel; ``scipy.ndimage.map_coordinates`` (constant 0).
    """
    shape = tuple(int(n) for n in out_shape)
    outs = [np.zeros(shape, np.float32 if order else vol.dtype) for vol, order in volumes]
    to_y = mni_from_world @ out_affine
    work_inv = np.linalg.inv(space.affine)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    slab = max(1, chunk // (shape[0] * shape[1]))
    for k0 in range(0, shape[2], slab):
        k1 = min(k0 + slab, shape[2])
        nk = k1 - k0
        idx = np.empty((3, shape[0], shape[1], nk))
        idx[0] = ii[..., None]
        idx[1] = jj[..., None]
        idx[2] = np.arange(k0, k1)[None, None, :]
        pts = idx.reshape(3, -1)
        y = to_y[:3, :3] @ pts + to_y[:3, 3:4]
        mni = y + warp.displacement(y)
        vox = work_inv[:3, :3] @ mni + work_inv[:3, 3:4]
        for (vol, order), out in zip(volumes, outs, strict=True):
            vals = ndi.map_coordinates(vol, vox, order=order, mode="constant", cval=0.0)
            out[:, :, k0:k1] = vals.reshape(shape[0], shape[1], nk)
    return outs


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    imag = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt(real * real + imag * imag)


def _image(data: np.ndarray, affine: np.ndarray, code: int = 1) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    return img


# --------------------------------------------------------------------------------------
# One subject
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class PhantomSubject:
    """All images (native spaces) and truth of one simulated subject."""

    t1w: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    csf: nib.Nifti1Image
    warp: Warp
    geometry: dict[str, Any]
    anatomy: dict[str, float]
    uptake: dict[str, float]
    lesions: list[Lesion] = field(default_factory=list)
    lesion_mask: nib.Nifti1Image | None = None
    pet: nib.Nifti1Image | None = None
    frame_times_start: list[float] = field(default_factory=list)
    frame_duration: list[float] = field(default_factory=list)
    pet_scanner: PetScanner | None = None


def simulate_subject(
    rng: np.random.Generator,
    *,
    voxel_size: float = 1.0,
    orientation: str = "LAS",
    n_lesions: int = 0,
    lesion_loss: tuple[float, float] = (0.10, 0.30),
    lesion_volume_ml: tuple[float, float] = (1.0, 20.0),
    with_pet: bool = True,
    n_frames: int = 1,
    scanner: PetScanner | None = None,
    age: float | None = None,
    pet_fov_cut_mm: float | None = None,
) -> PhantomSubject:
    """Simulate one subject: T1w head (native grid), FDG PET (scanner grid) and truth.

    ``voxel_size`` is the isotropic T1w voxel size in mm (the work grid is 1 mm below
    1.5 mm, else 2 mm). ``n_lesions`` > 0 makes a patient. ``n_frames`` > 1 gives 4D PET
    with inter-frame motion. ``age`` (years; default drawn from U(20, 85)) drives the
    cortical thickness, ventricle size and frontal/cingulate uptake
    (:func:`random_morphometry`, :func:`age_uptake`). ``pet_fov_cut_mm``: the PET's
    axial field of view leaves out this much (mm) of the brain's inferior end (every
    frame is 0 outside it, as a reconstruction outside its field of view); None: the
    whole head is in view. ~10-15 s and < 2 GB at 1 mm (after the template is cached).
    """
    if not 0.5 <= voxel_size <= 4.0:
        raise ValueError("voxel size must be between 0.5 and 4 mm")
    template = load_template_space(1 if voxel_size < 1.5 else 2)
    if age is None:
        age = float(rng.uniform(*AGE_RANGE))
    space, anat = random_subject_anatomy(rng, template, age)
    uptake = random_uptake(rng)
    uptake.update(age_uptake(age))

    # MNI -> T1w: rigid + per-axis scale around MNI 0, then scanner translation.
    g = rng.uniform(-0.05, 0.05)
    scales = MNI_BRAIN_SCALE * (1.0 + g + rng.uniform(-0.03, 0.03, 3))
    angles = rng.uniform(-12.0, 12.0, 3)
    trans = rng.uniform(-15.0, 15.0, 3)
    t1w_from_mni = rigid_matrix(angles, trans, scales=scales)
    mni_from_t1w = np.linalg.inv(t1w_from_mni)
    jac = float(abs(np.linalg.det(t1w_from_mni[:3, :3])))
    warp = random_warp(rng, space, float(rng.uniform(2.0, 4.0)))

    layers = head_layers(rng, space, anat)
    head = head_mask(space, anat, layers)
    t1_mni = t1w_template_image(space, anat, layers)

    lesions = place_lesions(rng, space, n_lesions, lesion_loss, lesion_volume_ml, jac)
    factor, lesion_label = lesion_maps(space, lesions)
    profile_max = np.zeros(space.shape, np.float32)
    for lesion in lesions:
        sl, prof = lesion.profile_box(space)
        profile_max[sl] = np.maximum(profile_max[sl], prof)

    # Native T1w grid covering the head (+10 mm), axis-aligned, voxel order `orientation`.
    step = max(1, int(round(4 / space.resolution)))
    hv = np.array(np.nonzero(head[::step, ::step, ::step]), dtype=float) * step
    head_mni = space.affine[:3, :3] @ hv + space.affine[:3, 3:4]
    head_t1 = mni_points_to_t1w(head_mni.T, t1w_from_mni, warp, iterations=3).T
    shape, affine = _grid_for_extent(
        orientation, head_t1.min(1) - 10.0, head_t1.max(1) + 10.0, voxel_size
    )

    volumes: list[tuple[np.ndarray, int]] = [
        (t1_mni, 1),
        (space.gm, 1),
        (space.wm, 1),
        (space.csf, 1),
        (space.brain, 1),
    ]
    if lesions:
        volumes += [(profile_max, 1), (lesion_label, 0)]
    sampled = _sample(volumes, space, shape, affine, mni_from_t1w, warp)
    t1_native, gm_n, wm_n, csf_n, brain_n = sampled[:5]

    bias = 1.0 + anat["bias_amplitude"] * _smooth_field(rng, _unit_axes(shape), 2)
    sigma = anat["t1_noise"]
    t1 = _rician(rng, t1_native * bias, sigma) * anat["t1_scale"]
    t1_img = _image(np.clip(np.rint(t1), 0, 32767).astype(np.int16), affine)
    voxvol = voxel_size**3 / 1000.0  # ml

    lesion_img = None
    if lesions:
        prof_n, lab_n = sampled[5], sampled[6]
        mask = np.where(
            (prof_n >= LESION_PROFILE_THRESHOLD) & (gm_n >= LESION_GM_THRESHOLD), lab_n, 0
        ).astype(np.uint8)
        lesion_img = _image(mask, affine)
        for lesion in lesions:
            sel = lab_n == lesion.label
            lesion.volume_ml = float((prof_n[sel] * gm_n[sel]).sum()) * voxvol
            lesion.mask_volume_ml = float((mask == lesion.label).sum()) * voxvol
            ct1 = mni_points_to_t1w(np.array([lesion.center_mni]), t1w_from_mni, warp)[0]
            lesion.center_t1w = (float(ct1[0]), float(ct1[1]), float(ct1[2]))

    brain_bin = (brain_n >= 0.5).astype(np.uint8)
    geometry: dict[str, Any] = {
        "space": TEMPLATE_SPACE,
        "convention": (
            "RAS world mm (NIfTI scanner coordinates); 4x4 matrices act on column vectors. "
            "T1w->MNI: y = mni_from_t1w @ x_t1w, x_mni = y + u(y) with u the displacement "
            "in warp_file (4D, last axis x/y/z in mm, trilinear, edge values outside). "
            "PET: x_pet = pet_from_t1w @ x_t1w."
        ),
        "mni_from_t1w": mni_from_t1w.tolist(),
        "t1w_from_mni": t1w_from_mni.tolist(),
        "t1w_from_mni_rotation_deg": angles.tolist(),
        "t1w_from_mni_translation_mm": trans.tolist(),
        "t1w_from_mni_scales": scales.tolist(),
        "warp_max_displacement_mm": float(np.linalg.norm(warp.data, axis=-1).max()),
        "t1w_orientation": orientation.upper(),
        "t1w_shape": list(shape),
        "t1w_voxel_size_mm": float(voxel_size),
        "t1w_affine": affine.tolist(),
        "brain_volume_ml": float(brain_bin.sum()) * voxvol,
        "template_resolution_mm": space.resolution,
        "age": float(age),
        **tissue_volumes_ml(space, jac),
    }
    subject = PhantomSubject(
        t1w=t1_img,
        brain_mask=_image(brain_bin, affine),
        gm=_image(np.clip(gm_n, 0, 1).astype(np.float32), affine),
        wm=_image(np.clip(wm_n, 0, 1).astype(np.float32), affine),
        csf=_image(np.clip(csf_n, 0, 1).astype(np.float32), affine),
        warp=warp,
        geometry=geometry,
        anatomy=anat,
        uptake=uptake,
        lesions=lesions,
        lesion_mask=lesion_img,
    )
    del sampled, t1_native, t1, bias
    if with_pet:
        _simulate_pet(rng, subject, space, layers, scanner, n_frames)
        if pet_fov_cut_mm is not None:
            cut_pet_fov(subject, pet_fov_cut_mm)
    return subject


def cut_pet_fov(subject: PhantomSubject, cut_mm: float) -> None:
    """Limit the PET's axial (world z) field of view so that it leaves out ``cut_mm`` of
    the brain's inferior extent and ends ``PET_FOV_TOP_MARGIN_MM`` above its top: the
    voxels outside are 0 in every frame. The brain extent is that of the truth brain
    mask seen in the reference PET frame; the geometry gets ``pet_fov_z_mm`` (world z
    range kept), ``pet_fov_mm`` (its length) and ``pet_fov_brain_cut_mm``."""
    if subject.pet is None:
        raise ValueError("this subject has no PET")
    if not cut_mm >= 0:
        raise ValueError("the field-of-view cut must be >= 0 mm")
    geo = subject.geometry
    brain = np.argwhere(np.asanyarray(subject.brain_mask.dataobj) > 0)
    t1w_xyz = nib.affines.apply_affine(subject.brain_mask.affine, brain)
    pet_z = nib.affines.apply_affine(np.asarray(geo["pet_from_t1w"]), t1w_xyz)[:, 2]
    low, high = float(pet_z.min()) + float(cut_mm), float(pet_z.max()) + PET_FOV_TOP_MARGIN_MM
    img = subject.pet
    aff = img.affine
    ijk = np.ix_(*[np.arange(n) for n in img.shape[:3]])
    z = aff[2, 0] * ijk[0] + aff[2, 1] * ijk[1] + aff[2, 2] * ijk[2] + aff[2, 3]
    outside = (z < low) | (z > high)
    data = np.asanyarray(img.dataobj).copy()
    data[outside] = 0.0
    out = nib.Nifti1Image(data, aff, img.header)
    subject.pet = out
    geo.update(
        {
            "pet_fov_z_mm": [round(low, 2), round(high, 2)],
            "pet_fov_mm": round(high - low, 2),
            "pet_fov_brain_cut_mm": float(cut_mm),
        }
    )


def _simulate_pet(
    rng: np.random.Generator,
    subject: PhantomSubject,
    space: TemplateSpace,
    layers: np.ndarray,
    scanner: PetScanner | None,
    n_frames: int,
) -> None:
    """Add the FDG PET (scanner grid, Bq/mL) and its geometry to ``subject``."""
    uptake, anat, geo = subject.uptake, subject.anatomy, subject.geometry
    if scanner is None:
        scanner = PET_SCANNERS[int(rng.integers(len(PET_SCANNERS)))]
    if n_frames < 1:
        raise ValueError("number of PET frames must be >= 1")
    pattern = random_pattern_field(rng, space, uptake)
    act = pet_activity_mni(None, space, uptake, anat, layers, subject.lesions, pattern)
    t1w_from_mni = np.asarray(geo["t1w_from_mni"])
    mni_from_t1w = np.asarray(geo["mni_from_t1w"])
    native_scale = float(abs(np.linalg.det(t1w_from_mni[:3, :3]))) ** (1.0 / 3.0)
    sigma_mm = uptake["psf_fwhm_mm"] / (2.0 * np.sqrt(2.0 * np.log(2.0))) / native_scale
    act = ndi.gaussian_filter(act, sigma_mm / space.resolution, mode="constant")

    # PET world: rigid misalignment about the brain centre, grid centred near the brain.
    brain_centre_t1 = mni_points_to_t1w(
        np.array([[0.0, -18.0, 10.0]]), t1w_from_mni, subject.warp
    )[0]
    angles = rng.uniform(-8.0, 8.0, 3)
    trans = rng.uniform(-15.0, 15.0, 3)
    pet_from_t1w = rigid_matrix(angles, trans, center_mm=brain_centre_t1)
    grid_centre = (pet_from_t1w @ np.append(brain_centre_t1, 1.0))[:3]
    grid_centre = np.round(grid_centre + rng.uniform(-5.0, 5.0, 3), 1)
    affine = oriented_affine(scanner.orientation, scanner.shape, scanner.zooms, grid_centre)

    frames_from_t1w = [pet_from_t1w]
    frame_motion = []
    for _ in range(1, n_frames):
        motion = rigid_matrix(
            rng.uniform(-1.5, 1.5, 3), rng.uniform(-2.0, 2.0, 3), center_mm=grid_centre
        )
        frame_motion.append(motion)
        frames_from_t1w.append(motion @ pet_from_t1w)
    frames = []
    noise_frac = uptake["noise"] * np.sqrt(n_frames)
    scale = uptake["gm_bqml"]
    for pet_from in frames_from_t1w:
        mni_from_pet = mni_from_t1w @ np.linalg.inv(pet_from)
        (frame,) = _sample([(act, 1)], space, scanner.shape, affine, mni_from_pet, subject.warp)
        frame = np.clip(frame, 0.0, None)
        noise = ndi.gaussian_filter(
            rng.standard_normal(frame.shape, dtype=np.float32), 0.7, mode="wrap"
        )
        noise /= max(float(noise.std()), 1e-9)
        frame = frame + noise_frac * np.sqrt(frame * 1.0) * noise
        frames.append(np.clip(frame, 0.0, None) * scale)
    data = np.stack(frames, axis=-1) if n_frames > 1 else frames[0]
    img = _image(data.astype(np.float32), affine)
    if n_frames > 1:
        img.header.set_zooms((*scanner.zooms, 300.0))
    duration = 300.0 if n_frames > 1 else 1200.0
    subject.frame_times_start = [FDG_FRAME_START_S + i * duration for i in range(n_frames)]
    subject.frame_duration = [duration] * n_frames
    subject.pet = img
    subject.pet_scanner = scanner
    geo.update(
        {
            "pet_from_t1w": pet_from_t1w.tolist(),
            "t1w_from_pet": np.linalg.inv(pet_from_t1w).tolist(),
            "pet_from_t1w_rotation_deg": angles.tolist(),
            "pet_from_t1w_translation_mm": trans.tolist(),
            "pet_from_t1w_center_mm": brain_centre_t1.tolist(),
            "pet_frames_from_t1w": [m.tolist() for m in frames_from_t1w],
            "pet_shape": list(data.shape),
            "pet_voxel_size_mm": list(scanner.zooms),
            "pet_orientation": scanner.orientation,
            "pet_affine": affine.tolist(),
            "pet_scanner": scanner.name,
            "pet_psf_fwhm_mm": uptake["psf_fwhm_mm"],
            "pet_noise_fraction": float(noise_frac),
        }
    )
