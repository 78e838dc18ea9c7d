"""Nipype interface for the report figures."""

from __future__ import annotations

import os

import nibabel as nib
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _OverlayInputSpec(BaseInterfaceInputSpec):
    background = File(exists=True, mandatory=True)
    contour = File(exists=True)
    overlay = File(exists=True)
    title = traits.Str("", usedefault=True)
    contour_level = traits.Float(0.5, usedefault=True)


class _OverlayOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class OverlayFigure(SimpleInterface):
    """SVG mosaic of an image with a contour and/or overlay."""

    input_spec = _OverlayInputSpec
    output_spec = _OverlayOutputSpec

    def _run_interface(self, runtime):
        from ..reports.figures import plot_overlay

        out = os.path.join(runtime.cwd, "figure.svg")
        plot_overlay(
            nib.load(self.inputs.background),
            out,
            contour=nib.load(self.inputs.contour) if self.inputs.contour else None,
            overlay=nib.load(self.inputs.overlay) if self.inputs.overlay else None,
            title=self.inputs.title,
            contour_level=self.inputs.contour_level,
        )
        self._results["out_file"] = out
        return runtime
