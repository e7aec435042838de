"""``rgb2thermal doctor``: stack self-check."""
from __future__ import annotations

import argparse

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check that the whole stack runs here (mmcv ops, YOLOX, SAM2, Prefect, DVC)",
                       description="Build and run each component of the stack with random weights and report OK/FAIL "
                                   "per check. Exit code 1 if any check fails.")
    p.add_argument("--only", nargs="+", metavar="CHECK",
                   help="run only these checks (versions, device, 'mmcv ops', 'mmdet YOLOX', SAM2, prefect, dvc)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rgb2thermal_cli.doctor_checks import format_results, run_checks

    results = run_checks(args.only)
    print(format_results(results))
    return 0 if all(r.ok for r in results) else 1
