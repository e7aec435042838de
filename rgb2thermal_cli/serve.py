"""``rgb2thermal serve``: run the nightly retraining flow on a cron schedule (Prefect ``serve``).

Why a separate door: ``rgb2thermal run`` is one run on demand; ``serve`` keeps a process alive
that Prefect triggers on the schedule, each time running :func:`flows.nightly.nightly_flow`
(retrain only when the watched data changed, promote only a better model).
:func:`build_deployment` returns the deployment without serving, so it can be inspected
(``--dry-run``) and tested.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = 60
DEFAULT_CRON = "0 2 * * *"
DEFAULT_NAME = "nightly"
#: Seconds the serve loop may take to shut down after Ctrl-C before the process ends itself (exit code 130).
SHUTDOWN_GRACE_S = 20.0


def build_deployment(params: str | Path = "params.yaml", workspace: str | Path = "workspace", *,
                     cron: str = DEFAULT_CRON, timezone: str = "UTC", name: str = DEFAULT_NAME,
                     metric: str | None = None, min_improvement: float = 0.0, decide_on: str = "val",
                     overrides: list[str] | None = None) -> Any:
    """The ``RunnerDeployment`` of the nightly flow with one cron schedule in ``timezone`` (IANA name).

    Paths are made absolute: the served process may run the flow from another directory.
    The parameters are validated first, so a bad params.yaml fails now, not at 2 a.m.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.schedules import Cron

    from flows.nightly import nightly_flow
    from pipeline.champion import DEFAULT_METRIC
    from core.errors import InputError
    from pipeline.params import load_params

    loaded = load_params(params, overrides)
    if decide_on == "val" and not loaded.data.has_val:
        raise InputError("nightly promotion is decided on a val split and the parameters have none", str(params),
                         "set data.val_fraction (e.g. 0.2) or data.val_split, or opt in with --decide-on test")
    if min_improvement < 0:
        raise InputError(f"min_improvement must be >= 0, got {min_improvement}", "--min-improvement", "use e.g. 0 or 0.01")
    try:
        ZoneInfo(timezone)
    except (ValueError, ZoneInfoNotFoundError):
        raise InputError(f"unknown time zone '{timezone}'", "--timezone",
                         "use an IANA time zone name, e.g. UTC or Europe/Berlin") from None
    try:
        schedule = Cron(cron, timezone=timezone)
    except ValueError as exc:
        raise InputError(f"invalid schedule ({exc})", f"--cron {cron!r} --timezone {timezone!r}",
                         "use a 5-field cron expression, e.g. '0 2 * * *', and an IANA time zone, e.g. UTC") from None
    parameters = {"params_path": str(Path(params).resolve()), "workspace": str(Path(workspace).resolve()),
                  "metric": metric or DEFAULT_METRIC, "min_improvement": float(min_improvement),
                  **({"decide_on": decide_on} if decide_on != "val" else {}),
                  **({"overrides": list(overrides)} if overrides else {})}
    # concurrency_limit 1: a night still running when the next is due makes the next one wait (queued)
    return nightly_flow.to_deployment(name=name, schedule=schedule, parameters=parameters, concurrency_limit=1,
                                      description="retrain on changed data; promote only a better thermal detector")


def describe(deployment: Any) -> dict[str, Any]:
    """Name, schedules and parameters of a deployment, as plain JSON-able values."""
    scheds = [{"cron": getattr(s.schedule, "cron", None), "timezone": getattr(s.schedule, "timezone", None),
               "active": s.active} for s in (deployment.schedules or [])]
    return {"flow": deployment.flow_name, "name": deployment.name, "schedules": scheds,
            "parameters": deployment.parameters}


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False          # a host name other than localhost may resolve to any interface


