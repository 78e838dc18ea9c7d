"""The only writer of derivatives: niworkflows' DerivativesDataSink with our entities."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

from nipype.interfaces.base import isdefined
from niworkflows.interfaces.bids import DerivativesDataSink as _NiwDataSink

from ..atomicio import temp_name

_spec = json.loads(resources.files("pet_synth_app").joinpath("data/bids_spec.json").read_text())
_ENTITIES = list(_NiwDataSink._config_entities_dict) + [
    e for e in _spec["entities"] if e["name"] not in _NiwDataSink._config_entities
]


class DerivativesDataSink(_NiwDataSink):
    """Write one derivative under OUTPUT_DIR with PetSynth's naming (names: layout.py).

    Atomic: niworkflows writes the file and its JSON sidecar into a hidden staging folder
    inside OUTPUT_DIR (same filesystem), then each is moved into place with ``os.replace``,
    the sidecar first, so a kill never leaves a half-written file or an image without its
    sidecar."""

    out_path_base = ""
    _config_entities = frozenset(e["name"] for e in _ENTITIES)
    _config_entities_dict = _ENTITIES
    _file_patterns = tuple(_spec["default_path_patterns"]) + tuple(_NiwDataSink._file_patterns)

    def _run_interface(self, runtime):
        base = Path(
            self.inputs.base_directory if isdefined(self.inputs.base_directory) else runtime.cwd
        ).absolute()
        staging = temp_name(base / "sink")
        self.inputs.base_directory = str(staging)
        try:
            runtime = super()._run_interface(runtime)
            moved = {}
            meta = self._results.get("out_meta")
            for staged in ([meta] if meta else []) + list(self._results["out_file"]):
                final = base / Path(staged).relative_to(staging)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
                moved[staged] = str(final)
            self._results["out_file"] = [moved[f] for f in self._results["out_file"]]
            if meta:
                self._results["out_meta"] = moved[meta]
        finally:
            self.inputs.base_directory = str(base)
            shutil.rmtree(staging, ignore_errors=True)
        return runtime
