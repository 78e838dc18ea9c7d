"""Group HTML report: ``<out>/group/report.html`` (+ ``group/figures/``, ``group/qc.tsv``).

Per-participant QC table (registration and coregistration quality from
``analysis.qc``, synthesis quality from ``group/synthesis_quality.tsv`` when the group
level has run, clusters per PET series), distribution plots of these by group, and,
with ground truth, the lesion-detection curve of ``petsynth-evaluate``
(``analysis.evaluate.evaluate`` with ``truth_dir``, else the files it wrote under
``group/evaluation/``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .. import __version__
from .. import layout as L
from ..analysis import qc
from . import figures as F
from .html import (
    FigureMaker,
    esc,
    kv,
    na,
    page,
    read_json,
    read_tsv,
    rel,
    table,
    warn_box,
    write_atomic,
)

LOGGER = logging.getLogger("petsynth")
DESCS = (
    ("hypometabolism", "Hypometabolism (Z)"),
    ("controlpet", "Control-PET Z (no synthesis)"),
    ("ocsvm", "Anomaly (OC-SVM)"),
)
QUALITY_KEYS = ("ssim", "psnr")
SECTIONS = [
    ("qc", "Quality control"),
    ("distributions", "Distributions"),
    ("detection", "Lesion detection"),
    ("about", "About"),
]


def read_groups(output_dir: Path) -> dict[str, str]:
    """``{label: group}`` from the raw dataset's ``participants.tsv``, found through the
    derivatives' ``dataset_description.json`` SourceDatasets (``file://`` URL); {}."""
    from ..bids import read_participants

    desc = read_json(Path(output_dir) / "dataset_description.json")
    for source in desc.get("SourceDatasets", []) or []:
        url = source.get("URL", "") if isinstance(source, dict) else ""
        parsed = urlparse(url)
        if parsed.scheme == "file":
            rows = read_participants(Path(unquote(parsed.path)))
            if rows:
                return {k: v.get("group", "") or "n/a" for k, v in rows.items()}
    return {}


def _n_clusters(unit: Path, series: str, desc: str) -> int | None:
    tsv = L.existing(unit, series, "clusters", None, desc)
    if tsv is None:
        return None
    try:
        return len(read_tsv(tsv))
    except OSError:
        return None


