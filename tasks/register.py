"""Estimate a version's homography and record it in the registry (what ``register estimate`` runs).

Why a function and not CLI code: the Prefect flow and tests call the same thing. Inputs are
either point correspondences (a CSV/JSON file) or the image pairs of one dataset version and
RGB resolution taken from a paired index; the result goes into the registry with how it was
obtained and its measured error, and an overlay PNG is written for a person to look at.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from registration.homography import Estimate, estimate_from_points, save_overlay
from registration.registry import DEFAULT_MAX_ERROR_PX, HomographyEntry, assess_entry, save_entry
from registration.robust import estimate_robust
from core.errors import InputError

log = logging.getLogger(__name__)


def load_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences from CSV (``x_rgb,y_rgb,x_thermal,y_thermal`` header) or JSON
    (``{"rgb": [[x, y], ...], "thermal": [[x, y], ...]}``); continuous pixel coordinates."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".json":
            doc = json.loads(p.read_text(encoding="utf-8"))
            rgb, th = np.asarray(doc["rgb"], dtype=np.float64), np.asarray(doc["thermal"], dtype=np.float64)
        else:
            with open(p, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            rgb = np.array([[float(r["x_rgb"]), float(r["y_rgb"])] for r in rows])
            th = np.array([[float(r["x_thermal"]), float(r["y_thermal"])] for r in rows])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read correspondences ({type(exc).__name__}: {exc})", str(p),
                         "CSV with header x_rgb,y_rgb,x_thermal,y_thermal, or JSON {\"rgb\": [[x,y],...], "
                         "\"thermal\": [[x,y],...]}") from None
    return rgb.reshape(-1, 2), th.reshape(-1, 2)


@dataclass(frozen=True)
class EstimateRun:
    estimate: Estimate
    entry: HomographyEntry
    registry_file: Path | None
    overlay: Path | None


def _read(path: str, gray: bool) -> np.ndarray:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise InputError("image unreadable", path, "validate the dataset (rgb2thermal data validate)")
    return img


def estimate_for_version(version: str, *, points: str | Path | None = None, index: str | Path | None = None,
                         rgb_size: tuple[int, int] | None = None, thermal_size: tuple[int, int] | None = None,
                         registry_dir: str | Path | None = None, max_pairs: int = 20, holdout_fraction: float = 0.25,
                         ransac_px: float = 3.0, overlay_path: str | Path | None = None, notes: str = "",
                         write: bool = True, seed: int = 0) -> EstimateRun:
    """Estimate the RGB->thermal homography of ``version`` (one RGB resolution) and register it.

    ``points`` given: RANSAC fit on them (``holdout_fraction`` held out for the error). Else
    automatic estimation (:func:`registration.robust.estimate_robust`: global search, joint
    refinement over the pairs, error on pairs held out of the fit) on up to ``max_pairs`` pairs
    of ``version`` from ``index`` whose RGB size is ``rgb_size`` (default: the most common one),
    spread over the index (day and night alike when it has both). The overlay uses the first
    pair of the index when one is given. The entry is written even when :func:`assess_entry`
    refuses it (its errors say why; ``register check`` and the warp stage refuse it), with a
    WARNING.
    """
    pairs, rgb_size, thermal_size = _version_pairs(version, index, rgb_size, thermal_size)
    if points is not None:
        src, dst = load_points(points)
        est = estimate_from_points(src, dst, rgb_size=rgb_size, thermal_size=thermal_size, ransac_px=ransac_px,
                                   holdout_fraction=holdout_fraction, seed=seed)
        how = f"{len(src)} correspondences from {Path(points).name}, {est.n_inliers} RANSAC inliers"
    else:
        est, how = _estimate_from_pairs(pairs, max_pairs)
    for w in est.warnings:
        log.warning(w)
    entry = _entry(est, version, rgb_size, thermal_size, (notes + "; " if notes else "") + how)
    verdict = assess_entry(entry, DEFAULT_MAX_ERROR_PX)
    if verdict.refused:
        log.warning("%s %dx%d: the new entry will be REFUSED by register check and the warp stage: %s; fix: click "
                    "points (rgb2thermal register estimate --version %s --rgb-size %d %d --points POINTS.csv)", version,
                    *rgb_size, "; ".join(verdict.reasons), version, *rgb_size)
    reg_file = save_entry(registry_dir, version, entry) if write else None
    ov = None
    if overlay_path is not None and pairs:
        ov = save_overlay(overlay_path, _read(pairs[0].rgb_path, False), _read(pairs[0].thermal_path, True), est.H)
    return EstimateRun(estimate=est, entry=entry, registry_file=reg_file, overlay=ov)


def _version_pairs(version: str, index: str | Path | None, rgb_size: tuple[int, int] | None,
                   thermal_size: tuple[int, int] | None) -> tuple[list[Any], tuple[int, int], tuple[int, int]]:
    """The index's pairs of ``version`` at ``rgb_size`` (default: the most common one) and the
    (width, height) pixel sizes; sizes must come from the index or the caller."""
    from collections import Counter

    from data.index import load_index

    pairs = []
    if index is not None:
        ix = load_index(index)
        pairs = [p for p in ix.pairs if p.version == version]
        if not pairs:
            raise InputError(f"the index has no pairs of version '{version}' (it has {ix.versions})", str(index),
                             "pass the right --version or index")
        if rgb_size is None:
            rgb_size = Counter(p.rgb_size for p in pairs).most_common(1)[0][0]
        pairs = [p for p in pairs if p.rgb_size == tuple(rgb_size)]
        if not pairs:
            raise InputError(f"no pairs of version '{version}' with RGB size {rgb_size}", str(index), "check --rgb-size")
        thermal_size = thermal_size or pairs[0].thermal_size
    if rgb_size is None or thermal_size is None:
        raise InputError("image sizes unknown", "register estimate", "give --rgb-size and --thermal-size, or --index")
    return pairs, (int(rgb_size[0]), int(rgb_size[1])), (int(thermal_size[0]), int(thermal_size[1]))


def _estimate_from_pairs(pairs: list[Any], max_pairs: int) -> tuple[Estimate, str]:
    """Automatic estimate on up to ``max_pairs`` pairs spread over ``pairs``, and how it was obtained."""
    if not pairs:
        raise InputError("automatic estimation needs image pairs", "register estimate",
                         "give --index (pairs of this version) or --points")
    step = max(1, len(pairs) // max_pairs)
    chosen = pairs[::step][:max_pairs]
    imgs = [(_read(p.rgb_path, False), _read(p.thermal_path, True)) for p in chosen]
    est = estimate_robust(imgs)
    return est, (f"automatic: global search + joint refinement over {est.n_inliers}/{len(chosen)} pairs, "
                 f"error on pairs held out of the fit")


def _entry(est: Estimate, version: str, rgb_size: tuple[int, int], thermal_size: tuple[int, int],
           notes: str) -> HomographyEntry:
    """The registry entry of an estimate; an automatic one records its pairs used/rejected and spread (px)."""
    auto = est.method.startswith("auto")
    extra: dict[str, Any] = {}
    if auto:
        extra = {"pairs_used": est.n_inliers, "pairs_rejected": sum(1 for p in est.per_pair if p.get("ok") is False),
                 "pair_spread_px": None if est.fit_error_px is None else round(est.fit_error_px, 3)}
    return HomographyEntry(H=est.H, rgb_size=rgb_size, thermal_size=thermal_size, method=est.method,
                           error_px=est.error_px, error_kind=est.error_kind, version=version,
                           heldout_error_px=est.holdout_error_px if auto else None, notes=notes, extra=extra)


def describe(entry: HomographyEntry) -> dict[str, Any]:
    return {"version": entry.version, **entry.to_yaml_dict()}
