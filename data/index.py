"""The paired-dataset index: which RGB frame goes with which thermal frame, and what is known about it.

Why: every later stage needs, per frame, the two image paths, their sizes (the homography is
chosen by dataset version *and* RGB resolution), the split, day/night, and the labels of each
modality, under ids that never collide when versions are merged. The seed lab lost weeks to
exactly these going wrong (an exclusion list of one version applied to another, merged
versions that could no longer be told apart, missing pairs crashing a run), so the index is
one explicit file per dataset version (or merge), written once by an adapter and read by
everyone:

- ``<name>.json`` with schema ``rgb2thermal.index/1``: pairs, excluded items with reasons,
  label issues, target classes, and the paths of the COCO files below (relative to the index);
- ``<name>.rgb_images.json`` / ``<name>.thermal_images.json``: COCO files listing every pair's
  image of that modality (no annotations) — the input of inference stages;
- ``<name>.rgb_labels.json`` / ``<name>.thermal_labels.json``: COCO labels, only when that
  modality has labels in the source dataset (``rgb_labels``/``thermal_labels`` is ``None``
  otherwise, so "no ground truth" can never be mistaken for "no objects").

All four COCO files share one integer image id per pair. Each COCO image has ``file_name``
(absolute path), ``width``, ``height``, ``pair_id`` (``"<version>:<original_id>"``), ``version``,
``original_id``, ``split``, ``daynight``. Boxes are converted to COCO ``xywh`` pixels at the
file edge only (via :mod:`core.coco`); categories are the target classes, 1-based in order.
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
from core.coco import annotations, categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.versions import check_version_name

log = logging.getLogger(__name__)

SCHEMA = "rgb2thermal.index/1"
EXCLUSIONS_SCHEMA = "rgb2thermal.exclusions/1"
DEFAULT_CLASSES: tuple[str, ...] = ("person", "car")
#: Source class name (lower case) -> target class; names not listed and not themselves a
#: target class are dropped (and counted). ``None`` = drop explicitly.
DEFAULT_CLASS_MAP: dict[str, str | None] = {
    "person": "person", "people": "person", "pedestrian": "person", "persons": "person",
    "car": "car", "cars": "car",
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Pair-level exclusion reasons (the pair is not in the index; listed under ``excluded``).
EXCLUSION_REASONS = ("missing_thermal", "missing_rgb", "unreadable_rgb", "unreadable_thermal", "size_mismatch",
                     "duplicate_id", "sync_offset", "excluded_by_list")
#: Label-level issues (the pair stays; the label is repaired or dropped; listed under ``issues``).
ISSUE_KINDS = ("unpaired_frames", "unlabelled_image", "labels_missing_image", "box_outside_image", "box_clipped", "box_degenerate", "class_dropped",
               "label_file_unreadable")


@dataclass(frozen=True)
class Pair:
    """One RGB/thermal frame pair. Paths absolute; sizes ``(width, height)`` in pixels.

    ``image_id`` is the integer id this pair's images have in all the index's COCO files.
    ``extra`` holds adapter-specific facts (e.g. ``sync_offset_s``, FLIR frame numbers).
    """

    pair_id: str
    version: str
    original_id: str
    rgb_path: str
    thermal_path: str
    rgb_size: tuple[int, int]
    thermal_size: tuple[int, int]
    split: str = ""
    daynight: str | None = None
    image_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # written out, not dataclasses.asdict: that deep-copies recursively, ~40 us a pair
        return {"pair_id": self.pair_id, "version": self.version, "original_id": self.original_id,
                "rgb_path": self.rgb_path, "thermal_path": self.thermal_path, "rgb_size": list(self.rgb_size),
                "thermal_size": list(self.thermal_size), "split": self.split, "daynight": self.daynight,
                "image_id": self.image_id, "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Pair:
        return cls(pair_id=d["pair_id"], version=d["version"], original_id=str(d["original_id"]),
                   rgb_path=d["rgb_path"], thermal_path=d["thermal_path"],
                   rgb_size=(int(d["rgb_size"][0]), int(d["rgb_size"][1])),
                   thermal_size=(int(d["thermal_size"][0]), int(d["thermal_size"][1])),
                   split=d.get("split") or "", daynight=d.get("daynight"), image_id=int(d.get("image_id", 0)),
                   extra=dict(d.get("extra") or {}))


@dataclass
class PairedIndex:
    """An index in memory. ``rgb_coco``/``thermal_coco`` (labels) and the images-only COCO files
    are held in memory by builders and loaded lazily from the ``*_labels``/``*_images`` paths by
    readers (:meth:`load_labels`, :meth:`load_images`)."""

    versions: list[str]
    classes: list[str]
    pairs: list[Pair]
    excluded: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    rgb_labels: Path | None = None
    thermal_labels: Path | None = None
    rgb_images: Path | None = None
    thermal_images: Path | None = None
    path: Path | None = None
    rgb_coco: dict | None = None
    thermal_coco: dict | None = None

    def select(self, split: str | Iterable[str] | None = None, version: str | Iterable[str] | None = None,
               daynight: str | None = None) -> list[Pair]:
        """Pairs matching every given filter (a string or a collection of accepted strings)."""
        def ok(value: Any, want: Any) -> bool:
            if want is None:
                return True
            return value == want if isinstance(want, str) else value in set(want)

        return [p for p in self.pairs if ok(p.split, split) and ok(p.version, version) and ok(p.daynight, daynight)]

    def by_pair_id(self) -> dict[str, Pair]:
        return {p.pair_id: p for p in self.pairs}

    def by_image_id(self) -> dict[int, Pair]:
        return {p.image_id: p for p in self.pairs}

    def load_labels(self, modality: str) -> dict | None:
        """The COCO labels of ``rgb`` or ``thermal`` (``None`` when that modality has no labels)."""
        held = {"rgb": self.rgb_coco, "thermal": self.thermal_coco}[_modality(modality)]
        if held is not None:
            return held
        p = self.rgb_labels if modality == "rgb" else self.thermal_labels
        return load_dataset(p) if p is not None else None

    def load_images(self, modality: str) -> dict:
        """A COCO dataset listing every pair's image of ``modality`` (no annotations)."""
        p = self.rgb_images if _modality(modality) == "rgb" else self.thermal_images
        if p is not None and p.exists():
            return load_dataset(p)
        return images_dataset(self.pairs, modality, self.classes)


