"""Small HTML helpers shared by the participant and group reports (no external assets)."""

from __future__ import annotations

import csv
import html
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("petsynth")

STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:0 auto;padding:0 1em 3em;color:#222;line-height:1.4}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.4em 0;
z-index:2}
nav a{margin-right:1em;text-decoration:none;color:#0a58ca}
h1{margin-top:.6em}h2{border-bottom:2px solid #0a58ca;padding-bottom:.1em;margin-top:1.6em}
h3{margin-bottom:.3em}
img,object{width:100%;display:block;margin:.4em 0;background:#000}
table{border-collapse:collapse;font-size:80%;margin:.5em 0;max-width:100%}
.wide{overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:2px 4px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{min-width:3.5em}
@media print{.wide{overflow:visible}table{font-size:70%}}
th{background:#eef}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fde2e1}
.warn{background:#fff3cd;border-left:4px solid #e0a800;padding:.3em .6em;margin:.3em 0}
.na{color:#666;font-style:italic}
.error{color:#b00020}
.caption{font-size:85%;color:#444}
code,pre{font-size:85%}pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}
dl.kv dt{font-weight:bold}dl.kv dd{margin:0}
"""

esc = html.escape


def rel(path: Path, start: Path) -> str:
    """URL of ``path`` relative to the folder ``start`` (forward slashes, quoted)."""
    from urllib.parse import quote

    return quote(Path(os.path.relpath(path, start)).as_posix())


def na(reason: str) -> str:
    """A 'not available' line."""
    return f"<p class='na'>Not available because {esc(reason)}.</p>"


def warn_box(messages: Sequence[str]) -> str:
    return "".join(f"<div class='warn'>&#9888; {esc(m)}</div>" for m in messages)


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """Definition list of (key, value) pairs; values already escaped when they are HTML
    (strings starting with '<'), else escaped here."""
    items = []
    for key, value in pairs:
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) and value.startswith("<") else esc(str(value))
        items.append(f"<dt>{esc(key)}</dt><dd>{text}</dd>")
    return "<dl class='kv'>" + "".join(items) + "</dl>" if items else ""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    titles: dict[str, str] | None = None,
    bad_rows: Sequence[bool] | None = None,
) -> str:
    """HTML table; numbers right-aligned; ``titles`` give header tooltips."""
    titles = titles or {}
    out = ["<div class='wide'><table><thead><tr>"]
    for h in header:
        tip = f" title='{esc(titles[h])}'" if h in titles else ""
        out.append(f"<th{tip}>{esc(h)}</th>")
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cls = " class='bad'" if bad_rows and bad_rows[i] else ""
        out.append(f"<tr{cls}>")
        for v in row:
            is_num = isinstance(v, int | float) or _is_number(v)
            cell = v if isinstance(v, str) and v.startswith("<") else esc(fmt(v))
            out.append(f"<td class='num'>{cell}</td>" if is_num else f"<td>{cell}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _is_number(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        float(v)
    except ValueError:
        return False
    return True


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def read_json(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sidecar(path: Path) -> dict:
    """JSON sidecar of a ``.nii.gz``/``.tsv`` derivative ({} if absent)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv"):
        if name.endswith(ext):
            return read_json(path.with_name(name[: -len(ext)] + ".json"))
    return {}


def markdown(text: str) -> str:
    """Minimal markdown: ATX headings, paragraphs, `code`, **bold**; everything escaped."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip().splitlines()
        if not lines:
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", lines[0])
        if m and len(lines) == 1:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            continue
        if all(re.match(r"^\s*[-*]\s+", ln) for ln in lines):
            bullet = re.compile(r"^\s*[-*]\s+")
            items = "".join("<li>" + _inline(bullet.sub("", ln)) + "</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
            continue
        if m:
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            lines = lines[1:]
        out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


class FigureMaker:
    """Runs figure functions, never raising: a failure becomes an error line in the HTML
    and a logged warning. Keeps the time spent per figure."""

    def __init__(self, html_dir: Path):
        self.html_dir = Path(html_dir)
        self.timings: list[tuple[str, float]] = []
        self.failures: list[str] = []

    def __call__(
        self,
        fn: Callable[..., Any],
        out_file: Path,
        *args: Any,
        caption: str = "",
        flicker: bool = False,
        **kwargs: Any,
    ) -> str:
        t0 = time.perf_counter()
        try:
            fn(*args, out_file=out_file, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a figure must never kill the report
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            LOGGER.warning("report figure %s failed: %s", Path(out_file).name, reason)
            self.failures.append(Path(out_file).name)
            return (
                f"<p class='error'>Figure <code>{esc(Path(out_file).name)}</code> could "
                f"not be made: {esc(type(exc).__name__)}: {esc(reason)}</p>"
            )
        finally:
            self.timings.append((Path(out_file).name, time.perf_counter() - t0))
        url = rel(Path(out_file), self.html_dir)
        cap = f"<p class='caption'>{caption}</p>" if caption else ""
        if flicker:
            return (
                f"<object type='image/svg+xml' data='{url}'>"
                f"<a href='{url}'>{esc(Path(out_file).name)}</a></object>{cap}"
            )
        return f"<img src='{url}' alt='{esc(Path(out_file).name)}' loading='lazy'>{cap}"


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``: temporary name in the same folder, then
    ``os.replace``."""
    from ..atomicio import write_text

    return write_text(path, text)


def page(title: str, nav: Sequence[tuple[str, str]], body: Sequence[str]) -> str:
    links = "".join(f"<a href='#{esc(anchor)}'>{esc(name)}</a>" for anchor, name in nav)
    return "\n".join(
        [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
            f"<nav>{links}</nav>",
            *body,
            "</body></html>",
        ]
    )
