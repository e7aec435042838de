"""RGB->thermal homographies: checking, estimation (points, automatic), errors and overlays.

Convention: a homography ``H`` maps *continuous* RGB pixel coordinates to continuous thermal
pixel coordinates (``(0, 0)`` = top-left corner of the top-left pixel, the box convention),
``p_t ~ H @ [x, y, 1]``. Sizes are ``(width, height)``. OpenCV image functions index pixel
centres instead; the conversion is done in one place (:func:`registration.warp.to_pixel_center_convention`).

Why checks: a wrong matrix does not crash anything — it silently moves every pseudo-label off
its object, and the damage shows up days later as a bad thermal model. So every matrix that
enters the registry or the warp stage is checked for being singular, non-finite, flipping the
image's orientation (mirror, or the horizon line crossing the image) or scaling wildly, and
the error says which.

Estimation across modalities is hard: RGB and thermal intensities are unrelated, only edges
are shared. Two estimators:

- :func:`estimate_from_points`: user correspondences (>= 4), RANSAC (``cv2.findHomography``),
  with reprojection errors on held-out points;
- :func:`estimate_auto` (the old baseline; ``register estimate`` uses :mod:`registration.robust`):
  ECC (``cv2.findTransformECC``) on gradient images from a same-view start, per pair, pooled
  by the per-corner median. It converges only near that start: 10.7 px off on another rig while
  its per-pair spread (23 px) was recorded as its error; kept as the measured baseline.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HomographyCheck:
    """Diagnostics of a homography over the RGB image (all scales relative, unitless).

    ``scale_min``/``scale_max``: local linear scale (sqrt of the Jacobian determinant) at the RGB
    image corners and centre, divided by the scale implied by the two image sizes.
    ``anisotropy``: worst ratio of the Jacobian's singular values. ``overlap``: share of the
    thermal image covered by the warped RGB image.
    """

    scale_min: float
    scale_max: float
    anisotropy: float
    overlap: float


def _as_h(H: Any, where: str) -> np.ndarray:
    try:
        Hm = np.asarray(H, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"homography is not numeric: {H!r}", where, "give a 3x3 list of numbers") from None
    if Hm.shape != (3, 3):
        raise InputError(f"homography must be 3x3, got shape {Hm.shape}", where, "give a 3x3 RGB->thermal matrix")
    if not np.all(np.isfinite(Hm)):
        raise InputError("homography has non-finite entries (NaN/inf)", where,
                         "re-estimate it (too few or degenerate correspondences?)")
    return Hm


def _jacobian(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Jacobians ``(N, 2, 2)`` of the projective map at ``pts`` ``(N, 2)``."""
    x, y = pts[:, 0], pts[:, 1]
    u = H[0, 0] * x + H[0, 1] * y + H[0, 2]
    v = H[1, 0] * x + H[1, 1] * y + H[1, 2]
    w = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    J = np.empty((len(pts), 2, 2))
    J[:, 0, 0] = (H[0, 0] * w - u * H[2, 0]) / w ** 2
    J[:, 0, 1] = (H[0, 1] * w - u * H[2, 1]) / w ** 2
    J[:, 1, 0] = (H[1, 0] * w - v * H[2, 0]) / w ** 2
    J[:, 1, 1] = (H[1, 1] * w - v * H[2, 1]) / w ** 2
    return J