def collect(output_dir: Path, groups: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per participant PET series (or session without PET): QC metrics,
    synthesis quality, cluster counts, group."""
    out = Path(output_dir)
    groups = {k.removeprefix("sub-"): v for k, v in (groups or {}).items()}
    quality = {}
    sq = out / "group" / "synthesis_quality.tsv"
    if sq.is_file():
        quality = {r["participant_id"]: r for r in read_tsv(sq)}
    rows = []
    for sub_dir in sorted(p for p in out.glob("sub-*") if p.is_dir()):
        subject = sub_dir.name[4:]
        for row in qc.participant_qc(out, subject):
            unit = sub_dir / f"ses-{row['session']}" if row["session"] else sub_dir
            prefix = qc.unit_prefix(unit, subject)
            series = f"{prefix}_{row['series']}" if row["series"] else ""
            q = quality.get(row["participant_id"], {})
            row["group"] = groups.get(subject, "n/a")
            for k in QUALITY_KEYS:
                row[k] = float(q[k]) if q.get(k) not in (None, "") else float("nan")
            for desc, _ in DESCS:
                row[f"n_clusters_{desc}"] = _n_clusters(unit, series, desc) if series else None
            row["report"] = (out / f"sub-{subject}.html").is_file()
            rows.append(row)
    return rows


def _detection(out: Path, truth_dir: Path | None, figmaker: FigureMaker, figdir: Path) -> str:
    from ..analysis import detection as det

    parts = []
    for desc, title in DESCS:
        curve = lesion_curve = summary = None
        source = ""
        if truth_dir is not None:
            from ..analysis.evaluate import NoPatientMaps, evaluate

            try:
                *_, summary, curve, lesion_curve = evaluate(out, Path(truth_dir), desc)
                source = f"computed now against <code>{esc(str(truth_dir))}</code>"
            except NoPatientMaps:  # e.g. first group level, before the patients ran
                parts.append(
                    f"<h3>{esc(title)}</h3>"
                    + na(
                        f"no patient of the truth folder has space-T1w desc-{desc} "
                        "cluster maps yet"
                    )
                )
                continue
            except Exception as exc:  # noqa: BLE001
                LOGGER.warning("group report: evaluation (%s) failed: %s", desc, exc)
                parts.append(
                    f"<h3>{esc(title)}</h3><p class='error'>Evaluation failed: {esc(str(exc))}</p>"
                )
                continue
        else:
            ev = out / "group" / "evaluation"
            sens = L.evaluation_file(ev, desc, "sensitivity")
            if not sens.is_file():
                continue
            rows = read_tsv(sens)
            curve = [(int(r["k"]), float(r["patient_sensitivity"])) for r in rows]
            lesion_curve = [
                (int(r["k"]), float(r["lesion_sensitivity"]))
                for r in rows
                if r.get("lesion_sensitivity") not in (None, "")
            ]
            summary = read_json(L.evaluation_file(ev, desc, "summary", ".json"))
            source = f"from <code>{esc(rel(sens, out / 'group'))}</code> (petsynth-evaluate)"
        parts.append(f"<h3>{esc(title)}</h3><p class='caption'>Ground truth {source}.</p>")
        curves = {"patients": curve}
        if lesion_curve:
            curves["lesions"] = lesion_curve
        fig = L.figure_file(figdir, None, desc, "sensitivity", ".png")

        def plot(out_file: Path, curves=curves, desc=desc) -> None:
            det.plot_sensitivity_curve(
                curves, out_file, title=f"{desc}: sensitivity vs clusters per patient"
            )

        parts.append(
            "<div style='max-width:520px'>"
            + figmaker(
                plot,
                fig,
                caption="Fraction of patients (lesions) hit by a cluster among the top "
                "k ranked clusters (Zotova et al., Fig. 4).",
            )
            + "</div>"
        )
        if summary:
            keys = [k for k in summary if not isinstance(summary[k], list | dict)]
            parts.append(table(["metric", "value"], [[k, summary[k]] for k in keys]))
    if not parts:
        return na(
            "no ground truth was given (truth_dir) and petsynth-evaluate has not been run "
            f"(no {L.evaluation_file(Path('group', 'evaluation'), '*', 'sensitivity')})"
        )
    return "".join(parts)


def _in_training_text(norm: dict) -> str | None:
    """The normative model's ``controls_in_model_training`` for the About section (None:
    a model fitted before the key existed)."""
    if "controls_in_model_training" not in norm:
        return None
    labels = norm["controls_in_model_training"]
    if labels is None:
        return "unknown (no model card of the synthesis weights was found)"
    return ", ".join(labels) or "none"


def write_group_report(
    output_dir: Path, truth_dir: Path | None = None, groups: dict[str, str] | None = None
) -> Path:
    """Write ``<out>/group/report.html`` (figures in ``<out>/group/figures/``, the QC
    table in ``<out>/group/qc.tsv``) and return its path.

    ``truth_dir``: ground-truth folder for ``petsynth-evaluate`` (lesions.tsv and
    ``sub-*/anat/*_desc-lesion_mask``); without it, existing ``group/evaluation`` results
    are shown. ``groups``: ``{participant label: group}``; default: the raw dataset's
    participants.tsv (via ``dataset_description.json``).
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    gdir = out / "group"
    figdir = gdir / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    groups = groups if groups is not None else read_groups(out)
    rows = collect(out, groups)
    figmaker = FigureMaker(gdir)
    norm = read_json(gdir / "normative" / "normative.json")
    in_training = norm.get("controls_in_model_training")
    body = [
        f"<h1>PetSynth group report</h1><p>{len({r['participant_id'] for r in rows})} "
        f"participant(s) in <code>{esc(str(out))}</code>; PetSynth {__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"
    ]
    if in_training:
        from ..group import in_training_message

        body.append(warn_box([in_training_message(in_training)]))

    # --- QC table
    metric_keys = list(qc.THRESHOLDS)
    header = [
        "participant",
        "group",
        "session",
        "series",
        *metric_keys,
        *QUALITY_KEYS,
        *[f"clusters ({d})" for d, _ in DESCS],
        "warnings",
    ]
    titles = {
        **qc.QC_DESCRIPTIONS,
        "ssim": "SSIM pseudo-normal vs real PET (controls, group level)",
        "psnr": "PSNR (dB) pseudo-normal vs real PET (controls, group level)",
    }
    trows, bad, flagged = [], [], 0
    for r in rows:
        warnings = qc.check(r)
        pid = r["participant_id"]
        link = (
            f"<a href='{rel(out / (pid + '.html'), gdir)}'>{esc(pid)}</a>"
            if r["report"]
            else esc(pid)
        )
        trows.append(
            [
                link,
                r["group"],
                r["session"] or "",
                r["series"] or "none",
                *[r[k] for k in metric_keys],
                *[r[k] for k in QUALITY_KEYS],
                *[r[f"n_clusters_{d}"] for d, _ in DESCS],
                "; ".join(w.split(":")[0] for w in warnings),
            ]
        )
        bad.append(bool(warnings))
        flagged += bool(warnings)
    qc_html = [
        f"<p>{flagged} of {len(rows)} row(s) below a QC threshold (highlighted). "
        "Thresholds: "
        + ", ".join(f"<code>{k}</code> &ge; {v:g}" for k, v in qc.THRESHOLDS.items())
        + " (documented in <code>pet_synth_app.analysis.qc</code>).</p>"
    ]
    qc_html.append(table(header, trows, titles=titles, bad_rows=bad))
    qc_html.append(
        "<p class='caption'>"
        + "; ".join(f"<code>{esc(k)}</code>: {esc(v)}" for k, v in titles.items())
        + ". Clusters: rows of "
        f"the series' <code>{esc(L.pattern('clusters', desc='hypometabolism'))}</code> and "
        f"<code>{esc(L.pattern('clusters', desc='ocsvm'))}</code> (n/a: not written).</p>"
    )
    try:
        from ..analysis.clusters import write_tsv

        write_tsv(
            rows,
            gdir / "qc.tsv",
            [
                "participant_id",
                "group",
                "session",
                "series",
                *metric_keys,
                *QUALITY_KEYS,
                *[f"n_clusters_{d}" for d, _ in DESCS],
            ],
        )
        qc_html.append(f"<p>Table: <a href='{rel(gdir / 'qc.tsv', gdir)}'>qc.tsv</a></p>")
    except Exception as exc:  # noqa: BLE001
        LOGGER.warning("group report: cannot write qc.tsv: %s", exc)

    # --- distributions
    dist = []
    by_group = sorted({r["group"] for r in rows})
    plots = [(k, qc.THRESHOLDS[k], k) for k in metric_keys] + [(k, None, k) for k in QUALITY_KEYS]
    plots += [(f"n_clusters_{d}", None, f"clusters per series ({d})") for d, _ in DESCS]
    for key, threshold, label in plots:
        values = {
            g: {
                f"{r['participant_id']}{r['series']}": r[key]
                for r in rows
                if r["group"] == g and r[key] is not None
            }
            for g in by_group
        }
        finite = [v for d in values.values() for v in d.values() if v == v]
        if not finite:
            continue
        dist.append(
            "<div style='display:inline-block;width:32%;min-width:260px'>"
            + figmaker(
                F.plot_strip,
                L.figure_file(figdir, None, key.replace("_", ""), "plot"),
                values,
                title=label,
                threshold=threshold,
            )
            + "</div>"
        )
    if not dist:
        dist = [na("no participant has QC values")]

    body.append(f"<section id='qc'><h2>Quality control</h2>{''.join(qc_html)}</section>")
    body.append(
        "<section id='distributions'><h2>Distributions</h2><p class='caption'>"
        "Box and strip plots by group (participants.tsv); dashed red: QC threshold."
        f"</p>{''.join(dist)}</section>"
    )
    try:
        detection = _detection(out, Path(truth_dir) if truth_dir else None, figmaker, figdir)
    except Exception as exc:  # noqa: BLE001
        LOGGER.warning("group report: detection section failed: %s", exc)
        detection = f"<p class='error'>Detection section failed: {esc(str(exc))}</p>"
    body.append(f"<section id='detection'><h2>Lesion detection</h2>{detection}</section>")
    about = kv(
        [
            (
                "Normative model",
                f"{norm.get('n_controls', len(norm.get('participants', [])))} "
                f"controls, model sha256 {str(norm.get('model_sha256', ''))[:12]}"
                if norm
                else "not fitted (run the group level)",
            ),
            ("Controls that trained the synthesis model", _in_training_text(norm)),
            (
                "Synthesis quality table",
                "group/synthesis_quality.tsv"
                if (gdir / "synthesis_quality.tsv").is_file()
                else "absent (run the group level)",
            ),
            ("Figures", f"{len(figmaker.timings)} ({len(figmaker.failures)} failed)"),
        ]
    )
    if figmaker.failures:
        about += warn_box([f"figure failed: {f}" for f in figmaker.failures])
    body.append(f"<section id='about'><h2>About</h2>{about}</section>")
    path = write_atomic(gdir / "report.html", page("PetSynth group report", SECTIONS, body))
    LOGGER.info("group report %s written in %.1f s", path, time.perf_counter() - t0)
    return path


__all__ = ["collect", "read_groups", "write_group_report"]
