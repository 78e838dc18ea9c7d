"""Atomic writes and file locks for files several processes may write at once.

A file is written under a temporary name in its own folder and moved into place with
``os.replace`` (atomic on one filesystem), so a reader, a crash or a kill never sees a
half-written file. Files that several participant processes update (the methods
boilerplate, the group report) are also updated under an exclusive ``fcntl`` lock, so
their read-modify-write steps do not lose each other's changes (docs/architecture.md,
"Interrupts, resume and parallel participants").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".petsynth-tmp"
"""Part of every temporary name: ``.<name>.petsynth-tmp-<host>-<pid>-<random>``."""

_TMP_RE = re.compile(re.escape(TMP_MARK) + r"-(?P<host>.*)-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_name(path: Path) -> Path:
    """A unique hidden temporary name next to ``path`` (same folder, same filesystem)
    that names this host and process."""
    path = Path(path)
    host = socket.gethostname().replace("/", "_")
    return path.with_name(f".{path.name}{TMP_MARK}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _orphaned(name: str, age_s: float, min_age_s: float) -> bool:
    """A temporary of a dead process of this host, or older than ``min_age_s``."""
    if age_s >= min_age_s:
        return True
    m = _TMP_RE.search(name)
    if not m or m["host"] != socket.gethostname().replace("/", "_"):
        return False  # maybe another node's running process
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    return write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``lock_file`` (created if needed; blocks until
    free). POSIX record locks also work on NFS mounts with a lock daemon."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_stale_temporaries(folder: Path, min_age_s: float = 3600.0) -> int:
    """Delete the temporary files and folders (``*.petsynth-tmp-*``) under ``folder`` that
    killed runs left: those of dead processes of this host, and any older than
    ``min_age_s`` seconds (other hosts' processes cannot be checked; a write takes
    seconds). Returns how many were removed."""
    import shutil
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, n = time.time(), 0
    for tmp in list(folder.rglob(f"*{TMP_MARK}-*")):
        try:
            if not _orphaned(tmp.name, now - tmp.lstat().st_mtime, min_age_s):
                continue
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            n += 1
        except OSError:
            continue
    return n


__all__ = [
    "TMP_MARK",
    "locked",
    "remove_stale_temporaries",
    "temp_name",
    "write_bytes",
    "write_text",
]
