"""Prefect 3 flow ``rgb2thermal-sweep``: an Optuna sweep (:func:`pipeline.sweep.run_sweep`) observed in Prefect.

The flow is a door: the trials, the study storage, pruning and the outputs are exactly those of
``rgb2thermal sweep run`` (one implementation). What the flow adds is observation: the trials
table (``sweep-trials``) and Optuna's plots (``sweep-history``, ``sweep-importances``,
``sweep-parallel``) as artifacts. Several flow runs (or CLI workers) on one ``storage`` and
``study`` share the study's trials. Never retried: a trial that fails is recorded as failed in the
study and the sweep goes on; a bad sweep file is an ``InputError`` before the first trial.
"""
from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from flows import quiet

if __name__ == "__main__":  # this module is the entry point: its settings, before prefect is imported
    quiet.apply_prefect_defaults()

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from core.errors import InputError
from pipeline.sweep import SweepPaths, run_sweep, sweep_classes
from pipeline.sweep_report import format_table, trial_rows
from pipeline.sweep_space import load_sweep

FLOW_NAME = "rgb2thermal-sweep"
ARTIFACTS = {"optimization_history": "sweep-history", "param_importances": "sweep-importances",
             "parallel_coordinate": "sweep-parallel"}


@task(name="sweep-trials", cache_policy=NO_CACHE, persist_result=False)
def trials_task(sweep_file: str, sweep_dir: str, params_path: str | None, storage: str | None, worker: int,
                cache_dir: str | None, dask_address: str | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    study = run_sweep(load_sweep(sweep_file), sweep_dir, params_path=params_path, storage=storage, worker=worker,
                      cache_dir=cache_dir, dask_address=dask_address, workers=workers)
    return trial_rows(study)


@flow(name=FLOW_NAME, persist_result=False)
def sweep_flow(sweep_file: str, sweep_dir: str | None = None, params_path: str | None = None,
               storage: str | None = None, worker: int = 0, cache_dir: str | None = None,
               dask_address: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Run the sweep's trials; publish the table and plots. Returns ``{"best", "trials", "sweep_dir"}``.

    ``dask_address`` / ``workers``: each trial a Dask task on that scheduler / on a local cluster of
    that many processes (as ``sweep run --dask-address`` / ``--workers``)."""
    spec = load_sweep(sweep_file)
    root = Path(sweep_dir) if sweep_dir else Path(sweep_file).resolve().parent / "sweeps" / spec.study
    rows = trials_task(sweep_file, str(root), params_path, storage, worker, cache_dir, dask_address, workers)
    paths = SweepPaths(root.resolve())
    create_markdown_artifact(key="sweep-trials", markdown=format_table(rows, spec.objective, sweep_classes(paths.root)),
                             description=f"study {spec.study}: trials (decided on val; test reported only)")
    for name, key in ARTIFACTS.items():
        png = paths.plots / f"{name}.png"
        if png.is_file():       # the plot lives in the sweep folder, which the Prefect UI cannot reach: a data: URL
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            create_image_artifact(image_url=f"data:image/png;base64,{data}", key=key,
                                  description=f"study {spec.study}: {name.replace('_', ' ')}")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(done, key=lambda r: r["value"]) if done else None
    return {"best": best, "trials": rows, "sweep_dir": str(paths.root)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_file", help="the sweep declaration (sweep.yaml)")
    ap.add_argument("--sweep-dir", default=None, help="trials, plots, best_params.yaml (default: sweeps/<study>)")
    ap.add_argument("--params", default=None, help="base parameters (default: the sweep file's `params`)")
    ap.add_argument("--storage", default=None, help="Optuna storage URL or journal file (default: in the sweep dir)")
    ap.add_argument("--worker", type=int, default=0, help="this worker's number (sampler seed offset)")
    ap.add_argument("--dask-address", default=None, help="run each trial as a Dask task on this scheduler")
    ap.add_argument("--workers", type=int, default=None, help="run the trials on a local Dask cluster of N processes")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="third-party log output too")
    args = ap.parse_args(argv)
    quiet.configure(args.verbose)
    if not args.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        out = sweep_flow(sweep_file=args.sweep_file, sweep_dir=args.sweep_dir, params_path=args.params,
                         storage=args.storage, worker=args.worker, dask_address=args.dask_address,
                         workers=args.workers)
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    best = out["best"]
    print(f"sweep {out['sweep_dir']}: {len(out['trials'])} trials; best: "
          + (f"trial {best['number']} (val {best['value']:.4f})" if best else "none complete"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
