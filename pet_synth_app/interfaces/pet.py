"""Nipype interfaces around the PET preprocessing functions (preproc.pet)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _FrameAverageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D PET")
    frame_durations = traits.Either(
        None,
        traits.List(traits.Float),
        usedefault=True,
        desc="frame durations in s (BIDS FrameDuration)",
    )
    motion_correct = traits.Bool(True, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (1: bit-reproducible)")


class _FrameAverageOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="duration-weighted mean PET (scanner space)")
    coverage_file = File(exists=True, desc="field of view: data in every frame (scanner space)")
    motion_file = File(exists=True, desc="per-frame motion estimates (TSV)")
    n_frames = traits.Int()


class FrameAverage(SimpleInterface):
    """Motion-corrected, duration-weighted frame average of a (4D) PET."""

    input_spec = _FrameAverageInputSpec
    output_spec = _FrameAverageOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.pet import frame_average

        img = nib.load(self.inputs.in_file)
        mean, motion, coverage = frame_average(
            img,
            frame_durations=self.inputs.frame_durations,
            motion_correct=self.inputs.motion_correct,
            seed=self.inputs.seed,
            n_threads=self.inputs.num_threads,
            return_coverage=True,
        )
        self._results["out_file"] = os.path.join(runtime.cwd, "pet_mean.nii.gz")
        mean.to_filename(self._results["out_file"])
        self._results["coverage_file"] = os.path.join(runtime.cwd, "pet_coverage.nii.gz")
        coverage.to_filename(self._results["coverage_file"])
        self._results["motion_file"] = os.path.join(runtime.cwd, "pet_motion.tsv")
        motion = np.atleast_2d(np.asarray(motion, dtype=float))
        np.savetxt(self._results["motion_file"], motion, delimiter="\t", fmt="%.4f")
        self._results["n_frames"] = img.shape[3] if img.ndim == 4 else 1
        return runtime


class _CoregInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="mean PET")
    t1w_brain = File(exists=True, mandatory=True, desc="skull-stripped T1w")
    seed = traits.Int(0, usedefault=True)
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (1: bit-reproducible)")


class _CoregOutputSpec(TraitedSpec):
    out_xfm = File(exists=True, desc="PET -> T1w rigid transform (ANTs .mat)")
    out_file = File(exists=True, desc="PET resampled on the T1w grid")


class CoregisterPET(SimpleInterface):
    """Rigid PET -> T1w coregistration (mutual information)."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.pet import coregister_pet_to_t1

        xfm, pet_t1w = coregister_pet_to_t1(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.t1w_brain),
            out_dir=runtime.cwd,
            seed=self.inputs.seed,
            n_threads=self.inputs.num_threads,
        )
        self._results["out_xfm"] = xfm
        self._results["out_file"] = os.path.join(runtime.cwd, "pet_space-T1w.nii.gz")
        pet_t1w.to_filename(self._results["out_file"])
        return runtime


class _ResampleCoverageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="coverage mask (PET scanner space)")
    reference = File(exists=True, mandatory=True, desc="target grid")
    transforms = traits.List(File(exists=True), mandatory=True, desc="ANTs order")
    out_name = traits.Str("coverage.nii.gz", usedefault=True)


class _FileOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ResampleCoverage(SimpleInterface):
    """The PET field of view moved with the PET's own transforms (linear, then covered
    only where every interpolated voxel had data: ``preproc.pet.resample_coverage``)."""

    input_spec = _ResampleCoverageInputSpec
    output_spec = _FileOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.pet import resample_coverage

        img = resample_coverage(
            nib.load(self.inputs.in_file),
            nib.load(self.inputs.reference),
            list(self.inputs.transforms),
        )
        self._results["out_file"] = os.path.join(runtime.cwd, self.inputs.out_name)
        img.to_filename(self._results["out_file"])
        return runtime


class _BrainCoverageInputSpec(BaseInterfaceInputSpec):
    coverage = File(exists=True, mandatory=True, desc="PET field of view (MNI)")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask, same grid")


class _BrainCoverageOutputSpec(TraitedSpec):
    fraction = traits.Float(desc="fraction of the brain mask inside the field of view")
    metadata = traits.Dict(desc="sidecar entries (BrainCoverage...)")


