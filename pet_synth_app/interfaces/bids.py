"""The only writer of derivatives: niworkflows' DerivativesDataSink with our entities."""

from __future__ import annotations

import json
from importlib import resources

from niworkflows.interfaces.bids import DerivativesDataSink as _NiwDataSink

_spec = json.loads(resources.files("pet_synth_app").joinpath("data/bids_spec.json").read_text())
_ENTITIES = list(_NiwDataSink._config_entities_dict) + [
    e for e in _spec["entities"] if e["name"] not in _NiwDataSink._config_entities
]


class DerivativesDataSink(_NiwDataSink):
    """Write one derivative under OUTPUT_DIR with PetSynth's naming (names: layout.py)."""

    out_path_base = ""
    _config_entities = frozenset(e["name"] for e in _ENTITIES)
    _config_entities_dict = _ENTITIES
    _file_patterns = tuple(_spec["default_path_patterns"]) + tuple(_NiwDataSink._file_patterns)
