"""Pseudo-normal PET synthesis: T1w in the model's input representation -> model -> PET
(MNI) -> T1w space (docs/architecture.md)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.anat import ApplyTransforms
from ..interfaces.synthesis import SynthesizePET
from ..plan import RunPlan
from ..synthesis.inputs import card_representation, input_space
from ..synthesis.registry import get_spec

SYNTHESIS_OUTPUTS = ["pseudo_std", "pseudo_t1w", "pseudo_sd_std", "pseudo_sd_t1w", "metadata"]
SYNTHESIS_INPUTS = [
    "t1w_std",  # N4 T1w in MNI (mni, mni-jacobian)
    "mask_std",  # MNI brain mask: the output grid
    "gm_std",  # (mni-jacobian)
    "logjac_std",  # log det Jacobian of the warp (mni-jacobian)
    "std2t1w_xfm",  # MNI -> T1w composite (mni, mni-jacobian)
    "t1w_preproc",  # N4 T1w, T1w space: the pseudo_t1w grid; the affine input
    "t1w_mask",  # (affine)
    "t1w2affine_xfm",  # affine stage (affine)
    "affine2t1w_xfm",  # its inverse: affine space -> T1w (affine)
    "affine2std_warp",  # nonlinear part: affine space -> MNI (affine)
    "t1w2std_xfm",  # composite T1w -> MNI (mni-pv)
    "gm",  # T1w-space tissue posteriors (mni-pv)
    "wm",
    "csf",
]
"""Fields of ``init_synthesis_wf``'s inputnode (outputs of ``anat_preproc_wf``)."""


def init_synthesis_wf(plan: RunPlan, name: str = "synthesis_wf") -> Workflow:
    """Pseudo-normal FDG PET in MNI and native T1w space.

    Inputs: ``SYNTHESIS_INPUTS``; which are used depends on the card's input
    representation (``synthesis.inputs``). Outputs: ``pseudo_std``, ``pseudo_t1w`` (SUVR)
    and the model ``metadata``; with ``plan.synthesis_samples`` > 1 (diffusion models) the
    pseudo-PET is the mean of that many samples and ``pseudo_sd_std``/``pseudo_sd_t1w``
    are their per-voxel SD (SUVR), taken to both spaces by the same transforms.
    ``plan``: the weights, their card, the smoothing, device, threads and samples of the run.
    """
    weights, card, fwhm = plan.weights, plan.card, plan.synthesis_fwhm
    training = card.get("training", {}).get("data", "unknown data")
    spec = get_spec(card["model"])
    representation = card_representation(card)
    if spec.kind == "patches":
        how = (
            "32³ patches were translated on a regular grid and the central part of each "
            "was stitched into a volume"
        )
    else:
        how = (
            "three adjacent axial slices were translated at a time and the slices "
            "restacked into a volume"
        )
        if card["config"].get("prior_shape"):
            means = (
                "the mean T1w and the mean PET"
                if card["config"].get("prior_input")
                else "the mean PET"
            )
            how += (
                f" (the generator also received the same slices of {means} of its "
                "training participants and predicted a residual to the mean PET"
                + (
                    ", adjusted to the participant's own gray-matter and CSF fractions by a "
                    "partial-volume forward model fitted on the training participants"
                    if card["config"].get("pv_prior")
                    else ""
                )
                + ")"
            )
    source = {
        "mni": "the template-space T1w",
        "affine": "the T1w resampled with the affine stage of the registration only "
        "(which keeps the individual anatomy)",
        "mni-jacobian": "the template-space T1w, the log-Jacobian determinant of the "
        "nonlinear warp and the Jacobian-modulated gray-matter map",
        "mni-pv": "the template-space T1w and the participant's gray-matter and CSF volume "
        "fractions, blurred to PET resolution in T1w space before the warp to the template",
    }[representation]
    back = (
        "taken to the template space with the nonlinear part of the registration and to "
        "the T1w space with the inverse of its affine stage (the transforms of the real PET)"
        if input_space(representation) == "affine"
        else "resampled to the T1w space with the inverse of the T1w-to-template transform"
    )
    n_samples = plan.synthesis_samples
    if n_samples > 1:
        how += (
            f"; {n_samples} samples were drawn with noise seeds {plan.synthesis_seed} to "
            f"{plan.synthesis_seed + n_samples - 1}, their voxelwise mean was used as the "
            "pseudo-normal PET and their standard deviation kept as a model-uncertainty map"
        )
    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
