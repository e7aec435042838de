"""Settings and options the flow entry points share: Prefect's telemetry off unless the user turned
it on, its console at WARNING (so a flow's console is as quiet as the CLI's), the common flow
CLI options and the CLI's error policy.

Why a function and not an import side effect: importing a module must not edit ``os.environ`` for
the whole process (a library user, a test, another door importing ``flows.adapt`` for its flow
object gets its environment untouched). Each entry point (``python -m flows.<name>``,
``rgb2thermal serve``) calls :func:`apply_prefect_defaults` itself, *before* ``prefect`` is
imported, because Prefect reads its settings at import time. ``setdefault`` keeps whatever the
user set explicitly; ``-v`` on the flow CLIs (:func:`configure`) brings third-party output back.

Why these values: a temporary Prefect server's telemetry heartbeat wrote a ``sqlite3.OperationalError:
database is locked`` traceback before the first task, and per-task INFO lines drowned the
pipeline's own progress.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from core.console import configure_logging

#: Environment defaults of a flow process. The temporary server a flow starts when no PREFECT_API_URL
#: is set gets 90 s instead of Prefect's 20 s to come up: on a busy 2-core machine it was measured to
#: miss 20 s and fail the whole run. The temporary server's own log (``prefect.server``) at CRITICAL:
#: when a short flow ends, its services are cancelled while they flush events, and that printed a
#: CancelledError traceback after a successful run (seen in the full test suite). ``-v`` brings it
#: back (:func:`configure`).
PREFECT_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90", "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
}


def apply_prefect_defaults() -> None:
    """Set :data:`PREFECT_DEFAULTS` in ``os.environ`` where the user has not set them.

    For entry points only, and before ``prefect`` is imported (it reads these at import; called
    later, the values reach only what reads the environment afterwards, such as the temporary
    server's subprocess).
    """
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configure(verbose: int) -> None:
    """The CLI's logging (:func:`core.console.configure_logging`); with ``-v`` the temporary Prefect
    server's log too, unless the user set ``PREFECT_SERVER_LOGGING_LEVEL`` themselves."""
    configure_logging(verbose)
    if verbose and os.environ.get("PREFECT_SERVER_LOGGING_LEVEL") == "CRITICAL":
        logging.getLogger("prefect.server").setLevel(logging.WARNING)


__all__ = ["PREFECT_DEFAULTS", "apply_prefect_defaults", "configure", "flow_parser", "run_cli"]


def run_cli(call: Callable[[], int], args: argparse.Namespace) -> int:
    """Run a flow CLI's body the way ``rgb2thermal`` runs a command: bad input (InputError) is one
    line and exit 2; a full disk, a read-only folder or an unreachable Prefect API is one line and
    exit 1 (the machine's state); anything else keeps its traceback."""
    from core.env_errors import environment_error_line, is_environment_error, unreachable_api_line
    from core.errors import InputError

    try:
        return call()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if is_environment_error(exc):
            print(environment_error_line(exc), file=sys.stderr)   # type: ignore[arg-type]
            return 1
        line = unreachable_api_line(exc, args.params, args.workspace)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1


def flow_parser(prog: str, description: str, workspace_holds: str) -> argparse.ArgumentParser:
    """The options every flow's ``python -m flows.<name>`` shares: --params, --workspace, --set, --wait, -v."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")
    ap.add_argument("--workspace", default="workspace", help=f"{workspace_holds} (default: workspace)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter (dotted key, YAML value); repeatable")
    ap.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                    help="wait this long for another run holding the workspace (default: the flow's own)")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="third-party log output too")
    return ap
