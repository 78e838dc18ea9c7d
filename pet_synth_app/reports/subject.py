"""Per-participant HTML report, written after the participant's workflow has finished.

Everything is drawn at report time from the derivatives on disk (``<out>/sub-X/``); the
figures go to ``<out>/sub-X/figures/`` as ``<ent>_desc-<what>_<suffix>.svg`` and the page
to ``<out>/sub-X.html`` (written last and atomically: its presence marks a finished
participant). Sections: Summary, Anatomical, Spatial normalization, PET-to-T1w
coregistration, Synthesis, Hypometabolism, Anomaly (OC-SVM), Methods, Derivatives. A
section whose inputs are missing says why; a figure that fails shows an error line.
Several sessions (one block each) and several PET series per session (``trc-``/``run-``
entities, one block each) are handled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .. import layout as L
from ..analysis import qc
from ..analysis.clusters import column_help
from ..config import TEMPLATE_SPACE, Z_THRESHOLD
from ..inputcheck import read_warnings
from . import figures as F
from .html import (
    FigureMaker,
    esc,
    fmt,
    kv,
    markdown,
    na,
    page,
    read_json,
    read_tsv,
    rel,
    sidecar,
    table,
    warn_box,
    write_atomic,
)

LOGGER = logging.getLogger("petsynth")
SPACE = TEMPLATE_SPACE

SECTIONS = [
    ("summary", "Summary"),
    ("anatomical", "Anatomical"),
    ("normalization", "Spatial normalization"),
    ("coregistration", "PET-to-T1w coregistration"),
    ("synthesis", "Synthesis"),
    ("hypometabolism", "Hypometabolism"),
    ("controlpet", "Control-PET comparison (no synthesis)"),
    ("anomaly", "Anomaly (OC-SVM)"),
    ("methods", "Methods"),
    ("derivatives", "Derivatives"),
]

THRESHOLD_KEYS = (
    "Threshold",
    "Tail",
    "MinimumClusterVolume",
    "ClusterMask",
    "Connectivity",
    "RankedBy",
    "ZReference",
    "NormativeControls",
    "HistogramMatching",
    "SmoothingFWHM",
    "NumberOfClusters",
    "BrainCoverage",
)
MODEL_KEYS = (
    "Model",
    "ModelWeights",
    "ModelWeightsSha256",
    "ModelCard",
    "ModelTrainingData",
    "InputRepresentation",
    "ModelPrior",
    "ModelKeptEpoch",
    "SmoothingFWHM",
    "Device",
)

SMOOTHING_LABELS = {
    "model": "pseudo-PET smoothing (FWHM)",
    "analysis": "analysis smoothing (FWHM)",
}
"""How the report names a sidecar's ``SmoothingFWHM``: the synthesis model's own output
smoothing (pseudo-normal PET sidecars) or the Z maps' analysis smoothing (``--z-fwhm``;
statmap sidecars). Both are in mm; the same key must not read as one setting."""


def _mm(value: Any) -> Any:
    """A sidecar's FWHM (mm) as the report shows it: ``"8 mm"``; None and text unchanged."""
    return f"{value:g} mm" if isinstance(value, int | float) else value


def _pairs(meta: dict, keys: Sequence[str], smoothing: str) -> list[tuple[str, Any]]:
    """(label, value) pairs of sidecar ``keys`` for :func:`kv`; ``SmoothingFWHM`` is
    labelled by ``SMOOTHING_LABELS[smoothing]`` and shown in mm."""
    out: list[tuple[str, Any]] = []
    for k in keys:
        value = meta.get(k)
        if k == "SmoothingFWHM":
            out.append((SMOOTHING_LABELS[smoothing], _mm(value)))
        else:
            out.append((k, value))
    return out


@dataclass
class Unit:
    """One session (or the whole participant without sessions): its files by role."""

    folder: Path
    prefix: str
    session: str
    anat: dict[str, Path | None] = field(default_factory=dict)
    series: list[str] = field(default_factory=list)


def _exists(path: Path) -> Path | None:
    return path if path.is_file() else None


