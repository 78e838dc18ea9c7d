"""Quality-control figures (SVG) for the visual report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def plot_overlay(
    background: nib.Nifti1Image,
    out_file: str,
    contour: nib.Nifti1Image | None = None,
    overlay: nib.Nifti1Image | None = None,
    title: str = "",
    contour_level: float = 0.5,
) -> str:
    """Three-plane mosaic of `background` with a red `contour` and/or a hot `overlay`.

    Images in any space; all are displayed in world (RAS mm) coordinates.
    """
    from nilearn import plotting

    display = plotting.plot_anat(
        background, display_mode="ortho", title=title, dim=-0.3, draw_cross=False,
        annotate=True,
    )  # fmt: skip
    if overlay is not None:
        data = np.asarray(overlay.dataobj, dtype=np.float32)
        vmax = float(np.percentile(data[data > 0], 99)) if np.any(data > 0) else 1.0
        display.add_overlay(overlay, cmap="hot", transparency=0.5, vmin=0.0, vmax=vmax)
    if contour is not None:
        display.add_contours(contour, levels=[contour_level], colors="r", linewidths=1.0)
    display.savefig(out_file)
    display.close()
    return out_file
