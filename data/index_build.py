"""Building a paired-dataset index from the frames an adapter found (shared by every adapter).

Why a module of its own: :mod:`data.index` is the file format every stage reads; this is the one
writer, with the checks that decide what goes in (unreadable or unpaired frames, boxes outside the
image, class mapping, clock offsets) and the per-version exclusion list. Adapters hand it
:class:`Candidate` frames whose labels are :class:`RawLabels` (``xyxy`` pixels or YOLO
``cxcywh_norm``); the index it writes holds COCO ``xywh`` pixels only.
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import atomic
from core.coco import annotations, categories_from_names, new_dataset
from core.errors import InputError
from core.versions import check_version_name
from data.index import (DEFAULT_CLASS_MAP, DEFAULT_CLASSES, EXCLUSIONS_SCHEMA, Pair, PairedIndex, coco_image, save_index,
                        summarize)

log = logging.getLogger(__name__)


@dataclass
class RawLabels:
    """Labels of one image as found in the source, before class mapping and size checks.

    ``boxes``: ``(N, 4)`` in ``fmt`` — ``"xyxy"`` pixels, or ``"cxcywh_norm"`` (YOLO, normalised).
    ``size``: ``(width, height)`` the label file claims for its image, when it says (COCO does).
    """

    names: list[str]
    boxes: np.ndarray
    fmt: str = "xyxy"
    source: str = ""
    size: tuple[int, int] | None = None


@dataclass
class Candidate:
    """A frame an adapter found: either path may be ``None`` (then the pair is excluded, with a reason)."""

    original_id: str
    rgb_path: Path | None
    thermal_path: Path | None
    split: str = ""
    daynight: str | None = None
    rgb_labels: RawLabels | None = None
    thermal_labels: RawLabels | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildOptions:
    """Checks applied while building (units: pixels, seconds, fractions)."""

    decode_images: bool = False          # fully decode every image (slow; catches truncated files)
    min_box_size: float = 1.0            # boxes narrower/lower than this after clipping are dropped
    min_inside_fraction: float = 0.5     # boxes with less of their area inside the image are dropped
    max_sync_offset_s: float = 0.1       # pairs whose timestamps differ more are excluded
    check_thermal_size: bool = True      # exclude thermal frames whose size differs from the version's usual one


def resolve_class_map(classes: Sequence[str], class_map: Mapping[str, str | None] | str | Path | None) -> dict[str, str | None]:
    """Lower-cased source name -> target class (or ``None`` = drop). Accepts a dict or a YAML/JSON file."""
    if isinstance(class_map, (str, Path)):
        import yaml

        p = Path(class_map)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read class map ({exc})", str(p), "give a YAML/JSON mapping source_name: target") from None
        if not isinstance(loaded, dict):
            raise InputError("class map must be a mapping source_name: target_name (or null)", str(p), "fix the file")
        class_map = loaded
    merged: dict[str, str | None] = {k: v for k, v in DEFAULT_CLASS_MAP.items() if v is None or v in classes}
    for c in classes:
        merged[c.lower()] = c
    for k, v in (class_map or {}).items():
        if v is not None and v not in classes:
            raise InputError(f"class map sends {k!r} to {v!r}, which is not a target class {list(classes)}",
                             "class map", "map to one of the target classes or to null (drop)")
        merged[str(k).lower()] = v
    return merged


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """A PNG's (width, height) from its IHDR chunk (bytes 16-24), or None if it is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) == 24 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def read_size(path: str | os.PathLike[str], decode: bool) -> tuple[tuple[int, int] | None, str]:
    """``((width, height), "")`` or ``(None, why)``; header only unless ``decode``.

    PNG headers are read directly (5x cheaper than PIL's plugin probing, which was a large part
    of re-indexing 10k pairs); everything else, and a full decode, goes through PIL."""
    from PIL import Image, UnidentifiedImageError

    if not decode:
        try:
            size = _png_size(path)
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if size is not None:
            return (size, "") if size[0] > 0 and size[1] > 0 else (None, "zero-sized image")
    try:
        with Image.open(path) as im:
            size = im.size
            if decode:
                im.load()
        if size[0] <= 0 or size[1] <= 0:
            return None, "zero-sized image"
        return (int(size[0]), int(size[1])), ""
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def load_exclusions(path: str | Path, version: str) -> dict[str, dict[str, Any]]:
    """A per-version exclusion list (``original_id`` -> entry). Refuses another version's list."""
    p = Path(path)
    try:
        doc = atomic.read_json(p)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read exclusion list ({exc})", str(p), "pass a file written by data validate") from None
    if not isinstance(doc, dict) or doc.get("schema") != EXCLUSIONS_SCHEMA:
        raise InputError(f"not an exclusion list (schema must be {EXCLUSIONS_SCHEMA})", str(p),
                         "pass a file written by rgb2thermal data validate")
    if doc.get("version") != version:
        raise InputError(f"exclusion list is for dataset version '{doc.get('version')}', not '{version}'", str(p),
                         "exclusion lists are per version: pass the list of this version (or none)")
    return {str(e["original_id"]): e for e in doc.get("items", [])}