A pseudo-normal FDG PET, the uptake expected for a healthy brain with the participant's
anatomy, was synthesized from {source} with the `{card["model"]}` model
[@zotova2021; @{spec.citation}] (weights sha256 `{card["sha256"][:12]}`,
trained on {training}): {how},
smoothed with a {fwhm:g} mm FWHM Gaussian, and the result was {back}.
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=SYNTHESIS_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=SYNTHESIS_OUTPUTS), name="outputnode")
    synth = pe.Node(
        SynthesizePET(
            weights=str(weights),
            device=plan.device,
            nthreads=plan.omp_nthreads,
            fwhm=fwhm,
            n_samples=n_samples,
            seed=plan.synthesis_seed,
        ),
        name="synthesize",
        n_procs=plan.omp_nthreads,
        mem_gb=1.5,
    )
    to_t1w = pe.Node(ApplyTransforms(out_name="pseudo_t1w.nii.gz"), name="pseudo_to_t1w")
    if n_samples > 1:
        _connect_sd(workflow, inputnode, synth, outputnode, input_space(representation))
    workflow.connect(
        [
            (inputnode, synth, [("mask_std", "mask_std")]),
            (synth, to_t1w, [("out_file", "in_file")]),
            (inputnode, to_t1w, [("t1w_preproc", "reference")]),
            (synth, outputnode, [("metadata", "metadata")]),
            (to_t1w, outputnode, [("out_file", "pseudo_t1w")]),
        ]
    )
    if input_space(representation) == "affine":
        # affine space -> MNI by the nonlinear part, -> T1w by the inverse affine: the
        # real PET reaches both spaces through the same two transforms
        to_std = pe.Node(ApplyTransforms(out_name="pseudo_std.nii.gz"), name="pseudo_to_std")
        workflow.connect(
            [
                (
                    inputnode,
                    synth,
                    [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")],
                ),
                (inputnode, synth, [("t1w2affine_xfm", "t1w2affine_xfm")]),
                (synth, to_std, [("out_file", "in_file")]),
                (inputnode, to_std, [("mask_std", "reference")]),
                (inputnode, to_std, [("affine2std_warp", "transforms")]),
                (inputnode, to_t1w, [("affine2t1w_xfm", "transforms")]),
                (to_std, outputnode, [("out_file", "pseudo_std")]),
            ]
        )
    else:
        workflow.connect(
            [
                (inputnode, synth, [("t1w_std", "t1w_std")]),
                (inputnode, to_t1w, [("std2t1w_xfm", "transforms")]),
                (synth, outputnode, [("out_file", "pseudo_std")]),
            ]
        )
        if representation == "mni-jacobian":
            workflow.connect(
                [(inputnode, synth, [("gm_std", "gm_std"), ("logjac_std", "logjac_std")])]
            )
        if representation == "mni-pv":
            pv_inputs = [("t1w_preproc", "t1w"), ("t1w_mask", "t1w_mask")]
            pv_inputs += [(f, f) for f in ("t1w2std_xfm", "gm", "wm", "csf")]
            workflow.connect([(inputnode, synth, pv_inputs)])
    return workflow


def _connect_sd(
    workflow: Workflow, inputnode: pe.Node, synth: pe.Node, outputnode: pe.Node, space: str
) -> None:
    """The samples' SD map to MNI and T1w space by the pseudo-PET's own transforms."""
    sd_t1w = pe.Node(ApplyTransforms(out_name="pseudo_sd_t1w.nii.gz"), name="sd_to_t1w")
    workflow.connect(
        [
            (synth, sd_t1w, [("sd_file", "in_file")]),
            (inputnode, sd_t1w, [("t1w_preproc", "reference")]),
            (sd_t1w, outputnode, [("out_file", "pseudo_sd_t1w")]),
        ]
    )
    if space == "affine":
        sd_std = pe.Node(ApplyTransforms(out_name="pseudo_sd_std.nii.gz"), name="sd_to_std")
        workflow.connect(
            [
                (synth, sd_std, [("sd_file", "in_file")]),
                (inputnode, sd_std, [("mask_std", "reference")]),
                (inputnode, sd_std, [("affine2std_warp", "transforms")]),
                (inputnode, sd_t1w, [("affine2t1w_xfm", "transforms")]),
                (sd_std, outputnode, [("out_file", "pseudo_sd_std")]),
            ]
        )
    else:
        workflow.connect(
            [
                (inputnode, sd_t1w, [("std2t1w_xfm", "transforms")]),
                (synth, outputnode, [("sd_file", "pseudo_sd_std")]),
            ]
        )


__all__ = ["SYNTHESIS_INPUTS", "SYNTHESIS_OUTPUTS", "init_synthesis_wf"]
