"""Hypometabolism: real − pseudo-normal PET -> Z map -> ranked GM clusters, MNI and T1w."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..config import Z_FWHM_MM
from ..interfaces.anat import ApplyTransforms
from ..interfaces.hypometabolism import ClusterTable, ControlPetZ, FindClusters, HypometabolismZ

STAT_INPUTS = [
    "pet_std",
    "gm_std",
    "mask_std",
    "std2t1w_xfm",
    "t1w_preproc",
    "coverage_std",  # the PET field of view (MNI): every statistic stays inside it
    "coverage_metadata",  # how much of the brain it covers: into the map's sidecar
]
PET_STAT_INPUTS = ("pet_std", "coverage_std", "coverage_metadata")
"""The ``STAT_INPUTS`` that come from the PET workflow (the others: anatomy)."""
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
    *,
    normative: Path | None,
    weights_sha256: str,
    histogram_matching: bool,
    z_threshold: float,
    min_cluster_mm3: float,
    cluster_rank: str,
    z_model_variance: bool,
    z_fwhm: float = Z_FWHM_MM,
    name: str = "hypometabolism_wf",
) -> Workflow:
    """Z map of the residual real − pseudo PET and its clusters (one PET series).

    Inputs: ``HYPO_INPUTS`` (MNI SUVR PETs, MNI GM probability and brain mask, the
    MNI-to-T1w transform and the T1w grid). Outputs: ``HYPO_OUTPUTS``. ``normative``:
    the control normative model folder (``RunPlan.normative_dir``; None: self-referenced
    Z); ``weights_sha256``: the synthesis weights it must match. ``z_fwhm``: the
    analysis smoothing (mm FWHM) of both PETs. ``z_threshold``, ``min_cluster_mm3``
    (mm³), ``cluster_rank``: the cluster rule (``connect_clusters``).
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
        f", each smoothed inside the brain mask by a Gaussian of {z_fwhm:g} mm FWHM"
        if z_fwhm
        else ""
    }{
        ", after histogram matching of the pseudo-normal PET" if histogram_matching else ""
    }), converted to Z scores {reference}{
        ", with the variance of the pseudo-normal PET samples added to the denominator"
        if z_model_variance
        else ""
    }. Voxels with
Z < {z_threshold:g} inside gray matter were grouped into 26-connected clusters;
clusters smaller than {min_cluster_mm3:g} mm³ were discarded and the rest ranked
by {cluster_rank} and labelled with the Harvard-Oxford [@harvardoxford] and AAL
[@aal] atlases. Z and cluster
maps were resampled to the native T1w space with the inverse template transform.
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=HYPO_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=HYPO_OUTPUTS), name="outputnode")
    zmap = pe.Node(
        HypometabolismZ(
            histogram_matching=histogram_matching, weights_sha256=weights_sha256, fwhm_mm=z_fwhm
        ),
        name="zmap",
    )
    if normative:
        from ..analysis.normative import meta_sha256

        zmap.inputs.normative = str(normative)
        zmap.inputs.normative_sha256 = meta_sha256(normative)
    if z_model_variance:
        workflow.connect(inputnode, "pseudo_sd_std", zmap, "model_sd")
    connect_clusters(
        workflow,
        inputnode,
        zmap,
        outputnode,
        threshold=z_threshold,
        min_cluster_mm3=min_cluster_mm3,
        cluster_rank=cluster_rank,
        calibration=(normative, "hypometabolism") if normative else None,
    )
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
                    ("coverage_std", "coverage"),
                    ("coverage_metadata", "coverage_metadata"),
                ],
            ),
        ]
    )
    return workflow


def init_controlpet_wf(
    *,
    normative: Path,
    z_threshold: float,
    min_cluster_mm3: float,
    cluster_rank: str,
    z_fwhm: float = Z_FWHM_MM,
    name: str = "controlpet_wf",
) -> Workflow:
    """The classic comparison without synthesis (one PET series): Z of the real MNI SUVR
    PET against the controls' voxelwise PET mean and SD of the normative model
    (``normative``, ``RunPlan.normative_dir``), clustered by the same rule as the
    hypometabolism map. Inputs: ``STAT_INPUTS``; outputs: ``STAT_OUTPUTS``."""
    from ..analysis.normative import meta_sha256

    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
