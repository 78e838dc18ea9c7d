"""layout.py names every output exactly as the DataSink's path patterns build it."""

from __future__ import annotations

from pathlib import Path

import pytest
from bids.layout.writing import build_path

from pet_synth_app import layout as L
from pet_synth_app.config import TEMPLATE_SPACE
from pet_synth_app.interfaces.bids import DerivativesDataSink

PATTERNS = DerivativesDataSink._file_patterns
SOURCES = {
    "anat": ("sub-01_ses-a", {"subject": "01", "session": "a"}),
    "pet": (
        "sub-01_ses-a_trc-FDG_run-2",
        {"subject": "01", "session": "a", "tracer": "FDG", "run": "2"},
    ),
}


def _cases():
    for key, spec in L.OUTPUTS.items():
        descs = list(L.STATS) if key in ("statmap", "dseg", "clusters") else [None]
        spaces = [None] if spec["suffix"] in ("xfm", "clusters") else [None, "T1w", TEMPLATE_SPACE]
        for desc in descs:
            for space in spaces:
                yield key, desc, space


@pytest.mark.parametrize(("key", "desc", "space"), list(_cases()))
def test_layout_name_is_the_datasink_name(key, desc, space):
    datatype = L.OUTPUTS[key]["datatype"]
    # the pseudo-normal PET is named after the T1w and stored with the PET outputs
    anat_named = key in ("pseudo", "pseudo_sd") or datatype == "anat"
    stem, source = SOURCES["anat" if anat_named else "pet"]
    entities = {**source, **L.entities(key, desc), **({"space": space} if space else {})}
    built = build_path(entities, PATTERNS, strict=False)
    assert built is not None, entities
    assert Path(built).name == L.filename(stem, key, space, desc)
    assert Path(built).parent.name == datatype


def test_find_and_series_stem(tmp_path):
    unit = tmp_path / "sub-01"
    files = [
        L.path(unit, "sub-01_trc-FDG", "statmap", TEMPLATE_SPACE, "ocsvm"),
        L.path(unit, "sub-01_trc-FDG", "pet", "T1w"),
        L.path(unit, "sub-01", "pseudo", TEMPLATE_SPACE),
        L.path(unit, "sub-01", "gm", TEMPLATE_SPACE),
    ]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    assert L.find(tmp_path, "01", "statmap", TEMPLATE_SPACE, "ocsvm") == files[0]
    assert L.find(tmp_path, "01", "statmap", "T1w", "ocsvm") is None
    assert L.find_mni(tmp_path, "01") == {
        "t1w": None,
        "mask": None,
        "gm": files[3],
        "pet": None,
        "pseudo": files[2],
        "coverage": None,
    }
    assert {L.series_stem(f.name) for f in files} == {"sub-01_trc-FDG", None}
    with pytest.raises(ValueError, match="needs desc"):
        L.filename("sub-01", "statmap")
