"""A labelling task for the picked thermal frames, the pipeline's labels as pre-annotations.

Why three formats: people correct labels in CVAT or Label Studio, and each imports its own format
best. One export folder holds:

- ``images/<name>``: the picked thermal frames, copied (upload this folder as the task's images);
- ``tasks.json``: COCO (``xywh`` pixels, ``file_name`` = the image's name in ``images/``, category
  ids 1-based in ``data.classes`` order). CVAT: create a task with ``images/``, then *Upload
  annotations* -> **COCO 1.0**; it is also what ``rgb2thermal label import`` reads back (export
  COCO 1.0 from CVAT after correcting). COCO is the format we recommend for CVAT: the same file
  goes in and comes out, so an uncorrected task round-trips exactly.
- ``cvat.xml``: "CVAT for images 1.1" (``<image name width height><box label xtl ytl xbr ybr>``,
  corner pixels), for users who keep CVAT's native format (``label import`` reads it too);
- ``label_studio.json``: Label Studio tasks with ``predictions`` (``rectanglelabels``: ``x``, ``y``,
  ``width``, ``height`` in PERCENT of ``original_width`` / ``original_height``); images are served by
  Label Studio's local-files storage (``/data/local-files/?d=images/<name>``, document root = this
  folder); ``label_studio_config.xml`` is the labelling interface (``RectangleLabels`` of the classes);
- ``picked.json``: why each frame was picked (score and criteria).

Ignore regions of the labels (``iscrowd``, uncertain boxes) are exported as ordinary boxes: the person
decides. Scores go to Label Studio (a prediction's ``score``) and ``picked.json``, not into the COCO or
CVAT files, whose importers would take an unknown field for an attribute of the label.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from core import atomic
from core.boxes import xywh_to_xyxy
from core.coco import categories_from_names, new_dataset, save_dataset
from core.errors import InputError
from tasks.label_pick import Picked, PickParams, Threshold, pick_frames

#: Label Studio names of the control tags (the config and the predictions must agree).
LS_FROM, LS_TO = "label", "image"
LS_URL_PREFIX = "/data/local-files/?d=images/"


Frame = tuple[dict, list[tuple[str, list[float], float]]]


def _frames(picked: Sequence[Picked], labels: Mapping, images: Mapping[int, dict], classes: Sequence[str]) -> list[Frame]:
    """Per picked frame: its COCO image (``file_name`` = the name in ``images/``) and ``(class, xyxy, score)`` boxes."""
    names = {c["id"]: c["name"] for c in labels["categories"]}
    boxes: dict[int, list[tuple[str, list[float], float]]] = {}
    for a in labels["annotations"]:
        if names[a["category_id"]] not in classes:
            raise InputError(f"label class {names[a['category_id']]!r} is not one of {list(classes)}",
                             "label export", "export labels of the run's target classes (data.classes)")
        boxes.setdefault(a["image_id"], []).append((names[a["category_id"]], xywh_to_xyxy([a["bbox"]])[0].tolist(),
                                                    float(a.get("score", 1.0))))
    seen: dict[str, int] = {}
    out = []
    for p in picked:
        im = images.get(p.image_id)
        if im is None:
            raise InputError(f"picked frame {p.image_id} is not among the images", "label export",
                             "pick from the frames passed as images")
        name = os.path.basename(str(im["file_name"]))
        if seen.setdefault(name, p.image_id) != p.image_id:
            raise InputError(f"two picked frames share the file name {name!r} (ids {seen[name]}, {p.image_id})",
                             "label export", "give the thermal frames unique file names")
        out.append(({"id": p.image_id, "file_name": name, "width": int(im["width"]), "height": int(im["height"]),
                     **{k: im[k] for k in ("pair_id", "daynight") if k in im}}, boxes.get(p.image_id, [])))
    return out


def _coco(frames: list, classes: Sequence[str]) -> dict:
    cat = {c: i + 1 for i, c in enumerate(classes)}
    anns = []
    for im, boxes in frames:
        for cls, (x1, y1, x2, y2), _ in boxes:
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": cat[cls],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return new_dataset([im for im, _ in frames], anns, categories_from_names(classes),
                       info={"description": "rgb2thermal labelling task: pre-annotations to correct"})


def _cvat_xml(frames: list, classes: Sequence[str]) -> bytes:
    """"CVAT for images 1.1": a ``<meta><task>`` with the labels, one ``<image>`` per frame, ``<box>`` corners."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = "rgb2thermal labelling task"
    ET.SubElement(task, "size").text = str(len(frames))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for c in classes:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = c
        ET.SubElement(lab, "type").text = "rectangle"
    for k, (im, boxes) in enumerate(frames):
        el = ET.SubElement(root, "image", id=str(k), name=im["file_name"], width=str(im["width"]), height=str(im["height"]))
        for cls, (x1, y1, x2, y2), _ in boxes:
            ET.SubElement(el, "box", label=cls, source="auto", occluded="0", z_order="0",
                          xtl=repr(x1), ytl=repr(y1), xbr=repr(x2), ybr=repr(y2))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _label_studio(frames: list, picked: Sequence[Picked]) -> list[dict]:
    """Label Studio tasks: ``data.image`` (local-files URL) and one prediction with percent boxes."""
    score = {p.image_id: p.score for p in picked}
    tasks = []
    for im, boxes in frames:
        w, h = im["width"], im["height"]
        result = [{"id": f"{im['id']}-{k}", "from_name": LS_FROM, "to_name": LS_TO, "type": "rectanglelabels",
                   "original_width": w, "original_height": h, "image_rotation": 0, "score": s,
                   "value": {"x": 100.0 * x1 / w, "y": 100.0 * y1 / h, "width": 100.0 * (x2 - x1) / w,
                             "height": 100.0 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [cls]}}
                  for k, (cls, (x1, y1, x2, y2), s) in enumerate(boxes)]
        tasks.append({"data": {"image": LS_URL_PREFIX + im["file_name"], "image_id": im["id"]},
                      "predictions": [{"model_version": "rgb2thermal", "score": score[im["id"]], "result": result}]})
    return tasks


