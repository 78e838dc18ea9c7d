"""The participant and group runs of ``petsynth`` (called by ``cli/run.py`` and
``petsynth-train``): inputs, run plan, workflow, reports, each once.

Both runs execute inside ``threads.thread_limits(settings.omp_nthreads)``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from . import __version__
from .config import Settings
from .errors import PetSynthError, print_error
from .plan import RunPlan, resolve_device, resolve_plan
from .threads import thread_limits

LOGGER = logging.getLogger("petsynth")


def new_run_id() -> str:
    """``<date>-<time>-<random>``: unique even for array jobs starting in the same second."""
    import uuid

    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_participant(settings: Settings) -> int:
    """Validate inputs, resolve the run plan, build and run the participant workflow;
    1 if any unit failed or was skipped, ``QC_FAIL_EXIT`` with ``--qc-fail-exit`` when a
    QC check failed (and nothing else did)."""
    from . import bids as pbids

    if settings.reports_only:
        raise PetSynthError(
            "--reports-only is a group-level option (it rewrites group/report.html); "
            "participant reports are rewritten by rerunning with the same -w"
        )
    check_writable(settings)
    use_template_cache(settings)
    from . import uptodate

    requested = uptodate.requested_subjects(settings)
    fresh = uptodate.up_to_date(settings, requested)
    for subject in fresh:
        LOGGER.info(
            "sub-%s: finished, and no input, option, model or output changed since: not "
            "rerun (remove sub-%s.html or use a new work folder to run it again)",
            subject,
            subject,
        )
    fresh_qc = uptodate.recorded_qc(settings, fresh)
    if fresh and set(fresh) == set(requested):
        return summarize_run(settings, [], [], [], 0, [], fresh_qc, up_to_date=fresh)
    # The modality checks run in worker processes, started (ANTs imported, templates made)
    # while this process indexes the dataset, validates it, loads the model and looks up
    # reusable derivatives; errors are printed and raised in the same order as before.
    checks = ModalityChecks(settings.nprocs, len(set(requested) - set(fresh)))
    try:
        valid, errors, n_units = find_units(settings)
        checks.submit(valid)
        official, per_file = _official_validation(settings)
        plan = plan_error = found = None
        try:
            plan = resolve_plan(settings)  # refuses bad models before anything is written
        except PetSynthError as exc:
            plan_error = exc
        else:
            found = lookup_reuse(settings, valid, plan)
        good, refused, warnings = screen_units(valid, checks.results())
    finally:
        checks.close()
    errors.extend(refused)
    if fresh:
        n_units -= sum(u.subject in fresh for u in good)
        good = [u for u in good if u.subject not in fresh]
        if not good:  # the others could not be run at all
            for err in errors:
                print_error(err)
            return summarize_run(settings, [], [], errors, n_units, [], fresh_qc, up_to_date=fresh)
    if not settings.skip_bids_validation:
        from .inputcheck import skip_invalid_sidecars

        # an error in a participant's files skips that participant only
        good, invalid = skip_invalid_sidecars(good, per_file, settings.bids_dir)
        errors.extend(invalid)
        kept = {u.name for u in good}
        warnings = [w for w in warnings if w.unit in kept or w.unit == "run"]
    for err in [*errors, *official]:
        print_error(err)
    if official:
        raise PetSynthError(
            f"the input dataset is not valid BIDS ({len(official)} bids-validator error(s) "
            "above); nothing was written (--skip-bids-validation to run anyway)"
        )
    if not good:
        raise PetSynthError("no participant has usable inputs; nothing was written")
    if plan_error is not None:
        raise plan_error
    plan, good, reuse_errors = resolve_reuse(settings, good, plan, found)
    for err in reuse_errors:
        print_error(err)
    errors.extend(reuse_errors)
    if not good:
        raise PetSynthError("no participant has usable inputs; nothing was written")
    uptodate.forget(settings, sorted({u.subject for u in good}))
    run_id = new_run_id()
    log_dir = settings.output_dir / "logs"
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(settings.output_dir)
    settings_file = write_settings(settings, plan, log_dir / f"config-{run_id}.toml")
    description = pbids.write_derivative_description(
        settings.bids_dir, settings.output_dir, container=_container_info()
    )
    if settings.derivatives:
        from .reuse import add_dataset_links, dataset_links

        add_dataset_links(description, dataset_links(settings.derivatives))
    LOGGER.info(
        "PetSynth %s: %d unit(s) to process on device %s (nprocs=%d, omp_nthreads=%d)",
        __version__,
        len(good),
        plan.device,
        settings.nprocs,
        plan.omp_nthreads,
    )
    # A report marks a finished participant whose outputs it shows: the first derivative
    # a run changes removes it (interfaces/bids.py), as do changed input warnings, and it
    # is written again once the participant has finished. A rerun that changes nothing
    # keeps it (and its run id).
    warnings = save_input_warnings(settings, plan, good, warnings, run_id)

    from .reports.background import SubjectReports
    from .workflows.base import init_petsynth_wf, run_workflow, unit_wf_name

    # reports are written in worker processes as each subject finishes (depth-first
    # scheduling makes subjects finish in order); the rest after the graph, in parallel
    reports = SubjectReports(
        settings.output_dir,
        {unit_wf_name(u): u.subject for u in good},
        {s: _of_subject(warnings, s) for s in {u.subject for u in good}},
        run_id,
        settings_file,
        workers=settings.nprocs,
    )
    # ITK reads its thread count once per process: set before any worker starts
    try:
        with thread_limits(plan.omp_nthreads):
            wf = init_petsynth_wf(settings, good, plan)
            failed = run_workflow(
                wf,
                settings,
                run_id,
                on_unit_done=reports.unit_done,
                on_start=reports.warm_up,
                on_step_done=reports.step_done,
            )
    except BaseException:
        reports.close()
        raise
    for name, message in failed:
        print_error(PetSynthError(f"{name} failed: {message}"))
    _write_citation(wf, log_dir)

    failed_names = {name for name, _ in failed}
    done_subjects = {u.subject for u in good} if "workflow" not in failed_names else set()
    for unit in good:  # a subject is done when all its sessions are
        if unit.name in failed_names:
            done_subjects.discard(unit.subject)
    annotate_outputs(settings, [u for u in good if u.subject not in done_subjects], warnings)
    reported = reports.finish(sorted(done_subjects))
    from .analysis import qc

    qc_failed = {  # computed by the report workers, except for reports kept as they were
        s: reports.qc_failed[s]
        if s in reports.qc_failed
        else qc.failed_checks(settings.output_dir, s)
        for s in sorted(done_subjects)
    }
    uptodate.record_finished(settings, [s for s in reported if s in done_subjects], qc_failed)
    return summarize_run(
        settings,
        good,
        failed,
        errors,
        n_units,
        sorted(done_subjects),
        {**qc_failed, **fresh_qc},
        up_to_date=fresh,
    )


QC_FAIL_EXIT = 3
"""Exit code of a participant run whose units all finished but failed a QC check, with
``--qc-fail-exit`` (1 stays the code of failed or skipped units)."""


def _official_validation(settings: Settings) -> tuple[list, dict]:
    """The official BIDS validator's run-stopping errors and its errors by participant
    file (``validator.validate_dataset``); nothing with ``--skip-bids-validation``."""
    if settings.skip_bids_validation:
        return [], {}
    from .validator import validate_dataset

    return validate_dataset(settings.bids_dir)


def check_writable(settings: Settings) -> None:
    """One-line PetSynthError when the output or work folder cannot be written (checked
    on the folder or, if it does not exist yet, on its first existing parent)."""
    for what, folder in (("output", settings.output_dir), ("work", settings.work_dir)):
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise PetSynthError(f"the {what} folder path is not a directory", str(probe))
        try:  # a real write: os.access is wrong for root, ACLs and read-only mounts
            import tempfile

            with tempfile.NamedTemporaryFile(dir=probe, prefix=".petsynth-probe-"):
                pass
        except OSError as exc:
            raise PetSynthError(
                f"the {what} folder is not writable ({exc.strerror or exc})"
                + ("" if probe == Path(folder) else f"; cannot create {folder}"),
                str(probe),
            ) from None


def use_template_cache(settings: Settings) -> None:
    """Keep the templates made from nilearn's files in ``<work dir>/templates`` for this
    process and the workers it starts (``preproc.templates.CACHE_DIR_ENV``)."""
    from .preproc.templates import CACHE_DIR_ENV

    os.environ[CACHE_DIR_ENV] = str(Path(settings.work_dir) / "templates")


def collect_units(settings: Settings) -> tuple[list, list[PetSynthError], int, list]:
    """The units to process, the errors of those that cannot be (each names its file),
    the number of units asked for (processed + skipped) and the named input warnings of
    the usable units (``inputcheck.py``). A sidecar that is not valid JSON skips its
    participant only. (``find_units``, then ``screen_units`` with the modality checks.)"""
    valid, errors, n_units = find_units(settings)
    good, refused, warnings = screen_units(valid, _modality_checks_all(valid, settings.nprocs))
    return good, errors + refused, n_units, warnings


def find_units(settings: Settings) -> tuple[list, list[PetSynthError], int]:
    """The units whose files are usable (before the modality checks), the errors of those
    that are not (each names its file) and the number of units asked for."""
    from . import bids as pbids
    from . import inputcheck

    bad_json = inputcheck.invalid_sidecars(settings.bids_dir) if settings.bids_dir.is_dir() else {}
    layout = pbids.load_layout(
        settings.bids_dir,
        validate=not settings.skip_bids_validation,
        ignore=inputcheck.ignore_patterns(bad_json, settings.bids_dir),
    )
    units, errors = pbids.collect_inputs(
        layout, settings.participant_label, settings.session_label, settings.bids_filters
    )
    n_units = len(units) + len(errors)  # errors so far: requested units that were not found
    units, json_errors = inputcheck.skip_invalid_sidecars(units, bad_json, settings.bids_dir)
    errors.extend(json_errors)
    valid = []
    for unit in units:
        problems = pbids.validate_inputs(unit)
        if problems:
            errors.extend(  # "<file>: sub-01 skipped: <problem>", as every skip
                PetSynthError(f"{unit.name} skipped: {p.message}", p.path) for p in problems
            )
        else:
            valid.append(unit)
    return valid, errors, n_units


def screen_units(valid: list, results: list) -> tuple[list, list[PetSynthError], list]:
    """The ``valid`` units the modality checks (``results``: one result or exception per
    unit, ``modality_checks``) did not refuse, the refusals and the named input warnings
    of the kept units (``inputcheck.py``)."""
    from . import inputcheck

    good, errors, warnings = [], [], []
    for unit, checked in zip(valid, results, strict=True):
        if isinstance(checked, Exception):  # a check must never stop a usable unit
            LOGGER.warning("%s: modality check failed: %s", unit.name, checked)
            refused, notes = None, []
        else:
            refused, notes = checked
        if refused is not None:
            errors.append(refused)
            continue
        warnings += notes
        good.append(unit)
        if unit.ignored_t1w:  # also in the report and sidecars, not only in the log
            ignored = ", ".join(Path(p).name for p in unit.ignored_t1w)
            warnings.append(
                inputcheck.InputWarning(
                    unit.name, unit.t1w, f"several T1w images: using this one, ignoring {ignored}"
                )
            )
        try:
            warnings += inputcheck.unit_warnings(unit)
        except Exception as exc:  # noqa: BLE001 - a check must never stop a usable unit
            LOGGER.warning("%s: input checks failed: %s", unit.name, exc)
    return good, errors, warnings


MODALITY_POOL_MIN_UNITS = 4
"""From this many units on, the modality checks (~3-4 s each at 1 mm, one ANTs affine
per image) run in ``nprocs`` worker processes instead of one after another."""


def _checked(unit):
    try:
        return modality_checks(unit)
    except Exception as exc:  # noqa: BLE001 - reported by the caller, per unit
        return exc


CLOSE_GRACE_S = 2.0
"""Seconds ``ModalityChecks.close`` waits for a terminated worker before it kills it."""


class ModalityChecks:
    """:func:`modality_checks` of units, in ``spawn`` worker processes when ``nprocs`` >= 2
    (one, or ``nprocs`` when ``expected`` units number ``MODALITY_POOL_MIN_UNITS`` or
    more), else in this process when ``results`` is called. The workers start at once and
    import ANTs and make the 4 mm templates (``modality.warm_up``) while the main process
    goes on (indexing, validation, model weights, reuse lookup: docs/benchmarks.md,
    issue 17); ``submit`` hands them the units.

    ``spawn``, not the forkserver: a forkserver started now would keep this environment
    for Nipype's workers, which must see the one ``run_workflow`` sets up (thread
    counts, ``interrupt.ignore_sigint_in_workers``). The workers ignore SIGINT; a Ctrl-C
    stops them with the run (``interrupt.handle_interrupts``). Each worker runs ITK on one
    thread, so that a worker's features are the same run after run (ANTs on 2 threads
    gives WM/GM ratios 0.01 apart: floating-point reduction order)."""

    def __init__(self, nprocs: int, expected: int) -> None:
        self.units: list = []
        self._pool = None
        self._futures: list = []
        if int(nprocs) < 2 or expected < 1:
            return
        from .interrupt import spawn_pool
        from .preproc.modality import warm_up

        workers = min(int(nprocs), expected) if expected >= MODALITY_POOL_MIN_UNITS else 1
        self._pool = spawn_pool(workers, {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
        for _ in range(workers):  # each submission starts one more worker
            self._pool.submit(warm_up)

    def submit(self, units: list) -> None:
        """Check ``units`` (in the workers, if any)."""
        self.units = list(units)
        if self._pool is not None:
            self._futures = [self._pool.submit(_checked, u) for u in self.units]

    def results(self) -> list:
        """One result (or the exception raised) per unit, in order; waits for them."""
        if self._pool is None:
            return [_checked(u) for u in self.units]
        out = []
        for future in self._futures:
            try:
                out.append(future.result())
            except Exception as exc:  # noqa: BLE001 - a broken worker: per unit
                out.append(exc)
        self.close()
        return out

    def close(self) -> None:
        """Stop the workers; those still busy (the run stopped before it needed the
        results) are terminated (killed after ``CLOSE_GRACE_S``), so that the process
        does not wait for them at exit."""
        if self._pool is None:
            return
        busy = []
        if not all(f.done() for f in self._futures) or not self._futures:
            busy = list((getattr(self._pool, "_processes", None) or {}).values())
            for proc in busy:
                proc.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        for proc in busy:  # SIGTERM can wait on a loaded machine (>10 s seen): then SIGKILL
            proc.join(CLOSE_GRACE_S)
            if proc.is_alive():
                proc.kill()
                proc.join(CLOSE_GRACE_S)


def _modality_checks_all(units: list, nprocs: int) -> list:
    """:func:`modality_checks` of every unit (its result, or the exception it raised), in
    ``nprocs`` processes for ``MODALITY_POOL_MIN_UNITS`` units or more."""
    nprocs = nprocs if len(units) >= MODALITY_POOL_MIN_UNITS else 1
    checks = ModalityChecks(nprocs, len(units))
    checks.submit(units)
    return checks.results()


def modality_checks(unit) -> tuple[PetSynthError | None, list]:
    """Does the unit's T1w look like a T1w and its PET like an FDG PET
    (``preproc/modality.py``)? Returns the error that skips the unit (a 'T1w' with the
    contrast of a PET; the message says so when the PET looks like a T1w: swapped files)
    or None, and the named warnings of what is only suspect."""
    import nibabel as nib

    from . import inputcheck
    from .preproc import modality

    t1w = modality.modality_features(nib.load(unit.t1w))
    LOGGER.debug("%s: %s: %s", unit.name, unit.t1w, t1w)
    refuse, warn = modality.t1w_findings(t1w)
    notes = [inputcheck.InputWarning(unit.name, unit.t1w, warn)] if warn else []
    for pet in unit.pet:
        features = modality.modality_features(nib.load(pet.path))
        LOGGER.debug("%s: %s: %s", unit.name, pet.path, features)
        if note := modality.pet_findings(features):
            notes.append(inputcheck.InputWarning(unit.name, pet.path, note))
    if refuse is None:
        return None, notes
    if any(w.path != unit.t1w for w in notes):
        refuse += "; its PET looks like a T1w: were the T1w and PET swapped?"
    return PetSynthError(f"{unit.name} skipped: {refuse}", unit.t1w), []


def save_input_warnings(
    settings: Settings, plan: RunPlan, units: list, warnings: list, run_id: str
) -> list:
    """Add the run's model warnings, log every warning once and save each participant's
    (with the run's) next to its derivatives; returns all warnings."""
    from . import inputcheck
    from . import layout as L
    from .synthesis.weights import default_weights

    warnings = inputcheck.model_warnings(
        plan.card,
        plan.weights,
        default_weights(),
        settings.bids_dir,
        units,
        settings.mni_resolution,
    ) + list(warnings)
    inputcheck.log_warnings(warnings)
    for subject in sorted({u.subject for u in units}):
        path = L.input_warnings_file(settings.output_dir, subject)
        before = inputcheck.read_warnings(path)
        inputcheck.save_warnings(_of_subject(warnings, subject), path, run_id)
        if inputcheck.read_warnings(path) != before:  # the report shows them: write it anew
            (settings.output_dir / f"sub-{subject}.html").unlink(missing_ok=True)
    return warnings


def annotate_outputs(settings: Settings, units: list, warnings: list) -> None:
    """Copy each participant's input warnings into its stat-map, cluster-table and
    pseudo-normal PET sidecars (``InputWarnings``)."""
    from . import inputcheck

    for subject in sorted({u.subject for u in units}):
        folder = settings.output_dir / f"sub-{subject}"
        inputcheck.annotate_sidecars(folder, _of_subject(warnings, subject))


def _of_subject(warnings: list, subject: str) -> list:
    """The run's warnings and those of a participant's units."""
    return [w for w in warnings if w.unit == "run" or w.unit.split("_")[0] == f"sub-{subject}"]


def summarize_run(
    settings: Settings,
    units: list,
    failed: list[tuple[str, str]],
    errors: list[PetSynthError],
    n_units: int,
    done_subjects: list[str],
    qc_of: dict[str, dict[str, list[str]]],
    up_to_date: list[str] = (),
) -> int:
    """Log the final summary (units finished of those asked for, the QC checks each
    finished unit failed, ``qc_of`` by subject as ``qc.failed_checks`` gives them,
    participants ``up_to_date`` that were not rerun) and return the exit code."""
    n_ok = len(units) - len({name for name, _ in failed if name != "workflow"})
    if any(name == "workflow" for name, _ in failed):
        n_ok = 0
    qc_failed = {unit: checks for by_unit in qc_of.values() for unit, checks in by_unit.items()}
    for unit, checks in qc_failed.items():
        LOGGER.warning("QC failed for %s: %s", unit, "; ".join(checks))
    LOGGER.info(
        "finished: %d of %d unit(s) succeeded; %d skipped, %d failed%s; QC: %s",
        n_ok,
        n_units,
        n_units - len(units),
        len(units) - n_ok,
        f"; {len(up_to_date)} participant(s) up to date, not rerun" if up_to_date else "",
        f"{len(qc_failed)} unit(s) with failed checks (listed above)"
        if qc_failed
        else f"all checks passed ({len(done_subjects) + len(up_to_date)} participant(s))",
    )
    if failed or errors:
        return 1
    if qc_failed and settings.qc_fail_exit:
        return QC_FAIL_EXIT
    return 0


def lookup_reuse(settings: Settings, units: list, plan: RunPlan) -> dict | PetSynthError:
    """Each unit's reusable anatomical and PET derivatives (``--derivatives``,
    ``reuse.py``) by unit name: a ``reuse.ReusedAnat``, or the PetSynthError of derivatives
    that do not match its raw T1w; the PetSynthError of an unusable ``--derivatives``
    folder instead of a dict. Nothing is logged (``resolve_reuse`` does)."""
    if not settings.derivatives:
        return {}
    from . import reuse
    from .synthesis.inputs import card_representation, needs_registration_stages

    try:
        layouts = reuse.load_derivatives(settings.derivatives)
    except PetSynthError as exc:
        return exc
    # the reused transforms give T1w <-> MNI only, not the registration stages
    transforms = not plan.synthesis or not needs_registration_stages(
        card_representation(dict(plan.card))
    )
    found: dict = {}
    for unit in units:
        try:
            reused = reuse.find_anat(
                layouts, unit.subject, unit.session, unit.t1w, transforms, plan.mni_resolution
            )
        except PetSynthError as exc:
            found[unit.name] = exc
            continue
        for pet in unit.pet:  # PETPrep's reference + PET -> T1w transform, per series
            reuse.find_pet(layouts, reused, unit.session, pet.path, unit.t1w)
        found[unit.name] = reused
    return found


def resolve_reuse(
    settings: Settings, units: list, plan: RunPlan, found: dict | PetSynthError | None = None
) -> tuple[RunPlan, list, list]:
    """Log what each unit reuses (``lookup_reuse``, done here unless ``found`` holds its
    result for these units); returns the plan with the reused files, the units that can
    run, and one error per unit whose derivatives do not match its raw T1w (that unit is
    skipped)."""
    if not settings.derivatives:
        return plan, units, []
    import dataclasses
    from types import MappingProxyType

    if found is None:
        found = lookup_reuse(settings, units, plan)
    if isinstance(found, PetSynthError):
        raise found
    reused_of, kept, errors = {}, [], []
    for unit in units:
        reused = found[unit.name]
        if isinstance(reused, PetSynthError):
            errors.append(PetSynthError(f"{unit.name} skipped: {reused}"))
            continue
        for note in reused.notes:
            LOGGER.warning("%s", note)
        LOGGER.info("%s", reused.summary())
        reused_of[unit.name] = reused
        kept.append(unit)
    return dataclasses.replace(plan, reused=MappingProxyType(reused_of)), kept, errors


def write_settings(settings: Settings, plan: RunPlan, path: Path) -> Path:
    """The run's settings with what the plan resolved (weights and normative model
    folder, saved as ``model_weights`` and ``normative_model``)."""
    import dataclasses

    resolved = {"model_weights": plan.weights} if plan.weights else {}
    if plan.normative_dir is not None:
        resolved["normative_model"] = plan.normative_dir
    return dataclasses.replace(settings, **resolved).to_toml(path)


def _write_citation(wf, log_dir: Path) -> None:
    """Methods boilerplate collected from the workflows' descriptions."""
    from .boilerplate import write_citation

    try:
        write_citation(log_dir, "participant", wf.visit_desc())
    except Exception as exc:  # the boilerplate must never fail a run
        LOGGER.warning("could not write the methods boilerplate: %s", exc)


def run_group(settings: Settings) -> int:
    """Group level: control normative models and synthesis quality (needs finished
    participant outputs)."""
    out = settings.output_dir
    if not (out / "dataset_description.json").is_file():
        raise PetSynthError(
            "no participant-level outputs found; run the participant level first", str(out)
        )
    reports = sorted(out.glob("sub-*.html"))
    if not reports:
        raise PetSynthError("no finished participant (no sub-*.html report)", str(out))
    if settings.reports_only:
        write_group_report(settings)
        return 0
    from .group import run_group_level

    settings.to_toml(out / "logs" / f"config-group-{new_run_id()}.toml")
    use_template_cache(settings)
    with thread_limits(settings.omp_nthreads):
        code = run_group_level(settings)
    write_group_report(settings)
    return code


def write_group_report(settings: Settings) -> None:
    """``<out>/group/report.html``, with the detection curve when the BIDS dataset carries
    ground truth (``derivatives/truth/lesions.tsv``, as simulated cohorts do)."""
    from .atomicio import locked
    from .reports.group_report import write_group_report as write

    truth = settings.bids_dir / "derivatives" / "truth"
    # parallel participant runs each refresh it: one at a time
    with locked(settings.output_dir / "logs" / ".group-report.lock"):
        report = write(settings.output_dir, truth if (truth / "lesions.tsv").is_file() else None)
    LOGGER.info("group report: %s", report)


def _remove_stale_temporaries(output_dir: Path) -> None:
    """Temporary files of killed runs (``atomicio``); young ones may be another running
    participant's, and stay."""
    from .atomicio import remove_stale_temporaries

    if n := remove_stale_temporaries(output_dir):
        LOGGER.info("removed %d temporary file(s) left by interrupted runs", n)


def _container_info() -> dict | None:
    kind = os.environ.get("PETSYNTH_CONTAINER")
    if not kind:
        return None
    return {"Type": kind, "Tag": os.environ.get("PETSYNTH_CONTAINER_TAG", __version__)}


__all__ = [
    "QC_FAIL_EXIT",
    "check_writable",
    "use_template_cache",
    "ModalityChecks",
    "collect_units",
    "find_units",
    "lookup_reuse",
    "modality_checks",
    "screen_units",
    "new_run_id",
    "resolve_device",
    "run_group",
    "run_participant",
    "write_group_report",
]
