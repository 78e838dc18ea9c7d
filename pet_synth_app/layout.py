"""The derivatives layout: the one place that names, and finds, every file PetSynth writes.

Each output has an entry in ``OUTPUTS``: its BIDS entities (``desc``, ``label``,
``suffix``, ``datatype``, transform ``from``/``to``/``mode``...). The participant
workflows hand these entities to ``DerivativesDataSink`` (``sink_entities``), which
builds the file name with the path patterns of ``data/bids_spec.json``; the readers (the
app, reports, QC, group level, training, evaluation, ``bench/``) get the same names from
``filename``/``find``, which spell the entities in the order of those patterns
(``tests/test_layout.py`` checks both agree). The other names PetSynth writes or reads
(the group-level models, the evaluation tables, report figures, TemplateFlow files and
the simulated cohort's ground truth) are here too, so that no file name is spelled twice
(``tests/test_architecture.py`` fails on a name spelled elsewhere).
"""

from __future__ import annotations

from pathlib import Path

from .config import TEMPLATE_SPACE

STATS = {"hypometabolism": "z", "controlpet": "z", "ocsvm": "score"}
"""The statistic maps (``desc``) and their statistic (``stat``): the hypometabolism Z map
(real − pseudo-normal PET), the classic control-PET Z map without synthesis (real PET
against the controls' voxelwise PET mean and SD) and the OC-SVM anomaly score."""

AFFINE_SPACE = f"{TEMPLATE_SPACE}Affine"
"""Label of the affine-only template space: the MNI grid reached by the affine stage of
the T1w-to-MNI registration alone (``synthesis/inputs.py``, representation "affine")."""

_NII = ".nii.gz"
OUTPUTS: dict[str, dict[str, str]] = {
    # anatomical (named after the T1w)
    "t1w": {"datatype": "anat", "desc": "preproc", "suffix": "T1w", "extension": _NII},
    "mask": {"datatype": "anat", "desc": "brain", "suffix": "mask", "extension": _NII},
    "gm": {"datatype": "anat", "label": "GM", "suffix": "probseg", "extension": _NII},
    "wm": {"datatype": "anat", "label": "WM", "suffix": "probseg", "extension": _NII},
    "csf": {"datatype": "anat", "label": "CSF", "suffix": "probseg", "extension": _NII},
    "t1w2std_xfm": {
        "datatype": "anat",
        "from": "T1w",
        "to": TEMPLATE_SPACE,
        "mode": "image",
        "suffix": "xfm",
        "extension": ".h5",
    },
    "std2t1w_xfm": {
        "datatype": "anat",
        "from": TEMPLATE_SPACE,
        "to": "T1w",
        "mode": "image",
        "suffix": "xfm",
        "extension": ".h5",
    },
    # registration stages (synthesis/inputs.py): T1w -> affine space -> MNI and back
    "t1w2affine_xfm": {
        "datatype": "anat",
        "from": "T1w",
        "to": AFFINE_SPACE,
        "mode": "image",
        "suffix": "xfm",
        "extension": ".mat",
    },
    "affine2std_xfm": {
        "datatype": "anat",
        "from": AFFINE_SPACE,
        "to": TEMPLATE_SPACE,
        "mode": "image",
        "suffix": "xfm",
        "extension": ".h5",
    },
    "std2affine_xfm": {
        "datatype": "anat",
        "from": TEMPLATE_SPACE,
        "to": AFFINE_SPACE,
        "mode": "image",
        "suffix": "xfm",
        "extension": ".h5",
    },
    # PET (named after the PET series, except the pseudo-normal PET: after the T1w)
    "pet": {"datatype": "pet", "desc": "preproc", "suffix": "pet", "extension": _NII},
    "pet2t1w_xfm": {
        "datatype": "pet",
        "from": "petref",
        "to": "T1w",
        "mode": "image",
        "suffix": "xfm",
        "extension": ".mat",
    },
    # the PET field of view (voxels with data in every frame), carried with the PET
    "coverage": {"datatype": "pet", "desc": "coverage", "suffix": "mask", "extension": _NII},
    "pseudo": {"datatype": "pet", "desc": "pseudonormal", "suffix": "pet", "extension": _NII},
    # SD of the pseudo-normal PET samples (--synthesis-samples N > 1)
    "pseudo_sd": {
        "datatype": "pet",
        "desc": "pseudonormal",
        "stat": "sd",
        "suffix": "pet",
        "extension": _NII,
    },
    # per statistic map (``desc`` one of STATS)
    "statmap": {"datatype": "pet", "suffix": "statmap", "extension": _NII},
    "dseg": {"datatype": "pet", "suffix": "dseg", "extension": _NII},
    "clusters": {"datatype": "pet", "suffix": "clusters", "extension": ".tsv"},
}
"""Entities of every participant-level output."""

