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

    def __init__(
        self,
        workflow,
        every_s: float = 30.0,
        clock=time.monotonic,
        on_unit_done=None,
        on_step_done=None,
    ) -> None:
        nodes = workflow._get_all_nodes() if hasattr(workflow, "_get_all_nodes") else []
        self.total = sum(map(_executes, nodes))  # fullnames are not unique before the run
        self.prefix = f"{getattr(workflow, 'name', '')}."
        # steps per unit workflow (single_subject_*): ``on_unit_done(name)`` when all ended
        graph = getattr(workflow, "_graph", None)
        children = list(graph.nodes()) if graph is not None else []
        self.unit_total = {
            c.name: sum(map(_executes, c._get_all_nodes()))
            for c in children
            if c.name.startswith("single_subject_") and hasattr(c, "_get_all_nodes")
        }
        self.unit_ended: dict[str, set[str]] = {u: set() for u in self.unit_total}
        self.on_unit_done = on_unit_done
        self.on_step_done = on_step_done  # ``on_step_done(name)`` as each step ends
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
                    self._step_ended(name)
                    self._unit_step_ended(name)
        now = self.clock()
        finished = len(self.done) >= self.total and not self.running
        if finished or (status == "start" and now - self.last_log >= self.every_s):
            self.last_log = now
            LOGGER.info("%s", self.line(self.last))

    # Nipype hands the plugin arguments (this callback among them) to every MapNode, which
    # it deep-copies and pickles for the workers: copies share this object in the main
    # process, and a worker's pickled copy gets no ``on_unit_done`` (the report writer
    # holds a process pool, which cannot be pickled).
    def __deepcopy__(self, memo: dict) -> Progress:
        return self

    def __getstate__(self) -> dict:
        return {**self.__dict__, "on_unit_done": None, "on_step_done": None}

    def _step_ended(self, name: str) -> None:
        if self.on_step_done is None:
            return
        try:
            self.on_step_done(name)
        except Exception as exc:  # never stop the scheduler
            LOGGER.warning("step callback failed after %s: %s", _short(name), exc)

    def _unit_step_ended(self, name: str) -> None:
        unit = name.split(".")[0]
        ended = self.unit_ended.get(unit)
        if ended is None or len(ended) >= self.unit_total[unit]:
            return
        ended.add(name)
        if len(ended) == self.unit_total[unit] and self.on_unit_done is not None:
            try:
                self.on_unit_done(unit)
            except Exception as exc:  # never stop the scheduler; the run writes it at the end
                LOGGER.warning("could not start the report of %s: %s", unit, exc)

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


def _executes(node) -> bool:
    """False for the nodes Nipype removes before running (IdentityInterface, not joins)."""
    from nipype.interfaces.utility import IdentityInterface

    return not (
        isinstance(getattr(node, "interface", None), IdentityInterface)
        and not hasattr(node, "joinsource")
    )


def _short(fullname: str) -> str:
    """``petsynth_wf.single_subject_01_wf.anat_preproc_wf.n4`` -> ``sub-01 n4``."""
    parts = fullname.split(".")
    unit = next((p for p in parts if p.startswith("single_subject_")), "")
    unit = unit.removeprefix("single_subject_").removesuffix("_wf").replace("_ses_", "_ses-")
    return (f"sub-{unit} " if unit else "") + parts[-1]


__all__ = ["Progress"]
