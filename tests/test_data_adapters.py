"""Adapters on small fixture trees (FLIR v1, FLIR v2, generic folder) and on the real msrs-aligned-20."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.adapters import flir_v1, flir_v2, folder
from core.coco import boxes_by_image
from core.errors import InputError


def _img(path: Path, w: int, h: int, channels: int = 3, value: int = 90) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w, channels) if channels > 1 else (h, w)
    assert cv2.imwrite(str(path), np.full(shape, value, dtype=np.uint8))


def _coco(path: Path, images: list[tuple[str, int, int]], anns: list[tuple[int, int, list[float]]],
          cats: list[tuple[int, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for k, (im, c, b) in enumerate(anns)],
        "categories": [{"id": i, "name": n} for i, n in cats]}))


FLIR_CATS = [(1, "person"), (2, "bicycle"), (3, "car"), (18, "dog")]


def test_flir_v1(tmp_path: Path) -> None:
    root = tmp_path / "FLIR_ADAS_1_3"
    frames = {"train": [("FLIR_00001", (1800, 1600)), ("FLIR_00002", (1280, 1024)), ("FLIR_00003", None),
                        ("FLIR_00004", (720, 480))],
              "val": [("FLIR_00005", (2048, 1536))], "video": [("FLIR_video_00001", (1800, 1600))]}
    for split, items in frames.items():
        imgs = []
        for stem, rgb_size in items:
            if rgb_size:
                _img(root / split / "RGB" / f"{stem}.jpg", *rgb_size)
            _img(root / split / "thermal_8_bit" / f"{stem}.jpeg", 640, 512, channels=1)
            imgs.append((f"thermal_8_bit/{stem}.jpeg", 640, 512))
        _coco(root / split / "thermal_annotations.json", imgs,
              [(1, 1, [10, 20, 30, 60]), (1, 3, [100, 100, 80, 40]), (1, 2, [5, 5, 10, 10]), (1, 18, [1, 1, 5, 5])],
              FLIR_CATS)
    ix = flir_v1.build_index(root, "flir_v1", tmp_path / "out", progress=False)
    assert len(ix.pairs) == 5
    assert [(e["original_id"], e["reason"]) for e in ix.excluded] == [("train/FLIR_00003", "missing_rgb")]
    assert ix.stats["by_rgb_size"] == {"1280x1024": 1, "1800x1600": 2, "2048x1536": 1, "720x480": 1}
    assert ix.stats["by_split"] == {"train": 3, "val": 1, "video": 1}
    assert {p.pair_id for p in ix.pairs} >= {"flir_v1:train/FLIR_00001", "flir_v1:video/FLIR_video_00001"}
    assert ix.rgb_labels is None and ix.thermal_labels is not None  # v1 labels thermal only
    th = boxes_by_image(ix.load_labels("thermal"))
    first = th[ix.by_pair_id()["flir_v1:train/FLIR_00001"].image_id]
    assert first.category_ids.tolist() == [1, 2]  # person -> 1, car -> 2 in target order
    np.testing.assert_allclose(first.boxes, [[10, 20, 40, 80], [100, 100, 180, 140]])
    dropped = {i["class"]: i["count"] for i in ix.issues if i["kind"] == "class_dropped"}
    assert dropped == {"bicycle": 3, "dog": 3}  # one of each on the first frame of each of the 3 splits
    with pytest.raises(InputError, match="no FLIR v1 split"):
        flir_v1.build_index(tmp_path, "flir_v1", tmp_path / "o2", progress=False)


def _flir_v2_tree(root: Path) -> None:
    for folder_name, names, ch in (("images_rgb_train", ["a.jpg", "b.jpg"], 3), ("images_thermal_train", ["x.jpg", "y.jpg"], 1),
                                   ("video_rgb_test", ["v1.jpg", "v2.jpg", "v3.jpg"], 3),
                                   ("video_thermal_test", ["t1.jpg", "t2.jpg"], 1)):
        w, h = (1024, 768) if ch == 3 else (640, 512)
        for n in names:
            _img(root / folder_name / "data" / n, w, h, channels=ch)
        _coco(root / folder_name / "coco.json", [(f"data/{n}", w, h) for n in names],
              [(1, 1, [50, 60, 20, 40]), (1, 3, [200, 210, 60, 30])], FLIR_CATS)
    (root / "rgb_to_thermal_vid_map.json").write_text(json.dumps({"v1.jpg": "t1.jpg", "v2.jpg": "t2.jpg"}))


def test_flir_v2_video_map_and_pairs_file(tmp_path: Path) -> None:
    root = tmp_path / "flir_v2"
    _flir_v2_tree(root)
    ix = flir_v2.build_index(root, "flir_v2", tmp_path / "out", progress=False)
    assert sorted(p.original_id for p in ix.pairs) == ["test/v1", "test/v2"]
    assert [(e["original_id"], e["reason"]) for e in ix.excluded] == [("test/v3", "missing_thermal")]
    unpaired = [i for i in ix.issues if i["kind"] == "unpaired_frames"]
    assert len(unpaired) == 1 and unpaired[0]["count"] == 4 and "pairs file" in unpaired[0]["detail"]
    p = ix.by_pair_id()["flir_v2:test/v2"]
    assert p.thermal_path.endswith("video_thermal_test/data/t2.jpg") and p.rgb_size == (1024, 768)
    # only the first image of each folder is annotated (v1 and t1 here): person + car each
    assert len(ix.load_labels("rgb")["annotations"]) == 2 and len(ix.load_labels("thermal")["annotations"]) == 2
    pf = tmp_path / "pairs.json"
    pf.write_text(json.dumps([{"rgb": "images_rgb_train/data/a.jpg", "thermal": "images_thermal_train/data/x.jpg"}]))
    ix2 = flir_v2.build_index(root, "flir_v2", tmp_path / "out2", pairs_file=pf, progress=False)
    assert sorted(p.original_id for p in ix2.pairs) == ["test/v1", "test/v2", "train/a"]
    assert sorted((e["original_id"], e["reason"]) for e in ix2.excluded) == [
        ("test/v3", "missing_thermal"), ("train/b", "missing_thermal"), ("train/y", "missing_rgb")]


def test_generic_folder_on_msrs20(msrs20: Path, tmp_path: Path) -> None:
    ix = folder.build_index(msrs20, "msrs", tmp_path, progress=False)
    assert len(ix.pairs) == 20 and not ix.excluded
    assert ix.stats["labels"] == {"rgb": {"car": 25, "person": 27}, "thermal": {"car": 18, "person": 92}}
    dropped = {(i["modality"], i["class"]): i["count"] for i in ix.issues if i["kind"] == "class_dropped"}
    assert dropped == {("rgb", "bicycle"): 1, ("thermal", "bicycle"): 3}
    p = ix.pairs[0]
    assert p.rgb_size == p.thermal_size == (640, 480) and p.pair_id == "msrs:00004N"
    # a class map keeping bicycles as a third target class
    ix3 = folder.build_index(msrs20, "msrs", tmp_path / "b", classes=["person", "car", "bicycle"], progress=False)
    assert ix3.stats["labels"]["thermal"] == {"bicycle": 3, "car": 18, "person": 92}


def test_generic_folder_yolo_names_pairs_file_and_coco(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for s in ("f1", "f2"):
        _img(root / "rgb" / f"{s}.png", 64, 48)
        _img(root / "thermal" / f"{s}.png", 64, 48, channels=1)
    (root / "labels_thermal").mkdir()
    (root / "labels_thermal" / "f1.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.125 0.25\n")
    (root / "classes.txt").write_text("pedestrian\ncar\n")  # names only: id = line number
    _coco(root / "labels_rgb" / "coco.json", [("f1.png", 64, 48), ("f2.png", 64, 48)], [(2, 1, [4, 4, 8, 8])],
          [(1, "person")])
    (root / "split.csv").write_text("name,split,daynight\nf1,adapt,day\nf2,test,night\n")
    ix = folder.build_index(root, "tiny", tmp_path / "o", progress=False)
    th = boxes_by_image(ix.load_labels("thermal"))
    f1 = ix.by_pair_id()["tiny:f1"]
    assert th[f1.image_id].category_ids.tolist() == [2, 1]  # car -> 2; pedestrian -> person (default map) -> 1
    np.testing.assert_allclose(th[f1.image_id].boxes, [[24, 12, 40, 36], [12, 6, 20, 18]])
    assert len(th[ix.by_pair_id()["tiny:f2"].image_id].boxes) == 0  # YOLO: no file = no objects
    assert (f1.split, f1.daynight) == ("adapt", "day")
    rgb = boxes_by_image(ix.load_labels("rgb"))
    np.testing.assert_allclose(rgb[ix.by_pair_id()["tiny:f2"].image_id].boxes, [[4, 4, 12, 12]])
    # explicit pairs file crossing the stems
    (root / "pairs.json").write_text(json.dumps([{"rgb": "rgb/f1.png", "thermal": "thermal/f2.png", "id": "cross"}]))
    ix2 = folder.build_index(root, "tiny", tmp_path / "o2", progress=False)
    assert [p.pair_id for p in ix2.pairs] == ["tiny:cross"] and ix2.pairs[0].thermal_path.endswith("f2.png")
    (root / "classes.txt").unlink()
    (root / "pairs.json").unlink()
    with pytest.raises(InputError, match="classes.txt"):
        folder.build_index(root, "tiny", tmp_path / "o3", progress=False)
    (root / "classes.txt").write_text("0 person\n1 car\n")  # "id name" form
    assert len(folder.build_index(root, "tiny", tmp_path / "o4", progress=False).pairs) == 2
