"""PET preprocessing: frame average, coregistration to T1w, MNI resampling, SUVR."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.anat import ApplyTransforms
from ..interfaces.pet import (
    SUVR,
    BrainCoverage,
    CoregisterPET,
    FrameAverage,
    ReferenceMask,
    ResampleCoverage,
)

PET_OUTPUTS = [
    "pet_ref",  # frame average, scanner space, input units
    "motion_file",
    "pet2t1w_xfm",  # ANTs rigid transform, PET -> T1w
    "pet_t1w",  # SUVR on the T1w grid
    "pet_std",  # SUVR in MNI
    "suvr_metadata",
    "coverage_t1w",  # PET field of view on the T1w grid (0/1)
    "coverage_std",  # PET field of view in MNI (0/1)
    "coverage_metadata",  # BrainCoverage (fraction of the MNI brain mask) and its warning
]


def init_pet_preproc_wf(
    *,
    frame_durations: list[float] | None,
    reference_region: str,
    omp_nthreads: int,
    random_seed: int,
    name: str = "pet_preproc_wf",
) -> Workflow:
    """One PET series -> SUVR images in T1w and MNI152NLin2009aSym space.

    Inputs: ``pet_file``, ``t1w_brain``, ``t1w2std_xfm``, ``std_ref``, ``gm_std``,
    ``mask_std``. ``frame_durations``: seconds per frame (``PETInput.frame_durations``;
    None: unweighted). The PET's field of view (voxels with data in every frame) follows
    the PET through motion correction, coregistration and resampling
    (``coverage_t1w``, ``coverage_std``); the SUVR reference excludes what it does not
    cover and ``coverage_metadata`` says how much of the brain mask it covers.
    """
    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
The PET series was {
        "motion-corrected (rigid, frame to mean) and "
        if frame_durations and len(frame_durations) > 1
        else ""
    }averaged over frames weighted by frame duration. The mean
PET was coregistered to the skull-stripped T1w with a rigid transform maximizing
mutual information (ANTsPy), and resampled once to the template space by composing
the PET-to-T1w and T1w-to-template transforms. Uptake was normalized to SUVR by the
mean in the reference region (`{reference_region}`). The PET field of view (voxels with
data in every frame) was carried through the same transforms (linear interpolation,
keeping only voxels interpolated entirely from covered ones) and voxels outside it were
excluded from the reference region and from all subsequent statistics.
"""
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["pet_file", "t1w_brain", "t1w2std_xfm", "std_ref", "gm_std", "mask_std"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=PET_OUTPUTS), name="outputnode")
    nthreads = omp_nthreads
    avg = pe.Node(
        FrameAverage(
            frame_durations=[float(d) for d in frame_durations] if frame_durations else None,
            seed=random_seed,
            num_threads=nthreads,
        ),
        name="frame_average",
        n_procs=nthreads,
        mem_gb=1.0,
    )
    coreg = pe.Node(
        CoregisterPET(seed=random_seed, num_threads=nthreads),
        name="coregister",
        n_procs=nthreads,
        mem_gb=1,
    )
    chain = pe.Node(niu.Merge(2), name="xfm_chain")  # ANTs order: last is applied first
    to_std = pe.Node(ApplyTransforms(out_name="pet_std.nii.gz"), name="pet_to_std")
    refmask = pe.Node(ReferenceMask(region=reference_region), name="reference_mask")
    suvr = pe.Node(SUVR(region=reference_region), name="suvr")
    cov_std = pe.Node(ResampleCoverage(out_name="coverage_std.nii.gz"), name="coverage_to_std")
    cov_t1w = pe.Node(ResampleCoverage(out_name="coverage_t1w.nii.gz"), name="coverage_to_t1w")
    cov_t1w_xfm = pe.Node(niu.Merge(1), name="coverage_t1w_xfm")
    brain_cov = pe.Node(BrainCoverage(), name="brain_coverage")

    workflow.connect(
        [
            (inputnode, avg, [("pet_file", "in_file")]),
            (avg, coreg, [("out_file", "in_file")]),
            (inputnode, coreg, [("t1w_brain", "t1w_brain")]),
            (inputnode, chain, [("t1w2std_xfm", "in1")]),
            (coreg, chain, [("out_xfm", "in2")]),
            (avg, to_std, [("out_file", "in_file")]),
            (inputnode, to_std, [("std_ref", "reference")]),
            (chain, to_std, [("out", "transforms")]),
            (inputnode, refmask, [("gm_std", "gm_probability")]),
            (to_std, suvr, [("out_file", "in_file")]),
            (refmask, suvr, [("out_file", "mask")]),
            (coreg, suvr, [("out_file", "other_file")]),
            (avg, cov_std, [("coverage_file", "in_file")]),
            (inputnode, cov_std, [("std_ref", "reference")]),
            (chain, cov_std, [("out", "transforms")]),
            (avg, cov_t1w, [("coverage_file", "in_file")]),
            (inputnode, cov_t1w, [("t1w_brain", "reference")]),
            (coreg, cov_t1w_xfm, [("out_xfm", "in1")]),
            (cov_t1w_xfm, cov_t1w, [("out", "transforms")]),
            (cov_std, suvr, [("out_file", "coverage")]),
            (cov_std, brain_cov, [("out_file", "coverage")]),
            (inputnode, brain_cov, [("mask_std", "brain_mask")]),
            (cov_std, outputnode, [("out_file", "coverage_std")]),
            (cov_t1w, outputnode, [("out_file", "coverage_t1w")]),
            (brain_cov, outputnode, [("metadata", "coverage_metadata")]),
            (avg, outputnode, [("out_file", "pet_ref"), ("motion_file", "motion_file")]),
            (coreg, outputnode, [("out_xfm", "pet2t1w_xfm")]),
            (
                suvr,
                outputnode,
                [("out_file", "pet_std"), ("other_out", "pet_t1w"), ("metadata", "suvr_metadata")],
            ),
        ]
    )
    return workflow
