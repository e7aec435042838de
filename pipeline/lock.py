"""One run per workspace at a time.

Two runs writing the same stage outputs and caches would interleave and corrupt each other,
so a run holds an exclusive OS lock (``fcntl.flock``) on ``<workspace>/.rgb2thermal.lock``.
The OS releases it when the process dies, so a killed run never leaves a stale lock behind;
the file's text only says who holds it, for the error message.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import InputError

LOCK_NAME = ".rgb2thermal.lock"


class WorkspaceBusy(InputError):
    """Another run holds the workspace lock."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return (f"run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
            f"since {info.get('since', '?')})")


#: ``errno`` values that mean "this file system or folder does not let us write", as opposed to a bug.
_NOT_WRITABLE = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable (permission denied)",
                 errno.EPERM: "is not writable (operation not permitted)"}


def _open_lock_file(ws: Path, path: Path) -> int:
    """Create the workspace (if needed) and open its lock file; a workspace that cannot be written is
    an :class:`InputError`.

    Why here: the lock is a run's first write, before any step, so this is where a read-only mount or
    a folder without write permission shows up. Said plainly it is a choice the user can fix (another
    ``--workspace``, or make it writable) instead of a raw ``OSError`` traceback from ``os.open``."""
    try:
        ws.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        failed = exc.filename if exc.filename is not None else path
        raise InputError(f"the workspace {_NOT_WRITABLE[exc.errno]} ({errno.errorcode[exc.errno]} creating {failed}); "
                         "no step was run", str(ws),
                         "choose a writable --workspace, or remount / chmod that folder so this user can write "
                         "there") from None


def check_cache_writable(cache_root: str | os.PathLike[str]) -> None:
    """A shared per-image cache (``--cache-dir`` / ``RGB2THERMAL_CACHE_DIR``) must be writable:
    probed once at the start of a run (a file created and removed), so a read-only cache is an
    :class:`InputError` before any step, not an ``OSError`` in the middle of ``infer``."""
    root = Path(cache_root)
    probe = root / f".rgb2thermal-write-probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644))
        os.unlink(probe)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        failed = exc.filename if exc.filename is not None else probe
        raise InputError(f"the shared cache {_NOT_WRITABLE[exc.errno]} ({errno.errorcode[exc.errno]} creating "
                         f"{failed}); no step was run", str(root),
                         "choose a writable --cache-dir (or unset RGB2THERMAL_CACHE_DIR to use WORKSPACE/cache), "
                         "or remount / chmod that folder so this user can write there") from None


@contextlib.contextmanager
def workspace_lock(workspace: str | os.PathLike[str], run_id: str, *, wait_seconds: float = 0.0,
                   poll_seconds: float = 0.5) -> Iterator[Path]:
    """Hold the workspace's lock for the block; wait up to ``wait_seconds`` for it, then fail."""
    ws = Path(workspace)
    path = ws / LOCK_NAME
    fd = _open_lock_file(ws, path)
    deadline = time.monotonic() + wait_seconds
    acquired = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                acquired = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"the workspace is in use by {_holder(path)}", str(ws),
                        "wait for that run to finish (or pass a wait time), or use another workspace") from None
                time.sleep(poll_seconds)
        info = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        if acquired:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)
