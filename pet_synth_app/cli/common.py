"""What every PetSynth command does the same way: logging and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import PetSynthError, UsageError, print_error

LOGGER = logging.getLogger("petsynth")


def setup_logging(verbose: int) -> None:
    """WARNING for the libraries, INFO for PetSynth (DEBUG for both with ``-vv``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        format="%(asctime)s [%(name)s] %(levelname)s: %(message)s",
        force=True,
    )
    LOGGER.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.getLogger("bidsschematools").setLevel(logging.WARNING)


def guarded(parser: argparse.ArgumentParser, func, interrupted: str) -> int:
    """Run ``func()`` and turn user-facing errors into one line and an exit code
    (usage errors also print the usage; Ctrl-C or SIGTERM prints ``interrupted``, exit
    130 or 143: ``interrupt.Interrupted``)."""
    try:
        return func()
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print_error(exc)
        return exc.exit_code
    except PetSynthError as exc:
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print_error(interrupted)
        sys.unraisablehook = quiet_unraisable  # the one line stays the last word
        return getattr(exc, "exit_code", 130)


def quiet_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` of an interrupted run on its way out: ignore. Exiting joins
    the process pools whose workers the interrupt killed, and CPython's exit-time wake-up
    of such a pool can fail on its closed pipe and print an "Exception ignored in:
    <module 'threading'>" traceback after the one-line error (seen once under load in
    tests/test_interrupt_resume.py); nothing is left to do about it then."""


__all__ = ["guarded", "print_error", "quiet_unraisable", "setup_logging"]
