"""``rgb2thermal`` command line.

Subcommands live in sibling modules; each defines ``register(subparsers)`` and an ``ORDER``
number, and keeps heavy imports (torch, mmdet) inside its handler so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback

import rgb2thermal_cli
from core.env_errors import ENVIRONMENT_ERRNOS, environment_error_line  # noqa: F401  (shared with the flow CLIs)

DESCRIPTION = """\
rgb2thermal: teach an object detector to see in thermal images using labelled RGB.

Pipeline: RGB inference -> confidence-filtered pseudo-labels -> homography warp to thermal
-> SAM2 (or classical) box refinement -> thermal retraining -> COCO evaluation.
Boxes are xyxy pixels internally; COCO JSON (xywh) at file boundaries.
"""


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
