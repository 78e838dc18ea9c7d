"""Top-level workflows: one sub-workflow per (subject, session) unit."""

from __future__ import annotations

import gc
import logging
import os
import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from .. import atomicio
from ..bids import SubjectInputs
from ..config import Settings
from ..plan import RunPlan, resolve_plan
from ..reuse import pet_source_uris, source_uris
from .anatomical import init_anat_preproc_wf
from .anomaly import init_anomaly_wf
from .hypometabolism import (
    PET_STAT_INPUTS,
    STAT_INPUTS,
    STAT_OUTPUTS,
    init_controlpet_wf,
    init_hypometabolism_wf,
)
from .outputs import (
    ANAT_DERIVATIVES_INPUTS,
    init_anat_derivatives_wf,
    init_pet_derivatives_wf,
    init_statmap_derivatives_wf,
    init_synthesis_derivatives_wf,
)
from .pet import init_pet_preproc_wf
from .reuse import add_sources, apply_anat_reuse, apply_pet_reuse, drop_sinks
from .synthesis import SYNTHESIS_INPUTS, init_synthesis_wf

LOGGER = logging.getLogger("petsynth")
POLL_SLEEP_S = 0.1


def unit_wf_name(unit: SubjectInputs) -> str:
    """Nipype-safe workflow name of a unit (`single_subject_<sub>[_ses_<ses>]_wf`)."""
    name = f"single_subject_{unit.subject}" + (f"_ses_{unit.session}" if unit.session else "")
    return re.sub(r"[^A-Za-z0-9_]", "_", name) + "_wf"


def _pet_wf_name(path: str) -> str:
    stem = Path(path).name.split(".")[0]
    stem = re.sub(r"^sub-[^_]+(_ses-[^_]+)?", "", stem).removesuffix("_pet").strip("_")
    return "pet_" + (re.sub(r"[^A-Za-z0-9]", "_", stem) or "main") + "_wf"


def init_petsynth_wf(
    settings: Settings, units: list[SubjectInputs], plan: RunPlan | None = None
) -> Workflow:
    """The whole participant-level graph. ``plan``: the run's resolved inputs
    (``runner.run_participant`` resolves and checks them once; default: resolved here
    from ``settings`` without the checks, for building a graph).

    With ``init_single_subject_wf`` the only factory that reads ``Settings`` and the
    ``RunPlan``: the sub-workflow factories take the values they use as keyword
    arguments (docs/architecture.md)."""
    if plan is None:
        plan = resolve_plan(settings, check=False, device="cpu")
    workflow = Workflow(name="petsynth_wf")
    workflow.base_dir = str(settings.work_dir)
    for unit in units:
        workflow.add_nodes([init_single_subject_wf(unit, settings, plan)])
    return workflow


