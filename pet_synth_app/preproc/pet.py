"""PET preprocessing: frame averaging with motion correction, coregistration, SUVR.

Plain functions over nibabel images (world RAS mm affines). Rigid transforms are ANTs
``.mat`` files; like every ANTs transform they map *fixed-space points to moving-space
points*, so they resample a moving image onto the fixed grid. :func:`read_ants_rigid`
turns one into a 4x4 world (RAS mm) matrix with that same direction.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

import ants
import nibabel as nib
import numpy as np
from ants.internal import get_pointer_string
from scipy import ndimage as ndi

from ..config import MIN_BRAIN_COVERAGE
from .anat import (
    _antsreg,
    _as3d,
    _like,
    _linear_stage,
    _needs_isolation,
    ants_to_nib,
    apply_transforms,
    nib_to_ants,
    run_with_threads,
    set_threads,
)

LOGGER = logging.getLogger(__name__)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------- transform helpers
def read_ants_rigid(path: str) -> np.ndarray:
    """Read an ANTs/ITK linear transform file (.mat/.txt) as a 4x4 world (RAS mm) matrix.

    The matrix maps points of the *fixed* space to points of the *moving* space (the ANTs
    file convention: ``apply_transforms(fixed, moving, [path])`` samples moving at
    ``M @ x``). ITK stores it in LPS; it is converted to RAS here: ``M_ras = F M_lps F``
    with ``F = diag(-1, -1, 1)``. Works for any linear type (Euler, Affine, ...).
    """
    tx = ants.read_transform(path)
    if tx.type not in (
        "AffineTransform",
        "Euler3DTransform",
        "VersorRigid3DTransform",
        "QuaternionRigidTransform",
        "Similarity3DTransform",
        "ScaleVersor3DTransform",
        "CenteredAffineTransform",
        "MatrixOffsetTransformBase",
        "Rigid3DTransform",
        "TranslationTransform",
    ):
        raise ValueError(f"{path} holds a {tx.type}, not a linear transform")
    origin = np.asarray(tx.apply_to_point((0.0, 0.0, 0.0)))
    m_lps = np.eye(4)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0
        m_lps[:3, i] = np.asarray(tx.apply_to_point(tuple(e))) - origin
    m_lps[:3, 3] = origin
    return _LPS @ m_lps @ _LPS


def write_ants_rigid(matrix: np.ndarray, path: str) -> str:
    """Write a 4x4 world (RAS mm) fixed->moving point matrix as an ANTs affine ``.mat``."""
    m = _LPS @ np.asarray(matrix, dtype=float) @ _LPS
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=m[:3, :3],
        offset=m[:3, 3].tolist(),
    )
    ants.write_transform(tx, path)
    return path


def to_ants_affine(path: str, out_path: str) -> str:
    """Copy the linear transform file ``path`` (ITK text ``.txt``/``.tfm`` as PETPrep writes,
    or ANTs ``.mat``) to ``out_path`` as an ANTs ``.mat``, in double precision; same
    transform, same direction. ValueError if it is not an ITK ``AffineTransform``."""
    tx = ants.read_transform(path, precision="double")
    if tx.type != "AffineTransform":
        raise ValueError(f"{path} holds a {tx.type}, not an AffineTransform")
    ants.write_transform(tx, out_path)
    return out_path


def displacement_error_mm(
    affine_a: np.ndarray, affine_b: np.ndarray, mask: nib.Nifti1Image
) -> float:
    """Mean Euclidean distance (mm) between mask points mapped by two 4x4 world transforms.

    The points are the centers of the nonzero voxels of ``mask`` in world (RAS mm)
    coordinates; both matrices act on world points.
    """
    ijk = np.argwhere(np.asanyarray(mask.dataobj) > 0)
    if ijk.size == 0:
        raise ValueError("displacement_error_mm: empty mask")
    xyz = nib.affines.apply_affine(mask.affine, ijk)
    diff = (
        nib.affines.apply_affine(np.asarray(affine_a) - np.asarray(affine_b) + np.eye(4), xyz)
        - xyz
    )
    return float(np.linalg.norm(diff, axis=1).mean())


def _identity_tx(path: str) -> str:
    ants.write_transform(ants.create_ants_transform(dimension=3), path)
    return path


# ----------------------------------------------------------------------- coverage
COVERAGE_INTERPOLATED_MIN = 0.999
"""A resampled voxel is covered when the linear interpolation of the 0/1 coverage is at
least this, i.e. every input voxel it was interpolated from had data: a voxel at the
edge of the field of view would otherwise mix the zeros outside it into its uptake."""


def frame_support(frame: np.ndarray) -> np.ndarray:
    """Voxels of one 3D PET frame that hold data: finite and non-zero, with the enclosed
    zero regions filled (a zero voxel surrounded by data is a value, e.g. in a cavity;
    the zeros outside a reconstructed field of view reach the image border). Bool array."""
    data = np.asarray(frame)
    return ndi.binary_fill_holes(np.isfinite(data) & (data != 0))


def pet_coverage(pet: nib.Nifti1Image | np.ndarray) -> np.ndarray:
    """The PET field of view on its own grid: voxels with data (:func:`frame_support`) in
    every frame of a 3D or 4D PET (bool, 3D). For a motion-corrected average use
    ``frame_average(..., return_coverage=True)``, which moves each frame's support with
    that frame."""
    data = np.asanyarray(pet.dataobj) if hasattr(pet, "dataobj") else np.asarray(pet)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return frame_support(data)
    if data.ndim != 4:
        raise ValueError(f"PET must be 3D or 4D, got shape {data.shape}")
    out = frame_support(data[..., 0])
    for i in range(1, data.shape[3]):
        out &= frame_support(data[..., i])
    return out


def resample_coverage(
    coverage: nib.Nifti1Image, reference: nib.Nifti1Image, transforms: list[str]
) -> nib.Nifti1Image:
    """A coverage mask resampled onto ``reference`` through ANTs ``transforms`` (the PET's
    own, ANTs order): linear interpolation of the 0/1 mask, then covered where it is at
    least ``COVERAGE_INTERPOLATED_MIN`` (uint8, 0 outside the input grid)."""
    src = _as3d(coverage, "coverage mask")
    img = _like((np.asanyarray(src.dataobj) > 0).astype(np.float32), src)
    moved = apply_transforms(img, reference, list(transforms), interpolation="linear")
    data = np.asanyarray(moved.dataobj) >= COVERAGE_INTERPOLATED_MIN
    return _like(data, _as3d(reference, "reference"), np.uint8)


def coverage_fraction(coverage: np.ndarray, brain_mask: np.ndarray) -> float:
    """Fraction (0-1) of the brain mask's voxels inside the coverage mask (same grid;
    nonzero = inside); NaN for an empty brain mask."""
    brain = np.asarray(brain_mask) > 0
    cov = np.asarray(coverage) > 0
    if cov.shape != brain.shape:
        raise ValueError(f"coverage grid {cov.shape} differs from the brain mask's {brain.shape}")
    n = int(brain.sum())
    return float("nan") if n == 0 else float((cov & brain).sum()) / n


def covered_brain(brain_mask: np.ndarray, coverage: np.ndarray | None) -> np.ndarray:
    """Where a participant's statistics are computed (bool, one grid): the brain mask
    inside the PET field of view (``coverage`` None: the whole mask). The one rule of the
    reference region's, Z maps', OC-SVM score's and clusters' masks."""
    inside = np.asarray(brain_mask) > 0
    if coverage is not None:
        cov = np.asarray(coverage) > 0
        if cov.shape != inside.shape:
            raise ValueError(f"coverage grid {cov.shape} differs from the mask's {inside.shape}")
        inside = inside & cov
    if not inside.any():
        raise ValueError("the PET field of view does not cover any voxel of the brain mask")
    return inside


def coverage_warning(fraction: float) -> str | None:
    """The warning for a field of view covering ``fraction`` of the brain mask, or None
    when it covers at least ``MIN_BRAIN_COVERAGE``."""
    if not np.isfinite(fraction) or round(fraction, 3) >= MIN_BRAIN_COVERAGE:
        return None
    return (
        f"the PET field of view covers only {100 * fraction:.1f} % of the brain mask "
        f"(< {100 * MIN_BRAIN_COVERAGE:g} %): no finding is possible outside it (outline in "
        "the report)"
    )


def coverage_metadata(fraction: float) -> dict:
    """Sidecar entries of a coverage fraction: ``BrainCoverage`` (0-1),
    ``BrainCoverageMinimum`` and, below it, ``BrainCoverageWarning``."""
    meta = {"BrainCoverage": round(float(fraction), 4), "BrainCoverageMinimum": MIN_BRAIN_COVERAGE}
    if (text := coverage_warning(fraction)) is not None:
        meta["BrainCoverageWarning"] = text
    return meta


# ---------------------------------------------------------------------- frame average
def _rigid_stages(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    iterations: str,
    shrink: str,
    smooth: str,
    bins: int = 32,
    rate: float = 0.2,
) -> list[str]:
    f, m = get_pointer_string(fixed), get_pointer_string(moving)
    metric = f"Mattes[{f},{m},1,{bins},Regular,{rate}]"
    return _linear_stage("Rigid[0.1]", metric, iterations, shrink, smooth, 5)


def frame_average(
    pet: nib.Nifti1Image,
    frame_durations: Sequence[float] | None = None,
    motion_correct: bool = True,
    seed: int = 0,
    n_threads: int | None = None,
    passes: int = 2,
    return_coverage: bool = False,
) -> tuple:
    """Duration-weighted mean of a (4D) PET, with optional rigid frame motion correction.

    A 3D image passes through (float32). For 4D: ``frame_durations`` (s) weight the
    frames (equal weights if None). With ``motion_correct``, every frame is registered
    rigidly (Mattes MI, 3 levels) to a reference, first the weighted mean of the raw
    frames, then (``passes`` = 2) the weighted mean of the corrected frames; each frame
    is resampled once (linear) onto the PET grid. The output is thus in the average head
    position. Every frame is registered, early low-count frames included: drop those
    before calling if they are unreliable.

    Returns (mean image float32 on the PET grid, framewise displacement ``fd`` (n_frames,)
    in mm): ``fd[0] = 0``, ``fd[i]`` is the mean displacement between the estimated
    positions of frames ``i`` and ``i - 1`` over the voxels of a head mask (all zeros
    without motion correction). One ITK thread (``n_threads=1``) makes the result
    bit-reproducible for a given ``seed``; see :func:`coregister_pet_to_t1`.

    With ``return_coverage`` a third item is the field of view of the mean (uint8 image,
    same grid): the voxels with data in every frame (:func:`pet_coverage`), each frame's
    support moved by that frame's motion correction (linear, then
    ``COVERAGE_INTERPOLATED_MIN``).
    """
    data = np.asanyarray(pet.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        mean3d = _like(np.nan_to_num(data.astype(np.float32)), pet)
        if return_coverage:
            return mean3d, np.zeros(1), _like(pet_coverage(data), pet, np.uint8)
        return mean3d, np.zeros(1)
    if data.ndim != 4:
        raise ValueError(f"PET must be 3D or 4D, got shape {pet.shape}")
    n = data.shape[3]
    if frame_durations is None:
        weights = np.ones(n)
    else:
        weights = np.asarray(frame_durations, dtype=float)
        if weights.shape != (n,):
            raise ValueError(f"{len(weights)} frame durations for {n} frames")
        if np.any(weights <= 0) or not np.all(np.isfinite(weights)):
            raise ValueError("Frame durations must be positive and finite")
    weights = weights / weights.sum()
    frames = [np.nan_to_num(data[..., i].astype(np.float32)) for i in range(n)]
    ref3d = nib.Nifti1Image(frames[0], pet.affine)
    mean = np.tensordot(np.stack(frames, -1), weights, axes=([3], [0])).astype(np.float32)
    if not motion_correct:
        if return_coverage:
            return _like(mean, ref3d), np.zeros(n), _like(pet_coverage(data), ref3d, np.uint8)
        return _like(mean, ref3d), np.zeros(n)

    if _needs_isolation(n_threads):
        return run_with_threads(
            "pet_synth_app.preproc.pet:frame_average",
            int(n_threads),
            pet=pet,
            frame_durations=None if frame_durations is None else list(frame_durations),
            motion_correct=True,
            seed=seed,
            n_threads=n_threads,
            passes=passes,
            return_coverage=return_coverage,
        )
    set_threads(n_threads)
    movs = [nib_to_ants(_like(f, ref3d)) for f in frames]
    supports = [frame_support(data[..., i]) for i in range(n)] if return_coverage else []
    coverage = np.ones(mean.shape, bool)
    zooms = np.asarray(pet.header.get_zooms()[:3], dtype=float)
    head = ndi.binary_fill_holes(ndi.gaussian_filter(mean, 1.0) > 0.2 * np.percentile(mean, 99))
    mats = [np.eye(4)] * n
    with tempfile.TemporaryDirectory(prefix="petsynth_moco_") as tmp:
        ident = _identity_tx(os.path.join(tmp, "identity.mat"))
        for p in range(max(1, int(passes))):
            fixed = nib_to_ants(_like(mean, ref3d))
            corrected = []
            mats = []
            last = p == max(1, int(passes)) - 1
            for i, mov in enumerate(movs):
                # 8 and 4 mm levels only: 0.02 mm from a full-resolution level on a real
                # FDG frame, at half the cost (~2.5 s per frame and pass on 2 cores).
                shrink = "4x2x1" if zooms.max() < 3.5 else "2x1x1"
                stages = _rigid_stages(fixed, mov, "50x25x0", shrink, "2x1x0vox")
                reg = _antsreg(fixed, mov, stages, os.path.join(tmp, f"p{p}_f{i}_"), ident, seed)
                mats.append(read_ants_rigid(reg["fwd"][0]))
                out = ants.apply_transforms(fixed, mov, reg["fwd"], interpolator="linear")
                corrected.append(out.numpy().astype(np.float32))
                if last and supports:
                    sup = nib_to_ants(_like(supports[i].astype(np.float32), ref3d))
                    moved = ants.apply_transforms(fixed, sup, reg["fwd"], interpolator="linear")
                    coverage &= moved.numpy() >= COVERAGE_INTERPOLATED_MIN
            mean = np.tensordot(np.stack(corrected, -1), weights, axes=([3], [0]))
            mean = mean.astype(np.float32)
    mask = _like(head, ref3d, np.uint8)
    fd = np.zeros(n)
    for i in range(1, n):
        fd[i] = displacement_error_mm(mats[i], mats[i - 1], mask)
    LOGGER.info("Frame motion correction: max FD %.2f mm over %d frames", fd.max(), n)
    if return_coverage:
        return _like(mean, ref3d), fd, _like(coverage, ref3d, np.uint8)
    return _like(mean, ref3d), fd


# ----------------------------------------------------------------------- coregistration
COREG_GRID_MM = 3.0
"""Grid (mm) of the smoothed copy of a T1w finer than 1.5 mm that the PET is registered
on (sigma 0.4 x grid). 3 mm instead of 2 mm: 2-2.9x faster at 1 mm, transforms within
0.15 mm of the 2 mm ones, same error against the simulated truth and same coregistration
QC on phantoms and real heads (docs/benchmarks.md, issue 17)."""


def coregister_pet_to_t1(
    pet_mean: nib.Nifti1Image,
    t1_brain: nib.Nifti1Image,
    out_dir: str,
    seed: int = 0,
    n_threads: int | None = None,
    prefix: str = "PET_to_T1w_",
) -> tuple[str, nib.Nifti1Image]:
    """Rigid PET -> T1w coregistration (Mattes mutual information, multi-resolution).

    Fixed: the skull-stripped T1w (metric restricted to its brain mask dilated by 10 mm,
    so the PET scalp/FOV edges do not drive it); moving: the (3D) PET. Initialization
    aligns the centers of mass of the T1w brain and of the PET brain-like signal (voxels
    above 30 % of the robust maximum), so offsets of several cm are tolerated. Returns
    (path of the ANTs ``.mat`` transform, PET resampled onto the T1w grid, linear,
    float32). The transform resamples PET onto T1w: ``apply_transforms(pet, t1,
    [path])``; as a point map it takes T1w points to PET points. If ``n_threads`` differs
    from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` the work runs in a child process with
    that thread count (ITK fixes it once per process); 1 thread is bit-reproducible.
    A T1w finer than 1.5 mm is registered on a ``COREG_GRID_MM`` copy. Measured: 0.3 mm
    mean error over the brain for 15 mm / 8 deg misalignments of a pseudo-PET on a scanner
    grid; ~3 s (2 mm T1w) to ~4 s (1 mm T1w) with one thread.
    """
    pet_mean = _as3d(pet_mean, "PET mean")
    t1_brain = _as3d(t1_brain, "T1w brain")
    if _needs_isolation(n_threads):
        return run_with_threads(
            "pet_synth_app.preproc.pet:coregister_pet_to_t1",
            int(n_threads),
            pet_mean=pet_mean,
            t1_brain=t1_brain,
            out_dir=os.path.abspath(out_dir),
            seed=seed,
            n_threads=n_threads,
            prefix=prefix,
        )
    set_threads(n_threads)
    os.makedirs(out_dir, exist_ok=True)
    out_prefix = os.path.join(os.path.abspath(out_dir), prefix)
    for name in ("0GenericAffine.mat",):
        if os.path.exists(out_prefix + name):
            os.remove(out_prefix + name)
    t1 = np.nan_to_num(np.asanyarray(t1_brain.dataobj).astype(np.float32))
    bmask = t1 > 0
    if bmask.sum() < 1000:
        raise ValueError("T1w brain image is (nearly) empty")
    p = np.nan_to_num(np.asanyarray(pet_mean.dataobj).astype(np.float32))
    p = np.clip(p, 0, None)
    if not np.any(p > 0):
        raise ValueError("PET image is empty")
    fixed_full = nib_to_ants(_like(t1, t1_brain))
    moving = nib_to_ants(_like(p, pet_mean))
    fixed, radius = fixed_full, 5  # metric mask: the brain dilated by ~10 mm at 2 mm
    if float(np.max(t1_brain.header.get_zooms()[:3])) < 1.5:
        # The PET has 2-3 mm voxels: register on a copy of the T1w on the coarser
        # COREG_GRID_MM grid (faster, as good: docs/benchmarks.md, issue 17).
        fixed = ants.resample_image(
            ants.smooth_image(fixed_full, 0.4 * COREG_GRID_MM, sigma_in_physical_coordinates=True),
            (COREG_GRID_MM,) * 3,
            use_voxels=False,
            interp_type=0,
        )
        radius = round(10.0 / COREG_GRID_MM)
    fmask = ants.iMath(ants.threshold_image(fixed, 1e-6, None), "MD", radius)
    # Center-of-mass initialization on the brain-like PET signal.
    hi = np.percentile(p[p > 0], 99.5)
    ps = ndi.gaussian_filter(p, 1.0)
    com_pet = nib.affines.apply_affine(
        pet_mean.affine, ndi.center_of_mass(np.where(ps > 0.3 * hi, ps, 0))
    )
    com_t1 = nib.affines.apply_affine(t1_brain.affine, ndi.center_of_mass(t1 * bmask))
    init = np.eye(4)
    init[:3, 3] = com_pet - com_t1  # fixed (T1w) point -> moving (PET) point
    f, m = get_pointer_string(fixed), get_pointer_string(moving)
    stages = [
        "--transform",
        "Rigid[0.1]",
        "--metric",
        f"Mattes[{f},{m},1,32,Regular,0.15]",
        "--convergence",
        "[100x50x25,1e-6,5]",
        "--shrink-factors",
        "4x2x1",
        "--smoothing-sigmas",
        "4x2x0mm",
    ]
    with tempfile.TemporaryDirectory(prefix="petsynth_coreg_") as tmp:
        init_path = write_ants_rigid(init, os.path.join(tmp, "init.mat"))
        reg = _antsreg(fixed, moving, stages, out_prefix, init_path, seed, masks=(fmask, None))
    path = reg["fwd"][0]
    warped = ants.apply_transforms(fixed_full, moving, [path], interpolator="linear")
    out = ants_to_nib(warped)
    return path, nib.Nifti1Image(np.asanyarray(out.dataobj), t1_brain.affine, out.header)


# -------------------------------------------------------------------------------- SUVR
def suvr_normalize(
    pet: nib.Nifti1Image,
    reference_mask: nib.Nifti1Image,
    coverage: nib.Nifti1Image | None = None,
) -> tuple[nib.Nifti1Image, float]:
    """Divide a PET by its mean uptake inside ``reference_mask`` (same grid), restricted
    to the PET field of view ``coverage`` (same grid; None: everywhere).

    Returns (SUVR image float32, reference value in the input units). Raises ValueError
    if the grids differ, the mask is empty (or outside the field of view) or the
    reference mean is not > 0.
    """
    data = np.asanyarray(pet.dataobj).astype(np.float32)
    mask = np.asanyarray(reference_mask.dataobj) > 0
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.shape != data.shape[:3] or not np.allclose(
        pet.affine, reference_mask.affine, atol=1e-3
    ):
        raise ValueError(
            f"SUVR reference mask grid {mask.shape} does not match the PET grid "
            f"{data.shape[:3]} (resample the mask onto the PET first)"
        )
    if not mask.any():
        raise ValueError("SUVR reference mask is empty: cannot compute a reference value")
    if coverage is not None:
        cov = np.asanyarray(coverage.dataobj)
        if cov.ndim == 4 and cov.shape[3] == 1:
            cov = cov[..., 0]
        try:
            mask = covered_brain(mask, cov)
        except ValueError as exc:
            if "grid" in str(exc):
                raise
            raise ValueError(
                "the SUVR reference region lies outside the PET field of view: choose "
                "another --reference-region"
            ) from None
    vals = data[mask] if data.ndim == 3 else data[mask].reshape(-1)
    ref = float(np.nanmean(vals))
    if not np.isfinite(ref) or ref <= 0:
        raise ValueError(f"SUVR reference mean is {ref:g} (must be > 0): check the PET and mask")
    out = nib.Nifti1Image(data / ref, pet.affine)
    out.header.set_xyzt_units("mm", "sec")
    return out, ref
