"""Warping boxes and images from the RGB frame to the thermal frame through a homography.

Why a dedicated module: every RGB pseudo-label crosses the RGB->thermal homography exactly
once, on 10k+ frames, and the pipeline's quality numbers depend on *which* boxes survive that
crossing. So the rule is written down once, vectorised, and the drops are counted by reason:

1. transform the 4 corners of each ``xyxy`` box (pixel coordinates, (0, 0) = top-left corner
   of the top-left pixel) with ``H`` (3x3, RGB pixel -> thermal pixel, homogeneous);
2. take the enclosing axis-aligned box of the 4 warped corners;
3. clip it to the thermal image ``(width, height)``;
4. drop it when a corner projects behind the camera / to infinity (``invalid``), when less
   than ``min_visible_fraction`` of the enclosing box's area lies inside the thermal image
   (``outside``), or when the clipped box is narrower or lower than ``min_size`` pixels
   (``too_small``).

The numpy path (CPU) and the torch/kornia path (GPU-capable, batched) implement the same rule
and agree to float precision (tested); the warp stage takes the kornia path when it runs on a
GPU. Image warping (overlays, estimation checks) uses OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.boxes import as_boxes
from core.errors import InputError

#: Drop-reason vocabulary; index = the ``reason_code`` stored per box (0 = kept).
REASONS: tuple[str, ...] = ("", "invalid", "outside", "too_small")
KEPT, INVALID, OUTSIDE, TOO_SMALL = 0, 1, 2, 3
_REASON_ARRAY = np.array(REASONS, dtype=object)
#: Homogeneous ``w`` below this means the point is at/behind the camera's horizon.
_W_EPS = 1e-9


@dataclass(frozen=True)
class BoxWarpResult:
    """Outcome of warping ``N`` boxes; ``K`` of them kept.

    ``boxes``: ``(K, 4)`` float64 ``xyxy`` thermal pixels of the kept boxes, clipped to the image.
    ``keep``: ``(K,)`` int64 indices into the input of the kept boxes (input order preserved).
    ``reason_code``: ``(N,)`` int8 per input box, index into :data:`REASONS` (0 = kept).
    ``reason``: ``(N,)`` object array of strings ("" = kept, else ``invalid``/``outside``/``too_small``).
    ``warped``: ``(N, 4)`` enclosing boxes of every input box after warping and clipping (NaN where
    the projection was invalid) — useful to inspect what a dropped box became.
    ``visible_fraction``: ``(N,)`` share of each enclosing box's area inside the thermal image.
    ``counts``: ``{"kept": K, "invalid": ..., "outside": ..., "too_small": ...}`` (all keys present).
    """

    boxes: np.ndarray
    keep: np.ndarray
    reason_code: np.ndarray
    reason: np.ndarray
    warped: np.ndarray
    visible_fraction: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def dropped(self) -> dict[str, int]:
        """Counts of dropped boxes by reason (only reasons with a non-zero count)."""
        return {k: v for k, v in self.counts.items() if k != "kept" and v}


def _check_params(H: Any, thermal_size: tuple[int, int], min_size: float, min_visible_fraction: float) -> np.ndarray:
    Hm = np.asarray(H, dtype=np.float64)
    if Hm.shape != (3, 3):
        raise InputError(f"homography must be 3x3, got shape {Hm.shape}", "warp_boxes", "pass the 3x3 RGB->thermal matrix")
    if not np.all(np.isfinite(Hm)):
        raise InputError("homography has non-finite entries", "warp_boxes", "re-estimate or fix the registry entry")
    if len(thermal_size) != 2 or min(thermal_size) <= 0:
        raise InputError(f"thermal_size must be (width, height) > 0, got {thermal_size}", "warp_boxes",
                         "pass the thermal image size as (width, height)")
    if min_size < 0:
        raise InputError(f"min_size must be >= 0 pixels, got {min_size}", "warp_boxes", "use e.g. 2.0")
    if not 0.0 <= min_visible_fraction <= 1.0:
        raise InputError(f"min_visible_fraction must be in [0, 1], got {min_visible_fraction}", "warp_boxes",
                         "use e.g. 0.5 (drop boxes mostly outside the thermal view)")
    return Hm


def _counts(codes: np.ndarray) -> dict[str, int]:
    bc = np.bincount(codes.astype(np.int64), minlength=len(REASONS))
    return {("kept" if i == 0 else name): int(bc[i]) for i, name in enumerate(REASONS)}


_MODES = ("corners", "midpoints")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise InputError(f"unknown box warp mode {mode!r}", "warp_boxes", f"use one of {_MODES}")


def warp_boxes(boxes_xyxy: Any, H: Any, thermal_size: tuple[int, int], *, min_size: float = 2.0,
               min_visible_fraction: float = 0.5, mode: str = "corners") -> BoxWarpResult:
    """Warp ``xyxy`` RGB-pixel boxes into the thermal frame (numpy, vectorised; see module doc).

    ``H`` maps RGB pixel coordinates to thermal pixel coordinates (``p_t ~ H @ [x, y, 1]``).
    ``thermal_size`` is ``(width, height)`` in pixels; ``min_size`` is in thermal pixels and
    applies to the clipped box's width and height; ``min_visible_fraction`` in ``[0, 1]``.
    ``mode="corners"`` (default) takes the enclosing box of the 4 warped corners: it always
    contains the object, but grows under rotation/perspective. ``mode="midpoints"`` uses the 4
    warped edge midpoints instead: identical for scale + translation, tighter under small
    rotations (exact for an ellipse-shaped object), at the risk of cutting box corners.
    """
    _check_mode(mode)
    Hm = _check_params(H, thermal_size, min_size, min_visible_fraction)
    b = as_boxes(boxes_xyxy)
    n = len(b)
    tw, th = float(thermal_size[0]), float(thermal_size[1])
    if mode == "corners":  # (N, 4): x and y of tl, tr, br, bl
        xs = b[:, [0, 2, 2, 0]]
        ys = b[:, [1, 1, 3, 3]]
    else:  # top, right, bottom, left edge midpoints
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        xs = np.stack([cx, b[:, 2], cx, b[:, 0]], axis=1)
        ys = np.stack([b[:, 1], cy, b[:, 3], cy], axis=1)
    w = Hm[2, 0] * xs + Hm[2, 1] * ys + Hm[2, 2]
    bad_w = w <= _W_EPS
    safe_w = np.where(bad_w, 1.0, w)
    px = (Hm[0, 0] * xs + Hm[0, 1] * ys + Hm[0, 2]) / safe_w
    py = (Hm[1, 0] * xs + Hm[1, 1] * ys + Hm[1, 2]) / safe_w
    enc = np.stack([px.min(axis=1), py.min(axis=1), px.max(axis=1), py.max(axis=1)], axis=1)
    invalid = bad_w.any(axis=1) | ~np.isfinite(enc).all(axis=1) | ~np.isfinite(b).all(axis=1)
    enc[invalid] = np.nan
    clipped = enc.copy()
    clipped[:, 0] = np.clip(enc[:, 0], 0.0, tw)
    clipped[:, 2] = np.clip(enc[:, 2], 0.0, tw)
    clipped[:, 1] = np.clip(enc[:, 1], 0.0, th)
    clipped[:, 3] = np.clip(enc[:, 3], 0.0, th)
    cw = clipped[:, 2] - clipped[:, 0]
    ch = clipped[:, 3] - clipped[:, 1]
    full_area = (enc[:, 2] - enc[:, 0]) * (enc[:, 3] - enc[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        vis = np.where(full_area > 0, (cw * ch) / np.where(full_area > 0, full_area, 1.0),
                       # a degenerate (zero-area) input box is "visible" iff it lies inside the image
                       ((enc[:, 0] >= 0) & (enc[:, 2] <= tw) & (enc[:, 1] >= 0) & (enc[:, 3] <= th)).astype(np.float64))
    vis = np.where(invalid, 0.0, vis)
    codes = np.zeros(n, dtype=np.int8)
    small = (cw < min_size) | (ch < min_size)
    codes[small] = TOO_SMALL
    codes[vis < min_visible_fraction] = OUTSIDE
    codes[invalid] = INVALID
    keep = np.flatnonzero(codes == KEPT)
    return BoxWarpResult(boxes=clipped[keep], keep=keep.astype(np.int64), reason_code=codes,
                         reason=_REASON_ARRAY[codes], warped=clipped, visible_fraction=vis, counts=_counts(codes))


def warp_boxes_torch(boxes_xyxy: Any, H: Any, thermal_size: tuple[int, int], *, min_size: float = 2.0,
                     min_visible_fraction: float = 0.5, mode: str = "corners", device: str | None = None) -> BoxWarpResult:
    """Same rule as :func:`warp_boxes`, computed with torch/kornia (GPU when ``device`` is one).

    Corners are transformed with ``kornia.geometry.transform_points`` in float64 so the result
    matches the numpy path to ~1e-9 px. Accepts numpy arrays or torch tensors; returns numpy
    (the result feeds COCO writers anyway). Use it when boxes and homographies are already on
    a GPU, e.g. batched over many frames.
    """
    import torch
    from kornia.geometry.linalg import transform_points

    _check_mode(mode)
    Hm = _check_params(H.detach().cpu().numpy() if hasattr(H, "detach") else H, thermal_size, min_size,
                       min_visible_fraction)
    dev = torch.device(device) if device else (boxes_xyxy.device if isinstance(boxes_xyxy, torch.Tensor) else torch.device("cpu"))
    if isinstance(boxes_xyxy, torch.Tensor):
        b = boxes_xyxy.to(device=dev, dtype=torch.float64).reshape(-1, 4)
    else:
        b = torch.as_tensor(as_boxes(boxes_xyxy), dtype=torch.float64, device=dev)
    n = b.shape[0]
    tw, th = float(thermal_size[0]), float(thermal_size[1])
    Ht = torch.as_tensor(Hm, dtype=torch.float64, device=dev)
    if mode == "corners":
        corners = torch.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], dim=1)  # (N, 4, 2)
    else:
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        corners = torch.stack([torch.stack([cx, b[:, 1]], 1), torch.stack([b[:, 2], cy], 1),
                               torch.stack([cx, b[:, 3]], 1), torch.stack([b[:, 0], cy], 1)], dim=1)
    w = corners[..., 0] * Ht[2, 0] + corners[..., 1] * Ht[2, 1] + Ht[2, 2]
    bad_w = w <= _W_EPS
    if n:
        pts = transform_points(Ht[None], corners.reshape(1, -1, 2)).reshape(n, 4, 2)
    else:
        pts = corners
    enc = torch.cat([pts.min(dim=1).values, pts.max(dim=1).values], dim=1)
    invalid = bad_w.any(dim=1) | ~torch.isfinite(enc).all(dim=1) | ~torch.isfinite(b).all(dim=1)
    enc = torch.where(invalid[:, None], torch.full_like(enc, float("nan")), enc)
    lim = torch.tensor([tw, th, tw, th], dtype=torch.float64, device=dev)
    clipped = torch.minimum(torch.clamp(enc, min=0.0), lim)
    cw = clipped[:, 2] - clipped[:, 0]
    ch = clipped[:, 3] - clipped[:, 1]
    full_area = (enc[:, 2] - enc[:, 0]) * (enc[:, 3] - enc[:, 1])
    inside = ((enc[:, 0] >= 0) & (enc[:, 2] <= tw) & (enc[:, 1] >= 0) & (enc[:, 3] <= th)).to(torch.float64)
    vis = torch.where(full_area > 0, cw * ch / torch.where(full_area > 0, full_area, torch.ones_like(full_area)), inside)
    vis = torch.where(invalid, torch.zeros_like(vis), vis)
    codes = torch.zeros(n, dtype=torch.int8, device=dev)
    codes[(cw < min_size) | (ch < min_size)] = TOO_SMALL
    codes[vis < min_visible_fraction] = OUTSIDE
    codes[invalid] = INVALID
    codes_np = codes.cpu().numpy()
    clipped_np = clipped.cpu().numpy()
    keep = np.flatnonzero(codes_np == KEPT).astype(np.int64)
    return BoxWarpResult(boxes=clipped_np[keep], keep=keep, reason_code=codes_np, reason=_REASON_ARRAY[codes_np],
                         warped=clipped_np, visible_fraction=vis.cpu().numpy(), counts=_counts(codes_np))


def to_pixel_center_convention(H: Any) -> np.ndarray:
    """Convert a corner-convention homography into the one OpenCV/kornia image warps expect.

    rgb2thermal homographies map *continuous* coordinates ((0, 0) = top-left corner of the
    top-left pixel, the box convention). ``cv2.warpPerspective`` and kornia (``align_corners=True``)
    index pixel *centres* at integers, i.e. ``x_idx = x_cont - 0.5``. So the image-warp matrix is
    ``T(-0.5) @ H @ T(+0.5)``; without it a scaling homography shifts images by ``0.5 * (s - 1)``
    px relative to the boxes.
    """
    Hm = np.asarray(H, dtype=np.float64)
    t_in = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    t_out = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    return t_out @ Hm @ t_in


def warp_image(image: np.ndarray, H: Any, thermal_size: tuple[int, int], *, interpolation: str = "linear",
               border_value: float = 0.0) -> np.ndarray:
    """Warp an RGB-frame image (``HxW`` or ``HxWxC`` uint8/float) into the thermal frame (OpenCV).

    Output has the thermal size ``(width, height)``; pixels the RGB camera did not see get
    ``border_value``. Used for overlays and for estimation checks; boxes use :func:`warp_boxes`.
    """
    import cv2

    Hm = to_pixel_center_convention(H)
    flags = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}.get(interpolation)
    if flags is None:
        raise InputError(f"unknown interpolation {interpolation!r}", "warp_image", "use linear, nearest or area")
    return cv2.warpPerspective(image, Hm, (int(thermal_size[0]), int(thermal_size[1])), flags=flags,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
