"""Quality-control figures (SVG) for the visual reports, drawn from derivatives on disk.

The mosaics are drawn directly with matplotlib (not nilearn's display objects, which are
~5x slower for the same slices): every image is put in the closest canonical (RAS)
orientation, resampled to the background grid when its grid differs, and cut along
voxel planes. Panels show neurological orientation (left hemisphere on the left).
Images are embedded in the SVG as PNG rasters; contours and labels are vectors.

Flicker figures (two layers with identical layout, the top one fading in and out while
the mouse is over the figure) are composed with ``niworkflows.viz.utils.compose_view``,
which works offline; embed them with ``<object>`` (hover does not reach an ``<img>``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: smaller SVGs, still offline
matplotlib.rcParams["svg.hashsalt"] = "petsynth"  # deterministic ids

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LOGGER = logging.getLogger("petsynth")

VIEWS = ("z", "y", "x")
"""Row order of the mosaics: axial, coronal, sagittal (cut axis in RAS)."""
VIEW_NAMES = {"x": "sagittal", "y": "coronal", "z": "axial"}
DPI = 100
"""Raster resolution of the embedded images (px per inch of the 'figure')."""
PANEL_INCH = 1.45
"""Height of one mosaic row in inches."""
CLUSTER_COLOR = "#00e5ff"


# --- image handling ----------------------------------------------------------------------


def load3d(image: Any) -> nib.Nifti1Image:
    """A 3D float32 image in the closest canonical (RAS+) orientation (4D: mean over time)."""
    img = nib.load(str(image)) if isinstance(image, str | Path) else image
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data.mean(axis=3)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))


def on_grid(image: Any, ref: nib.Nifti1Image, nearest: bool = False) -> np.ndarray:
    """Data of ``image`` (path or image) on the grid of canonical ``ref``."""
    img = load3d(image)
    if img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-3):
        return np.asarray(img.dataobj, dtype=np.float32)
    from nilearn.image import resample_to_img

    res = resample_to_img(
        img,
        ref,
        interpolation="nearest" if nearest else "continuous",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(res.dataobj, dtype=np.float32)


def robust_range(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[float, float]:
    """Display range from percentiles of the nonzero voxels (in ``mask`` if given)."""
    values = data[mask] if mask is not None and mask.any() else data[data != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def cuts_from_mask(mask: np.ndarray, n: int = 6) -> dict[str, list[int]]:
    """``n`` voxel indices per RAS axis, equally spaced inside the mask's bounding box."""
    cuts = {}
    for axis, name in enumerate(("x", "y", "z")):
        other = tuple(a for a in range(3) if a != axis)
        profile = mask.sum(axis=other) if mask.any() else np.ones(mask.shape[axis])
        idx = np.nonzero(profile > 0.1 * profile.max())[0]
        lo, hi = (int(idx.min()), int(idx.max())) if idx.size else (0, mask.shape[axis] - 1)
        cuts[name] = [int(round(v)) for v in np.linspace(lo, hi, n + 2)[1:-1]]
    return cuts


def cuts_through_labels(
    labels: np.ndarray, mask: np.ndarray, n: int = 6, top: int = 4
) -> dict[str, list[int]]:
    """Cuts through the centroids of labels 1..``top`` (ranked clusters), completed with
    equally spaced cuts in the mask so that each axis has ``n`` cuts."""
    regular = cuts_from_mask(mask, n)
    ids = [v for v in range(1, top + 1) if np.any(labels == v)]
    centroids = [np.argwhere(labels == v).mean(axis=0) for v in ids]
    cuts = {}
    for axis, name in enumerate(("x", "y", "z")):
        chosen: list[int] = []
        for c in centroids:
            v = int(round(c[axis]))
            if all(abs(v - o) > 2 for o in chosen):
                chosen.append(v)
        for v in regular[name]:
            if len(chosen) >= n:
                break
            if all(abs(v - o) > 2 for o in chosen):
                chosen.append(v)
        cuts[name] = sorted(chosen[:n])
    return cuts


