"""Reuse of anatomical derivatives of fMRIPrep / sMRIPrep (``petsynth --derivatives``).

For each (subject, session) the given derivatives folders are indexed with pybids and
queried by BIDS entities (the names sMRIPrep and fMRIPrep write, which are also
PetSynth's own, ``layout.OUTPUTS``): the preprocessed T1w (``desc-preproc_T1w``, N4
corrected head), the brain mask (``desc-brain_mask``), the GM/WM/CSF probability maps
(``label-*_probseg``) and the T1w <-> template transforms
(``from-T1w_to-<space>_mode-image_xfm.h5`` and back), all in the T1w space (no
``space`` entity). Session-specific files win over subject-level ones (sMRIPrep writes
one anatomy per subject unless asked otherwise).

Rules (docs/usage.md, "Chaining with fMRIPrep"):

- every reused image must lie on the raw T1w's grid (same shape and affine after
  reorientation to RAS, which is what sMRIPrep's conformation does to a single T1w), and
  a ``Sources``/``RawSources`` list in its sidecar, when it names raw T1w files, must
  name ours; otherwise the unit stops with one line per problem;
- transforms are reused only into PetSynth's template (``MNI152NLin2009aSym``), both
  directions, and only when the model input needs no registration stage (input
  representations ``mni`` and ``mni-pv``, ``synthesis.inputs.needs_registration_stages``);
  fMRIPrep's default ``MNI152NLin2009cAsym`` transforms are refused (one line) and
  PetSynth registers the reused T1w itself;
- the probability maps are reused as a set of three; anything not found is computed;
- with the transforms, the template-space T1w, brain mask and GM probseg
  (``space-MNI152NLin2009aSym_desc-preproc_T1w``, ``_desc-brain_mask``,
  ``_label-GM_probseg``, as sMRIPrep writes them for that output space) are reused as a
  set of three when all lie on the run's template grid (``--mni-resolution``), come
  from the folder of the reused transforms and the T1w, mask and GM they are made from
  are reused too, so that they agree with them; otherwise they are resampled from the
  T1w-space images as usual.

PET (PETPrep derivatives, names as nipreps/petprep writes them at commit f2b49ca of
2025-06-12: ``data/io_spec.json`` and ``workflows/pet/outputs.py``, ``layout.PETPREP_FILES``):
for each raw PET series, the PET reference ``<series>_desc-hmc_petref.nii.gz`` (or
``desc-coreg``) and the transform ``<series>_from-petref_to-T1w_mode-image_xfm.txt``
(ITK text; ``desc-coreg`` as fMRIPrep spells it, and ANTs ``.mat``, are accepted), found
by the raw PET's own entities (``ses``, ``task``, ``trc``, ``rec``, ``run``...). They are
reused as a pair, in place of PetSynth's frame average and PET -> T1w coregistration, when
the reference lies on the raw PET's grid, its sidecar's ``Sources`` (if they name a raw
PET) name this series, the transform is an ITK ``AffineTransform`` and the T1w it targets
is known to be the run's (a ``desc-preproc_T1w`` of the unit in the same folder, or the
reused one, matching the raw T1w). Otherwise one line per problem and both are computed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import layout as L
from .config import TEMPLATE_SPACE
from .errors import PetSynthError

LOGGER = logging.getLogger("petsynth")

FMRIPREP_TEMPLATE = "MNI152NLin2009cAsym"
"""fMRIPrep's and sMRIPrep's default template (its transforms are refused)."""
IMAGE_ROLES = ("t1w", "mask", "gm", "wm", "csf")
"""Native-space images that can be reused (``layout.OUTPUTS`` keys)."""
XFM_ROLES = ("t1w2std_xfm", "std2t1w_xfm")
"""The T1w <-> template transforms (``layout.OUTPUTS`` keys)."""
STD_ROLES = ("t1w_std", "mask_std", "gm_std")
"""The preprocessed T1w, brain mask and GM probseg resampled to the template
(``space-MNI152NLin2009aSym``, any ``res``), reused as a set with the transforms."""
_STD_KEYS = {"t1w_std": "t1w", "mask_std": "mask", "gm_std": "gm"}
ROLES = IMAGE_ROLES + XFM_ROLES + STD_ROLES
STEPS = {
    "skull stripping": ("mask",),
    "N4": ("t1w",),
    "segmentation": ("gm", "wm", "csf"),
    "registration": XFM_ROLES,
    "template resampling": STD_ROLES,
}
"""The steps of the anatomical workflow that reused files replace."""
OPTIONAL_STEPS = ("template resampling",)
"""Steps named in the log only when reused (a cheap resampling, not a preprocessing step
the derivatives are expected to provide)."""
PET_ROLES = ("pet_ref", "pet2t1w_xfm")
"""PETPrep's PET reference and PET reference -> T1w transform (``layout.PETPREP_FILES``)."""
PET_STEPS = ("frame average", "coregistration")
"""The steps of the PET workflow the pair replaces."""
_SERIES_ENTITIES = ("session", "task", "acquisition", "tracer", "reconstruction", "run")
_GRID_ATOL_MM = 1e-3
_NIFTI = [".nii.gz", ".nii"]


