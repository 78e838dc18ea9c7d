"""Derivatives writers: every output goes through DerivativesDataSink, named by the
entities of ``layout.py`` (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import __version__
from .. import layout as L
from ..config import TEMPLATE_SPACE, Settings
from ..interfaces.bids import DerivativesDataSink


def bids_uri(path: str, settings: Settings) -> str:
    """`bids:raw:<relative path>` for a file of the input dataset."""
    try:
        return "bids:raw:" + str(Path(path).absolute().relative_to(settings.bids_dir))
    except ValueError:
        return str(path)


ANAT_DERIVATIVES_INPUTS = [
    "t1w_preproc",
    "t1w_mask",
    "gm",
    "wm",
    "csf",
    "t1w2std_xfm",
    "std2t1w_xfm",
    "t1w_std",
    "mask_std",
    "gm_std",
    "skullstrip_method",
    "t1w2affine_xfm",
    "affine2std_xfm",
    "std2affine_xfm",
]
"""Fields of ``init_anat_derivatives_wf``'s inputnode (outputs of ``anat_preproc_wf``)."""


def _common_meta(settings: Settings) -> dict:
    return {"SoftwareVersion": f"petsynth {__version__}", "RandomSeed": settings.random_seed}


def _pet_sources(settings: Settings, pet_source: str, t1w_source: str) -> dict:
    """DataSink arguments of a PET-derived output: named after the PET, made from both."""
    return {
        "source_file": pet_source,
        "Sources": [bids_uri(pet_source, settings), bids_uri(t1w_source, settings)],
    }


T1W_DISMISSED = ["acquisition", "ceagent", "reconstruction", "run"]
"""Entities of the T1w left out of the names of its derivatives: one T1w is used per
subject and session (bids.py), and every reader finds its outputs as ``sub-X[_ses-Y]_*``
(two T1w runs used to give ``run-1_*`` files that the report did not find)."""


def _t1w_named(t1w_source: str) -> dict:
    """DataSink arguments of an output named after the T1w (``sub-X[_ses-Y]`` only)."""
    return {"source_file": t1w_source, "dismiss_entities": T1W_DISMISSED}


def _sink(settings: Settings, name: str, **kwargs) -> pe.Node:
    return pe.Node(
        DerivativesDataSink(base_directory=str(settings.output_dir), **kwargs),
        name=name,
        run_without_submitting=True,
    )


def init_anat_derivatives_wf(
    settings: Settings, t1w_source: str, name: str = "anat_derivatives_wf"
) -> Workflow:
    """Write the anatomical derivatives (inputs: the anat_preproc_wf outputs)."""
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=ANAT_DERIVATIVES_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = {**_t1w_named(t1w_source), "Sources": [bids_uri(t1w_source, settings)]}
    meta = _common_meta(settings)
    sinks = {
        "t1w_preproc": _sink(
            settings,
            "ds_t1w_preproc",
            **L.sink_entities("t1w"),
            compress=True,
            **src,
            **meta,
        ),
        "t1w_mask": _sink(
            settings,
            "ds_t1w_mask",
            **L.sink_entities("mask"),
            compress=True,
            Type="Brain",
            **src,
            **meta,
        ),
        "gm": _sink(
            settings,
            "ds_gm",
            **L.sink_entities("gm"),
            compress=True,
            **src,
            **meta,
        ),
        "wm": _sink(
            settings,
            "ds_wm",
            **L.sink_entities("wm"),
            compress=True,
            **src,
            **meta,
        ),
        "csf": _sink(
            settings,
            "ds_csf",
            **L.sink_entities("csf"),
            compress=True,
            **src,
            **meta,
        ),
        "t1w2std_xfm": _sink(
            settings,
            "ds_t1w2std_xfm",
            **L.sink_entities("t1w2std_xfm"),
            **src,
        ),
        "std2t1w_xfm": _sink(
            settings,
            "ds_std2t1w_xfm",
            **L.sink_entities("std2t1w_xfm"),
            **src,
        ),
        # registration stages (synthesis.inputs): affine-only space <-> T1w and MNI
        "t1w2affine_xfm": _sink(
            settings,
            "ds_t1w2affine_xfm",
            **L.sink_entities("t1w2affine_xfm"),
            **src,
        ),
        "affine2std_xfm": _sink(
            settings,
            "ds_affine2std_xfm",
            **L.sink_entities("affine2std_xfm"),
            **src,
        ),
        "std2affine_xfm": _sink(
            settings,
            "ds_std2affine_xfm",
            **L.sink_entities("std2affine_xfm"),
            **src,
        ),
        "t1w_std": _sink(
            settings,
            "ds_t1w_std",
            space=TEMPLATE_SPACE,
            **L.sink_entities("t1w"),
            compress=True,
            RegistrationPreset=settings.registration_preset,
            **src,
            **meta,
        ),
        "mask_std": _sink(
            settings,
            "ds_mask_std",
            space=TEMPLATE_SPACE,
            **L.sink_entities("mask"),
            compress=True,
            Type="Brain",
            **src,
            **meta,
        ),
        "gm_std": _sink(
            settings,
            "ds_gm_std",
            space=TEMPLATE_SPACE,
            **L.sink_entities("gm"),
            compress=True,
            **src,
            **meta,
        ),
    }
    merge = pe.Node(niu.Merge(len(sinks)), name="merge_outputs")
    for i, (field, sink) in enumerate(sinks.items(), start=1):
        workflow.connect(inputnode, field, sink, "in_file")
        workflow.connect(sink, "out_file", merge, f"in{i}")
    workflow.connect(
        [
            (inputnode, sinks["t1w_mask"], [(("skullstrip_method", _method_meta), "meta_dict")]),
            (merge, outputnode, [("out", "out_files")]),
        ]
    )
    return workflow


