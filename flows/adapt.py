"""Prefect 3 flow ``rgb2thermal-adapt``: the adaptation pipeline as observable, retryable tasks.

Why a thin wrapper: the steps, what each reads, their stage keys and their outputs belong to
:mod:`pipeline` (the one implementation the CLI and DVC also run). This flow takes the same plan
(:func:`pipeline.plan.plan`) and wraps each :func:`pipeline.executor.execute_step` call in a
Prefect task, so a flow run and ``rgb2thermal run`` on one workspace share every stage output
and cache (a step done by one is reused by the other).

Prefect adds:

- one named task run per step (timings and states in the UI); a step whose stored outputs were
  current ends in a ``Completed`` state *named* ``Reused``, so reuse is visible at a glance;
- retries for the steps whose failures can be transient (file I/O: ``Step.retries``), never for
  an :class:`~core.errors.InputError` (bad input does not get better by retrying) and never for
  training (a retry would repeat an hour of work to the same error);
- independent steps run concurrently (``quality`` beside the trainings); trainings are chained
  one after another (2 CPU cores, and mmengine keeps process-wide state);
- artifacts: each evaluation table (``adapt-metrics``, with the per-class day/night and gap-closed
  table), the per-round plot (``adapt-rounds-plot``) and the pseudo-label quality report.

Dask: with ``workers``/``dask_address`` (``compute`` in ``params.yaml``) the per-image steps shard
their frames over a Dask cluster through :mod:`tasks.shard`, the one mechanism of every door. The
steps themselves stay tasks of this flow process (Prefect's thread runner), not tasks of a
``prefect_dask.DaskTaskRunner``: they share one run context (record, lock, hash memo, outputs),
which would be copied, not shared, on Dask workers.

Prefect's own result caching is off (``NO_CACHE``): reuse is decided by the stage keys, which
hash file *contents*. Telemetry is off unless the user turned it on (see :mod:`flows.quiet`).

Run: ``python -m flows.adapt --params params.yaml --workspace workspace [--set KEY=VALUE ...]``.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from flows import quiet

if __name__ == "__main__":  # this module is the entry point: its settings, before prefect is imported
    quiet.apply_prefect_defaults()

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.utilities.annotations import quote

from core.errors import InputError
from pipeline.executor import execute_step, pipeline_run
from pipeline.step import PipelineContext, Step
from pipeline.params import load_params
from pipeline.plan import plan
from tasks.compute import compute_overrides

METRICS_ARTIFACT = "adapt-metrics"
QUALITY_ARTIFACT = "pseudo-label-quality"
ROUNDS_ARTIFACT = "adapt-rounds-plot"
REUSED = "Reused"


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O-like failures, never a user's bad input."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return False


def _task_for(step: Step) -> Any:
    """A Prefect task running exactly ``execute_step(ctx, step)``; reuse ends in state ``Reused``."""

    @task(name=f"adapt-{step.name}", retries=step.retries, retry_delay_seconds=2, retry_condition_fn=transient,
          cache_policy=NO_CACHE, persist_result=False)
    def run_step(ctx: PipelineContext, *upstream: Any) -> Any:
        out = execute_step(ctx, step)
        if out.reused:
            return Completed(name=REUSED, message="inputs and parameters unchanged: stored outputs reused", data=out)
        return out

    return run_step


def run_plan(ctx: PipelineContext, steps: list[Step]) -> None:
    """Submit every step with its upstream steps as ``wait_for``; trainings chained one after another."""
    futures: dict[str, Any] = {}
    last_train = None
    for step in steps:
        wait = [futures[u] for u in step.upstream() if u in futures]
        if step.kind == "train" and last_train is not None:
            wait.append(last_train)
        futures[step.name] = _task_for(step).submit(quote(ctx), wait_for=wait)   # quote: one shared ctx, not a copy
        if step.kind == "train":
            last_train = futures[step.name]
    for fut in futures.values():          # in plan order: raises the first failure
        fut.result()
    order = {s.name: i for i, s in enumerate(steps)}
    ctx.record.stages.sort(key=lambda s: order.get(s.name, len(order)))


@flow(name="rgb2thermal-adapt", persist_result=False)
def adapt_flow(params_path: str | None = "params.yaml", workspace: str = "workspace",
               overrides: list[str] | None = None, params: dict[str, Any] | None = None,
               lock_wait_seconds: float = 0.0, hold_lock: bool = True, workers: int | None = None,
               dask_address: str | None = None) -> dict[str, Any]:
    """Run the pipeline; ``params`` (a mapping) replaces reading ``params_path``. Returns the run record.

    ``hold_lock=False``: the caller already holds the workspace lock (the nightly flow, which
    keeps it from the challenger run through promotion). ``workers`` / ``dask_address``: shard the
    per-image steps over a local Dask cluster of that many processes / the user's scheduler
    (``compute.workers`` / ``compute.scheduler``; see :mod:`tasks.shard`)."""
    p = load_params(None if params is not None else params_path,
                    [*(overrides or []), *compute_overrides(workers, dask_address)], data=params)
    steps = plan(p)
    with pipeline_run(p, workspace, flow="prefect-adapt", lock_wait_seconds=lock_wait_seconds,
                      hold_lock=hold_lock) as ctx:
        run_plan(ctx, steps)
    for name, m in ctx.record.metrics.items():
        if isinstance(m, dict) and m.get("table_markdown"):
            create_markdown_artifact(key=METRICS_ARTIFACT, markdown=m["table_markdown"],
                                     description=f"{name}: thermal test split, adapted student vs baselines, per class")
    for step in steps:
        out = ctx.outputs.get(step.name)
        if step.kind == "eval" and out is not None and "rounds_plot" in out.files:
            # a data: URL, because the plot lives in the workspace, which the Prefect UI cannot reach
            png = base64.b64encode(Path(out.files["rounds_plot"]).read_bytes()).decode("ascii")
            create_image_artifact(image_url=f"data:image/png;base64,{png}", key=ROUNDS_ARTIFACT,
                                  description=f"{step.name}: mAP_50 per self-training round and class, "
                                              "with the source-only (dashed) and oracle (dotted) levels")
        if step.kind == "quality" and out is not None and "json" in out.files:
            create_markdown_artifact(key=QUALITY_ARTIFACT, markdown=Path(out.files["markdown"]).read_text(),
                                     description="pseudo-label quality per stage (pseudo, warped, refined)")
    return ctx.record.to_json()


def main(argv: list[str] | None = None) -> int:
    ap = quiet.flow_parser("python -m flows.adapt", __doc__.split("\n\n")[0], "stage outputs, caches and run records")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="shard infer/refine/eval over a local Dask cluster of N worker processes")
    ap.add_argument("--dask-address", default=None, metavar="ADDR",
                    help="shard them over your own Dask cluster (tcp://host:8786)")
    args = ap.parse_args(argv)
    quiet.configure(args.verbose)

    def body() -> int:
        record = adapt_flow(params_path=args.params, workspace=args.workspace, overrides=args.overrides,
                            lock_wait_seconds=args.wait or 0.0, workers=args.workers, dask_address=args.dask_address)
        print(f"run {record['run_id']}: {record['status']}")
        return 0 if record["status"] == "succeeded" else 1

    return quiet.run_cli(body, args)


if __name__ == "__main__":
    raise SystemExit(main())
