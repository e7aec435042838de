"""One-line messages for errors that are the machine's state, not bad input and not a bug: a full
disk, a read-only folder, a Prefect API that cannot be reached. Shared by the ``rgb2thermal`` CLI
and the flow entry points (``python -m flows.adapt`` / ``flows.nightly``), which exit 1 with the
line instead of a traceback.
"""
from __future__ import annotations

import errno
import os
import re

#: OSErrors that are the machine's state, not a bug and not bad input: the disk (or quota) is full, or
#: the file system / folder does not allow writing. Exit 1 (environment), not 2 (bad input).
ENVIRONMENT_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space on that disk, or choose another --workspace / --out on a disk with room"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota, or choose another --workspace / --out"),
    errno.EROFS: ("read-only file system", "choose a writable --workspace / --out, or remount that file system "
                                           "read-write"),
    errno.EACCES: ("permission denied", "choose a --workspace / --out this user can write, or fix the folder's "
                                        "permissions"),
}

#: :func:`core.atomic.atomic_path` writes ``<dir>/.<name>.<random>.tmp/<name>`` then renames it onto
#: ``<dir>/<name>``: the message names the target the user knows, not the temporary.
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _user_path(filename: object) -> str | None:
    """The path an OSError names, with an atomic-write temporary mapped back to its target file."""
    if filename is None:
        return None
    path = os.fspath(filename) if isinstance(filename, (str, os.PathLike)) else str(filename)
    head, last = os.path.split(path)
    if (m := _ATOMIC_TMP.match(last)) is not None:            # the temporary folder itself
        return os.path.join(head, m["name"])
    parent, folder = os.path.split(head)
    if (m := _ATOMIC_TMP.match(folder)) is not None and m["name"] == last:   # the file inside it
        return os.path.join(parent, last)
    return path


def environment_error_line(exc: OSError) -> str:
    """One line for a disk-full / read-only / permission error: what happened (with the errno name),
    which path when the OS said, and what to do. Outputs are atomic, so the previous files are whole
    and a re-run reuses what finished; the line says so, since that is what makes a re-run safe."""
    what, fix = ENVIRONMENT_ERRNOS[exc.errno]
    path = _user_path(exc.filename)
    where = f" on {path}" if path else ""
    return (f"error: {what} ({errno.errorcode[exc.errno]}){where}. Fix: {fix}; outputs already written are "
            "complete (atomic writes), so a re-run afterwards reuses what finished")


def is_environment_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


#: the words of Prefect's client error when its API does not answer (``prefect.client``)
_UNREACHABLE = "Failed to reach API"


def unreachable_api_line(exc: BaseException, params: str, workspace: str) -> str | None:
    """One line when ``exc`` is Prefect's "Failed to reach API" error, else None.

    Why: the flow then dies with a Prefect traceback that neither names the setting to fix nor says
    that the same steps run without Prefect (``rgb2thermal run``: same plan, same stage outputs, so
    a later flow run reuses every step it finished).
    """
    if _UNREACHABLE not in str(exc):
        return None
    url = os.environ.get("PREFECT_API_URL") or "(PREFECT_API_URL unset: the temporary local server)"
    return (f"error: the Prefect API at {url} cannot be reached, so no step was run. Fix: start that server "
            "or correct PREFECT_API_URL (unset it to let Prefect start a temporary local one); or run the same "
            f"steps without Prefect: rgb2thermal run --params {params} --workspace {workspace} (same outputs, "
            "reused by a later flow run)")