def _slice(data: np.ndarray, axis: str, index: int) -> np.ndarray:
    """2D slice for imshow(origin='lower'): rows = vertical axis, columns = horizontal."""
    if axis == "z":
        return data[:, :, index].T
    if axis == "y":
        return data[:, index, :].T
    return data[index, :, :].T


def _extent(img: nib.Nifti1Image, axis: str) -> tuple[float, float, float, float]:
    aff, shape = img.affine, img.shape
    dims = {"z": (0, 1), "y": (0, 2), "x": (1, 2)}[axis]
    out = []
    for d in dims:
        step, origin = aff[d, d], aff[d, 3]
        out += [origin - step / 2, origin + step * (shape[d] - 0.5)]
    return tuple(out)


def _world(img: nib.Nifti1Image, axis: str, index: int) -> float:
    d = "xyz".index(axis)
    return float(img.affine[d, d] * index + img.affine[d, 3])


# --- mosaic ------------------------------------------------------------------------------


@dataclass
class Layer:
    """A colour overlay: voxels where ``show`` is true are drawn with ``cmap``."""

    data: np.ndarray
    cmap: str = "hot"
    vmin: float = 0.0
    vmax: float = 1.0
    alpha: float = 1.0
    show: np.ndarray | None = None
    label: str = ""


@dataclass
class Contour:
    """A contour of ``data`` at ``level``."""

    data: np.ndarray
    color: str = "r"
    level: float = 0.5
    width: float = 0.8


@dataclass
class Mosaic:
    """What to draw: rows of (view, background, overlays), shared cuts and contours."""

    ref: nib.Nifti1Image
    cuts: dict[str, list[int]]
    rows: list[tuple[str, str, np.ndarray, tuple[float, float], list[Layer]]] = field(
        default_factory=list
    )  # (row label, view axis, background, (vmin, vmax), overlays)
    contours: list[Contour] = field(default_factory=list)
    labels: np.ndarray | None = None
    colorbar: tuple[str, float, float, str] | None = None  # cmap, vmin, vmax, title
    background_cmap: str = "gray"


