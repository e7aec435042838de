"""``rgb2thermal`` command line.

Subcommands live in sibling modules; each defines ``register(subparsers)`` and an ``ORDER``
number, and keeps heavy imports (torch, mmdet) inside its handler so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import re
import sys
import traceback

import rgb2thermal_cli

DESCRIPTION = """\
rgb2thermal: teach an object detector to see in thermal images using labelled RGB.

Pipeline: RGB inference -> confidence-filtered pseudo-labels -> homography warp to thermal
-> SAM2 (or classical) box refinement -> thermal retraining -> COCO evaluation.
Boxes are xyxy pixels internally; COCO JSON (xywh) at file boundaries.
"""


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


def _command_modules() -> list:
    mods = []
    for info in pkgutil.iter_modules(rgb2thermal_cli.__path__):
        if info.name in {"main"} or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"rgb2thermal_cli.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgb2thermal", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from core.console import configure_logging

    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from core.errors import InputError

    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (-v shows the traceback)"
        print(environment_error_line(exc) + hint, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: outputs already written are complete (atomic writes); re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
