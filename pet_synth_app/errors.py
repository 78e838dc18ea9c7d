"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

import sys


class PetSynthError(Exception):
    """A problem with the user's input or environment (exit code 1, no traceback)."""

    exit_code = 1

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        self.message = " ".join(str(message).split())  # always a single line
        super().__init__(f"{path}: {self.message}" if path else self.message)


class UsageError(PetSynthError):
    """Invalid command-line usage (exit code 2)."""

    exit_code = 2


def print_error(exc: Exception | str) -> None:
    """``petsynth: error: <exc>`` on stderr (one line)."""
    print(f"petsynth: error: {exc}", file=sys.stderr)
