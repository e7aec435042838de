"""Imported by every flow module *before* ``prefect``: Prefect's telemetry off unless the user
turned it on, and its console at WARNING, so a flow's console is as quiet as the CLI's.

Why: a temporary Prefect server's telemetry heartbeat wrote a ``sqlite3.OperationalError:
database is locked`` traceback before the first task, and per-task INFO lines drowned the
pipeline's own progress. ``setdefault`` keeps whatever the user set explicitly; ``-v`` on the
flow CLIs (:func:`core.console.configure_logging`) brings third-party output back.
"""
from __future__ import annotations

import os

for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1"),
                     ("PREFECT_LOGGING_LEVEL", "WARNING")):
    os.environ.setdefault(_key, _value)

from core.console import configure_logging as configure  # noqa: E402  (re-exported for the flow CLIs)

__all__ = ["configure"]
