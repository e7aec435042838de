"""Automatic RGB->thermal homography that does not assume the answer, with a held-out error.

Why: ECC from the "same field of view" start (:func:`registration.homography.estimate_auto`)
only converges when the rig is close to that start; on another rig it lands 10-30 px off and its
per-pair spread did not stop anyone trusting it. This estimator:

1. **Global search (joint over pairs)** for scale, aspect, rotation and translation: on gradient
   images at a coarse working resolution, every candidate linear part (isotropic scale on a log
   grid over ``scale_range`` relative to the image-size ratio, aspect over ``aspect_range``,
   rotation up to ``max_rotation_deg``) is scored by *phase correlation summed over the pairs*
   (one cross-power spectrum per pair, normalised, added, inverse FFT: the peak is the
   translation the pairs agree on, its height the score). The best candidate of each of
   ``starts`` bands of scale is searched again on a finer grid at a finer resolution, each is
   refined at coarse levels and the one the pairs then correlate with best is kept (the peak
   height alone favours small scales on some scenes). Shear
   and perspective are left to the refinement (small on plausible rigs).
2. **Joint refinement** (:func:`refine_joint`): one homography for all pairs at once,
   Gauss-Newton on the sum over pairs of ECC-style residuals (per-pair gain and offset), coarse
   to fine, affine first, then all 8 parameters. OpenCV's ``findTransformECC`` optimises one
   pair at a time; pooling per-pair results was what failed, so the sum is done here.
3. **Pairs rejected by a stated rule**: each pair is re-aligned alone from the joint fit; it is
   rejected when its correlation is below ``min_ecc``, its matrix is implausible, or it maps
   more than ``max(reject_px, reject_factor * median)`` thermal px (mean over the thermal image)
   from the joint fit. The joint fit is then redone on the accepted pairs.
4. **Held-out error (cross-validation over pairs)**: the accepted pairs are split into
   ``folds`` groups; each group is fitted alone and the rest jointly, and the distance between
   the two maps (thermal px, mean over the thermal image) is that group's held-out error. Their
   mean is the entry's ``heldout_error_px``. A small group's own fit is noisy, so this over-
   rather than under-states the error of the matrix fitted on all pairs.

Pure geometry on numpy arrays (BGR/gray uint8 images in, matrices out); conventions as in
:mod:`registration.homography` (continuous coordinates, RGB->thermal, sizes ``(width, height)``).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InputError
from registration.homography import Estimate, check_homography, gradient_image, grid_error

log = logging.getLogger(__name__)


class RobustParams(BaseModel):
    """Parameters of :func:`estimate_robust` (pixel values are thermal pixels at full resolution).

    - ``scale_range``: per-axis scale searched, relative to the image-size ratio (thermal/RGB);
      ``(0.6, 1.8)``: thermal px per RGB px from 0.6x to 1.8x what the two image sizes imply.
    - ``coarse_px``/``fine_px``: longest side of the thermal image in the coarse and fine search.
    - ``aspect_range``: ratio of the two axes' scales searched (relative to the size ratio's).
    - ``max_rotation_deg``/``rotation_step_deg``: rotations searched (degrees, both signs).
    - ``coarse_step``: relative scale/aspect step of the coarse grid; the fine grid tries half a
      step either side of the best coarse candidate of each of ``starts`` bands of scale.
    - ``search_pairs``: pairs (spread over the input) the global search correlates jointly.
    - ``starts``: bands of isotropic scale; each band's best search result is refined (coarse
      levels, search pairs) and the one whose pairs then correlate best on average is kept.
    - ``min_ecc``: ECC correlation (0..1) below which a pair is rejected.
    - ``reject_px``/``reject_factor``: a pair whose own alignment (refined alone from the joint
      fit) maps more than ``max(reject_px, reject_factor * median over pairs)`` thermal px (mean
      over the thermal image) from the joint fit is rejected.
    - ``levels``: resolutions (factors of full size) of the joint refinement, coarse to fine; the
      per-pair and cross-validation refits run at the finest only, ``check_iterations`` each.
    - ``iterations``: Gauss-Newton iterations per level of the joint refinement.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale_range: tuple[float, float] = (0.6, 1.8)
    aspect_range: tuple[float, float] = (0.6, 1.65)
    max_rotation_deg: float = Field(default=6.0, ge=0.0, le=45.0)
    rotation_step_deg: float = Field(default=3.0, gt=0.0)
    coarse_px: int = Field(default=64, ge=32, le=512)
    fine_px: int = Field(default=112, ge=32, le=1024)
    coarse_step: float = Field(default=0.07, gt=0.0, le=0.5)
    search_pairs: int = Field(default=6, ge=1, le=100)
    starts: int = Field(default=4, ge=1, le=20)
    min_ecc: float = Field(default=0.2, ge=0.0, le=1.0)
    reject_px: float = Field(default=8.0, gt=0.0)
    reject_factor: float = Field(default=2.5, ge=1.0)
    levels: tuple[float, ...] = (0.125, 0.25, 0.5)
    iterations: int = Field(default=30, ge=3, le=1000)
    check_iterations: int = Field(default=15, ge=3, le=1000)


