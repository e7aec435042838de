"""COCO evaluation tables users can paste: per category + overall, several runs side by side.

Why: mAP tables were pasted from screenshots, and the silent failure modes of COCO
evaluation (ids that do not match, xyxy written as xywh) produced mAP = 0 without a word.
Here ground truth and results are validated first (``core.coco``: mismatched image or
category ids are an ``InputError``), then scored with pycocotools' ``COCOeval`` (bbox, IoU
0.50:0.95, 101 recall points, maxDets 1/10/100, COCO's small/medium/large area ranges).

Per-category values are computed from ``COCOeval.eval['precision'/'recall']`` exactly as
``COCOeval.summarize`` does over all categories, so the ``all`` row equals COCOeval's
``stats``. Where COCO reports -1 (no ground truth of that category in that size range) the
value is ``None`` in JSON and ``—`` with a footnote in Markdown, never a silent ``nan``.

Boxes in the files are COCO ``xywh`` pixels (the file convention); nothing is converted here.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import atomic
from core.coco import load_dataset, load_results, validate_dataset, validate_results
from core.errors import InputError

log = logging.getLogger(__name__)

#: metric name -> (precision or recall, IoU threshold or None for 0.50:0.95, area range, maxDets)
METRICS: dict[str, tuple[str, float | None, str, int]] = {
    "mAP": ("ap", None, "all", 100),
    "mAP_50": ("ap", 0.5, "all", 100),
    "mAP_75": ("ap", 0.75, "all", 100),
    "mAP_s": ("ap", None, "small", 100),
    "mAP_m": ("ap", None, "medium", 100),
    "mAP_l": ("ap", None, "large", 100),
    "AR_1": ("ar", None, "all", 1),
    "AR_10": ("ar", None, "all", 10),
    "AR_100": ("ar", None, "all", 100),
}
DASH = "—"
FOOTNOTE = (f"{DASH}: no ground-truth boxes of this category in this size range (COCO reports -1); "
            "sizes: small < 32², medium 32²–96², large > 96² px².")


@dataclass
class EvalResult:
    """One prediction file scored against one ground truth. Values in [0, 1]; None = undefined."""

    name: str
    gt: str
    predictions: str
    per_category: dict[str, dict[str, float | None]]
    overall: dict[str, float | None]
    n_images: int
    n_gt: dict[str, int]
    n_predictions: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    """Several runs on the same ground truth (one column block per run in Markdown)."""

    gt: str
    categories: list[str]
    runs: list[EvalResult]

    def to_json(self) -> dict[str, Any]:
        return {"gt": self.gt, "categories": self.categories, "metrics": list(METRICS),
                "runs": [asdict(r) for r in self.runs]}


def _coco_gt(ds: dict, warnings: list[str], where: str) -> Any:
    from pycocotools.coco import COCO

    ds = copy.deepcopy(ds)
    filled = 0
    for a in ds["annotations"]:
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
            filled += 1
        a.setdefault("iscrowd", 0)
    if filled:
        warnings.append(f"{where}: {filled} ground-truth annotations had no 'area'; used bbox w*h "
                        "(COCO size ranges use 'area')")
        log.warning(warnings[-1])
    ds.setdefault("info", {})
    coco = COCO()
    coco.dataset = ds
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _coco_dt(gt: Any, results: list[dict]) -> Any:
    from pycocotools.coco import COCO

    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(results))
    dt = COCO()  # pycocotools cannot loadRes an empty list: an empty result set scores 0, not an error
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": [], "info": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def _summarise(ev: Any, kind: str, iou: float | None, area: str, max_dets: int, k: slice | int) -> float | None:
    p = ev.params
    a = p.areaRngLbl.index(area)
    m = p.maxDets.index(max_dets)
    if kind == "ap":
        s = ev.eval["precision"]  # [T, R, K, A, M]
        if iou is not None:
            s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
        s = s[:, :, k, a, m]
    else:
        s = ev.eval["recall"]  # [T, K, A, M]
        if iou is not None:
            s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
        s = s[:, k, a, m]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else None


def evaluate(gt: str | os.PathLike[str] | dict, predictions: str | os.PathLike[str] | list,
             name: str = "run") -> EvalResult:
    """Score ``predictions`` (COCO results: file or list) against ``gt`` (COCO dataset: file or dict)."""
    from pycocotools.cocoeval import COCOeval

    gt_path = str(gt) if not isinstance(gt, dict) else "<dataset>"
    gt_ds = load_dataset(gt) if not isinstance(gt, dict) else validate_dataset(gt, gt_path)
    pred_path = str(predictions) if not isinstance(predictions, list) else "<results>"
    results = (load_results(predictions, gt_ds) if not isinstance(predictions, list)
               else validate_results(predictions, pred_path, gt_ds))
    if not gt_ds["images"]:
        raise InputError("the ground truth has no images", gt_path, "evaluate on a non-empty COCO file")
    warnings: list[str] = []
    coco_gt = _coco_gt(gt_ds, warnings, gt_path)
    coco_dt = _coco_dt(coco_gt, results)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    cats = sorted(gt_ds["categories"], key=lambda c: c["id"])
    cat_index = {cid: i for i, cid in enumerate(ev.params.catIds)}
    per_cat: dict[str, dict[str, float | None]] = {}
    for c in cats:
        k = cat_index[c["id"]]
        per_cat[c["name"]] = {m: _summarise(ev, *spec, k=k) for m, spec in METRICS.items()}
    overall = {m: _summarise(ev, *spec, k=slice(None)) for m, spec in METRICS.items()}
    n_gt = {c["name"]: sum(1 for a in gt_ds["annotations"] if a["category_id"] == c["id"]) for c in cats}
    return EvalResult(name=name, gt=gt_path, predictions=pred_path, per_category=per_cat, overall=overall,
                      n_images=len(gt_ds["images"]), n_gt=n_gt, n_predictions=len(results), warnings=warnings)


def _run_names(preds: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Any]]:
    if isinstance(preds, Mapping):
        return list(preds.items())
    stems = [Path(str(p)).stem for p in preds]
    if len(set(stems)) != len(stems):
        stems = [f"{s} ({i + 1})" for i, s in enumerate(stems)]
    return list(zip(stems, preds))


def evaluate_runs(gt: str | os.PathLike[str], predictions: Mapping[str, Any] | Sequence[Any]) -> EvalReport:
    """Score several prediction files (``{name: path}`` or paths, named by file stem) on one GT."""
    named = _run_names(predictions)
    if not named:
        raise InputError("no prediction files given", "eval", "pass at least one --pred PRED.json")
    gt_ds = load_dataset(gt)
    runs = [evaluate(gt_ds, load_results(p, gt_ds) if not isinstance(p, list) else p, name=n) for n, p in named]
    for r, (_, p) in zip(runs, named):
        r.gt, r.predictions = str(gt), str(p) if not isinstance(p, list) else "<results>"
    cats = [c["name"] for c in sorted(gt_ds["categories"], key=lambda c: c["id"])]
    return EvalReport(gt=str(gt), categories=cats, runs=runs)


def _fmt(v: float | None, digits: int) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def format_markdown(report: EvalReport, metrics: Sequence[str] = tuple(METRICS), digits: int = 3) -> str:
    """A paper-style Markdown table: one row per category + ``all``; a column block per run."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metrics {bad}", "metrics", f"choose from {list(METRICS)}")
    multi = len(report.runs) > 1
    header = ["category"] + [f"{r.name} {m}" if multi else m for r in report.runs for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    used_dash = False
    rows = [(c, [r.per_category[c] for r in report.runs]) for c in report.categories]
    rows.append(("**all**", [r.overall for r in report.runs]))
    for label, per_run in rows:
        cells = [_fmt(vals[m], digits) for vals in per_run for m in metrics]
        used_dash |= DASH in cells
        lines.append("| " + " | ".join([label] + cells) + " |")
    first = report.runs[0]
    gt_counts = ", ".join(f"{c} {first.n_gt[c]}" for c in report.categories)
    caption = (f"COCO bbox evaluation (pycocotools COCOeval, IoU 0.50:0.95) on `{Path(report.gt).name}`: "
               f"{first.n_images} images, ground-truth boxes: {gt_counts}.")
    out = [caption, "", *lines]
    if multi:
        out += ["", "Runs: " + "; ".join(f"**{r.name}** = `{r.predictions}` ({r.n_predictions} detections)"
                                         for r in report.runs) + "."]
    if used_dash:
        out += ["", FOOTNOTE]
    warns = [w for r in report.runs for w in r.warnings]
    if warns:
        out += [""] + [f"Warning: {w}" for w in dict.fromkeys(warns)]
    return "\n".join(out) + "\n"


def write_report(report: EvalReport, out_prefix: str | os.PathLike[str], metrics: Sequence[str] = tuple(METRICS),
                 digits: int = 3) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` (the table) and ``<prefix>.json`` (all values) atomically."""
    prefix = Path(out_prefix)
    md = atomic.write_text(prefix.with_name(prefix.name + ".md"), format_markdown(report, metrics, digits))
    js = atomic.write_json(prefix.with_name(prefix.name + ".json"), report.to_json())
    return md, js


@dataclass
class Matrix:
    """Cross-dataset results: ``cells[model][test_set]`` -> EvalResult (missing cells allowed)."""

    models: list[str]
    test_sets: dict[str, str]
    cells: dict[str, dict[str, EvalResult]]

    def to_json(self) -> dict[str, Any]:
        return {"test_sets": self.test_sets, "models": self.models,
                "cells": {m: {t: asdict(r) for t, r in row.items()} for m, row in self.cells.items()}}


def cross_dataset_matrix(test_sets: Mapping[str, str | os.PathLike[str]],
                         cells: Sequence[tuple[str, str, str | os.PathLike[str]]]) -> Matrix:
    """Evaluate models x test sets. ``cells``: ``(model, test set name, predictions path)``."""
    gts: dict[str, dict] = {}
    for name, path in test_sets.items():
        gts[name] = load_dataset(path)
    models: list[str] = []
    out: dict[str, dict[str, EvalResult]] = {}
    for model, ts, pred in cells:
        if ts not in gts:
            raise InputError(f"cell ({model}, {ts}) names an unknown test set", str(pred),
                             f"declare it with --test-set {ts} GT.json (known: {sorted(gts)})")
        if model not in models:
            models.append(model)
        if ts in out.get(model, {}):
            raise InputError(f"two prediction files for ({model}, {ts})", str(pred), "give each cell once")
        r = evaluate(gts[ts], load_results(pred, gts[ts]), name=model)
        r.gt, r.predictions = str(test_sets[ts]), str(pred)
        out.setdefault(model, {})[ts] = r
    return Matrix(models=models, test_sets={k: str(v) for k, v in test_sets.items()}, cells=out)


def format_matrix_markdown(matrix: Matrix, metrics: Sequence[str] = ("mAP", "mAP_50"), digits: int = 3) -> str:
    """Rows = models, columns = test sets, cell = overall ``metrics`` joined by `` / ``."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown metrics {bad}", "metrics", f"choose from {list(METRICS)}")
    sets = list(matrix.test_sets)
    lines = ["| model \\ test set | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for m in matrix.models:
        row = []
        for t in sets:
            r = matrix.cells.get(m, {}).get(t)
            row.append(" / ".join(_fmt(r.overall[k], digits) for k in metrics) if r else "")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    caption = f"Cross-dataset COCO bbox evaluation, cells: {' / '.join(metrics)} over all categories."
    return "\n".join([caption, "", *lines]) + "\n"
