"""Pseudo-label quality metrics: matching, precision/recall/mean IoU, class names, day/night."""
from __future__ import annotations

import numpy as np
import pytest

from core.coco import annotation, categories_from_names, new_dataset
from core.errors import InputError
from tasks.quality import ALL, evaluate, match_boxes


def test_greedy_matching_is_one_to_one_and_score_ordered():
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    pred = np.array([[1, 0, 11, 10],     # IoU 0.818 with gt0, lower score
                     [0, 0, 10, 10],     # exact on gt0, higher score: wins gt0
                     [50, 50, 60, 60]])  # nothing
    to_pred, ious = match_boxes(gt, pred, np.array([0.5, 0.9, 0.99]))
    assert to_pred.tolist() == [1, -1] and ious.tolist() == [1.0, 0.0]
    to_pred, _ = match_boxes(gt, pred[:1], np.array([0.5]), iou_threshold=0.85)
    assert to_pred.tolist() == [-1, -1]


def _ds(boxes_per_image, names, daynight):
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 200, "height": 200, "daynight": dn}
              for i, dn in enumerate(daynight)]
    anns = []
    for i, items in enumerate(boxes_per_image):
        for cls, box in items:
            anns.append(annotation(len(anns) + 1, i + 1, names.index(cls) + 1, box, score=0.9))
    return new_dataset(images, anns, categories_from_names(names))


def test_precision_recall_iou_per_class_and_daynight():
    # GT uses msrs-like ids (person=1, bicycle=2, car=3); predictions target ids (person=1, car=2)
    gt = _ds([[("person", [0, 0, 10, 20]), ("car", [50, 50, 90, 80])],          # day
              [("person", [0, 0, 10, 20]), ("person", [30, 30, 40, 50]), ("bicycle", [5, 5, 9, 9])]],  # night
             ["person", "bicycle", "car"], ["day", "night"])
    pred = _ds([[("person", [0, 0, 10, 16]), ("car", [50, 50, 90, 80]), ("car", [150, 150, 160, 160])],
                [("person", [0, 0, 10, 20]), ("car", [30, 30, 40, 50])]],      # right place, wrong class
               ["person", "car"], ["day", "night"])
    res, matches = evaluate(gt, pred)
    assert res.classes == ["person", "car"]     # bicycle is not a predicted class
    t = res.table
    assert t["person"]["day"] == {"gt": 1, "pred": 1, "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0,
                                  "mean_iou": 0.8}
    assert t["person"]["night"]["recall"] == 0.5 and t["person"]["night"]["mean_iou"] == 1.0
    assert t["car"]["day"]["precision"] == 0.5 and t["car"]["day"]["recall"] == 1.0
    assert t["car"]["night"] == {"gt": 0, "pred": 1, "tp": 0, "fp": 1, "fn": 0, "precision": 0.0, "recall": None,
                                 "mean_iou": None}
    assert t[ALL][ALL]["tp"] == 3 and t[ALL][ALL]["gt"] == 4 and t[ALL][ALL]["pred"] == 5
    assert t[ALL][ALL]["mean_iou"] == pytest.approx((0.8 + 1 + 1) / 3, abs=1e-4)
    assert t["person"][ALL]["recall"] == pytest.approx(2 / 3, abs=1e-4)
    night = next(m for m in matches if m.daynight == "night")
    assert night.gt_matched.tolist() == [True, False] and night.pred_matched.tolist() == [True, False]
    assert night.n_errors == 2


def test_missing_prediction_image_counts_as_misses_and_bad_classes_fail():
    gt = _ds([[("person", [0, 0, 10, 20])], [("person", [0, 0, 10, 20])]], ["person"], ["day", "night"])
    pred = _ds([[("person", [0, 0, 10, 20])]], ["person"], ["day"])
    res, _ = evaluate(gt, pred)
    assert res.table["person"]["night"]["fn"] == 1 and res.table["person"][ALL]["recall"] == 0.5
    with pytest.raises(InputError, match="not ground-truth categories"):
        evaluate(gt, pred, classes=["car"])
    with pytest.raises(InputError, match="iou_threshold"):
        evaluate(gt, pred, iou_threshold=0)
