"""One run per workspace at a time.

Two runs writing the same stage outputs and caches would interleave and corrupt each other,
so a run holds an exclusive OS lock (``fcntl.flock``) on ``<workspace>/.rgb2thermal.lock``.
The OS releases it when the process dies, so a killed run never leaves a stale lock behind;
the file's text only says who holds it, for the error message.
"""
from __future__ import annotations

import contextlib
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
    return f"run {info.get('run_id', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')})"


@contextlib.contextmanager
def workspace_lock(workspace: str | os.PathLike[str], run_id: str, *, wait_seconds: float = 0.0,
                   poll_seconds: float = 0.5) -> Iterator[Path]:
    """Hold the workspace's lock for the block; wait up to ``wait_seconds`` for it, then fail."""
    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
