"""Participant-ordered (depth-first) MultiProc scheduling (docs/architecture.md, "Running").

Nipype's MultiProc hands ready steps to free workers in the topological order of the
flattened graph, which interleaves participants (breadth-first): in a 16-participant run no
participant finishes until nearly all of them do. ``ParticipantOrderMultiProc`` hands out
the ready steps of the earliest participant first (then the next, ...), so participants
finish one after another while both cores stay busy with whatever is ready. Within a
participant, the steps that head its longest chain (``LONG_POLE_STEPS``: the PET frame
average and coregistration, ~10 s at 1 mm, followed by SUVR, Z maps and clusters) go
before the other ready steps (derivative sinks, synthesis), so that the chain does not
wait for steps nothing waits for."""

from __future__ import annotations

import re

from nipype.pipeline.plugins.multiproc import MultiProcPlugin

_UNIT = re.compile(r"(?:^|\.)(single_subject_\w+?_wf)(?:\.|$)")

LONG_POLE_STEPS = ("frame_average", "coregister")
"""Step names (last part of the node name) handed out first among a participant's ready
steps: the head of the PET chain, the longest one when the anatomy is reused
(docs/benchmarks.md, issue 17). Nipype runs nodes whose results exist without a worker,
so a cached rerun is unaffected."""


def unit_of(fullname: str) -> str | None:
    """The unit workflow (``single_subject_<sub>[_ses_<ses>]_wf``) a step belongs to."""
    match = _UNIT.search(fullname)
    return match.group(1) if match else None


def participant_order(fullnames: list[str], units: list[str]) -> list[int]:
    """Indices of ``fullnames`` (ready steps in graph order) sorted by the position of
    their unit in ``units`` (steps of no unit first); within a unit the
    ``LONG_POLE_STEPS`` first, then graph order."""
    rank = {u: i for i, u in enumerate(units)}

    def key(i: int) -> tuple[int, int, int]:
        unit = unit_of(fullnames[i])
        pole = fullnames[i].rsplit(".", 1)[-1] in LONG_POLE_STEPS
        return (rank.get(unit, -1) if unit else -1, 0 if pole else 1, i)

    return sorted(range(len(fullnames)), key=key)


class ParticipantOrderMultiProcPlugin(MultiProcPlugin):
    """MultiProc that prefers the ready steps of earlier participants (``unit_order``:
    unit workflow names, first = most urgent)."""

    def __init__(self, plugin_args: dict | None = None) -> None:
        args = dict(plugin_args or {})
        self.unit_order: list[str] = list(args.pop("unit_order", []))
        super().__init__(plugin_args=args)

    def _sort_jobs(self, jobids, scheduler="tsort"):  # noqa: ANN001 - Nipype's signature
        jobids = list(super()._sort_jobs(jobids, scheduler=scheduler))
        names = [self.procs[j].fullname for j in jobids]
        return [jobids[i] for i in participant_order(names, self.unit_order)]


__all__ = ["LONG_POLE_STEPS", "ParticipantOrderMultiProcPlugin", "participant_order", "unit_of"]