def _ls_config(classes: Sequence[str]) -> str:
    labels = "\n".join(f'    <Label value="{c}"/>' for c in classes)
    return (f'<View>\n  <Image name="{LS_TO}" value="$image"/>\n  <RectangleLabels name="{LS_FROM}" toName="{LS_TO}">\n'
            f"{labels}\n  </RectangleLabels>\n</View>\n")


def export_task(picked: Sequence[Picked], labels: Mapping, out_dir: Path, image_root: Path,
                classes: Sequence[str], images: Sequence[dict] | None = None) -> dict[str, Path]:
    """Write the labelling task of ``picked`` into ``out_dir`` (see the module docstring).

    Args:
        picked: the frames to label (:func:`tasks.label_pick.pick_frames`).
        labels: COCO pre-annotations of the thermal frames (``xywh`` pixels): the run's training labels.
        out_dir: the export folder (created; files written atomically).
        image_root: the folder the labels' image ``file_name`` s are relative to (the workspace).
        classes: the target classes (``data.classes``), in category-id order.
        images: the COCO images of the thermal frames (``file_name``, ``width``, ``height``; default: the
            labels' images): the pipeline passes the index's thermal adapt images, so a frame without
            labels is still exported, and always as its thermal image.

    Returns:
        role -> written file: ``coco``, ``cvat``, ``label_studio``, ``label_studio_config``, ``picked``, ``images``.
    """
    by_id = {im["id"]: im for im in (labels["images"] if images is None else images)}
    frames = _frames(picked, labels, by_id, classes)
    src = {i: Path(image_root) / str(im["file_name"]) for i, im in by_id.items()}
    for im, _ in frames:
        atomic.write_bytes(out_dir / "images" / im["file_name"], src[im["id"]].read_bytes())
    files = {"coco": save_dataset(out_dir / "tasks.json", _coco(frames, classes), indent=2),
             "cvat": atomic.write_bytes(out_dir / "cvat.xml", _cvat_xml(frames, classes)),
             "label_studio": atomic.write_json(out_dir / "label_studio.json", _label_studio(frames, picked)),
             "label_studio_config": atomic.write_text(out_dir / "label_studio_config.xml", _ls_config(classes)),
             "picked": atomic.write_json(out_dir / "picked.json", [
                 {"image_id": p.image_id, "file_name": os.path.basename(p.file_name), "score": p.score,
                  "daynight": p.daynight, "reasons": p.reasons} for p in picked])}
    return {**files, "images": out_dir / "images"}


def human_labelled_ids(index_path: str | os.PathLike[str]) -> frozenset[int]:
    """Image ids of the frames a person labelled (``split.csv`` ``label_source = human``, see
    :mod:`tasks.label_import`), from a paired index."""
    from data.adapters.folder import LABEL_SOURCE_COLUMN
    from data.index import load_index

    return frozenset(p.image_id for p in load_index(index_path).pairs if p.extra.get(LABEL_SOURCE_COLUMN) == "human")


def run_label_pick(labels: Path, sources: Mapping[str, Path], pool: Path, index: Path, out_dir: Path,
                   params: PickParams, threshold: Threshold, image_root: Path, classes: Sequence[str]) -> dict[str, Path]:
    """The pipeline's ``pick`` step: score the pool, pick ``params.n`` frames, export the labelling task.

    Args:
        labels: COCO training labels of the thermal adapt frames (the last round's fused set).
        sources: name -> COCO file of each label source (refined RGB labels, each round's thermal pseudo-labels).
        pool: COCO images that may be picked (the index step's ``thermal_adapt_images``: no test, no val).
        index: the paired index (frames a person labelled already are left out of the pool).
        out_dir: the step's folder: the export (see :func:`export_task`) goes there.
        params: the pick's parameters.
        threshold: ``(class, daynight) -> score threshold`` that kept a training label.
        image_root: what the COCO ``file_name`` s are relative to (the workspace).
        classes: the target classes.

    Returns:
        role -> written file (the ``images/`` folder left out: it is not one file).
    """
    from core.coco import load_dataset

    done = human_labelled_ids(index)
    frames = [im for im in load_dataset(pool)["images"] if im["id"] not in done]
    lab = load_dataset(labels)
    picked = pick_frames(lab, {k: load_dataset(v) for k, v in sources.items()}, frames, threshold, params)
    files = export_task(picked, lab, out_dir, image_root, classes, images=frames)
    return {k: v for k, v in files.items() if k != "images"}
