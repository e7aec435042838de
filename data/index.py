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

The one writer, with its checks and the exclusion lists, is :mod:`data.index_build`.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from core import atomic
from core.coco import categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError

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
ISSUE_KINDS = ("unpaired_frames", "unlabelled_image", "labels_missing_image", "box_outside_image", "box_clipped",
               "box_degenerate", "class_dropped", "label_file_unreadable")


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
    doc = atomic.read_json_input(path, missing="index file not found", missing_fix="build it with: rgb2thermal data "
                                 "index ...", invalid="index is not valid JSON", invalid_fix="rebuild it")
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
