"""``rgb2thermal run`` (the whole adaptation pipeline, or one step of it) and ``rgb2thermal runs``.

Both call :func:`pipeline.executor.run_pipeline`, the one implementation the Prefect flow also uses.
``run --stage NAME`` runs exactly one step, taking the earlier steps' stored outputs as current:
that is what the generated ``dvc.yaml``'s stages call (DVC has already decided what is current),
so DVC and the pipeline share stage outputs and caches.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rgb2thermal_cli.stage import add_compute_arguments

ORDER = 50


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run the RGB->thermal adaptation pipeline from params.yaml (steps skipped when current)",
        description="Run data -> index -> teacher -> infer -> pseudo -> warp -> refine -> student -> baseline -> "
                    "quality -> eval as configured in params.yaml (the steps are listed by `rgb2thermal steps`). "
                    "Every step is skipped when its inputs (by content) "
                    "and parameter section are unchanged since it last ran in this workspace; per-image caches make "
                    "added images cheap. Parameters are validated before any work starts. A run record is written "
                    "to WORKSPACE/runs/<run id>/record.json (see `rgb2thermal runs`).")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), metavar="PARAMS_YAML",
                   help="pipeline parameters (default: params.yaml); relative paths inside are relative to its folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter with a dotted key, e.g. --set pseudo.score_threshold=0.6 "
                        "(value parsed as YAML); repeatable")
    p.add_argument("--workspace", type=Path, default=Path("workspace"), metavar="DIR",
                   help="where stage outputs (stages/), per-image caches (cache/) and run records (runs/) live "
                        "(default: ./workspace)")
    p.add_argument("--stage", default=None, metavar="NAME",
                   help="run only this step, taking the outputs of the steps before it as they are stored (they "
                        "must have run); what the generated dvc.yaml calls, since DVC decides what is current")
    p.add_argument("--until", default=None, metavar="NAME",
                   help="stop after this step, e.g. --until refine makes the thermal pseudo-labels without training")
    p.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="per-image caches (inference, refinement) here instead of WORKSPACE/cache; entries are keyed "
                        "by content, so several workspaces (and `dvc exp run --temp`) can share one "
                        "(default: $RGB2THERMAL_CACHE_DIR, else WORKSPACE/cache)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another run holding the workspace to finish (default: fail at once)")
    add_compute_arguments(p)
    p.add_argument("--check", action="store_true", help="only validate the parameters and exit")
    p.set_defaults(func=run)

    r = sub.add_parser("runs", help="list, show or compare pipeline run records",
                       description="Read the run records in WORKSPACE/runs/: what each run used, did and measured.")
    r.add_argument("--workspace", type=Path, default=Path("workspace"), metavar="DIR",
                   help="the workspace of `rgb2thermal run` (default: ./workspace)")
    rs = r.add_subparsers(dest="runs_cmd", metavar="{list,show,compare}")
    rl = rs.add_parser("list", help="one line per run (oldest first) with its adapted mAP_50",
                       description="Table of all runs: id, flow, status, start time, adapted mAP_50 (all), seconds.")
    rl.set_defaults(func=runs_list)
    sh = rs.add_parser("show", help="one run in detail: datasets, models, stages with cache hits, metrics",
                       description="Markdown view of one run record.")
    sh.add_argument("run_id", nargs="?", default=None, help="run id (default: the latest run)")
    sh.set_defaults(func=runs_show)
    cp = rs.add_parser("compare", help="per-class metrics of several runs side by side, with differing parameters",
                       description="Per-category mAP/mAP_50 of the given runs side by side and the parameters that differ.")
    cp.add_argument("run_ids", nargs="+", help="two or more run ids")
    cp.add_argument("--run", default="adapted", choices=("adapted", "source_only", "no_refinement"),
                    help="which model's metrics to compare (default: adapted)")
    cp.set_defaults(func=runs_compare)
    r.set_defaults(func=lambda args: (r.print_help(), 2)[1])


def run(args: argparse.Namespace) -> int:
    from pipeline.executor import run_pipeline
    from pipeline.params import load_params
    from pipeline.runs import format_show
    from tasks.compute import compute_overrides

    params = load_params(args.params, [*args.overrides, *compute_overrides(args.workers, args.dask_address, args.chunk_size)])
    if args.check:
        params.check_files()
        print(f"{args.params}: parameters OK")
        return 0
    record = run_pipeline(params, args.workspace, flow="dvc" if args.stage else "adapt", only=args.stage,
                          until=args.until, lock_wait_seconds=args.wait, trust_upstream=args.stage is not None,
                          cache_root=args.cache_dir)
    print(format_show(record))
    return 0


def runs_list(args: argparse.Namespace) -> int:
    from pipeline.runs import format_list, list_records

    print(format_list(list_records(args.workspace)))
    return 0


def runs_show(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from pipeline.runs import format_show, list_records, load_record

    if args.run_id is None:
        records = list_records(args.workspace)
        if not records:
            raise InputError("no run records", str(args.workspace / "runs"), "run `rgb2thermal run` first")
        record = records[-1]
    else:
        record = load_record(args.workspace, args.run_id)
    print(format_show(record))
    return 0


def runs_compare(args: argparse.Namespace) -> int:
    from pipeline.runs import format_compare, load_record

    print(format_compare([load_record(args.workspace, r) for r in args.run_ids], run=args.run))
    return 0
