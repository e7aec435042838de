"""The refine stage's box policy: replace a box by the refiner's box, keep it, or drop it.

Why a policy: a segmenter can grab a whole road, a shadow or a neighbour, so a refined box only
replaces its prompt when the refiner is confident, the two boxes overlap and the new box is not
degenerate (:mod:`tasks.refine` module docstring). Boxes are ``xyxy`` float pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.boxes import as_boxes, iou_matrix


@dataclass(frozen=True)
class PolicyResult:
    """Per-box outcome of :func:`apply_policy` (arrays of length N)."""

    boxes: np.ndarray          # (N, 4) xyxy: the new box where replaced, else the prompt box
    decisions: list[str]       # "replace" | "keep" | "drop"
    reasons: list[str | None]  # why not replaced: empty_mask, low_score, low_iou, too_small
    ious: np.ndarray           # (N,) IoU(new, prompt); 0 where no new box


def apply_policy(prompt: np.ndarray, new: np.ndarray, scores: np.ndarray, *, score_threshold: float,
                 min_iou: float, min_size: float, on_reject: str) -> PolicyResult:
    """Replace/keep/drop each box (see module docstring). ``new`` has NaN rows where nothing was found."""
    prompt, new = as_boxes(prompt), np.asarray(new, dtype=np.float64).reshape(-1, 4)
    n = len(prompt)
    found = np.isfinite(new).all(axis=1)
    ious = np.zeros(n)
    if found.any():
        ious[found] = np.diag(iou_matrix(new[found], prompt[found]))
    wh = np.where(found[:, None], new[:, 2:] - new[:, :2], 0.0)
    out = prompt.copy()
    decisions: list[str] = []
    reasons: list[str | None] = []
    for i in range(n):
        if not found[i]:
            reason = "empty_mask"
        elif scores[i] < score_threshold:
            reason = "low_score"
        elif ious[i] < min_iou:
            reason = "low_iou"
        elif wh[i].min() < min_size:
            reason = "too_small"
        else:
            reason = None
        if reason is None:
            out[i] = new[i]
            decisions.append("replace")
        else:
            decisions.append(on_reject)
        reasons.append(reason)
    return PolicyResult(out, decisions, reasons, ious)
