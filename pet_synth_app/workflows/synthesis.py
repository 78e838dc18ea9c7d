"""Pseudo-normal PET synthesis: T1w (MNI, [0, 1]) -> model -> PET (MNI) -> T1w space."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.anat import ApplyTransforms
from ..interfaces.synthesis import SynthesizePET
from ..plan import RunPlan
from ..synthesis.registry import get_spec

SYNTHESIS_OUTPUTS = ["pseudo_std", "pseudo_t1w", "metadata"]


def init_synthesis_wf(plan: RunPlan, name: str = "synthesis_wf") -> Workflow:
    """Pseudo-normal FDG PET in MNI and native T1w space.

    Inputs: ``t1w_std_norm``, ``mask_std`` (MNI), ``std2t1w_xfm``, ``t1w_preproc``.
    Outputs: ``pseudo_std``, ``pseudo_t1w`` (SUVR) and the model ``metadata``.
    ``plan``: the weights, their card, the smoothing, device and threads of the run.
    """
    weights, card, fwhm = plan.weights, plan.card, plan.synthesis_fwhm
    training = card.get("training", {}).get("data", "unknown data")
    spec = get_spec(card["model"])
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
                "training participants and predicted a residual to the mean PET)"
            )
    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
A pseudo-normal FDG PET, the uptake expected for a healthy brain with the participant's
anatomy, was synthesized from the template-space T1w with the `{card["model"]}` model
[@zotova2021; @{spec.citation}]
(weights sha256 `{card["sha256"][:12]}`, trained on {training}): {how},
smoothed with a {fwhm:g} mm FWHM Gaussian, and the result was
resampled to the T1w space with the inverse of the T1w-to-template transform.
"""
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w_std_norm", "mask_std", "std2t1w_xfm", "t1w_preproc"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=SYNTHESIS_OUTPUTS), name="outputnode")
    synth = pe.Node(
        SynthesizePET(
            weights=str(weights), device=plan.device, nthreads=plan.omp_nthreads, fwhm=fwhm
        ),
        name="synthesize",
        n_procs=plan.omp_nthreads,
        mem_gb=1.5,
    )
    to_t1w = pe.Node(ApplyTransforms(out_name="pseudo_t1w.nii.gz"), name="pseudo_to_t1w")
    workflow.connect(
        [
            (inputnode, synth, [("t1w_std_norm", "t1w_norm"), ("mask_std", "mask")]),
            (synth, to_t1w, [("out_file", "in_file")]),
            (inputnode, to_t1w, [("t1w_preproc", "reference"), ("std2t1w_xfm", "transforms")]),
            (synth, outputnode, [("out_file", "pseudo_std"), ("metadata", "metadata")]),
            (to_t1w, outputnode, [("out_file", "pseudo_t1w")]),
        ]
    )
    return workflow


__all__ = ["SYNTHESIS_OUTPUTS", "init_synthesis_wf"]
