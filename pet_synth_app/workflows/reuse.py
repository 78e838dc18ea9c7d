"""Plug reused derivatives (``reuse.py``) into built anatomical and PET workflows.

The anatomical workflow is built as usual (``anatomical.init_anat_preproc_wf``); each
step whose outputs are all reused is then taken out: the files are set as inputs of the
nodes that read that step's outputs, the step node is removed, and every node left with
nothing to feed is pruned (e.g. the template priors when the segmentation is reused).
The PET workflow (``pet.init_pet_preproc_wf``) likewise loses its frame average and
coregistration when PETPrep's reference and PET -> T1w transform are reused
(``apply_pet_reuse``).
"""

from __future__ import annotations

from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.anat import ApplyTransforms, TemplateFiles
from ..interfaces.bids import DerivativesDataSink
from ..interfaces.pet import AntsAffine, PETCoverage
from ..reuse import ReusedAnat, ReusedPET

REUSED_METHOD = "reused"
"""``BrainExtractionMethod`` of a reused brain mask."""
STAGE_FIELDS = (
    "t1w2affine_xfm",
    "affine2t1w_xfm",
    "affine2std_warp",
    "std2affine_warp",
    "affine2std_xfm",
    "std2affine_xfm",
    "logjac_std",
    "t1w_affine",
    "mask_affine",
)
"""Outputs of the anatomical workflow that only the registration node makes (absent when
the transforms are reused)."""
_STEP_NODES = {
    "N4": [("n4", {"out_file": "t1w"})],
    "skull stripping": [("skullstrip", {"out_mask": "mask"})],
    "segmentation": [("segment", {"gm": "gm", "wm": "wm", "csf": "csf"})],
    "registration": [
        ("register", {"composite": "t1w2std_xfm", "inverse_composite": "std2t1w_xfm"})
    ],
    "template resampling": [
        ("t1w_to_std", {"out_file": "t1w_std"}),
        ("mask_to_std", {"out_file": "mask_std"}),
        ("gm_to_std", {"out_file": "gm_std"}),
    ],
}
"""Per reused step, the nodes it takes out and, per node, which output field is which
reused file (``reuse.ROLES``)."""
_KEEP = ("inputnode", "outputnode")


def _substitute(wf: Workflow, node: pe.Node, values: dict[str, object]) -> None:
    """Set ``values`` (output field -> value) on every reader of ``node``'s outputs and
    drop those connections."""
    graph = wf._graph
    for _, dst, data in list(graph.out_edges(node, data=True)):
        keep = []
        for src, dst_field in data["connect"]:
            if isinstance(src, str) and src in values:
                dst.set_input(dst_field, values[src])
            else:
                keep.append((src, dst_field))
        if keep:
            data["connect"] = keep
        else:
            graph.remove_edge(node, dst)


def _remove_downstream(wf: Workflow, node: pe.Node) -> None:
    """Remove ``node`` and every node fed by it (the outputnode loses those fields)."""
    graph = wf._graph
    todo = [node]
    while todo:
        cur = todo.pop()
        if cur not in graph:
            continue
        for dst in list(graph.successors(cur)):
            if dst.name not in _KEEP:
                todo.append(dst)
        graph.remove_node(cur)


def _prune(wf: Workflow) -> None:
    """Remove nodes whose outputs nothing reads (sinks excepted)."""
    graph = wf._graph
    while True:
        dead = [
            n
            for n in graph.nodes
            if n.name not in _KEEP
            and graph.out_degree(n) == 0
            and not isinstance(getattr(n, "interface", None), DerivativesDataSink)
        ]
        if not dead:
            return
        graph.remove_nodes_from(dead)


def apply_anat_reuse(anat_wf: Workflow, found: ReusedAnat) -> list[str]:
    """Replace the steps of ``anat_wf`` whose outputs ``found`` provides; returns the
    outputnode fields that are no longer produced (``STAGE_FIELDS`` when the transforms
    are reused, else none)."""
    missing: list[str] = []
    for step in found.skipped_steps:
        for name, fields in _STEP_NODES[step]:
            node = anat_wf.get_node(name)
            values = {out: found.files[role] for out, role in fields.items()}
            if step == "skull stripping":
                values["method"] = REUSED_METHOD
            _substitute(anat_wf, node, values)
            if step == "registration":
                _remove_downstream(anat_wf, node)
                missing = list(STAGE_FIELDS)
            elif node in anat_wf._graph:
                anat_wf._graph.remove_node(node)
    _prune(anat_wf)
    _write_used_templates(anat_wf)
    anat_wf.__desc__ = (anat_wf.__desc__ or "") + (
        f"\nThe {', '.join(found.skipped_steps)} outputs were not computed but reused from "
        "earlier derivatives (`--derivatives`, e.g. sMRIPrep/fMRIPrep).\n"
    )
    return missing