def render_mosaic(mosaic: Mosaic, out_file: Path | None = None, fmt: str = "svg") -> str:
    """Draw the mosaic; write it to ``out_file`` (if given) and return the SVG/PNG text."""
    ncols = max(len(mosaic.cuts[view]) for _, view, *_ in mosaic.rows)
    nrows = len(mosaic.rows)
    cbar = 0.5 if mosaic.colorbar else 0.0
    label_w = 0.28
    height = PANEL_INCH * nrows + cbar
    width = label_w + PANEL_INCH * ncols
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="black")
    FigureCanvasAgg(fig)
    for r, (row_label, view, bg, (vmin, vmax), layers) in enumerate(mosaic.rows):
        top = 1 - (r * PANEL_INCH) / height
        fig.text(
            label_w / 2 / width,
            top - PANEL_INCH / 2 / height,
            row_label,
            color="w",
            rotation=90,
            ha="center",
            va="center",
            fontsize=7,
        )
        extent = _extent(mosaic.ref, view)
        for c, index in enumerate(mosaic.cuts[view]):
            ax = fig.add_axes(
                (
                    (label_w + c * PANEL_INCH) / width,
                    top - PANEL_INCH / height,
                    PANEL_INCH / width,
                    PANEL_INCH / height,
                )
            )
            ax.set_facecolor("black")
            ax.set_axis_off()
            ax.imshow(
                _slice(bg, view, index),
                cmap=mosaic.background_cmap,
                vmin=vmin,
                vmax=vmax,
                origin="lower",
                extent=extent,
                interpolation="nearest",
            )
            for layer in layers:
                sl = _slice(layer.data, view, index)
                shown = None if layer.show is None else _slice(layer.show, view, index)
                masked = np.ma.masked_where(~shown if shown is not None else sl == 0, sl)
                ax.imshow(
                    masked,
                    cmap=layer.cmap,
                    vmin=layer.vmin,
                    vmax=layer.vmax,
                    alpha=layer.alpha,
                    origin="lower",
                    extent=extent,
                    interpolation="nearest",
                )
            for contour in mosaic.contours:
                sl = _slice(contour.data, view, index)
                if sl.min() < contour.level < sl.max():
                    ax.contour(
                        sl,
                        levels=[contour.level],
                        colors=contour.color,
                        linewidths=contour.width,
                        origin="lower",
                        extent=extent,
                    )
            if mosaic.labels is not None:
                _draw_labels(ax, _slice(mosaic.labels, view, index), extent)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_aspect("equal")
            coord = _world(mosaic.ref, view, index)
            ax.text(
                0.03, 0.03, f"{view}={coord:.0f}", color="w", fontsize=6, transform=ax.transAxes
            )
            if view in "zy" and c == 0:
                ax.text(0.02, 0.92, "L", color="w", fontsize=6, transform=ax.transAxes)
                ax.text(0.93, 0.92, "R", color="w", fontsize=6, transform=ax.transAxes)
    if mosaic.colorbar:
        cmap, vmin, vmax, title = mosaic.colorbar
        cax = fig.add_axes((0.40, 0.30 / height, 0.25, 0.09 / height))
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        sm = ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.ax.tick_params(colors="w", labelsize=6, length=2)
        cb.outline.set_edgecolor("w")
        fig.text(0.39, 0.345 / height, title, color="w", fontsize=7, ha="right", va="center")
    buf = io.BytesIO() if fmt == "png" else io.StringIO()
    fig.savefig(buf, format=fmt, facecolor="black", dpi=DPI)
    text = buf.getvalue()
    if out_file is not None:
        from ..atomicio import write_bytes

        write_bytes(Path(out_file), text if fmt == "png" else text.encode("utf-8"))
    return text


def _draw_labels(ax, labels: np.ndarray, extent: Sequence[float]) -> None:
    """Outline every label of a 2D label slice and write its number at its centroid."""
    import matplotlib.patheffects as pe

    ids = [int(v) for v in np.unique(labels) if v > 0]
    if not ids:
        return
    ny, nx = labels.shape
    sx = (extent[1] - extent[0]) / nx
    sy = (extent[3] - extent[2]) / ny
    for v in ids:
        region = (labels == v).astype(np.float32)
        if region.sum() > 1 and region.min() < 0.5 < region.max():
            ax.contour(
                region,
                levels=[0.5],
                colors=CLUSTER_COLOR,
                linewidths=0.7,
                origin="lower",
                extent=extent,
            )
        if v > 20:
            continue
        rows, cols = np.nonzero(region)
        x = extent[0] + (cols.mean() + 0.5) * sx
        y = extent[2] + (rows.mean() + 0.5) * sy
        ax.text(
            x,
            y,
            str(v),
            color=CLUSTER_COLOR,
            fontsize=6,
            ha="center",
            va="center",
            fontweight="bold",
            path_effects=[pe.withStroke(linewidth=1.5, foreground="black")],
        )


# --- SVG composition ---------------------------------------------------------------------


def compose_flicker(background_svg: str, foreground_svg: str, out_file: Path) -> Path:
    """Two-layer SVG whose foreground fades in and out while hovered (no JavaScript)."""
    import warnings

    with warnings.catch_warnings():  # niworkflows.viz announces its move to nireports
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from niworkflows.viz.utils import compose_view
    from svgutils.transform import fromstring

    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    bg = fromstring(_strip_svg_header(background_svg))
    fg = fromstring(_strip_svg_header(foreground_svg))
    compose_view([bg], [fg], out_file=str(out_file))
    return out_file


