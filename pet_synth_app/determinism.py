"""``--deterministic``: the same inputs, options and image give bit-identical outputs.

What differs between two runs otherwise is the order of floating-point sums in
multithreaded code: ITK's metric sampling in the ANTs registrations, torch's and BLAS's
thread pools (docs/benchmarks.md, "Two identical runs"). Every random step is already
seeded from ``--random-seed`` (ANTs ``--random-seed``, ``torch.manual_seed`` and
``numpy.random.default_rng`` in the models). The switch adds the rest:

- one thread per process for ITK, torch, OpenMP and BLAS (``Settings`` sets
  ``omp_nthreads = 1``; ``--nprocs`` still runs steps in parallel processes);
- torch's deterministic algorithms (``torch.use_deterministic_algorithms``), in the
  main process and, through ``PETSYNTH_DETERMINISTIC=1``, in every Nipype worker that runs
  a torch step (``apply_in_process``);
- a fixed ``PYTHONHASHSEED`` for the worker processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .threads import restore_environ

ENV = "PETSYNTH_DETERMINISTIC"


def apply_in_process() -> bool:
    """Switch torch to deterministic algorithms in this process if the run asked for it
    (``PETSYNTH_DETERMINISTIC=1``); True if it did."""
    if os.environ.get(ENV) != "1":
        return False
    import torch

    torch.use_deterministic_algorithms(True)
    return True


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[bool]:
    """Inside the block (when ``enabled``), this process and the worker processes started
    in it use deterministic algorithms; restored on exit."""
    if not enabled:
        yield False
        return
    keys = (ENV, "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({ENV: "1", "PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield True
    finally:
        torch.use_deterministic_algorithms(before)
        restore_environ(saved)


__all__ = ["ENV", "apply_in_process", "deterministic_mode"]