@dataclass
class ReusedAnat:
    """What a unit reuses: ``files`` by role (``ROLES``), the dataset each came from, and
    one line per piece that could not be reused (``notes``)."""

    unit: str
    files: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pet: dict[str, ReusedPET] = field(default_factory=dict)
    """Reused PETPrep files by raw PET path (``find_pet``)."""

    @property
    def skipped_steps(self) -> list[str]:
        """Steps of the anatomical workflow replaced by reused files."""
        return [s for s, roles in STEPS.items() if all(r in self.files for r in roles)]

    @property
    def computed_steps(self) -> list[str]:
        """Steps that run as usual."""
        return [s for s in STEPS if s not in self.skipped_steps and s not in OPTIONAL_STEPS]

    def summary(self) -> str:
        """One log line: what is reused, what is computed."""
        reused = ", ".join(self.skipped_steps) or "nothing"
        computed = ", ".join(self.computed_steps) or "nothing"
        line = f"{self.unit}: reused {reused}; computed {computed}"
        for found in self.pet.values():
            what = "reused" if found.reused else "computed"
            line += f"; PET {Path(found.series).name}: {what} {' and '.join(PET_STEPS)}"
        return line


@dataclass
class ReusedPET:
    """The PETPrep files one raw PET ``series`` reuses (``files`` by role, ``PET_ROLES``;
    both or none), the dataset they came from."""

    series: str
    files: dict[str, str] = field(default_factory=dict)
    dataset: str = ""

    @property
    def reused(self) -> bool:
        """True when the frame average and the coregistration are taken from ``files``."""
        return all(r in self.files for r in PET_ROLES)


