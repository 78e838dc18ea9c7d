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
  representation ``mni``); fMRIPrep's default ``MNI152NLin2009cAsym`` transforms are
  refused (one line) and PetSynth registers the reused T1w itself;
- the probability maps are reused as a set of three; anything not found is computed.
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
ROLES = IMAGE_ROLES + XFM_ROLES
STEPS = {
    "skull stripping": ("mask",),
    "N4": ("t1w",),
    "segmentation": ("gm", "wm", "csf"),
    "registration": XFM_ROLES,
}
"""The steps of the anatomical workflow that reused files replace."""
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

    @property
    def skipped_steps(self) -> list[str]:
        """Steps of the anatomical workflow replaced by reused files."""
        return [s for s, roles in STEPS.items() if all(r in self.files for r in roles)]

    @property
    def computed_steps(self) -> list[str]:
        """Steps that run as usual."""
        return [s for s in STEPS if s not in self.skipped_steps]

    def summary(self) -> str:
        """One log line: what is reused, what is computed."""
        reused = ", ".join(self.skipped_steps) or "nothing"
        computed = ", ".join(self.computed_steps) or "nothing"
        return f"{self.unit}: reused {reused}; computed {computed}"


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
    from bids.layout import Query

    ents = dict(L.entities(role))
    ext = ents.pop("extension")
    if role in XFM_ROLES:
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
            return sorted(hits)[0]
    return None


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
    layouts: list, subject: str, session: str | None, raw_t1w: str, transforms: bool = True
) -> ReusedAnat:
    """The reusable anatomical files of one unit in the derivatives ``layouts`` (first
    folder that has a piece wins). ``transforms=False``: the model input needs the
    registration stages, so the registration runs. Raises PetSynthError (one line per
    problem, joined) when a found image does not match ``raw_t1w``."""
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
    return found


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
    "ROLES",
    "STEPS",
    "XFM_ROLES",
    "ReusedAnat",
    "add_dataset_links",
    "check_match",
    "dataset_links",
    "dataset_name",
    "find_anat",
    "load_derivatives",
    "source_uris",
]
