"""Run records: what a pipeline run used, did and measured — enough to reproduce and compare.

A record is one JSON file per run under ``<workspace>/runs/<run_id>/record.json`` (atomic
write, updated as stages finish, so a killed run still shows how far it got). It holds the git
revision of the code, a fingerprint of every input dataset version (its DVC hash when the
version is DVC-tracked, else our own content hash, labelled as such), the parameters, the
model and weights fingerprints, per-stage timings and cache hits, and the metrics.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from core import atomic
from core.errors import InputError

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"


@dataclass
class StageRecord:
    name: str
    seconds: float
    cache_hits: int = 0
    cache_misses: int = 0
    reused: bool = False        # the whole stage was skipped: its inputs and params were unchanged
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str
    flow: str                   # "adapt", "nightly", "dvc", ...
    status: str = "running"     # running | succeeded | failed
    started: str = ""
    finished: str = ""
    git_revision: str = ""
    datasets: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)    # per step: {step name: that step's metrics}
    fallbacks: list[str] = field(default_factory=list)
    decisions: dict[str, str] = field(default_factory=dict)  # per evaluation step: what decisions were made on
    error: str = ""

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def eval_metrics(self, step: str | None = None) -> dict[str, Any]:
        """The metrics of evaluation step ``step`` (default: the last step that recorded metrics),
        ``{model column: {category or 'all': {metric: value}}, 'table_markdown': ...}``; {} if none."""
        if step is not None:
            return dict(self.metrics.get(step) or {})
        return dict(next(reversed(self.metrics.values()), {}) or {})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunRecord:
        d = dict(d)
        d["stages"] = [StageRecord(**s) for s in d.get("stages", [])]
        return cls(**d)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(flow: str) -> str:
    """Sortable and unique: ``<UTC time>-<flow>-<random>``."""
    return f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{flow}-{uuid.uuid4().hex[:6]}"


def git_revision(repo: str | os.PathLike[str] | None = None) -> str:
    """``<sha>`` or ``<sha>+dirty``; ``"not a git checkout"`` when there is none."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"{sha}+dirty" if dirty else sha


def runs_dir(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / "runs"


def save_record(workspace: str | os.PathLike[str], record: RunRecord) -> Path:
    return atomic.write_json(runs_dir(workspace) / record.run_id / RECORD_NAME, record.to_json())


def load_record(workspace: str | os.PathLike[str], run_id: str) -> RunRecord:
    """The record of ``run_id``. A damaged one is an InputError naming the file: the user asked for
    exactly that run, so unlike :func:`list_records` there is nothing to skip to."""
    path = runs_dir(workspace) / run_id / RECORD_NAME
    if not path.is_file():
        known = [r.run_id for r in list_records(workspace)][-5:]
        raise InputError(f"no run record '{run_id}'", str(runs_dir(workspace)),
                         f"use one of the run ids from `rgb2thermal runs list` (latest: {', '.join(known) or 'none'})")
    try:
        return _read_record(path)
    except _TORN as exc:
        raise InputError(f"run record is unreadable ({exc.__class__.__name__}: {exc})", str(path),
                         "the file was damaged outside rgb2thermal (records are written atomically): "
                         "restore it from a backup or delete that run's folder") from None


#: What reading a damaged ``record.json`` raises: unreadable file, not JSON (``JSONDecodeError`` and
#: ``UnicodeDecodeError`` are ``ValueError``), or JSON that is not a record (wrong keys or types).
_TORN = (OSError, ValueError, TypeError, KeyError, AttributeError)


def _read_record(path: str | os.PathLike[str]) -> RunRecord:
    """One ``record.json`` as a :class:`RunRecord` (raises one of ``_TORN`` when it is damaged)."""
    doc = atomic.read_json(path)
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    return RunRecord.from_json(doc)


def list_records(workspace: str | os.PathLike[str]) -> list[RunRecord]:
    """All readable records, oldest first (run ids sort by start time).

    A damaged record (torn or edited outside rgb2thermal: records are written atomically) is
    skipped with a WARNING naming the file, so one bad run folder does not hide every other run
    from ``rgb2thermal runs list`` and ``runs show``."""
    root = runs_dir(workspace)
    if not root.is_dir():
        return []
    records: list[RunRecord] = []
    for path in sorted(root.glob(f"*/{RECORD_NAME}")):
        try:
            records.append(_read_record(path))
        except _TORN as exc:
            log.warning("skipping unreadable run record %s (%s: %s)", path, exc.__class__.__name__, exc)
    return records


def _metric(record: RunRecord, run: str, category: str, metric: str) -> float | None:
    try:
        return record.eval_metrics()[run][category][metric]
    except (KeyError, TypeError):
        return None


def format_list(records: list[RunRecord], metric: str = "mAP_50", run: str = "adapted") -> str:
    lines = [f"| run id | flow | status | started | {run} {metric} (all) | seconds |", "|---|---|---|---|---|---|"]
    for r in records:
        secs = sum(s.seconds for s in r.stages)
        value = _metric(r, run, "all", metric)
        lines.append(f"| {r.run_id} | {r.flow} | {r.status} | {r.started} | "
                     f"{'—' if value is None else f'{value:.3f}'} | {secs:.1f} |")
    return "\n".join(lines)


def format_show(record: RunRecord) -> str:
    out = [f"# run {record.run_id}", "",
           f"- flow: {record.flow}, status: **{record.status}** ({record.started} → {record.finished or '…'})",
           f"- code: {record.git_revision}"]
    out += [f"- dataset `{k}`: {v}" for k, v in record.datasets.items()]
    out += [f"- model `{k}`: {v}" for k, v in record.models.items()]
    out += [f"- fallback: {f}" for f in record.fallbacks]
    if record.error:
        out.append(f"- error: {record.error}")
    out += ["", "| stage | seconds | cache hits | cache misses | reused |", "|---|---|---|---|---|"]
    out += [f"| {s.name} | {s.seconds:.2f} | {s.cache_hits} | {s.cache_misses} | {'yes' if s.reused else 'no'} |"
            for s in record.stages]
    for step, m in record.metrics.items():
        if isinstance(m, dict) and m.get("table_markdown"):
            out += ["", f"## {step}", "", m["table_markdown"]]
    return "\n".join(out)


def format_compare(records: list[RunRecord], metrics: tuple[str, ...] = ("mAP", "mAP_50"), run: str = "adapted") -> str:
    """Side-by-side table: one row per category, one column block per run record."""
    cats: list[str] = []
    for r in records:
        for c in (r.eval_metrics().get(run) or {}):
            if c not in cats:
                cats.append(c)
    head = "| category | " + " | ".join(f"{r.run_id} {m}" for r in records for m in metrics) + " |"
    rows = [head, "|---|" + "---|" * (len(records) * len(metrics))]
    for c in cats:
        vals = []
        for r in records:
            for m in metrics:
                v = _metric(r, run, c, m)
                vals.append("—" if v is None else f"{v:.3f}")
        rows.append(f"| {c} | " + " | ".join(vals) + " |")
    params_diff = _params_diff(records)
    if params_diff:
        rows += ["", "Parameters that differ:", ""]
        rows += [f"- `{k}`: " + " / ".join(str(v) for v in vs) for k, vs in params_diff.items()]
    return "\n".join(rows)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _params_diff(records: list[RunRecord]) -> dict[str, list[Any]]:
    flat = [_flatten(r.params) for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}