def save_exclusions(path: str | Path, version: str, excluded: Iterable[Mapping[str, Any]]) -> Path:
    items = [{"original_id": e["original_id"], "reason": e["reason"], "detail": e.get("detail", "")}
             for e in excluded if e.get("version") == version and e.get("original_id") is not None]
    return atomic.write_json(path, {"schema": EXCLUSIONS_SCHEMA, "version": version, "items": items})


def _labels_to_anns(raw: RawLabels, size: tuple[int, int], cmap: Mapping[str, str | None], cat_id: Mapping[str, int],
                    opts: BuildOptions, where: str, issues: list[dict],
                    dropped_classes: Counter) -> list[tuple[int, list[float]]]:
    from core.boxes import as_boxes, cxcywh_norm_to_xyxy

    isfinite = math.isfinite
    w, h = size
    b = as_boxes(raw.boxes)
    if len(b) and raw.fmt == "cxcywh_norm":
        b = cxcywh_norm_to_xyxy(b, w, h)
    out: list[tuple[int, list[float]]] = []
    for name, box in zip(raw.names, b.tolist()):      # plain floats: numpy per box was most of re-indexing
        target = cmap.get(str(name).lower())
        if target is None:
            dropped_classes[str(name)] += 1
            continue
        x1, y1, x2, y2 = box
        if not (isfinite(x1) and isfinite(y1) and isfinite(x2) and isfinite(y2)) or x2 - x1 <= 0 or y2 - y1 <= 0:
            issues.append({"kind": "box_degenerate", "item": where, "detail": f"{name} box {box} has no area",
                           "source": raw.source})
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        inside = max(cx2 - cx1, 0.0) * max(cy2 - cy1, 0.0) / ((x2 - x1) * (y2 - y1))
        if inside < opts.min_inside_fraction or cx2 - cx1 < opts.min_box_size or cy2 - cy1 < opts.min_box_size:
            issues.append({"kind": "box_outside_image", "item": where, "source": raw.source,
                           "detail": f"{name} box {[round(v, 1) for v in (x1, y1, x2, y2)]} lies mostly outside the "
                                     f"{w}x{h} image ({inside:.0%} inside): dropped"})
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            issues.append({"kind": "box_clipped", "item": where, "source": raw.source,
                           "detail": f"{name} box {[round(v, 1) for v in (x1, y1, x2, y2)]} crosses the image border: clipped"})
        out.append((cat_id[target], [cx1, cy1, cx2, cy2]))
    return out


def build_index(candidates: Sequence[Candidate], version: str, out_path: str | Path, *,
                classes: Sequence[str] = DEFAULT_CLASSES, class_map: Mapping[str, str | None] | str | Path | None = None,
                issues: Sequence[dict] = (), excluded: Sequence[dict] = (), exclusions: str | Path | None = None,
                options: BuildOptions | None = None, has_labels: tuple[bool, bool] | None = None,
                meta: Mapping[str, Any] | None = None, stats: Mapping[str, Any] | None = None,
                progress: bool = True) -> PairedIndex:
    """Check candidates, convert labels, assign shared image ids, and write the index (see module doc).

    ``issues``/``excluded``: what the adapter already found (e.g. labels for images that do not
    exist). ``exclusions``: this version's exclusion list file (another version's is refused).
    ``has_labels``: whether the source has RGB / thermal labels at all (default: any candidate has some).
    """
    check_version_name(version)
    opts = options or BuildOptions()
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise InputError(f"target classes must be distinct and non-empty, got {classes}", "build_index",
                         "pass e.g. --classes person car")
    cmap = resolve_class_map(classes, class_map)
    excl_list = load_exclusions(exclusions, version) if exclusions else {}
    issues_out: list[dict] = [{**i, "version": version} for i in issues]
    excluded_out: list[dict] = [{**e, "version": version} for e in excluded]
    checked = _checked_candidates(candidates, version, excl_list, opts, excluded_out, progress)
    if has_labels is None:  # from every candidate: excluded pairs must not decide whether labels exist
        has_labels = (any(c.rgb_labels is not None for c in candidates),
                      any(c.thermal_labels is not None for c in candidates))
    labeller = _Labeller(cmap, {c: i + 1 for i, c in enumerate(classes)}, opts, version, has_labels, issues_out)
    pairs = [labeller.add(image_id, c, rs, ts) for image_id, (c, rs, ts) in enumerate(checked, start=1)]
    anns = labeller.annotations(classes)
    cats = categories_from_names(classes)
    index = PairedIndex(versions=[version], classes=classes, pairs=pairs, excluded=excluded_out, issues=issues_out,
                        meta=dict(meta or {}),
                        rgb_coco=new_dataset([coco_image(p, "rgb") for p in pairs], anns["rgb"], cats) if has_labels[0] else None,
                        thermal_coco=new_dataset([coco_image(p, "thermal") for p in pairs], anns["thermal"], cats)
                        if has_labels[1] else None)
    index.stats = summarize(index, extra=stats)
    if excluded_out:
        log.warning("%s: %d items excluded (%s)", version, len(excluded_out),
                    ", ".join(f"{k}: {v}" for k, v in index.stats["excluded_by_reason"].items()))
    save_index(index, out_path)
    return index


