"""Stage ``report``: how good are the pseudo-labels, stage by stage, per class and day/night.

Why: this is the table that tells a user which score threshold and which refinement helps,
and how many thermal objects RGB labels can reach at all (at night the thermal camera sees
people the RGB camera cannot). Whenever thermal ground truth exists it scores

* ``pseudo`` — raw RGB pseudo-labels against the RGB ground truth,
* ``warped`` — the labels warped to thermal against the thermal ground truth,
* ``refined`` — the refined labels against the thermal ground truth,
* any further label sets in the thermal frame (``ReportInputs.extra``: a detector's pseudo-labels
  on the thermal frames, the fused set of each self-training round) against the thermal ground
  truth, so each pseudo-label *source* and their fusion are compared side by side,

with :mod:`tasks.quality` (one-to-one matching at IoU ``iou_threshold``; precision, recall,
mean IoU of matched boxes), per class and per ``daynight`` group. Any subset of the three may
be given. Outputs, in the folder ``out``: ``quality.md`` (Markdown tables), ``quality.json``
(the same numbers), ``overlays/*.png`` (the thermal images with the most errors for the last
thermal stage: GT matched green, GT missed yellow ``MISS``, predictions matched cyan, false
positives red ``FP``); and ``<out>.report.json`` beside the folder (the stage report).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import atomic, coco
from core.errors import InputError
from core.images import read_image, to_gray_u8
from tasks.quality import ALL, ImageMatch, QualityResult, evaluate
from core.stage_report import StageReport, report_path

log = logging.getLogger(__name__)

STAGE = "report"
THERMAL_STAGES = ("warped", "refined")

# BGR colours of the overlays.
GT_MATCHED = (0, 200, 0)
GT_MISSED = (0, 230, 255)
PRED_MATCHED = (255, 200, 0)
PRED_FP = (0, 0, 255)


#: what the quality report says when the adapt split has no thermal labels to score against
NO_THERMAL_LABELS = "no thermal labels on the adapt split: pseudo-label quality cannot be measured"

@dataclass(frozen=True)
class ReportInputs:
    """The COCO files to score. ``thermal_gt`` is required; ``pseudo`` needs ``rgb_gt``;
    ``extra``: ``(name, path)`` of more thermal-frame label sets (scored in this order)."""

    thermal_gt: Path
    rgb_gt: Path | None = None
    pseudo: Path | None = None
    warped: Path | None = None
    refined: Path | None = None
    extra: tuple[tuple[str, Path], ...] = ()

    def __post_init__(self) -> None:
        if self.pseudo is not None and self.rgb_gt is None:
            raise InputError("RGB pseudo-labels given without RGB ground truth", "report inputs",
                             "pass --rgb-gt (the RGB label file) or leave out --pseudo")
        if self.pseudo is None and self.warped is None and self.refined is None and not self.extra:
            raise InputError("nothing to score", "report inputs", "pass at least one of --pseudo, --warped, --refined")
        names = [n for n, _ in self.extra]
        if len(set(names)) != len(names) or set(names) & {"pseudo", *THERMAL_STAGES}:
            raise InputError(f"label set names must be unique and not pseudo/warped/refined, got {names}",
                             "report inputs", "name each extra label set once")
        files = [(n, getattr(self, n)) for n in ("thermal_gt", "rgb_gt", "pseudo", "warped", "refined")]
        for name, p in [*files, *self.extra]:
            if p is not None and not Path(p).is_file():
                raise InputError(f"{name} file not found: {p}", "report inputs", "check the path")


@dataclass(frozen=True)
class ReportParams:
    """- ``iou_threshold``: IoU for a prediction to match a GT box (0..1].
    - ``classes``: class names to score (default: the label files' categories that the GT has).
    - ``n_overlays``: how many overlay PNGs to draw (images with the most errors first).
    - ``image_root``: folder that relative thermal ``file_name``s are relative to."""

    iou_threshold: float = 0.5
    classes: tuple[str, ...] | None = None
    n_overlays: int = 4
    image_root: str | None = None

    def __post_init__(self) -> None:
        if not (0.0 < self.iou_threshold <= 1.0):
            raise InputError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}", "report params", "use 0.5")
        if self.n_overlays < 0:
            raise InputError(f"n_overlays must be >= 0, got {self.n_overlays}", "report params", "use e.g. 4")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(results: dict[str, QualityResult], inputs: dict[str, str], params: ReportParams,
             overlays: list[str]) -> str:
    """Markdown: a headline recall table, then one table per class (rows: day/night x stage)."""
    lines = ["# Pseudo-label quality", "",
             f"Matching: one-to-one, IoU ≥ {params.iou_threshold}, per class. `pseudo` is scored against the RGB "
             "ground truth, every other label set (`warped`, `refined`, each thermal source, each fused set) against "
             "the thermal ground truth. Precision = TP / predictions, "
             "recall = TP / ground-truth boxes, mean IoU over matched boxes.", "",
             "Inputs: " + ", ".join(f"{k} `{v}`" for k, v in inputs.items()), ""]
    stages = list(results)
    first = results[stages[0]]
    groups = first.groups
    lines += ["## Recall, all classes", "", "| stage | " + " | ".join(groups) + " |",
              "|---|" + "---:|" * len(groups)]
    for s in stages:
        row = results[s].table[ALL]
        lines.append(f"| {s} | " + " | ".join(f"{_fmt(row[g]['recall'])} ({row[g]['tp']}/{row[g]['gt']})"
                                               if g in row else "–" for g in groups) + " |")
    lines.append("")
    classes = list(dict.fromkeys(c for r in results.values() for c in r.table))
    for c in classes:
        lines += [f"## {c}", "", "| day/night | stage | GT | pred | TP | FP | FN | precision | recall | mean IoU |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for g in groups:
            for s in stages:
                m = results[s].table.get(c, {}).get(g)
                if m is None:
                    continue
                lines.append(f"| {g} | {s} | {m['gt']} | {m['pred']} | {m['tp']} | {m['fp']} | {m['fn']} | "
                             f"{_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['mean_iou'])} |")
        lines.append("")
    if overlays:
        lines += ["## Overlays", "", "Green: GT matched; yellow MISS: GT missed; cyan: label matched; red FP: false "
                  "positive.", ""] + [f"![{Path(o).stem}](overlays/{Path(o).name})" for o in overlays] + [""]
    return "\n".join(lines)


def draw_overlay(image: np.ndarray, m: ImageMatch) -> np.ndarray:
    """Draw one image's matching result (see module docstring for the colours) on the image in gray
    (``core.images.to_gray_u8``: 16-bit frames stretched); returns ``(H, W, 3)`` BGR uint8."""
    import cv2

    canvas = cv2.cvtColor(to_gray_u8(image), cv2.COLOR_GRAY2BGR)

    def box(b: np.ndarray, colour: tuple[int, int, int], thick: int, text: str | None) -> None:
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thick)
        if text:
            cv2.putText(canvas, text, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)

    for b, ok, c in zip(m.gt_boxes, m.gt_matched, m.gt_classes):
        box(b, GT_MATCHED if ok else GT_MISSED, 1 if ok else 2, None if ok else f"MISS {c}")
    for b, ok, c in zip(m.pred_boxes, m.pred_matched, m.pred_classes):
        box(b, PRED_MATCHED if ok else PRED_FP, 1, None if ok else f"FP {c}")
    return canvas


def run_report(inp: ReportInputs, out: Path, params: ReportParams, *, index: Path | None = None) -> StageReport:
    """Score the given label files and write ``out/quality.{md,json}``, ``out/overlays/`` and
    ``<out>.report.json``. ``index`` (optional) supplies day/night per image by ``pair_id``.

    Without any thermal label (real data usually has none) nothing can be scored: ``quality.md``
    says so (:data:`NO_THERMAL_LABELS`), no ``quality.json`` is written and the report's outputs
    hold only ``markdown``, so a pipeline runs on with an honest note instead of an empty table."""
    t0 = time.perf_counter()
    out = Path(out)
    inputs = {k: str(v) for k, v in asdict(inp).items() if v is not None and k != "extra"}
    inputs.update({name: str(path) for name, path in inp.extra})
    report = StageReport(stage=STAGE, inputs=dict(inputs), params=asdict(params))
    thermal_gt = coco.load_dataset(inp.thermal_gt)
    if not thermal_gt["annotations"]:
        md = atomic.write_text(out / "quality.md", f"# Pseudo-label quality\n\n{NO_THERMAL_LABELS}.\n")
        report.outputs = {"markdown": str(md)}
        report.counts["images"] = len(thermal_gt["images"])
        report.seconds = round(time.perf_counter() - t0, 3)
        report.save(report_path(out))
        return report
    rgb_gt = coco.load_dataset(inp.rgb_gt) if inp.rgb_gt is not None else None
    daynight: dict[int, str] | None = None
    if index is not None:
        report.inputs["index"] = str(index)
        daynight = _daynight(index, thermal_gt)
    todo = _label_sets(inp, thermal_gt, rgb_gt)
    thermal_names = [*THERMAL_STAGES, *(n for n, _ in inp.extra)]

    classes = list(params.classes) if params.classes else None
    if classes is None:
        gt_names = {c["name"] for c in thermal_gt["categories"]}
        classes = list(dict.fromkeys(c["name"] for _, ds, _ in todo for c in ds["categories"] if c["name"] in gt_names))

    results: dict[str, QualityResult] = {}
    last_matches: list[ImageMatch] = []
    for name, pred, gt in todo:
        res, matches = evaluate(gt, pred, classes=classes, iou_threshold=params.iou_threshold, daynight=daynight)
        results[name] = res
        report.counts[f"{name}_boxes"] = sum(len(m.pred_boxes) for m in matches)
        report.counts[f"{name}_tp"] = res.table[ALL][ALL]["tp"]
        if name in thermal_names:
            last_matches = matches
    report.counts["images"] = len(thermal_gt["images"])
    report.counts["gt_boxes_thermal"] = sum(len(m.gt_boxes) for m in last_matches)
    overlays = _overlays(last_matches, thermal_gt, Path(inp.thermal_gt), out, params, report)
    report.counts["overlays"] = len(overlays)

    data = {"iou_threshold": params.iou_threshold, "classes": classes, "inputs": inputs,
            "stages": {k: v.to_dict() for k, v in results.items()}, "overlays": overlays}
    atomic.write_json(out / "quality.json", data)
    atomic.write_text(out / "quality.md", markdown(results, inputs, params, overlays))
    report.outputs = {"markdown": str(out / "quality.md"), "json": str(out / "quality.json"),
                      "overlays": str(out / "overlays")}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    return report


def _daynight(index: Path, thermal_gt: dict) -> dict[int, str]:
    """Thermal GT image id -> ``day``/``night`` from the index (by ``pair_id``; images it does not know are absent)."""
    from data.index import load_index

    by_pair = {p.pair_id: p.daynight for p in load_index(index).pairs}
    return {im["id"]: by_pair[im["pair_id"]] for im in thermal_gt["images"]
            if im.get("pair_id") in by_pair and by_pair[im["pair_id"]]}


def _label_sets(inp: ReportInputs, thermal_gt: dict, rgb_gt: dict | None) -> list[tuple[str, dict, dict]]:
    """(name, predicted labels, the GT they are scored against): ``pseudo`` against the RGB GT, the rest thermal."""
    todo: list[tuple[str, dict, dict]] = []
    if inp.pseudo is not None and rgb_gt is not None:
        todo.append(("pseudo", coco.load_dataset(inp.pseudo), rgb_gt))
    for name in THERMAL_STAGES:
        p = getattr(inp, name)
        if p is not None:
            todo.append((name, coco.load_dataset(p), thermal_gt))
    for name, p in inp.extra:
        todo.append((name, coco.load_dataset(p), thermal_gt))
    return todo


def _overlays(matches: list[ImageMatch], thermal_gt: dict, gt_path: Path, out: Path, params: ReportParams,
              report: StageReport) -> list[str]:
    """Draw the ``n_overlays`` images with the most errors into ``out/overlays/`` (PNG); an unreadable
    image is skipped, logged and listed in the report. Returns the written paths."""
    import cv2

    from tasks.refine import resolve_image_path

    overlays: list[str] = []
    if not (matches and params.n_overlays):
        return overlays
    images = {im["id"]: im for im in thermal_gt["images"]}
    worst = sorted((m for m in matches if m.n_errors), key=lambda m: (-m.n_errors, m.image_id))
    for m in worst[:params.n_overlays]:
        path = resolve_image_path(images[m.image_id], gt_path, params.image_root, None)
        img, err = read_image(path)
        if img is None:
            report.skip_image(path, f"overlay: {err}")
            log.warning("report: cannot read %s for its overlay (%s)", path, err)
            continue
        target = out / "overlays" / f"{Path(images[m.image_id]['file_name']).stem}_{m.image_id}.png"
        with atomic.atomic_path(target) as tmp:
            if not cv2.imwrite(str(tmp), draw_overlay(img, m)):
                raise OSError(f"could not write {target}")
        overlays.append(str(target))
    return overlays