def check_homography(H: Any, rgb_size: tuple[int, int], thermal_size: tuple[int, int], *,
                     max_scale_ratio: float = 4.0, max_anisotropy: float = 4.0, min_overlap: float = 0.05,
                     where: str = "homography") -> HomographyCheck:
    """Raise :class:`InputError` unless ``H`` (RGB->thermal) is a plausible camera-to-camera map.

    Rejected: non-finite entries, a singular matrix, orientation flips (mirroring, or the
    horizon line ``w = 0`` crossing the RGB image), local scales more than ``max_scale_ratio``
    away from the size ratio of the two images, shear/anisotropy above ``max_anisotropy``, and
    a warped RGB image covering less than ``min_overlap`` of the thermal image.
    """
    Hm = _as_h(H, where)
    rw, rh = float(rgb_size[0]), float(rgb_size[1])
    tw, th = float(thermal_size[0]), float(thermal_size[1])
    if min(rw, rh, tw, th) <= 0:
        raise InputError(f"image sizes must be positive, got rgb {rgb_size} thermal {thermal_size}", where,
                         "give sizes as (width, height) in pixels")
    norm = np.abs(Hm).max()
    if norm == 0:
        raise InputError("homography is all zeros", where, "re-estimate it")
    Hn = Hm / norm
    sv = np.linalg.svd(Hn, compute_uv=False)
    if sv[-1] < 1e-12 * sv[0] or abs(np.linalg.det(Hn)) < 1e-15:
        raise InputError(f"homography is singular (singular values {sv.tolist()})", where,
                         "re-estimate it from >= 4 well-spread, non-collinear correspondences")
    pts = np.array([[0, 0], [rw, 0], [rw, rh], [0, rh], [rw / 2, rh / 2]], dtype=np.float64)
    w = Hn[2, 0] * pts[:, 0] + Hn[2, 1] * pts[:, 1] + Hn[2, 2]
    if not (np.all(w > 0) or np.all(w < 0)):
        raise InputError("homography sends part of the RGB image through infinity (the horizon line w=0 crosses it)",
                         where, "the perspective terms H[2,0:2] are far too large; re-estimate the matrix")
    if np.all(w < 0):
        Hn = -Hn
    J = _jacobian(Hn, pts)
    dets = np.linalg.det(J)
    if np.any(dets <= 0):
        raise InputError("homography flips the image orientation (a mirror image: negative Jacobian determinant)",
                         where, "check that the correspondences are not swapped left/right or up/down, and that "
                                "the matrix maps RGB -> thermal (not the inverse of a mirrored pair)")
    expected = np.sqrt((tw * th) / (rw * rh))
    scales = np.sqrt(dets) / expected
    if scales.min() < 1.0 / max_scale_ratio or scales.max() > max_scale_ratio:
        raise InputError(f"homography scales wildly: local scale {scales.min():.3g}..{scales.max():.3g} x the image-size "
                         f"ratio (allowed 1/{max_scale_ratio:g}..{max_scale_ratio:g})", where,
                         "check the correspondences and that rgb_size/thermal_size are (width, height) of the right images")
    svj = np.linalg.svd(J, compute_uv=False)
    aniso = float((svj[:, 0] / svj[:, 1]).max())
    if aniso > max_anisotropy:
        raise InputError(f"homography shears/stretches one axis {aniso:.3g}x more than the other (allowed {max_anisotropy:g})",
                         where, "check the correspondences (nearly collinear points give such matrices)")
    overlap = _overlap_fraction(Hn, rgb_size, thermal_size)
    if overlap < min_overlap:
        raise InputError(f"the warped RGB image covers only {overlap:.1%} of the thermal image (need {min_overlap:.0%})",
                         where, "the matrix maps RGB off the thermal view; check its direction (RGB->thermal) and sizes")
    return HomographyCheck(scale_min=float(scales.min()), scale_max=float(scales.max()), anisotropy=aniso,
                           overlap=overlap)


def _overlap_fraction(H: np.ndarray, rgb_size: tuple[int, int], thermal_size: tuple[int, int]) -> float:
    import cv2

    rw, rh = rgb_size
    tw, th = thermal_size
    quad = project_points(H, np.array([[0, 0], [rw, 0], [rw, rh], [0, rh]], dtype=np.float64)).astype(np.float32)
    rect = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], dtype=np.float32)
    area, _ = cv2.intersectConvexConvex(quad, rect)
    return float(area) / float(tw * th)


def project_points(H: Any, pts: Any) -> np.ndarray:
    """Apply ``H`` to ``(N, 2)`` points (continuous pixel coordinates); returns ``(N, 2)`` float64."""
    P = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    Hm = np.asarray(H, dtype=np.float64)
    q = P @ Hm[:, :2].T + Hm[:, 2]
    return q[:, :2] / q[:, 2:3]


def reprojection_errors(H: Any, rgb_pts: Any, thermal_pts: Any) -> np.ndarray:
    """Per-point distance (thermal pixels) between ``H @ rgb_pts`` and ``thermal_pts``."""
    return np.linalg.norm(project_points(H, rgb_pts) - np.asarray(thermal_pts, dtype=np.float64).reshape(-1, 2), axis=1)