def _exclusion(version: str, c: Candidate, reason: str, detail: str, **more: Any) -> dict:
    """One ``excluded`` entry of the index: the candidate's id and paths, why, and any extra fields."""
    return {"version": version, "original_id": c.original_id, "reason": reason, "detail": detail,
            "rgb_path": str(c.rgb_path) if c.rgb_path else None,
            "thermal_path": str(c.thermal_path) if c.thermal_path else None, **more}


def _checked_candidates(candidates: Sequence[Candidate], version: str, excl_list: Mapping[str, dict],
                        opts: BuildOptions, excluded_out: list[dict],
                        progress: bool) -> list[tuple[Candidate, tuple[int, int], tuple[int, int]]]:
    """The candidates that pass every check, with their (width, height) pixel sizes (RGB, thermal);
    each one that fails is appended to ``excluded_out`` with its reason."""
    from tqdm import tqdm

    seen: set[str] = set()
    checked: list[tuple[Candidate, tuple[int, int], tuple[int, int]]] = []
    for c in tqdm(candidates, desc=f"checking {version} pairs", unit="pair", disable=not progress or len(candidates) < 200):
        if c.original_id in seen:
            excluded_out.append(_exclusion(version, c, "duplicate_id", f"original id {c.original_id!r} appears more "
                                                                       "than once; the first one is kept"))
            continue
        seen.add(c.original_id)
        sizes, why = _check_candidate(c, excl_list, opts)
        if sizes is None:
            excluded_out.append(_exclusion(version, c, *why[:2], **why[2]))
        else:
            checked.append((c, *sizes))
    if opts.check_thermal_size and checked:
        usual = Counter(ts for _, _, ts in checked).most_common(1)[0][0]
        for c, _, ts in checked:
            if ts != usual:
                excluded_out.append(_exclusion(version, c, "size_mismatch", f"thermal frame is {ts[0]}x{ts[1]}, the "
                                               f"version's thermal camera gives {usual[0]}x{usual[1]}"))
        checked = [item for item in checked if item[2] == usual]
    return checked