class BrainCoverage(SimpleInterface):
    """How much of the brain the PET field of view covers; logs the warning below
    ``config.MIN_BRAIN_COVERAGE`` (``preproc.pet.coverage_metadata``)."""

    input_spec = _BrainCoverageInputSpec
    output_spec = _BrainCoverageOutputSpec

    def _run_interface(self, runtime):
        import logging

        from ..preproc.pet import coverage_fraction, coverage_metadata

        fraction = coverage_fraction(
            np.asanyarray(nib.load(self.inputs.coverage).dataobj),
            np.asanyarray(nib.load(self.inputs.brain_mask).dataobj),
        )
        meta = coverage_metadata(fraction)
        if "BrainCoverageWarning" in meta:
            logging.getLogger("petsynth").warning("%s", meta["BrainCoverageWarning"])
        self._results["fraction"] = fraction
        self._results["metadata"] = meta
        return runtime


class _RefMaskInputSpec(BaseInterfaceInputSpec):
    region = traits.Enum("gm-mean", "cerebellum", "pons", usedefault=True)
    gm_probability = File(exists=True, mandatory=True, desc="GM probability in MNI")


class _RefMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ReferenceMask(SimpleInterface):
    """SUVR reference-region mask in MNI space."""

    input_spec = _RefMaskInputSpec
    output_spec = _RefMaskOutputSpec

    def _run_interface(self, runtime):
        from ..analysis.reference import reference_mask

        mask = reference_mask(self.inputs.region, nib.load(self.inputs.gm_probability))
        self._results["out_file"] = os.path.join(runtime.cwd, "refmask.nii.gz")
        mask.to_filename(self._results["out_file"])
        return runtime


class _SUVRInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="PET on the mask's grid (MNI)")
    mask = File(exists=True, mandatory=True, desc="reference-region mask")
    coverage = File(exists=True, desc="PET field of view on in_file's grid (optional)")
    other_file = File(exists=True, desc="the same PET in another space (e.g. T1w)")
    region = traits.Str("gm-mean", usedefault=True)


class _SUVROutputSpec(TraitedSpec):
    out_file = File(exists=True)
    other_out = File(desc="other_file normalized by the same reference value")
    reference_value = traits.Float(desc="mean uptake in the reference region (input units)")
    metadata = traits.Dict(desc="sidecar entries")


class SUVR(SimpleInterface):
    """Divide PET images by the mean uptake in a reference region (SUVR)."""

    input_spec = _SUVRInputSpec
    output_spec = _SUVROutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        from ..preproc.pet import suvr_normalize

        coverage = nib.load(self.inputs.coverage) if isdefined(self.inputs.coverage) else None
        img, ref = suvr_normalize(
            nib.load(self.inputs.in_file), nib.load(self.inputs.mask), coverage
        )
        self._results["out_file"] = os.path.join(runtime.cwd, "pet_suvr.nii.gz")
        img.to_filename(self._results["out_file"])
        if self.inputs.other_file:
            other = nib.load(self.inputs.other_file)
            data = np.asarray(other.dataobj, dtype=np.float32) / np.float32(ref)
            hdr = other.header.copy()
            hdr.set_data_dtype(np.float32)
            out = os.path.join(runtime.cwd, "pet_suvr_other.nii.gz")
            nib.Nifti1Image(data, other.affine, hdr).to_filename(out)
            self._results["other_out"] = out
        self._results["reference_value"] = float(ref)
        self._results["metadata"] = {
            "Units": "unitless",
            "IntensityNormalization": "SUVR",
            "ReferenceRegion": self.inputs.region,
            "ReferenceValue": float(ref),
        }
        return runtime


class _AntsAffineInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="ITK text or ANTs .mat affine")


class _AntsAffineOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same transform as an ANTs .mat")


class AntsAffine(SimpleInterface):
    """A reused linear transform (e.g. PETPrep's ITK text) as an ANTs ``.mat``."""

    input_spec = _AntsAffineInputSpec
    output_spec = _AntsAffineOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.pet import to_ants_affine

        out = os.path.join(runtime.cwd, "pet2t1w_xfm.mat")
        self._results["out_file"] = to_ants_affine(self.inputs.in_file, out)
        return runtime


class _CoverageInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="PET series (3D or 4D, scanner space)")


class PETCoverage(SimpleInterface):
    """The PET field of view on its own grid, without motion correction
    (``preproc.pet.pet_coverage``): for a reused PETPrep reference, which lies on the raw
    PET's grid."""

    input_spec = _CoverageInputSpec
    output_spec = _FileOutputSpec

    def _run_interface(self, runtime):
        from ..preproc.pet import pet_coverage

        img = nib.load(self.inputs.in_file)
        out = os.path.join(runtime.cwd, "pet_coverage.nii.gz")
        nib.Nifti1Image(pet_coverage(img).astype(np.uint8), img.affine).to_filename(out)
        self._results["out_file"] = out
        return runtime