def _write_used_templates(wf: Workflow) -> None:
    """Let each template node left in ``wf`` write only the images something still reads
    (all five take seconds at 1 mm; e.g. only the T1w grid is read once the
    segmentation priors and the brain mask are reused)."""
    graph = wf._graph
    for node in list(graph.nodes):
        if not isinstance(getattr(node, "interface", None), TemplateFiles):
            continue
        used = {
            src
            for _, _, data in graph.out_edges(node, data=True)
            for src, _ in data["connect"]
            if isinstance(src, str)
        }
        node.inputs.kinds = [k for k in ("t1w", "mask", "gm", "wm", "csf") if k in used]


def _rewire(wf: Workflow, node: pe.Node, sources: dict[str, tuple[pe.Node, str]]) -> None:
    """Feed the readers of ``node``'s outputs from ``sources`` (output field -> (node,
    field)) instead, drop its other links to the outputnode, and remove ``node``."""
    links = [
        (src, dst, dst_field)
        for _, dst, data in wf._graph.out_edges(node, data=True)
        for src, dst_field in data["connect"]
    ]
    wf._graph.remove_node(node)
    for src, dst, dst_field in links:
        if src in sources:
            wf.connect(*sources[src], dst, dst_field)
        elif dst.name != "outputnode":
            raise RuntimeError(f"{node.name}.{src} feeds {dst.name}: no reused value")


def apply_pet_reuse(pet_wf: Workflow, found: ReusedPET) -> None:
    """Replace the frame average and the coregistration of ``pet_wf`` by PETPrep's PET
    reference and PET -> T1w transform (``found.files``): the reference is the mean PET,
    the transform (converted to an ANTs ``.mat``) goes wherever the computed one went, and
    the PET on the T1w grid is resampled through it."""
    ref = found.files["pet_ref"]
    xfm = pe.Node(AntsAffine(in_file=found.files["pet2t1w_xfm"]), name="reused_pet2t1w_xfm")
    to_t1w = pe.Node(
        ApplyTransforms(in_file=ref, out_name="pet_space-T1w.nii.gz"), name="pet_to_t1w"
    )
    pet_wf.connect(
        [
            (pet_wf.get_node("inputnode"), to_t1w, [("t1w_brain", "reference")]),
            (xfm, to_t1w, [("out_file", "transforms")]),
        ]
    )
    avg = pet_wf.get_node("frame_average")
    _substitute(pet_wf, avg, {"out_file": ref})  # its motion estimates are not written
    # the field of view of the raw series (on the reference's grid, checked by reuse.py),
    # without per-frame motion: PETPrep's frame transforms are not reused
    coverage = pe.Node(PETCoverage(), name="reused_pet_coverage")
    pet_wf.connect(pet_wf.get_node("inputnode"), "pet_file", coverage, "in_file")
    _rewire(pet_wf, avg, {"coverage_file": (coverage, "out_file")})
    _rewire(
        pet_wf,
        pet_wf.get_node("coregister"),
        {"out_xfm": (xfm, "out_file"), "out_file": (to_t1w, "out_file")},
    )
    pet_wf.__desc__ = (pet_wf.__desc__ or "") + (
        "\nThe PET reference and its PET-to-T1w transform were not computed but reused "
        "from PETPrep derivatives (`--derivatives`); the reference stood for the frame "
        "average.\n"
    )


def drop_sinks(ds_wf: Workflow, fields: list[str]) -> None:
    """Remove the sinks ``ds_<field>`` of a derivatives workflow (outputs not produced)."""
    for f in fields:
        node = ds_wf.get_node(f"ds_{f}")
        if node is not None:
            ds_wf._graph.remove_node(node)


def add_sources(wf: Workflow, uris: list[str]) -> None:
    """Append ``uris`` to the ``Sources`` of every DerivativesDataSink inside ``wf``."""
    for node in _all_nodes(wf):
        iface = getattr(node, "interface", None)
        if isinstance(iface, DerivativesDataSink):
            meta = iface._metadata
            meta["Sources"] = list(meta.get("Sources", [])) + [
                u for u in uris if u not in meta.get("Sources", [])
            ]


def _all_nodes(wf: Workflow):
    for node in wf._graph.nodes:
        if isinstance(node, Workflow):
            yield from _all_nodes(node)
        else:
            yield node


__all__ = [
    "REUSED_METHOD",
    "STAGE_FIELDS",
    "add_sources",
    "apply_anat_reuse",
    "apply_pet_reuse",
    "drop_sinks",
]
