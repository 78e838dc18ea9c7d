"""Thread counts: torch, ITK and the BLAS/OpenMP pools are set here and nowhere else.

Every entry point (``petsynth`` participant and group levels, ``petsynth-train``) runs
inside the context manager ``thread_limits(n)``, and so does every step that picks its
own count (synthesis, the siamese autoencoder, the OC-SVM solver and scorer). Inside it,
the environment variables that ITK, OpenMP and BLAS read when they start are set for the
child processes and the pools already loaded are limited; on exit all is restored. The
preprocessing steps that run ANTs in a Nipype worker set their process's count with
``set_process_threads`` (ITK reads it once per process; a step that needs another count
runs in a child process: ``preproc/anat.py``).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

ENV_VARS = (
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)
WAIT_POLICY = "OMP_WAIT_POLICY"
"""Set to ``PASSIVE`` (unless the user set it) for the processes started inside
``thread_limits``: with ``--nprocs 2`` and 2 threads per step, 4 threads share 2 cores,
and OpenMP's default spin-waiting made torch steps 50x slower on a loaded machine (the
pseudo-normal PET of a 2 mm subject: 140-216 s against ~3 s; docs/benchmarks.md)."""


def default_threads(nprocs: int, omp_nthreads: int = 0) -> int:
    """Threads per process: ``omp_nthreads``, else ``min(nprocs, 8)``."""
    return int(omp_nthreads) if omp_nthreads else min(int(nprocs), 8)


@contextmanager
def thread_limits(n: int | None, env: bool = True) -> Iterator[int | None]:
    """torch (if imported), BLAS/OpenMP pools and, with ``env``, the variables of
    ``ENV_VARS`` on ``n`` threads inside the block (``None``: leave all as is)."""
    if n is None:
        yield None
        return
    n = max(1, int(n))
    saved_env = {k: os.environ.get(k) for k in (*ENV_VARS, WAIT_POLICY)} if env else {}
    if env:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
        for key in ENV_VARS[1:]:
            os.environ[key] = str(n)
        os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    torch = sys.modules.get("torch")  # importing torch only to set it would be slow
    torch_before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        pools = threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pools = None
    try:
        yield n
    finally:
        if pools is not None:
            pools.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(torch_before)
        restore_environ(saved_env)


def _single_threaded_worker() -> None:
    """Pool-thread initializer: torch's intra-op count of this thread (OpenMP's
    per-thread setting, MKL) at 1 before its first operation."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@contextmanager
def worker_pool(n: int | None) -> Iterator[ThreadPoolExecutor | None]:
    """``n`` Python worker threads that each run torch (and BLAS) single-threaded, for
    steps made of many independent pieces of work (the OC-SVM detector's encoding and
    solver: ``analysis.anomaly.fit``). Inside the block the process's torch/BLAS pools
    are on 1 thread; yields None when ``n`` is None or 1 (run serially; with ``None``
    the thread settings are left as they are).

    Why: torch's own intra-op threads synchronise at every operation; on the group
    fit's small operations 2 of them kept ~1.2 cores busy, and on a busy machine they
    spent up to 5x the CPU time waiting. Independent pieces on single-threaded workers
    keep ``n`` cores busy, and each piece is computed as a single-threaded call computes
    it, whichever worker runs it (the group fit's results equal those of the serial,
    single-threaded path bit for bit: tests/test_anomaly.py; 2 intra-op threads agree to
    ~1e-7, bit for bit only on some CPUs: GEMM reduction order)."""
    if n is None:
        yield None
        return
    n = max(1, int(n))
    with thread_limits(1, env=False):
        if n == 1:
            yield None
            return
        pool = ThreadPoolExecutor(
            n, thread_name_prefix="petsynth-worker", initializer=_single_threaded_worker
        )
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put back environment variables saved as ``{name: value or None (was unset)}``."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def set_process_threads(n_threads: int | None = None) -> int:
    """Set ITK and torch thread counts of this process (a preprocessing step in a Nipype
    worker, ``preproc/anat.py``); return the count in force.

    ``None`` keeps ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` if set, else all CPUs. ITK only
    honours the variable if it is set before ITK's first use in the process.
    """
    if n_threads is None:
        env = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "")
        n = int(env) if env.strip().isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    else:
        n = max(1, int(n_threads))
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n)
    torch = sys.modules.get("torch")  # only touch torch if it is in use (import is slow)
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def with_thread_limits(param: str) -> Callable:
    """Decorator: run the function inside ``thread_limits(<its argument param>,
    env=False)`` (a function that takes its thread count as an argument)."""

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with thread_limits(bound.arguments[param], env=False):
                return func(*args, **kwargs)

        return wrapper

    return decorate


__all__ = [
    "ENV_VARS",
    "default_threads",
    "restore_environ",
    "set_process_threads",
    "thread_limits",
    "with_thread_limits",
    "worker_pool",
]
