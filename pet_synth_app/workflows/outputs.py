"""Derivatives writers: every output goes through DerivativesDataSink, named by the
entities of ``layout.py`` (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import __version__
from .. import layout as L
from ..config import TEMPLATE_SPACE
from ..interfaces.bids import DerivativesDataSink


def bids_uri(path: str, bids_dir: Path) -> str:
    """`bids:raw:<relative path>` for a file of the input dataset ``bids_dir``."""
    try:
        return "bids:raw:" + str(Path(path).absolute().relative_to(bids_dir))
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


def _common_meta(random_seed: int, deterministic: bool) -> dict:
    meta = {"SoftwareVersion": f"petsynth {__version__}", "RandomSeed": random_seed}
    if deterministic:
        meta["Deterministic"] = True
    return meta


def _pet_sources(bids_dir: Path, pet_source: str, t1w_source: str) -> dict:
    """DataSink arguments of a PET-derived output: named after the PET, made from both."""
    return {
        "source_file": pet_source,
        "Sources": [bids_uri(pet_source, bids_dir), bids_uri(t1w_source, bids_dir)],
    }


T1W_DISMISSED = ["acquisition", "ceagent", "reconstruction", "run"]
"""Entities of the T1w left out of the names of its derivatives: one T1w is used per
subject and session (bids.py), and every reader finds its outputs as ``sub-X[_ses-Y]_*``
(two T1w runs used to give ``run-1_*`` files that the report did not find)."""


def _t1w_named(t1w_source: str) -> dict:
    """DataSink arguments of an output named after the T1w (``sub-X[_ses-Y]`` only)."""
    return {"source_file": t1w_source, "dismiss_entities": T1W_DISMISSED}


def _sink(output_dir: Path, name: str, **kwargs) -> pe.Node:
    # in a worker, not on the scheduler's thread: compressing a 1 mm image takes seconds,
    # during which the main process could not hand out other steps
    return pe.Node(
        DerivativesDataSink(base_directory=str(output_dir), **kwargs),
        name=name,
    )


def init_anat_derivatives_wf(
    *,
    bids_dir: Path,
    output_dir: Path,
    t1w_source: str,
    random_seed: int,
    deterministic: bool,
    registration_preset: str,
    name: str = "anat_derivatives_wf",
) -> Workflow:
    """Write the anatomical derivatives of ``t1w_source`` (a file of ``bids_dir``) into
    ``output_dir`` (inputs: the anat_preproc_wf outputs)."""
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=ANAT_DERIVATIVES_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = {**_t1w_named(t1w_source), "Sources": [bids_uri(t1w_source, bids_dir)]}
    meta = _common_meta(random_seed, deterministic)
    sinks = {
        "t1w_preproc": _sink(
            output_dir,
            "ds_t1w_preproc",
            **L.sink_entities("t1w"),
            compress=True,
            **src,
            **meta,
        ),
        "t1w_mask": _sink(
            output_dir,
            "ds_t1w_mask",
            **L.sink_entities("mask"),
            compress=True,
            Type="Brain",
            **src,
            **meta,
        ),
        "gm": _sink(
            output_dir,
            "ds_gm",
            **L.sink_entities("gm"),
            compress=True,
            **src,
            **meta,
        ),
        "wm": _sink(
            output_dir,
            "ds_wm",
            **L.sink_entities("wm"),
            compress=True,
            **src,
            **meta,
        ),
        "csf": _sink(
            output_dir,
            "ds_csf",
            **L.sink_entities("csf"),
            compress=True,
            **src,
            **meta,
        ),
        "t1w2std_xfm": _sink(
            output_dir,
            "ds_t1w2std_xfm",
            **L.sink_entities("t1w2std_xfm"),
            **src,
        ),
        "std2t1w_xfm": _sink(
            output_dir,
            "ds_std2t1w_xfm",
            **L.sink_entities("std2t1w_xfm"),
            **src,
        ),
        # registration stages (synthesis.inputs): affine-only space <-> T1w and MNI
        "t1w2affine_xfm": _sink(
            output_dir,
            "ds_t1w2affine_xfm",
            **L.sink_entities("t1w2affine_xfm"),
            **src,
        ),
        "affine2std_xfm": _sink(
            output_dir,
            "ds_affine2std_xfm",
            **L.sink_entities("affine2std_xfm"),
            **src,
        ),
        "std2affine_xfm": _sink(
            output_dir,
            "ds_std2affine_xfm",
            **L.sink_entities("std2affine_xfm"),
            **src,
        ),
        "t1w_std": _sink(
            output_dir,
            "ds_t1w_std",
            space=TEMPLATE_SPACE,
            **L.sink_entities("t1w"),
            compress=True,
            RegistrationPreset=registration_preset,
            **src,
            **meta,
        ),
        "mask_std": _sink(
            output_dir,
            "ds_mask_std",
            space=TEMPLATE_SPACE,
            **L.sink_entities("mask"),
            compress=True,
            Type="Brain",
            **src,
            **meta,
        ),
        "gm_std": _sink(
            output_dir,
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
    *,
    bids_dir: Path,
    output_dir: Path,
    pet_source: str,
    t1w_source: str,
    random_seed: int,
    deterministic: bool,
    output_spaces: list[str],
    name: str = "pet_derivatives_wf",
) -> Workflow:
    """Write the PET derivatives of one series ``pet_source`` in ``output_spaces`` into
    ``output_dir`` (inputs: pet_preproc_wf outputs)."""
    workflow = Workflow(name=name)
    fields = [
        "pet_t1w",
        "pet_std",
        "pet2t1w_xfm",
        "suvr_metadata",
        "coverage_t1w",
        "coverage_std",
        "coverage_metadata",
    ]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = _pet_sources(bids_dir, pet_source, t1w_source)
    meta = _common_meta(random_seed, deterministic)
    sinks = {
        "pet2t1w_xfm": _sink(
            output_dir,
            "ds_pet2t1w_xfm",
            **L.sink_entities("pet2t1w_xfm"),
            **src,
        ),
    }
    sinks.update(_image_sinks(output_dir, output_spaces, "pet", ("pet_t1w", "pet_std"), src, meta))
    coverage = ("coverage_t1w", "coverage_std")
    sinks.update(_image_sinks(output_dir, output_spaces, "coverage", coverage, src, meta))
    meta_of = {f: "suvr_metadata" for f in sinks if f.startswith("pet_")}
    meta_of.update({f: "coverage_metadata" for f in sinks if f.startswith("coverage_")})
    _connect_sinks(workflow, inputnode, outputnode, sinks, meta_of)
    return workflow


def _image_sinks(
    output_dir: Path,
    output_spaces: list[str],
    key: str,
    fields: tuple[str, str],
    src: dict,
    meta: dict,
) -> dict[str, pe.Node]:
    """Sinks of output ``key`` (``layout.OUTPUTS``) in the T1w and template spaces the
    run writes, for the inputnode ``fields`` (T1w-space field, template-space field)."""
    sinks = {}
    for space, field in zip(("T1w", TEMPLATE_SPACE), fields, strict=True):
        if space in output_spaces:
            sinks[field] = _sink(
                output_dir,
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
    *,
    bids_dir: Path,
    output_dir: Path,
    t1w_source: str,
    random_seed: int,
    deterministic: bool,
    output_spaces: list[str],
    synthesis_samples: int,
    name: str = "synthesis_derivatives_wf",
) -> Workflow:
    """Write the pseudo-normal PET of ``t1w_source`` in ``output_spaces`` into
    ``output_dir``, and the SD map of its samples when ``synthesis_samples`` > 1 (inputs:
    synthesis_wf outputs)."""
    workflow = Workflow(name=name)
    fields = ["pseudo_std", "pseudo_t1w", "pseudo_sd_std", "pseudo_sd_t1w", "metadata"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = {**_t1w_named(t1w_source), "Sources": [bids_uri(t1w_source, bids_dir)]}
    meta = _common_meta(random_seed, deterministic)
    sinks = _image_sinks(
        output_dir, output_spaces, "pseudo", ("pseudo_t1w", "pseudo_std"), src, meta
    )
    if synthesis_samples > 1:
        sd_fields = ("pseudo_sd_t1w", "pseudo_sd_std")
        sinks.update(_image_sinks(output_dir, output_spaces, "pseudo_sd", sd_fields, src, meta))
    _connect_sinks(workflow, inputnode, outputnode, sinks, dict.fromkeys(sinks, "metadata"))
    return workflow


def _merge_meta(a: dict, b: dict) -> dict:
    return {**a, **b}


def init_statmap_derivatives_wf(
    *,
    bids_dir: Path,
    output_dir: Path,
    pet_source: str,
    t1w_source: str,
    desc: str,
    random_seed: int,
    deterministic: bool,
    output_spaces: list[str],
    name: str = "hypometabolism_derivatives_wf",
) -> Workflow:
    """Write a statistic map (``layout.STATS``: ``desc`` and its ``stat``), its cluster label maps
    (MNI, T1w) and cluster table of one PET in ``output_spaces`` into ``output_dir``
    (inputs: ``STAT_OUTPUTS``)."""
    from .hypometabolism import STAT_OUTPUTS

    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=STAT_OUTPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    src = _pet_sources(bids_dir, pet_source, t1w_source)
    meta = _common_meta(random_seed, deterministic)
    merge_meta = pe.Node(
        niu.Function(function=_merge_meta, output_names=["out"]), name="merge_meta"
    )
    workflow.connect(
        [(inputnode, merge_meta, [("stat_metadata", "a"), ("cluster_metadata", "b")])]
    )
    sinks = {}
    for space, tag in (("T1w", "t1w"), (TEMPLATE_SPACE, "std")):
        if space not in output_spaces:
            continue
        sinks[f"stat_{tag}"] = _sink(
            output_dir,
            f"ds_stat_{tag}",
            space=space,
            **L.sink_entities("statmap", desc),
            compress=True,
            **src,
            **meta,
        )
        sinks[f"dseg_{tag}"] = _sink(
            output_dir,
            f"ds_dseg_{tag}",
            space=space,
            **L.sink_entities("dseg", desc),
            compress=True,
            data_dtype="int16",
            **src,
            **meta,
        )
    sinks["clusters_tsv"] = _sink(
        output_dir,
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
