"""Prefect 3 flow ``rgb2thermal-nightly``: retrain when the data changed, promote only a better model.

Why: new thermal/RGB pairs arrive over time; retraining every night on unchanged data wastes
hours, and a retrained model that scores worse must not replace the served one. So the flow

1. fingerprints the watched datasets (:func:`pipeline.champion.watched_fingerprints`) and, when they
   equal the champion's, finishes at once with "no change" (no adapt run, no lock taken);
2. else runs the adapt flow (:func:`flows.adapt.adapt_flow`, a subflow: the same steps and stage
   caches as ``rgb2thermal run``) whose ``val`` step scores the challenger on the val split
   (``data.val_fraction`` / ``data.val_split``): promotion is a decision, so it is made on val and
   the test split is only reported. Without a val split the night is refused before any work,
   unless the user opts in to deciding on test (``decide_on="test"``, said in the report);
3. compares on the same frames: when new data changed the decision split since the
   champion's promotion, the champion's archived model (``<workspace>/champion/<run id>/``) is
   re-scored on the current split (:func:`pipeline.champion.rescore`);
4. decides with :func:`pipeline.champion.decide` and promotes (archiving the student) only a
   winner. The workspace lock is held from the challenger run through promotion (waiting up to
   ``lock_wait_seconds`` for another run), so no other run can replace the student in between. A
   failed challenger run leaves ``champion.json`` untouched; its report says "failed" and the flow fails.

Every night, also one refused because another run kept the workspace busy, writes a Markdown report
to ``<workspace>/nightly/<nightly id>.md`` and publishes it as the artifact ``nightly-decision``.
The decision logic lives in :mod:`pipeline.champion`.

Limit: a champion without an archived model (e.g. a hand-written pointer) cannot be re-scored; its
stored value is then used, logged at WARNING and said in the report.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows import quiet

if __name__ == "__main__":  # this module is the entry point: its settings, before prefect is imported
    quiet.apply_prefect_defaults()

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.adapt import adapt_flow
from core import atomic
from core.errors import InputError
from pipeline.champion import (DEFAULT_METRIC, Champion, Decision, archive_model, decide, format_report,
                               gt_fingerprint, load_champion, promote, rescore, watched_fingerprints)
from pipeline.executor import workspace_hash_memo
from pipeline.params import load_params, set_values
from pipeline.plan import adapted_step
from pipeline.runs import RunRecord, new_run_id, now
from pipeline.lock import WorkspaceBusy, workspace_lock

REPORT_ARTIFACT = "nightly-decision"
FLOW_NAME = "rgb2thermal-nightly"


@task(name="nightly-fingerprints", cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=2)
def fingerprints_task(params: Any, workspace: Path) -> dict[str, str]:
    memo = workspace_hash_memo(workspace)
    fps = watched_fingerprints(params, memo)
    memo.save()
    return fps


@task(name="nightly-rescore-champion", cache_policy=NO_CACHE, persist_result=False)
def rescore_task(champion: Champion, gt: str, metric: str, device: str, batch_size: int,
                 image_root: str, infer: dict[str, Any]) -> tuple[Champion, str]:
    return rescore(champion, gt, metric, device=device, batch_size=batch_size, image_root=image_root, infer=infer)


def _stage_outputs(record: dict[str, Any], step: str) -> dict[str, str]:
    return next((s["outputs"] for s in record["stages"] if s["name"] == step), {})


def _publish(workspace: Path, nightly_id: str, markdown: str, outcome: str) -> Path:
    path = atomic.write_text(workspace / "nightly" / f"{nightly_id}.md", markdown)
    create_markdown_artifact(key=REPORT_ARTIFACT, markdown=markdown, description=f"nightly retraining: {outcome}")
    return path


@contextlib.contextmanager
def _lock_or_report(ws: Path, nightly_id: str, wait: float, fps: dict[str, str], champ: Champion | None,
                    metric: str) -> Iterator[None]:
    """The workspace lock for the night; when another run keeps it past ``wait`` seconds, the night
    still writes its report and artifact ("skipped: workspace busy") before failing with WorkspaceBusy."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(workspace_lock(ws, nightly_id, wait_seconds=wait))
        except WorkspaceBusy as exc:
            reason = f"the workspace is busy ({exc}); no challenger ran and the champion is untouched"
            md = format_report(nightly_id=nightly_id, outcome="skipped: workspace busy", reason=reason, datasets=fps,
                               champion=champ, metric=metric)
            _publish(ws, nightly_id, md, "skipped: workspace busy")
            raise
        yield


