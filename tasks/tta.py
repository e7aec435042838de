"""Test-time augmentation for pseudo-labelling: the detector also sees each image mirrored.

Why: a pseudo-label that the detector finds in the image *and* in its mirror image is more likely
an object than one it finds in only one view, and a box averaged over two views sits tighter.
The views are fused per image and class with weighted box fusion (the ``ensemble-boxes``
package, the field's implementation; ``conf_type="avg"``: a box seen in one view of two keeps
half its score, so agreement between views is rewarded by construction).

Boxes are ``xyxy`` pixels of the original image throughout; ``ensemble-boxes`` wants them
normalised to [0, 1], which happens only inside :func:`fuse_views`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

View = Literal["flip"]
#: IoU at which boxes of two views count as one object (ensemble-boxes' default).
VIEW_IOU = 0.55


def hflip(image: np.ndarray) -> np.ndarray:
    """The image mirrored left-right (a contiguous copy: mmcv's pipeline needs one)."""
    return np.ascontiguousarray(image[:, ::-1])


def unflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """``xyxy`` boxes found in the mirrored image, in the original image's pixels."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b


def fuse_views(views: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], width: int, height: int,
               skip_below: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WBF of ``(boxes xyxy px, scores, labels)`` per view into one set (same convention)."""
    from ensemble_boxes import weighted_boxes_fusion

    scale = np.array([width, height, width, height], np.float64)
    boxes = [np.clip(np.asarray(b, np.float64).reshape(-1, 4) / scale, 0.0, 1.0) for b, _, _ in views]
    scores = [np.asarray(s, np.float64) for _, s, _ in views]
    labels = [np.asarray(lab, np.int64) for _, _, lab in views]
    if not any(len(s) for s in scores):
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    b, s, lab = weighted_boxes_fusion(boxes, scores, labels, iou_thr=VIEW_IOU, skip_box_thr=skip_below,
                                      conf_type="avg")
    return np.asarray(b, np.float64).reshape(-1, 4) * scale, np.asarray(s, np.float64), np.asarray(lab).astype(np.int64)
