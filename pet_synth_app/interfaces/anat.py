"""Nipype interfaces around the anatomical preprocessing functions (preproc.anat)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


def _out(runtime, name: str) -> str:
    return os.path.join(runtime.cwd, name)


class _TemplateInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Enum(2, 1, usedefault=True, desc="voxel size in mm")
    kinds = traits.List(
        traits.Enum("t1w", "mask", "gm", "wm", "csf"),
        desc="outputs to write (default: all); a graph that reads only some sets it",
    )


class _TemplateOutputSpec(TraitedSpec):
    t1w = File(exists=True, desc="brain-only template T1w")
    mask = File(exists=True, desc="template brain mask")
    gm = File(exists=True, desc="template GM probability")
    wm = File(exists=True, desc="template WM probability")
    csf = File(exists=True, desc="template CSF probability")


class TemplateFiles(SimpleInterface):
    """Write the MNI152NLin2009aSym template images (bundled with nilearn)."""

    input_spec = _TemplateInputSpec
    output_spec = _TemplateOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.templates import write_template

        wanted = self.inputs.kinds if isdefined(self.inputs.kinds) else None
        for kind, key in (
            ("T1w", "t1w"),
            ("mask", "mask"),
            ("GM", "gm"),
            ("WM", "wm"),
            ("CSF", "csf"),
        ):
            if wanted is None or key in wanted:
                self._results[key] = write_template(kind, self.inputs.resolution, runtime.cwd)
        return runtime


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w image")
    mask = File(exists=True, desc="optional mask")
    shrink_factor = traits.Int(4, usedefault=True)


class _SingleOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class N4BiasCorrection(SimpleInterface):
    """N4 bias-field correction (antspyx)."""

    input_spec = _N4InputSpec
    output_spec = _SingleOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import n4_bias_correct

        mask = nib.load(self.inputs.mask) if self.inputs.mask else None
        img = n4_bias_correct(
            nib.load(self.inputs.in_file), mask=mask, shrink_factor=self.inputs.shrink_factor
        )
        self._results["out_file"] = _out(runtime, "t1w_n4.nii.gz")
        img.to_filename(self._results["out_file"])
        return runtime


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w head")
    method = traits.Enum("deepbet", "ants", usedefault=True)
    device = traits.Str("cpu", usedefault=True)


class _BrainExtractionOutputSpec(TraitedSpec):
    out_mask = File(exists=True)
    method = traits.Str(desc="method actually used (deepbet or ants fallback)")


class BrainExtraction(SimpleInterface):
    """Brain extraction: deepbet, with an antspyx template-based fallback."""

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import brain_extract

        _, mask, method = brain_extract(
            nib.load(self.inputs.in_file), method=self.inputs.method, device=self.inputs.device
        )
        self._results["out_mask"] = _out(runtime, "t1w_brain_mask.nii.gz")
        mask.to_filename(self._results["out_mask"])
        self._results["method"] = method
        return runtime


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="skull-stripped T1w")
    resolution = traits.Enum(2, 1, usedefault=True, desc="registration resolution (mm)")
    preset = traits.Enum("default", "sloppy", "precise", usedefault=True)
    seed = traits.Int(0, usedefault=True)
    num_threads = traits.Int(1, usedefault=True)
    reference = File(exists=True, desc="output grid of log_jacobian (default: template)")


class _RegisterOutputSpec(TraitedSpec):
    composite = File(exists=True, desc="T1w -> MNI composite transform (.h5)")
    inverse_composite = File(exists=True, desc="MNI -> T1w composite transform (.h5)")
    warped = File(exists=True, desc="T1w brain resampled in MNI")
    affine = File(exists=True, desc="affine stage only, T1w -> MNI grid (.mat)")
    inverse_affine = File(exists=True, desc="inverse of the affine stage (.mat)")
    warp = File(exists=True, desc="nonlinear part, affine space -> MNI (.nii.gz field)")
    inverse_warp = File(exists=True, desc="nonlinear part, MNI -> affine space (.nii.gz)")
    warp_h5 = File(exists=True, desc="warp as an ITK .h5 transform")
    inverse_warp_h5 = File(exists=True, desc="inverse_warp as an ITK .h5 transform")
    log_jacobian = File(exists=True, desc="log det Jacobian of warp, MNI (reference grid)")


class RegisterToTemplate(SimpleInterface):
    """Nonlinear registration of the T1w brain to MNI152NLin2009aSym (antspyx)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import register_to_template

        res = register_to_template(
            nib.load(self.inputs.in_file),
            out_dir=runtime.cwd,
            resolution=self.inputs.resolution,
            preset=self.inputs.preset,
            seed=self.inputs.seed,
            n_threads=self.inputs.num_threads,
        )
        self._results["composite"] = res["composite"]
        self._results["inverse_composite"] = res["inverse_composite"]
        self._results["warped"] = _out(runtime, "t1w_brain_std.nii.gz")
        res["warped"].to_filename(self._results["warped"])
        for key in ("affine", "inverse_affine", "warp", "inverse_warp"):
            self._results[key] = res[key]
        self._results["warp_h5"] = res["warp_h5"]
        self._results["inverse_warp_h5"] = res["inverse_warp_h5"]
        logj = res["log_jacobian"]
        if self.inputs.reference:
            from ..preproc.anat import apply_transforms

            ref = nib.load(self.inputs.reference)
            if logj.shape != ref.shape[:3] or not np.allclose(logj.affine, ref.affine, atol=1e-3):
                logj = apply_transforms(logj, ref, [])
        self._results["log_jacobian"] = _out(runtime, "log_jacobian_std.nii.gz")
        logj.to_filename(self._results["log_jacobian"])
        return runtime