For comparison without synthesis, the real PET{
        f" (smoothed with the same {z_fwhm:g} mm Gaussian)" if z_fwhm else ""
    } was also converted to Z scores against the
voxelwise mean and SD of the healthy controls' SUVR PETs in template space (the classic
single-subject comparison with a control group), and clustered with the same rule
(Z < {z_threshold:g} in gray matter, clusters of at least {min_cluster_mm3:g} mm³).
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=STAT_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=STAT_OUTPUTS), name="outputnode")
    zmap = pe.Node(
        ControlPetZ(
            normative=str(normative), normative_sha256=meta_sha256(normative), fwhm_mm=z_fwhm
        ),
        name="zmap",
    )
    connect_clusters(
        workflow,
        inputnode,
        zmap,
        outputnode,
        threshold=z_threshold,
        min_cluster_mm3=min_cluster_mm3,
        cluster_rank=cluster_rank,
        calibration=(normative, "controlpet"),
    )
    workflow.connect(inputnode, "pet_std", zmap, "pet")
    workflow.connect(inputnode, "mask_std", zmap, "mask")
    workflow.connect(inputnode, "coverage_std", zmap, "coverage")
    workflow.connect(inputnode, "coverage_metadata", zmap, "coverage_metadata")
    return workflow


def connect_clusters(
    workflow: Workflow,
    inputnode: pe.Node,
    stat: pe.Node,
    outputnode: pe.Node,
    *,
    threshold: float,
    min_cluster_mm3: float,
    cluster_rank: str,
    calibration: tuple[Path, str] | None = None,
) -> None:
    """The cluster stage shared by the Z and OC-SVM maps: ``stat.out_file`` (MNI, lower
    tail) -> ranked GM clusters inside the PET field of view -> label map and statistic
    in T1w space -> clusters.tsv.

    ``inputnode`` provides ``STAT_INPUTS``; ``outputnode`` receives ``STAT_OUTPUTS``
    (``stat.metadata`` becomes ``stat_metadata``). Voxels below ``threshold`` form
    clusters of at least ``min_cluster_mm3`` (mm³), ranked by ``cluster_rank``.
    ``calibration``: (normative folder, map key) whose leave-one-out cluster null gives
    each cluster its ``expected_fp``, ``p_fwe`` and ``significant`` (``analysis.calibration``);
    None: the table says the map is uncalibrated.
    """
    clusters = pe.Node(
        FindClusters(
            threshold=threshold,
            min_volume_mm3=min_cluster_mm3,
            rank_by=cluster_rank,
        ),
        name="clusters",
    )
    stat_t1w = pe.Node(ApplyTransforms(out_name="stat_t1w.nii.gz"), name="stat_to_t1w")
    dseg_t1w = pe.Node(
        ApplyTransforms(interpolation="nearestNeighbor", out_name="dseg_t1w.nii.gz"),
        name="dseg_to_t1w",
    )
    table = pe.Node(
        ClusterTable(threshold=threshold, min_volume_mm3=min_cluster_mm3), name="cluster_table"
    )
    if calibration is not None:
        from ..analysis.normative import meta_sha256

        table.inputs.null_dir = str(calibration[0])
        table.inputs.null_sha256 = meta_sha256(calibration[0])
        table.inputs.desc = calibration[1]
    workflow.connect(
        [
            (stat, clusters, [("out_file", "in_file")]),
            (
                inputnode,
                clusters,
                [("gm_std", "gm"), ("mask_std", "mask"), ("coverage_std", "coverage")],
            ),
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
    "PET_STAT_INPUTS",
    "STAT_INPUTS",
    "STAT_OUTPUTS",
    "connect_clusters",
    "init_controlpet_wf",
    "init_hypometabolism_wf",
]
