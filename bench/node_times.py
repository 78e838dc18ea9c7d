"""Per-step wall time of a finished participant run, from Nipype's result files.

Usage: python bench/node_times.py WORK_DIR [--subject c13]

Sums ``runtime.duration`` (s) of every node of ``petsynth_wf`` by sub-workflow (anatomical,
PET, synthesis, hypometabolism, derivatives) for each subject: the cost a step adds to a
participant's processing, independent of how MultiProc interleaved the subjects.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import sys
from collections import defaultdict
from pathlib import Path


def _duration(result: Path) -> float:
    try:
        with gzip.open(result, "rb") as fh:
            res = pickle.load(fh)  # our own Nipype work dir, not user input
    except (ImportError, AttributeError, EOFError):  # a node of an older version of the graph
        return 0.0
    return float(getattr(res.runtime, "duration", 0.0) or 0.0)


def _group(parts: list[str]) -> str:
    wf = parts[0]
    if wf.startswith("anat_preproc"):
        return "anatomical"
    if wf.startswith("synthesis_wf"):
        return "synthesis"
    if wf.endswith("_hypo"):
        return "hypometabolism"
    if "derivatives" in wf:
        return "derivatives"
    if wf.startswith("pet_"):
        return "pet"
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--subject", nargs="*", default=None)
    opts = p.parse_args(argv)
    root = opts.work / "petsynth_wf"
    rows = {}
    for sub in sorted(root.glob("single_subject_*_wf")):
        label = sub.name[len("single_subject_") : -len("_wf")]
        if opts.subject and label not in opts.subject:
            continue
        totals: dict[str, float] = defaultdict(float)
        for result in sub.rglob("result_*.pklz"):
            parts = list(result.relative_to(sub).parts)
            totals[_group(parts)] += _duration(result)
        rows[label] = totals
    keys = ["anatomical", "pet", "synthesis", "hypometabolism", "derivatives", "other"]
    print("| subject | " + " | ".join(keys) + " | total (s) |")
    print("|---" * (len(keys) + 2) + "|")
    for label, t in rows.items():
        print(
            f"| {label} | "
            + " | ".join(f"{t.get(k, 0):.1f}" for k in keys)
            + f" | {sum(t.values()):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
