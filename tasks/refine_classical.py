"""Classical (no-model) box refinement on a thermal image: background-deviation + Otsu in the box.

Why it exists: SAM2 needs a checkpoint the user has to supply. Without one the refine stage
still has to do something *honest* — never pretend it ran SAM2 — and thermal images make a
simple method reasonable: people and engines are warmer (brighter) or, on hot days, cooler
(darker) than their surroundings, so splitting "like the local background" from "not like
it" inside a slightly enlarged box separates object from background well enough to tighten
a loose box.

Method, per box (all coordinates ``xyxy`` float pixels, (0, 0) = top-left corner of the
top-left pixel; a box over pixel columns 0..9 is ``x1=0, x2=10``):

1. enlarge the prompt box about its centre by ``enlarge`` (clipped to the image), so a box
   that is slightly too tight can still grow to the object's real extent;
2. estimate the background level and noise from the crop's border ring (median and MAD: the
   ring is mostly background) and take each pixel's *deviation* from that level, so hot
   parts (bodies, engines, tyres) and cold parts (car glass, a cool object on a hot day) both
   count as object;
3. foreground = deviation above ``min(Otsu threshold of the deviation, noise_k x noise)``:
   Otsu alone splits a car into "hot engine/tyres" vs "everything else"; the noise bound
   keeps the moderately warm body in the object;
4. a morphological close (kernel ``close_fraction`` of the box's shorter side) joins parts;
   connected components (8-connectivity);
5. the refined box encloses every component that overlaps the central window of the prompt
   box (its middle ``centre_fraction`` in each direction): the object "near the centre",
   in several pieces if need be, without background structures at the crop's edge.

The score is Otsu's separability of the deviation image, ``eta = between-class variance /
total variance`` in ``[0, 1]``: near 1 for a clean object-on-background crop, near 0 for
noise or a flat patch. It is *not* a probability and is not comparable with a SAM2 mask
score; the refine stage has a separate threshold for it.

Measured (``tests/test_refine.py``, ``benchmarks/msrs_reach.py``): on generated scenes it
brings boxes loosened 1.3-1.6x back towards the ground truth; on real msrs thermal frames
with already well-placed boxes it changes mean IoU little (see ``benchmarks/results``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.boxes import as_boxes, enlarge as enlarge_boxes

METHOD = "classical"


@dataclass(frozen=True)
class ClassicalConfig:
    """Parameters that change the classical refiner's output (they key its cache).

    - ``enlarge``: factor (>= 1) by which the prompt box is scaled about its centre before
      segmenting, so the refined box may grow as well as shrink.
    - ``centre_fraction``: side fraction (0..1] of the prompt box treated as "the centre"
      when choosing the component.
    - ``close_fraction``: closing kernel size as a fraction of the prompt box's shorter side
      (0 disables the close).
    - ``noise_k``: a deviation from the background above ``noise_k`` x the ring's robust
      noise level (MAD x 1.4826 + 1 grey level) always counts as object.
    - ``min_crop``: crops smaller than this many pixels in either direction are not
      segmented (score 0, no box).
    """

    enlarge: float = 1.2
    centre_fraction: float = 0.5
    close_fraction: float = 0.2
    noise_k: float = 3.0
    min_crop: int = 4

    def __post_init__(self) -> None:
        from core.errors import InputError

        if not (1.0 <= self.enlarge <= 4.0):
            raise InputError(f"classical enlarge must be in [1, 4], got {self.enlarge}", "refine params",
                             "use e.g. 1.2 (20% larger than the prompt box)")
        if not (0.0 < self.centre_fraction <= 1.0):
            raise InputError(f"centre_fraction must be in (0, 1], got {self.centre_fraction}", "refine params",
                             "use e.g. 0.5")
        if not (0.0 <= self.close_fraction <= 0.5):
            raise InputError(f"close_fraction must be in [0, 0.5], got {self.close_fraction}", "refine params",
                             "use e.g. 0.08, or 0 to disable")
        if self.noise_k <= 0:
            raise InputError(f"noise_k must be > 0, got {self.noise_k}", "refine params", "use e.g. 3")
        if self.min_crop < 2:
            raise InputError(f"min_crop must be >= 2, got {self.min_crop}", "refine params", "use e.g. 4")


def _otsu_eta(crop: np.ndarray) -> tuple[float, float]:
    """Otsu threshold and separability of a uint8 crop (threshold: foreground is ``> t``)."""
    hist = np.bincount(crop.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    p = hist / total
    levels = np.arange(256, dtype=np.float64)
    mu_t = float((p * levels).sum())
    var_t = float((p * (levels - mu_t) ** 2).sum())
    w0 = np.cumsum(p)
    mu = np.cumsum(p * levels)
    w1 = 1.0 - w0
    valid = (w0 > 0) & (w1 > 0)
    between = np.zeros(256)
    between[valid] = (mu_t * w0[valid] - mu[valid]) ** 2 / (w0[valid] * w1[valid])
    t = int(np.argmax(between))
    if var_t <= 1e-9 or not valid.any():
        return float(t), 0.0
    return float(t), float(min(1.0, between[t] / var_t))


def refine_one(gray: np.ndarray, box: np.ndarray, cfg: ClassicalConfig) -> tuple[np.ndarray | None, float]:
    """Refine one ``xyxy`` box on a ``(H, W)`` uint8 image; ``(None, 0.0)`` when nothing is found."""
    import cv2

    h, w = gray.shape
    eb = enlarge_boxes(box[None], cfg.enlarge, w, h)[0]
    x0, y0 = int(np.floor(eb[0])), int(np.floor(eb[1]))
    x1, y1 = int(np.ceil(eb[2])), int(np.ceil(eb[3]))
    if x1 - x0 < cfg.min_crop or y1 - y0 < cfg.min_crop:
        return None, 0.0
    crop = gray[y0:y1, x0:x1].astype(np.float32)
    ring = np.concatenate([crop[0], crop[-1], crop[1:-1, 0], crop[1:-1, -1]])
    bg = float(np.median(ring))
    noise = 1.4826 * float(np.median(np.abs(ring - bg))) + 1.0
    dev = np.abs(crop - bg)
    t, eta = _otsu_eta(np.clip(dev, 0, 255).astype(np.uint8))
    if eta <= 0.0:
        return None, 0.0
    fg = (dev > min(t, cfg.noise_k * noise)).astype(np.uint8)
    bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
    k = int(round(cfg.close_fraction * min(bw, bh)))
    if k >= 2:
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return None, 0.0
    cx, cy = (box[0] + box[2]) / 2 - x0, (box[1] + box[3]) / 2 - y0
    hw, hh = bw * cfg.centre_fraction / 2, bh * cfg.centre_fraction / 2
    cx0, cx1 = int(max(0, np.floor(cx - hw))), int(min(x1 - x0, np.ceil(cx + hw)))
    cy0, cy1 = int(max(0, np.floor(cy - hh))), int(min(y1 - y0, np.ceil(cy + hh)))
    overlap = np.bincount(labels[cy0:cy1, cx0:cx1].ravel(), minlength=n)[1:]
    if overlap.size == 0 or overlap.max() == 0:
        return None, 0.0
    st = stats[np.nonzero(overlap)[0] + 1]
    bx0, by0 = int(st[:, 0].min()), int(st[:, 1].min())
    bx1, by1 = int((st[:, 0] + st[:, 2]).max()), int((st[:, 1] + st[:, 3]).max())
    return np.array([x0 + bx0, y0 + by0, x0 + bx1, y0 + by1], dtype=np.float64), eta


def refine_boxes(gray: np.ndarray, boxes: object, cfg: ClassicalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refine all boxes of one image; ``gray`` is ``(H, W)`` uint8 (decode with ``core.images.to_gray_u8``).

    Returns ``(new_boxes, scores)``: ``(N, 4)`` float64 ``xyxy`` (a row of NaN where no
    component was found) and ``(N,)`` separability scores in ``[0, 1]``.
    """
    cfg = cfg or ClassicalConfig()
    b = as_boxes(boxes)
    out = np.full((len(b), 4), np.nan)
    scores = np.zeros(len(b))
    for i, box in enumerate(b):
        nb, s = refine_one(gray, box, cfg)
        if nb is not None:
            out[i], scores[i] = nb, s
    return out, scores