def _method_meta(method):
    return {"BrainExtractionMethod": method}


def init_pet_derivatives_wf(
    settings: Settings, pet_source: str, t1w_source: str, name: str = "pet_derivatives_wf"
) -> Workflow:
    """Write the PET derivatives of one series (inputs: pet_preproc_wf outputs)."""
    workflow = Workflow(name=name)
    fields = ["pet_t1w", "pet_std", "pet2t1w_xfm", "suvr_metadata"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = _pet_sources(settings, pet_source, t1w_source)
    meta = _common_meta(settings)
    sinks = {
        "pet2t1w_xfm": _sink(
            settings,
            "ds_pet2t1w_xfm",
            **L.sink_entities("pet2t1w_xfm"),
            **src,
        ),
    }
    sinks.update(_image_sinks(settings, "pet", ("pet_t1w", "pet_std"), src, meta))
    meta_of = {f: "suvr_metadata" for f in sinks if f.startswith("pet_")}
    _connect_sinks(workflow, inputnode, outputnode, sinks, meta_of)
    return workflow


def _image_sinks(
    settings: Settings, key: str, fields: tuple[str, str], src: dict, meta: dict
) -> dict[str, pe.Node]:
    """Sinks of output ``key`` (``layout.OUTPUTS``) in the T1w and template spaces the
    run writes, for the inputnode ``fields`` (T1w-space field, template-space field)."""
    sinks = {}
    for space, field in zip(("T1w", TEMPLATE_SPACE), fields, strict=True):
        if space in settings.output_spaces:
            sinks[field] = _sink(
                settings,
                f"ds_{field}",
                space=space,
                **L.sink_entities(key),
                compress=True,
                **src,
                **meta,
            )
    return sinks


def _connect_sinks(
    workflow: Workflow,
    inputnode: pe.Node,
    outputnode: pe.Node,
    sinks: dict[str, pe.Node],
    meta_of: dict[str, str],
) -> None:
    """Feed each sink its input field (and sidecar metadata field) and collect every
    written path in ``outputnode.out_files``."""
    merge = pe.Node(niu.Merge(len(sinks)), name="merge_outputs")
    for i, (field, sink) in enumerate(sinks.items(), start=1):
        workflow.connect(inputnode, field, sink, "in_file")
        workflow.connect(sink, "out_file", merge, f"in{i}")
        if field in meta_of:
            workflow.connect(inputnode, meta_of[field], sink, "meta_dict")
    workflow.connect(merge, "out", outputnode, "out_files")


def init_synthesis_derivatives_wf(
    settings: Settings, t1w_source: str, name: str = "synthesis_derivatives_wf"
) -> Workflow:
    """Write the pseudo-normal PET (inputs: synthesis_wf outputs)."""
    workflow = Workflow(name=name)
    fields = ["pseudo_std", "pseudo_t1w", "metadata"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = {**_t1w_named(t1w_source), "Sources": [bids_uri(t1w_source, settings)]}
    meta = _common_meta(settings)
    sinks = _image_sinks(settings, "pseudo", ("pseudo_t1w", "pseudo_std"), src, meta)
    _connect_sinks(workflow, inputnode, outputnode, sinks, dict.fromkeys(sinks, "metadata"))
    return workflow


def _merge_meta(a: dict, b: dict) -> dict:
    return {**a, **b}


def init_statmap_derivatives_wf(
    settings: Settings,
    pet_source: str,
    t1w_source: str,
    desc: str,
    name: str = "hypometabolism_derivatives_wf",
) -> Workflow:
    """Write a statistic map (``layout.STATS``: ``desc`` and its ``stat``), its cluster label maps
    (MNI, T1w) and cluster table of one PET (inputs: ``STAT_OUTPUTS``)."""
    from .hypometabolism import STAT_OUTPUTS

    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=STAT_OUTPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = _pet_sources(settings, pet_source, t1w_source)
    meta = _common_meta(settings)
    merge_meta = pe.Node(
        niu.Function(function=_merge_meta, output_names=["out"]), name="merge_meta"
    )
    workflow.connect(
        [(inputnode, merge_meta, [("stat_metadata", "a"), ("cluster_metadata", "b")])]
    )
    sinks = {}
    for space, tag in (("T1w", "t1w"), (TEMPLATE_SPACE, "std")):
        if space not in settings.output_spaces:
            continue
        sinks[f"stat_{tag}"] = _sink(
            settings,
            f"ds_stat_{tag}",
            space=space,
            **L.sink_entities("statmap", desc),
            compress=True,
            **src,
            **meta,
        )
        sinks[f"dseg_{tag}"] = _sink(
            settings,
            f"ds_dseg_{tag}",
            space=space,
            **L.sink_entities("dseg", desc),
            compress=True,
            data_dtype="int16",
            **src,
            **meta,
        )
    sinks["clusters_tsv"] = _sink(
        settings,
        "ds_clusters",
        **L.sink_entities("clusters", desc),
        source_file=pet_source,
    )
    merge = pe.Node(niu.Merge(len(sinks)), name="merge_outputs")
    for i, (field, sink) in enumerate(sinks.items(), start=1):
        workflow.connect(inputnode, field, sink, "in_file")
        workflow.connect(sink, "out_file", merge, f"in{i}")
        if field == "clusters_tsv":
            workflow.connect(inputnode, "table_metadata", sink, "meta_dict")
        else:
            workflow.connect(merge_meta, "out", sink, "meta_dict")
    workflow.connect(merge, "out", outputnode, "out_files")
    return workflow
