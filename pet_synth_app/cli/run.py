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
    """Run the BIDS-App; returns the exit code (0 ok, 1 input/processing error, 2 usage,
    130/143 interrupted by SIGINT/SIGTERM)."""
    parser = get_parser()
    opts = parser.parse_args(argv)

    def run() -> int:
        from .. import runner
        from ..determinism import deterministic_mode
        from ..interrupt import handle_interrupts

        settings = Settings.from_options(vars(opts))
        setup_logging(settings.verbose)
        with handle_interrupts(), deterministic_mode(settings.deterministic):
            if settings.analysis_level == "participant":
                return runner.run_participant(settings)
            return runner.run_group(settings)

    return guarded(parser, run, "interrupted; rerun with the same -w/--work-dir to resume")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