def dataset_name(root: Path) -> str:
    """A BIDS-URI-safe name of a derivatives dataset (its GeneratedBy/Name, lower case)."""
    try:
        desc = json.loads((Path(root) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        desc = {}
    gen = desc.get("GeneratedBy") or [{}]
    name = (gen[0] if isinstance(gen, list) and gen else {}).get("Name") or desc.get("Name")
    return re.sub(r"[^a-z0-9]+", "", str(name or Path(root).name).lower()) or "derivatives"


def load_derivatives(paths: list[Path]) -> list:
    """Index each ``--derivatives`` folder with pybids (as a derivatives dataset); one-line
    PetSynthError for a folder that is missing or has no ``dataset_description.json``."""
    from bids import BIDSLayout

    layouts = []
    for path in paths:
        path = Path(path).absolute()
        if not path.is_dir():
            raise PetSynthError("--derivatives folder does not exist", str(path))
        if not (path / "dataset_description.json").is_file():
            raise PetSynthError(
                "--derivatives folder has no dataset_description.json (not a BIDS "
                "derivatives dataset)",
                str(path),
            )
        layouts.append(BIDSLayout(str(path), validate=False, is_derivative=True))
    return layouts


def _query(layout, subject: str, session: str | None, role: str, to: str | None = None):
    """The first (sorted) file of ``role`` for the unit, or None (``_query_all``)."""
    hits = _query_all(layout, subject, session, role, to)
    return hits[0] if hits else None


def _query_all(
    layout, subject: str, session: str | None, role: str, to: str | None = None
) -> list[str]:
    """The files of ``role`` (``ROLES``; transforms ``to`` a template) of the unit,
    sorted: the session's if it has any, else the subject-level ones."""
    from bids.layout import Query

    ents = dict(L.entities(_STD_KEYS.get(role, role)))
    ext = ents.pop("extension")
    if role in STD_ROLES:
        ents["extension"] = _NIFTI
        ents["space"] = TEMPLATE_SPACE
    elif role in XFM_ROLES:
        ents["from" if role == "std2t1w_xfm" else "to"] = to
        ents["extension"] = ext
    else:
        ents["extension"] = _NIFTI
        ents["space"] = [Query.NONE, "T1w"]
    for ses in [session, None] if session else [None]:
        hits = layout.get(
            subject=subject, session=ses if ses else Query.NONE, return_type="file", **ents
        )
        if hits:
            return sorted(hits)
    return []


def _canonical(img: nib.Nifti1Image) -> tuple[tuple[int, ...], np.ndarray]:
    can = nib.as_closest_canonical(img)
    return tuple(can.shape[:3]), can.affine


def check_match(path: str, raw_t1w: str) -> None:
    """PetSynthError (one line) if the image ``path`` is not on the raw T1w's grid
    (shape and affine after reorientation to RAS, 0.001 mm) or if its sidecar's
    ``Sources``/``RawSources`` name raw T1w images but not ``raw_t1w``."""
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for broken files
        raise PetSynthError(f"reused file cannot be read ({exc})", path) from None
    shape, aff = _canonical(img)
    rshape, raff = _canonical(nib.load(raw_t1w))
    if shape != rshape or not np.allclose(aff, raff, atol=_GRID_ATOL_MM):
        raise PetSynthError(
            f"reused file does not match the raw T1w {Path(raw_t1w).name} (grid {shape} vs "
            f"{rshape} or a different affine/orientation)",
            path,
        )
    side = L.sidecar(Path(path))
    if not side.is_file():
        return
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return
    sources = [str(s) for key in ("Sources", "RawSources") for s in (meta.get(key) or [])]
    raw_names = [Path(s.split(":")[-1]).name for s in sources]
    raw_t1 = [n for n in raw_names if re.match(r"sub-[^_]+_.*T1w\.nii", n) and "desc-" not in n]
    if raw_t1 and Path(raw_t1w).name not in raw_t1:
        raise PetSynthError(
            f"reused file was made from {', '.join(raw_t1)}, not from the raw T1w "
            f"{Path(raw_t1w).name} (Sources in its sidecar)",
            path,
        )


def find_anat(
    layouts: list,
    subject: str,
    session: str | None,
    raw_t1w: str,
    transforms: bool = True,
    mni_resolution: int | None = None,
) -> ReusedAnat:
    """The reusable anatomical files of one unit in the derivatives ``layouts`` (first
    folder that has a piece wins). ``transforms=False``: the model input needs the
    registration stages, so the registration runs. ``mni_resolution``: the run's template
    grid (mm), on which template-space images are reused (None: they are not). Raises
    PetSynthError (one line per problem, joined) when a found image does not match
    ``raw_t1w``."""
    unit = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    found = ReusedAnat(unit)
    for role in IMAGE_ROLES:
        for lay in layouts:
            hit = _query(lay, subject, session, role)
            if hit:
                found.files[role] = hit
                found.datasets[role] = str(lay.root)
                break
    problems = []
    for path in list(found.files.values()):
        try:
            check_match(path, raw_t1w)
        except PetSynthError as exc:
            problems.append(str(exc))
    if problems:
        raise PetSynthError(f"{unit}: " + " | ".join(problems))
    if "t1w" not in found.files:  # only PetSynth's own N4 T1w: its exact grid is the raw one
        raw = nib.load(raw_t1w)
        for role in [r for r in IMAGE_ROLES if r in found.files]:
            img = nib.load(found.files.pop(role))
            found.datasets.pop(role)
            if img.shape[:3] == raw.shape[:3] and np.allclose(img.affine, raw.affine, atol=1e-3):
                found.files[role] = str(img.get_filename())
                found.datasets[role] = _root_of(layouts, found.files[role])
            else:
                found.notes.append(
                    f"{unit}: {role} not reused: reoriented grid and no preprocessed T1w "
                    "to go with it"
                )
    tissues = [r for r in ("gm", "wm", "csf") if r in found.files]
    if 0 < len(tissues) < 3:
        found.notes.append(
            f"{unit}: only {', '.join(t.upper() for t in tissues)} probseg found; "
            "segmentation computed"
        )
        for role in tissues:
            found.files.pop(role)
            found.datasets.pop(role)
    for lay in layouts:
        xfms = {r: _query(lay, subject, session, r, TEMPLATE_SPACE) for r in XFM_ROLES}
        if all(xfms.values()):
            if transforms:
                found.files.update(xfms)
                found.datasets.update(dict.fromkeys(XFM_ROLES, str(lay.root)))
            else:
                found.notes.append(
                    f"{unit}: {TEMPLATE_SPACE} transforms not reused: the model input "
                    "needs the registration stages; registration computed"
                )
            break
        other = _query(lay, subject, session, "t1w2std_xfm", FMRIPREP_TEMPLATE)
        if other:
            found.notes.append(
                f"{unit}: {FMRIPREP_TEMPLATE} transforms refused (PetSynth works in "
                f"{TEMPLATE_SPACE}; rerun fMRIPrep with --output-spaces {TEMPLATE_SPACE} "
                "to reuse them); registration computed"
            )
            break
    else:
        if layouts:
            found.notes.append(f"{unit}: no {TEMPLATE_SPACE} transforms found")
    # the template-space images are resampled from these: reused only along with them
    sources = ("t1w2std_xfm", "t1w", "mask", "gm")
    if mni_resolution is not None and all(r in found.files for r in sources):
        _find_std(layouts, found, subject, session, mni_resolution)
    return found


def _find_std(layouts: list, found: ReusedAnat, subject: str, session, resolution: int) -> None:
    """Add the template-space images (``STD_ROLES``) of the reused transforms' folder to
    ``found`` when all three are there and on the template grid at ``resolution`` mm;
    a note says why not when some are there but cannot be used."""
    from .preproc.templates import template_grid

    root = found.datasets["t1w2std_xfm"]
    lay = next(lay for lay in layouts if str(lay.root) == root)
    candidates = {r: _query_all(lay, subject, session, r) for r in STD_ROLES}
    if not any(candidates.values()):
        return
    shape, affine = template_grid(resolution)
    hits, problems = {}, []
    for role, paths in candidates.items():  # e.g. res-1 and res-2: the one on our grid
        hits[role] = next((p for p in paths if _on_grid(p, shape, affine)), None)
        if not paths:
            problems.append(f"no {role}")
        elif hits[role] is None:
            names = ", ".join(Path(p).name for p in paths)
            problems.append(f"{names} not on the {resolution} mm template grid")
    if problems:
        found.notes.append(
            f"{found.unit}: {TEMPLATE_SPACE} images not reused ({'; '.join(problems)}); "
            "resampled from the T1w space"
        )
        return
    found.files.update(hits)
    found.datasets.update(dict.fromkeys(STD_ROLES, root))


def _on_grid(path: str, shape: tuple[int, ...], affine: np.ndarray) -> bool:
    """Is the image ``path`` readable and exactly on the grid ``shape``/``affine``?"""
    try:
        img = nib.load(path)
    except Exception:  # noqa: BLE001 - nibabel raises many types for broken files
        return False
    return img.shape[:3] == shape and np.allclose(img.affine, affine, atol=_GRID_ATOL_MM)


def _series_query(pet_path: str) -> dict:
    """The raw PET's subject and series entities; those it lacks must be absent."""
    from bids.layout import Query, parse_file_entities

    ents = parse_file_entities(pet_path)
    query = {k: ents.get(k, Query.NONE) for k in _SERIES_ENTITIES}
    query["subject"] = ents["subject"]
    return query


def _pet_hits(layout, query: dict, role: str) -> list[str]:
    """Files of ``role`` (``PET_ROLES``) for the series ``query``, preferred first."""
    from bids.layout import Query

    ents = dict(L.PETPREP_FILES[role])
    if role == "pet_ref":
        prefer = ents.pop("desc")
        hits = layout.get(
            return_type="file", **query, **ents, desc=prefer, space=Query.NONE, extension=_NIFTI
        )
        return sorted(
            hits, key=lambda h: [f"desc-{d}_" in Path(h).name for d in prefer].index(True)
        )
    return sorted(layout.get(return_type="file", **query, **ents, desc=[Query.NONE, "coreg"]))


def _pet_problems(ref: str, xfm: str, pet_path: str) -> list[str]:
    """Why the reference ``ref`` / transform ``xfm`` do not fit the raw PET (or [])."""
    problems = []
    raw = nib.load(pet_path)
    try:
        img = nib.load(ref)
        shape, aff = _canonical(img)
        extra = img.shape[3:]
    except Exception as exc:  # nibabel raises many types for broken files
        shape, aff, extra = None, None, ()
        problems.append(f"{Path(ref).name} cannot be read ({exc})")
    rshape, raff = _canonical(raw.slicer[..., 0] if raw.ndim == 4 else raw)
    if shape is not None and (
        shape != rshape
        or any(n > 1 for n in extra)
        or not np.allclose(aff, raff, atol=_GRID_ATOL_MM)
    ):
        problems.append(
            f"{Path(ref).name} is not on the grid of the raw PET {Path(pet_path).name} "
            f"({shape} vs {rshape}, or another affine)"
        )
    raw_pets = [n for n in _sidecar_sources(ref) if re.match(r"sub-[^_]+_.*_pet\.nii", n)]
    raw_pets = [n for n in raw_pets if "desc-" not in n]
    if raw_pets and Path(pet_path).name not in raw_pets:
        problems.append(
            f"{Path(ref).name} was made from {', '.join(raw_pets)}, not from "
            f"{Path(pet_path).name} (Sources in its sidecar)"
        )
    try:
        import ants

        kind = ants.read_transform(xfm, precision="double").type
    except Exception as exc:  # ITK raises RuntimeError, antspy ValueError...
        kind = f"unreadable ({' '.join(str(exc).split())[:120]})"
    if kind != "AffineTransform":
        problems.append(f"{Path(xfm).name} is not an ITK AffineTransform: {kind}")
    return problems


def _sidecar_sources(path: str) -> list[str]:
    """File names in the ``Sources``/``RawSources`` of ``path``'s JSON sidecar."""
    side = L.sidecar(Path(path))
    try:
        meta = json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return []
    sources = [str(s) for key in ("Sources", "RawSources") for s in (meta.get(key) or [])]
    return [Path(s.split(":")[-1]).name for s in sources]


def find_pet(
    layouts: list, found: ReusedAnat, session: str | None, pet_path: str, raw_t1w: str
) -> ReusedPET:
    """PETPrep's reference and PET -> T1w transform of the raw PET ``pet_path`` in the
    derivatives ``layouts`` (the first folder holding either decides), recorded in
    ``found.pet``; each problem is one line in ``found.notes`` and both are computed."""
    query = _series_query(pet_path)
    subject = query["subject"]
    result = ReusedPET(pet_path)
    found.pet[pet_path] = result
    where = f"{found.unit}: PET {Path(pet_path).name}"
    fallback = f"; {' and '.join(PET_STEPS)} computed"
    for lay in layouts:
        refs, xfms = (_pet_hits(lay, query, role) for role in PET_ROLES)
        if not refs and not xfms:
            continue
        folder = Path(lay.root).name
        if not refs or not xfms:
            has, lacks = ("reference", "transform") if refs else ("transform", "reference")
            found.notes.append(
                f"{where}: {folder} has a PETPrep PET {has} but no PET {lacks}{fallback}"
            )
            return result
        problems = _pet_problems(refs[0], xfms[0], pet_path)
        target = _query(lay, subject, session, "t1w")
        if target:
            try:
                check_match(target, raw_t1w)
            except PetSynthError as exc:
                problems.append(f"the T1w its transform targets does not match: {exc}")
        elif "t1w" not in found.files:
            problems.append(
                f"no preprocessed T1w of {found.unit} in {folder} (nor a reused one) to "
                "show which T1w the transform targets"
            )
        if problems:
            found.notes += [f"{where}: {p}{fallback}" for p in problems]
            return result
        result.files = {"pet_ref": refs[0], "pet2t1w_xfm": xfms[0]}
        result.dataset = str(lay.root)
        return result
    return result


def pet_source_uris(found: ReusedPET) -> list[str]:
    """BIDS URIs of the PET files reused for one series."""
    root = Path(found.dataset)
    return [
        f"bids:{dataset_name(root)}:{Path(found.files[r]).relative_to(root)}"
        for r in PET_ROLES
        if r in found.files
    ]


def _root_of(layouts: list, path: str) -> str:
    for lay in layouts:
        if Path(path).is_relative_to(lay.root):
            return str(lay.root)
    return str(Path(path).parent)


def source_uris(found: ReusedAnat) -> list[str]:
    """BIDS URIs (``bids:<dataset>:<relative path>``) of the reused files."""
    uris = []
    for role in ROLES:
        if role in found.files:
            root = Path(found.datasets[role])
            rel = Path(found.files[role]).relative_to(root)
            uris.append(f"bids:{dataset_name(root)}:{rel}")
    return uris


def dataset_links(roots: list[Path]) -> dict[str, str]:
    """``DatasetLinks`` entries of the ``--derivatives`` datasets (name -> file URI)."""
    return {dataset_name(Path(root)): Path(root).absolute().as_uri() for root in roots}


def add_dataset_links(description: Path, links: dict[str, str]) -> None:
    """Add ``links`` to the ``DatasetLinks`` of our ``dataset_description.json``."""
    desc = json.loads(Path(description).read_text())
    desc.setdefault("DatasetLinks", {}).update(links)
    Path(description).write_text(json.dumps(desc, indent=2) + "\n")


__all__ = [
    "FMRIPREP_TEMPLATE",
    "IMAGE_ROLES",
    "PET_ROLES",
    "PET_STEPS",
    "ROLES",
    "STD_ROLES",
    "STEPS",
    "XFM_ROLES",
    "ReusedAnat",
    "ReusedPET",
    "add_dataset_links",
    "check_match",
    "dataset_links",
    "dataset_name",
    "find_anat",
    "find_pet",
    "load_derivatives",
    "pet_source_uris",
    "source_uris",
]
