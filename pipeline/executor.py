"""The executor: runs a plan of :class:`Step` values with content-keyed, whole-step reuse.

Why whole-step keys: users change one knob (a refine threshold) and expect minutes, not hours.
Every step has a *stage key* = sha256 of (its kind, its parameter sections, its instance
options, the *content* of every file it reads: the upstream outputs it names in ``needs`` and
the files/folders outside the workspace it names in ``external``). Keys never contain paths or
mtimes, so a copied or moved workspace reuses every step, and a step re-runs only when what it
reads changed. Its outputs live in ``<workspace>/stages/<name>/`` with a marker ``stage.json``
holding the key, written last (atomically); a step whose key equals the marker's and whose
outputs all exist is ``reused`` as a whole. A killed step has no marker, so the next run redoes
exactly that step; a step that ``resumes`` (training) keeps its folder when the interrupted
attempt had the same key (``attempt.json``) and continues from its last epoch checkpoint.

Paths inside outputs are written relative to the workspace when they point into it
(:meth:`PipelineContext.rel` / :meth:`PipelineContext.resolve`), so outputs stay valid after a
move. Below whole-step keys, per-image caches (``infer``, ``refine``) live under the cache root
(``<workspace>/cache`` unless ``RGB2THERMAL_CACHE_DIR`` or ``--cache-dir`` names a shared one).

Each run holds the workspace lock and writes a :class:`pipeline.runs.RunRecord` (updated after
every step, so a killed run shows how far it got; metrics are kept per step). The plan itself
(which steps, what each reads) is built in :mod:`pipeline.plan`, the work of each kind in
:mod:`pipeline.stages`; the Prefect flow and the generated ``dvc.yaml`` run the same plan
through :func:`execute_step`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from core.hashing import HashMemo, json_sha256
from pipeline.lock import check_cache_writable, workspace_lock
from pipeline.params import PipelineParams
from data.fingerprint import content_fingerprint
from pipeline.runs import RunRecord, StageRecord, git_revision, new_run_id, now, save_record
from pipeline.stages import run_kind
from pipeline.step import PipelineContext, Step, StepOutput
from tasks.compute import open_shards

log = logging.getLogger(__name__)

#: Bumped when a step's outputs change meaning: every stage key changes, nothing stale is reused.
PIPELINE_SCHEMA = "rgb2thermal.pipeline/3"
MARKER = "stage.json"
ATTEMPT = "attempt.json"
CACHE_ENV = "RGB2THERMAL_CACHE_DIR"


# ---------------------------------------------------------------------------------------------
# stage keys and markers
# ---------------------------------------------------------------------------------------------
def _content(ctx: PipelineContext, path: Path) -> str:
    return content_fingerprint(path, ctx.memo) if path.is_dir() else ctx.memo.sha256(path)


def stage_key(ctx: PipelineContext, step: Step) -> str:
    """sha256 of the step's kind, parameter sections, options and the content of everything it reads."""
    needed = {role: ctx.input(step, role) for role in step.needs}
    missing = [str(p) for p in [*needed.values(), *step.external.values()] if not Path(p).exists()]
    if missing:
        raise InputError(f"step '{step.name}' input files are missing: {missing[:3]}", str(ctx.workspace),
                         "re-run the earlier steps (rgb2thermal run) or fix the paths in the parameters")
    return json_sha256({"schema": PIPELINE_SCHEMA, "kind": step.kind,
                        "params": {s: ctx.params.section(s) for s in step.sections},
                        "options": dict(step.options),
                        "inputs": {role: _content(ctx, Path(p)) for role, p in sorted(needed.items())},
                        "external": {role: _content(ctx, Path(p)) for role, p in sorted(step.external.items())}})


def _read_json_or_none(path: Path) -> dict | None:
    try:
        m = atomic.read_json(path)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _reusable(stage_dir: Path, key: str | None) -> StepOutput | None:
    """The stored outputs when the marker's key is ``key`` (any key when None) and every output exists."""
    m = _read_json_or_none(stage_dir / MARKER)
    if m is None or "files" not in m or (key is not None and m.get("key") != key):
        return None
    files = {role: stage_dir / rel for role, rel in m["files"].items()}
    if not all(p.exists() for p in files.values()):
        log.warning("stage %s: marker matches but outputs are missing; re-running it", stage_dir.name)
        return None
    return StepOutput(files=files, info=m.get("info", {}), reused=True, key=m["key"])


def _write_marker(stage_dir: Path, key: str, out: StepOutput) -> None:
    files = {}
    for role, p in out.files.items():
        try:
            files[role] = Path(p).resolve().relative_to(stage_dir.resolve()).as_posix()
        except ValueError:
            raise RuntimeError(f"step {stage_dir.name} wrote {p} outside its stage folder") from None
    atomic.write_json(stage_dir / MARKER, {"schema": PIPELINE_SCHEMA, "key": key, "files": files,
                                           "cache_hits": out.cache_hits, "cache_misses": out.cache_misses,
                                           "seconds": round(out.seconds, 3), "info": out.info, "finished": now()})