def _strip_svg_header(svg: str) -> str:
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


# --- the report figures ------------------------------------------------------------------


def _mask_of(data: np.ndarray) -> np.ndarray:
    return data > (0.1 * float(np.percentile(data[data > 0], 98)) if np.any(data > 0) else 0)


def plot_brain_mask(t1w: Any, mask: Any, out_file: Path, wm: Any = None) -> Path:
    """T1w with the brain mask contour (red) and, if given, the WM boundary (blue)."""
    ref = load3d(t1w)
    bg = np.asarray(ref.dataobj)
    m = on_grid(mask, ref, nearest=True) > 0
    cuts = cuts_from_mask(m, 6)
    rng = robust_range(bg, m)
    contours = [Contour(m.astype(np.float32), "#ff3030")]
    if wm is not None:
        contours.append(Contour(on_grid(wm, ref), "#4da6ff", 0.5, 0.5))
    mosaic = Mosaic(ref, cuts, [(VIEW_NAMES[v], v, bg, rng, []) for v in VIEWS], contours)
    render_mosaic(mosaic, out_file)
    return Path(out_file)


def plot_flicker(
    background: Any,
    foreground: Any,
    out_file: Path,
    mask: Any = None,
    contour: Any = None,
    labels: tuple[str, str] = ("", ""),
    contour_level: float = 0.5,
) -> Path:
    """Flicker between ``background`` and ``foreground`` (on the background's grid).

    ``mask`` chooses the cuts and the intensity windows; ``contour`` (probability map or
    mask) is drawn in both layers so misalignment shows against a fixed outline.
    """
    ref = load3d(background)
    bg = np.asarray(ref.dataobj)
    fg = on_grid(foreground, ref)
    m = on_grid(mask, ref, nearest=True) > 0 if mask is not None else _mask_of(bg)
    cuts = cuts_from_mask(m, 6)
    contours = (
        [] if contour is None else [Contour(on_grid(contour, ref), "#ff3030", contour_level, 0.6)]
    )
    svgs = []
    for data, name in ((bg, labels[0]), (fg, labels[1])):
        rng = robust_range(data, m & (data != 0), (1.0, 99.5))
        rows = [(f"{name} {VIEW_NAMES[v]}".strip(), v, data, rng, []) for v in VIEWS]
        svgs.append(render_mosaic(Mosaic(ref, cuts, rows, contours)))
    return compose_flicker(svgs[0], svgs[1], out_file)


def plot_synthesis(pseudo: Any, out_file: Path, pet: Any = None, mask: Any = None) -> Path:
    """Real PET (if given) and pseudo-normal PET in MNI space: same cuts, same scale."""
    ref = load3d(pseudo)
    pseudo_a = np.asarray(ref.dataobj)
    pet_a = None if pet is None else on_grid(pet, ref)
    m = on_grid(mask, ref, nearest=True) > 0 if mask is not None else _mask_of(pseudo_a)
    cuts = cuts_from_mask(m, 7)
    both = pseudo_a[m] if pet_a is None else np.concatenate([pseudo_a[m], pet_a[m]])
    vmax = float(np.percentile(both, 99.5)) if both.size else 1.0
    rng = (0.0, vmax if vmax > 0 else 1.0)
    rows = []
    for view in ("z", "x"):
        if pet_a is not None:
            rows.append((f"real PET {VIEW_NAMES[view]}", view, pet_a, rng, []))
        rows.append((f"pseudo-normal {VIEW_NAMES[view]}", view, pseudo_a, rng, []))
    if pet_a is not None:
        cuts["x"] = cuts["x"][:7]
    mosaic = Mosaic(
        ref,
        cuts,
        rows,
        background_cmap="gist_heat",
        colorbar=("gist_heat", rng[0], rng[1], "SUVR (same scale in all rows)"),
    )
    render_mosaic(mosaic, out_file)
    return Path(out_file)