def check_loopback(allow_remote: bool = False) -> None:
    """Refuse to serve with Prefect's runner webserver (health and run endpoints, no authentication)
    bound beyond loopback, unless the user opted in with ``--allow-remote``.

    Why: the webserver is off by default and binds ``localhost`` when turned on, but one line in a
    Prefect profile or the environment (``PREFECT_RUNNER_SERVER_HOST=0.0.0.0``) would expose it to
    the network. The settings are read afresh (environment, profile, prefect.toml), as the served
    runner reads them. Prefect's temporary API server (no ``PREFECT_API_URL``) always binds 127.0.0.1.
    """
    from prefect.settings import Settings

    from core.errors import InputError

    server = Settings().runner.server
    if server.enable and not allow_remote and not _is_loopback(server.host):
        raise InputError(f"the Prefect runner webserver would listen on {server.host} (PREFECT_RUNNER_SERVER_HOST), "
                         "beyond this machine", "rgb2thermal serve",
                         "set PREFECT_RUNNER_SERVER_HOST=127.0.0.1 (or PREFECT_RUNNER_SERVER_ENABLE=false); to expose "
                         "it on purpose, behind your own firewall or proxy, pass --allow-remote")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the nightly retraining flow on a cron schedule (Prefect)",
        description="Start a long-running Prefect process that runs the nightly flow on a cron schedule: "
                    "fingerprint the datasets in params.yaml; if unchanged since the champion's promotion, stop; "
                    "else run the adaptation pipeline and promote the new thermal student only when it beats the "
                    "champion on --metric. Reports go to WORKSPACE/nightly/. Needs a reachable Prefect API "
                    "(PREFECT_API_URL, or a local server started by Prefect).")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="PARAMS_YAML",
                   help="pipeline parameters (default: params.yaml); validated before serving")
    p.add_argument("--workspace", type=Path, default=Path("workspace"), metavar="DIR",
                   help="workspace holding stages, run records, champion.json and nightly reports (default: ./workspace)")
    p.add_argument("--cron", default=DEFAULT_CRON, metavar="EXPR",
                   help=f"5-field cron expression of the runs (default: '{DEFAULT_CRON}', 02:00 daily)")
    p.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone the cron expression is read in (default: UTC), e.g. Europe/Berlin")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})")
    p.add_argument("--metric", default=None, metavar="PATH",
                   help="dotted metric deciding promotion, higher is better (default: adapted.all.mAP_50)")
    p.add_argument("--min-improvement", type=float, default=0.0, metavar="X",
                   help="the challenger must beat the champion by more than X, in metric units (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter for every night (dotted key, YAML value), e.g. "
                        "--set data.val_fraction=0.2; repeatable")
    p.add_argument("--decide-on", choices=("val", "test"), default="val",
                   help="the split promotion is decided on (default: val: the parameters need data.val_fraction or "
                        "data.val_split); 'test' is an explicit opt-in, said in every report")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow Prefect's runner webserver (when PREFECT_RUNNER_SERVER_ENABLE is set) to listen beyond "
                        "loopback (default: refused unless PREFECT_RUNNER_SERVER_HOST is localhost / 127.0.0.1 / ::1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the deployment (name, schedule, parameters) as JSON and exit without serving")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from flows.quiet import apply_prefect_defaults

    apply_prefect_defaults()        # an entry point: Prefect's quiet defaults, before prefect is imported
    check_loopback(args.allow_remote)
    dep = build_deployment(args.params, args.workspace, cron=args.cron, timezone=args.timezone, name=args.name,
                           metric=args.metric, min_improvement=args.min_improvement, decide_on=args.decide_on,
                           overrides=args.overrides)
    print(json.dumps(describe(dep), indent=2))
    if args.dry_run:
        return 0
    from prefect import serve as prefect_serve

    previous = signal.signal(signal.SIGINT, bounded_shutdown(SHUTDOWN_GRACE_S))
    try:
        prefect_serve(dep)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def bounded_shutdown(grace_s: float) -> Callable[[int, Any], None]:
    """A SIGINT handler that interrupts as Python does (``KeyboardInterrupt``) and, from the first Ctrl-C
    on, gives the process ``grace_s`` seconds to finish: one still alive then is ended with exit code 130,
    said at WARNING.

    Why: on Ctrl-C Prefect's runner cancels its loops and pauses its deployments through the API, and in
    the full test suite it was seen to outlive two Ctrl-Cs by a minute, every thread idle in asyncio's
    select (waiting on a reply or a retry back-off; docs/RELIABILITY.md). A served process must stop when
    asked. What it leaves is safe: every output is written atomically and the next night resumes; the
    deployment may stay unpaused, so the server queues its runs until ``serve`` runs again.

    Args:
        grace_s: seconds from the first SIGINT to the forced exit.

    Returns:
        The handler, for ``signal.signal(signal.SIGINT, ...)`` in the main thread. Installed, it also keeps
        asyncio from installing its own SIGINT handler (which turns the first Ctrl-C into a cancellation).
    """
    started: list[threading.Timer] = []

    def end() -> None:
        logging.getLogger(__name__).warning(
            "rgb2thermal serve: Prefect's shutdown did not finish within %.0f s of Ctrl-C; exiting now (code 130). "
            "Outputs are complete (atomic writes); the deployment may not be paused", grace_s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)

    def handler(signum: int, frame: Any) -> None:
        if not started:
            started.append(threading.Timer(grace_s, end))
            started[0].daemon = True
            started[0].start()
        raise KeyboardInterrupt

    return handler
