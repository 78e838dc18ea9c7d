"""Nipype interfaces around the Z-map and cluster functions (analysis.zscore/clusters)."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..config import MIN_CLUSTER_MM3, RANK_BY, RANK_METHODS, Z_FWHM_MM, Z_THRESHOLD


def _data(path: str) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj, dtype=np.float64)


def analysis_mask(mask: str, coverage: str | None = None) -> np.ndarray:
    """The brain mask file ``mask`` inside the PET field of view file ``coverage`` (same
    grid; None or undefined: the whole mask), bool: where the Z maps, the OC-SVM score
    and the clusters are computed (``preproc.pet.covered_brain``)."""
    from ..preproc.pet import covered_brain

    cov = _data(coverage) if coverage is not None and isdefined(coverage) else None
    return covered_brain(_data(mask), cov)


def _coverage_inputs():
    """The optional field-of-view inputs of the statistic interfaces."""
    return (
        File(exists=True, desc="PET field of view (MNI, 0/1): statistics only inside it"),
        traits.Dict(desc="its sidecar entries (BrainCoverage...), copied to the output's"),
    )


def _save(data: np.ndarray, ref: nib.Nifti1Image, path: str, dtype=np.float32) -> str:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.to_filename(path)
    return path


class _ZInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="real PET, SUVR, MNI")
    pseudo = File(exists=True, mandatory=True, desc="pseudo-normal PET, SUVR, MNI")
    gm = File(exists=True, mandatory=True, desc="GM probability, MNI")
    mask = File(exists=True, mandatory=True, desc="brain mask, MNI")
    normative = Directory(exists=True, desc="normative model folder (control-referenced Z)")
    normative_sha256 = traits.Str(
        "", usedefault=True, desc="sha256 of normative.json: a refit reruns the node"
    )
    weights_sha256 = traits.Str("", usedefault=True, desc="synthesis weights of this run")
    histogram_matching = traits.Bool(False, usedefault=True)
    fwhm_mm = traits.Float(
        Z_FWHM_MM, usedefault=True, desc="analysis smoothing of both PETs (mm FWHM)"
    )
    model_sd = File(
        exists=True, desc="SD map of the pseudo-normal PET samples, SUVR, MNI (optional)"
    )
    coverage, coverage_metadata = _coverage_inputs()


class _ZOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="Z map (MNI)")
    metadata = traits.Dict()


class HypometabolismZ(SimpleInterface):
    """Z map of real − pseudo-normal PET: self-referenced over GM, or against the
    controls' normative residual model when one is given."""

    input_spec = _ZInputSpec
    output_spec = _ZOutputSpec

    def _run_interface(self, runtime):
        from ..analysis import normative as norm
        from ..analysis.zscore import (
            control_referenced_z,
            residual,
            self_referenced_z,
            smooth_in_mask,
        )

        ref = nib.load(self.inputs.pet)
        mask = analysis_mask(self.inputs.mask, self.inputs.coverage)
        fwhm, zooms = self.inputs.fwhm_mm, ref.header.get_zooms()[:3]
        d = residual(
            smooth_in_mask(_data(self.inputs.pet), mask, fwhm, zooms),
            smooth_in_mask(_data(self.inputs.pseudo), mask, fwhm, zooms),
            mask,
            self.inputs.histogram_matching,
        )
        meta = {
            "HistogramMatching": self.inputs.histogram_matching,
            "SmoothingFWHM": fwhm,
            **_cov_meta(self.inputs),
        }
        model_sd = None
        if isdefined(self.inputs.model_sd):
            model_sd = np.where(mask, _data(self.inputs.model_sd), 0.0)
            meta["ModelVarianceInZ"] = True
        if isdefined(self.inputs.normative):
            model = norm.load(self.inputs.normative)
            norm.check_compatible(
                model.meta,
                model.affine,
                model.mask.shape,
                ref.affine,
                ref.shape[:3],
                self.inputs.weights_sha256,
            )
            norm.check_smoothing(model.meta, fwhm, self.inputs.normative)
            z = control_referenced_z(
                d, model.residual_mean, model.residual_sd, mask & model.mask, model_sd
            )
            meta.update(
                ZReference="controls",
                NormativeModel=str(self.inputs.normative),
                NormativeControls=model.meta.get("n_controls"),
                # group.check_controls_in_training: in-sample residuals, too narrow an SD
                NormativeControlsInModelTraining=model.meta.get("controls_in_model_training"),
            )
        else:
            gm = np.where(mask, _data(self.inputs.gm), 0.0)  # d is 0 outside the mask
            z = self_referenced_z(d, gm, mask, model_sd)
            meta["ZReference"] = "self (GM mean and SD of the residual)"
        self._results["out_file"] = _save(z, ref, os.path.join(runtime.cwd, "z.nii.gz"))
        self._results["metadata"] = meta
        return runtime


