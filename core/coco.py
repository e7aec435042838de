"""COCO JSON reading, writing and validation.

COCO files are the interface between stages (and the thing users open in other tools), so
they are validated at the boundary: a bad file fails *here*, naming the file, the entry and
the fix, instead of evaluating to a silent mAP of 0 later. ``bbox`` in files is COCO
``[x, y, w, h]`` pixels; use ``boxes_by_image`` to get internal ``xyxy`` arrays.

Extra keys on images/annotations are preserved (rgb2thermal uses them for provenance:
``pair_id``, ``version`` on images; ``source``, ``refine`` on annotations).
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import atomic, json_stream
from core.boxes import xywh_to_xyxy, xyxy_to_xywh
from core.errors import InputError


class CocoFormatError(InputError):
    """A COCO file is malformed or inconsistent; the message says what, where and how to fix."""


def categories_from_names(names: Sequence[str]) -> list[dict[str, Any]]:
    """COCO categories with 1-based ids in the given order (``person`` -> 1, ``car`` -> 2)."""
    return [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]


def new_dataset(images: list[dict], annotations: list[dict], categories: list[dict], info: dict | None = None) -> dict:
    return {"info": info or {}, "images": images, "annotations": annotations, "categories": categories}


def _fail(path: str | os.PathLike[str] | None, where: str, what: str, fix: str) -> CocoFormatError:
    return CocoFormatError(what, f"{path}: {where}" if path is not None else where, fix)


_NUM = (int, float)


def _check_bbox(bbox: Any, path: Any, where: str) -> None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise _fail(path, where, f"bbox must be [x, y, w, h], got {bbox!r}", "write COCO xywh boxes")
    x, y, w, h = bbox  # unrolled: this runs once per box of every file (100k+ boxes per stage output)
    try:
        ok = (isinstance(x, _NUM) and isinstance(y, _NUM) and isinstance(w, _NUM) and isinstance(h, _NUM)
              and math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h))
    except TypeError:
        ok = False
    if not ok:
        raise _fail(path, where, f"bbox has a non-finite value {bbox!r}", "drop or repair the box")
    if bbox[2] < 0 or bbox[3] < 0:
        raise _fail(path, where, f"bbox has negative size {bbox!r} (xyxy written as xywh?)",
                    "COCO bbox is [x, y, width, height]; convert with core.boxes.xyxy_to_xywh")


def _check_score(score: Any, path: Any, where: str) -> None:
    """A detection's ``score`` must be a finite number in [0, 1].

    Why: a NaN compares false with every threshold, so pseudo-labelling would drop it as "below
    threshold" without a word, and pycocotools would rank it arbitrarily; a score outside [0, 1]
    (a logit, a percentage) means the producer wrote another quantity than a confidence."""
    try:
        ok = isinstance(score, _NUM) and not isinstance(score, bool) and math.isfinite(score)
    except TypeError:
        ok = False
    if not ok:
        raise _fail(path, where, f"score is not a finite number: {score!r}", "drop the detection or repair its score")
    if not 0.0 <= score <= 1.0:
        raise _fail(path, where, f"score {score!r} is outside [0, 1]",
                    "write confidences in [0, 1] (not logits or percentages)")


def validate_dataset(ds: dict, path: str | os.PathLike[str] | None = None) -> dict:
    """Check structure, unique ids and references, boxes, and the ``score`` of annotations that have
    one (finite, in [0, 1], as in results lists); return ``ds`` unchanged."""
    for key in ("images", "annotations", "categories"):
        if key not in ds or not isinstance(ds[key], list):
            raise _fail(path, "top level", f"missing list '{key}'", "a COCO dataset needs images, annotations and categories")
    _check_annotations(ds["annotations"], path, _image_ids(ds["images"], path), _category_ids(ds["categories"], path))
    return ds


def _image_ids(images: list[dict], path: Any) -> set[int]:
    """The ids of ``images``, each image having id, file_name, width and height, no id twice."""
    image_ids: set[int] = set()
    for i, im in enumerate(images):
        _check_image(im, i, path, image_ids)
    return image_ids


def _check_image(im: dict, i: int, path: Any, image_ids: set | None) -> None:
    """``images[i]`` has id, file_name, width and height and an id not in ``image_ids`` (then added;
    None: the caller checks ids, see :class:`_Ids`)."""
    for k in ("id", "file_name", "width", "height"):
        if k not in im:
            raise _fail(path, f"images[{i}]", f"missing '{k}'", "every image needs id, file_name, width, height")
    if image_ids is None:
        return
    if im["id"] in image_ids:
        raise _fail(path, f"images[{i}]", f"duplicate image id {im['id']}", "give every image a unique id")
    image_ids.add(im["id"])


def _category_ids(categories: list[dict], path: Any) -> set[int]:
    """The ids of ``categories``, each having id and name, no id twice."""
    cat_ids: set[int] = set()
    for i, c in enumerate(categories):
        if "id" not in c or "name" not in c:
            raise _fail(path, f"categories[{i}]", "missing 'id' or 'name'", "categories need id and name")
        if c["id"] in cat_ids:
            raise _fail(path, f"categories[{i}]", f"duplicate category id {c['id']}", "give every category a unique id")
        cat_ids.add(c["id"])
    return cat_ids


def _check_annotations(anns: list[dict], path: Any, image_ids: set[int], cat_ids: set[int]) -> None:
    """Every annotation: required keys, a unique id, a known image and category, a valid COCO xywh
    box, and a valid ``score`` where it has one."""
    ann_ids: set[int] = set()
    for i, a in enumerate(anns):
        _check_annotation(a, i, path, ann_ids, image_ids, cat_ids)


def _check_annotation(a: dict, i: int, path: Any, ann_ids: set | None, image_ids: Collection | None,
                      cat_ids: Collection | None) -> None:
    """``annotations[i]``: required keys, an id not in ``ann_ids`` (then added), its image and category
    in ``image_ids``/``cat_ids``, a valid box and score. Ids and references are not checked when
    None: streamed readers and writers check them at the end (:func:`_check_id_logs`)."""
    where = f"annotations[{i}]"
    for k in ("id", "image_id", "category_id", "bbox"):
        if k not in a:
            raise _fail(path, where, f"missing '{k}'", "annotations need id, image_id, category_id, bbox")
    if ann_ids is not None:
        if a["id"] in ann_ids:
            raise _fail(path, where, f"duplicate annotation id {a['id']}", "renumber annotations")
        ann_ids.add(a["id"])
    if image_ids is not None and cat_ids is not None:
        _check_refs(a["image_id"], a["category_id"], where, path, image_ids, cat_ids)
    _check_bbox(a["bbox"], path, where)
    if "score" in a:          # stage outputs (infer, pseudo, fuse) carry detection scores: same rule as results
        _check_score(a["score"], path, where)


def _check_refs(image_id: Any, category_id: Any, where: str, path: Any, image_ids: Collection,
                cat_ids: Collection) -> None:
    """An annotation names an image of ``image_ids`` and a category of ``cat_ids``."""
    if image_id not in image_ids:
        raise _fail(path, where, f"image_id {image_id} is not in images", "drop the annotation or add its image")
    if category_id not in cat_ids:
        raise _fail(path, where, f"category_id {category_id} is not in categories {sorted(cat_ids)}",
                    "map the class to one of the dataset's categories")


def load_dataset(path: str | os.PathLike[str]) -> dict:
    """Read and validate a COCO dataset JSON."""
    ds = atomic.read_json_input(path, error=CocoFormatError)
    if not isinstance(ds, dict):
        raise _fail(path, "top level", "expected a COCO dataset object, got a list (a results file?)",
                    "pass the ground-truth dataset here and the results list as predictions")
    return validate_dataset(ds, path)


def save_dataset(path: str | os.PathLike[str], ds: dict, *, indent: int | None = None) -> Path:
    """Validate and write atomically. The default ``indent=None`` writes one compact line (a 10k-image
    dataset encodes in ~20 ms, see :func:`core.atomic.dumps_json`). COCO files are for programs;
    pass ``indent=2`` for a file meant to be read by eye."""
    validate_dataset(ds, path)
    return atomic.write_json(path, ds, indent=indent)


def validate_results(results: list, path: str | os.PathLike[str] | None = None,
                     gt: dict | None = None) -> list:
    """Check a COCO results list (``image_id``, ``category_id``, ``bbox``, ``score``).

    Boxes must be finite with non-negative size, scores finite and in [0, 1].

    With ``gt`` given, every ``image_id``/``category_id`` must exist there: ids that do not
    match are the usual cause of a silent mAP of 0.
    """
    if not isinstance(results, list):
        raise _fail(path, "top level", "expected a list of detections",
                    "write COCO results: [{image_id, category_id, bbox, score}]")
    gt_images = {im["id"] for im in gt["images"]} if gt else None
    gt_cats = {c["id"] for c in gt["categories"]} if gt else None
    for i, r in enumerate(results):
        where = f"results[{i}]"
        for k in ("image_id", "category_id", "bbox", "score"):
            if k not in r:
                raise _fail(path, where, f"missing '{k}'", "each detection needs image_id, category_id, bbox, score")
        _check_bbox(r["bbox"], path, where)
        _check_score(r["score"], path, where)
        if gt_images is not None and r["image_id"] not in gt_images:
            raise _fail(path, where, f"image_id {r['image_id']} is not an image of the ground truth",
                        "predict on the same COCO file as the ground truth (ids must match)")
        if gt_cats is not None and r["category_id"] not in gt_cats:
            raise _fail(path, where, f"category_id {r['category_id']} is not a ground-truth category {sorted(gt_cats)}",
                        "map predicted classes to the ground truth's category ids")
    return results


def load_results(path: str | os.PathLike[str], gt: dict | None = None) -> list:
    try:
        res = atomic.read_json(path)
    except FileNotFoundError:
        raise CocoFormatError("file not found", str(path), "check the path") from None
    return validate_results(res, path, gt)


@dataclass(frozen=True)
class ImageBoxes:
    """Boxes of one image in the internal convention (``xyxy`` pixels)."""

    boxes: np.ndarray          # (N, 4) float64 xyxy
    category_ids: np.ndarray   # (N,) int64 COCO category ids
    scores: np.ndarray         # (N,) float64; 1.0 for ground truth


def boxes_by_image(ds_or_results: dict | list, image_ids: Iterable[int] | None = None) -> dict[int, ImageBoxes]:
    """Group annotations (dataset) or detections (results list) by image, as ``xyxy`` arrays."""
    anns = ds_or_results["annotations"] if isinstance(ds_or_results, dict) else ds_or_results
    grouped: dict[int, list[dict]] = {}
    if image_ids is not None:
        grouped = {i: [] for i in image_ids}
    elif isinstance(ds_or_results, dict):
        grouped = {im["id"]: [] for im in ds_or_results["images"]}
    for a in anns:
        grouped.setdefault(a["image_id"], []).append(a)
    out: dict[int, ImageBoxes] = {}
    for img_id, items in grouped.items():
        out[img_id] = ImageBoxes(
            boxes=xywh_to_xyxy([a["bbox"] for a in items]),
            category_ids=np.asarray([a["category_id"] for a in items], dtype=np.int64),
            scores=np.asarray([a.get("score", 1.0) for a in items], dtype=np.float64),
        )
    return out


def annotation(ann_id: int, image_id: int, category_id: int, box_xyxy: Sequence[float], **extra: Any) -> dict:
    """One COCO annotation from an internal ``xyxy`` box (area and iscrowd filled in)."""
    x, y, w, h = (float(v) for v in xyxy_to_xywh([box_xyxy])[0])
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": [round(x, 3), round(y, 3), round(w, 3), round(h, 3)],
            "area": round(w * h, 3), "iscrowd": 0, **extra}


def annotations(first_id: int, image_id: int | Sequence[int], category_ids: Sequence[int], boxes_xyxy: Any,
                extras: Sequence[dict] | None = None, **common: Any) -> list[dict]:
    """Many annotations at once, the same dicts ``annotation(...)`` gives per box.

    Why: ``annotation`` converts one box through numpy per call, which costs more than the
    detector per image when a stage writes tens of thousands of boxes. Ids are consecutive
    from ``first_id``; ``image_id`` is one image's id or one id per box (a whole data set in one
    call); ``extras[i]`` (optional) are per-box keys, ``common`` keys go on every box.
    """
    xywh = xyxy_to_xywh(boxes_xyxy)
    bbox = np.round(xywh, 3).tolist()
    area = np.round(xywh[:, 2] * xywh[:, 3], 3).tolist()
    image_ids = [image_id] * len(bbox) if isinstance(image_id, (int, np.integer)) else [int(i) for i in image_id]
    out = []
    for i, (box, cat) in enumerate(zip(bbox, category_ids)):
        out.append({"id": first_id + i, "image_id": image_ids[i], "category_id": int(cat), "bbox": box,
                    "area": area[i], "iscrowd": 0, **common, **(extras[i] if extras is not None else {})})
    return out


def concat_datasets(parts: Sequence[dict], tags: Sequence[str] | None = None) -> dict:
    """One training set from several COCO datasets (e.g. thermal pseudo-labelled frames + RGB frames
    with their ground truth): images and annotations renumbered 1..N, categories mapped **by name**
    onto the first dataset's (a category the first one lacks is an error, not a silent drop).
    ``tags``: written as ``images[*].part`` so a reader can tell the parts apart. Boxes unchanged."""
    if not parts:
        raise InputError("nothing to concatenate", "concat_datasets", "pass at least one COCO dataset")
    cats = [dict(c) for c in parts[0]["categories"]]
    by_name = {c["name"]: c["id"] for c in cats}
    images: list[dict] = []
    anns: list[dict] = []
    for k, ds in enumerate(parts):
        names = {c["id"]: c["name"] for c in ds["categories"]}
        missing = sorted(set(names.values()) - set(by_name))
        if missing:
            raise InputError(f"categories {missing} of part {k} are not in the first part's {sorted(by_name)}",
                             "concat_datasets", "use the same target classes in every part")
        new_id = {}
        for im in ds["images"]:
            new_id[im["id"]] = len(images) + 1
            images.append({**im, "id": new_id[im["id"]], **({"part": tags[k]} if tags else {})})
        for a in ds["annotations"]:
            anns.append({**a, "id": len(anns) + 1, "image_id": new_id[a["image_id"]],
                         "category_id": by_name[names[a["category_id"]]]})
    return new_dataset(images, anns, cats, {"parts": list(tags) if tags else len(parts)})


def refuse_escaping_file_names(ds: dict[str, Any], root: str | os.PathLike[str], source: str | os.PathLike[str]) -> None:
    """Raise InputError when a relative ``file_name`` climbs out of ``root`` (``../../x.png``).

    Why: a stage reads every image its COCO file lists; a label file must not make it read
    outside the image folder it was given. Absolute ``file_name``s stay allowed: the pipeline's
    own files between stages hold absolute paths into the user's data roots (whose label files the
    dataset adapters already checked). Judged on the text (``..`` collapsed, symlinks not followed).
    """
    for i, im in enumerate(ds.get("images", [])):
        refuse_escaping_file_name(i, im, root, source)


def refuse_escaping_file_name(i: int, image: dict[str, Any], root: str | os.PathLike[str],
                              source: str | os.PathLike[str]) -> None:
    """:func:`refuse_escaping_file_names` for one image, ``images[i]`` (for a streamed reader)."""
    name = str(image.get("file_name", ""))
    if os.path.isabs(os.path.expanduser(name)):
        return
    norm = os.path.normpath(name)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise InputError(f"file_name {name!r} climbs out of the image folder {root}",
                         f"{source}: images[{i}] (id {image.get('id')})",
                         "write file_name relative to the image folder (no '..' leaving it), or pass the "
                         "folder that holds the images as --image-root")


class _Ids:
    """Ids (or an annotation's image/category references) in file order, 8 bytes each while they
    are ints (as COCO's are), else Python objects.

    Why not a set: a 10k-frame file's ids in sets cost ~0.3 KB per frame, which alone breaks a
    flat-memory stage; duplicates and references are checked once at the end instead."""

    def __init__(self) -> None:
        self._ints: array | None = array("q")
        self._objs: list = []

    def append(self, v: Any) -> None:
        if self._ints is not None:
            if type(v) is int and -(1 << 63) <= v < (1 << 63):
                self._ints.append(v)
                return
            self._objs, self._ints = list(self._ints), None
        self._objs.append(v)

    def __len__(self) -> int:
        return len(self._ints) if self._ints is not None else len(self._objs)

    def values(self) -> np.ndarray:
        """int64 when every id is an int, else an object array."""
        if self._ints is not None:
            return np.frombuffer(self._ints, np.int64) if len(self._ints) else np.zeros(0, np.int64)
        out = np.empty(len(self._objs), dtype=object)
        out[:] = self._objs
        return out

    def first_repeat(self) -> int | None:
        """The position of the first id equal to an earlier one, or None."""
        v = self.values()
        if v.dtype != object:
            order = np.argsort(v, kind="stable")
            later = order[1:][v[order][1:] == v[order][:-1]]
            return int(later.min()) if len(later) else None
        seen: set = set()
        for i, x in enumerate(v):
            if x in seen:
                return i
            seen.add(x)
        return None

    def positions_in(self, ids: _Ids) -> np.ndarray:
        """For each value, its position in ``ids`` (the first one), or -1 when absent."""
        v, pool = self.values(), ids.values()
        if v.dtype != object and pool.dtype != object:
            if not len(pool):
                return np.full(len(v), -1, np.int64)
            order = np.argsort(pool, kind="stable")
            pos = np.minimum(np.searchsorted(pool, v, sorter=order), len(pool) - 1)
            found = order[pos]
            return np.where(pool[found] == v, found, -1).astype(np.int64)
        first: dict = {}
        for i, x in enumerate(pool.tolist()):
            first.setdefault(x, i)
        return np.fromiter((first.get(x, -1) for x in v.tolist()), np.int64, len(v))


def _check_id_logs(path: Any, images: _Ids, anns: _Ids, refs: tuple[_Ids, _Ids], cat_ids: set) -> np.ndarray:
    """The id checks :func:`validate_dataset` makes per element, made at the end of a stream: no
    image or annotation id twice, every annotation's image and category known (the first offender
    is named). Returns each annotation's image position in ``images``."""
    if (i := images.first_repeat()) is not None:
        raise _fail(path, f"images[{i}]", f"duplicate image id {images.values()[i]}", "give every image a unique id")
    if (j := anns.first_repeat()) is not None:
        raise _fail(path, f"annotations[{j}]", f"duplicate annotation id {anns.values()[j]}", "renumber annotations")
    where = refs[0].positions_in(images)
    cats = refs[1].values()
    bad = np.flatnonzero(where < 0)
    bad_cat = [k for k, c in enumerate(cats.tolist()) if c not in cat_ids] if len(cats) else []
    first = min([*bad[:1].tolist(), *bad_cat[:1]], default=None)
    if first is not None:
        _check_refs(refs[0].values()[first], cats[first], f"annotations[{first}]", path,
                    () if where[first] < 0 else (refs[0].values()[first],), cat_ids)
    return where


class CocoWriter:
    """Write a COCO dataset file one image and one annotation at a time, in constant memory.

    Why: a stage that assembles a 10k-frame dataset in memory before writing it holds every output
    box as a dict plus the whole JSON text (the refine stage: +15 KB per frame). The file is the
    same bytes as ``save_dataset(path, {**new_dataset(images, annotations, categories, info),
    **extra})`` (compact, ``indent=None``), validated as :func:`save_dataset` validates: each
    element as it is added, ids and references (:class:`_Ids`, 8 bytes per id) when the block ends.
    Images are written as they come; annotations go to a side file in the same temporary folder
    and are appended after the images on close. Use as a context manager: the file appears
    atomically (:func:`core.atomic.atomic_path`) only when the block ends without an exception.

    Args:
        path: the output file.
        info: its ``info`` object.
        categories: its categories (validated: ids and names).
        extra: further top-level keys written after ``categories``, in this order.
    """

    def __init__(self, path: str | os.PathLike[str], info: dict, categories: list[dict],
                 extra: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.info, self.categories, self.extra = info, categories, dict(extra or {})
        self._cat_ids = _category_ids(categories, self.path)
        self._image_ids, self._ann_ids, self._refs = _Ids(), _Ids(), (_Ids(), _Ids())
        self.n_images = self.n_annotations = 0

    def __enter__(self) -> CocoWriter:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic.atomic_path(self.path))
        self._main = self._stack.enter_context(open(tmp, "wb"))
        self._anns = self._stack.enter_context(open(tmp.with_name(tmp.name + ".annotations"), "w+b"))
        self._main.write(b'{"info":' + atomic.dumps_json(self.info) + b',"images":[')
        return self

    def add_image(self, image: dict) -> None:
        """Append one image entry (it needs id, file_name, width, height, and an id not used before)."""
        _check_image(image, self.n_images, self.path, None)
        self._image_ids.append(image["id"])
        self._main.write((b"," if self.n_images else b"") + atomic.dumps_json(image))
        self.n_images += 1

    def add_annotation(self, ann: dict) -> None:
        """Append one annotation (COCO ``xywh`` bbox; its image and category checked at the end)."""
        _check_annotation(ann, self.n_annotations, self.path, None, None, None)
        self._ann_ids.append(ann["id"])
        self._refs[0].append(ann["image_id"])
        self._refs[1].append(ann["category_id"])
        self._anns.write((b"," if self.n_annotations else b"") + atomic.dumps_json(ann))
        self.n_annotations += 1

    def _finish(self) -> None:
        _check_id_logs(self.path, self._image_ids, self._ann_ids, self._refs, self._cat_ids)
        self._main.write(b'],"annotations":[')
        self._anns.seek(0)
        shutil.copyfileobj(self._anns, self._main, 1 << 16)     # small buffer: memory stays flat
        self._main.write(b'],"categories":' + atomic.dumps_json(self.categories))
        for k, v in self.extra.items():
            self._main.write(b"," + atomic.dumps_json(str(k)) + b":" + atomic.dumps_json(v))
        self._main.write(b"}\n")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                if not self._stack.__exit__(*sys.exc_info()):
                    raise
                return False
        return bool(self._stack.__exit__(exc_type, exc, tb))


@dataclass
class SpooledDataset:
    """A COCO dataset read element by element and validated as :func:`load_dataset` validates it,
    with its images and annotations spooled (pickled) to an anonymous temporary file.

    Why: holding a 10k-frame dataset as Python dicts costs ~10 KB per frame; held in memory here
    are only the other top-level values (``top``: info, categories, ... in file order) and per
    element its place in the spool (numpy), an annotation's image index and category id. Elements
    read back (:meth:`image`, :meth:`annotation`) are equal to what :func:`load_dataset` gives.
    Close it (``with`` or :meth:`close`) to free the spool. Made by :func:`spool_dataset`.
    """

    path: Path
    top: dict[str, Any]
    spool: Any                    # binary file object (tempfile.TemporaryFile)
    image_span: np.ndarray        # (n_images, 2) int64: offset, length in the spool
    ann_span: np.ndarray          # (n_annotations, 2) int64
    ann_image: np.ndarray         # (n_annotations,) int64: index of the annotation's image in ``images``
    ann_category: np.ndarray      # (n_annotations,): the annotation's category_id

    def _read(self, span: np.ndarray) -> dict:
        self.spool.seek(int(span[0]))
        return pickle.loads(self.spool.read(int(span[1])))    # our own file, written by _spool

    def image(self, i: int) -> dict:
        """``images[i]`` as in the file."""
        return self._read(self.image_span[i])

    def annotation(self, j: int) -> dict:
        """``annotations[j]`` as in the file."""
        return self._read(self.ann_span[j])

    def annotations_by_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, starts)``: image ``i``'s annotation indices are ``order[starts[i]:starts[i + 1]]``,
        in file order."""
        order = np.argsort(self.ann_image, kind="stable")
        starts = np.searchsorted(self.ann_image[order], np.arange(len(self.image_span) + 1))
        return order, starts

    def close(self) -> None:
        self.spool.close()

    def __enter__(self) -> SpooledDataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def spool_dataset(path: str | os.PathLike[str], *, spool_dir: str | os.PathLike[str] | None = None,
                  image_check: Callable[[int, dict], None] | None = None) -> SpooledDataset:
    """Read and validate the COCO dataset file ``path`` without holding its images and annotations
    (see :class:`SpooledDataset`); ``image_check(i, image)`` is called on every image as it is read
    (e.g. :func:`refuse_escaping_file_name`). The spool is an unlinked file in ``spool_dir``
    (default: the system's temporary folder): nothing is left behind, even after a crash.

    Raises:
        CocoFormatError: missing file, invalid JSON, or a dataset :func:`load_dataset` would refuse.
    """
    spool = tempfile.TemporaryFile(dir=spool_dir)
    try:
        return _spool(Path(path), spool, image_check)
    except FileNotFoundError:
        spool.close()
        raise CocoFormatError("file not found", str(path), "check the path") from None
    except json_stream.NotAnObject:
        spool.close()
        raise _fail(path, "top level", "expected a COCO dataset object, got a list (a results file?)",
                    "pass the ground-truth dataset here and the results list as predictions") from None
    except ValueError as exc:          # json.JSONDecodeError, UnicodeDecodeError
        spool.close()
        if isinstance(exc, CocoFormatError):
            raise
        raise CocoFormatError(f"not valid JSON ({exc})", str(path), "re-export the file") from None
    except BaseException:
        spool.close()
        raise


def _spool(path: Path, spool: Any, image_check: Callable[[int, dict], None] | None) -> SpooledDataset:
    """The reading loop of :func:`spool_dataset` (per-element checks, spool spans), then the id checks."""
    top: dict[str, Any] = {}
    spans = {"images": array("q"), "annotations": array("q")}       # offset, length per element
    image_ids, ann_ids, refs = _Ids(), _Ids(), (_Ids(), _Ids())
    for key, i, v in json_stream.iter_object(path, ("images", "annotations")):
        if i is None:
            if v is json_stream.ARRAY and key in top:
                raise _fail(path, "top level", f"'{key}' appears twice", "write each key once")
            top[key] = v
            continue
        if key == "images":
            _check_image(v, i, path, None)
            image_ids.append(v["id"])
            if image_check is not None:
                image_check(i, v)
        else:
            _check_annotation(v, i, path, None, None, None)
            ann_ids.append(v["id"])
            refs[0].append(v["image_id"])
            refs[1].append(v["category_id"])
        data = pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)      # exact (NaN, key order), fast to load
        spans[key].extend((spool.tell(), len(data)))
        spool.write(data)
    for key in ("images", "annotations", "categories"):
        if key in ("images", "annotations") and top.get(key) is json_stream.ARRAY:
            del top[key]
        elif not isinstance(top.get(key), list):
            raise _fail(path, "top level", f"missing list '{key}'", "a COCO dataset needs images, annotations and categories")
    ann_image = _check_id_logs(path, image_ids, ann_ids, refs, _category_ids(top["categories"], path))
    return SpooledDataset(path, top, spool, np.frombuffer(spans["images"], np.int64).reshape(-1, 2).copy(),
                          np.frombuffer(spans["annotations"], np.int64).reshape(-1, 2).copy(), ann_image,
                          refs[1].values().copy())