# -- global search -------------------------------------------------------------------------------
def _resized(g: np.ndarray, f: float) -> np.ndarray:
    import cv2

    return cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)


def _search(g_rgb: Sequence[np.ndarray], g_th: Sequence[np.ndarray], f: float, Ls: Sequence[np.ndarray],
            ) -> list[tuple[float, int, float, float]]:
    """Score every linear part ``L`` (2x2, RGB->thermal) at working factor ``f``.

    Returns ``(score, i, tx, ty)`` per candidate ``Ls[i]`` (translation in full-resolution px).
    Both images are zero-mean, windowed and zero-padded into one canvas large enough that
    circular correlation does not alias any translation that leaves the images overlapping.
    """
    import cv2

    def hann(h: int, w: int) -> np.ndarray:
        return np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1]).astype(np.float32)

    th = [_resized(g, f) for g in g_th]
    rg = [_resized(g, f) for g in g_rgb]
    h_t, w_t = th[0].shape
    h_r, w_r = rg[0].shape
    corners = np.array([[0, 0], [w_r, 0], [w_r, h_r], [0, h_r]], np.float64)
    ext = max(float(np.ptp(corners @ L.T, axis=0).max()) for L in Ls)
    cw = cv2.getOptimalDFTSize(int(w_t + ext) + 2)
    ch = cv2.getOptimalDFTSize(int(h_t + ext) + 2)
    win_t = hann(h_t, w_t)
    Ft = []
    for t in th:
        c = np.zeros((ch, cw), np.float32)
        c[:h_t, :w_t] = (t - t.mean()) * win_t
        Ft.append(cv2.dft(c, flags=cv2.DFT_COMPLEX_OUTPUT))
    # zero-mean and windowed: the image supports (rectangles) must not correlate, only the edges
    win_r = hann(h_r, w_r)
    rg = [((r - r.mean()) * win_r).astype(np.float32) for r in rg]
    out = []
    for i, L in enumerate(Ls):
        lo = (corners @ L.T).min(axis=0)     # put the warped RGB at the canvas origin, remember the shift
        off = -lo + L @ np.array([0.5, 0.5]) - 0.5
        A = np.hstack([L, off[:, None]]).astype(np.float32)
        acc = np.zeros((ch, cw, 2), np.float32)
        for F, r in zip(Ft, rg):
            wr = cv2.warpAffine(r, A, (cw, ch), flags=cv2.INTER_LINEAR)
            X = cv2.mulSpectrums(F, cv2.dft(wr, flags=cv2.DFT_COMPLEX_OUTPUT), 0, conjB=True)
            mag = cv2.magnitude(X[..., 0], X[..., 1])
            acc += X / (mag + 1e-3 * float(mag.max()) + 1e-12)[..., None]
        corr = cv2.idft(acc, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE) / len(rg)
        iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
        dy = iy if iy < h_t else iy - ch   # thermal(x) ~ rgb_warped(x - d), -extent < d < thermal size
        dx = ix if ix < w_t else ix - cw
        out.append((float(corr[iy, ix]), i, (dx - lo[0]) / f, (dy - lo[1]) / f))
    return out


def _rot(theta_deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(theta_deg)), np.sin(np.deg2rad(theta_deg))
    return np.array([[c, -s], [s, c]])


def _linear(s: float, a: float, r: float, rx: float, ry: float) -> np.ndarray:
    """Linear part: rotation ``r`` (deg) after per-axis scale ``(s*sqrt(a)*rx, s/sqrt(a)*ry)``."""
    return _rot(r) @ np.diag([s * np.sqrt(a) * rx, s / np.sqrt(a) * ry])