def init_single_subject_wf(unit: SubjectInputs, settings: Settings, plan: RunPlan) -> Workflow:
    """Anatomical + PET preprocessing, pseudo-normal PET and derivatives of one unit.
    Reads ``settings`` and ``plan`` and hands each sub-workflow the values it uses."""
    workflow = Workflow(name=unit_wf_name(unit))
    workflow.__desc__ = (
        "\nResults included in this manuscript come from preprocessing performed with "
        "PetSynth, a BIDS-App built on Nipype [@nipype], NiWorkflows [@niworkflows] and "
        "PyTorch [@pytorch].\n"
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    inputnode.inputs.t1w = unit.t1w
    sinks = {  # where and how every derivatives sink writes
        "bids_dir": settings.bids_dir,
        "output_dir": settings.output_dir,
        "random_seed": settings.random_seed,
        "deterministic": settings.deterministic,
    }
    clusters = {"min_cluster_mm3": settings.min_cluster_mm3, "cluster_rank": settings.cluster_rank}
    anat_wf = init_anat_preproc_wf(
        omp_nthreads=plan.omp_nthreads,
        registration_preset=settings.registration_preset,
        brain_extraction=settings.brain_extraction,
        mni_resolution=plan.mni_resolution,
        random_seed=settings.random_seed,
        device=plan.device,
    )
    anat_ds = init_anat_derivatives_wf(
        **sinks, t1w_source=unit.t1w, registration_preset=settings.registration_preset
    )
    workflow.connect(inputnode, "t1w", anat_wf, "inputnode.t1w")
    reused = plan.reused.get(unit.name)
    absent = apply_anat_reuse(anat_wf, reused) if reused and reused.skipped_steps else []
    drop_sinks(anat_ds, absent)
    for f in ANAT_DERIVATIVES_INPUTS:
        if f not in absent:
            workflow.connect(anat_wf, f"outputnode.{f}", anat_ds, f"inputnode.{f}")

    if plan.synthesis:
        synth_wf = init_synthesis_wf(plan)
        synth_ds = init_synthesis_derivatives_wf(
            **sinks,
            t1w_source=unit.t1w,
            output_spaces=settings.output_spaces,
            synthesis_samples=plan.synthesis_samples,
        )
        workflow.connect(
            [
                (
                    anat_wf,
                    synth_wf,
                    [(f"outputnode.{f}", f"inputnode.{f}") for f in SYNTHESIS_INPUTS],
                ),
                (
                    synth_wf,
                    synth_ds,
                    [
                        ("outputnode.pseudo_std", "inputnode.pseudo_std"),
                        ("outputnode.pseudo_t1w", "inputnode.pseudo_t1w"),
                        ("outputnode.metadata", "inputnode.metadata"),
                    ],
                ),
            ]
        )
        if plan.synthesis_samples > 1:
            workflow.connect(
                [
                    (
                        synth_wf,
                        synth_ds,
                        [
                            ("outputnode.pseudo_sd_std", "inputnode.pseudo_sd_std"),
                            ("outputnode.pseudo_sd_t1w", "inputnode.pseudo_sd_t1w"),
                        ],
                    )
                ]
            )

    for pet in unit.pet:
        pet_wf = init_pet_preproc_wf(
            frame_durations=pet.frame_durations,
            reference_region=settings.reference_region,
            omp_nthreads=plan.omp_nthreads,
            random_seed=settings.random_seed,
            name=_pet_wf_name(pet.path),
        )
        pet_wf.inputs.inputnode.pet_file = pet.path
        pet_reused = reused.pet.get(pet.path) if reused else None
        if pet_reused and pet_reused.reused:  # PETPrep's reference + PET -> T1w transform
            apply_pet_reuse(pet_wf, pet_reused)
        pet_ds = init_pet_derivatives_wf(
            **sinks,
            pet_source=pet.path,
            t1w_source=unit.t1w,
            output_spaces=settings.output_spaces,
            name=_pet_wf_name(pet.path) + "_derivatives",
        )
        workflow.connect(
            [
                (
                    anat_wf,
                    pet_wf,
                    [
                        ("outputnode.t1w_brain", "inputnode.t1w_brain"),
                        ("outputnode.t1w2std_xfm", "inputnode.t1w2std_xfm"),
                        ("outputnode.std_ref", "inputnode.std_ref"),
                        ("outputnode.gm_std", "inputnode.gm_std"),
                        ("outputnode.mask_std", "inputnode.mask_std"),
                    ],
                ),
                (
                    pet_wf,
                    pet_ds,
                    [
                        ("outputnode.pet_t1w", "inputnode.pet_t1w"),
                        ("outputnode.pet_std", "inputnode.pet_std"),
                        ("outputnode.pet2t1w_xfm", "inputnode.pet2t1w_xfm"),
                        ("outputnode.suvr_metadata", "inputnode.suvr_metadata"),
                        ("outputnode.coverage_std", "inputnode.coverage_std"),
                        ("outputnode.coverage_t1w", "inputnode.coverage_t1w"),
                        ("outputnode.coverage_metadata", "inputnode.coverage_metadata"),
                    ],
                ),
            ]
        )
        stat_wfs = []
        if plan.synthesis:
            hypo_wf = init_hypometabolism_wf(
                normative=plan.normative_dir,
                weights_sha256=plan.weights_sha256,
                histogram_matching=settings.histogram_matching,
                z_threshold=settings.z_threshold,
                z_model_variance=settings.z_model_variance,
                z_fwhm=settings.z_fwhm,
                **clusters,
                name=_pet_wf_name(pet.path) + "_hypo",
            )
            workflow.connect(synth_wf, "outputnode.pseudo_std", hypo_wf, "inputnode.pseudo_std")
            if settings.z_model_variance:
                workflow.connect(
                    synth_wf, "outputnode.pseudo_sd_std", hypo_wf, "inputnode.pseudo_sd_std"
                )
            stat_wfs.append((hypo_wf, "hypometabolism"))
        if plan.normative_dir is not None:
            controlpet_wf = init_controlpet_wf(
                normative=plan.normative_dir,
                z_threshold=settings.z_threshold,
                z_fwhm=settings.z_fwhm,
                **clusters,
                name=_pet_wf_name(pet.path) + "_controlpet",
            )
            stat_wfs.append((controlpet_wf, "controlpet"))
        if plan.detector_dir is not None:
            anomaly_wf = init_anomaly_wf(
                model=str(plan.detector_dir),
                participant_id=f"sub-{unit.subject}",
                omp_nthreads=plan.omp_nthreads,
                ocsvm_threshold=settings.ocsvm_threshold,
                **clusters,
                name=_pet_wf_name(pet.path) + "_anomaly",
            )
            stat_wfs.append((anomaly_wf, "ocsvm"))
        for stat_wf, desc in stat_wfs:
            stat_ds = init_statmap_derivatives_wf(
                **sinks,
                pet_source=pet.path,
                t1w_source=unit.t1w,
                desc=desc,
                output_spaces=settings.output_spaces,
                name=f"{stat_wf.name}_derivatives",
            )
            for field in STAT_INPUTS:
                source = pet_wf if field in PET_STAT_INPUTS else anat_wf
                workflow.connect(source, f"outputnode.{field}", stat_wf, f"inputnode.{field}")
            for field in STAT_OUTPUTS:
                workflow.connect(stat_wf, f"outputnode.{field}", stat_ds, f"inputnode.{field}")
            if pet_reused and pet_reused.reused:
                add_sources(stat_ds, pet_source_uris(pet_reused))
        if pet_reused and pet_reused.reused:
            add_sources(pet_ds, pet_source_uris(pet_reused))
    if reused and reused.files:
        add_sources(workflow, source_uris(reused))
    return workflow


def _plugin(settings: Settings) -> tuple[str, dict]:
    """Nipype plugin name and arguments. ``--mem-mb`` becomes MultiProc's ``memory_gb``
    and, for the SLURM plugins, ``--mem=<MB>M`` in every step's ``sbatch_args``; values
    set in a ``--use-plugin`` YAML win."""
    if settings.use_plugin:
        import yaml

        spec = yaml.safe_load(Path(settings.use_plugin).read_text()) or {}
        plugin = spec.get("plugin", "MultiProc")
        return plugin, _with_memory(plugin, dict(spec.get("plugin_args", {}) or {}), settings)
    if settings.nprocs == 1:
        return "Linear", {}
    # forkserver: forking a parent that holds torch/ITK thread pools can deadlock workers
    args = {"n_procs": settings.nprocs, "raise_insufficient": False, "mp_context": "forkserver"}
    return "MultiProc", _with_memory("MultiProc", args, settings)


def _with_memory(plugin: str, args: dict, settings: Settings) -> dict:
    """``args`` with ``settings.mem_mb`` (MB) as the plugin's memory limit, unless set."""
    if not settings.mem_mb:
        return args
    if plugin in ("MultiProc", "LegacyMultiProc"):
        args.setdefault("memory_gb", settings.mem_mb / 1024)
    elif plugin in ("SLURM", "SLURMGraph"):
        sbatch = str(args.get("sbatch_args", "") or "")
        if not re.search(r"(^|\s)--mem(-per-cpu|-per-gpu)?[=\s]", sbatch):
            args["sbatch_args"] = f"{sbatch} --mem={settings.mem_mb}M".strip()
    return args


def execution_config(settings: Settings, crash_dir: Path) -> dict[str, str]:
    """Nipype [execution] settings of a run (strings, as Nipype's config stores them)."""
    return {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": str(settings.stop_on_first_crash).lower(),
        # keep every output: with `true` the node hashes include the node's needed
        # outputs (which depend on the graph) and unused output files are deleted
        "remove_unnecessary_outputs": "false",
        "check_version": "false",
        "parameterize_dirs": "false",
        "get_linked_libs": "false",
        # the scheduler polls; its 2 s default costs ~2 s per dependency link
        # (minutes per participant with ~40 short steps in a chain)
        "poll_sleep_duration": str(POLL_SLEEP_S),
    }


def configure_nipype(settings: Settings, crash_dir: Path) -> None:
    """Nipype execution settings: crash files, resume, no version checks, log levels."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    level = "INFO" if settings.verbose >= 1 else "WARNING"
    ncfg.update_config(
        {
            "logging": {
                "workflow_level": level,
                "interface_level": level,
                "utils_level": level,
                "log_to_file": False,
            },
            "execution": execution_config(settings, crash_dir),
            "monitoring": {"enabled": False},
        }
    )
    nlogging.update_logging(ncfg)
    # forkserver workers start fresh and read $NIPYPE_CONFIG_DIR/nipype.cfg: same levels there
    cfg_dir = Path(settings.work_dir)
    cfg_dir.mkdir(parents=True, exist_ok=True)
    atomicio.write_text(  # parallel runs may share the work dir
        cfg_dir / "nipype.cfg",
        "[logging]\n"
        f"workflow_level = {level}\ninterface_level = {level}\nutils_level = {level}\n"
        "[execution]\ncheck_version = false\n",
    )
    os.environ["NIPYPE_CONFIG_DIR"] = str(cfg_dir)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False  # nipype has its own handler


def run_workflow(
    workflow: Workflow,
    settings: Settings,
    run_id: str,
    on_unit_done=None,
    on_start=None,
    on_step_done=None,
) -> list[tuple[str, str]]:
    """Run the graph; return [(unit workflow name, one-line reason)] of failed units.
    ``on_unit_done(unit workflow name)`` is called when all steps of a unit have ended;
    ``on_start()`` once the workers' forkserver runs with the run's environment, just
    before the first step; ``on_step_done(name)`` as each step ends."""
    crash_dir = settings.output_dir / "logs" / f"crash-{run_id}"
    configure_nipype(settings, crash_dir)
    # The workflow copied the global config when it was built, and its copy wins over the
    # global one when it runs (the nodes get the workflow's). Built before configure_nipype
    # (the first run in a process) it holds Nipype's defaults, e.g.
    # remove_unnecessary_outputs = true, which puts the node's needed outputs into its
    # hash; built after it (a later run.main in the same process) it holds ours. Same
    # inputs, two hashes: every node reran. Put all our execution settings in its copy.
    workflow.config["execution"].update(execution_config(settings, crash_dir))
    plugin, args = _plugin(settings)
    if args.get("mp_context") == "forkserver":  # after configure_nipype: workers read its env
        from ..interrupt import ignore_sigint_in_workers

        ignore_sigint_in_workers()
    if on_start is not None:
        on_start()
    from .progress import Progress

    # "progress: n of N steps" lines; the reports follow the steps
    progress = Progress(workflow, on_unit_done=on_unit_done, on_step_done=on_step_done)
    args = {**args, "status_callback": progress}
    runner = plugin
    if plugin == "MultiProc" and not settings.use_plugin:  # participants finish in order
        from .scheduler import ParticipantOrderMultiProcPlugin

        units = [n.name for n in workflow._graph.nodes() if n.name.startswith("single_subject_")]
        runner = ParticipantOrderMultiProcPlugin(plugin_args={**args, "unit_order": units})
    # MultiProc calls gc.collect() every time it submits steps. A full collection walks
    # every object of this process (the graph, pybids' index, ...): 0.3-0.5 s each, which
    # the scheduler spends instead of starting the next step (~0.5 s per step over a
    # 16-participant run, docs/benchmarks.md "Cohort scale"). Objects that exist before
    # the run are moved out of the collector's reach; later garbage is still collected.
    gc.collect()
    gc.freeze()
    try:
        workflow.run(plugin=runner, plugin_args=args)
    except RuntimeError as exc:
        failed = failed_units(crash_dir)
        if not failed:
            return [("workflow", " ".join(str(exc).split()))]
        return failed
    finally:
        gc.unfreeze()
    return []


def failed_units(crash_dir: Path) -> list[tuple[str, str]]:
    """Parse Nipype crash files: [(unit, 'node <name>: <exception>; see <crashfile>')]."""
    out: dict[str, str] = {}
    for crash in sorted(Path(crash_dir).glob("crash-*.txt")):
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, re.M)
        node_name = node.group(1) if node else "?"
        unit = re.search(r"single_subject_(\w+?)_wf", node_name)
        unit_name = "sub-" + unit.group(1).replace("_ses_", "_ses-") if unit else node_name
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        exc_lines = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
        reason = exc_lines[-1] if exc_lines else (lines[-1] if lines else "unknown error")
        out.setdefault(unit_name, f"step {node_name.split('.')[-1]}: {reason[:300]} (see {crash})")
    return sorted(out.items())
