"""Progress of a running participant workflow in the log (nodes finished / total,
elapsed time), as a Nipype plugin ``status_callback``."""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("petsynth")


class Progress:
    """Counts the workflow's nodes as they finish (cached ones included) and logs
    ``progress: 12 of 40 steps finished (30 %), 3 running, elapsed 2 min 5 s, last:
    <unit>.<step>`` at most every ``every_s`` seconds, and every failure at once.

    A line is logged when a step *starts* (and once when the last step finishes): at the
    end of a step the scheduler has not yet started the steps that were waiting for it, so
    a line logged then said "0 running" while the next steps were about to run (always so
    with the Linear plugin and along a chain of steps)."""

    def __init__(self, workflow, every_s: float = 30.0, clock=time.monotonic) -> None:
        nodes = workflow._get_all_nodes() if hasattr(workflow, "_get_all_nodes") else []
        self.total = len(nodes)  # their fullnames are not unique before the run
        self.prefix = f"{getattr(workflow, 'name', '')}."
        self.done: set[str] = set()
        self.running: set[str] = set()
        self.last = ""  # the step that finished last
        self.every_s = every_s
        self.clock = clock
        self.start = clock()
        self.last_log = -float("inf")

    def __call__(self, node, status: str) -> None:
        name = getattr(node, "fullname", str(node)).removeprefix(self.prefix)
        if status == "start":
            self.running.add(name)
        else:
            self.running.discard(name)
            if status == "exception":
                LOGGER.warning(
                    "progress: step %s failed (%s elapsed)", _short(name), self.elapsed()
                )
                return
            if status == "end":
                self.last = name
                if not name.split(".")[-1].startswith("_"):  # no MapNode parts
                    self.done.add(name)
        now = self.clock()
        finished = len(self.done) >= self.total and not self.running
        if finished or (status == "start" and now - self.last_log >= self.every_s):
            self.last_log = now
            LOGGER.info("%s", self.line(self.last))

    def elapsed(self) -> str:
        s = int(self.clock() - self.start)
        return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"

    def line(self, last: str = "") -> str:
        """The progress line (what is logged)."""
        total = max(self.total, len(self.done))
        pct = 100 * len(self.done) // max(total, 1)
        return (
            f"progress: {len(self.done)} of {total} steps finished ({pct} %), "
            f"{len(self.running)} running, elapsed {self.elapsed()}"
            + (f", last: {_short(last)}" if last else "")
        )


def _short(fullname: str) -> str:
    """``petsynth_wf.single_subject_01_wf.anat_preproc_wf.n4`` -> ``sub-01 n4``."""
    parts = fullname.split(".")
    unit = next((p for p in parts if p.startswith("single_subject_")), "")
    unit = unit.removeprefix("single_subject_").removesuffix("_wf").replace("_ses_", "_ses-")
    return (f"sub-{unit} " if unit else "") + parts[-1]


__all__ = ["Progress"]