def _find_units(output_dir: Path, subject: str) -> list[Unit]:
    units = []
    for folder in qc.unit_dirs(output_dir, subject):
        prefix = qc.unit_prefix(folder, subject)
        anat_unit, anat_prefix = qc.anat_of(folder, subject)
        anat_dir = anat_unit / "anat"
        anat = {
            role: L.existing(anat_unit, anat_prefix, key, space)
            for role, key, space in (
                ("t1w", "t1w", None),
                ("mask", "mask", None),
                ("gm", "gm", None),
                ("wm", "wm", None),
                ("t1w_mni", "t1w", SPACE),
                ("mask_mni", "mask", SPACE),
                ("gm_mni", "gm", SPACE),
            )
        }
        anat["pseudo_mni"] = L.existing(folder, prefix, "pseudo", SPACE)
        anat["pseudo_t1w"] = L.existing(folder, prefix, "pseudo", "T1w")
        anat["anat_prefix"] = anat_prefix  # type: ignore[assignment]
        anat["anat_dir"] = anat_dir  # type: ignore[assignment]
        units.append(
            Unit(
                folder,
                prefix,
                folder.name[4:] if folder.name.startswith("ses-") else "",
                anat,
                qc.pet_series(folder),
            )
        )
    return units


def _series_files(unit: Unit, series: str) -> dict[str, Path | None]:
    files: dict[str, Path | None] = {
        "pet_t1w": L.existing(unit.folder, series, "pet", "T1w"),
        "pet_mni": L.existing(unit.folder, series, "pet", SPACE),
        "coverage_t1w": L.existing(unit.folder, series, "coverage", "T1w"),
        "coverage_mni": L.existing(unit.folder, series, "coverage", SPACE),
    }
    for desc in L.STATS:
        for space in ("T1w", SPACE):
            tag = "t1w" if space == "T1w" else "mni"
            files[f"{desc}_stat_{tag}"] = L.existing(unit.folder, series, "statmap", space, desc)
            files[f"{desc}_dseg_{tag}"] = L.existing(unit.folder, series, "dseg", space, desc)
        files[f"{desc}_tsv"] = L.existing(unit.folder, series, "clusters", None, desc)
    return files


def _fig(unit: Unit, figdir: Path, series: str | None, what: str, suffix: str) -> Path:
    return L.figure_file(figdir, series or unit.prefix, what, suffix)


