"""OC-SVM anomaly maps: PET (MNI) -> siamese features -> per-voxel OC-SVM score -> ranked
GM clusters, MNI and T1w (runs when the group level has fitted a detector)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..analysis.anomaly import read_meta
from ..interfaces.anomaly import OCSVMScore
from .hypometabolism import STAT_INPUTS, STAT_OUTPUTS, connect_clusters


def init_anomaly_wf(
    *,
    model: str,
    participant_id: str,
    omp_nthreads: int,
    ocsvm_threshold: float,
    min_cluster_mm3: float,
    cluster_rank: str,
    name: str = "anomaly_wf",
) -> Workflow:
    """OC-SVM score map of one PET series against the detector in ``model`` and its
    clusters.

    Inputs: ``STAT_INPUTS`` (MNI SUVR PET, GM probability, brain mask, the MNI-to-T1w
    transform and the T1w grid). Outputs: ``STAT_OUTPUTS``. ``ocsvm_threshold``,
    ``min_cluster_mm3`` (mm³), ``cluster_rank``: the cluster rule (``connect_clusters``).
    """
    meta = read_meta(model)
    n_real = len(meta.get("participants_real", []))
    n_syn = len(meta.get("participants_synthetic", []))
    data = f"{n_real} control PET scan{'s' * (n_real > 1)}" + (
        f" and the pseudo-normal PET of {n_syn} control{'s' * (n_syn > 1)} without PET"
        if n_syn
        else ""
    )
    workflow = Workflow(name=name)
    workflow.__desc__ = f"""
An unsupervised anomaly map was computed as by Zotova et al. [@zotova2021], after
Alaverdyan et al. [@alaverdyan2020]: 15x15 axial patches of the template-space PET
(scaled to [0, 1]) were encoded into 64-dimensional features by a siamese autoencoder
trained on {data}, and every gray-matter voxel was scored by a one-class SVM [@scholkopf2001]
(RBF kernel, nu = {meta.get("nu")}, gamma = {meta.get("gamma")}) fitted on the controls'
features at that voxel. The decision values were standardized over the brain (median,
1.4826 x MAD) and clustered like the Z maps (threshold {ocsvm_threshold:g}).
"""
    inputnode = pe.Node(niu.IdentityInterface(fields=STAT_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=STAT_OUTPUTS), name="outputnode")
    score = pe.Node(
        OCSVMScore(
            model=str(model),
            model_sha256=str(meta.get("ocsvm_sha256", "")),
            participant_id=participant_id,
            nthreads=omp_nthreads,
        ),
        name="ocsvm_score",
        n_procs=omp_nthreads,
        mem_gb=1.0,
    )
    workflow.connect(
        [
            (
                inputnode,
                score,
                [
                    ("pet_std", "pet"),
                    ("mask_std", "mask"),
                    ("coverage_std", "coverage"),
                    ("coverage_metadata", "coverage_metadata"),
                ],
            )
        ]
    )
    connect_clusters(
        workflow,
        inputnode,
        score,
        outputnode,
        threshold=ocsvm_threshold,
        min_cluster_mm3=min_cluster_mm3,
        cluster_rank=cluster_rank,
    )
    return workflow


__all__ = ["init_anomaly_wf"]