def grid_error(H_est: Any, H_true: Any, rgb_size: tuple[int, int], thermal_size: tuple[int, int], n: int = 16) -> float:
    """Mean distance (thermal px) between two RGB->thermal maps over an ``n x n`` grid of the thermal view.

    Points are taken on the thermal image, mapped back to RGB with ``H_true^-1`` and forward with
    ``H_est``: the honest error of an estimate when the true matrix is known (synthetic tests).
    """
    tw, th = thermal_size
    g = np.stack(np.meshgrid(np.linspace(0, tw, n), np.linspace(0, th, n)), axis=-1).reshape(-1, 2)
    rgb = project_points(np.linalg.inv(np.asarray(H_true, dtype=np.float64)), g)
    return float(np.linalg.norm(project_points(H_est, rgb) - g, axis=1).mean())


@dataclass(frozen=True)
class Estimate:
    """An estimated RGB->thermal homography and how good it is.

    ``error_px``: mean reprojection error (thermal pixels) on held-out correspondences when
    there were any, else on the inliers used for fitting (``error_kind`` says which).
    """

    H: np.ndarray
    method: str
    error_px: float | None
    error_kind: str
    n_points: int = 0
    n_inliers: int = 0
    fit_error_px: float | None = None
    holdout_error_px: float | None = None
    per_pair: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def estimate_from_points(rgb_pts: Any, thermal_pts: Any, *, rgb_size: tuple[int, int], thermal_size: tuple[int, int],
                         ransac_px: float = 3.0, holdout_rgb: Any = None, holdout_thermal: Any = None,
                         holdout_fraction: float = 0.0, seed: int = 0) -> Estimate:
    """Fit ``H`` (RGB->thermal) from point correspondences (continuous pixel coordinates).

    RANSAC (``cv2.findHomography``, ``ransac_px`` thermal pixels) over >= 4 pairs. Held-out
    correspondences — given explicitly, or ``holdout_fraction`` of the input chosen with
    ``seed`` (kept only if >= 4 remain for fitting) — are not used for the fit and give the
    reported error. The result is checked with :func:`check_homography`.
    """
    import cv2

    src = np.asarray(rgb_pts, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(thermal_pts, dtype=np.float64).reshape(-1, 2)
    where = "point correspondences"
    if len(src) != len(dst):
        raise InputError(f"{len(src)} RGB points but {len(dst)} thermal points", where, "give the points in pairs")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise InputError("correspondences contain NaN/inf", where, "remove the bad rows")
    ho_src = ho_dst = None
    if holdout_rgb is not None:
        ho_src = np.asarray(holdout_rgb, dtype=np.float64).reshape(-1, 2)
        ho_dst = np.asarray(holdout_thermal, dtype=np.float64).reshape(-1, 2)
    elif holdout_fraction > 0:
        n_ho = int(round(len(src) * holdout_fraction))
        if len(src) - n_ho >= 4 and n_ho > 0:
            perm = np.random.default_rng(seed).permutation(len(src))
            ho, fit = perm[:n_ho], perm[n_ho:]
            ho_src, ho_dst, src, dst = src[ho], dst[ho], src[fit], dst[fit]
    if len(src) < 4:
        raise InputError(f"need at least 4 correspondences to fit a homography, got {len(src)}", where,
                         "click/give at least 4 (better 8+) well-spread point pairs")
    H, mask = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), cv2.RANSAC, ransac_px)
    if H is None:
        raise InputError("OpenCV could not fit a homography (degenerate/collinear points?)", where,
                         "use well-spread, non-collinear points")
    H = H / H[2, 2]
    check_homography(H, rgb_size, thermal_size, where="estimated homography")
    inl = mask.ravel().astype(bool)
    fit_err = float(reprojection_errors(H, src[inl], dst[inl]).mean())
    ho_err = float(reprojection_errors(H, ho_src, ho_dst).mean()) if ho_src is not None and len(ho_src) else None
    return Estimate(H=H, method="points_ransac", error_px=ho_err if ho_err is not None else fit_err,
                    error_kind="holdout" if ho_err is not None else "fit_inliers", n_points=len(src),
                    n_inliers=int(inl.sum()), fit_error_px=fit_err, holdout_error_px=ho_err)


