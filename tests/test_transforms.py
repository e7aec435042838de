"""The mmdet training transform that erases ignore regions (uncertain pseudo-labels) from the image."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mmdet")


def test_erase_ignored_boxes_fills_pixels_and_drops_targets() -> None:
    from mmdet.structures.bbox import HorizontalBoxes

    from detection.transforms import EraseIgnoredBoxes

    img = np.full((40, 60, 3), 7, np.uint8)
    res = {"img": img, "gt_bboxes": HorizontalBoxes(np.array([[2, 3, 10.5, 12], [20, 5, 30, 25]], np.float32)),
           "gt_bboxes_labels": np.array([0, 1]), "gt_ignore_flags": np.array([False, True])}
    out = EraseIgnoredBoxes(fill=114)(res)
    assert (out["img"][5:25, 20:30] == 114).all() and (out["img"][3:12, 2:11] == 7).all()
    assert out["img"][4, 19].tolist() == [7, 7, 7]                      # nothing outside the box
    assert out["gt_bboxes"].tensor.tolist() == [[2, 3, 10.5, 12]] and out["gt_bboxes_labels"].tolist() == [0]
    assert out["gt_ignore_flags"].tolist() == [False]
    plain = {"img": img.copy(), "gt_bboxes": HorizontalBoxes(np.zeros((0, 4), np.float32)),
             "gt_bboxes_labels": np.zeros(0, np.int64), "gt_ignore_flags": np.zeros(0, bool)}
    assert EraseIgnoredBoxes()(plain)["img"].tolist() == img.tolist()