def _modality(m: str) -> str:
    if m not in ("rgb", "thermal"):
        raise InputError(f"modality must be 'rgb' or 'thermal', got {m!r}", "paired index", "use rgb or thermal")
    return m


def coco_image(p: Pair, modality: str) -> dict[str, Any]:
    path, size = (p.rgb_path, p.rgb_size) if modality == "rgb" else (p.thermal_path, p.thermal_size)
    return {"id": p.image_id, "file_name": path, "width": size[0], "height": size[1], "pair_id": p.pair_id,
            "version": p.version, "original_id": p.original_id, "split": p.split, "daynight": p.daynight}


def images_dataset(pairs: Sequence[Pair], modality: str, classes: Sequence[str]) -> dict:
    return new_dataset([coco_image(p, modality) for p in pairs], [], categories_from_names(classes),
                       info={"description": f"rgb2thermal paired index: {modality} images"})


def _sidecars(path: Path) -> dict[str, Path]:
    base = path.name[:-5] if path.name.endswith(".json") else path.name
    return {k: path.with_name(f"{base}.{k}.json") for k in ("rgb_images", "thermal_images", "rgb_labels", "thermal_labels")}


def save_index(index: PairedIndex, path: str | Path) -> Path:
    """Write the index JSON and its COCO side files next to it (all atomic)."""
    path = Path(path)
    side = _sidecars(path)
    ids = [p.image_id for p in index.pairs]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise InputError("pairs must have unique positive image ids", str(path), "build indexes with the adapters")
    pids = Counter(p.pair_id for p in index.pairs)
    dup = [k for k, v in pids.items() if v > 1]
    if dup:
        raise InputError(f"duplicate pair ids {dup[:5]}", str(path), "each pair_id must be unique")
    save_dataset(side["rgb_images"], images_dataset(index.pairs, "rgb", index.classes))
    save_dataset(side["thermal_images"], images_dataset(index.pairs, "thermal", index.classes))
    rel: dict[str, str | None] = {"rgb_images": side["rgb_images"].name, "thermal_images": side["thermal_images"].name}
    for mod, ds in (("rgb", index.rgb_coco if index.rgb_coco is not None else index.load_labels("rgb")),
                    ("thermal", index.thermal_coco if index.thermal_coco is not None else index.load_labels("thermal"))):
        key = f"{mod}_labels"
        if ds is None:
            rel[key] = None
            if side[key].exists():
                side[key].unlink()  # a stale label file from an earlier build must not look like ground truth
            continue
        save_dataset(side[key], ds)
        rel[key] = side[key].name
    doc = {"schema": SCHEMA, "versions": index.versions, "classes": index.classes, **rel,
           "stats": index.stats, "meta": index.meta,
           "pairs": [p.to_json() for p in index.pairs], "excluded": index.excluded, "issues": index.issues}
    atomic.write_json(path, doc, indent=None)        # compact: a 10k-pair index encodes in ~50 ms
    index.path = path
    for k in ("rgb_images", "thermal_images", "rgb_labels", "thermal_labels"):
        setattr(index, k, side[k] if rel[k] else None)
    return path


