"""The champion model of a workspace and the promote / keep decision of the nightly retraining.

Why a pointer file: the nightly flow retrains when the watched data changed, but a new model
("challenger") replaces the served one ("champion") only when it is measurably better. The
decision must survive crashes and be auditable, so:

- ``<workspace>/champion.json`` names the champion run (its run record holds the models), the
  metric it was promoted on and its value, and the dataset fingerprints it was trained on
  (compared with the current fingerprints to skip a night when nothing changed). It is written
  atomically and **only** after a successful challenger won: a failed run never touches it.
- ``<workspace>/champion_history.jsonl`` gets one line per promotion (append-only; each append
  rewrites the file atomically, so a reader never sees a half line).

Metrics are addressed by a dotted path into a run record's ``metrics`` mapping:
``<model>.<category>.<metric>``, e.g. ``adapted.all.mAP_50`` (COCO mAP at IoU 0.5 over all
classes of the adapted student on the thermal test split, a fraction in [0, 1]).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import InputError
from core.hashing import HashMemo, file_sha256, json_sha256
from data.fingerprint import content_fingerprint

CHAMPION_NAME = "champion.json"
HISTORY_NAME = "champion_history.jsonl"
DEFAULT_METRIC = "adapted.all.mAP_50"
ARCHIVE_DIR = "champion"

log = logging.getLogger(__name__)


@dataclass
class Champion:
    """The promoted run: ``value`` of ``metric`` (higher is better) and the data it saw."""

    run_id: str
    metric: str
    value: float
    datasets: dict[str, str]                 # dataset version -> fingerprint at promotion
    promoted: str = ""                       # UTC time, ISO 8601
    metrics: dict[str, Any] = field(default_factory=dict)   # the run's metrics (without the Markdown table)
    model: dict[str, str] = field(default_factory=dict)     # archived student: {"config", "checkpoint"} paths
    test_set: str = ""                       # sha256 of the thermal test ground truth ``value`` was measured on

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> Champion:
        try:
            return cls(run_id=str(d["run_id"]), metric=str(d["metric"]), value=float(d["value"]),
                       datasets=dict(d["datasets"]), promoted=str(d.get("promoted", "")),
                       metrics=dict(d.get("metrics") or {}), model=dict(d.get("model") or {}),
                       test_set=str(d.get("test_set", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed champion pointer ({exc.__class__.__name__}: {exc})", where,
                             "fix it by hand or delete it (the next nightly run then promotes its challenger)") from None


@dataclass(frozen=True)
class Decision:
    """Whether the challenger replaces the champion, and why (one human-readable sentence)."""

    promote: bool
    reason: str
    metric: str
    challenger: float | None
    champion: float | None


def champion_path(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / CHAMPION_NAME


def history_path(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / HISTORY_NAME


def load_champion(workspace: str | os.PathLike[str]) -> Champion | None:
    """The current champion, or None before the first promotion."""
    path = champion_path(workspace)
    if not path.is_file():
        return None
    try:
        data = atomic.read_json(path)
    except ValueError as exc:
        raise InputError(f"champion pointer is not valid JSON ({exc})", str(path),
                         "fix it by hand or delete it (the next nightly run then promotes its challenger)") from None
    if not isinstance(data, dict):
        raise InputError("champion pointer must be a JSON object", str(path), "fix it by hand or delete it")
    return Champion.from_json(data, str(path))


def read_history(workspace: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every promotion so far, oldest first."""
    path = history_path(workspace)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def promote(workspace: str | os.PathLike[str], champion: Champion) -> Path:
    """Make ``champion`` the workspace's champion: history line first, then the pointer (both atomic).

    A crash between the two leaves the old pointer and one history line too many, never a torn
    file; the next promotion drops that line (:func:`_drop_interrupted_promotion`).
    """
    hist = history_path(workspace)
    lines = [ln for ln in (hist.read_text(encoding="utf-8") if hist.is_file() else "").splitlines() if ln.strip()]
    _drop_interrupted_promotion(workspace, lines)
    atomic.write_text(hist, "".join(ln + "\n" for ln in lines) + json.dumps(asdict(champion), sort_keys=True) + "\n")
    return atomic.write_json(champion_path(workspace), asdict(champion))


