"""Hyper-parameter sweeps with Optuna: each trial is an ordinary pipeline run, decided on the val split.

Why each trial is a separate ``rgb2thermal run`` process in its own workspace:
- it is exactly what a user would run by hand (same record, same reuse, same outputs), and
  ``best_params.yaml`` re-runs to the same numbers;
- trials never fight for one workspace lock, so several workers (processes or machines sharing
  one Optuna storage) run trials side by side: several ``sweep run`` processes, or one trial per
  Dask task (``--workers N`` / ``--dask-address``: :func:`dask_trial`, exactly the budget's trials,
  numbered by the storage);
- a pruned trial is stopped by ending its process (SIGTERM, then SIGKILL), which leaves its
  workspace as any killed run leaves one: nothing half-written is ever read as done.

Reuse between trials: a new trial's workspace starts with hard links to the finished stage
folders of the latest complete trial (or ``--from-workspace``); the executor re-keys every step
by content and parameters, so only the steps a sampled value changes run again (a threshold
change never re-runs inference), and per-image caches are shared (``<sweep dir>/cache``).
Hard links are safe because stage folders are never written in place: a re-run step deletes
its folder first, and every file is written by atomic rename.

Decisions never read the test split: the objective is a metric of the ``val`` step (the val
frames' thermal labels) and pruning reads the adapted student's per-epoch validation history
(``val_history.json``, written by :class:`tasks.train_hooks.ProgressHook` on the val split).
Test metrics are stored on each trial as user attributes, for reporting only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core import atomic
from core.errors import InputError
from data.index import DEFAULT_CLASSES
from pipeline.champion import metric_value
from pipeline.plan import adapted_step
from pipeline.params import params_from_dict
from pipeline.runs import RunRecord, list_records
from pipeline.sweep_space import SweepSpec, base_mapping, check_sweep, trial_params

log = logging.getLogger(__name__)
VAL_STEP = "val"
TEST_STEP = "eval"
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class SweepPaths:
    """Where one study's files live: ``<root>/study.journal`` (default storage), ``trials/<n>/``,
    ``cache/`` (per-image caches shared by the trials), ``best_params.yaml``, ``plots/``."""

    root: Path

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def best_params(self) -> Path:
        return self.root / "best_params.yaml"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def open_study(spec: SweepSpec, paths: SweepPaths, storage: str | None, *, worker: int = 0,
               max_epochs: int = 1, create: bool = True) -> Any:
    """The Optuna study: ``storage`` is an RDB URL (``sqlite:///...``, ``postgresql://...``) when several
    machines share a study, else a journal file in the sweep folder (Optuna's multi-process-safe
    file storage). Re-opening an existing study continues it (resume)."""
    import optuna

    if storage is None or "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        file = Path(storage) if storage else paths.root / "study.journal"
        file.parent.mkdir(parents=True, exist_ok=True)
        store: Any = JournalStorage(JournalFileBackend(str(file)))
    else:
        store = storage
    # each worker its own seed: two workers with one seed would propose the same values
    sampler = optuna.samplers.TPESampler(seed=spec.sampler.seed + 7919 * worker,
                                         n_startup_trials=spec.sampler.n_startup_trials)
    if not create:
        try:
            return optuna.load_study(study_name=spec.study, storage=store, sampler=sampler)
        except KeyError:
            raise InputError(f"no study '{spec.study}' in this storage", storage or str(paths.root),
                             "run `rgb2thermal sweep run` first, or give --study/--storage") from None
    return optuna.create_study(study_name=spec.study, storage=store, direction="maximize", sampler=sampler,
                               pruner=spec.pruner.build(max_epochs), load_if_exists=True)


def objective_value(record: RunRecord, objective: str) -> float | None:
    """The sweep's objective from a finished run record: ``objective`` in the VAL step's metrics only."""
    if VAL_STEP not in record.metrics:
        raise InputError(f"run {record.run_id} has no '{VAL_STEP}' step metrics", record.run_id,
                         "the base parameters need a val split (data.val_fraction or data.val_split)")
    return metric_value(record.metrics[VAL_STEP], objective)


def seed_workspace(src: Path | None, dst: Path) -> int:
    """Hard-link the finished stage folders of workspace ``src`` into ``dst`` (see the module docstring);
    returns how many stages were linked. Falls back to copying across file systems (logged)."""
    if src is None or not (src / "stages").is_dir():
        return 0
    n = 0
    warned = False

    def link(a: str, b: str) -> None:
        nonlocal warned
        try:
            os.link(a, b)
        except OSError:
            if not warned:
                log.warning("sweep: cannot hard-link %s into %s (another file system?): copying", src, dst)
                warned = True
            shutil.copy2(a, b)

    for sdir in sorted((src / "stages").iterdir()):
        if not (sdir / "stage.json").is_file() or (dst / "stages" / sdir.name).exists():
            continue
        tmp = dst / "stages" / f".{sdir.name}.linking"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(sdir, tmp, copy_function=link)
        os.replace(tmp, dst / "stages" / sdir.name)          # whole folders appear at once
        n += 1
    return n


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_trial(trial: Any, spec: SweepSpec, base: dict[str, Any], paths: SweepPaths,
              from_workspace: Path | None = None, cache_dir: Path | None = None) -> float:
    """One trial: sample, write ``trials/<n>/params.yaml``, run it as ``rgb2thermal run``, report the
    adapted student's per-epoch val mAP_50 to the pruner while it trains, return the val objective."""
    import optuna

    values = {key: dim.suggest(trial, key) for key, dim in spec.space.items()}
    mapping = trial_params(base, spec, values)
    params = params_from_dict(mapping, f"trial {trial.number}")
    tdir = paths.trials / f"{trial.number:04d}"
    ws = tdir / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    params_file = atomic.write_text(tdir / "params.yaml", yaml.safe_dump(mapping, sort_keys=False))
    seed = from_workspace or _latest_complete(trial.study)
    linked = seed_workspace(seed, ws)
    trial.set_user_attr("workspace", str(ws))
    trial.set_user_attr("seeded_from", str(seed) if seed else None)
    rel_history = Path("stages") / adapted_step(params) / "train" / "val_history.json"
    history = ws / rel_history
    # the seed's history, hard-linked in: the previous trial's numbers until this trial's training replaces it
    stale = _inode(seed / rel_history) if seed is not None else None
    cmd = [sys.executable, "-m", "rgb2thermal_cli.main", "run", "--params", str(params_file), "--workspace", str(ws),
           "--cache-dir", str(cache_dir or paths.cache)]
    t0 = time.monotonic()
    log.info("trial %d: %s (%d stages linked from %s)", trial.number, values, linked, seed)
    with open(tdir / "run.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        reported = 0
        try:
            while True:
                done = proc.poll() is not None
                reported = _report(trial, history, reported, stale)
                if trial.should_prune():
                    _stop(proc)
                    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
                    raise optuna.TrialPruned(f"pruned after {reported} validation(s)")
                if done:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            _stop(proc)
    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
    records = list_records(ws)
    if proc.returncode != 0 or not records or records[-1].status != "succeeded":
        error = records[-1].error if records else f"exit {proc.returncode}"
        trial.set_user_attr("error", error)
        raise RuntimeError(f"trial {trial.number} run failed: {error} (log: {tdir / 'run.log'})")
    record = records[-1]
    trial.set_user_attr("run_id", record.run_id)
    test = record.metrics.get(TEST_STEP) or {}            # reported, never decided on
    trial.set_user_attr("test", {cat: (vals or {}).get("mAP_50") for cat, vals in (test.get("adapted") or {}).items()})
    trial.set_user_attr("val", {cat: (vals or {}).get("mAP_50")
                                for cat, vals in (record.metrics[VAL_STEP].get("adapted") or {}).items()})
    value = objective_value(record, spec.objective)
    if value is None:
        raise RuntimeError(f"trial {trial.number}: the val objective {spec.objective} is not a number")
    return value


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _report(trial: Any, history: Path, reported: int, stale: int | None = None) -> int:
    """Report validations not yet reported (``coco/bbox_mAP_50`` at step = epoch), stopping at the first
    one the pruner prunes on; returns how many entries were consumed.
    A history that is still the seed workspace's file (inode ``stale``) is not this trial's: skipped."""
    if not history.is_file() or (stale is not None and _inode(history) == stale):
        return reported
    try:
        entries = atomic.read_json(history)
    except (OSError, ValueError):
        return reported
    for entry in entries[reported:]:
        reported += 1
        value = entry.get("coco/bbox_mAP_50")
        if isinstance(value, (int, float)) and value >= 0:
            trial.report(float(value), int(entry["epoch"]))
            if trial.should_prune():       # prune at the first epoch the pruner says, not at a later one read with it
                break
    return reported


def _latest_complete(study: Any) -> Path | None:
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("workspace")]
    return Path(done[-1].user_attrs["workspace"]) if done else None


def run_sweep(spec: SweepSpec, root: str | Path, *, params_path: str | Path | None = None, storage: str | None = None,
              worker: int = 0, from_workspace: str | Path | None = None, cache_dir: str | Path | None = None,
              dask_address: str | None = None, workers: int | None = None) -> Any:
    """Validate, then run trials until the study's budget is spent (all workers' trials count).

    Without ``dask_address``/``workers`` this process runs the trials one after another (start more
    ``sweep run`` processes on the same storage to run trials side by side). With them, every
    remaining trial is one Dask task (:func:`dask_trial`) on a Dask cluster: an existing scheduler
    (``dask_address``) or a ``LocalCluster`` of ``workers`` one-thread worker processes.

    Args:
        spec: the validated sweep declaration.
        root: the sweep folder (trials, caches, default journal storage, outputs).
        params_path: base parameters (default: ``spec.params``).
        storage: Optuna storage URL or journal file (default ``<root>/study.journal``); Dask workers on
            other machines must reach it (an RDB URL, or a journal file on a shared file system).
        worker: this worker's number (sampler seed offset; Dask tasks use ``1000 * worker + k``).
        from_workspace: seed every trial's workspace from this one (default: the latest complete trial).
        cache_dir: per-image caches shared by the trials (default ``<root>/cache``).
        dask_address: a running Dask scheduler (``tcp://host:8786``) to run the trials on.
        workers: start a local Dask cluster of this many worker processes instead.

    Returns:
        The Optuna study (``best_params.yaml``, ``trials.json`` and the plots are written after every trial).
    """
    import optuna

    base, _ = base_mapping(spec, params_path)
    params = check_sweep(spec, base, "sweep")
    if (dask_address or workers) and spec.budget.trials is None:
        raise InputError("a sweep over Dask needs a trial budget", "budget.trials", "set budget.trials (or --trials)")
    paths = SweepPaths(Path(root).resolve())
    epochs = int(trial_params(base, spec, {}).get("student", {}).get("train", {}).get("epochs", 30))
    study = open_study(spec, paths, storage, worker=worker, max_epochs=epochs)
    atomic.write_json(paths.root / "sweep.json", {"spec": spec.model_dump(mode="json"), "base": base,
                                                  "decided_on": "val", "val": _val_words(params)})
    if spec.enqueue_base and not study.trials and worker == 0:
        study.enqueue_trial(base_values(spec, trial_params(base, spec, {})), skip_if_exists=True)
    budget = spec.budget.trials
    started = len([t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING])
    remaining = None if budget is None else max(0, budget - started)
    seed_ws = Path(from_workspace).resolve() if from_workspace else None
    cache = Path(cache_dir).resolve() if cache_dir else None
    if remaining == 0:
        log.info("sweep %s: the budget of %d trials is spent", spec.study, budget)
    elif dask_address or workers:
        if storage is not None and "://" not in storage:         # a journal file: the same file from every worker
            storage = str(Path(storage).resolve())
        job = TrialJob(spec, base, str(paths.root), storage, seed_ws, cache, epochs,
                       time.time() + spec.budget.seconds if spec.budget.seconds else None)
        _run_on_dask(job, remaining, first=1000 * worker + started, address=dask_address, workers=workers)
    else:
        callbacks = [optuna.study.MaxTrialsCallback(budget, states=None)] if budget else []
        callbacks.append(lambda s, t: write_outputs(s, spec, base, paths))
        study.optimize(lambda t: run_trial(t, spec, base, paths, seed_ws, cache),
                       n_trials=remaining, timeout=spec.budget.seconds,
                       callbacks=callbacks, catch=(RuntimeError,), gc_after_trial=True, show_progress_bar=False)
    write_outputs(study, spec, base, paths)
    return study


@dataclass(frozen=True)
class TrialJob:
    """What a Dask task needs to run one trial of the study (sent to the worker by value).

    ``root``, ``storage``, ``from_workspace`` and ``cache`` must mean the same files on every worker's
    machine (a shared file system, or an RDB storage URL); ``deadline`` is a wall-clock ``time.time()``
    in seconds after which a task starts no trial (``budget.seconds``)."""

    spec: SweepSpec
    base: dict[str, Any]
    root: str
    storage: str | None
    from_workspace: Path | None
    cache: Path | None
    max_epochs: int
    deadline: float | None


def dask_trial(job: TrialJob, worker: int) -> dict[str, Any]:
    """One Dask task: ``study.optimize(n_trials=1)`` against the shared storage.

    Why one trial per task: the storage hands out trial numbers and the enqueued base trial atomically,
    so N tasks make exactly N trials whichever workers run them, and a lost worker loses one trial,
    not a whole worker's share (Dask runs its task again elsewhere: a new trial, while the lost one
    stays ``RUNNING`` in the storage). The trial itself is :func:`run_trial` (an ``rgb2thermal run``
    process on the worker's machine).

    Args:
        job: the study and trial settings (:class:`TrialJob`).
        worker: the sampler seed offset of this task (distinct per task: equal seeds propose equal values).

    Returns:
        ``{"number", "state", "dask_worker"}`` of the trial run; ``number`` None when the deadline had passed.
    """
    from distributed import get_worker

    where = get_worker().address
    if job.deadline is not None and time.time() >= job.deadline:
        log.info("sweep: the time budget is spent; task %d starts no trial", worker)
        return {"number": None, "state": "NOT_STARTED", "dask_worker": where}
    paths = SweepPaths(Path(job.root))
    # opened as the driver opened it (create_study + load_if_exists): load_study would drop the sweep's pruner
    study = open_study(job.spec, paths, job.storage, worker=worker, max_epochs=job.max_epochs)
    ran: list[Any] = []

    def objective(trial: Any) -> float:
        trial.set_user_attr("dask_worker", where)
        return run_trial(trial, job.spec, job.base, paths, job.from_workspace, job.cache)

    study.optimize(objective, n_trials=1, catch=(RuntimeError,), gc_after_trial=True, show_progress_bar=False,
                   callbacks=[lambda s, t: ran.append(t), lambda s, t: write_outputs(s, job.spec, job.base, paths)])
    return {"number": ran[0].number, "state": ran[0].state.name, "dask_worker": where}


def _run_on_dask(job: TrialJob, n: int, *, first: int, address: str | None, workers: int | None) -> list[dict[str, Any]]:
    """Submit ``n`` :func:`dask_trial` tasks (seed offsets ``first``..``first + n - 1``) and wait for them.

    ``address``: an existing scheduler (the user started ``dask scheduler`` and ``dask worker ADDRESS
    --nthreads 1`` per trial slot); else a ``LocalCluster`` of ``workers`` processes, one thread each
    (a trial is a whole pipeline run: one per worker at a time)."""
    from distributed import Client, LocalCluster

    cluster = None if address else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
    try:
        with Client(address or cluster) as client:
            log.info("sweep %s: %d trial(s) as Dask tasks on %s", job.spec.study, n, client.scheduler.address)
            futures = [client.submit(dask_trial, job, first + k, pure=False, key=f"sweep-trial-{job.spec.study}-{first + k}")
                       for k in range(n)]
            results = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    for r in results:
        log.info("sweep %s: trial %s %s on %s", job.spec.study, r["number"], r["state"], r["dask_worker"])
    return results


def base_values(spec: SweepSpec, mapping: dict[str, Any]) -> dict[str, Any]:
    """The searched keys' values in the base parameters (trial 0 = the base recipe under the sweep's
    ``fixed`` settings). A key the base leaves at its stage default is sampled instead (logged)."""
    out = {}
    for key in spec.space:
        node: Any = mapping
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            log.warning("sweep: '%s' is not set in the base parameters: trial 0 samples it", key)
        else:
            out[key] = node
    return out


def _val_words(params: Any) -> str:
    d = params.data
    return f"val_fraction={d.val_fraction} (seed {d.val_seed})" if d.val_fraction else f"val_split={d.val_split}"


def write_outputs(study: Any, spec: SweepSpec, base: dict[str, Any], paths: SweepPaths) -> None:
    """``best_params.yaml`` (a params file ``rgb2thermal run --params`` takes as is), ``trials.json``
    and the plots; called after every finished trial, by whichever worker finished it."""
    from pipeline.sweep_report import trial_rows, write_plots

    rows = trial_rows(study)
    atomic.write_json(paths.root / "trials.json", rows)
    best = best_trial(study)
    if best is not None:
        mapping = trial_params(base, spec, dict(best.params))
        atomic.write_text(paths.best_params, f"# best trial {best.number} of study '{spec.study}': "
                                             f"val {spec.objective} = {best.value:.4f}\n"
                          + yaml.safe_dump(mapping, sort_keys=False))
    write_plots(study, paths.plots)


def best_trial(study: Any) -> Any:
    """The complete trial with the highest val objective (pruned and failed trials never win); None if none."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def sweep_classes(root: str | Path) -> list[str]:
    """The target classes of the sweep in ``root`` (from its ``sweep.json``), for the tables."""
    path = Path(root) / "sweep.json"
    if not path.is_file():
        return list(DEFAULT_CLASSES)             # the pipeline's default classes (data.classes)
    return list((json.loads(path.read_text())["base"].get("data") or {}).get("classes") or DEFAULT_CLASSES)
