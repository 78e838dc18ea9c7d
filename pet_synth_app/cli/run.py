"""`petsynth BIDS_DIR OUTPUT_DIR {participant,group}`: the BIDS-App entry point.

Parses (``cli/parser.py``), builds the ``Settings`` from the options and hands them to
the participant or group runner (``runner.py``); nothing else happens here.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("NO_ET", "1")  # no telemetry: Nipype's etelemetry check stays off

from ..config import Settings  # noqa: E402
from .common import guarded, setup_logging  # noqa: E402
from .parser import get_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the BIDS-App; returns the exit code (0 ok, 1 input/processing error, 2 usage)."""
    parser = get_parser()
    opts = parser.parse_args(argv)

    def run() -> int:
        from .. import runner

        settings = Settings.from_options(vars(opts))
        setup_logging(settings.verbose)
        if settings.analysis_level == "participant":
            return runner.run_participant(settings)
        return runner.run_group(settings)

    return guarded(parser, run, "interrupted; rerun with the same --work-dir to resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