def gradient_image(img: np.ndarray, blur_sigma: float = 1.5) -> np.ndarray:
    """Normalised gradient magnitude (float32, ~0..1): the part of RGB and thermal images they share.

    Grey, blurred, Sobel magnitude, divided by its 98th percentile and clipped, so that the
    very different intensity scales of the two modalities do not matter.
    """
    import cv2

    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), blur_sigma)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = cv2.magnitude(gx, gy)
    p = float(np.percentile(mag, 98)) or 1.0
    return np.clip(mag / p, 0, 1).astype(np.float32)


def _scale_h(H: np.ndarray, s: float) -> np.ndarray:
    S = np.diag([s, s, 1.0])
    return S @ H @ np.linalg.inv(S)


def ecc_pair(rgb: np.ndarray, thermal: np.ndarray, H_init: np.ndarray, *, levels: int = 3, iterations: int = 100,
             eps: float = 1e-5, affine_coarse: bool = True) -> tuple[np.ndarray, float]:
    """Refine ``H_init`` (RGB->thermal) on one pair with coarse-to-fine ECC on gradient images.

    Returns ``(H, ecc)``: ECC correlation coefficient at the finest level (1 = perfect).
    Raises ``cv2.error`` when ECC diverges (the caller records and skips that pair).
    """
    import cv2

    from registration.warp import to_pixel_center_convention

    g_r = gradient_image(rgb)
    g_t = gradient_image(thermal)
    # ECC warps the input (RGB) onto the template (thermal): W maps template pixel -> input pixel.
    W = np.linalg.inv(to_pixel_center_convention(H_init))
    W = W / W[2, 2]
    cc = 0.0
    for lvl in range(levels - 1, -1, -1):
        s = 0.5 ** lvl
        tr = cv2.resize(g_t, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if lvl else g_t
        ir = cv2.resize(g_r, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if lvl else g_r
        Ws = _scale_h(W, s)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
        # Coarse levels fit an affine model (6 dof, well conditioned on blurry gradients); only the
        # finest level frees the 2 perspective terms — a full homography from the start diverges often.
        if lvl > 0 and affine_coarse:
            Wa = (Ws / Ws[2, 2])[:2].astype(np.float32)
            cc, Wa = cv2.findTransformECC(tr, ir, Wa, cv2.MOTION_AFFINE, crit, None, 5)
            Ws = np.vstack([Wa.astype(np.float64), [0.0, 0.0, 1.0]])
        else:
            cc, Wh = cv2.findTransformECC(tr, ir, Ws.astype(np.float32), cv2.MOTION_HOMOGRAPHY, crit, None, 5)
            Ws = Wh.astype(np.float64)
        W = _scale_h(Ws, 1.0 / s)
    Hpix = np.linalg.inv(W)
    t_in = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    t_out = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    H = t_out @ Hpix @ t_in  # back to the continuous (corner) convention
    return H / H[2, 2], float(cc)


def pool_homographies(Hs: Sequence[np.ndarray], thermal_size: tuple[int, int]) -> np.ndarray:
    """Robust average of several RGB->thermal estimates: per-corner median of the thermal corners' pre-images."""
    import cv2

    tw, th = thermal_size
    corners = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], dtype=np.float64)
    pre = np.stack([project_points(np.linalg.inv(H), corners) for H in Hs])  # (K, 4, 2)
    med = np.median(pre, axis=0)
    H = cv2.getPerspectiveTransform(med.astype(np.float32), corners.astype(np.float32)).astype(np.float64)
    return H / H[2, 2]


def initial_guess(rgb_size: tuple[int, int], thermal_size: tuple[int, int]) -> np.ndarray:
    """Same field of view, centred: a pure scale from the image sizes (the usual starting point)."""
    return np.diag([thermal_size[0] / rgb_size[0], thermal_size[1] / rgb_size[1], 1.0])


