"""Corrected labels back into the user's dataset: a labelled split, or training labels that win.

Why: the labelling loop (``rgb2thermal label pick`` -> CVAT / Label Studio -> ``label import``) exists
to give the product a val split of thermal frames labelled by a person (what every decision reads:
``data.val_split``), or training labels where the pseudo-labels were wrong. The labels go where the
folder adapter (:mod:`data.adapters.folder`) reads them, so the dataset folder stays the one thing DVC
versions and every door (plain run, Prefect, DVC) sees the same data:

- ``labels_thermal/human_labels.json`` (:data:`data.adapters.folder.HUMAN_LABELS_FILE`): a COCO file of
  the frames a person labelled (``file_name`` relative to ``thermal/``); the adapter reads it after
  every other label file, so a person's boxes win over any other label of the frame. A frame imported
  again replaces its entry; other frames' entries and every other label file are left alone.
- ``split.csv``: the frames' rows get ``split`` = the named split (``val`` by default) and the column
  ``label_source`` = ``human``; with ``as_training`` they keep their adapt split and the pipeline's
  ``override`` step (``label.override: true``) puts their human boxes in place of the pseudo-labels
  (:func:`override_labels`).

Everything is checked before anything is written (frames known and not in the test split, image
sizes, class names, every box inside its image up to :data:`EDGE_TOLERANCE_PX`); a refused import
changes nothing. Readers: COCO (CVAT's "COCO 1.0" export, our ``tasks.json``), "CVAT for images 1.1"
XML, Label Studio's JSON export (``annotations`` ``rectanglelabels``, percent of the image size).
Boxes are ``xyxy`` float pixels inside, COCO ``xywh`` in files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from core import atomic
from core.boxes import xywh_to_xyxy
from core.coco import annotations as coco_annotations, categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from data.adapters.folder import HUMAN_LABELS_FILE, LABEL_SOURCE_COLUMN, candidates
from data.index_build import read_size

#: How far (pixels) a corrected box may cross the image border and still count as inside (then clipped):
#: Label Studio's percent boxes and CVAT's two-decimal corners round a box on the border by less.
EDGE_TOLERANCE_PX = 0.01
HUMAN = "human"


@dataclass
class LabelledFrame:
    """One frame's corrected labels as read from an export: ``name`` = the image's file name (no folder),
    its size ``(width, height)`` in pixels as the file states it (``None`` when it does not), ``xyxy``
    float pixel boxes ``(N, 4)`` with their class names, and ``where`` (the entry, for messages)."""

    name: str
    size: tuple[int, int] | None
    boxes: np.ndarray
    classes: list[str]
    where: str
    problems: list[str] = field(default_factory=list)     # what the reader already refused (rotated boxes)


@dataclass
class ImportResult:
    """What an import wrote: the frames (original ids), box count, split and the files changed."""

    frames: list[str]
    boxes: int
    split: str
    files: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def _read_coco(path: Path) -> list[LabelledFrame]:
    ds = load_dataset(path)
    names = {c["id"]: c["name"] for c in ds["categories"]}
    per: dict[int, list[dict]] = {im["id"]: [] for im in ds["images"]}
    for a in ds["annotations"]:
        per[a["image_id"]].append(a)
    # CVAT's COCO 1.0 export keeps a rotated box's angle in the annotation's attributes
    return [LabelledFrame(os.path.basename(str(im["file_name"])), (int(im["width"]), int(im["height"])),
                          xywh_to_xyxy([a["bbox"] for a in per[im["id"]]]).reshape(-1, 4),
                          [names[a["category_id"]] for a in per[im["id"]]], f"{path}: images[{k}]",
                          _rotated(f"{path}: images[{k}]", [float((a.get("attributes") or {}).get("rotation") or 0)
                                                            for a in per[im["id"]]]))
            for k, im in enumerate(ds["images"])]


def _read_cvat(path: Path) -> list[LabelledFrame]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"not valid XML ({exc})", str(path), "export 'CVAT for images 1.1' from CVAT") from None
    out = []
    for k, im in enumerate(root.iter("image")):
        boxes = [[float(b.get(c, "nan")) for c in ("xtl", "ytl", "xbr", "ybr")] for b in im.iter("box")]
        where = f"{path}: <image> {k}"
        out.append(LabelledFrame(os.path.basename(im.get("name", "")), (int(im.get("width", 0)), int(im.get("height", 0))),
                                 np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                 [str(b.get("label")) for b in im.iter("box")], where,
                                 _rotated(where, [float(b.get("rotation", 0) or 0) for b in im.iter("box")])))
    return out


def _rotated(where: str, angles: list[float]) -> list[str]:
    """A rotated box is refused: the detectors and COCO boxes are axis-aligned."""
    return [f"{where}: box {k} is rotated by {a} degrees (boxes must be axis-aligned)" for k, a in enumerate(angles) if a]


def _ls_name(url: str) -> str:
    """The image file name a Label Studio ``data.image`` URL names (local files ``?d=...``, uploads, URLs)."""
    q = parse_qs(urlparse(url).query).get("d")
    return os.path.basename(unquote(q[0] if q else urlparse(url).path))


def _read_label_studio(path: Path, tasks: list) -> list[LabelledFrame]:
    out = []
    for k, t in enumerate(tasks):
        where = f"{path}: task {k} ({t.get('data', {}).get('image')})"
        done = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            raise InputError("the task has no submitted annotation", where,
                             "submit (or skip and remove) every task in Label Studio before exporting")
        rects = [r for r in done[-1].get("result", []) if r.get("type") == "rectanglelabels"]
        size = (int(rects[0]["original_width"]), int(rects[0]["original_height"])) if rects else None
        boxes = [[v["x"] * r["original_width"] / 100.0, v["y"] * r["original_height"] / 100.0,
                  (v["x"] + v["width"]) * r["original_width"] / 100.0, (v["y"] + v["height"]) * r["original_height"] / 100.0]
                 for r in rects for v in [r["value"]]]
        out.append(LabelledFrame(_ls_name(str(t.get("data", {}).get("image", ""))), size,
                                 np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                                 [str((r["value"].get("rectanglelabels") or ["?"])[0]) for r in rects], where,
                                 _rotated(where, [float(r["value"].get("rotation", 0) or 0) for r in rects])))
    return out


def read_labelled_frames(path: str | os.PathLike[str]) -> list[LabelledFrame]:
    """The corrected frames of an export file: COCO JSON, CVAT XML or a Label Studio JSON export.

    Args:
        path: the file CVAT (COCO 1.0 or CVAT for images 1.1) or Label Studio (JSON) exported.

    Returns:
        One :class:`LabelledFrame` per image of the file (boxes ``xyxy`` float pixels).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("label file not found", str(p), "pass the file CVAT or Label Studio exported")
    if p.suffix.lower() == ".xml":
        return _read_cvat(p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the label file ({exc})", str(p), "export COCO 1.0 or Label Studio JSON") from None
    if isinstance(doc, list):
        return _read_label_studio(p, doc)
    return _read_coco(p)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    original_id: str
    thermal_path: Path
    split: str


def _dataset_frames(root: Path) -> dict[str, list[_Target]]:
    """Thermal image file name -> the dataset's frames with that name (more than one = ambiguous)."""
    cands, _, _ = candidates(root)
    out: dict[str, list[_Target]] = {}
    for c in cands:
        if c.thermal_path is not None:
            out.setdefault(os.path.basename(str(c.thermal_path)), []).append(
                _Target(c.original_id, Path(c.thermal_path), c.split or ""))
    return out


def _frame_problems(f: LabelledFrame, targets: list[_Target] | None, classes: Sequence[str], test_split: str
                    ) -> tuple[list[str], np.ndarray | None]:
    """What is wrong with one imported frame, and its boxes clipped to the image when nothing is."""
    if f.problems:
        return list(f.problems), None
    if not targets:
        return [f"{f.where}: frame {f.name!r} is not a thermal image of the dataset"], None
    if len(targets) > 1:
        return [f"{f.where}: {len(targets)} thermal images of the dataset are named {f.name!r}"], None
    if targets[0].split == test_split:
        return [f"{f.where}: frame {f.name!r} is in the test split (test frames are only reported on)"], None
    size, why = read_size(targets[0].thermal_path, decode=False)
    if size is None:
        return [f"{f.where}: cannot read {targets[0].thermal_path} ({why})"], None
    problems = [] if f.size is None or tuple(f.size) == size else [
        f"{f.where}: {f.name!r} is {f.size[0]}x{f.size[1]} in the file but {size[0]}x{size[1]} in the dataset"]
    problems += [f"{f.where}: unknown class {c!r} (classes: {list(classes)})" for c in f.classes if c not in classes]
    w, h, t = size[0], size[1], EDGE_TOLERANCE_PX
    for (x1, y1, x2, y2), c in zip(f.boxes.tolist(), f.classes):
        if not np.isfinite([x1, y1, x2, y2]).all() or x2 <= x1 or y2 <= y1:
            problems.append(f"{f.where}: {c} box {[x1, y1, x2, y2]} has no area")
        elif x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
            problems.append(f"{f.where}: {c} box xyxy {[round(v, 2) for v in (x1, y1, x2, y2)]} lies outside the "
                            f"{w}x{h} image")
    clipped = np.clip(f.boxes, 0.0, [w, h, w, h]) if len(f.boxes) else f.boxes
    return problems, clipped


def check_frames(frames: Sequence[LabelledFrame], root: Path, classes: Sequence[str], test_split: str = "test"
                 ) -> list[tuple[LabelledFrame, _Target, np.ndarray]]:
    """Validate every imported frame against the dataset; raise ONE :class:`InputError` listing all problems.

    Args:
        frames: the imported frames (:func:`read_labelled_frames`).
        root: the dataset root (folder adapter layout).
        classes: the target classes (``data.classes``).
        test_split: the test split's name (its frames are refused).

    Returns:
        ``(frame, dataset frame, xyxy boxes clipped to the image)`` per imported frame.
    """
    targets = _dataset_frames(root)
    problems, out = [], []
    names = [f.name for f in frames]
    problems += [f"frame {n!r} appears {names.count(n)} times in the file" for n in sorted(set(names)) if names.count(n) > 1]
    for f in frames:
        bad, boxes = _frame_problems(f, targets.get(f.name), classes, test_split)
        problems += bad
        if not bad and boxes is not None:
            out.append((f, targets[f.name][0], boxes))
    if not frames:
        problems.append("the file holds no frame")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise InputError(f"{len(problems)} problem(s) in the corrected labels, nothing imported: "
                         + "; ".join(problems[:8]) + more, str(root),
                         "fix the labels in CVAT / Label Studio (boxes inside the image, the dataset's class names, "
                         "frames of this dataset's thermal/ folder) and export again")
    return out


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _merged_human_labels(root: Path, checked: list, classes: Sequence[str]) -> dict:
    """``labels_thermal/human_labels.json`` with the imported frames' entries replaced (others kept)."""
    path = root / "labels_thermal" / HUMAN_LABELS_FILE
    old = load_dataset(path) if path.is_file() else new_dataset([], [], categories_from_names(classes))
    old_names = {c["id"]: c["name"] for c in old["categories"]}
    new_names = {os.path.relpath(t.thermal_path, root / "thermal").replace(os.sep, "/"): (f, b) for f, t, b in checked}
    images, anns = [], []
    cat = {c: i + 1 for i, c in enumerate(classes)}
    for im in old["images"]:
        if im["file_name"] in new_names:
            continue
        images.append({**im, "id": len(images) + 1})
        kept = [a for a in old["annotations"] if a["image_id"] == im["id"]]
        anns += coco_annotations(len(anns) + 1, len(images), [cat[old_names[a["category_id"]]] for a in kept],
                                 xywh_to_xyxy([a["bbox"] for a in kept]).reshape(-1, 4))
    for name, (f, boxes) in sorted(new_names.items()):
        size, _ = read_size(root / "thermal" / name, decode=False)
        assert size is not None         # checked by check_frames
        images.append({"id": len(images) + 1, "file_name": name, "width": size[0], "height": size[1]})
        anns += coco_annotations(len(anns) + 1, len(images), [cat[c] for c in f.classes], boxes)
    return new_dataset(images, anns, categories_from_names(classes),
                       info={"description": "thermal labels corrected by a person (rgb2thermal label import)"})


def _split_csv_text(root: Path, ids: Sequence[str], split: str | None) -> str:
    """``split.csv`` with the rows of ``ids`` marked ``label_source=human`` (and moved to ``split``)."""
    path = root / "split.csv"
    if not path.is_file():
        raise InputError("the dataset has no split.csv", str(root), "write split.csv (name,split[,daynight]) first")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    fields += [c for c in ("split", LABEL_SOURCE_COLUMN) if c not in fields]
    by_name = {r["name"].strip(): r for r in rows}
    for oid in ids:
        row = by_name.get(oid)
        if row is None:
            row = by_name[oid] = {"name": oid}
            rows.append(row)
        row[LABEL_SOURCE_COLUMN] = HUMAN
        if split is not None:
            row["split"] = split
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows({k: r.get(k) or "" for k in fields} for r in rows)
    return buf.getvalue()


def import_labels(path: str | os.PathLike[str], root: str | os.PathLike[str], classes: Sequence[str], *,
                  split: str = "val", as_training: bool = False, test_split: str = "test") -> ImportResult:
    """Bring corrected labels back into the dataset ``root`` (see the module docstring).

    Args:
        path: the export of CVAT (COCO 1.0 or CVAT for images 1.1) or Label Studio (JSON).
        root: the dataset folder (folder adapter layout: ``thermal/``, ``labels_thermal/``, ``split.csv``).
        classes: the target classes (``data.classes``); any other class name is refused.
        split: the split the frames join (``val``: what ``data.val_split`` names); ignored with ``as_training``.
        as_training: keep the frames' split; their boxes override the pseudo-labels in training
            (``label.override: true``).
        test_split: frames of this split are refused.

    Returns:
        What was written.

    Raises:
        InputError: any problem of any frame (nothing is written then).
    """
    root = Path(root)
    if not as_training and split == test_split:
        raise InputError(f"cannot import into the test split '{test_split}' (it is only reported on)", f"--split {split}",
                         "import into the val split (default) or another split name")
    checked = check_frames(read_labelled_frames(path), root, classes, test_split)
    ids = [t.original_id for _, t, _ in checked]
    csv_text = _split_csv_text(root, ids, None if as_training else split)
    labels = _merged_human_labels(root, checked, classes)
    files = [save_dataset(root / "labels_thermal" / HUMAN_LABELS_FILE, labels, indent=2),
             atomic.write_text(root / "split.csv", csv_text)]
    return ImportResult(frames=ids, boxes=sum(len(b) for _, _, b in checked),
                        split="(kept: training labels)" if as_training else split, files=files)


# ---------------------------------------------------------------------------------------------
# training labels
# ---------------------------------------------------------------------------------------------
def override_labels(labels: Mapping, human: Mapping, human_ids: set[int] | frozenset[int], repeat: int = 1) -> dict:
    """``labels`` with the boxes of the frames ``human_ids`` replaced by the human ones (score 1).

    Why: a frame a person corrected must train on the person's boxes, not on the pseudo-labels (nor on
    both); every other frame keeps its pseudo-labels exactly.

    Args:
        labels: COCO training labels of the thermal adapt frames (``xywh`` pixels).
        human: COCO thermal labels holding the human frames' boxes (same image ids, same classes).
        human_ids: image ids of the frames a person labelled.
        repeat: how many times each human frame is in the set (``label.human_repeat``): copies 2..repeat
            are new images (new ids after the last one, ``copy_of`` = the frame's id, same ``file_name``)
            with the same human boxes, so that training sees the trusted frames ``repeat`` times per
            epoch. 1: once, like any frame.

    Returns:
        The new COCO data set: the kept annotations unchanged (ids too), the human ones after them with
        new ids, score 1 and ``source: human``, then the copies' images and boxes.

    Examples:
        >>> lab = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "person"}],
        ...        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}]}
        >>> hum = {"categories": [{"id": 1, "name": "person"}],
        ...        "annotations": [{"id": 9, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}]}
        >>> new = override_labels(lab, hum, {2}, repeat=2)
        >>> [(im["id"], im.get("copy_of")) for im in new["images"]], [a["image_id"] for a in new["annotations"]]
        ([(1, None), (2, None), (3, 2)], [1, 2, 3])
    """
    names = {c["id"]: c["name"] for c in human["categories"]}
    cat = {c["name"]: c["id"] for c in labels["categories"]}
    ids = {im["id"] for im in labels["images"]} & set(human_ids)
    kept = [a for a in labels["annotations"] if a["image_id"] not in ids]
    new = [a for a in human["annotations"] if a["image_id"] in ids]
    first = max((a["id"] for a in labels["annotations"]), default=0) + 1
    ours = coco_annotations(first, [a["image_id"] for a in new], [cat[names[a["category_id"]]] for a in new],
                            xywh_to_xyxy([a["bbox"] for a in new]).reshape(-1, 4),
                            [{"score": 1.0} for _ in new], source=HUMAN)
    if repeat == 1:
        return {**labels, "annotations": kept + ours}
    images, copies = _copies(labels["images"], ours, sorted(ids), repeat, first + len(ours))
    return {**labels, "images": [*labels["images"], *images], "annotations": kept + ours + copies}


def _copies(images: list[dict], human: list[dict], ids: list[int], repeat: int,
            first_ann: int) -> tuple[list[dict], list[dict]]:
    """Copies 2..``repeat`` of the frames ``ids`` with their ``human`` boxes: the new images (ids after the
    last of ``images``, ``copy_of`` = the frame's id) and boxes (ids from ``first_ann``)."""
    by_id, own_of = {im["id"]: im for im in images}, defaultdict(list)
    for a in human:
        own_of[a["image_id"]].append(a)
    next_im = max((im["id"] for im in images), default=0) + 1
    out_images: list[dict] = []
    out_anns: list[dict] = []
    for i in ids:
        for _ in range(repeat - 1):
            out_images.append({**by_id[i], "id": next_im, "copy_of": i})
            base = first_ann + len(out_anns)
            out_anns += [{**a, "id": base + j, "image_id": next_im} for j, a in enumerate(own_of[i])]
            next_im += 1
    return out_images, out_anns


def run_override(labels: Path, human: Path, index: Path, out: Path, repeat: int = 1) -> tuple[Path, dict[str, int]]:
    """The pipeline's ``override`` step: the training labels with the human frames' boxes in place.

    Args:
        labels: COCO training labels (fused or refined) of the thermal adapt frames.
        human: COCO thermal labels of the adapt frames (the index step's ``thermal_adapt``): the human
            frames' boxes are taken from it.
        index: the paired index (which frames a person labelled: ``label_source = human``).
        out: the COCO file to write.
        repeat: each human frame is in the training set this many times (:func:`override_labels`).

    Returns:
        The written file and counts (frames overridden, boxes before and after, images after).
    """
    from tasks.label_export import human_labelled_ids

    lab = load_dataset(labels)
    ids = human_labelled_ids(index) & {im["id"] for im in lab["images"]}
    new = override_labels(lab, load_dataset(human), ids, repeat)
    new["info"] = {**(lab.get("info") or {}), "override": "human labels on the frames a person labelled",
                   **({"human_repeat": repeat} if repeat > 1 else {})}
    path = save_dataset(out, new)
    return path, {"frames_overridden": len(ids), "boxes_in": len(lab["annotations"]),
                  "boxes_out": len(new["annotations"]), "images_out": len(new["images"])}
