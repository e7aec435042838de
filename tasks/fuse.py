"""Fusion of pseudo-label sources on the thermal frames, per class: WBF, NMS-union, agreement.

Why: RGB transfer and a detector run on the thermal frames fail differently. At night most
people are invisible in RGB, so RGB-only labels teach the student that warm people are
background; a detector on thermal finds them, while RGB transfer finds cars better. Fusing
the sources raises label recall where either one sees the object, and a box that two sources
agree on deserves more trust than a box only one of them proposes.

Inputs are COCO files in the *thermal* frame that share image ids (the warp/refine output of
the RGB source, the pseudo-labels of a detector run on the thermal adapt frames), boxes COCO
``xywh`` thermal pixels with a ``score`` per annotation. Methods (``FuseParams.method``):

- ``wbf``: weighted box fusion (the ``ensemble-boxes`` package): overlapping boxes of one class
  (IoU >= ``iou``) are averaged, weighted by score; the score is averaged over the sources, so
  a box seen by one source of two keeps half its score — agreement is rewarded by construction.
- ``nms_union``: the union of all sources, class-wise NMS at ``iou`` (``ensemble-boxes``' NMS);
  the highest-scoring box of each overlapping group survives.
- ``agreement``: boxes of different sources that overlap (IoU >= ``iou``) are merged into their
  score-weighted mean box with score ``1 - prod(1 - s_i)`` (noisy-OR: two sources at 0.5 give
  0.75); a box only one source proposes keeps its own score, times ``single_source_factor``.

Then each fused box is kept when its score reaches the threshold of its class — per day/night
where the image's ``daynight`` is known (``thresholds: {person: {day: 0.5, night: 0.3}}``).
Every fused box records its provenance: ``provenance = {"sources": [...], "scores": {source:
score}, "ann_ids": {source: annotation id}}`` (the source boxes it overlaps at IoU >= ``iou``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from core.boxes import iou_matrix, xywh_to_xyxy
from core.coco import annotations, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.stage_params import StageParams
from core.stage_report import StageReport, report_path
from core.stage_spec import StageSpec

log = logging.getLogger(__name__)
Threshold = float | dict[Literal["day", "night"], float]


class FuseParams(StageParams):
    """How sources are fused and which fused boxes are kept.

    - ``method``: ``wbf`` | ``nms_union`` | ``agreement`` (see the module docstring).
    - ``iou``: overlap (IoU, in (0, 1]) at which boxes of one class count as the same object.
    - ``weights``: per source name (default 1): WBF weights / NMS score scale / agreement weights.
    - ``score_threshold``: fused boxes below it are dropped, for classes not in ``thresholds``.
    - ``thresholds``: per target class, a number or ``{day: x, night: y}`` (images whose
      ``daynight`` is unknown use the larger of the two).
    - ``single_source_factor``: ``agreement`` only: score factor for a box one source alone proposes.
    - ``ignore_from``: fused boxes scoring at least this but below their class threshold are kept
      as *ignore regions* (COCO ``iscrowd: 1``, ``uncertain: true``) instead of dropped: an
      uncertain box is not background (training erases them, ``TrainSpec.erase_ignored``). Off
      (``None``) by default, and in the shipped recipes: on msrs-bench without RGB labels, of student 1's
      person boxes scoring 0.05 up to its threshold that no kept label covers, 16-22 % are people, and
      they reach a third of the people the labels miss (``benchmarks/ignore_band.py``; RESULTS.md,
      "Without RGB labels", 2e).
    """

    method: Literal["wbf", "nms_union", "agreement"] = "agreement"
    iou: float = Field(default=0.55, gt=0, le=1)
    weights: dict[str, float] = Field(default_factory=dict)
    score_threshold: float = Field(default=0.0, ge=0, le=1)
    thresholds: dict[str, Threshold] = Field(default_factory=dict)
    single_source_factor: float = Field(default=1.0, ge=0, le=1)
    ignore_from: float | None = Field(default=None, ge=0, le=1)

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, v: dict[str, Threshold]) -> dict[str, Threshold]:
        for name, thr in v.items():
            for x in (thr.values() if isinstance(thr, dict) else [thr]):
                if not 0.0 <= float(x) <= 1.0:
                    raise ValueError(f"threshold of '{name}' must be in [0, 1], got {x}")
        return v

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w <= 0 for w in v.values()):
            raise ValueError(f"source weights must be > 0, got {v}")
        return v

    def threshold(self, category: str, daynight: str | None) -> float:
        thr = self.thresholds.get(category, self.score_threshold)
        if not isinstance(thr, dict):
            return float(thr)
        if daynight in thr:
            return float(thr[daynight])
        return float(max(thr.values()))


def _by_image_class(ds: dict, cat_names: dict[int, str]) -> dict[tuple[int, str], list[dict]]:
    out: dict[tuple[int, str], list[dict]] = {}
    for a in ds["annotations"]:
        out.setdefault((a["image_id"], cat_names[a["category_id"]]), []).append(a)
    return out


#: One source's boxes of one class in one image: (annotations, xyxy boxes (N, 4), scores (N,)).
Group = tuple[list[dict], np.ndarray, np.ndarray]


def _group(anns: list[dict]) -> Group:
    """The arrays of one (image, class, source), built once and shared by fusion and provenance."""
    boxes = xywh_to_xyxy([a["bbox"] for a in anns]) if anns else np.zeros((0, 4))
    return anns, boxes.reshape(-1, 4), np.asarray([float(a.get("score", 1.0)) for a in anns], dtype=np.float64)


def _agreement(groups: dict[str, Group], p: FuseParams) -> list[tuple[np.ndarray, float]]:
    """Greedy clusters across sources (highest score first); noisy-OR score for agreeing sources."""
    items = [(s, i, b, sc) for s, (_, boxes, scores) in groups.items() for i, (b, sc) in enumerate(zip(boxes, scores))]
    items.sort(key=lambda t: -t[3])
    used: set[tuple[str, int]] = set()
    out = []
    for src, i, box, score in items:
        if (src, i) in used:
            continue
        used.add((src, i))
        members = [(box, score, p.weights.get(src, 1.0))]
        for other, (anns, ob, os_) in groups.items():
            if other == src or not anns:
                continue
            ious = iou_matrix(box[None], ob)[0]
            for j in np.argsort(-ious):
                if ious[j] < p.iou:
                    break
                if (other, int(j)) not in used:
                    used.add((other, int(j)))
                    members.append((ob[j], float(os_[j]), p.weights.get(other, 1.0)))
                    break
        w = np.array([m[1] * m[2] for m in members])
        fused = (np.stack([m[0] for m in members]) * (w / w.sum() if w.sum() > 0 else 1 / len(w))[:, None]).sum(0)
        score = 1.0 - float(np.prod([1.0 - min(1.0, m[1]) for m in members]))
        out.append((fused, score if len(members) > 1 else score * p.single_source_factor))
    return out


def _ensemble(groups: dict[str, Group], p: FuseParams, size: tuple[int, int]) -> list[tuple[np.ndarray, float]]:
    """WBF or NMS over normalised boxes (``ensemble-boxes`` works in [0, 1] ``xyxy``)."""
    from ensemble_boxes import nms, weighted_boxes_fusion

    scale = np.array([size[0], size[1], size[0], size[1]], dtype=np.float64)
    # WBF keeps a source without boxes (its score average counts every source); the NMS of
    # ensemble-boxes cannot take an empty list and does not need it
    names = sorted(n for n in groups if groups[n][0] or p.method == "wbf")
    boxes, scores = [groups[n][1] for n in names], [groups[n][2] for n in names]
    blist = [np.clip(b / scale, 0, 1).tolist() for b in boxes]
    slist = [s.tolist() for s in scores]
    llist = [[0] * len(s) for s in slist]
    weights = [p.weights.get(n, 1.0) for n in names]
    if p.method == "wbf":
        fb, fs, _ = weighted_boxes_fusion(blist, slist, llist, weights=weights, iou_thr=p.iou, skip_box_thr=0.0)
    else:   # ensemble-boxes' NMS divides weighted scores by the weight sum; scale them ourselves instead
        slist = [[min(1.0, v * w) for v in sc] for sc, w in zip(slist, weights)]
        fb, fs, _ = nms(blist, slist, llist, iou_thr=p.iou)
    return [(np.asarray(b, dtype=np.float64) * scale, float(s)) for b, s in zip(fb, fs)]


def _provenance(box: np.ndarray, groups: dict[str, Group], iou: float) -> dict[str, Any]:
    prov: dict[str, Any] = {"sources": [], "scores": {}, "ann_ids": {}}
    for src in sorted(groups):
        anns, b, s = groups[src]
        if not anns:
            continue
        ious = iou_matrix(box[None], b)[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            prov["sources"].append(src)
            prov["scores"][src] = round(float(s[j]), 6)
            prov["ann_ids"][src] = anns[j]["id"]
    return prov


def run_fuse(sources: Mapping[str, Path], out: Path, params: FuseParams) -> StageReport:
    """Fuse the COCO files ``sources`` (name -> path, same image ids, same category names) into ``out``."""
    t0 = time.perf_counter()
    if len(sources) < 1:
        raise InputError("no pseudo-label source to fuse", "fuse", "give at least one source")
    report = StageReport(stage="fuse", inputs={k: str(v) for k, v in sources.items()}, params=params.to_dict())
    dss = {name: load_dataset(path) for name, path in sources.items()}
    first = next(iter(dss.values()))
    names = [c["name"] for c in sorted(first["categories"], key=lambda c: c["id"])]
    for name, ds in dss.items():
        other = [c["name"] for c in sorted(ds["categories"], key=lambda c: c["id"])]
        if other != names:
            raise InputError(f"source '{name}' has categories {other}, the first source {names}", str(sources[name]),
                             "fuse label files of the same target classes (both from the pseudo step)")
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    images: dict[int, dict] = {}
    for ds in dss.values():
        for im in ds["images"]:
            images.setdefault(im["id"], im)
    per_source = {name: _by_image_class(ds, {c["id"]: c["name"] for c in ds["categories"]}) for name, ds in dss.items()}
    anns: list[dict] = []
    for image_id in sorted(images):
        im = images[image_id]
        for cls in names:
            groups = {src: _group(per_source[src].get((image_id, cls), [])) for src in dss}
            if not any(g[0] for g in groups.values()):
                continue
            fused = (_agreement(groups, params) if params.method == "agreement"
                     else _ensemble(groups, params, (im["width"], im["height"])))
            thr = params.threshold(cls, im.get("daynight"))
            for box, score in sorted(fused, key=lambda t: -t[1]):
                uncertain = score < thr and params.ignore_from is not None and score >= params.ignore_from
                if score < thr and not uncertain:
                    report.add_dropped(f"below_threshold_{cls}")
                    continue
                extra = {"score": round(score, 6), "provenance": _provenance(box, groups, params.iou),
                         **({"iscrowd": 1, "uncertain": True} if uncertain else {})}
                anns.extend(annotations(len(anns) + 1, image_id, [cat_id[cls]], box[None], [extra], source="fused"))
    info = {"stage": "fuse", "sources": sorted(sources), "params": params.to_dict()}     # no paths (keys later steps)
    save_dataset(out, new_dataset([images[i] for i in sorted(images)], anns, first["categories"], info), indent=None)
    both = sum(1 for a in anns if len(a["provenance"]["sources"]) > 1)
    report.counts = {"images": len(images), "boxes_in": sum(len(ds["annotations"]) for ds in dss.values()),
                     "boxes_out": len(anns), "boxes_agreed": both, "boxes_uncertain": sum(1 for a in anns if a.get("iscrowd")),
                     **{f"boxes_in_{k}": len(ds["annotations"]) for k, ds in dss.items()}}
    report.outputs = {"coco": str(out), "report": str(report_path(out))}
    report.seconds = round(time.perf_counter() - t0, 3)
    report.save(report_path(out))
    log.info("fuse (%s): %d boxes from %s -> %d kept (%d agreed by 2+ sources)", params.method,
             report.counts["boxes_in"], sorted(sources), len(anns), both)
    return report


#: How the pipeline runs this stage (:class:`core.stage_spec.StageSpec`): the sources are input roles.
STAGE_SPEC = StageSpec(kind="fuse", run=run_fuse, params=FuseParams, output="fused.json", inputs=("rgb", "thermal"),
                       section="fuse")