def _inputs_changed_during(ctx: PipelineContext, step: Step, key: str) -> bool:
    """Whether what ``step`` reads differs now from when its key was computed (an input edited,
    added or removed while the step ran). Then the marker would claim content the outputs were
    not computed from, and a later run could reuse them for it."""
    try:
        return stage_key(ctx, step) != key
    except InputError:            # an input vanished meanwhile
        return True


def _prepare(sdir: Path, step: Step, key: str) -> bool:
    """Make the step's folder ready; True when an interrupted attempt with this key is resumed."""
    (sdir / MARKER).unlink(missing_ok=True)       # no marker = not done (a kill from here on redoes it)
    attempt = _read_json_or_none(sdir / ATTEMPT)
    if step.resumable and attempt is not None and attempt.get("key") == key:
        log.info("step %s: resuming the interrupted attempt of %s", step.name, attempt.get("started"))
        return True
    if sdir.exists():
        shutil.rmtree(sdir)
    sdir.mkdir(parents=True)
    atomic.write_json(sdir / ATTEMPT, {"key": key, "started": now()})
    return False


def execute_step(ctx: PipelineContext, step: Step) -> StepOutput:
    """Run ``step`` unless its stored outputs are current; record it in the run record either way."""
    t0 = time.perf_counter()
    ctx.current = step.name
    sdir = ctx.stage_dir(step.name)
    key = stage_key(ctx, step)
    out = _reusable(sdir, key)
    if out is None:
        resumed = _prepare(sdir, step, key)
        log.info("step %s: running", step.name)
        out = run_kind(ctx, step, sdir, resume=resumed)
        if resumed:
            out.info.setdefault("resumed", True)
        out.key = key
        out.seconds = time.perf_counter() - t0
        if _inputs_changed_during(ctx, step, key):
            msg = (f"an input of step {step.name} changed while it ran: its outputs serve this run, but the step is "
                   "not marked done, so the next run redoes it with the new content")
            log.warning(msg)
            out.info["fallbacks"] = [*out.info.get("fallbacks", []), msg]
        else:
            _write_marker(sdir, key, out)
    else:
        out.seconds = time.perf_counter() - t0
        log.info("step %s: reused (inputs and parameters unchanged)", step.name)
    ctx.outputs[step.name] = out
    ctx.memo.save()
    note(ctx, step.name, out)
    return out


def note(ctx: PipelineContext, name: str, out: StepOutput) -> None:
    """Carry a step's timings, datasets, models, fallbacks and metrics into the run record (and save it)."""
    rec = ctx.record
    with ctx.lock:
        rec.stages = [s for s in rec.stages if s.name != name]
        rec.stages.append(StageRecord(name=name, seconds=round(out.seconds, 3), cache_hits=out.cache_hits,
                                      cache_misses=out.cache_misses, reused=out.reused,
                                      outputs={k: str(v) for k, v in out.files.items()}))
        _merge_info(rec, name, out.info)
        save_record(ctx.workspace, rec)


def _merge_info(rec: RunRecord, name: str, info: dict[str, Any]) -> None:
    rec.models.update(info.get("models", {}))
    rec.datasets.update(info.get("datasets", {}))
    for fb in info.get("fallbacks", []):
        line = f"{name}: {fb}"
        if line not in rec.fallbacks:
            rec.fallbacks.append(line)
    if "metrics" in info:
        rec.metrics[name] = info["metrics"]          # per step: a second eval never overwrites the first
    if "decisions" in info:
        rec.decisions[name] = info["decisions"]


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def workspace_hash_memo(workspace: str | Path) -> HashMemo:
    """The workspace's file-hash memo (``cache/file_hashes.json``), shared by runs and nightly checks."""
    return HashMemo(Path(workspace) / "cache" / "file_hashes.json")


def default_cache_root(cache_root: str | Path | None = None) -> Path | None:
    """``cache_root``, else ``$RGB2THERMAL_CACHE_DIR``, else None (= ``<workspace>/cache``)."""
    chosen = cache_root or os.environ.get(CACHE_ENV) or None
    return Path(chosen).expanduser().resolve() if chosen else None