def _geom(lo: float, hi: float, step: float) -> np.ndarray:
    n = max(1, int(np.ceil(np.log(hi / lo) / np.log1p(step)))) + 1
    return np.geomspace(lo, hi, n)


def global_search(g_rgb: Sequence[np.ndarray], g_th: Sequence[np.ndarray], params: RobustParams) -> tuple[np.ndarray, dict]:
    """Similarity-plus-aspect homography (RGB->thermal, continuous coordinates) all pairs agree on best.

    ``g_rgb``/``g_th``: gradient images (:func:`registration.homography.gradient_image`) at full
    resolution. A coarse grid over isotropic scale, aspect and rotation, then a finer grid around
    the ``top_k`` best at a finer resolution. Returns ``(H0, info)``.
    """
    h_t, w_t = g_th[0].shape
    h_r, w_r = g_rgb[0].shape
    rx, ry = w_t / w_r, h_t / h_r
    P = params
    cands = [(s, a, r) for s in _geom(*P.scale_range, P.coarse_step) for a in _geom(*P.aspect_range, P.coarse_step)
             for r in np.arange(-P.max_rotation_deg, P.max_rotation_deg + 1e-9, P.rotation_step_deg)]
    f_c = P.coarse_px / max(w_t, h_t)
    coarse = sorted(_search(g_rgb, g_th, f_c, [_linear(*c, rx, ry) for c in cands]), reverse=True)
    f_f = P.fine_px / max(w_t, h_t)
    # one start per band of isotropic scale: the correlation peak alone favours small scales on
    # some scenes, so the bands' best candidates are all refined and judged after refinement
    edges = np.geomspace(*P.scale_range, P.starts + 1)
    st = np.sqrt(1.0 + P.coarse_step)     # half a coarse step either side
    starts: list[np.ndarray] = []
    fine_all: list[tuple[float, tuple[float, float, float], float, float]] = []
    n_fine = 0
    for lo_s, hi_s in zip(edges[:-1], edges[1:]):
        band = [c for c in coarse if lo_s <= cands[c[1]][0] <= hi_s * (1 + 1e-9)]
        if not band:
            continue
        s0, a0, r0 = cands[band[0][1]]
        fine_c = [(s0 * ds, a0 * da, r0 + dr) for ds in (1 / st, 1.0, st) for da in (1 / st, 1.0, st)
                  for dr in (-P.rotation_step_deg / 2, 0.0, P.rotation_step_deg / 2)]
        n_fine += len(fine_c)
        sc, i, tx, ty = max(_search(g_rgb, g_th, f_f, [_linear(*c, rx, ry) for c in fine_c]))
        L = _linear(*fine_c[i], rx, ry)
        starts.append(np.array([[L[0, 0], L[0, 1], tx], [L[1, 0], L[1, 1], ty], [0.0, 0.0, 1.0]]))
        fine_all.append((sc, fine_c[i], tx, ty))
    best = int(np.argmax([f[0] for f in fine_all]))
    starts.insert(0, starts.pop(best))
    score, (s, a, r), tx, ty = fine_all[best]
    return starts[0], {"score": round(score, 5), "scale": round(float(s), 4), "aspect": round(float(a), 4),
                       "rotation_deg": round(float(r), 3), "translation_px": [round(tx, 2), round(ty, 2)],
                       "candidates": len(cands) + n_fine, "starts": starts}



# -- joint refinement ------------------------------------------------------------------------------
def _scaled(H: np.ndarray, f: float) -> np.ndarray:
    """The same continuous-coordinate map on images resized by ``f`` (both sides)."""
    S = np.diag([f, f, 1.0])
    return S @ H @ np.linalg.inv(S)


_TO_IDX = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])   # continuous -> pixel index