class _ControlPetZInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="real PET, SUVR, MNI")
    mask = File(exists=True, mandatory=True, desc="brain mask, MNI")
    normative = Directory(exists=True, mandatory=True, desc="normative model folder")
    normative_sha256 = traits.Str(
        "", usedefault=True, desc="sha256 of normative.json: a refit reruns the node"
    )
    fwhm_mm = traits.Float(Z_FWHM_MM, usedefault=True, desc="analysis smoothing (mm FWHM)")
    coverage, coverage_metadata = _coverage_inputs()


def _cov_meta(inputs) -> dict:
    return dict(inputs.coverage_metadata) if isdefined(inputs.coverage_metadata) else {}


class ControlPetZ(SimpleInterface):
    """The classic comparison without synthesis: Z of the real PET against the controls'
    voxelwise PET mean and SD of the normative model (``analysis.zscore.control_pet_z``)."""

    input_spec = _ControlPetZInputSpec
    output_spec = _ZOutputSpec

    def _run_interface(self, runtime):
        from ..analysis import normative as norm
        from ..analysis.zscore import control_pet_z, smooth_in_mask

        ref = nib.load(self.inputs.pet)
        mask = analysis_mask(self.inputs.mask, self.inputs.coverage)
        fwhm = self.inputs.fwhm_mm
        model = norm.load(self.inputs.normative)
        # the control-PET maps do not depend on the synthesis model: no weights check
        norm.check_compatible(
            model.meta, model.affine, model.mask.shape, ref.affine, ref.shape[:3], None
        )
        norm.check_smoothing(model.meta, fwhm, self.inputs.normative)
        pet = smooth_in_mask(_data(self.inputs.pet), mask, fwhm, ref.header.get_zooms()[:3])
        z = control_pet_z(pet, model.pet_mean, model.pet_sd, mask & model.mask)
        self._results["out_file"] = _save(z, ref, os.path.join(runtime.cwd, "z.nii.gz"))
        self._results["metadata"] = {
            "ZReference": "controls' PET (voxelwise mean and SD of the control SUVR PETs; "
            "no synthesis)",
            "SmoothingFWHM": fwhm,
            "NormativeModel": str(self.inputs.normative),
            "NormativeControls": model.meta.get("n_controls"),
            **_cov_meta(self.inputs),
        }
        return runtime


class _ClustersInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="statistic map (MNI)")
    gm = File(exists=True, mandatory=True, desc="GM probability (MNI)")
    mask = File(exists=True, mandatory=True, desc="brain mask (MNI)")
    threshold = traits.Float(Z_THRESHOLD, usedefault=True)
    min_volume_mm3 = traits.Float(MIN_CLUSTER_MM3, usedefault=True)
    rank_by = traits.Enum(RANK_BY, *RANK_METHODS, usedefault=True)
    tail = traits.Enum("lower", "upper", usedefault=True)
    coverage = File(exists=True, desc="PET field of view (MNI): clusters only inside it")


class _ClustersOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="cluster labels, 1 = top rank (MNI)")
    clusters = File(exists=True, desc="cluster rows (JSON)")
    n_clusters = traits.Int()
    metadata = traits.Dict()


class FindClusters(SimpleInterface):
    """Suprathreshold GM clusters of a statistic map, ranked, with atlas labels."""

    input_spec = _ClustersInputSpec
    output_spec = _ClustersOutputSpec

    def _run_interface(self, runtime):
        from ..analysis.clusters import cluster_table, find_clusters
        from ..config import GM_THRESHOLD

        img = nib.load(self.inputs.in_file)
        inside = analysis_mask(self.inputs.mask, self.inputs.coverage)
        gm = (_data(self.inputs.gm) > GM_THRESHOLD) & inside
        labels, clusters = find_clusters(
            np.asanyarray(img.dataobj, dtype=np.float64),
            gm,
            img.affine,
            threshold=self.inputs.threshold,
            min_volume_mm3=self.inputs.min_volume_mm3,
            rank_by=self.inputs.rank_by,
            tail=self.inputs.tail,
        )
        self._results["dseg"] = _save(
            labels, img, os.path.join(runtime.cwd, "dseg.nii.gz"), np.int16
        )
        path = os.path.join(runtime.cwd, "clusters.json")
        with open(path, "w") as fh:
            json.dump(cluster_table(clusters), fh)
        self._results["clusters"] = path
        self._results["n_clusters"] = len(clusters)
        self._results["metadata"] = {
            "Threshold": self.inputs.threshold,
            "Tail": self.inputs.tail,
            "MinimumClusterVolume": self.inputs.min_volume_mm3,
            "MinimumClusterVolumeUnits": "mm^3",
            "RankedBy": self.inputs.rank_by,
            "Connectivity": 26,
            "ClusterMask": f"GM probability > {GM_THRESHOLD}"
            + (" inside the PET field of view" if isdefined(self.inputs.coverage) else ""),
            "NumberOfClusters": len(clusters),
        }
        return runtime