class _Report:
    def __init__(self, output_dir: Path, subject: str, run_id: str, settings_file: Path):
        self.out = output_dir
        self.subject = subject
        self.run_id = run_id
        self.settings_file = Path(settings_file) if settings_file else None
        self.sub_dir = output_dir / f"sub-{subject}"
        self.figdir = self.sub_dir / "figures"
        self.figure = FigureMaker(output_dir)
        self.units = _find_units(output_dir, subject)
        self.warnings: list[str] = []
        self.qc: dict[tuple[str, str], dict[str, float]] = {}

    # --- helpers
    def _blocks(self, unit: Unit, multi: bool) -> str:
        if not multi:
            return ""
        return f"<h3>{esc(unit.prefix)}</h3>"

    def _series_head(self, series: str) -> str:
        return f"<h3>{esc(series)}</h3>"

    # --- sections
    def anatomical(self) -> str:
        parts = []
        for unit in self.units:
            a = unit.anat
            parts.append(self._blocks(unit, len(self.units) > 1))
            if a["t1w"] is None or a["mask"] is None:
                parts.append(na("the preprocessed T1w or its brain mask is missing"))
                continue
            fig = _fig(unit, self.figdir, a["anat_prefix"], "brainmask", "T1w")
            parts.append(
                self.figure(
                    F.plot_brain_mask,
                    fig,
                    a["t1w"],
                    a["mask"],
                    wm=a["wm"],
                    caption="Preprocessed T1w (bias-corrected) with the brain "
                    "mask (red) and the white-matter boundary (blue, WM "
                    "probability 0.5).",
                )
            )
        return "".join(parts)

    def normalization(self) -> str:
        from ..preproc.templates import get_template

        parts = []
        for unit in self.units:
            a = unit.anat
            parts.append(self._blocks(unit, len(self.units) > 1))
            if a["t1w_mni"] is None:
                parts.append(na(f"the T1w in {SPACE} space is missing"))
                continue
            metrics = self._unit_qc(unit)
            res = 1 if float(F.load3d(a["t1w_mni"]).header.get_zooms()[0]) < 1.5 else 2
            fig = _fig(unit, self.figdir, a["anat_prefix"], "normalization", "T1w")
            parts.append(
                self.figure(
                    F.plot_flicker,
                    fig,
                    get_template("T1w", res),
                    a["t1w_mni"],  # the layer shown without hovering (and in print)
                    mask=get_template("mask", res),
                    contour=get_template("mask", res),
                    labels=("MNI template", "participant T1w"),
                    flicker=True,
                    caption="The participant's T1w warped to "
                    f"{SPACE}; hover to flicker to the template ({res} mm). Red: "
                    "template brain mask.",
                )
            )
            parts.append(
                self._qc_line(
                    metrics, ("mni_ncc", "mni_fit_margin", "mni_dice", "t1w_wm_gm_ratio")
                )
            )
        return "".join(parts)

    def coregistration(self) -> str:
        parts = []
        for unit in self.units:
            a = unit.anat
            parts.append(self._blocks(unit, len(self.units) > 1))
            if not unit.series:
                parts.append(na("this participant has no PET series"))
                continue
            for series in unit.series:
                files = _series_files(unit, series)
                parts.append(self._series_head(series))
                if files["pet_t1w"] is None or a["t1w"] is None:
                    parts.append(
                        na(
                            f"the PET in T1w space ({L.pattern('pet', 'T1w')}) or the "
                            "T1w is missing"
                        )
                    )
                    continue
                fig = _fig(unit, self.figdir, series, "coreg", "pet")
                contour = a["wm"] or a["mask"]
                parts.append(
                    self.figure(
                        F.plot_flicker,
                        fig,
                        a["t1w"],
                        files["pet_t1w"],
                        mask=a["mask"],
                        contour=contour,
                        labels=("T1w", "PET"),
                        flicker=True,
                        caption="Hover to flicker between the T1w and the PET "
                        "resampled to the T1w; red: white-matter boundary "
                        "of the T1w (brain mask if no WM map).",
                    )
                )
                parts.append(
                    self._qc_line(
                        self._series_qc(unit, series),
                        ("coreg_gm_corr", "coreg_gm_wm_ratio", "pet_brain_coverage"),
                    )
                )
        return "".join(parts)

    def synthesis(self) -> str:
        from ..analysis.metrics import image_metrics

        parts = []
        for unit in self.units:
            a = unit.anat
            parts.append(self._blocks(unit, len(self.units) > 1))
            if a["pseudo_mni"] is None:
                parts.append(na("no pseudo-normal PET was written (synthesis skipped or failed)"))
                continue
            meta = sidecar(a["pseudo_mni"])
            keys = ("Model", "ModelWeightsSha256", "SmoothingFWHM", "Device")
            parts.append(kv(_pairs(meta, keys, "model")))
            targets = unit.series or [None]
            for series in targets:
                files = _series_files(unit, series) if series else {"pet_mni": None}
                if series:
                    parts.append(self._series_head(series))
                fig = _fig(unit, self.figdir, series or unit.prefix, "synthesis", "pet")
                real = files["pet_mni"]
                cap = (
                    "Real PET (top) and pseudo-normal PET (below) in " + SPACE + ", same "
                    "cuts and the same SUVR colour scale."
                    if real
                    else "Pseudo-normal PET in " + SPACE + " (no real PET for this participant)."
                )
                parts.append(
                    self.figure(
                        F.plot_synthesis,
                        fig,
                        a["pseudo_mni"],
                        pet=real,
                        mask=a["mask_mni"],
                        caption=cap,
                    )
                )
                if real is None:
                    if series:
                        parts.append(na(f"the PET in {SPACE} space is missing"))
                    continue
                if a["mask_mni"] is None:
                    parts.append(na("the brain mask in MNI space is missing (no SSIM/PSNR)"))
                    continue
                try:
                    import nibabel as nib

                    m = image_metrics(
                        nib.load(str(a["pseudo_mni"])),
                        nib.load(str(real)),
                        nib.load(str(a["mask_mni"])),
                    )
                    parts.append(
                        kv(
                            [
                                ("SSIM (3D, brain mask)", fmt(m["ssim"])),
                                ("SSIM (2D axial mean)", fmt(m["ssim_2d"])),
                                ("PSNR", f"{fmt(m['psnr'], 2)} dB"),
                                (
                                    "RMSE / MAE (fraction of the real PET range)",
                                    f"{fmt(m['rmse'])} / {fmt(m['mae'])}",
                                ),
                            ]
                        )
                    )
                    parts.append(
                        "<p class='caption'>Pseudo-normal vs real PET, both scaled "
                        "to the real PET's range in the brain mask. In a patient, "
                        "low similarity may reflect disease, not a synthesis "
                        "failure.</p>"
                    )
                except Exception as exc:  # noqa: BLE001
                    LOGGER.warning("synthesis metrics failed: %s", exc)
                    parts.append(
                        f"<p class='error'>SSIM/PSNR could not be computed: {esc(str(exc))}</p>"
                    )
        return "".join(parts)

    def clusters_section(self, desc: str, stat_name: str, what: str) -> str:
        parts = []
        for unit in self.units:
            a = unit.anat
            parts.append(self._blocks(unit, len(self.units) > 1))
            if not unit.series:
                parts.append(na("this participant has no PET series"))
                continue
            for series in unit.series:
                files = _series_files(unit, series)
                parts.append(self._series_head(series))
                stat, dseg, bg, space = (
                    files[f"{desc}_stat_t1w"],
                    files[f"{desc}_dseg_t1w"],
                    a["t1w"],
                    "T1w",
                )
                if stat is None and files[f"{desc}_stat_mni"] is not None:
                    stat, dseg, bg, space = (
                        files[f"{desc}_stat_mni"],
                        files[f"{desc}_dseg_mni"],
                        a["t1w_mni"],
                        SPACE,
                    )
                if stat is None:
                    reason = f"no {what} map was written for this series" + (
                        " (the OC-SVM model is fitted at the group level; rerun the "
                        "participant level after it)"
                        if desc == "ocsvm"
                        else ""
                    )
                    parts.append(na(reason))
                    continue
                meta = sidecar(stat)
                threshold = float(meta.get("Threshold", Z_THRESHOLD))
                parts.append(self._qc_caution(unit, series, what))
                parts.append(kv(_pairs(meta, THRESHOLD_KEYS, "analysis")))
                if bg is None:
                    parts.append(na(f"the {space} T1w background is missing"))
                else:
                    fig = _fig(unit, self.figdir, series, desc, "statmap")
                    parts.append(
                        self.figure(
                            F.plot_statmap_clusters,
                            fig,
                            bg,
                            stat,
                            dseg=dseg,
                            threshold=threshold,
                            mask=a["mask"] if space == "T1w" else a["mask_mni"],
                            gm=a["gm"] if space == "T1w" else a["gm_mni"],
                            title=stat_name,
                            coverage=files["coverage_t1w" if space == "T1w" else "coverage_mni"],
                            caption=f"{stat_name} map in {space} space over the T1w, shown "
                            f"where {stat_name} &le; {threshold:g} in gray matter (the "
                            "voxels that can form clusters); cyan: ranked clusters "
                            "(number = rank, 1 = top); green: the brain outside the PET "
                            "field of view (no statistic there; drawn only when the field "
                            "of view cuts the brain); cuts pass through the top-ranked "
                            "clusters.",
                        )
                    )
                parts.append(self._cluster_table(files[f"{desc}_tsv"], what))
        return "".join(parts)

    def _qc_caution(self, unit: Unit, series: str, what: str) -> str:
        """A warning above a map whose series or anatomy failed a QC check: its clusters
        may come from misalignment (e.g. a PET of another person, or a failed
        registration), not from metabolism."""
        failed = qc.check(self._unit_qc(unit)) + qc.check(self._series_qc(unit, series))
        if not failed:
            return ""
        names = ", ".join(sorted({w.split(": ")[1].split(" = ")[0] for w in failed}))
        return (
            f"<p class='warn'><b>Quality control failed ({esc(names)}):</b> the PET, the "
            "T1w and the template are not reliably aligned, so the "
            f"{esc(what)} clusters below can come from misalignment (at the brain rim, "
            "the ventricles and the cortex), not from metabolism. Do not read them as "
            "findings before checking the alignment figures above.</p>"
        )

    def evidence(self) -> str:
        """Which of the two Z maps the dataset's own evaluation favours (held-out
        controls' false-positive clusters and patients' top-3 sensitivity, from
        ``petsynth-evaluate``'s summaries under group/evaluation), in one paragraph."""
        return f"<p>{esc(favoured_map(self.out / 'group' / 'evaluation'))}</p>"

    def _cluster_table(self, tsv: Path | None, what: str) -> str:
        if tsv is None:
            return na(f"no {what} cluster table (clusters.tsv) was written")
        try:
            rows = read_tsv(tsv)
        except OSError as exc:
            return f"<p class='error'>cannot read {esc(tsv.name)}: {esc(str(exc))}</p>"
        meta = sidecar(tsv)
        calibration = calibration_note(meta)
        if not rows:
            return (
                calibration
                + "<p><b>No cluster</b> survived the threshold and the minimum volume.</p>"
            )
        header = list(rows[0].keys())
        desc = {h: column_help(h, meta) for h in header}
        body = [
            calibration,
            table(header, [[r.get(h, "") for h in header] for r in rows], titles=desc),
        ]
        body.append(
            "<details><summary>Columns</summary><ul>"
            + "".join(f"<li><code>{esc(h)}</code>: {esc(desc[h] or '')}</li>" for h in header)
            + "</ul></details>"
        )
        return "".join(body)

    def methods(self) -> str:
        path = self.out / "logs" / "CITATION.md"
        if not path.is_file():
            return na("logs/CITATION.md was not written")
        try:
            return markdown(path.read_text(encoding="utf-8", errors="replace"))
        except Exception as exc:  # noqa: BLE001
            return f"<pre>{esc(path.read_text(errors='replace'))}</pre><!-- {esc(str(exc))} -->"

    def derivatives(self) -> str:
        files = sorted(
            p
            for p in self.sub_dir.rglob("*")
            if p.is_file() and "figures" not in p.relative_to(self.sub_dir).parts
        )
        if not files:
            return na("no derivative was found")
        items = "".join(
            f"<li><a href='{rel(f, self.out)}'><code>"
            f"{esc(f.relative_to(self.out).as_posix())}</code></a></li>"
            for f in files
        )
        return f"<ul>{items}</ul>"

    # --- QC
    def _unit_qc(self, unit: Unit) -> dict[str, float]:
        key = (unit.prefix, "")
        if key not in self.qc:
            try:
                self.qc[key] = qc.unit_registration_qc(
                    unit.anat["anat_dir"].parent, unit.anat["anat_prefix"]
                )
            except Exception as exc:  # noqa: BLE001
                LOGGER.warning("registration QC failed for %s: %s", unit.prefix, exc)
                self.qc[key] = {}
        return self.qc[key]

    def _series_qc(self, unit: Unit, series: str) -> dict[str, float]:
        key = (unit.prefix, series)
        if key not in self.qc:
            try:
                a = unit.anat
                self.qc[key] = qc.series_coregistration_qc(
                    unit.folder, a["anat_prefix"], series, a["anat_dir"].parent
                )
                self.qc[key].update(qc.series_coverage_qc(unit.folder, series))
            except Exception as exc:  # noqa: BLE001
                LOGGER.warning("coregistration QC failed for %s: %s", series, exc)
                self.qc[key] = {}
        return self.qc[key]

    def _qc_line(self, metrics: dict[str, float], keys: tuple[str, ...]) -> str:
        if not metrics:
            return na("the QC metrics could not be computed")
        rows, bad = [], []
        for k in keys:
            v = metrics.get(k, float("nan"))
            low = qc.THRESHOLDS[k]
            rows.append([k, fmt(v, qc.DIGITS), f">= {low:g}", qc.QC_DESCRIPTIONS[k]])
            bad.append(qc.below(v, low))
        return table(["metric", "value", "expected", "meaning"], rows, bad_rows=bad)

    # --- summary
    def summary(self) -> str:
        jsons = sorted(self.sub_dir.rglob("*.json"))
        sources, versions = set(), set()
        for j in jsons:
            meta = read_json(j)
            for s in meta.get("Sources", []) or []:
                sources.add(str(s).removeprefix("bids:raw:"))
            if meta.get("SoftwareVersion"):
                versions.add(str(meta["SoftwareVersion"]))
        parts = []
        warnings = self._collect_warnings()
        parts.append("<h3>Warnings</h3>" + (warn_box(warnings) if warnings else "<p>None.</p>"))
        sessions = [u.session for u in self.units if u.session]
        settings = "n/a"
        if self.settings_file is not None:
            sf = (
                self.settings_file
                if self.settings_file.is_absolute()
                else self.out / self.settings_file
            )
            name = esc(sf.name)
            settings = (
                f"<a href='{rel(sf, self.out)}'><code>{name}</code></a>"
                if sf.is_file()
                else f"<code>{name}</code> (not found)"
            )
        desc = read_json(self.out / "dataset_description.json")
        generated = ", ".join(
            f"{g.get('Name', '?')} {g.get('Version', '')}".strip()
            for g in desc.get("GeneratedBy", [])
            if isinstance(g, dict)
        )
        parts.append(
            "<h3>Run</h3>"
            + kv(
                [
                    ("Participant", f"sub-{self.subject}"),
                    ("Sessions", ", ".join(sessions) if sessions else "none (single session)"),
                    (
                        "PET series",
                        ", ".join(s for u in self.units for s in u.series)
                        or "none (T1w only: anatomy and pseudo-normal PET)",
                    ),
                    ("Run id", self.run_id),
                    ("Settings file", settings),
                    ("Generated by", generated),
                    ("Software versions (sidecars)", ", ".join(sorted(versions))),
                    ("Report", self._libraries()),
                ]
            )
        )
        parts.append(
            "<h3>Inputs</h3>"
            + (
                "<ul>"
                + "".join(f"<li><code>{esc(s)}</code></li>" for s in sorted(sources))
                + "</ul>"
                if sources
                else na("no sidecar lists its Sources")
            )
        )
        parts.append("<h3>Synthesis model</h3>")
        metas = [
            sidecar(u.anat["pseudo_mni"] or u.anat["pseudo_t1w"])
            for u in self.units
            if u.anat["pseudo_mni"] or u.anat["pseudo_t1w"]
        ]
        parts.append(
            kv(_pairs(metas[0], MODEL_KEYS, "model"))
            if metas
            else na("no pseudo-normal PET was written (synthesis skipped or failed)")
        )
        rows = []
        for unit in self.units:
            for series in unit.series:
                files = _series_files(unit, series)
                pet_meta = (
                    sidecar(files["pet_t1w"] or files["pet_mni"])
                    if (files["pet_t1w"] or files["pet_mni"])
                    else {}
                )
                for desc_name, label in (
                    ("hypometabolism", "Z"),
                    ("controlpet", "control-PET Z"),
                    ("ocsvm", "OC-SVM score"),
                ):
                    stat = files[f"{desc_name}_stat_t1w"] or files[f"{desc_name}_stat_mni"]
                    if stat is None:
                        continue
                    m = sidecar(stat)
                    tsv = files[f"{desc_name}_tsv"]
                    rows.append(
                        [
                            series,
                            label,
                            m.get("Threshold", "n/a"),
                            m.get("Tail", ""),
                            _mm(m.get("SmoothingFWHM", "n/a")),
                            f"{m.get('MinimumClusterVolume', 'n/a')} "
                            f"{m.get('MinimumClusterVolumeUnits', '')}".strip(),
                            m.get("ClusterMask", ""),
                            m.get("ZReference", ""),
                            m.get("NumberOfClusters", "n/a"),
                            significance(sidecar(tsv) if tsv is not None else {}),
                            f"{pet_meta.get('IntensityNormalization', '')} "
                            f"{pet_meta.get('ReferenceRegion', 'n/a')}".strip(),
                        ]
                    )
        parts.append("<h3>Thresholds and reference region</h3>")
        parts.append(
            table(
                [
                    "series",
                    "map",
                    "threshold",
                    "tail",
                    "analysis smoothing (FWHM)",
                    "min. cluster",
                    "cluster mask",
                    "reference",
                    "clusters",
                    "significant",
                    "intensity normalization",
                ],
                rows,
            )
            if rows
            else na("no statistical map was written")
        )
        qrows, qbad = [], []
        for unit in self.units:
            reg = self._unit_qc(unit)
            for series in unit.series or [""]:
                m = {**reg, **(self._series_qc(unit, series) if series else {})}
                qrows.append([series or unit.prefix, *[fmt(m.get(k)) for k in qc.THRESHOLDS]])
                qbad.append(bool(qc.check(m)))
        parts.append("<h3>Quality control</h3>")
        parts.append(
            table(
                ["series", *[f"{k} (>= {v:g})" for k, v in qc.THRESHOLDS.items()]],
                qrows,
                bad_rows=qbad,
            )
        )
        parts.append(
            "<p class='caption'>"
            + "; ".join(f"<code>{k}</code>: {esc(v)}" for k, v in qc.QC_DESCRIPTIONS.items())
            + ". Thresholds are documented in <code>pet_synth_app.analysis.qc</code>.</p>"
        )
        return "".join(parts)

    def _libraries(self) -> str:
        import matplotlib
        import nibabel
        import nilearn
        import numpy

        return (
            f"petsynth {__version__}, nilearn {nilearn.__version__}, nibabel "
            f"{nibabel.__version__}, numpy {numpy.__version__}, matplotlib "
            f"{matplotlib.__version__}; {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )

    def _collect_warnings(self) -> list[str]:
        warnings = read_warnings(L.input_warnings_file(self.out, self.subject))
        if not self.units:
            warnings.append("no derivative folder was found for this participant")
        for unit in self.units:
            where = f"{unit.prefix}: "
            if unit.anat["t1w"] is None:
                warnings.append(where + "the preprocessed T1w is missing")
            if unit.anat["pseudo_mni"] is None and unit.anat["pseudo_t1w"] is None:
                warnings.append(
                    where + "no pseudo-normal PET (synthesis skipped or failed): "
                    "no hypometabolism map can be computed"
                )
            warnings += [where + w for w in qc.check(self._unit_qc(unit))]
            if not unit.series:
                warnings.append(
                    where + "no PET series: only the anatomy and the pseudo-normal "
                    "PET are reported"
                )
            for series in unit.series:
                files = _series_files(unit, series)
                warnings += [f"{series}: {w}" for w in qc.check(self._series_qc(unit, series))]
                stat = files["hypometabolism_stat_t1w"] or files["hypometabolism_stat_mni"]
                tsv = files["hypometabolism_tsv"]
                if stat is None:
                    warnings.append(f"{series}: no hypometabolism Z map was written")
                elif in_training := sidecar(stat).get("NormativeControlsInModelTraining"):
                    from ..group import in_training_message

                    warnings.append(f"{series}: Z map: {in_training_message(in_training)}")
                elif tsv is not None:
                    try:
                        if not read_tsv(tsv):
                            warnings.append(f"{series}: zero hypometabolism clusters found")
                    except OSError:
                        pass
        return warnings

    def render(self) -> str:
        body = [f"<h1>PetSynth report: sub-{esc(self.subject)}</h1>"]
        builders = {
            "summary": self.summary,
            "anatomical": self.anatomical,
            "normalization": self.normalization,
            "coregistration": self.coregistration,
            "synthesis": self.synthesis,
            "hypometabolism": lambda: self.clusters_section(
                "hypometabolism", "Z", "hypometabolism"
            ),
            "controlpet": lambda: (
                self.evidence() + self.clusters_section("controlpet", "Z", "control-PET Z")
            ),
            "anomaly": lambda: self.clusters_section("ocsvm", "OC-SVM score", "OC-SVM anomaly"),
            "methods": self.methods,
            "derivatives": self.derivatives,
        }
        intros = {
            "hypometabolism": "<p class='caption'>Z = (real &minus; pseudo-normal) PET "
            "standardized; negative = lower uptake than expected. Clusters: connected voxels "
            "below the threshold inside gray matter, larger than the minimum volume, ranked "
            "by mass.</p>",
            "controlpet": "<p class='caption'>The classic comparison, beside the "
            "synthesis-based map: Z = (real PET &minus; controls' voxelwise mean PET) / "
            "controls' SD, computed without the pseudo-normal PET; same cluster rule. "
            "Written once a normative model exists (group level).</p>",
            "anomaly": "<p class='caption'>One-class SVM decision score per voxel on "
            "autoencoder features of PET patches; negative = anomalous, thresholded like "
            "the Z map.</p>",
        }
        if not self.units:
            body.append(warn_box(["no derivative folder sub-" + self.subject + " was found"]))
        for anchor, title in SECTIONS:
            t0 = time.perf_counter()
            try:
                content = (
                    builders[anchor]()
                    if (self.units or anchor in ("summary", "methods"))
                    else na("no derivative folder was found")
                )
            except Exception as exc:  # noqa: BLE001 - one section must not kill the report
                LOGGER.warning("report section %s failed: %s", anchor, exc, exc_info=True)
                content = (
                    f"<p class='error'>This section could not be made: "
                    f"{esc(type(exc).__name__)}: {esc(str(exc))}</p>"
                )
            LOGGER.debug("report section %s: %.1f s", anchor, time.perf_counter() - t0)
            body.append(
                f"<section id='{anchor}'><h2>{esc(title)}</h2>"
                f"{intros.get(anchor, '')}{content}</section>"
            )
        return page(f"PetSynth: sub-{self.subject}", SECTIONS, body)


def calibration_note(meta: dict) -> str:
    """The cluster table's calibration in plain words (``analysis.calibration``): how many
    clusters are significant against healthy controls, or that none can be said to be."""
    text = str(meta.get("Calibration") or "")
    if text.startswith("calibrated"):
        n = meta.get("NumberSignificant")
        head = (
            f"<b>{n} cluster{'s' if n != 1 else ''} significant</b> against healthy controls. "
            if isinstance(n, int)
            else ""
        )
        return f"<p>{head}Clusters are {esc(text)}.</p>"
    if not text:
        return ""
    plain = text.removeprefix("uncalibrated: ")  # calibration.UNCALIBRATED says it all
    if plain != text:
        plain = plain[:1].upper() + plain[1:]
        return f"<p class='warn'><b>Uncalibrated map:</b> {esc(plain)}.</p>"
    return (
        "<p class='warn'><b>Uncalibrated map:</b> a healthy scan also shows clusters at "
        f"this threshold, so a cluster here is not a finding by itself. {esc(text)}</p>"
    )


def significance(meta: dict) -> str:
    """The summary table's short form of :func:`calibration_note`: how many clusters are
    significant against healthy controls, or that the map is uncalibrated."""
    text = str(meta.get("Calibration") or "")
    if text.startswith("calibrated"):
        n = meta.get("NumberSignificant")
        return f"{n if isinstance(n, int) else 'n/a'} (vs healthy controls)"
    if text:
        return "uncalibrated: healthy scans show clusters too"
    return "n/a"


def favoured_map(evaluation_dir: Path) -> str:
    """A sentence saying which Z map (synthesis-based or control-PET) the evaluation
    summaries in ``evaluation_dir`` favour, with the numbers, or that none exist."""
    found, written = {}, []
    for desc in ("hypometabolism", "controlpet"):
        path = L.evaluation_file(evaluation_dir, desc, "summary", ".json")
        try:
            found[desc] = json.loads(path.read_text())
            written.append(path.stat().st_mtime)
        except (OSError, ValueError):
            continue
    if len(found) < 2:
        return (
            "When this report was written, no evaluation of both maps existed for this "
            "dataset (petsynth-evaluate --desc hypometabolism and --desc controlpet with "
            "ground truth and controls left out of the normative model), so neither map "
            "is known to be more reliable here: read a cluster as a finding only where "
            "both maps agree. An evaluation run after this report is shown in the group "
            "report (group/report.html) from the next group-level run."
        )

    def figures(s: dict) -> tuple[float | None, float | None]:
        fp = s.get("fp_per_control_held_out")
        return s.get("sensitivity_top3"), fp

    (sens_h, fp_h), (sens_c, fp_c) = figures(found["hypometabolism"]), figures(found["controlpet"])
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(min(written)))
    text = (
        f"On this dataset's evaluation (petsynth-evaluate, {when}; a later one shows in "
        f"the group report), the synthesis-based map found "
        f"{_pct(sens_h)} of the patients within its top 3 clusters with "
        f"{_num(fp_h)} false-positive clusters per held-out control; the control-PET map "
        f"{_pct(sens_c)} with {_num(fp_c)}. "
    )
    if None in (sens_h, sens_c, fp_h, fp_c):
        return text + "Without held-out controls the false-positive rates are unknown."
    if sens_h >= sens_c and fp_h < fp_c:
        return text + "The evidence favours the synthesis-based map."
    if sens_c >= sens_h and fp_c < fp_h:
        return text + "The evidence favours the control-PET map."
    if sens_h == sens_c and fp_h == fp_c:
        return text + "The two maps performed equally."
    return text + "Neither map is better on both counts."


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def write_subject_report(output_dir: Path, subject: str, run_id: str, settings_file: Path) -> Path:
    """Write ``<out>/sub-<subject>.html`` with figures drawn from the derivatives on disk.

    Figures are written first to ``<out>/sub-<subject>/figures/``; the HTML is written
    last and atomically, so its presence marks a participant whose run completed. Never
    raises for a figure or a section that fails (they show an error line instead).
    """
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    subject = str(subject).removeprefix("sub-")
    report = _Report(output_dir, subject, run_id, settings_file)
    text = report.render()
    out = write_atomic(output_dir / f"sub-{subject}.html", text)
    LOGGER.info(
        "report %s written in %.1f s (%d figures, %d failed)",
        out.name,
        time.perf_counter() - t0,
        len(report.figure.timings),
        len(report.figure.failures),
    )
    return out


__all__ = ["SECTIONS", "write_subject_report"]