def _drop_interrupted_promotion(workspace: str | os.PathLike[str], lines: list[str]) -> None:
    """Remove the last history line when it is a promotion a crash cut short: the pointer still names
    the line before it. Without this, a nightly killed between the two writes and run again listed
    a champion that never served (and, retried, the same run twice)."""
    current = load_champion(workspace)
    if current is None or len(lines) < 2:
        return
    try:
        last, before = json.loads(lines[-1]).get("run_id"), json.loads(lines[-2]).get("run_id")
    except (ValueError, AttributeError):
        return
    if last != current.run_id and before == current.run_id:
        log.warning("champion history: dropping the promotion of %s, which a crash interrupted before "
                    "champion.json named it", last)
        lines.pop()


def archive_model(workspace: str | os.PathLike[str], run_id: str, files: dict[str, str]) -> dict[str, str]:
    """Copy a run's student ``config`` and ``checkpoint`` to ``<workspace>/champion/<run_id>/``.

    Why: ``stages/student/`` is overwritten by the next training, but the champion must stay
    servable and re-scorable. Copies are atomic; returns the archived paths by role.
    """
    out: dict[str, str] = {}
    for role in ("config", "checkpoint"):
        src = Path(files.get(role, ""))
        if not src.is_file():
            raise InputError(f"the run's student has no {role} file", str(src) or "record.stages.student.outputs",
                             "promote only a run whose student step finished")
        dest = Path(workspace) / ARCHIVE_DIR / run_id / src.name
        with atomic.atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        out[role] = str(dest)
    return out


def gt_fingerprint(gt: str | os.PathLike[str]) -> str:
    """Identity of a test set: ``sha256:`` of its COCO ground-truth file (boxes, images, split)."""
    return f"sha256:{file_sha256(gt)}"


def archive_cache_dir(model: dict[str, str]) -> Path:
    """The infer cache of the workspace an archived model lives in (``<workspace>/cache/infer``, the
    pipeline's default cache root): the archive is ``<workspace>/champion/<run_id>/<file>`` and holds a
    byte copy of the run's files, so its fingerprint is the run's own and the frames its eval step
    already scored are cache hits."""
    return Path(model["checkpoint"]).resolve().parents[2] / "cache" / "infer"


