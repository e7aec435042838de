"""The synthetic paired-scene generator: layout, determinism, extension, exact geometry, modality contrast."""
from __future__ import annotations

import csv
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from data.synthetic import default_homography, generate, stem_for
from registration.warp import warp_boxes
from core.boxes import iou_matrix
from core.coco import boxes_by_image, load_dataset
from core.errors import InputError


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    generate(out, 24, seed=7, progress=False)
    return out


def test_layout_and_label_files(syn: Path) -> None:
    import cv2

    rgb = load_dataset(syn / "labels_rgb" / "coco.json")
    th = load_dataset(syn / "labels_thermal" / "coco.json")
    assert [c["name"] for c in rgb["categories"]] == ["person", "car"] and [c["id"] for c in rgb["categories"]] == [1, 2]
    assert [im["id"] for im in rgb["images"]] == [im["id"] for im in th["images"]] == list(range(1, 25))
    im = cv2.imread(str(syn / "rgb" / rgb["images"][0]["file_name"]), cv2.IMREAD_UNCHANGED)
    t = cv2.imread(str(syn / "thermal" / th["images"][0]["file_name"]), cv2.IMREAD_UNCHANGED)
    assert im.shape == (256, 320, 3) and t.shape == (208, 256) and t.dtype == np.uint8
    meta = json.loads((syn / "homography.json").read_text())
    assert np.allclose(meta["H_rgb_to_thermal"], default_homography()) and meta["rgb_size"] == [320, 256]
    rows = list(csv.DictReader(open(syn / "split.csv")))
    assert [r["name"] for r in rows] == [stem_for(i) for i in range(24)]
    assert {r["split"] for r in rows} == {"adapt", "test"} and {r["daynight"] for r in rows} == {"day", "night"}
    assert len(rgb["annotations"]) >= 24 and len(th["annotations"]) >= 0.8 * len(rgb["annotations"])


def test_extension_is_identical_to_one_call(tmp_path: Path) -> None:
    generate(tmp_path / "one", 9, seed=3, progress=False)
    generate(tmp_path / "two", 5, seed=3, progress=False)
    info = generate(tmp_path / "two", 4, seed=3, start_index=5, progress=False)
    assert info.n_pairs == 9 and info.generated == [stem_for(i) for i in range(5, 9)]
    cmp = filecmp.dircmp(tmp_path / "one", tmp_path / "two")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for sub in ("rgb", "thermal", "labels_rgb", "labels_thermal"):
        c = filecmp.dircmp(tmp_path / "one" / sub, tmp_path / "two" / sub)
        assert not c.diff_files and not c.left_only and not c.right_only, sub
    # another seed gives other images
    generate(tmp_path / "other", 2, seed=4, progress=False)
    first = "rgb/syn_000000.png"
    assert (tmp_path / "other" / first).read_bytes() != (tmp_path / "one" / first).read_bytes()
    with pytest.raises(InputError, match="different parameters"):
        generate(tmp_path / "one", 2, seed=99, start_index=9, progress=False)
    with pytest.raises(InputError, match="different parameters"):
        generate(tmp_path / "one", 2, seed=3, night_hidden_people=0.8, start_index=9, progress=False)
    meta = json.loads((tmp_path / "one" / "homography.json").read_text())
    (tmp_path / "one" / "homography.json").write_text(json.dumps({**meta, "schema": "rgb2thermal.synthetic/1"}))
    with pytest.raises(InputError, match="another generator version"):
        generate(tmp_path / "one", 2, seed=3, start_index=9, progress=False)


def test_thermal_boxes_are_rgb_boxes_through_h(syn: Path) -> None:
    H = default_homography()
    rgb = boxes_by_image(load_dataset(syn / "labels_rgb" / "coco.json"))
    th = boxes_by_image(load_dataset(syn / "labels_thermal" / "coco.json"))
    checked = 0
    for img_id, r in rgb.items():
        inside = (r.boxes[:, 0] > 0.5) & (r.boxes[:, 1] > 0.5) & (r.boxes[:, 2] < 319.5) & (r.boxes[:, 3] < 255.5)
        w = warp_boxes(r.boxes[inside], H, (256, 208))
        t = th[img_id]
        assert len(w.boxes) <= len(t.boxes)
        if len(w.boxes):
            best = iou_matrix(w.boxes, t.boxes).max(axis=1)
            assert np.all(best > 0.99), (img_id, best)
            checked += len(w.boxes)
    assert checked > 20


