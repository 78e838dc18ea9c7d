"""Participant-ordered (depth-first) MultiProc scheduling (docs/architecture.md, "Running").

Nipype's MultiProc hands ready steps to free workers in the topological order of the
flattened graph, which interleaves participants (breadth-first): in a 16-participant run no
participant finishes until nearly all of them do. ``ParticipantOrderMultiProc`` hands out
the ready steps of the earliest participant first (then the next, ...), so participants
finish one after another while both cores stay busy with whatever is ready."""

from __future__ import annotations

import re

from nipype.pipeline.plugins.multiproc import MultiProcPlugin

_UNIT = re.compile(r"(?:^|\.)(single_subject_\w+?_wf)(?:\.|$)")


def unit_of(fullname: str) -> str | None:
    """The unit workflow (``single_subject_<sub>[_ses_<ses>]_wf``) a step belongs to."""
    match = _UNIT.search(fullname)
    return match.group(1) if match else None


def participant_order(fullnames: list[str], units: list[str]) -> list[int]:
    """Indices of ``fullnames`` (ready steps in graph order) sorted by the position of
    their unit in ``units`` (steps of no unit first), keeping graph order within a unit."""
    rank = {u: i for i, u in enumerate(units)}

    def key(i: int) -> tuple[int, int]:
        unit = unit_of(fullnames[i])
        return (rank.get(unit, -1) if unit else -1, i)

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


__all__ = ["ParticipantOrderMultiProcPlugin", "participant_order", "unit_of"]
