"""Streamed COCO reading and writing (``core.json_stream``, ``core.coco.spool_dataset``,
``core.coco.CocoWriter``): the same values and bytes as the whole-file functions, in any chunking,
with the same refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import atomic, coco
from core.coco import CocoFormatError, CocoWriter, spool_dataset
from core.errors import InputError
from core.json_stream import ARRAY, iter_object


def _dataset() -> dict:
    images = [{"id": i, "file_name": f"f{i}.png", "width": 64, "height": 48, "pair_id": f"p\u00e9{i}"}
              for i in (5, 3, 9)]
    anns = [{"id": 10 + k, "image_id": (9, 5, 9, 3)[k], "category_id": 1 + k % 2,
             "bbox": [1.5 + k, 2.25, 10.0 / 3, 4e-7], "area": 1.0, "iscrowd": 0, "score": 0.123456,
             "refine": {"decision": "keep", "reason": None}} for k in range(4)]
    return {"info": {"stage": "x", "nested": {"a": [1, 2.5e20]}}, "licenses": [{"id": 1}], "images": images,
            "annotations": anns, "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
            "extra": "tail"}


def _rebuild(path: Path, chunk: int) -> dict:
    out: dict = {}
    for key, i, v in iter_object(path, ("images", "annotations"), chunk=chunk):
        if v is ARRAY:
            out[key] = []
        elif i is None:
            out[key] = v
        else:
            out[key].append(v)
    return out


@pytest.mark.parametrize("indent", [None, 2])
def test_iter_object_gives_the_parsed_file_in_any_chunking(tmp_path: Path, indent: int | None) -> None:
    ds = _dataset()
    ds["empty"] = []
    path = atomic.write_json(tmp_path / "d.json", ds, indent=indent)
    for chunk in (1, 2, 3, 7, 50, 1 << 20):
        got = _rebuild(path, chunk)
        assert got == json.loads(path.read_text()) and list(got) == list(ds)


@pytest.mark.parametrize("text", ['{"images": [1, 2', '{"a": 1} x', '{"images": [1 2]}', '{"a": 1,}', '{"a" 1}'])
def test_iter_object_refuses_invalid_json(tmp_path: Path, text: str) -> None:
    (tmp_path / "bad.json").write_text(text)
    for chunk in (1, 4, 100):
        with pytest.raises(ValueError):
            _rebuild(tmp_path / "bad.json", chunk)


def test_writer_writes_the_bytes_save_dataset_writes(tmp_path: Path) -> None:
    ds = _dataset()
    extra = {k: v for k, v in ds.items() if k not in ("info", "images", "annotations", "categories")}
    coco.save_dataset(tmp_path / "whole.json",
                      {**coco.new_dataset(ds["images"], ds["annotations"], ds["categories"], ds["info"]), **extra})
    with CocoWriter(tmp_path / "streamed.json", ds["info"], ds["categories"], extra) as w:
        for im in ds["images"]:
            w.add_image(im)
        for a in ds["annotations"]:
            w.add_annotation(a)
    assert (w.n_images, w.n_annotations) == (3, 4)
    assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "whole.json").read_bytes()
    with CocoWriter(tmp_path / "empty.json", {}, ds["categories"]):
        pass
    assert coco.load_dataset(tmp_path / "empty.json") == coco.new_dataset([], [], ds["categories"])


def test_writer_validates_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    ds = _dataset()
    out = tmp_path / "o.json"
    with pytest.raises(CocoFormatError, match=r"annotations\[0\]: image_id 9 is not in images"):
        with CocoWriter(out, {}, ds["categories"]) as w:
            w.add_image(ds["images"][0])
            w.add_annotation(ds["annotations"][0])          # its image (9) was not added
    with pytest.raises(CocoFormatError, match=r"images\[1\]: duplicate image id 5"):
        with CocoWriter(out, {}, ds["categories"]) as w:
            w.add_image(ds["images"][0])
            w.add_image(ds["images"][0])
    with pytest.raises(RuntimeError):
        with CocoWriter(out, {}, ds["categories"]) as w:
            w.add_image(ds["images"][0])
            raise RuntimeError("a failure mid-stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_spool_gives_what_load_dataset_gives(tmp_path: Path) -> None:
    ds = _dataset()
    ds["annotations"][1]["extra_nan"] = float("nan")
    path = atomic.write_json(tmp_path / "d.json", ds, indent=2)
    whole = coco.load_dataset(path)
    seen: list[int] = []
    with spool_dataset(path, spool_dir=tmp_path, image_check=lambda i, im: seen.append(im["id"])) as sp:
        assert [sp.image(i) for i in range(len(sp.image_span))] == whole["images"]
        assert [sp.annotation(j) for j in range(len(sp.ann_span))] == whole["annotations"]
        assert sp.top == {k: v for k, v in whole.items() if k not in ("images", "annotations")}
        assert sp.ann_image.tolist() == [2, 0, 2, 1] and sp.ann_category.tolist() == [1, 2, 1, 2]
        order, starts = sp.annotations_by_image()
        assert [order[starts[i]:starts[i + 1]].tolist() for i in range(3)] == [[1], [3], [0, 2]]
    assert seen == [5, 3, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]     # the spool is an unlinked file


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[3\]: duplicate image id 5"),
    (lambda d: d["annotations"][2].update(image_id=77), r"annotations\[2\]: image_id 77 is not in images"),
    (lambda d: d["annotations"][3].update(category_id=7), r"annotations\[3\]: category_id 7 is not in categories"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 2]), r"annotations\[0\]: bbox has negative size"),
    (lambda d: d.pop("categories"), "missing list 'categories'"),
])
def test_spool_refuses_what_load_dataset_refuses(tmp_path: Path, mutate, match: str) -> None:
    ds = _dataset()
    mutate(ds)
    path = atomic.write_json(tmp_path / "d.json", ds)
    with pytest.raises(CocoFormatError, match=match):
        coco.load_dataset(path)
    with pytest.raises(CocoFormatError, match=match):
        spool_dataset(path)


def test_spool_refuses_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="file not found"):
        spool_dataset(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CocoFormatError, match="a results file"):
        spool_dataset(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text('{"images": [}')
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        spool_dataset(tmp_path / "bad.json")
    ds = _dataset()
    ds["images"][1]["file_name"] = "../../etc/x.png"
    path = atomic.write_json(tmp_path / "esc.json", ds)
    with pytest.raises(InputError, match=r"images\[1\]"):
        spool_dataset(path, image_check=lambda i, im: coco.refuse_escaping_file_name(i, im, tmp_path, path))