def _ring_contrast(img: np.ndarray, box: np.ndarray) -> float:
    """Mean inside the box minus mean of a ring around it (grey levels)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    h, w = img.shape[:2]
    m = max(3, (x2 - x1) // 2)
    outer = img[max(y1 - m, 0):min(y2 + m, h), max(x1 - m, 0):min(x2 + m, w)].astype(np.float64)
    inner = img[y1:y2, x1:x2].astype(np.float64)
    ring = (outer.sum() - inner.sum()) / max(outer.size - inner.size, 1)
    return float(inner.mean() - ring)


def test_modalities_differ_as_designed(syn: Path) -> None:
    """People are hot in thermal (more so at night, relative to the background); RGB night is dark."""
    import cv2

    th = load_dataset(syn / "labels_thermal" / "coco.json")
    rgb = load_dataset(syn / "labels_rgb" / "coco.json")
    dn = {im["id"]: im["daynight"] for im in th["images"]}
    contrast = {"day": [], "night": []}
    for img_id, b in boxes_by_image(th).items():
        t = cv2.imread(str(syn / "thermal" / f"syn_{img_id - 1:06d}.png"), cv2.IMREAD_GRAYSCALE)
        for box, c in zip(b.boxes, b.category_ids):
            if c == 1 and box[3] - box[1] >= 12:
                contrast[dn[img_id]].append(_ring_contrast(t, box))
    assert np.mean(contrast["night"]) > np.mean(contrast["day"]) > 10
    bright = {"day": [], "night": []}
    for im in rgb["images"]:
        bright[im["daynight"]].append(cv2.imread(str(syn / "rgb" / im["file_name"])).mean())
    assert np.mean(bright["night"]) < 0.5 * np.mean(bright["day"])


def test_hidden_night_people_are_in_thermal_only(tmp_path: Path) -> None:
    """The real night problem: a hidden person is in the thermal frame and labels, not in the RGB ones.

    Two all-night sets from the same seed, every person hidden vs (almost) none: the random stream is
    the same, so thermal frames and labels are byte-identical; the RGB labels lose exactly the people,
    and the RGB frames differ only inside the people's boxes.
    """
    import cv2

    hid = generate(tmp_path / "hidden", 6, seed=5, night_fraction=1.0, night_hidden_people=1.0, progress=False)
    vis = generate(tmp_path / "seen", 6, seed=5, night_fraction=1.0, night_hidden_people=1e-12, progress=False)
    for stem in hid.stems:
        assert (hid.out_dir / "thermal" / f"{stem}.png").read_bytes() == (vis.out_dir / "thermal" / f"{stem}.png").read_bytes()
    th = [load_dataset(d / "labels_thermal" / "coco.json")["annotations"] for d in (hid.out_dir, vis.out_dir)]
    assert th[0] == th[1] and any(a["category_id"] == 1 for a in th[0])
    rgb_h, rgb_v = (load_dataset(d / "labels_rgb" / "coco.json")["annotations"] for d in (hid.out_dir, vis.out_dir))
    people = [a for a in rgb_v if a["category_id"] == 1]
    assert people and not any(a["category_id"] == 1 for a in rgb_h)
    assert [a["bbox"] for a in rgb_h] == [a["bbox"] for a in rgb_v if a["category_id"] != 1]
    outside_changed = 0
    for im in load_dataset(vis.out_dir / "labels_rgb" / "coco.json")["images"]:
        a = cv2.imread(str(hid.out_dir / "rgb" / im["file_name"])).astype(int)
        b = cv2.imread(str(vis.out_dir / "rgb" / im["file_name"])).astype(int)
        mask = np.ones(a.shape[:2], dtype=bool)
        for p in people:
            if p["image_id"] == im["id"]:
                x, y, w, h = p["bbox"]
                mask[max(int(y) - 3, 0):int(y + h) + 4, max(int(x) - 3, 0):int(x + w) + 4] = False
        outside_changed += int((np.abs(a - b).max(axis=2)[mask] > 0).sum())
    assert outside_changed == 0


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="night_hidden_people"):
        generate(tmp_path, 1, night_hidden_people=1.5, progress=False)
    with pytest.raises(InputError, match="classes"):
        generate(tmp_path, 1, classes=("person", "dog"), progress=False)
    with pytest.raises(InputError, match="flips"):
        generate(tmp_path, 1, homography=np.diag([-1.0, 1.0, 1.0]) @ np.array([[1, 0, -320], [0, 1, 0], [0, 0, 1.0]]),
                 thermal_size=(320, 256), progress=False)
