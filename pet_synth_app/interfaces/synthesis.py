"""Nipype interface around pseudo-normal PET inference (synthesis.inference)."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..config import SYNTHESIS_FWHM_MM


class _SynthesizeInputSpec(BaseInterfaceInputSpec):
    mask_std = File(exists=True, mandatory=True, desc="brain mask in MNI (the output grid)")
    t1w_std = File(exists=True, desc="N4 T1w in MNI (mni, mni-jacobian)")
    gm_std = File(exists=True, desc="GM probability in MNI (mni-jacobian)")
    logjac_std = File(exists=True, desc="log det Jacobian of the warp in MNI (mni-jacobian)")
    t1w = File(exists=True, desc="N4 T1w in T1w space (affine, mni-pv)")
    t1w_mask = File(exists=True, desc="brain mask in T1w space (affine, mni-pv)")
    t1w2affine_xfm = File(exists=True, desc="affine stage T1w -> MNI grid, .mat (affine, mni-pv)")
    affine2std_warp = File(exists=True, desc="nonlinear part affine space -> MNI (affine)")
    t1w2std_xfm = File(exists=True, desc="composite T1w -> MNI transform, .h5 (mni-pv)")
    gm = File(exists=True, desc="GM posterior in T1w space (mni-pv)")
    wm = File(exists=True, desc="WM posterior in T1w space (mni-pv)")
    csf = File(exists=True, desc="CSF posterior in T1w space (mni-pv)")
    weights = File(exists=True, mandatory=True, desc="model weights (.safetensors + card)")
    device = traits.Enum("cpu", "cuda", usedefault=True)
    nthreads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    fwhm = traits.Float(SYNTHESIS_FWHM_MM, usedefault=True, desc="Gaussian smoothing FWHM (mm)")
    n_samples = traits.Int(1, usedefault=True, desc="samples drawn (> 1: mean and SD map)")
    seed = traits.Int(0, usedefault=True, desc="noise seed of the first sample")


class _SynthesizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="pseudo-normal PET (SUVR), MNI grid (input space)")
    sd_file = File(desc="per-voxel SD of the samples (SUVR), n_samples > 1 only")
    metadata = traits.Dict(desc="model name, card, weights sha256, settings")


class SynthesizePET(SimpleInterface):
    """Pseudo-normal FDG PET (SUVR) with a trained model, from the participant's files in
    the card's input representation (``synthesis.inputs.build_model_input``). The output
    is on the MNI grid, in MNI space, or in affine space for an "affine" model."""

    input_spec = _SynthesizeInputSpec
    output_spec = _SynthesizeOutputSpec

    def _run_interface(self, runtime):
        from ..synthesis.inference import synthesize_samples
        from ..synthesis.inputs import InputSources

        def opt(name):
            value = getattr(self.inputs, name)
            return value if isdefined(value) else None

        sources = InputSources(
            t1w_std=opt("t1w_std"),
            mask_std=self.inputs.mask_std,
            gm_std=opt("gm_std"),
            log_jacobian_std=opt("logjac_std"),
            t1w=opt("t1w"),
            t1w_mask=opt("t1w_mask"),
            affine=opt("t1w2affine_xfm"),
            warp=opt("affine2std_warp"),
            t1w2std=opt("t1w2std_xfm"),
            gm=opt("gm"),
            wm=opt("wm"),
            csf=opt("csf"),
        )
        img, sd, meta = synthesize_samples(
            sources,
            self.inputs.weights,
            self.inputs.n_samples,
            seed=self.inputs.seed,
            device=self.inputs.device,
            nthreads=self.inputs.nthreads,
            fwhm_mm=self.inputs.fwhm,
        )
        self._results["out_file"] = os.path.join(runtime.cwd, "pseudonormal_pet.nii.gz")
        img.to_filename(self._results["out_file"])
        if sd is not None:
            self._results["sd_file"] = os.path.join(runtime.cwd, "pseudonormal_sd.nii.gz")
            sd.to_filename(self._results["sd_file"])
        self._results["metadata"] = meta
        return runtime
