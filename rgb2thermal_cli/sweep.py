"""``rgb2thermal sweep run`` / ``rgb2thermal sweep show``: Optuna sweeps over params.yaml keys.

The implementation is :mod:`pipeline.sweep` (the Prefect door ``flows/sweep.py`` calls the same).
"""
from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 58


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep-dir", type=Path, default=None, metavar="DIR",
                   help="where trials, plots, best_params.yaml and the default study storage live "
                        "(default: sweeps/<study> beside the sweep file)")
    p.add_argument("--storage", default=None, metavar="URL_OR_FILE",
                   help="Optuna storage: an RDB URL (sqlite:///study.db, postgresql://...) shared by several "
                        "workers or machines, or a journal file (default: DIR/study.journal)")
    p.add_argument("--study", default=None, metavar="NAME", help="study name (default: the sweep file's `study`)")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="hyper-parameter sweeps with Optuna (decided on the val split)",
                       description="Search params.yaml keys with Optuna (TPE, pruning on per-epoch val mAP_50). "
                                   "Each trial is an ordinary `rgb2thermal run` in its own workspace; trials reuse "
                                   "unchanged steps and share per-image caches. Decisions use the val split only.")
    ss = s.add_subparsers(dest="sweep_cmd", metavar="{run,show}")
    r = ss.add_parser("run", help="run trials until the study's budget is spent (re-run to resume)",
                      description="Validate the sweep file (space keys, ranges, values the stages accept, a val "
                                  "split in the base parameters) and run trials. Re-running the same command "
                                  "continues the study; start more workers with the same --storage and --study "
                                  "(and a distinct --worker) to run trials in parallel, or run each trial as a "
                                  "Dask task (--workers N, --dask-address URL).")
    r.add_argument("sweep_file", type=Path, metavar="SWEEP_YAML", help="the sweep declaration (see pipeline/sweep_space.py)")
    r.add_argument("--params", type=Path, default=None, metavar="PARAMS_YAML",
                   help="base parameters (default: the sweep file's `params`)")
    _common(r)
    r.add_argument("--worker", type=int, default=0, metavar="N",
                   help="this worker's number (its sampler seed is seed + 7919*N; default 0)")
    r.add_argument("--trials", type=int, default=None, metavar="N", help="override budget.trials (the study's total)")
    r.add_argument("--from-workspace", type=Path, default=None, metavar="DIR",
                   help="reuse the finished steps of this workspace in every trial (default: the latest complete trial)")
    r.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="per-image caches shared by the trials (default: DIR/cache; content-keyed, so the cache of "
                        "earlier runs can be shared)")
    dask = r.add_mutually_exclusive_group()
    dask.add_argument("--dask-address", default=None, metavar="URL",
                      help="run each trial as a Dask task on this scheduler (tcp://host:8786; start `dask scheduler` "
                           "and `dask worker URL --nthreads 1` per trial slot; the sweep folder and storage must be "
                           "reachable from every worker: a shared file system or an RDB --storage)")
    dask.add_argument("--workers", type=int, default=None, metavar="N",
                      help="run the trials as Dask tasks on a local cluster of N worker processes (N trials at a time)")
    r.set_defaults(func=run)
    sh = ss.add_parser("show", help="the best trial and a table of all trials",
                       description="Print the best trial (val objective, test mAP_50 reported beside it, params) "
                                   "and one row per trial: params, val and test metrics, time, state.")
    sh.add_argument("sweep_file", type=Path, metavar="SWEEP_YAML")
    _common(sh)
    sh.set_defaults(func=show)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])


def _resolve(args: argparse.Namespace):
    from pipeline.sweep import SweepPaths
    from pipeline.sweep_space import load_sweep

    spec = load_sweep(args.sweep_file)
    if args.study:
        spec = spec.replace(study=args.study)
    if getattr(args, "trials", None):
        spec = spec.replace(budget=spec.budget.replace(trials=args.trials))
    root = args.sweep_dir or args.sweep_file.resolve().parent / "sweeps" / spec.study
    return spec, SweepPaths(Path(root).resolve())


def _quiet_optuna(args: argparse.Namespace) -> None:
    import optuna

    if not getattr(args, "verbose", 0):    # optuna logs every trial through its own handler; ours says what matters
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from pipeline.sweep import run_sweep

    _quiet_optuna(args)
    spec, paths = _resolve(args)
    run_sweep(spec, paths.root, params_path=args.params, storage=args.storage, worker=args.worker,
              from_workspace=args.from_workspace, cache_dir=args.cache_dir, dask_address=args.dask_address,
              workers=args.workers)
    return show(args)


def show(args: argparse.Namespace) -> int:
    import shlex

    from pipeline.sweep import best_trial, open_study, sweep_classes
    from pipeline.sweep_report import format_table, trial_rows

    _quiet_optuna(args)
    spec, paths = _resolve(args)
    study = open_study(spec, paths, args.storage, create=False)
    print(format_table(trial_rows(study), spec.objective, sweep_classes(paths.root)))
    if paths.best_params.is_file():
        print(f"best parameters: {paths.best_params} (rgb2thermal run --params {paths.best_params})")
        best = best_trial(study)
        sets = " ".join(f"-S {shlex.quote(f'{k}={v}')}" for k, v in {**spec.fixed, **best.params}.items())
        print(f"as a DVC experiment, next to the others in `dvc exp show`: dvc exp run {sets}")
    print(f"plots: {paths.plots}")
    return 0
