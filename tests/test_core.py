"""Shared core: box conventions, COCO validation, atomic writes, content hashes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from core import atomic, boxes, coco, hashing
from core.errors import InputError


def test_box_round_trips() -> None:
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    assert np.allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(xyxy)), xyxy)
    norm = boxes.xyxy_to_cxcywh_norm(xyxy, 100, 200)
    assert np.allclose(norm[0], [0.30, 0.25, 0.40, 0.30])
    assert np.allclose(boxes.cxcywh_norm_to_xyxy(norm, 100, 200), xyxy)
    assert boxes.as_boxes([]).shape == (0, 4)
    with pytest.raises(ValueError):
        boxes.as_boxes([1, 2, 3])


def test_iou_clip_enlarge() -> None:
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert np.allclose(boxes.iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])
    assert np.allclose(boxes.clip([[-5, -5, 120, 50]], 100, 40), [[0, 0, 100, 40]])
    assert np.allclose(boxes.enlarge([[10, 10, 20, 20]], 2.0), [[5, 5, 25, 25]])


def _ds() -> dict:
    return coco.new_dataset(
        images=[{"id": 1, "file_name": "a.png", "width": 100, "height": 80}],
        annotations=[coco.annotation(1, 1, 2, [10, 20, 30, 60])],
        categories=coco.categories_from_names(["person", "car"]),
    )


def test_coco_round_trip_and_grouping(tmp_path: Path) -> None:
    ds = _ds()
    assert ds["annotations"][0]["bbox"] == [10.0, 20.0, 20.0, 40.0]
    p = coco.save_dataset(tmp_path / "gt.json", ds)
    loaded = coco.load_dataset(p)
    grouped = coco.boxes_by_image(loaded)
    assert np.allclose(grouped[1].boxes, [[10, 20, 30, 60]])
    assert grouped[1].category_ids.tolist() == [2]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(image_id=7), "image_id 7 is not in images"),
    (lambda d: d["annotations"][0].update(category_id=9), "category_id 9 is not in categories"),
    (lambda d: d["annotations"][0].update(bbox=[30, 60, 10, -20]), "negative size"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 1"),
    (lambda d: d.pop("categories"), "missing list 'categories'"),
])
def test_coco_validation_names_the_problem(tmp_path: Path, mutate, message) -> None:
    ds = _ds()
    mutate(ds)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(InputError, match=message) as info:
        coco.load_dataset(path)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)


def test_results_ids_must_match_ground_truth() -> None:
    gt = _ds()
    good = [{"image_id": 1, "category_id": 2, "bbox": [10, 20, 20, 40], "score": 0.9}]
    assert coco.validate_results(good, "pred.json", gt) == good
    with pytest.raises(InputError, match="not an image of the ground truth"):
        coco.validate_results([dict(good[0], image_id=99)], "pred.json", gt)
    with pytest.raises(InputError, match="not a ground-truth category"):
        coco.validate_results([dict(good[0], category_id=3)], "pred.json", gt)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert atomic.read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_hashes_are_content_based(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert hashing.file_sha256(a) == hashing.file_sha256(b)
    assert hashing.json_sha256({"x": 1, "y": 2}) == hashing.json_sha256({"y": 2, "x": 1})
    b.write_bytes(b"other")
    assert hashing.file_sha256(a) != hashing.file_sha256(b)


def test_concat_datasets_renumbers_and_maps_categories_by_name() -> None:
    from core.coco import concat_datasets

    a = {"images": [{"id": 7, "file_name": "t.png", "width": 4, "height": 4}],
         "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}],
         "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]}
    b = {"images": [{"id": 7, "file_name": "r.png", "width": 4, "height": 4}],
         "annotations": [{"id": 3, "image_id": 7, "category_id": 5, "bbox": [1, 1, 2, 2]}],
         "categories": [{"id": 5, "name": "car"}]}
    out = concat_datasets([a, b], tags=["thermal", "rgb"])
    assert [(im["id"], im["file_name"], im["part"]) for im in out["images"]] == [(1, "t.png", "thermal"), (2, "r.png", "rgb")]
    assert [(x["id"], x["image_id"], x["category_id"]) for x in out["annotations"]] == [(1, 1, 1), (2, 2, 2)]
    with pytest.raises(InputError, match="bicycle"):
        concat_datasets([a, {**b, "categories": [{"id": 5, "name": "bicycle"}]}])
