"""An mmdet training transform for ignore regions: erase them from the image.

Why: a pseudo-label between a low and a high confidence threshold is neither a trustworthy
object nor background. Dropping it teaches the student that the (often real, often warm) object
there is background; keeping it teaches false positives. Detectors with an ignore loss skip such
regions; mmdet's YOLOX head has none (``batch_gt_instances_ignore`` is accepted and unused), so
the region is filled with the pad grey before any augmentation instead: the student sees no
object there and no background either. mmdet's ``CocoDataset`` marks COCO ``iscrowd`` boxes as
``ignore_flag``; :class:`EraseIgnoredBoxes` reads them from ``gt_ignore_flags``, fills their
pixels (``xyxy`` pixels of the loaded image, rounded outwards) and removes them from the targets.
"""
from __future__ import annotations

import math

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS


@TRANSFORMS.register_module()
class EraseIgnoredBoxes(BaseTransform):
    """Fill ignored boxes with ``fill`` (grey level, 0-255) and drop them from ``gt_*``."""

    def __init__(self, fill: int = 114) -> None:
        self.fill = int(fill)

    def transform(self, results: dict) -> dict:
        flags = results.get("gt_ignore_flags")
        if flags is None or not np.any(flags):
            return results
        flags = np.asarray(flags, dtype=bool)
        img = results["img"]
        h, w = img.shape[:2]
        boxes = results["gt_bboxes"]
        coords = boxes.tensor.numpy() if hasattr(boxes, "tensor") else np.asarray(boxes)
        for x1, y1, x2, y2 in coords[flags]:
            xa, ya = max(0, math.floor(x1)), max(0, math.floor(y1))
            xb, yb = min(w, math.ceil(x2)), min(h, math.ceil(y2))
            if xb > xa and yb > ya:
                img[ya:yb, xa:xb] = self.fill
        keep = ~flags
        results["gt_bboxes"] = boxes[keep]
        results["gt_bboxes_labels"] = results["gt_bboxes_labels"][keep]
        results["gt_ignore_flags"] = flags[keep]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fill={self.fill})"
