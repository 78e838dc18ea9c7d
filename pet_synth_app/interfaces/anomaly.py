"""Nipype interface around the OC-SVM anomaly scoring (analysis.anomaly)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _ScoreInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="real PET, SUVR, MNI")
    mask = File(exists=True, mandatory=True, desc="brain mask, MNI")
    model = Directory(exists=True, mandatory=True, desc="fitted anomaly detector folder")
    model_sha256 = traits.Str(
        "", usedefault=True, desc="sha256 of the OC-SVM tensors: a refit reruns the node"
    )
    participant_id = traits.Str("", usedefault=True, desc="sub-<label>, to flag in-sample use")
    nthreads = traits.Int(1, usedefault=True)
    coverage = File(exists=True, desc="PET field of view (MNI): scored only inside it")
    coverage_metadata = traits.Dict(desc="its sidecar entries, copied to the output's")


class _ScoreOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="self-standardized OC-SVM score (MNI)")
    metadata = traits.Dict()


class OCSVMScore(SimpleInterface):
    """Voxelwise OC-SVM anomaly score of one PET against the controls' detector."""

    input_spec = _ScoreInputSpec
    output_spec = _ScoreOutputSpec

    def _run_interface(self, runtime):
        from nipype.interfaces.base import isdefined

        from ..analysis import anomaly
        from .hypometabolism import analysis_mask

        img = nib.load(self.inputs.pet)
        pet = np.asanyarray(img.dataobj, dtype=np.float32)
        mask = analysis_mask(self.inputs.mask, self.inputs.coverage)
        score, _, meta = anomaly.score(self.inputs.model, pet, mask, threads=self.inputs.nthreads)
        out = nib.Nifti1Image(score, img.affine)
        out.header.set_xyzt_units("mm", "sec")
        self._results["out_file"] = os.path.join(runtime.cwd, "ocsvm_score.nii.gz")
        out.to_filename(self._results["out_file"])
        training = meta.get("participants_real", []) + meta.get("participants_synthetic", [])
        self._results["metadata"] = {
            "Units": "SD of this brain's OC-SVM decision values (negative = anomalous)",
            "Description": (
                "One-class SVM decision value of siamese-autoencoder features of 15x15 axial "
                "PET patches, per gray-matter voxel, robustly standardized over the scored "
                "voxels: (d - median) / (1.4826 MAD)"
            ),
            "DecisionValueMedian": meta["decision_median"],
            "FractionOutsideSupport": meta["fraction_outside_support"],
            "NormativeModel": str(self.inputs.model),
            "OCSVMSha256": meta.get("ocsvm_sha256", self.inputs.model_sha256),
            "AutoencoderSha256": meta.get("autoencoder_sha256"),
            "OCSVMNu": meta.get("nu"),
            "OCSVMGamma": meta.get("gamma"),
            "TrainingControlsReal": len(meta.get("participants_real", [])),
            "TrainingControlsSynthetic": len(meta.get("participants_synthetic", [])),
            "InTrainingSet": bool(self.inputs.participant_id)
            and self.inputs.participant_id in training,
            **(
                dict(self.inputs.coverage_metadata)
                if isdefined(self.inputs.coverage_metadata)
                else {}
            ),
        }
        return runtime


__all__ = ["OCSVMScore"]
