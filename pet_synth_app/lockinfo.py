"""The lock file an installation was built from (``requirements.lock``, ``scripts/lock.sh``).

The container images copy it to ``/opt/petsynth/requirements.lock`` and point
``PETSYNTH_LOCK_FILE`` at it; its SHA-256 is recorded in ``dataset_description.json``
(``GeneratedBy``) and in the run's config TOML. Without the variable (a pip installation
from ranges) there is no lock to name: ``None``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LOCK_ENV = "PETSYNTH_LOCK_FILE"


def lock_hash() -> str | None:
    """SHA-256 of the file named by ``PETSYNTH_LOCK_FILE``, or None (unset, unreadable)."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
