"""Hypometabolism: real − pseudo-normal PET -> Z map -> ranked GM clusters, MNI and T1w."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import Settings
from ..interfaces.anat import ApplyTransforms
from ..interfaces.hypometabolism import ClusterTable, FindClusters, HypometabolismZ

STAT_INPUTS = ["pet_std", "gm_std", "mask_std", "std2t1w_xfm", "t1w_preproc"]
HYPO_INPUTS = [*STAT_INPUTS, "pseudo_std", "pseudo_sd_std"]
STAT_OUTPUTS = [
    "stat_std",
    "stat_t1w",
    "dseg_std",
    "dseg_t1w",
    "clusters_tsv",
    "stat_metadata",
    "cluster_metadata",
    "table_metadata",
]
HYPO_OUTPUTS = STAT_OUTPUTS


def init_hypometabolism_wf(
    settings: Settings,
    normative: Path | None = None,
    weights_sha256: str = "",
    name: str = "hypometabolism_wf",
) -> Workflow:
    """Z map of the residual real − pseudo PET and its clusters (one PET series).

    Inputs: ``HYPO_INPUTS`` (MNI SUVR PETs, MNI GM probability and brain mask, the
    MNI-to-T1w transform and the T1w grid). Outputs: ``HYPO_OUTPUTS``. ``normative``:
    the control normative model folder (``RunPlan.normative_dir``; None: self-referenced
    Z). ``settings``: the cluster rule and histogram matching options.
    """
    workflow = Workflow(name=name)
    reference = (
        "against the voxelwise mean and SD of the same residual in healthy controls "
        "(robust normative model fitted at the group level)"
        if normative
        else "against the residual's own mean and SD over gray matter [@chen2025]"
    )
    workflow.__desc__ = f"""
Hypometabolism was mapped as the residual between the real and the pseudo-normal PET
(both SUVR in template space{
        ", after histogram matching of the pseudo-normal PET"
        if settings.histogram_matching
        else ""
    }), converted to Z scores {reference}{
        ", with the variance of the pseudo-normal PET samples added to the denominator"
        if settings.z_model_variance
        else ""
    }. Voxels with
Z < {settings.z_threshold:g} inside gray matter were grouped into 26-connected clusters;
clusters smaller than {settings.min_cluster_mm3:g} mm³ were discarded and the rest ranked
by {settings.cluster_rank} and labelled with the Harvard-Oxford [@harvardoxford] and AAL
[@aal] atlases. Z and cluster
maps were resampled to the native T1w space with the inverse template transform.
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=HYPO_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=HYPO_OUTPUTS), name="outputnode")
    zmap = pe.Node(
        HypometabolismZ(
            histogram_matching=settings.histogram_matching, weights_sha256=weights_sha256
        ),
        name="zmap",
    )
    if normative:
        from ..analysis.normative import meta_sha256

        zmap.inputs.normative = str(normative)
        zmap.inputs.normative_sha256 = meta_sha256(normative)
    if settings.z_model_variance:
        workflow.connect(inputnode, "pseudo_sd_std", zmap, "model_sd")
    connect_clusters(workflow, settings, settings.z_threshold, inputnode, zmap, outputnode)
    workflow.connect(
        [
            (
                inputnode,
                zmap,
                [
                    ("pet_std", "pet"),
                    ("pseudo_std", "pseudo"),
                    ("gm_std", "gm"),
                    ("mask_std", "mask"),
                ],
            ),
        ]
    )
    return workflow


def connect_clusters(
    workflow: Workflow,
    settings: Settings,
    threshold: float,
    inputnode: pe.Node,
    stat: pe.Node,
    outputnode: pe.Node,
) -> None:
    """The cluster stage shared by the Z and OC-SVM maps: ``stat.out_file`` (MNI, lower
    tail) -> ranked GM clusters -> label map and statistic in T1w space -> clusters.tsv.

    ``inputnode`` provides ``STAT_INPUTS``; ``outputnode`` receives ``STAT_OUTPUTS``
    (``stat.metadata`` becomes ``stat_metadata``).
    """
    clusters = pe.Node(
        FindClusters(
            threshold=threshold,
            min_volume_mm3=settings.min_cluster_mm3,
            rank_by=settings.cluster_rank,
        ),
        name="clusters",
    )
    stat_t1w = pe.Node(ApplyTransforms(out_name="stat_t1w.nii.gz"), name="stat_to_t1w")
    dseg_t1w = pe.Node(
        ApplyTransforms(interpolation="nearestNeighbor", out_name="dseg_t1w.nii.gz"),
        name="dseg_to_t1w",
    )
    table = pe.Node(ClusterTable(), name="cluster_table")
    workflow.connect(
        [
            (stat, clusters, [("out_file", "in_file")]),
            (inputnode, clusters, [("gm_std", "gm"), ("mask_std", "mask")]),
            (stat, stat_t1w, [("out_file", "in_file")]),
            (clusters, dseg_t1w, [("dseg", "in_file")]),
            (inputnode, stat_t1w, [("t1w_preproc", "reference"), ("std2t1w_xfm", "transforms")]),
            (inputnode, dseg_t1w, [("t1w_preproc", "reference"), ("std2t1w_xfm", "transforms")]),
            (clusters, table, [("clusters", "clusters")]),
            (dseg_t1w, table, [("out_file", "dseg_t1w")]),
            (stat_t1w, table, [("out_file", "stat_t1w")]),
            (stat, outputnode, [("out_file", "stat_std"), ("metadata", "stat_metadata")]),
            (stat_t1w, outputnode, [("out_file", "stat_t1w")]),
            (clusters, outputnode, [("dseg", "dseg_std"), ("metadata", "cluster_metadata")]),
            (dseg_t1w, outputnode, [("out_file", "dseg_t1w")]),
            (table, outputnode, [("out_file", "clusters_tsv"), ("metadata", "table_metadata")]),
        ]
    )


__all__ = [
    "HYPO_INPUTS",
    "HYPO_OUTPUTS",
    "STAT_INPUTS",
    "STAT_OUTPUTS",
    "connect_clusters",
    "init_hypometabolism_wf",
]