@flow(name=FLOW_NAME, persist_result=False)
def nightly_flow(params_path: str | None = "params.yaml", workspace: str = "workspace",
                 overrides: list[str] | None = None, metric: str = DEFAULT_METRIC, min_improvement: float = 0.0,
                 params: dict[str, Any] | None = None, lock_wait_seconds: float = 600.0,
                 decide_on: str = "val") -> dict[str, Any]:
    """One nightly check. ``params`` (a mapping) replaces reading ``params_path`` (as in ``adapt_flow``).
    ``decide_on``: ``val`` (default; needs a val split) or ``test`` (an explicit opt-in, recorded).

    Returns ``{"nightly_id", "outcome" (no change|promoted|kept), "reason", "challenger_run",
    "champion_run", "report"}`` plus, when a challenger ran, ``"champion_value"``,
    ``"challenger_value"`` (the metric of both on the current decision split: val, or test by opt-in)
    and ``"comparison"``; raises when the challenger run fails (champion untouched).
    """
    p = load_params(None if params is not None else params_path, overrides, data=params)
    ws = Path(workspace).resolve()
    nightly_id = new_run_id("nightly")
    fps = fingerprints_task(p, ws)
    champ = load_champion(ws)
    result: dict[str, Any] = {"nightly_id": nightly_id, "challenger_run": None,
                              "champion_run": champ.run_id if champ else None}
    if champ is not None and champ.datasets == fps:
        reason = "the watched datasets are unchanged since the champion's promotion: nothing to retrain"
        md = format_report(nightly_id=nightly_id, outcome="no change", reason=reason, datasets=fps, champion=champ,
                           metric=metric)
        return {**result, "outcome": "no change", "reason": reason, "report": str(_publish(ws, nightly_id, md, "no change"))}

    split, on = _decision_split(decide_on, p)
    # One lock from the challenger run through promotion: no other run can replace
    # stages/student between scoring it and archiving it (the wrong model would be promoted).
    with _lock_or_report(ws, nightly_id, lock_wait_seconds, fps, champ, metric):
        try:
            record = adapt_flow(params_path=params_path, workspace=str(ws), overrides=overrides, params=params,
                                hold_lock=False)
        except Exception as exc:
            reason = f"the challenger run failed ({exc.__class__.__name__}: {exc}); the champion is untouched"
            md = format_report(nightly_id=nightly_id, outcome="failed", reason=reason, datasets=fps, champion=champ,
                               metric=metric)
            _publish(ws, nightly_id, md, "failed")
            raise
        champ, note, decision, metrics = _judge_challenger(ws, p, record, split, champ, fps, metric, min_improvement)
    outcome = "promoted" if decision.promote else "kept"
    note = f"decided on {on}; {note}"
    md = format_report(nightly_id=nightly_id, outcome=outcome, reason=f"{decision.reason} ({note})", datasets=fps,
                       champion=champ, challenger_run=record["run_id"], challenger_metrics=metrics, metric=metric)
    return {**result, "outcome": outcome, "reason": decision.reason, "challenger_run": record["run_id"],
            "champion_run": record["run_id"] if decision.promote else result["champion_run"],
            "champion_value": decision.champion, "challenger_value": decision.challenger, "comparison": note,
            "report": str(_publish(ws, nightly_id, md, outcome))}


