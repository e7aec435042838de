"""Pseudo-label quality against ground truth: matching, precision, recall, mean IoU.

Why not COCO mAP: pseudo-labels are a fixed set of boxes (already thresholded), not a ranked
list of detections, and what a user wants to know is "of the objects really there, how many
did my labels reach (recall), how many of my labels are real (precision), and how tight are
the ones that match (mean IoU)". So: one-to-one greedy matching per image and class at a
fixed IoU threshold (default 0.5), highest-scoring prediction first, each taking the
still-unmatched ground-truth box of the same class with the highest IoU.

Classes are matched by *name* (``person``, ``car``), not by id, so a prediction file with
target-class ids and a ground truth with the dataset's own ids (msrs: person, bicycle, car)
compare correctly. Results are split by the ground-truth image's ``daynight`` key
("day"/"night"; "unknown" when absent) and aggregated over "all".

Boxes are ``xyxy`` pixels internally (COCO ``xywh`` in files).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from core.boxes import iou_matrix, xywh_to_xyxy
from core.errors import InputError

ALL = "all"


@dataclass
class ImageMatch:
    """Matching result of one image (all classes). Arrays index the image's GT / predicted boxes."""

    image_id: int
    daynight: str
    gt_boxes: np.ndarray        # (G, 4) xyxy
    gt_classes: list[str]
    gt_iou: np.ndarray          # (G,) IoU with the matched prediction, 0 where missed
    gt_matched: np.ndarray      # (G,) bool
    pred_boxes: np.ndarray      # (P, 4) xyxy
    pred_classes: list[str]
    pred_matched: np.ndarray    # (P,) bool

    @property
    def n_errors(self) -> int:
        return int((~self.gt_matched).sum() + (~self.pred_matched).sum())


@dataclass
class Tally:
    """Counts of one (class, day/night) cell; metrics derive from them."""

    gt: int = 0
    pred: int = 0
    tp: int = 0
    iou_sum: float = 0.0

    def add(self, other: Tally) -> None:
        self.gt += other.gt
        self.pred += other.pred
        self.tp += other.tp
        self.iou_sum += other.iou_sum

    def metrics(self) -> dict:
        """``precision``/``recall``/``mean_iou`` are ``None`` where undefined (nothing to divide by)."""
        return {"gt": self.gt, "pred": self.pred, "tp": self.tp, "fp": self.pred - self.tp, "fn": self.gt - self.tp,
                "precision": round(self.tp / self.pred, 4) if self.pred else None,
                "recall": round(self.tp / self.gt, 4) if self.gt else None,
                "mean_iou": round(self.iou_sum / self.tp, 4) if self.tp else None}


@dataclass
class QualityResult:
    """``table[class][group]`` -> metrics dict; class ``all`` and group ``all`` aggregate."""

    classes: list[str]
    groups: list[str]
    iou_threshold: float
    table: dict[str, dict[str, dict]] = field(default_factory=dict)
    images: int = 0

    def to_dict(self) -> dict:
        return {"iou_threshold": self.iou_threshold, "classes": self.classes, "groups": self.groups,
                "images": self.images, "table": self.table}


