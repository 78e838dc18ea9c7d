"""Anatomical preprocessing: N4, brain extraction, MNI registration, tissue maps."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import TEMPLATE_SPACE
from ..interfaces.anat import (
    ApplyMask,
    ApplyTransforms,
    BrainExtraction,
    N4BiasCorrection,
    NormalizeT1,
    RegisterToTemplate,
    SegmentTissues,
    TemplateFiles,
)

ANAT_OUTPUTS = [
    "t1w_preproc",  # N4-corrected T1w head, native space
    "t1w_brain",
    "t1w_mask",
    "gm",  # GM/WM/CSF probabilities, native space
    "wm",
    "csf",
    "skullstrip_method",
    "t1w2std_xfm",  # composite .h5, T1w -> MNI
    "std2t1w_xfm",  # composite .h5, MNI -> T1w
    "std_ref",  # MNI template at the output resolution (output grid)
    "t1w_std",  # N4 T1w in MNI
    "mask_std",
    "gm_std",
    "t1w_std_norm",  # model input: normalize_t1_intensity(t1w_std, mask_std), [0, 1]
    # registration stages (issue 14): [affine2std_warp, t1w2affine_xfm] == t1w2std_xfm
    "t1w2affine_xfm",  # .mat, affine stage only, T1w -> MNI grid ("affine space")
    "affine2t1w_xfm",  # .mat, its inverse
    "affine2std_warp",  # .nii.gz field, nonlinear part: affine space -> MNI
    "std2affine_warp",  # .nii.gz field, MNI -> affine space
    "affine2std_xfm",  # the same two as ITK .h5 (derivatives)
    "std2affine_xfm",
    "logjac_std",  # log det Jacobian of affine2std_warp on the std_ref grid
    "t1w_affine",  # N4 T1w in affine space (std_ref grid)
    "mask_affine",  # brain mask in affine space
]


def init_anat_preproc_wf(
    *,
    omp_nthreads: int,
    registration_preset: str,
    brain_extraction: str,
    mni_resolution: int,
    random_seed: int,
    device: str,
    name: str = "anat_preproc_wf",
) -> Workflow:
    """T1w -> bias-corrected head, brain mask, tissue maps and MNI152NLin2009aSym warps.

    Inputs: ``t1w`` (path). Outputs: see ``ANAT_OUTPUTS``. ``mni_resolution``: the
    output grid (mm); ``device``: ``cpu`` or ``cuda`` (brain extraction).
    """
    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
The T1-weighted (T1w) image was skull-stripped with deepbet [@deepbet] (with an
ANTsPy template-based fallback) and corrected for intensity non-uniformity with N4
[@n4] (ANTsPy) fitted inside the brain mask. The brain was registered nonlinearly to the ICBM 2009a
symmetric template (`{TEMPLATE_SPACE}` [@fonov2011], as distributed with nilearn
[@nilearn]) with ANTs SyN
[@ants] (preset `{registration_preset}`, random seed {random_seed}).
Gray-matter, white-matter and CSF probability maps were estimated with a
three-class Gaussian mixture (EM) guided by the template tissue maps warped into the
T1w space as priors, with neighbourhood smoothing.
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=ANAT_OUTPUTS), name="outputnode")
    nthreads = omp_nthreads

    tpl_reg = pe.Node(TemplateFiles(resolution=2), name="tpl_reg")
    tpl_out = pe.Node(TemplateFiles(resolution=mni_resolution), name="tpl_out")
    n4 = pe.Node(N4BiasCorrection(), name="n4", n_procs=nthreads, mem_gb=1.5)
    skullstrip = pe.Node(
        BrainExtraction(method=brain_extraction, device=device),
        name="skullstrip",
        n_procs=nthreads,
        mem_gb=2.0,
    )
    brain = pe.Node(ApplyMask(), name="apply_mask")
    reg = pe.Node(
        RegisterToTemplate(
            resolution=2,
            preset=registration_preset,
            seed=random_seed,
            num_threads=nthreads,
        ),
        name="register",
        n_procs=nthreads,
        mem_gb=2.0,
    )
    priors = pe.MapNode(
        ApplyTransforms(interpolation="linear", out_name="prior.nii.gz"),
        iterfield=["in_file"],
        name="priors_to_t1w",
    )
    merge_priors = pe.Node(niu.Merge(3), name="merge_priors")
    seg = pe.Node(SegmentTissues(), name="segment", n_procs=nthreads, mem_gb=1.5)
    t1w_std = pe.Node(ApplyTransforms(out_name="t1w_std.nii.gz"), name="t1w_to_std")
    mask_std = pe.Node(
        ApplyTransforms(interpolation="nearestNeighbor", out_name="mask_std.nii.gz"),
        name="mask_to_std",
    )
    gm_std = pe.Node(ApplyTransforms(out_name="gm_std.nii.gz"), name="gm_to_std")
    norm = pe.Node(NormalizeT1(), name="normalize_t1w")
    t1w_aff = pe.Node(ApplyTransforms(out_name="t1w_affine.nii.gz"), name="t1w_to_affine")
    mask_aff = pe.Node(
        ApplyTransforms(interpolation="nearestNeighbor", out_name="mask_affine.nii.gz"),
        name="mask_to_affine",
    )

    workflow.connect(
        [
            (inputnode, skullstrip, [("t1w", "in_file")]),
            (inputnode, n4, [("t1w", "in_file")]),
            (skullstrip, n4, [("out_mask", "mask")]),
            (n4, brain, [("out_file", "in_file")]),
            (skullstrip, brain, [("out_mask", "mask")]),
            (brain, reg, [("out_file", "in_file")]),
            (tpl_reg, merge_priors, [("gm", "in1"), ("wm", "in2"), ("csf", "in3")]),
            (merge_priors, priors, [("out", "in_file")]),
            (n4, priors, [("out_file", "reference")]),
            (reg, priors, [("inverse_composite", "transforms")]),
            (n4, seg, [("out_file", "in_file")]),
            (skullstrip, seg, [("out_mask", "mask")]),
            (priors, seg, [("out_file", "priors")]),
            (n4, t1w_std, [("out_file", "in_file")]),
            (skullstrip, mask_std, [("out_mask", "in_file")]),
            (seg, gm_std, [("gm", "in_file")]),
            (tpl_out, t1w_std, [("t1w", "reference")]),
            (tpl_out, mask_std, [("t1w", "reference")]),
            (tpl_out, gm_std, [("t1w", "reference")]),
            (reg, t1w_std, [("composite", "transforms")]),
            (reg, mask_std, [("composite", "transforms")]),
            (reg, gm_std, [("composite", "transforms")]),
            (t1w_std, norm, [("out_file", "in_file")]),
            (mask_std, norm, [("out_file", "mask")]),
            (n4, outputnode, [("out_file", "t1w_preproc")]),
            (brain, outputnode, [("out_file", "t1w_brain")]),
            (skullstrip, outputnode, [("out_mask", "t1w_mask"), ("method", "skullstrip_method")]),
            (seg, outputnode, [("gm", "gm"), ("wm", "wm"), ("csf", "csf")]),
            (
                reg,
                outputnode,
                [("composite", "t1w2std_xfm"), ("inverse_composite", "std2t1w_xfm")],
            ),
            (tpl_out, outputnode, [("t1w", "std_ref")]),
            (t1w_std, outputnode, [("out_file", "t1w_std")]),
            (mask_std, outputnode, [("out_file", "mask_std")]),
            (gm_std, outputnode, [("out_file", "gm_std")]),
            (norm, outputnode, [("out_file", "t1w_std_norm")]),
            (tpl_out, reg, [("t1w", "reference")]),
            (n4, t1w_aff, [("out_file", "in_file")]),
            (skullstrip, mask_aff, [("out_mask", "in_file")]),
            (tpl_out, t1w_aff, [("t1w", "reference")]),
            (tpl_out, mask_aff, [("t1w", "reference")]),
            (reg, t1w_aff, [("affine", "transforms")]),
            (reg, mask_aff, [("affine", "transforms")]),
            (
                reg,
                outputnode,
                [
                    ("affine", "t1w2affine_xfm"),
                    ("inverse_affine", "affine2t1w_xfm"),
                    ("warp", "affine2std_warp"),
                    ("inverse_warp", "std2affine_warp"),
                    ("warp_h5", "affine2std_xfm"),
                    ("inverse_warp_h5", "std2affine_xfm"),
                    ("log_jacobian", "logjac_std"),
                ],
            ),
            (t1w_aff, outputnode, [("out_file", "t1w_affine")]),
            (mask_aff, outputnode, [("out_file", "mask_affine")]),
        ]
    )
    return workflow