def _decision_split(decide_on: str, p: Any) -> tuple[str, str]:
    """(the eval split promotion is decided on: ``val`` or ``eval`` (test), how the report names it);
    deciding on test is refused unless asked for, and said loudly when it is."""
    if decide_on not in ("val", "test"):
        raise InputError(f"decide_on must be 'val' or 'test', got {decide_on!r}", "nightly decide_on", "use val")
    if decide_on == "val" and not p.data.has_val:
        raise InputError("nightly promotion is a decision and the parameters have no val split: it would be made "
                         "on the test split", "params data", "set data.val_fraction (e.g. 0.2 of the adapt pairs, "
                         "which need thermal labels) or data.val_split; or opt in to deciding on test with "
                         "--decide-on test (said in every report)")
    split = "val" if decide_on == "val" else "eval"
    on = ("the val split" if split == "val" else
          "the TEST split (explicit opt-in --decide-on test: the reported test numbers are no longer unbiased)")
    return split, on


def _judge_challenger(ws: Path, p: Any, record: dict[str, Any], split: str, champ: Champion | None,
                      fps: dict[str, str], metric: str, min_improvement: float
                      ) -> tuple[Champion | None, str, Decision, dict]:
    """Score the champion again on the challenger's GT, decide, and promote the challenger if it wins
    (under the caller's lock). Returns (champion as rescored, note, decision, challenger metrics)."""
    metrics = {k: v for k, v in RunRecord.from_json(record).eval_metrics(split).items() if k != "table_markdown"}
    gt = _stage_outputs(record, "index")["thermal_val" if split == "val" else "thermal_test"]
    note = "no champion yet"
    if champ is not None:
        # the index's image paths are relative to the workspace; the champion is scored as the eval
        # step scores the challenger: at the size (and views) it pseudo-labels with
        champ, note = rescore_task(champ, gt, metric, p.eval.device, p.eval.batch_size, str(ws),
                                   {**set_values(p.infer), **set_values(p.thermal_source.infer)})
    decision = decide(champ, metrics, metric, min_improvement)
    if decision.promote:
        # the adapted model: the last self-training round's student (student@round2 with 2 rounds)
        model = archive_model(ws, record["run_id"], _stage_outputs(record, adapted_step(p)))
        promote(ws, Champion(run_id=record["run_id"], metric=metric, value=float(decision.challenger),
                             datasets=fps, promoted=now(), metrics=metrics, model=model,
                             test_set=gt_fingerprint(gt)))
    return champ, note, decision, metrics


def main(argv: list[str] | None = None) -> int:
    ap = quiet.flow_parser("python -m flows.nightly", __doc__.split("\n\n")[0],
                           "stage outputs, run records and champion.json")
    ap.add_argument("--metric", default=DEFAULT_METRIC,
                    help=f"dotted metric path deciding promotion, higher is better (default: {DEFAULT_METRIC})")
    ap.add_argument("--min-improvement", type=float, default=0.0,
                    help="the challenger must beat the champion by more than this (metric units; default 0)")
    ap.add_argument("--decide-on", choices=("val", "test"), default="val",
                    help="the split promotion is decided on (default: val, which the parameters must have: "
                         "data.val_fraction or data.val_split); 'test' is an explicit opt-in, said in the report")
    args = ap.parse_args(argv)
    quiet.configure(args.verbose)

    def body() -> int:
        out = nightly_flow(params_path=args.params, workspace=args.workspace, overrides=args.overrides,
                           metric=args.metric, min_improvement=args.min_improvement, decide_on=args.decide_on,
                           **({"lock_wait_seconds": args.wait} if args.wait is not None else {}))
        print(f"nightly {out['nightly_id']}: {out['outcome']} — {out['reason']} (report: {out['report']})")
        return 0

    return quiet.run_cli(body, args)


if __name__ == "__main__":
    raise SystemExit(main())
