"""The only writer of derivatives: niworkflows' DerivativesDataSink with our entities."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from importlib import resources
from pathlib import Path

from nipype.interfaces.base import isdefined

TEMPLATE_NAMES = Path(__file__).resolve().parents[1] / "data" / "templateflow"
"""A TemplateFlow home holding only the names of TemplateFlow's templates (one
``tpl-<name>/template_description.json`` each, those of the pinned templateflow's
skeleton). niworkflows lists them at import (``STANDARD_SPACES``: the spaces whose
outputs get the MNI sform code); PetSynth uses no TemplateFlow file, so its own process
and workers read this folder instead of indexing the 2 540-file skeleton (4 s per
import) or unpacking it into a writable home (docs/architecture.md, "Templates")."""
os.environ["TEMPLATEFLOW_HOME"] = str(TEMPLATE_NAMES)
os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"

from niworkflows.interfaces.bids import DerivativesDataSink as _NiwDataSink  # noqa: E402

from ..atomicio import temp_name  # noqa: E402

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
        # beside the node folder: Nipype empties the folder of a node before it reruns
        stamp_file = Path(runtime.cwd).parent / f"{STAMP}{Path(runtime.cwd).name}.json"
        stamp = self._stamp()
        if _up_to_date(stamp_file, stamp):  # a rerun with unchanged inputs: nothing to write
            self._results.update(json.loads(stamp_file.read_text())["results"])
            return runtime
        stamp_file.unlink(missing_ok=True)
        self._invalidate_report()
        runtime = self._write(runtime)
        outputs = list(self._results["out_file"])
        if self._results.get("out_meta"):
            outputs.append(self._results["out_meta"])
        record = {"stamp": stamp, "results": self._results, "outputs": _file_states(outputs)}
        with contextlib.suppress(TypeError, OSError):  # no stamp: the next run writes again
            stamp_file.write_text(json.dumps(record))
        return runtime

    def _invalidate_report(self) -> None:
        """Remove ``<out>/sub-<label>.html`` before changing one of its participant's
        files: the report marks a finished participant whose outputs it shows (the run
        writes it again when the participant has finished)."""
        sources = self.inputs.source_file
        source = sources[0] if isinstance(sources, list) else sources
        match = re.match(r"sub-([A-Za-z0-9]+)", Path(str(source)).name)
        if match and isdefined(self.inputs.base_directory):
            report = Path(self.inputs.base_directory) / f"sub-{match.group(1)}.html"
            report.unlink(missing_ok=True)

    def _stamp(self) -> str:
        """The inputs (values, and size + mtime of the input files) as one string."""
        values = self.inputs.get()
        files = values.get("in_file")
        files = files if isinstance(files, list) else [files]
        state = _file_states([f for f in files if isinstance(f, str)])
        return json.dumps([values, state], sort_keys=True, default=str)

    def _write(self, runtime):
        base = Path(
            self.inputs.base_directory if isdefined(self.inputs.base_directory) else runtime.cwd
        ).absolute()
        staging = temp_name(base / "sink")
        self.inputs.base_directory = str(staging)
        try:
            with gzip_level(GZIP_LEVEL):
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


STAMP = "_petsynth_sink_stamp_"
"""Prefix of the file beside a sink's node folder recording its last write: the inputs
and the size and modification time of the files written. A rerun (the same ``-w``) with
the same inputs and the outputs untouched on disk writes nothing (the sink otherwise
always reruns and recompresses every image: ~37 s for a finished participant)."""


def _file_states(paths) -> list:
    """``[path, size, mtime_ns]`` of each file (``null`` size when it is missing)."""
    out = []
    for path in paths if isinstance(paths, list) else [paths]:
        try:
            st = os.stat(path)
            out.append([str(path), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(path), None, None])
    return out


def _up_to_date(stamp_file: Path, stamp: str) -> bool:
    try:
        record = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        return False
    if record.get("stamp") != stamp:
        return False
    written = record.get("outputs") or []
    now = _file_states([w[0] for w in written])
    # JSON sidecars only need to exist: the run adds its input warnings to some of them
    # after the sink wrote them (runner.annotate_outputs)
    return bool(written) and all(
        n[1] is not None if n[0].endswith(".json") else n == w
        for n, w in zip(now, written, strict=True)
    )


GZIP_LEVEL = 1
"""zlib level of the ``.nii.gz`` derivatives (nibabel's default). niworkflows writes them
at level 9, which on float images costs 5-30x the time for 15 % smaller files (a 1 mm
T1w, 33 MB: level 1 3.2 s and 16.5 MB, level 9 118 s and 14.1 MB on a loaded 2-core
machine; docs/benchmarks.md, "Cohort scale"). The header's mtime stays 0: outputs are
byte-identical between runs."""


@contextlib.contextmanager
def gzip_level(level: int):
    """Within the block, gzip streams opened for writing by niworkflows' DataSink (its
    ``_copy_any`` and ``unsafe_write_nifti_header_and_data`` ask for level 9) use at most
    ``level``; reading is unchanged."""
    import gzip

    from niworkflows.utils import images as nw_images

    real = gzip.GzipFile

    class _Capped(real):
        def __init__(self, filename=None, mode=None, compresslevel=9, fileobj=None, mtime=None):
            if mode and ("w" in mode or "a" in mode or "x" in mode):
                compresslevel = min(compresslevel, level)
            super().__init__(filename, mode, compresslevel, fileobj, mtime)

    gzip.GzipFile, nw_images.GzipFile = _Capped, _Capped
    try:
        yield
    finally:
        gzip.GzipFile, nw_images.GzipFile = real, real