@contextlib.contextmanager
def pipeline_run(params: PipelineParams, workspace: str | Path, flow: str = "adapt",
                 lock_wait_seconds: float = 0.0, cache_root: str | Path | None = None,
                 hold_lock: bool = True) -> Iterator[PipelineContext]:
    """Hold the workspace lock (unless the caller holds it: ``hold_lock=False``) and keep the run
    record for the block (status, error, finish time)."""
    params.check_files()                          # before anything is written: a missing file stops the run here
    ws = Path(workspace).resolve()
    record = RunRecord(run_id=new_run_id(flow), flow=flow, started=now(), git_revision=git_revision(),
                       params=params.model_dump(mode="json"))
    shared_cache = default_cache_root(cache_root)
    if shared_cache is not None:
        check_cache_writable(shared_cache)        # before the lock: a read-only cache writes nothing
    lock = workspace_lock(ws, record.run_id, wait_seconds=lock_wait_seconds) if hold_lock else contextlib.nullcontext()
    with lock:
        ctx = PipelineContext(params=params, workspace=ws, record=record, memo=workspace_hash_memo(ws),
                              cache_root=shared_cache, compute=open_shards(params.compute))
        save_record(ws, record)
        try:
            ctx.mount_datasets()
            yield ctx
            record.status = "succeeded"
        except BaseException as exc:
            record.status = "failed"
            record.error = f"step {ctx.current or '(none)'}: {exc.__class__.__name__}: {exc}"
            raise
        finally:
            if ctx.compute is not None:
                ctx.compute.close()
            ctx.memo.save()
            record.finished = now()
            save_record(ws, record)


def load_done_step(ctx: PipelineContext, step: Step, *, verify: bool = True) -> StepOutput:
    """An earlier step's stored outputs. ``verify``: check they are current (plain door); without
    it the marker is trusted (the DVC door: DVC has decided what is current)."""
    key = stage_key(ctx, step) if verify else None
    out = _reusable(ctx.stage_dir(step.name), key)
    if out is None:
        raise InputError(f"step '{step.name}' has not run with the current inputs and parameters",
                         str(ctx.stage_dir(step.name)), f"run it first: rgb2thermal run --stage {step.name}")
    ctx.outputs[step.name] = out
    # a single-step (DVC) run's record still names every dataset and model the step depends on
    _merge_info(ctx.record, step.name, {k: v for k, v in out.info.items() if k in ("datasets", "models")})
    return out


def find_step(steps: Sequence[Step], name: str, option: str = "--stage") -> Step:
    for s in steps:
        if name in (s.name, dvc_stage_name(s.name)):
            return s
    raise InputError(f"unknown pipeline step '{name}'", option, f"use one of {[s.name for s in steps]}")


def dvc_stage_name(name: str) -> str:
    """DVC reserves '@' (foreach) in stage names: ``student@round2`` is ``student-round2`` there."""
    return name.replace("@", "-")


def check_plan(steps: Sequence[Step]) -> None:
    """A plan's names are unique and each step reads only steps before it (so one pass runs it)."""
    seen: set[str] = set()
    for step in steps:
        if step.name in seen:
            raise InputError(f"step name '{step.name}' occurs twice in the plan", "pipeline plan",
                             "give every instance its own name, e.g. student@round2")
        later = [u for u in step.upstream() if u not in seen]
        if later:
            raise InputError(f"step '{step.name}' reads {later}, which do not run before it", "pipeline plan",
                             "order the steps so that every step comes after the steps it reads")
        seen.add(step.name)


def run_steps(ctx: PipelineContext, steps: Sequence[Step], *, only: str | None = None, until: str | None = None,
              trust_upstream: bool = False, execute: Callable[[PipelineContext, Step], StepOutput] = execute_step
              ) -> None:
    """Execute ``steps`` in order (each reused when current). ``only``: that step alone, after loading
    the ones before it (verified, or trusted with ``trust_upstream``); ``until``: stop after it."""
    if only is not None and until is not None:
        raise InputError("--stage and --until exclude each other", f"--stage {only} --until {until}", "give one of them")
    last = find_step(steps, only or until, "--stage" if only else "--until").name if (only or until) else None
    for step in steps:
        if only is not None and step.name != last:
            load_done_step(ctx, step, verify=not trust_upstream)
            continue
        execute(ctx, step)
        if step.name == last:
            break


def run_pipeline(params: PipelineParams, workspace: str | Path, *, flow: str = "adapt",
                 only: str | None = None, until: str | None = None, lock_wait_seconds: float = 0.0,
                 trust_upstream: bool = False, cache_root: str | Path | None = None,
                 steps: Sequence[Step] | None = None) -> RunRecord:
    """Run the plan of ``params`` (or the given ``steps``) and return the finished run record.

    ``only``: run that one step (the DVC door: ``trust_upstream`` takes the earlier steps'
    markers as current, since DVC already decided). ``until``: stop after that step, e.g.
    ``until="refine"`` makes the thermal pseudo-labels without training anything on them.
    """
    from pipeline.plan import plan

    steps = list(steps) if steps is not None else plan(params)
    check_plan(steps)
    with pipeline_run(params, workspace, flow, lock_wait_seconds, cache_root) as ctx:
        run_steps(ctx, steps, only=only, until=until, trust_upstream=trust_upstream)
    return ctx.record