PETPREP_FILES: dict[str, dict] = {
    # the motion-correction reference (``desc-hmc``), or a ``desc-coreg`` one if written
    "pet_ref": {"datatype": "pet", "desc": ["coreg", "hmc"], "suffix": "petref"},
    # PET reference -> T1w, ITK text (PETPrep: no desc; fMRIPrep-style ``desc-coreg``)
    "pet2t1w_xfm": {
        "datatype": "pet",
        "from": "petref",
        "to": "T1w",
        "mode": "image",
        "suffix": "xfm",
        "extension": [".txt", ".mat"],
    },
}
"""Entities of the PETPrep outputs that ``--derivatives`` reuses (``reuse.find_pet``), as
PETPrep's ``data/io_spec.json`` queries them (nipreps/petprep f2b49ca, 2025-06-12); the
series entities (``ses``, ``task``, ``trc``, ``rec``, ``run``...) are the raw PET's."""

ENTITY_ORDER = ("space", "res", "label", "desc", "stat")
"""Order of the optional entities in a file name (data/bids_spec.json path patterns)."""
XFM_ORDER = ("from", "to", "mode")

NORMATIVE_FILES = {
    "residual_mean": {"desc": "residual", "stat": "mean", "suffix": "statmap"},
    "residual_sd": {"desc": "residual", "stat": "sd", "suffix": "statmap"},
    "pet_mean": {"desc": "controlpet", "stat": "mean", "suffix": "statmap"},
    "pet_sd": {"desc": "controlpet", "stat": "sd", "suffix": "statmap"},
    "mask": {"desc": "normative", "suffix": "mask"},
}
"""Maps of the group-level normative model (``group/normative/``, template space)."""

TEMPLATE_FILES = {
    "T1w": {"desc": "brain", "suffix": "T1w"},
    "mask": {"desc": "brain", "suffix": "mask"},
    "GM": {"label": "GM", "suffix": "probseg"},
    "WM": {"label": "WM", "suffix": "probseg"},
    "CSF": {"label": "CSF", "suffix": "probseg"},
    "head": {"desc": "synthhead", "suffix": "T1w"},
}
"""TemplateFlow-style names of the template images PetSynth writes for its steps."""

TRUTH_FILES = {
    "brain_mask": {"desc": "brain", "suffix": "mask"},
    "lesion_mask": {"desc": "lesion", "suffix": "mask"},
    "warp": {"desc": "nonlinear", "suffix": "xfm"},
    "probseg": {"suffix": "probseg"},  # with label GM, WM or CSF
}
"""The simulated cohort's ground truth (``derivatives/truth/sub-X/anat/``)."""


def _check(key: str, desc: str | None) -> dict[str, str]:
    try:
        spec = dict(OUTPUTS[key])
    except KeyError:
        raise ValueError(f"unknown output {key!r}; choose from {', '.join(OUTPUTS)}") from None
    if key in ("statmap", "dseg", "clusters"):
        if desc not in STATS:
            raise ValueError(f"output {key!r} needs desc in {sorted(STATS)}, got {desc!r}")
        spec["desc"] = desc
        if key == "statmap":
            spec["stat"] = STATS[desc]
    elif desc is not None:
        raise ValueError(f"output {key!r} has a fixed desc")
    return spec


def entities(key: str, desc: str | None = None) -> dict[str, str]:
    """The entities of output ``key`` (``desc``: which statistic map, for ``statmap``,
    ``dseg`` and ``clusters``)."""
    return _check(key, desc)