def _check_candidate(c: Candidate, excl_list: Mapping[str, dict], opts: BuildOptions
                     ) -> tuple[tuple[tuple[int, int], tuple[int, int]] | None, tuple[str, str, dict]]:
    """``((RGB size, thermal size), _)`` in pixels for a usable pair, else ``(None, (reason, detail,
    extra fields))``; records the pair's clock offset in ``c.extra["sync_offset_s"]``."""
    if c.original_id in excl_list:
        e = excl_list[c.original_id]
        return None, ("excluded_by_list", f"{e.get('reason', '')}: {e.get('detail', '')}".strip(": "), {})
    if c.rgb_path is None or not os.path.isfile(c.rgb_path):
        return None, ("missing_rgb", f"no RGB image for thermal {c.thermal_path}" if c.rgb_path is None
                      else f"RGB file does not exist: {c.rgb_path}", {})
    if c.thermal_path is None or not os.path.isfile(c.thermal_path):
        return None, ("missing_thermal", f"no thermal image for RGB {c.rgb_path}" if c.thermal_path is None
                      else f"thermal file does not exist: {c.thermal_path}", {})
    rs, why = read_size(c.rgb_path, opts.decode_images)
    if rs is None:
        return None, ("unreadable_rgb", f"{c.rgb_path}: {why}", {})
    ts, why = read_size(c.thermal_path, opts.decode_images)
    if ts is None:
        return None, ("unreadable_thermal", f"{c.thermal_path}: {why}", {})
    mism = [f"{m} labels say {lab.size[0]}x{lab.size[1]} but the image is {s[0]}x{s[1]}"
            for m, lab, s in (("RGB", c.rgb_labels, rs), ("thermal", c.thermal_labels, ts))
            if lab is not None and lab.size is not None and tuple(lab.size) != tuple(s)]
    if mism:
        return None, ("size_mismatch", "; ".join(mism), {})
    t_rgb, t_th = c.extra.get("rgb_timestamp"), c.extra.get("thermal_timestamp")
    if t_rgb is not None and t_th is not None:
        off = float(t_th) - float(t_rgb)
        c.extra["sync_offset_s"] = off
        if abs(off) > opts.max_sync_offset_s:
            return None, ("sync_offset", f"thermal frame is {off:+.3f}s from the RGB frame "
                                         f"(max {opts.max_sync_offset_s}s)", {"sync_offset_s": off})
    return (rs, ts), ("", "", {})


class _Labeller:
    """Makes each checked candidate a :class:`Pair` and collects its kept boxes (xyxy pixels) per modality."""

    def __init__(self, cmap: Mapping[str, str | None], cat_id: Mapping[str, int], opts: BuildOptions, version: str,
                 has_labels: tuple[bool, bool], issues_out: list[dict]) -> None:
        self.cmap, self.cat_id, self.opts, self.version = cmap, cat_id, opts, version
        self.has_labels, self.issues_out = has_labels, issues_out
        # (image id, category id, xyxy box) per kept box, in pair order; made into annotations at the end
        # in one vectorised call (per pair, the numpy conversions cost more than the checks)
        self.kept_boxes: dict[str, list[tuple[int, int, list[float]]]] = {"rgb": [], "thermal": []}
        self.dropped_classes: dict[str, Counter] = {"rgb": Counter(), "thermal": Counter()}
        self.real_dirs: dict[str, str] = {}

    def resolved(self, path: str | Path) -> str:
        """Absolute path with the folder's symlinks resolved once per folder (not per file:
        resolving 20k image paths one by one was a second of every re-run)."""
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in self.real_dirs:
            self.real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(self.real_dirs[folder], name)

    def add(self, image_id: int, c: Candidate, rs: tuple[int, int], ts: tuple[int, int]) -> Pair:
        """The pair of candidate ``c`` (image id ``image_id``); its labels' kept boxes are collected."""
        p = Pair(pair_id=f"{self.version}:{c.original_id}", version=self.version, original_id=c.original_id,
                 rgb_path=self.resolved(c.rgb_path), thermal_path=self.resolved(c.thermal_path),
                 rgb_size=rs, thermal_size=ts, split=c.split or "", daynight=c.daynight, image_id=image_id,
                 extra=c.extra)
        for mod, raw, size, labelled in (("rgb", c.rgb_labels, rs, self.has_labels[0]),
                                         ("thermal", c.thermal_labels, ts, self.has_labels[1])):
            if raw is None:
                if labelled:
                    self.issues_out.append({"kind": "unlabelled_image", "item": p.pair_id, "version": self.version,
                                            "detail": f"the {mod} labels do not mention this image: it gets no {mod} boxes"})
                continue
            self.kept_boxes[mod].extend((image_id, cid, box) for cid, box in
                                        _labels_to_anns(raw, size, self.cmap, self.cat_id, self.opts, p.pair_id,
                                                        self.issues_out, self.dropped_classes[mod]))
        return p

    def annotations(self, classes: list[str]) -> dict[str, list[dict]]:
        """COCO annotations (xywh pixels) per modality; reports the boxes of unmapped classes as issues."""
        anns = {mod: annotations(1, [i for i, _, _ in kb], [c for _, c, _ in kb],
                                 np.asarray([b for _, _, b in kb], dtype=np.float64).reshape(-1, 4))
                for mod, kb in self.kept_boxes.items()}
        for mod in ("rgb", "thermal"):
            for name, n in sorted(self.dropped_classes[mod].items()):
                self.issues_out.append({"kind": "class_dropped", "version": self.version, "item": f"{mod} labels",
                                        "detail": f"{n} '{name}' boxes are not mapped to a target class {classes}: dropped",
                                        "count": n, "class": name, "modality": mod})
        return anns
