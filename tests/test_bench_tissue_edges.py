"""bench/bench_tissue_edges.py: the GM/WM edge width of a T1w (phantom realism check)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_tissue_edges.py"
_spec = importlib.util.spec_from_file_location("bench_tissue_edges", _PATH)
te = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(te)


def _slab(width_mm: float, noise: float = 0.0) -> tuple[np.ndarray, ...]:
    """GM (0.6) on the left, WM (1.0) on the right, a linear ramp of ``width_mm`` between."""
    x = np.arange(80, dtype=np.float32) - 40.0
    frac_wm = np.clip(x / width_mm + 0.5, 0.0, 1.0)
    t1 = np.broadcast_to((0.6 + 0.4 * frac_wm)[:, None, None], (80, 30, 30)).copy()
    t1 += np.random.default_rng(0).standard_normal(t1.shape).astype(np.float32) * noise
    wm = np.broadcast_to(frac_wm[:, None, None], t1.shape)
    return t1, np.ones(t1.shape, bool), 1.0 - wm, wm


@pytest.mark.parametrize(("width", "expected"), [(0.01, 3.1), (2.0, 3.1), (6.0, 6.0), (8.0, 8.0)])
def test_edge_width_is_the_ramp_width_above_a_3_mm_floor(width: float, expected: float) -> None:
    """At 1 mm voxels a step edge reads ~3.1 mm (1 mm Gaussian, central differences):
    the metric separates edges wider than that, not sharper ones."""
    widths, cnr = te.edge_widths(*_slab(width), (1.0, 1.0, 1.0))
    assert np.median(widths) == pytest.approx(expected, rel=0.05)
    assert widths.size > 0 and cnr > 100  # no noise: the WM core is flat


def test_noise_lowers_the_contrast_to_noise_ratio() -> None:
    _, cnr = te.edge_widths(*_slab(4.0, noise=0.04), (1.0, 1.0, 1.0))
    assert cnr == pytest.approx(0.4 / 0.04, rel=0.1)
