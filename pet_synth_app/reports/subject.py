"""Per-subject HTML report, written after the subject's workflow has finished."""

from __future__ import annotations

import html
from pathlib import Path

from .. import __version__


def write_subject_report(output_dir: Path, subject: str, run_id: str, settings_file: Path) -> Path:
    """Write `<out>/sub-<subject>.html` listing the derivatives and embedding the figures.

    It is written last, so its presence marks a subject whose run completed.
    """
    output_dir = Path(output_dir)
    sub_dir = output_dir / f"sub-{subject}"
    files = sorted(p for p in sub_dir.rglob("*") if p.is_file() and "figures" not in p.parts)
    figures = sorted((sub_dir / "figures").glob("*.svg"))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>PetSynth: sub-{html.escape(subject)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "img{width:100%;border:1px solid #ccc}code{font-size:90%}</style></head><body>",
        f"<h1>PetSynth report: sub-{html.escape(subject)}</h1>",
        f"<p>PetSynth {__version__}, run {html.escape(run_id)}; settings: "
        f"<code>{html.escape(str(settings_file.relative_to(output_dir)))}</code></p>",
        "<h2>Figures</h2>",
    ]
    for fig in figures:
        rel = fig.relative_to(output_dir)
        parts.append(f"<h3>{html.escape(fig.name)}</h3><img src='{html.escape(str(rel))}'>")
    parts.append("<h2>Derivatives</h2><ul>")
    for f in files:
        parts.append(f"<li><code>{html.escape(str(f.relative_to(output_dir)))}</code></li>")
    parts.append("</ul></body></html>")
    out = output_dir / f"sub-{subject}.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