def refine_joint(g_rgb: Sequence[np.ndarray], g_th: Sequence[np.ndarray], H0: np.ndarray, *,
                 levels: Sequence[float] = (0.125, 0.25, 0.5, 1.0), iterations: int = 30,
                 affine_levels: int = 1) -> tuple[np.ndarray, list[float]]:
    """One homography for all pairs: Gauss-Newton on the sum over pairs of ECC-style residuals.

    Per pair the thermal gradient image is modelled as ``alpha_k * warped RGB gradient + beta_k``
    (gain and offset re-fitted every iteration, so contrast differences between modalities and
    scenes do not matter and a pair that correlates weakly pulls weakly); the 8 homography
    parameters are shared. Forward-compositional updates on the thermal side, coarse to fine over
    ``levels`` (factors of the full resolution); the first ``affine_levels`` fit 6 parameters only
    (perspective terms are ill-conditioned on blurry coarse images). Returns ``(H, rho)``: the
    matrix (continuous coordinates) and each pair's correlation (0..1) at the finest level.
    """
    H = np.asarray(H0, dtype=np.float64) / H0[2, 2]
    rho: list[float] = []
    for li, f in enumerate(levels):
        th = [_resized(g, f) if f != 1.0 else g for g in g_th]
        rg = [_resized(g, f) if f != 1.0 else g for g in g_rgb]
        H, level_rho = _refine_level(th, rg, H, f, 6 if li < affine_levels else 8, iterations)
        rho = level_rho or rho
    return H, rho


def _refine_level(th: Sequence[np.ndarray], rg: Sequence[np.ndarray], H: np.ndarray, f: float, n_par: int,
                  iterations: int) -> tuple[np.ndarray, list[float]]:
    """Gauss-Newton at one level (images resized by ``f``) with ``n_par`` (6 affine or 8) parameters:
    the refined ``H`` (continuous coordinates, full resolution) and each pair's correlation."""
    h, w = th[0].shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    c, sc = np.array([w / 2.0, h / 2.0]), max(w, h) / 2.0
    N = np.array([[1 / sc, 0, -c[0] / sc], [0, 1 / sc, -c[1] / sc], [0, 0, 1.0]])   # index -> normalised
    xn, yn = ((xs - c[0]) / sc).ravel(), ((ys - c[1]) / sc).ravel()
    # M: thermal pixel index -> RGB pixel index at this level
    M = np.linalg.inv(_TO_IDX @ _scaled(H, f) @ np.linalg.inv(_TO_IDX))
    rho: list[float] = []
    for _ in range(iterations):
        A = np.zeros((n_par, n_par))
        b = np.zeros(n_par)
        rho = []
        for t, r in zip(th, rg):
            JtJ, Jtr, rho_k = _pair_system(t, r, M, (w, h), xn, yn, sc, n_par)
            rho.append(rho_k)
            if JtJ is not None:
                A += JtJ
                b += Jtr
        try:
            dp = np.linalg.solve(A + 1e-6 * np.trace(A) / n_par * np.eye(n_par), b)
        except np.linalg.LinAlgError:
            break
        Wn = np.eye(3)
        Wn[0, :] += dp[0:3]
        Wn[1, :] += dp[3:6]
        if n_par == 8:
            Wn[2, :2] += dp[6:8]
        M = M @ (np.linalg.inv(N) @ Wn @ N)
        M /= M[2, 2]
        if np.abs(dp).max() < 1e-5:
            break
    H = np.linalg.inv(_TO_IDX) @ np.linalg.inv(M) @ _TO_IDX
    H = _scaled(H, 1.0 / f)
    H /= H[2, 2]
    return H, rho


def _pair_system(t: np.ndarray, r: np.ndarray, M: np.ndarray, size: tuple[int, int], xn: np.ndarray, yn: np.ndarray,
                 sc: float, n_par: int) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """One pair's share of the normal equations ``(J^T J, J^T res)`` and its correlation (0..1);
    ``(None, None, 0.0)`` when the warped RGB image overlaps too little or is flat."""
    import cv2

    w, h = size
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    Iw = cv2.warpPerspective(r, M, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    valid = cv2.warpPerspective(np.ones_like(r), M, (w, h), flags=flags, borderValue=0) > 0.999
    valid = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool).ravel()
    if valid.sum() < 50:
        return None, None, 0.0
    gx = (cv2.Sobel(Iw, cv2.CV_32F, 1, 0, ksize=3) / 8.0).ravel()[valid]
    gy = (cv2.Sobel(Iw, cv2.CV_32F, 0, 1, ksize=3) / 8.0).ravel()[valid]
    iv, tv = Iw.ravel()[valid].astype(np.float64), t.ravel()[valid].astype(np.float64)
    iv_c, tv_c = iv - iv.mean(), tv - tv.mean()
    var = float(iv_c @ iv_c)
    if var <= 1e-12:
        return None, None, 0.0
    alpha = float(iv_c @ tv_c) / var
    rho = float(iv_c @ tv_c) / np.sqrt(var * float(tv_c @ tv_c) + 1e-12)
    res = tv_c - alpha * iv_c
    x, y = xn[valid], yn[valid]
    # d(warped)/d(params) of W = I + [[p0 p1 p2] [p3 p4 p5] [p6 p7 0]] at p = 0 (normalised coords)
    gxs, gys = gx * sc, gy * sc      # gradient per normalised unit
    cols = [gxs * x, gxs * y, gxs, gys * x, gys * y, gys]
    if n_par == 8:
        cols += [-(gxs * x + gys * y) * x, -(gxs * x + gys * y) * y]
    J = alpha * np.stack(cols, axis=1)
    return J.T @ J, J.T @ res, rho


