"""Participant reports written as participants finish, in worker processes, while the
workflow runs on (docs/architecture.md, "Running").

The workflow's progress callback (``workflows/progress.Progress``) calls
``SubjectReports.unit_done`` when every step of a unit (subject or subject/session)
has finished; once all units of a subject are done, its sidecars are annotated with the
run's input warnings and ``sub-<label>.html`` is written in a ``forkserver`` process (the
same server as the Nipype workers, which ignores SIGINT). ``finish`` writes the reports
the callback did not trigger (e.g. ``--nprocs 1`` runs whose callback missed a step)
and waits for all of them. A subject with a failed unit never gets one: the report still
marks a finished participant. A report that still exists when its subject finishes is
kept: every derivative write removes its participant's report first
(``interfaces/bids.py``), so it still shows the outputs on disk. ``warm_up`` starts the
report workers and imports the report's modules (matplotlib, nilearn: ~1.5 s) while the
graph runs, so that the last participant's report, on the run's critical path, does not
wait for them; ``step_done`` has the same worker compute a participant's registration QC
(``prefetch_qc``, kept by ``analysis.qc``'s memo) as soon as its template-space T1w and
mask are written, while its PET steps run.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

LOGGER = logging.getLogger("petsynth")


def write_one(
    output_dir: Path, subject: str, warnings: list, run_id: str, settings_file: Path
) -> tuple[str, dict[str, list[str]]]:
    """Annotate ``sub-<subject>``'s sidecars with its input ``warnings`` and write its
    report; returns the log line (run in a worker process, logged by the parent) and the
    QC checks its units failed (``analysis.qc.failed_checks``), so that the run's summary
    does not compute them again in the main process."""
    import time

    from .. import inputcheck
    from ..analysis import qc
    from .subject import write_subject_report

    t0 = time.perf_counter()
    inputcheck.annotate_sidecars(Path(output_dir) / f"sub-{subject}", warnings)
    path = write_subject_report(Path(output_dir), subject, run_id, Path(settings_file))
    failed = qc.failed_checks(Path(output_dir), subject)
    return f"report {path.name} written in {time.perf_counter() - t0:.1f} s", failed


PREFETCH_AFTER = ("ds_t1w_std", "ds_mask_std")
"""Steps (sinks of the template-space T1w and brain mask) after which a participant's
registration QC can be computed (``prefetch_qc``)."""


def prefetch_qc(output_dir: Path, subject: str) -> int:
    """Compute the registration QC of the participant's units now, in this report worker
    (``qc.unit_registration_qc`` keeps it for the report, keyed by the files' identities);
    returns the number of units."""
    from ..analysis import qc

    units = qc.unit_dirs(Path(output_dir), subject)
    for unit in units:
        qc.unit_registration_qc(*qc.anat_of(unit, subject))
    return len(units)


def import_report_modules() -> bool:
    """Import what :func:`write_one` needs (run in a report worker by ``warm_up``)."""
    from .. import inputcheck  # noqa: F401
    from ..analysis import qc  # noqa: F401
    from .subject import write_subject_report  # noqa: F401

    return True


class SubjectReports:
    """Writes each subject's report once all of its ``units`` (``{unit workflow name:
    subject}``) are done; at most ``workers`` at a time."""

    def __init__(
        self,
        output_dir: Path,
        units: dict[str, str],
        warnings_of: dict[str, list],
        run_id: str,
        settings_file: Path,
        workers: int = 1,
    ) -> None:
        self.output_dir, self.run_id, self.settings_file = output_dir, run_id, settings_file
        self.units = dict(units)
        self.warnings_of = warnings_of
        self.pending: dict[str, set[str]] = {}
        for unit, subject in self.units.items():
            self.pending.setdefault(subject, set()).add(unit)
        self.workers = max(1, workers)
        self.futures: dict[str, Future] = {}
        self.unchanged: set[str] = set()
        self.qc_failed: dict[str, dict[str, list[str]]] = {}
        """Failed QC checks of the subjects whose report was written (``finish``)."""
        self._pool: ProcessPoolExecutor | None = None
        self.warming: list[Future] = []
        self.prefetching: dict[str, Future] = {}
        self._sinks: dict[str, set[str]] = {}

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:  # the report workers ignore a Ctrl-C, as Nipype's do
            from ..interrupt import worker_pool

            self._pool = worker_pool(self.workers)
        return self._pool

    def warm_up(self) -> None:
        """Start the report workers and import the report's modules in them now (call it
        once the forkserver runs with the run's environment: ``run_workflow``'s
        ``on_start``). One worker per subject to report, at most ``workers``; nothing
        with one worker (``--nprocs 1``: the graph's only core)."""
        if self.workers < 2:
            return
        pool = self._get_pool()
        self.warming = [
            pool.submit(import_report_modules) for _ in range(min(self.workers, len(self.pending)))
        ]

    def step_done(self, name: str) -> None:
        """Progress callback of each ended step (``<unit workflow>.<...>.<step>``): once a
        unit's ``PREFETCH_AFTER`` steps have ended, its participant's registration QC is
        computed in the (warmed) report worker; not with one worker."""
        unit, _, rest = name.partition(".")
        subject = self.units.get(unit)
        step = rest.rsplit(".", 1)[-1]
        if subject is None or step not in PREFETCH_AFTER or self.workers < 2:
            return
        ended = self._sinks.setdefault(unit, set())
        ended.add(step)
        if ended >= set(PREFETCH_AFTER) and subject not in self.prefetching:
            self.prefetching[subject] = self._get_pool().submit(
                prefetch_qc, self.output_dir, subject
            )

    def _submit(self, subject: str) -> None:
        if subject in self.futures or subject in self.unchanged:
            return
        if (Path(self.output_dir) / f"sub-{subject}.html").is_file():
            # no derivative of this subject changed (a changed one removes the report)
            self.unchanged.add(subject)
            LOGGER.info("report sub-%s.html kept: no output of this participant changed", subject)
            return
        self.futures[subject] = self._get_pool().submit(
            write_one,
            self.output_dir,
            subject,
            self.warnings_of.get(subject, []),
            self.run_id,
            self.settings_file,
        )
        self.futures[subject].add_done_callback(_log_result)

    def unit_done(self, unit: str) -> None:
        """Progress callback: all steps of ``unit`` (a workflow name) have finished."""
        subject = self.units.get(unit)
        if subject is None:
            return
        self.pending[subject].discard(unit)
        if not self.pending[subject]:
            self._submit(subject)

    def finish(self, done_subjects: list[str]) -> list[str]:
        """Write the reports of ``done_subjects`` not written yet, wait for all, shut the
        workers down; the subjects whose report was written."""
        for subject in done_subjects:
            self._submit(subject)
        written = []
        for subject, future in self.futures.items():
            try:
                self.qc_failed[subject] = future.result()[1]
                written.append(subject)
            except Exception as exc:  # a report must never fail the run
                LOGGER.warning("report of sub-%s not written: %s", subject, exc)
        if self._pool is not None:
            self._pool.shutdown()
        return sorted(set(written) | self.unchanged)

    def close(self) -> None:
        """Stop without waiting (an interrupted or failed run)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _log_result(future: Future) -> None:
    if not future.cancelled() and future.exception() is None:
        LOGGER.info("%s", future.result()[0])


__all__ = ["SubjectReports", "write_one"]