def sink_entities(key: str, desc: str | None = None) -> dict[str, str]:
    """Keyword arguments of ``DerivativesDataSink`` for output ``key``: its entities
    (image extensions come from ``compress=True`` or the input file; tables keep theirs)."""
    spec = entities(key, desc)
    if spec["extension"] != ".tsv":
        del spec["extension"]
    return spec


def _tail(spec: dict[str, str], space: str | None = None) -> str:
    spec = {**spec, **({"space": space} if space else {})}
    if spec["suffix"] == "xfm" and "from" in spec:
        parts = [f"_{k}-{spec[k]}" for k in XFM_ORDER]
    else:
        parts = [f"_{k}-{spec[k]}" for k in ENTITY_ORDER if spec.get(k)]
    return "".join(parts) + f"_{spec['suffix']}{spec.get('extension', _NII)}"


def filename(stem: str, key: str, space: str | None = None, desc: str | None = None) -> str:
    """File name of output ``key`` for the source ``stem`` (``sub-X[_ses-Y]`` for the
    anatomical and pseudo-normal outputs, the PET series' ``sub-X[_ses-Y]_trc-..`` for the
    others) in ``space`` (None: the T1w's own space, no space entity)."""
    return stem + _tail(entities(key, desc), space)


def pattern(key: str, space: str | None = None, desc: str | None = None) -> str:
    """Glob of output ``key``'s file names, any source."""
    return filename("*", key, space, desc)


def path(
    unit: Path, stem: str, key: str, space: str | None = None, desc: str | None = None
) -> Path:
    """``<unit>/<datatype>/<filename>``: where output ``key`` of ``stem`` is written in a
    unit folder (``sub-X`` or ``sub-X/ses-Y``)."""
    return Path(unit) / OUTPUTS[key]["datatype"] / filename(stem, key, space, desc)


def existing(
    unit: Path, stem: str, key: str, space: str | None = None, desc: str | None = None
) -> Path | None:
    """``path(...)`` if that file exists, else None."""
    p = path(unit, stem, key, space, desc)
    return p if p.is_file() else None


def find(
    deriv: Path, subject: str, key: str, space: str | None = None, desc: str | None = None
) -> Path | None:
    """The first (sorted) output ``key`` of ``subject`` anywhere in its folder of the
    derivatives ``deriv`` (any session, any PET series), or None."""
    datatype = OUTPUTS[key]["datatype"]
    tail = _tail(entities(key, desc), space)
    hits = sorted(Path(deriv).glob(f"sub-{subject}/**/{datatype}/sub-{subject}*{tail}"))
    return hits[0] if hits else None


def series_stem(name: str) -> str | None:
    """The PET series stem of a PET-derived output's file name (None for other files)."""
    for key in ("pet", "coverage", "statmap", "dseg", "clusters"):
        descs = STATS if key in ("statmap", "dseg", "clusters") else [None]
        for desc in descs:
            for space in (TEMPLATE_SPACE, "T1w", None):  # longest tail first
                tail = _tail(entities(key, desc), space)
                if name.endswith(tail):
                    return name[: -len(tail)]
    return None


MNI_ROLES = ("t1w", "mask", "gm", "pet", "pseudo", "coverage")
"""The template-space outputs that training, the group level and the benchmarks read."""


def find_mni(deriv: Path, subject: str) -> dict[str, Path | None]:
    """A participant's template-space outputs by role (``MNI_ROLES``; None if absent)."""
    return {role: find(deriv, subject, role, TEMPLATE_SPACE) for role in MNI_ROLES}


def find_inputs(deriv: Path, subject: str) -> dict[str, Path | None]:
    """The files of a participant that the model input representations are built from,
    by ``synthesis.inputs.InputSources`` field (None if absent)."""
    mni = find_mni(deriv, subject)
    return {
        "t1w_std": mni["t1w"],
        "mask_std": mni["mask"],
        "gm_std": mni["gm"],
        "t1w": find(deriv, subject, "t1w"),
        "t1w_mask": find(deriv, subject, "mask"),
        "affine": find(deriv, subject, "t1w2affine_xfm"),
        "warp": find(deriv, subject, "affine2std_xfm"),
        "t1w2std": find(deriv, subject, "t1w2std_xfm"),
        "inverse_warp": find(deriv, subject, "std2affine_xfm"),
        "log_jacobian_std": None,
        "pet_t1w": find(deriv, subject, "pet", "T1w"),
        "pet_std": mni["pet"],
        "gm": find(deriv, subject, "gm"),
        "wm": find(deriv, subject, "wm"),
        "csf": find(deriv, subject, "csf"),
    }