def estimate_robust(pairs: Sequence[tuple[np.ndarray, np.ndarray]], params: RobustParams | None = None, *,
                    folds: int = 4) -> Estimate:
    """Estimate ``H`` (RGB->thermal) from image pairs ``[(rgb, thermal), ...]`` of one rig (module doc).

    ``error_px`` is the held-out error (``error_kind="heldout_pairs"``): for each of ``folds``
    groups of accepted pairs (leave-one-out when fewer pairs), the map fitted jointly on the
    other pairs against the map fitted on the held-out group alone, mean distance over the
    thermal image, averaged over groups. With fewer than 2 accepted pairs it is unknown (None).
    Both refits start from the all-pairs solution (at the finest level only, to keep the cost at
    a few seconds), so a held-out group can pull the fit only as far as its local basin allows.
    What no held-out error can see is an offset all pairs share (a systematic cross-modal bias).
    """
    P = params or RobustParams()
    if not pairs:
        raise InputError("no image pairs given", "estimate_robust", "pass at least one RGB/thermal pair of the rig")
    rgb0, th0 = pairs[0]
    sizes = (rgb0.shape[1], rgb0.shape[0]), (th0.shape[1], th0.shape[0])
    warnings: list[str] = []
    keep = [k for k, (r, t) in enumerate(pairs) if (r.shape[1], r.shape[0]) == sizes[0] and (t.shape[1], t.shape[0]) == sizes[1]]
    if len(keep) < len(pairs):
        warnings.append(f"{len(pairs) - len(keep)} pairs skipped: image sizes differ from the first pair's (one rig = one size)")
    g_r = [gradient_image(pairs[k][0]) for k in keep]
    g_t = [gradient_image(pairs[k][1]) for k in keep]
    H0, search = _search_start(g_r, g_t, P, sizes)
    H, _ = refine_joint(g_r, g_t, H0, levels=P.levels, iterations=P.iterations)
    own, per_pair = _pairs_alone(g_r, g_t, keep, H, P, sizes)
    limit = _reject(per_pair, P)
    acc = [i for i, p in enumerate(per_pair) if p["ok"]]
    if len(acc) < len(keep):
        warnings.append(f"{len(keep) - len(acc)}/{len(keep)} pairs rejected (low correlation, implausible alone, or "
                        f"> {limit:.1f} px from the joint fit)")
        log.warning(warnings[-1])
        if acc:
            H = _refit([g_r[i] for i in acc], [g_t[i] for i in acc], H, P)
    if not acc:
        raise InputError("automatic estimation found no pair that agrees with the joint fit", "estimate_robust",
                         "give point correspondences (register estimate --points)")
    check_homography(H, *sizes, where="automatic homography")
    ho = _heldout(g_r, g_t, acc, own, H, P, sizes, folds)
    ho_err = float(np.mean(ho)) if ho else None
    if ho_err is None:
        warnings.append("only one usable pair: no held-out error (give more pairs)")
    return Estimate(H=H, method="auto_search_joint_ecc", error_px=ho_err, error_kind="heldout_pairs", n_points=0,
                    n_inliers=len(acc), holdout_error_px=ho_err,
                    fit_error_px=float(np.median([per_pair[i]["disagreement_px"] for i in acc])),
                    per_pair=per_pair + [{"search": search, "heldout_px": [round(v, 3) for v in ho]}], warnings=warnings)


def _refit(g_r: Sequence[np.ndarray], g_t: Sequence[np.ndarray], H: np.ndarray, P: RobustParams) -> np.ndarray:
    """A check refit from ``H``: the finest level only, all 8 parameters, ``check_iterations``."""
    return refine_joint(g_r, g_t, H, levels=P.levels[-1:], iterations=P.check_iterations, affine_levels=0)[0]