def match_boxes(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one class on one image.

    Returns ``(gt_to_pred, ious)``: for each GT box the index of its matched prediction (-1 if
    missed) and the IoU of that match (0 if missed). Predictions are taken in descending
    score order (stable, so equal scores keep file order).
    """
    g = len(gt)
    gt_to_pred = np.full(g, -1, dtype=np.int64)
    ious = np.zeros(g)
    if g == 0 or len(pred) == 0:
        return gt_to_pred, ious
    m = iou_matrix(pred, gt)
    taken = np.zeros(g, dtype=bool)
    for p in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        row = np.where(taken, -1.0, m[p])
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            taken[j] = True
            gt_to_pred[j] = p
            ious[j] = m[p, j]
    return gt_to_pred, ious


def _names(ds: dict) -> dict[int, str]:
    return {c["id"]: c["name"] for c in ds["categories"]}


def match_datasets(gt: dict, pred: dict, *, classes: Iterable[str], iou_threshold: float = 0.5,
                   daynight: dict[int, str] | None = None) -> list[ImageMatch]:
    """Match ``pred`` against ``gt`` (both COCO datasets, paired by image id) for ``classes``.

    Every GT image is evaluated (an image missing from ``pred`` counts as all-missed);
    predictions on images that are not in ``gt`` are ignored. Boxes of other classes are
    ignored on both sides, and so are ``iscrowd`` boxes (ignore regions, e.g. uncertain pseudo-labels).
    """
    classes = list(classes)
    wanted = set(classes)
    gt_names, pred_names = _names(gt), _names(pred)
    by_img_gt: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        if gt_names[a["category_id"]] in wanted and not a.get("iscrowd", 0):
            by_img_gt[a["image_id"]].append(a)
    by_img_pred: dict[int, list[dict]] = {i: [] for i in by_img_gt}
    for a in pred["annotations"]:
        if a["image_id"] in by_img_pred and pred_names[a["category_id"]] in wanted and not a.get("iscrowd", 0):
            by_img_pred[a["image_id"]].append(a)
    out = []
    for im in gt["images"]:
        iid = im["id"]
        ga, pa = by_img_gt[iid], by_img_pred[iid]
        gb, pb = xywh_to_xyxy([a["bbox"] for a in ga]), xywh_to_xyxy([a["bbox"] for a in pa])
        gc = [gt_names[a["category_id"]] for a in ga]
        pc = [pred_names[a["category_id"]] for a in pa]
        ps = np.asarray([a.get("score", 1.0) for a in pa], dtype=np.float64)
        g_iou, g_m, p_m = np.zeros(len(ga)), np.zeros(len(ga), dtype=bool), np.zeros(len(pa), dtype=bool)
        for c in classes:
            gi = np.array([k for k, n in enumerate(gc) if n == c], dtype=np.int64)
            pi = np.array([k for k, n in enumerate(pc) if n == c], dtype=np.int64)
            if len(gi) == 0 or len(pi) == 0:
                continue
            to_pred, ious = match_boxes(gb[gi], pb[pi], ps[pi], iou_threshold)
            hit = to_pred >= 0
            g_m[gi[hit]] = True
            g_iou[gi[hit]] = ious[hit]
            p_m[pi[to_pred[hit]]] = True
        dn = (daynight or {}).get(iid) or im.get("daynight") or "unknown"
        out.append(ImageMatch(iid, str(dn), gb, gc, g_iou, g_m, pb, pc, p_m))
    return out


def summarize(matches: list[ImageMatch], classes: Iterable[str], iou_threshold: float = 0.5) -> QualityResult:
    """Per class and per day/night group (plus ``all``): gt, pred, tp, fp, fn, precision, recall, mean IoU."""
    classes = list(classes)
    groups = sorted({m.daynight for m in matches})
    tallies: dict[tuple[str, str], Tally] = {}
    for m in matches:
        for c in classes:
            t = tallies.setdefault((c, m.daynight), Tally())
            gsel = np.array([n == c for n in m.gt_classes], dtype=bool)
            psel = np.array([n == c for n in m.pred_classes], dtype=bool)
            t.gt += int(gsel.sum())
            t.pred += int(psel.sum())
            t.tp += int(m.gt_matched[gsel].sum()) if gsel.size else 0
            t.iou_sum += float(m.gt_iou[gsel].sum()) if gsel.size else 0.0
    res = QualityResult(classes=classes, groups=groups + [ALL], iou_threshold=iou_threshold, images=len(matches))
    for c in [*classes, ALL]:
        res.table[c] = {}
        for g in [*groups, ALL]:
            t = Tally()
            for (tc, tg), v in tallies.items():
                if (c == ALL or tc == c) and (g == ALL or tg == g):
                    t.add(v)
            res.table[c][g] = t.metrics()
    return res


def evaluate(gt: dict, pred: dict, *, classes: Iterable[str] | None = None, iou_threshold: float = 0.5,
             daynight: dict[int, str] | None = None) -> tuple[QualityResult, list[ImageMatch]]:
    """Match and summarise. ``classes`` default: the prediction file's categories that the GT has."""
    if not (0.0 < iou_threshold <= 1.0):
        raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}", "quality", "use e.g. 0.5")
    gt_set = {c["name"] for c in gt["categories"]}
    if classes is None:
        classes = [c["name"] for c in pred["categories"] if c["name"] in gt_set]
    classes = list(classes)
    missing = [c for c in classes if c not in gt_set]
    if missing:
        raise InputError(f"classes {missing} are not ground-truth categories {sorted(gt_set)}", "quality",
                         "evaluate only classes the ground truth annotates")
    if not classes:
        raise InputError("no class in common between predictions and ground truth", "quality",
                         "check the category names of both COCO files")
    matches = match_datasets(gt, pred, classes=classes, iou_threshold=iou_threshold, daynight=daynight)
    return summarize(matches, classes, iou_threshold), matches