def load_index(path: str | Path) -> PairedIndex:
    """Read an index JSON (schema ``rgb2thermal.index/1``); label files are resolved next to it."""
    path = Path(path)
    try:
        doc = atomic.read_json(path)
    except FileNotFoundError:
        raise InputError("index file not found", str(path), "build it with: rgb2thermal data index ...") from None
    except ValueError as exc:
        raise InputError(f"index is not valid JSON ({exc})", str(path), "rebuild it") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(f"not a paired index (schema {doc.get('schema') if isinstance(doc, dict) else None!r}, "
                         f"expected {SCHEMA})", str(path), "pass an index written by rgb2thermal data index/merge")
    pairs = [Pair.from_json(d) for d in doc["pairs"]]

    def side(key: str) -> Path | None:
        v = doc.get(key)
        return (path.parent / v) if v else None

    return PairedIndex(versions=list(doc["versions"]), classes=list(doc["classes"]), pairs=pairs,
                       excluded=list(doc.get("excluded", [])), issues=list(doc.get("issues", [])),
                       stats=dict(doc.get("stats", {})), meta=dict(doc.get("meta", {})),
                       rgb_labels=side("rgb_labels"), thermal_labels=side("thermal_labels"),
                       rgb_images=side("rgb_images"), thermal_images=side("thermal_images"), path=path)


# --------------------------------------------------------------------------------------------
# Building an index from adapter candidates (shared by all adapters)
# --------------------------------------------------------------------------------------------
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