def _search_start(g_r: list[np.ndarray], g_t: list[np.ndarray], P: RobustParams,
                  sizes: tuple[tuple[int, int], tuple[int, int]]) -> tuple[np.ndarray, dict]:
    """The joint refinement's start: the global search over ``search_pairs`` pairs, each of its starts
    refined at the coarse levels, the one the pairs then correlate with best (plus the search's record)."""
    sel = np.unique(np.linspace(0, len(g_r) - 1, min(P.search_pairs, len(g_r))).round().astype(int))
    H0, search = global_search([g_r[i] for i in sel], [g_t[i] for i in sel], P)
    coarse = P.levels[:-1] or P.levels
    tried = []
    for Hs in search.pop("starts"):    # multi-start: the search's best peak is not always the right one
        try:
            Hc, rho = refine_joint([g_r[i] for i in sel], [g_t[i] for i in sel], Hs, levels=coarse, iterations=P.iterations)
            check_homography(Hc, *sizes)
        except (InputError, np.linalg.LinAlgError):
            continue
        tried.append((float(np.mean(rho)), Hc))
    search["start_scores"] = [round(t[0], 4) for t in tried]
    if tried:
        H0 = max(tried, key=lambda t: t[0])[1]
    return H0, search


def _pairs_alone(g_r: list[np.ndarray], g_t: list[np.ndarray], keep: list[int], H: np.ndarray, P: RobustParams,
                 sizes: tuple[tuple[int, int], tuple[int, int]]) -> tuple[list[np.ndarray | None], list[dict[str, Any]]]:
    """Each pair re-aligned alone from the joint fit ``H`` (what it says on its own): its matrix (None
    when implausible) and its record (correlation, distance from ``H`` in thermal px)."""
    own: list[np.ndarray | None] = []
    per_pair: list[dict[str, Any]] = []
    for i, k in enumerate(keep):
        try:
            Hk, rk = refine_joint([g_r[i]], [g_t[i]], H, levels=P.levels[-1:], iterations=P.check_iterations,
                                  affine_levels=0)
            check_homography(Hk, *sizes)
        except (InputError, np.linalg.LinAlgError) as exc:
            own.append(None)
            per_pair.append({"pair": k, "ok": False, "reason": f"implausible alone: {getattr(exc, 'what', exc)}"})
            continue
        own.append(Hk)
        per_pair.append({"pair": k, "ok": True, "ecc": round(rk[0], 4), "disagreement_px": round(grid_error(Hk, H, *sizes), 3)})
    return own, per_pair


def _reject(per_pair: list[dict[str, Any]], P: RobustParams) -> float:
    """The stated rejection rule, applied in place (``ok``/``reason``); returns the distance limit (thermal px)."""
    dis = [p["disagreement_px"] for p in per_pair if p["ok"]]
    limit = max(P.reject_px, P.reject_factor * float(np.median(dis))) if dis else P.reject_px
    for p in per_pair:
        if p["ok"] and p["ecc"] < P.min_ecc:
            p.update(ok=False, reason=f"correlation {p['ecc']:.3f} < min_ecc {P.min_ecc}")
        elif p["ok"] and p["disagreement_px"] > limit:
            p.update(ok=False, reason=f"alone it maps {p['disagreement_px']:.1f} px from the joint fit (> {limit:.1f} px)")
    return limit


def _heldout(g_r: list[np.ndarray], g_t: list[np.ndarray], acc: list[int], own: list[np.ndarray | None], H: np.ndarray,
             P: RobustParams, sizes: tuple[tuple[int, int], tuple[int, int]], folds: int) -> list[float]:
    """Cross-validation over the accepted pairs: per group, thermal px between the group's own fit and
    the rest's joint fit (both refitted from ``H``); empty with fewer than 2 pairs."""
    groups = [list(g) for g in np.array_split(np.array(acc), min(folds, len(acc)))] if len(acc) >= 2 else []
    ho: list[float] = []
    for grp in groups:
        rest = [i for i in acc if i not in grp]
        H_rest = _refit([g_r[i] for i in rest], [g_t[i] for i in rest], H, P)
        H_grp = own[grp[0]] if len(grp) == 1 else _refit([g_r[i] for i in grp], [g_t[i] for i in grp], H, P)
        ho.append(grid_error(H_grp, H_rest, *sizes))
    return ho