def estimate_auto(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, H_init: np.ndarray | None = None,
                  levels: int = 3, iterations: int = 100, min_ecc: float = 0.2,
                  holdout_rgb: Any = None, holdout_thermal: Any = None, progress: bool = True) -> Estimate:
    """Estimate ``H`` from image pairs ``[(rgb_bgr, thermal_gray), ...]`` of one rig (see module doc).

    Pairs where ECC diverges or ends below ``min_ecc`` are skipped and listed in
    ``per_pair``/``warnings``; at least one pair must succeed. ``H_init`` defaults to
    :func:`initial_guess`. ``error_px`` is on held-out correspondences when given; otherwise it
    is the median disagreement (thermal px, over the thermal image grid) between the per-pair
    estimates and the pooled one — a consistency measure, not an accuracy (``error_kind`` says so).
    """
    import cv2
    from tqdm import tqdm

    if not pairs:
        raise InputError("no image pairs given", "estimate_auto", "pass at least one RGB/thermal pair of the rig")
    rgb0, th0 = pairs[0]
    rgb_size = (rgb0.shape[1], rgb0.shape[0])
    thermal_size = (th0.shape[1], th0.shape[0])
    H0 = initial_guess(rgb_size, thermal_size) if H_init is None else np.asarray(H_init, dtype=np.float64)
    check_homography(H0, rgb_size, thermal_size, where="initial homography")
    Hs, per_pair, warnings = [], [], []
    for k, (rgb, th) in enumerate(tqdm(pairs, desc="ECC per pair", unit="pair", disable=not progress or len(pairs) < 5)):
        if (rgb.shape[1], rgb.shape[0]) != rgb_size or (th.shape[1], th.shape[0]) != thermal_size:
            msg = f"pair {k}: image sizes differ from the first pair's (one rig = one size); skipped"
            per_pair.append({"pair": k, "ok": False, "reason": "size differs"})
            warnings.append(msg)
            continue
        try:
            H, cc = ecc_pair(rgb, th, H0, levels=levels, iterations=iterations)
        except cv2.error as exc:
            per_pair.append({"pair": k, "ok": False, "reason": f"ECC failed: {str(exc).strip().splitlines()[-1][:120]}"})
            continue
        ok = cc >= min_ecc
        try:
            check_homography(H, rgb_size, thermal_size)
        except InputError as exc:
            ok = False
            per_pair.append({"pair": k, "ok": False, "ecc": cc, "reason": f"implausible: {exc.what}"})
            continue
        per_pair.append({"pair": k, "ok": bool(ok), "ecc": cc, **({} if ok else {"reason": f"ecc {cc:.3f} < {min_ecc}"})})
        if ok:
            Hs.append(H)
    skipped = sum(1 for p in per_pair if not p["ok"])
    if skipped:
        warnings.append(f"{skipped}/{len(pairs)} pairs skipped (ECC failed, low correlation or implausible result)")
        log.warning(warnings[-1])
    if not Hs:
        raise InputError("automatic estimation failed on every pair", "estimate_auto",
                         "give point correspondences (register estimate --points) or a closer initial homography")
    H = pool_homographies(Hs, thermal_size)
    check_homography(H, rgb_size, thermal_size, where="pooled automatic homography")
    spread = float(np.median([grid_error(Hk, H, rgb_size, thermal_size) for Hk in Hs]))
    ho_err = None
    if holdout_rgb is not None:
        ho_err = float(reprojection_errors(H, holdout_rgb, holdout_thermal).mean())
    return Estimate(H=H, method="auto_ecc_gradient", error_px=ho_err if ho_err is not None else spread,
                    error_kind="holdout" if ho_err is not None else "per_pair_spread", n_points=0,
                    n_inliers=len(Hs), holdout_error_px=ho_err, fit_error_px=spread, per_pair=per_pair,
                    warnings=warnings)


def overlay(rgb: np.ndarray, thermal: np.ndarray, H: Any) -> np.ndarray:
    """A BGR check image in the thermal frame: warped RGB (grey) with thermal edges in red on top.

    A person judges registration at a glance: red edges should sit on the RGB object outlines.
    """
    import cv2

    from registration.warp import warp_image

    tsize = (thermal.shape[1], thermal.shape[0])
    warped = warp_image(rgb, H, tsize)
    grey = warped if warped.ndim == 2 else cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    t = thermal if thermal.ndim == 2 else cv2.cvtColor(thermal, cv2.COLOR_BGR2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(t, (5, 5), 1.2), 40, 100) > 0
    out[edges] = (0, 0, 255)
    return out


def save_overlay(path: str | Path, rgb: np.ndarray, thermal: np.ndarray, H: Any) -> Path:
    """Write :func:`overlay` as a PNG (atomic)."""
    import cv2

    from core import atomic

    ok, buf = cv2.imencode(".png", overlay(rgb, thermal, H))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return atomic.write_bytes(path, buf.tobytes())
