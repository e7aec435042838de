"""Prefect 3 flow ``rgb2thermal-adapt``: the adaptation pipeline as observable, retryable tasks.

Why a thin wrapper: the order of the steps, their stage keys and their outputs belong to
:mod:`tasks.pipeline` (the one implementation the CLI and DVC also run). This flow iterates the
same :func:`tasks.pipeline.steps_for` list and wraps each :func:`tasks.pipeline.execute_step`
call in a Prefect task, so a flow run and ``rgb2thermal run`` on one workspace share every
stage output and cache (a step done by one is ``reused`` by the other).

Prefect adds: one named task run per step (timings and states in the UI), retries for the
steps whose failures can be transient (file I/O: ``Step.retries``; never for training, where a
retry would only repeat an hour of work to the same error), and two artifacts: the evaluation
table (``adapt-metrics``, Markdown, per class with the baselines) and the pseudo-label quality
report (``pseudo-label-quality``). Prefect's own result caching is off (``NO_CACHE``): reuse
is decided by the stage keys, which hash file *contents*.

Run: ``python -m flows.adapt --params params.yaml --workspace workspace [--set KEY=VALUE ...]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.pipeline import PipelineContext, Step, StepOutput, execute_step, pipeline_run, steps_for
from tasks.pipeline_params import load_params

METRICS_ARTIFACT = "adapt-metrics"
QUALITY_ARTIFACT = "pseudo-label-quality"


def _task_for(step: Step) -> Any:
    """A Prefect task running exactly ``execute_step(ctx, step)``."""

    @task(name=f"adapt-{step.name}", retries=step.retries, retry_delay_seconds=2, cache_policy=NO_CACHE,
          persist_result=False)
    def run_step(ctx: PipelineContext) -> StepOutput:
        return execute_step(ctx, step)

    return run_step


@flow(name="rgb2thermal-adapt", persist_result=False)
def adapt_flow(params_path: str | None = "params.yaml", workspace: str = "workspace",
               overrides: list[str] | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the pipeline; ``params`` (a mapping) replaces reading ``params_path``. Returns the run record."""
    p = load_params(None if params is not None else params_path, overrides, data=params)
    with pipeline_run(p, workspace, flow="prefect-adapt") as ctx:
        for step in steps_for(p):
            _task_for(step)(ctx)
    table = ctx.record.metrics.get("table_markdown")
    if table:
        create_markdown_artifact(key=METRICS_ARTIFACT, markdown=table,
                                 description="thermal test split: adapted student vs baselines, per class")
    quality = ctx.outputs.get("quality")
    if quality is not None and "markdown" in quality.files:
        create_markdown_artifact(key=QUALITY_ARTIFACT, markdown=Path(quality.files["markdown"]).read_text(),
                                 description="pseudo-label quality per stage (pseudo, warped, refined)")
    return ctx.record.to_json()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.adapt", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")
    ap.add_argument("--workspace", default="workspace", help="stage outputs, caches and run records (default: workspace)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter (dotted key, YAML value); repeatable")
    args = ap.parse_args(argv)
    record = adapt_flow(params_path=args.params, workspace=args.workspace, overrides=args.overrides)
    print(f"run {record['run_id']}: {record['status']}")
    return 0 if record["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
