"""Nipype interface around pseudo-normal PET inference (synthesis.inference)."""

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

from ..config import SYNTHESIS_FWHM_MM


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    t1w_norm = File(exists=True, mandatory=True, desc="brain T1w in MNI scaled to [0, 1]")
    mask = File(exists=True, mandatory=True, desc="brain mask in MNI (same grid)")
    weights = File(exists=True, mandatory=True, desc="model weights (.safetensors + card)")
    device = traits.Enum("cpu", "cuda", usedefault=True)
    nthreads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    fwhm = traits.Float(SYNTHESIS_FWHM_MM, usedefault=True, desc="Gaussian smoothing FWHM (mm)")


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="pseudo-normal PET (SUVR) in MNI space")
    metadata = traits.Dict(desc="model name, card, weights sha256, settings")


class SynthesizePET(SimpleInterface):
    """T1w (MNI, [0, 1]) -> pseudo-normal FDG PET (MNI, SUVR) with a trained model."""

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        from ..synthesis.inference import synthesize_pet

        img, meta = synthesize_pet(
            nib.load(self.inputs.t1w_norm),
            nib.load(self.inputs.mask),
            self.inputs.weights,
            device=self.inputs.device,
            nthreads=self.inputs.nthreads,
            fwhm_mm=self.inputs.fwhm,
        )
        self._results["out_file"] = os.path.join(runtime.cwd, "pseudonormal_pet.nii.gz")
        img.to_filename(self._results["out_file"])
        self._results["metadata"] = meta
        return runtime