def _read_size(path: str | os.PathLike[str], decode: bool) -> tuple[tuple[int, int] | None, str]:
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
                    opts: BuildOptions, where: str, issues: list[dict], dropped_classes: Counter) -> list[tuple[int, list[float]]]:
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
    from tqdm import tqdm

    check_version_name(version)
    opts = options or BuildOptions()
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise InputError(f"target classes must be distinct and non-empty, got {classes}", "build_index",
                         "pass e.g. --classes person car")
    cmap = resolve_class_map(classes, class_map)
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    excl_list = load_exclusions(exclusions, version) if exclusions else {}
    issues_out: list[dict] = [{**i, "version": version} for i in issues]
    excluded_out: list[dict] = [{**e, "version": version} for e in excluded]

    def exclude(c: Candidate, reason: str, detail: str, **more: Any) -> None:
        excluded_out.append({"version": version, "original_id": c.original_id, "reason": reason, "detail": detail,
                             "rgb_path": str(c.rgb_path) if c.rgb_path else None,
                             "thermal_path": str(c.thermal_path) if c.thermal_path else None, **more})

    seen: set[str] = set()
    checked: list[tuple[Candidate, tuple[int, int], tuple[int, int]]] = []
    for c in tqdm(candidates, desc=f"checking {version} pairs", unit="pair", disable=not progress or len(candidates) < 200):
        if c.original_id in seen:
            exclude(c, "duplicate_id", f"original id {c.original_id!r} appears more than once; the first one is kept")
            continue
        seen.add(c.original_id)
        if c.original_id in excl_list:
            e = excl_list[c.original_id]
            exclude(c, "excluded_by_list", f"{e.get('reason', '')}: {e.get('detail', '')}".strip(": "))
            continue
        if c.rgb_path is None or not os.path.isfile(c.rgb_path):
            exclude(c, "missing_rgb", f"no RGB image for thermal {c.thermal_path}" if c.rgb_path is None
                    else f"RGB file does not exist: {c.rgb_path}")
            continue
        if c.thermal_path is None or not os.path.isfile(c.thermal_path):
            exclude(c, "missing_thermal", f"no thermal image for RGB {c.rgb_path}" if c.thermal_path is None
                    else f"thermal file does not exist: {c.thermal_path}")
            continue
        rs, why = _read_size(c.rgb_path, opts.decode_images)
        if rs is None:
            exclude(c, "unreadable_rgb", f"{c.rgb_path}: {why}")
            continue
        ts, why = _read_size(c.thermal_path, opts.decode_images)
        if ts is None:
            exclude(c, "unreadable_thermal", f"{c.thermal_path}: {why}")
            continue
        mism = [f"{m} labels say {lab.size[0]}x{lab.size[1]} but the image is {s[0]}x{s[1]}"
                for m, lab, s in (("RGB", c.rgb_labels, rs), ("thermal", c.thermal_labels, ts))
                if lab is not None and lab.size is not None and tuple(lab.size) != tuple(s)]
        if mism:
            exclude(c, "size_mismatch", "; ".join(mism))
            continue
        t_rgb, t_th = c.extra.get("rgb_timestamp"), c.extra.get("thermal_timestamp")
        if t_rgb is not None and t_th is not None:
            off = float(t_th) - float(t_rgb)
            c.extra["sync_offset_s"] = off
            if abs(off) > opts.max_sync_offset_s:
                exclude(c, "sync_offset", f"thermal frame is {off:+.3f}s from the RGB frame (max {opts.max_sync_offset_s}s)",
                        sync_offset_s=off)
                continue
        checked.append((c, rs, ts))
    if opts.check_thermal_size and checked:
        usual = Counter(ts for _, _, ts in checked).most_common(1)[0][0]
        kept = []
        for c, rs, ts in checked:
            if ts != usual:
                exclude(c, "size_mismatch", f"thermal frame is {ts[0]}x{ts[1]}, the version's thermal camera gives "
                                            f"{usual[0]}x{usual[1]}")
            else:
                kept.append((c, rs, ts))
        checked = kept
    if has_labels is None:  # from every candidate: excluded pairs must not decide whether labels exist
        has_labels = (any(c.rgb_labels is not None for c in candidates),
                      any(c.thermal_labels is not None for c in candidates))
    pairs: list[Pair] = []
    # (image id, category id, xyxy box) per kept box, in pair order; made into annotations at the end
    # in one vectorised call (per pair, the numpy conversions cost more than the checks)
    kept_boxes: dict[str, list[tuple[int, int, list[float]]]] = {"rgb": [], "thermal": []}
    real_dirs: dict[str, str] = {}

    def resolved(path: str | Path) -> str:
        """Absolute path with the folder's symlinks resolved once per folder (not per file:
        resolving 20k image paths one by one was a second of every re-run)."""
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(real_dirs[folder], name)

    dropped_classes: dict[str, Counter] = {"rgb": Counter(), "thermal": Counter()}
    for image_id, (c, rs, ts) in enumerate(checked, start=1):
        p = Pair(pair_id=f"{version}:{c.original_id}", version=version, original_id=c.original_id,
                 rgb_path=resolved(c.rgb_path), thermal_path=resolved(c.thermal_path),
                 rgb_size=rs, thermal_size=ts, split=c.split or "", daynight=c.daynight, image_id=image_id,
                 extra=c.extra)
        pairs.append(p)
        for mod, raw, size, labelled in (("rgb", c.rgb_labels, rs, has_labels[0]),
                                         ("thermal", c.thermal_labels, ts, has_labels[1])):
            if raw is None:
                if labelled:
                    issues_out.append({"kind": "unlabelled_image", "item": p.pair_id, "version": version,
                                       "detail": f"the {mod} labels do not mention this image: it gets no {mod} boxes"})
                continue
            kept_boxes[mod].extend((image_id, cid, box) for cid, box in
                                   _labels_to_anns(raw, size, cmap, cat_id, opts, p.pair_id, issues_out,
                                                   dropped_classes[mod]))
    anns = {mod: annotations(1, [i for i, _, _ in kb], [c for _, c, _ in kb],
                             np.asarray([b for _, _, b in kb], dtype=np.float64).reshape(-1, 4))
            for mod, kb in kept_boxes.items()}
    for mod in ("rgb", "thermal"):
        for name, n in sorted(dropped_classes[mod].items()):
            issues_out.append({"kind": "class_dropped", "version": version, "item": f"{mod} labels",
                               "detail": f"{n} '{name}' boxes are not mapped to a target class {classes}: dropped",
                               "count": n, "class": name, "modality": mod})
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


def summarize(index: PairedIndex, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Counts for reports: pairs by version/split/daynight/RGB resolution, exclusions and issues by kind."""
    def count(key: Any) -> dict[str, int]:
        return dict(sorted(Counter(str(key(p)) for p in index.pairs).items()))

    label_counts = {}
    for mod, ds in (("rgb", index.rgb_coco), ("thermal", index.thermal_coco)):
        if ds is not None:
            names = {c["id"]: c["name"] for c in ds["categories"]}
            label_counts[mod] = dict(sorted(Counter(names[a["category_id"]] for a in ds["annotations"]).items()))
    return {"pairs": len(index.pairs), "by_version": count(lambda p: p.version), "by_split": count(lambda p: p.split),
            "by_daynight": count(lambda p: p.daynight), "by_rgb_size": count(lambda p: f"{p.rgb_size[0]}x{p.rgb_size[1]}"),
            "by_thermal_size": count(lambda p: f"{p.thermal_size[0]}x{p.thermal_size[1]}"),
            "excluded": len(index.excluded),
            "excluded_by_reason": dict(sorted(Counter(e["reason"] for e in index.excluded).items())),
            "issues_by_kind": dict(sorted(Counter(i["kind"] for i in index.issues).items())),
            "labels": label_counts, **(dict(extra) if extra else {})}
