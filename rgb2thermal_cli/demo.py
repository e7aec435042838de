"""``rgb2thermal demo``: the main job on the embedded default data (``make demo``)."""
from __future__ import annotations

import argparse

ORDER = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default data (data/sample)",
                       description="Run the main job on the embedded default data set. Until the full "
                                   "adaptation flow lands, this runs the stack self-check (doctor).")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tasks.doctor import format_results, run_checks

    results = run_checks()
    print(format_results(results))
    return 0 if all(r.ok for r in results) else 1