def evaluate_model(model: dict[str, str], gt: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str],
                   infer: dict[str, Any] | None = None, device: str = "cpu", batch_size: int = 8,
                   name: str = "adapted", image_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Score an archived model on the thermal test ground truth ``gt`` (COCO; relative image paths are
    relative to ``image_root``: a pipeline workspace's index holds paths relative to the workspace).

    Args:
        model: ``{"config", "checkpoint"}`` paths of the archived student.
        gt: the test split's COCO ground truth.
        cache_dir: the infer stage's per-image cache (see :func:`archive_cache_dir`).
        infer: infer-section keys (``input_size``, ``tta``, ``min_score``...): run the model as the
            pipeline's eval step runs it, i.e. as it pseudo-labels; None = the stage defaults.
        device: where the model runs (not in the cache key).
        batch_size: frames per forward pass (not in the cache key).
        name: the model name of the returned metrics.
        image_root: the folder relative ``file_name``s of ``gt`` are relative to (a pipeline
            workspace); None = ``gt``'s own folder.

    Returns:
        ``{name: {<category>: {...}, "all": {...}}}`` shaped like a run record's metrics, so
        :func:`decide` reads the champion's and the challenger's values on the *same* test set.
    """
    import tempfile

    from detection.detector import load_detector
    from tasks.evaluate import evaluate_runs
    from tasks.infer import InferParams, infer_results

    params = InferParams.validated({**(infer or {}), "config": model["config"], "checkpoint": model["checkpoint"],
                                    "device": device, "batch_size": batch_size, "source": "thermal_student"},
                                   "champion re-scoring")
    # the archive is a slim checkpoint: loaded under torch's strict default, since champion.json (not
    # the user) names it, so a planted pickle there is refused instead of unpickled
    det = load_detector(model["config"], model["checkpoint"], device=device, trusted=False)
    with tempfile.TemporaryDirectory(prefix="r2t-champion-") as tmp:
        preds, _ = infer_results(Path(gt), Path(tmp) / "infer.json", params, cache_dir=Path(cache_dir), detector=det,
                                    image_root=Path(image_root) if image_root is not None else None)
        pred_file = atomic.write_json(Path(tmp) / f"{name}.json", preds)
        (run,) = evaluate_runs(gt, {name: pred_file}).runs
    return {name: {**run.per_category, "all": run.overall}}


def rescore(champion: Champion, gt: str | os.PathLike[str], metric: str, *, device: str = "cpu",
            batch_size: int = 8, infer: dict[str, Any] | None = None,
            cache_dir: str | os.PathLike[str] | None = None,
            image_root: str | os.PathLike[str] | None = None) -> tuple[Champion, str]:
    """The champion as measured on the test set ``gt``, and a note for the report.

    When the test set changed since the promotion (new data can add test frames), the archived
    champion model is evaluated again (through the infer stage, ``infer`` and ``cache_dir`` as in
    :func:`evaluate_model`; default cache: :func:`archive_cache_dir`) so both models are compared on
    the same frames. Without an archived model that is impossible: the stored value is used, logged
    at WARNING and noted. A re-scored champion without a valid value (-1 from pycocotools) gets -1:
    any valid challenger wins.
    """
    now_set = gt_fingerprint(gt)
    if champion.test_set == now_set:
        return champion, "champion and challenger were scored on the same test set"
    model = champion.model
    if not (model.get("config") and Path(model.get("checkpoint", "")).is_file()):
        note = ("WARNING: the test set changed since the champion's promotion and its model is not archived: "
                "compared with its stored value (measured on a different test set)")
        log.warning(note)
        return champion, note
    metrics = evaluate_model(model, gt, cache_dir=cache_dir if cache_dir is not None else archive_cache_dir(model),
                             infer=infer, device=device, batch_size=batch_size, name=metric.split(".")[0],
                             image_root=image_root)
    value = metric_value(metrics, metric)
    return (Champion(run_id=champion.run_id, metric=champion.metric, value=-1.0 if value is None else value,
                     datasets=champion.datasets, promoted=champion.promoted, metrics=metrics, model=model,
                     test_set=now_set),
            "the test set changed since the champion's promotion: the champion was re-scored on the current test set")


def metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """The value at dotted path ``metric`` in a run record's metrics; None when it is not a finite
    number (pycocotools reports -1 when a category has no ground truth).

    Raises InputError when the path does not exist: a misspelt metric must not read as "worse".
    """
    node: Any = metrics
    walked: list[str] = []
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            options = sorted(node) if isinstance(node, dict) else []
            raise InputError(f"metric '{metric}' not in the run's metrics (no '{part}' under "
                             f"'{'.'.join(walked) or '<metrics>'}')", "metric",
                             f"use a dotted path <model>.<category>.<metric>; here one of {options}")
        node = node[part]
        walked.append(part)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    value = float(node)
    return value if math.isfinite(value) and value >= 0 else None


def decide(champion: Champion | None, challenger_metrics: dict[str, Any], metric: str = DEFAULT_METRIC,
           min_improvement: float = 0.0) -> Decision:
    """Promote iff the challenger's ``metric`` exceeds the champion's by more than ``min_improvement``
    (same units as the metric, e.g. 0.01 = one mAP point); with no champion yet, any valid value wins.

    Ties are kept (no churn); a challenger without a valid value is never promoted.
    """
    if min_improvement < 0:
        raise InputError(f"min_improvement must be >= 0, got {min_improvement}", "min_improvement", "use e.g. 0.0 or 0.01")
    new = metric_value(challenger_metrics, metric)
    if champion is not None and champion.metric != metric:
        raise InputError(f"the champion was promoted on '{champion.metric}', not '{metric}'", "metric",
                         f"compare on '{champion.metric}', or delete champion.json to start over on '{metric}'")
    old = None if champion is None else champion.value
    if new is None:
        return Decision(False, f"challenger has no valid {metric}: kept the champion", metric, None, old)
    if champion is None:
        return Decision(True, f"no champion yet: promoted the challenger ({metric} = {new:.4f})", metric, new, None)
    if new > champion.value + min_improvement:
        return Decision(True, f"challenger {metric} {new:.4f} > champion {champion.value:.4f} + {min_improvement:g}: "
                              "promoted", metric, new, old)
    return Decision(False, f"challenger {metric} {new:.4f} does not beat champion {champion.value:.4f} + "
                           f"{min_improvement:g}: kept the champion", metric, new, old)


def watched_fingerprints(params: Any, memo: HashMemo | None = None) -> dict[str, str]:
    """Fingerprint of every dataset the pipeline reads, by version (``PipelineParams``).

    Folders: :func:`data.fingerprint.content_fingerprint` (their content, so a folder edited without a
    new ``dvc add`` still counts as changed; ``memo`` makes unchanged files a stat each).
    Synthetic demo data is a pure function of its spec, so its fingerprint is the spec's hash.
    """
    d = params.data
    if d.synthetic is not None:
        spec = {**d.synthetic.model_dump(mode="json"), "classes": list(d.classes)}
        return {d.synthetic.version: "synthetic:" + json_sha256(spec)}
    return {r.version: content_fingerprint(r.path, memo) for r in d.roots}


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def format_report(*, nightly_id: str, outcome: str, reason: str, datasets: dict[str, str],
                  champion: Champion | None, challenger_run: str | None = None,
                  challenger_metrics: dict[str, Any] | None = None, metric: str = DEFAULT_METRIC,
                  show: tuple[str, ...] = ("mAP", "mAP_50")) -> str:
    """Markdown report of one nightly run: the outcome, why, the data and the metrics side by side.

    ``outcome`` is one of ``no change``, ``promoted``, ``kept``, ``failed``. The table lists the
    COCO metrics in ``show`` and the decision metric (marked ←), per model and category.
    """
    lines = [f"# nightly {nightly_id}: {outcome}", "", f"- decision: **{outcome}** — {reason}",
             f"- metric: `{metric}` (higher is better)",
             f"- champion: {champion.run_id if champion else 'none'}",
             f"- challenger: {challenger_run or 'none'}", "", "| dataset | fingerprint now | at champion's promotion |",
             "|---|---|---|"]
    old = champion.datasets if champion else {}
    for v in sorted(set(datasets) | set(old)):
        lines.append(f"| {v} | {datasets.get(v, '—')} | {old.get(v, '—')} |")
    if challenger_metrics:
        champ_m = champion.metrics if champion else {}
        lines += ["", "| model | category | metric | champion | challenger |", "|---|---|---|---|---|"]
        for model, per in challenger_metrics.items():
            if not isinstance(per, dict):
                continue
            for cat, vals in per.items():
                if not isinstance(vals, dict):
                    continue
                for m, v in vals.items():
                    if m not in show and f"{model}.{cat}.{m}" != metric:
                        continue
                    c = (champ_m.get(model) or {}).get(cat, {}) if isinstance(champ_m.get(model), dict) else {}
                    cv = c.get(m) if isinstance(c, dict) else None
                    mark = " **←**" if f"{model}.{cat}.{m}" == metric else ""
                    lines.append(f"| {model} | {cat} | {m}{mark} | {_fmt(cv if isinstance(cv, (int, float)) else None)} | "
                                 f"{_fmt(v if isinstance(v, (int, float)) else None)} |")
    return "\n".join(lines) + "\n"