def plot_statmap_clusters(
    background: Any,
    stat: Any,
    out_file: Path,
    dseg: Any = None,
    threshold: float = -1.65,
    mask: Any = None,
    title: str = "Z",
    gm: Any = None,
    coverage: Any = None,
) -> Path:
    """Lower-tail statistic (values <= ``threshold``; only where the GM probability ``gm``
    exceeds the cluster mask's threshold, when given) over the background, ranked clusters
    (``dseg`` labels, 1 = top) outlined and numbered; cuts go through the top clusters.
    ``coverage``: the PET field of view, outlined (green) where it cuts the brain
    ``mask``: the brain outside it is enclosed by the green line."""
    ref = load3d(background)
    bg = np.asarray(ref.dataobj)
    stat_a = on_grid(stat, ref)
    labels = None if dseg is None else np.rint(on_grid(dseg, ref, nearest=True)).astype(int)
    m = on_grid(mask, ref, nearest=True) > 0 if mask is not None else _mask_of(bg)
    if labels is not None and labels.any():
        cuts = cuts_through_labels(labels, m, 6)
    else:
        cuts = cuts_from_mask(m, 6)
    shown = (stat_a <= threshold) & (stat_a != 0)
    if gm is not None:
        from ..config import GM_THRESHOLD

        shown &= on_grid(gm, ref) > GM_THRESHOLD
    low = float(np.percentile(stat_a[shown], 1)) if shown.any() else threshold - 3.0
    low = min(low, threshold - 1.0)
    layer = Layer(stat_a, cmap="autumn", vmin=low, vmax=threshold, show=shown, alpha=0.9)
    rng = robust_range(bg, m)
    rows = [(VIEW_NAMES[v], v, bg, rng, [layer]) for v in VIEWS]
    contours = []
    if coverage is not None:
        view = np.where(m, on_grid(coverage, ref, nearest=True) > 0, True).astype(np.float32)
        if not view.all():
            contours.append(Contour(view, "#33dd33", 0.5, 1.0))
    mosaic = Mosaic(
        ref,
        cuts,
        rows,
        contours=contours,
        labels=labels,
        colorbar=("autumn", low, threshold, f"{title} (shown where <= {threshold:g})"),
    )
    render_mosaic(mosaic, out_file)
    return Path(out_file)


def plot_strip(
    values: dict[str, dict[str, float]],
    out_file: Path,
    title: str = "",
    threshold: float | None = None,
    ylabel: str = "",
) -> Path:
    """Box + jittered strip plot of ``{group: {participant: value}}`` (NaNs dropped;
    groups without a value get no column)."""
    fig = Figure(figsize=(3.2, 2.6), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    groups = [
        g for g in values if any(x is not None and np.isfinite(x) for x in values[g].values())
    ] or list(values)[:1]
    rng = np.random.default_rng(0)
    data = []
    for i, g in enumerate(groups):
        v = np.array([x for x in values[g].values() if x is not None and np.isfinite(x)])
        data.append(v)
        if v.size:
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, v.size), v, s=10, alpha=0.8, zorder=3)
    if any(d.size for d in data):
        ax.boxplot([d if d.size else [np.nan] for d in data], widths=0.5, showfliers=False)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels(
        [f"{g}\n(n={d.size})" for g, d in zip(groups, data, strict=True)], fontsize=7
    )
    if threshold is not None:
        ax.axhline(threshold, color="r", ls="--", lw=0.8, label=f"threshold {threshold:g}")
        ax.legend(fontsize=6, loc="best")
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, format="svg")
    return out_file


__all__ = [
    "compose_flicker",
    "cuts_from_mask",
    "cuts_through_labels",
    "load3d",
    "on_grid",
    "plot_brain_mask",
    "plot_flicker",
    "plot_statmap_clusters",
    "plot_strip",
    "plot_synthesis",
    "render_mosaic",
]
