"""Ctrl-C and ``kill``: stop a run at once, cleanly, so that a rerun resumes it.

``handle_interrupts()`` wraps a participant or group run. On the first SIGINT or SIGTERM
it kills the run's child processes (the Nipype workers, the ANTs child processes) with
SIGKILL, before they can report half-finished steps as failures, and raises
``Interrupted`` in the main thread. ``cli/common.guarded`` turns it into one line and
the exit code ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). Nothing after the
interrupted step runs, so no participant report marks an unfinished participant as
done; every output is written atomically (``atomicio``), so what is on disk is either
complete or absent, and Nipype reruns only the unfinished steps when the same work
directory is used again (docs/usage.md, "Interrupting and resuming").

The Nipype workers are started by a ``forkserver`` that ignores SIGINT
(``ignore_sigint_in_workers``): a Ctrl-C sent to the whole process group reaches only
the main process, which then stops them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(signal.Signals(signum).name)


def descendants(pid: int | None = None) -> list[int]:
    """Process ids of all descendants of ``pid`` (default: this process), read from
    ``/proc`` (Linux; elsewhere an empty list)."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def kill_descendants(sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every descendant process except multiprocessing's resource
    tracker (it removes the shared-memory files when this process exits); returns how
    many were signalled."""
    n = 0
    for pid in descendants():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in cmdline:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            n += 1
    return n


def ignore_sigint_in_workers() -> None:
    """Start multiprocessing's forkserver now with SIGINT ignored: the workers it forks
    (Nipype's MultiProc pool) inherit that, so a Ctrl-C to the process group does not
    make each of them print a traceback and report its step as failed."""
    import multiprocessing.forkserver as fs

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        fs.ensure_running()
    finally:
        signal.signal(signal.SIGINT, before)


def worker_pool(workers: int):
    """A ``ProcessPoolExecutor`` of ``workers`` forkserver processes that ignore SIGINT
    (:func:`ignore_sigint_in_workers`): the main process handles a Ctrl-C, as for
    Nipype's workers."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ignore_sigint_in_workers()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))


def _start_worker(env: dict[str, str]) -> None:
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn_pool(workers: int, env: dict[str, str] | None = None):
    """A ``ProcessPoolExecutor`` of ``workers`` ``spawn`` processes that ignore SIGINT and
    start with ``env`` added to their environment (e.g. ITK's thread count, read once at
    ITK's first use): for work that starts before ``run_workflow`` has set up the
    environment that a forkserver (:func:`worker_pool`) would keep for Nipype's workers
    (the modality checks, ``runner.ModalityChecks``)."""
    import functools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=functools.partial(_start_worker, dict(env or {})),
    )


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Inside the block, SIGINT/SIGTERM kill the child processes and raise
    ``Interrupted`` (once: further signals are ignored while the run unwinds)."""

    def handler(signum, frame):
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        # the process pool's thread reports its killed workers (BrokenProcessPool): quiet
        logging.getLogger("concurrent.futures").disabled = True
        kill_descendants()
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


__all__ = [
    "Interrupted",
    "descendants",
    "handle_interrupts",
    "ignore_sigint_in_workers",
    "kill_descendants",
]