class _TableInputSpec(BaseInterfaceInputSpec):
    clusters = File(exists=True, mandatory=True, desc="cluster rows (JSON, MNI)")
    dseg_t1w = File(exists=True, mandatory=True, desc="cluster labels on the T1w grid")
    stat_t1w = File(exists=True, mandatory=True, desc="statistic on the T1w grid")
    tail = traits.Enum("lower", "upper", usedefault=True)
    null_dir = Directory(exists=True, desc="normative folder with cluster_null.json")
    null_sha256 = traits.Str("", usedefault=True, desc="normative.json sha256: reruns on refit")
    desc = traits.Str("", usedefault=True, desc="which map's null (layout.STATS key)")
    threshold = traits.Float(Z_THRESHOLD, usedefault=True)
    min_volume_mm3 = traits.Float(MIN_CLUSTER_MM3, usedefault=True)


class _TableOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="clusters.tsv")
    metadata = traits.Dict(desc="column descriptions (TSV sidecar)")


class ClusterTable(SimpleInterface):
    """clusters.tsv: the MNI cluster rows plus each cluster's peak in native T1w mm
    (the extreme statistic inside the cluster's T1w-space label)."""

    input_spec = _TableInputSpec
    output_spec = _TableOutputSpec

    def _run_interface(self, runtime):
        from ..analysis import calibration as cal
        from ..analysis.clusters import (
            CALIBRATION_COLUMN_DESCRIPTIONS,
            CLUSTER_COLUMN_DESCRIPTIONS,
            CLUSTER_COLUMNS,
            T1W_COLUMN_DESCRIPTIONS,
            write_tsv,
        )

        with open(self.inputs.clusters) as fh:
            rows = json.load(fh)
        dseg_img = nib.load(self.inputs.dseg_t1w)
        labels = np.rint(np.asanyarray(dseg_img.dataobj)).astype(int)
        stat = _data(self.inputs.stat_t1w)
        sign = -1.0 if self.inputs.tail == "lower" else 1.0
        for row in rows:
            inside = labels == int(row["rank"])
            xyz = [None, None, None]
            if inside.any():
                idx = np.argwhere(inside)
                best = idx[np.argmax(sign * stat[inside])]
                xyz = [round(float(v), 2) for v in nib.affines.apply_affine(dseg_img.affine, best)]
            row.update(zip(T1W_COLUMN_DESCRIPTIONS, xyz, strict=True))
        rule = {"threshold": self.inputs.threshold, "min_volume_mm3": self.inputs.min_volume_mm3}
        null_dir = self.inputs.null_dir if isdefined(self.inputs.null_dir) else None
        scans = cal.load_null(null_dir, self.inputs.desc, rule) if self.inputs.desc else None
        for row in rows:
            if scans is None:
                row.update(dict.fromkeys(CALIBRATION_COLUMN_DESCRIPTIONS, "n/a"))
            else:
                row.update(cal.calibrate(float(row["mass"]), scans))
        path = os.path.join(runtime.cwd, "clusters.tsv")
        columns = [*CLUSTER_COLUMNS, *T1W_COLUMN_DESCRIPTIONS, *CALIBRATION_COLUMN_DESCRIPTIONS]
        write_tsv(rows, path, columns)  # header even if empty
        self._results["out_file"] = path
        self._results["metadata"] = {
            "Calibration": cal.describe(scans),
            "NumberSignificant": None
            if scans is None
            else sum(bool(r["significant"]) for r in rows),
            **CLUSTER_COLUMN_DESCRIPTIONS,
            **T1W_COLUMN_DESCRIPTIONS,
            **CALIBRATION_COLUMN_DESCRIPTIONS,
        }
        return runtime
