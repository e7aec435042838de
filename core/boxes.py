"""Box conventions and conversions — the one place where formats meet.

Internal convention (everywhere in rgb2thermal): ``xyxy`` float pixel coordinates as a
``(N, 4)`` numpy array, continuous coordinates with (0, 0) at the top-left *corner* of the
top-left pixel; a box over pixel columns 0..9 is ``x1=0, x2=10``. Image sizes are
``(width, height)``.

Edge formats, converted only when reading/writing files:
- COCO JSON ``bbox``: ``[x, y, w, h]`` in pixels (top-left corner + size).
- YOLO txt: ``cx cy w h`` normalised by image width/height.

Mixing these up is the classic silent mAP=0 bug, hence these tiny, tested functions.
"""
from __future__ import annotations

import numpy as np

FloatArray = np.ndarray


def as_boxes(boxes: object) -> FloatArray:
    """Return ``boxes`` as a float64 ``(N, 4)`` array (an empty input gives shape ``(0, 4)``)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xywh_to_xyxy(boxes: object) -> FloatArray:
    b = as_boxes(boxes).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_to_xywh(boxes: object) -> FloatArray:
    b = as_boxes(boxes).copy()
    b[:, 2] -= b[:, 0]
    b[:, 3] -= b[:, 1]
    return b


def cxcywh_norm_to_xyxy(boxes: object, width: int, height: int) -> FloatArray:
    """YOLO ``cx cy w h`` (normalised) -> pixel ``xyxy``."""
    b = as_boxes(boxes)
    cx, cy = b[:, 0] * width, b[:, 1] * height
    w, h = b[:, 2] * width, b[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def xyxy_to_cxcywh_norm(boxes: object, width: int, height: int) -> FloatArray:
    b = as_boxes(boxes)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return np.stack([(b[:, 0] + w / 2) / width, (b[:, 1] + h / 2) / height, w / width, h / height], axis=1)


def areas(boxes: object) -> FloatArray:
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def clip(boxes: object, width: int, height: int) -> FloatArray:
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def iou_matrix(a: object, b: object) -> FloatArray:
    """Pairwise IoU, shape ``(len(a), len(b))``; boxes in ``xyxy``."""
    a, b = as_boxes(a), as_boxes(b)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def enlarge(boxes: object, factor: float, width: int | None = None, height: int | None = None) -> FloatArray:
    """Scale boxes about their centres by ``factor``; clip when an image size is given."""
    b = as_boxes(boxes)
    c = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) * factor / 2
    out = np.concatenate([c - half, c + half], axis=1)
    if width is not None and height is not None:
        out = clip(out, width, height)
    return out