class _ApplyTransformsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    reference = File(exists=True, mandatory=True, desc="defines the output grid")
    transforms = InputMultiObject(File(exists=True), mandatory=True, desc="ANTs order")
    interpolation = traits.Enum("linear", "nearestNeighbor", "bSpline", usedefault=True)
    out_name = traits.Str("resampled.nii.gz", usedefault=True)


class ApplyTransforms(SimpleInterface):
    """Resample an image once through a chain of ANTs transforms."""

    input_spec = _ApplyTransformsInputSpec
    output_spec = _SingleOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import apply_transforms

        img = apply_transforms(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.reference),
            list(self.inputs.transforms),
            interpolation=self.inputs.interpolation,
        )
        self._results["out_file"] = _out(runtime, self.inputs.out_name)
        img.to_filename(self._results["out_file"])
        return runtime


class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w")
    mask = File(exists=True, mandatory=True, desc="brain mask")
    priors = InputMultiObject(File(exists=True), mandatory=True, desc="GM, WM, CSF priors")


class _SegmentOutputSpec(TraitedSpec):
    gm = File(exists=True)
    wm = File(exists=True)
    csf = File(exists=True)


class SegmentTissues(SimpleInterface):
    """GM/WM/CSF probability maps in T1w space (prior-based Atropos)."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import segment_tissues

        priors = tuple(nib.load(p) for p in self.inputs.priors)
        maps = segment_tissues(nib.load(self.inputs.in_file), nib.load(self.inputs.mask), priors)
        for key, img in zip(("gm", "wm", "csf"), maps, strict=True):
            self._results[key] = _out(runtime, f"t1w_{key}_probability.nii.gz")
            img.to_filename(self._results[key])
        return runtime


class _ImageMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)


class ApplyMask(SimpleInterface):
    """Zero an image outside a mask (skull-stripped T1w)."""

    input_spec = _ImageMaskInputSpec
    output_spec = _SingleOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import apply_mask

        img = apply_mask(nib.load(self.inputs.in_file), nib.load(self.inputs.mask))
        self._results["out_file"] = _out(runtime, "t1w_brain.nii.gz")
        img.to_filename(self._results["out_file"])
        return runtime


class _NormalizeInputSpec(_ImageMaskInputSpec):
    out_name = traits.Str("t1w_std_norm.nii.gz", usedefault=True)


class NormalizeT1(SimpleInterface):
    """Scale the T1w to [0, 1] inside the brain mask (deep-model input)."""

    input_spec = _NormalizeInputSpec
    output_spec = _SingleOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.anat import normalize_t1_intensity

        img = normalize_t1_intensity(nib.load(self.inputs.in_file), nib.load(self.inputs.mask))
        self._results["out_file"] = _out(runtime, self.inputs.out_name)
        img.to_filename(self._results["out_file"])
        return runtime