def sidecar(image: Path) -> Path:
    """The JSON sidecar of an output (same name, ``.json``)."""
    image = Path(image)
    for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".mat"):
        if image.name.endswith(ext):
            return image.with_name(image.name[: -len(ext)] + ".json")
    return image.with_suffix(".json")


def _flat(spec: dict[str, str], extension: str = _NII) -> str:
    return _tail({**spec, "extension": extension})


def normative_file(folder: Path, key: str) -> Path:
    """A map of the group normative model in ``folder`` (``NORMATIVE_FILES``)."""
    return Path(folder) / f"space-{TEMPLATE_SPACE}{_flat(NORMATIVE_FILES[key])}"


def template_filename(kind: str, resolution: int) -> str:
    """``tpl-<space>_res-<rr>_<entities>.nii.gz`` of a template image (``TEMPLATE_FILES``)."""
    return f"tpl-{TEMPLATE_SPACE}_res-{int(resolution):02d}{_flat(TEMPLATE_FILES[kind])}"


def truth_filename(subject_stem: str, key: str, label: str | None = None) -> str:
    """A ground-truth file name of the simulated cohort (``TRUTH_FILES``)."""
    spec = dict(TRUTH_FILES[key])
    if label:
        spec["label"] = label
    return subject_stem + _flat(spec)


def find_truth(truth: Path, subject: str, key: str = "lesion_mask") -> Path | None:
    """A participant's ground-truth file in the truth folder, or None."""
    hits = sorted(Path(truth).glob(f"sub-{subject}/**/{truth_filename(f'sub-{subject}*', key)}"))
    return hits[0] if hits else None


def evaluation_file(folder: Path, desc: str, what: str, extension: str = ".tsv") -> Path:
    """``<folder>/desc-<desc>_<what><extension>``: the detection evaluation of a map."""
    return Path(folder) / f"desc-{desc}_{what}{extension}"


def figure_file(folder: Path, stem: str | None, what: str, suffix: str, ext: str = ".svg") -> Path:
    """A report figure: ``<folder>/[<stem>_]desc-<what>_<suffix><ext>``."""
    return Path(folder) / ((f"{stem}_" if stem else "") + f"desc-{what}_{suffix}{ext}")


INPUT_WARNINGS = {"desc": "inputs", "suffix": "warnings", "extension": ".json"}
"""The named input warnings of a participant (``inputcheck.py``), next to its folders."""


def input_warnings_file(output_dir: Path, subject: str) -> Path:
    """``<out>/sub-X/sub-X_desc-inputs_warnings.json``."""
    stem = f"sub-{subject}"
    return Path(output_dir) / stem / (stem + _tail(INPUT_WARNINGS))


def warned_sidecars(folder: Path) -> list[Path]:
    """The JSON sidecars under ``folder`` that carry a participant's input warnings: its
    stat maps, cluster tables and pseudo-normal PET."""
    suffixes = tuple(f"_{OUTPUTS[k]['suffix']}.json" for k in ("statmap", "clusters"))
    pseudo = f"desc-{OUTPUTS['pseudo']['desc']}_"
    return [
        p
        for p in sorted(Path(folder).rglob("*.json"))
        if p.name.endswith(suffixes) or pseudo in p.name
    ]


__all__ = [
    "ENTITY_ORDER",
    "INPUT_WARNINGS",
    "MNI_ROLES",
    "NORMATIVE_FILES",
    "OUTPUTS",
    "STATS",
    "TEMPLATE_FILES",
    "TRUTH_FILES",
    "entities",
    "evaluation_file",
    "existing",
    "figure_file",
    "filename",
    "find",
    "find_mni",
    "find_truth",
    "input_warnings_file",
    "normative_file",
    "path",
    "pattern",
    "series_stem",
    "sidecar",
    "sink_entities",
    "template_filename",
    "truth_filename",
    "warned_sidecars",
]
