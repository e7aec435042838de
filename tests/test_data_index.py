"""The paired index: round trip, shared ids, selection, merging versions, per-version exclusion lists."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.adapters.folder import build_index
from data.index import load_index
from data.index_build import save_exclusions
from data.merge import merge_indexes
from data.synthetic import generate
from core.coco import boxes_by_image, load_dataset
from core.errors import InputError


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    generate(root / "a", 8, seed=1, progress=False)
    generate(root / "b", 6, seed=2, progress=False)
    return root / "a", root / "b"


def test_index_roundtrip_and_shared_ids(two_sets, tmp_path: Path) -> None:
    a, _ = two_sets
    ix = build_index(a, "syn_a", tmp_path, progress=False)
    assert ix.path == tmp_path / "syn_a.json" and len(ix.pairs) == 8 and not ix.excluded
    loaded = load_index(ix.path)
    assert loaded.pairs == ix.pairs and loaded.versions == ["syn_a"] and loaded.classes == ["person", "car"]
    p = loaded.pairs[0]
    assert p.pair_id == "syn_a:syn_000000" and p.rgb_size == (320, 256) and p.thermal_size == (256, 208)
    assert Path(p.rgb_path).is_absolute() and Path(p.thermal_path).exists()
    rgb, th = loaded.load_labels("rgb"), loaded.load_labels("thermal")
    imgs_r, imgs_t = loaded.load_images("rgb"), loaded.load_images("thermal")
    for ds in (rgb, th, imgs_r, imgs_t):
        assert [im["id"] for im in ds["images"]] == [q.image_id for q in loaded.pairs]
        im = ds["images"][0]
        assert {"file_name", "width", "height", "pair_id", "version", "original_id", "split", "daynight"} <= set(im)
        assert im["pair_id"] == p.pair_id and Path(im["file_name"]).exists()
    assert imgs_t["images"][0]["file_name"] == p.thermal_path and imgs_t["annotations"] == []
    # labels equal the generator's, image by image (COCO xywh -> xyxy and back without drift)
    src = boxes_by_image(load_dataset(a / "labels_thermal" / "coco.json"))
    got = boxes_by_image(th)
    for q in loaded.pairs:
        np.testing.assert_allclose(got[q.image_id].boxes, src[int(q.original_id[-6:]) + 1].boxes, atol=1e-3)
    # selection
    splits = {q.split for q in loaded.pairs}
    assert splits <= {"adapt", "test"}
    assert sum(len(loaded.select(split=s)) for s in splits) == 8
    night = loaded.select(daynight="night")
    assert all(q.daynight == "night" for q in night) and len(night) + len(loaded.select(daynight="day")) == 8
    assert loaded.select(version="other") == [] and len(loaded.select(version=["syn_a", "x"])) == 8


def test_merge_keeps_versions_apart(two_sets, tmp_path: Path) -> None:
    a, b = two_sets
    ia = build_index(a, "syn_a", tmp_path, progress=False)
    ib = build_index(b, "syn_b", tmp_path, progress=False)
    m = merge_indexes([ia.path, ib.path], tmp_path / "merged.json")
    assert len(m.pairs) == 14 and m.versions == ["syn_a", "syn_b"]
    assert len({p.pair_id for p in m.pairs}) == 14 and [p.image_id for p in m.pairs] == list(range(1, 15))
    # the same original id exists in both versions and stays two different pairs
    same = [p for p in m.pairs if p.original_id == "syn_000000"]
    assert {p.version for p in same} == {"syn_a", "syn_b"} and len({p.rgb_path for p in same}) == 2
    loaded = load_index(m.path)
    th = boxes_by_image(loaded.load_labels("thermal"))
    orig_b = boxes_by_image(ib.load_labels("thermal"))
    for p in loaded.select(version="syn_b"):
        ob = ib.by_pair_id()[p.pair_id]
        np.testing.assert_allclose(th[p.image_id].boxes, orig_b[ob.image_id].boxes)
    coco_imgs = {im["id"]: im for im in loaded.load_labels("rgb")["images"]}
    assert all(coco_imgs[p.image_id]["pair_id"] == p.pair_id for p in loaded.pairs)
    with pytest.raises(InputError, match="pair id syn_a:syn_000000 is in both"):
        merge_indexes([ia.path, ia.path], tmp_path / "bad.json")
    ic = build_index(b, "syn_c", tmp_path / "c", classes=["car", "person"], progress=False)
    with pytest.raises(InputError, match="target classes differ"):
        merge_indexes([ia.path, ic.path], tmp_path / "bad.json")


def test_exclusion_lists_are_per_version(two_sets, tmp_path: Path) -> None:
    a, b = two_sets
    excl = save_exclusions(tmp_path / "syn_a.exclusions.json", "syn_a",
                           [{"version": "syn_a", "original_id": "syn_000003", "reason": "blurred", "detail": "by eye"}])
    ia = build_index(a, "syn_a", tmp_path / "a", exclusions=excl, progress=False)
    assert len(ia.pairs) == 7 and [e["original_id"] for e in ia.excluded] == ["syn_000003"]
    assert ia.excluded[0]["reason"] == "excluded_by_list" and "blurred" in ia.excluded[0]["detail"]
    with pytest.raises(InputError, match="exclusion list is for dataset version 'syn_a', not 'syn_b'"):
        build_index(b, "syn_b", tmp_path / "b", exclusions=excl, progress=False)


def test_merge_with_unlabelled_modality(tmp_path: Path, two_sets) -> None:
    """A version without RGB labels must not appear as 'labelled, no objects' in the merged RGB labels."""
    import shutil

    a, b = two_sets
    nolab = tmp_path / "nolab"
    shutil.copytree(b, nolab, ignore=shutil.ignore_patterns("labels_rgb"))
    ia = build_index(a, "syn_a", tmp_path, progress=False)
    ib = build_index(nolab, "syn_n", tmp_path, progress=False)
    assert ib.rgb_labels is None and ib.thermal_labels is not None
    m = merge_indexes([ia, ib], tmp_path / "m.json")
    rgb = m.load_labels("rgb")
    assert {im["version"] for im in rgb["images"]} == {"syn_a"} and m.meta["labels_partial"] == {"rgb": ["syn_n"]}
    assert len(m.load_images("rgb")["images"]) == 14
