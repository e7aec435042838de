"""The data layer's split cutting and index relocation (what the pipeline's index step calls)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data.index import Pair
from data.relocate import _rewrite, root_prefixes
from data.splits import SplitSettings, carve_val, split_coco, subset


def _pair(i: int, version: str = "v") -> Pair:
    return Pair(pair_id=f"{version}:{i:04d}", version=version, original_id=f"{i:04d}", rgb_path=f"/d/rgb/{i}.png",
                thermal_path=f"/d/thermal/{i}.png", rgb_size=(8, 8), thermal_size=(8, 8), split="adapt", image_id=i)


def test_carved_val_pairs_depend_only_on_pair_id_and_seed() -> None:
    pairs = [_pair(i) for i in range(1, 201)]
    val = carve_val(pairs, 0.25, seed=3)
    assert 30 < len(val) < 70                                            # ~50 expected of 200
    assert carve_val(list(reversed(pairs)), 0.25, seed=3) == val          # order does not matter
    more = pairs + [_pair(i) for i in range(201, 301)]
    assert carve_val(more, 0.25, seed=3) & set(range(1, 201)) == val      # new pairs never move old ones
    assert carve_val(pairs, 0.25, seed=4) != val
    assert carve_val(pairs, 0.0, seed=3) == frozenset()


def test_split_coco_and_subset_keep_annotations_with_their_images() -> None:
    ds = {"images": [{"id": 1, "split": "adapt"}, {"id": 2, "split": "test"}, {"id": 3, "split": "adapt"}],
          "annotations": [{"id": 1, "image_id": 1}, {"id": 2, "image_id": 2}, {"id": 3, "image_id": 3}],
          "categories": []}
    adapt = split_coco(ds, "adapt", drop=frozenset({3}))
    assert [im["id"] for im in adapt["images"]] == [1] and [a["id"] for a in adapt["annotations"]] == [1]
    assert [a["image_id"] for a in subset(ds, {2, 3})["annotations"]] == [2, 3]


def test_split_settings_refuse_two_val_sources_and_a_val_split_named_like_adapt() -> None:
    with pytest.raises(ValueError, match="at most one of data.val_split"):
        SplitSettings(val_split="val", val_fraction=0.2)
    with pytest.raises(ValueError, match="must differ"):
        SplitSettings(val_split="adapt")
    assert SplitSettings(val_fraction=0.1).has_val and not SplitSettings().has_val


def test_relocation_rewrites_every_path_under_a_root_and_nothing_else(tmp_path: Path) -> None:
    real = tmp_path / "store" / "msrs"
    real.mkdir(parents=True)
    link = tmp_path / "ws" / "datasets" / "msrs"
    link.parent.mkdir(parents=True)
    link.symlink_to(real, target_is_directory=True)
    prefixes = root_prefixes(link, "datasets/msrs")
    assert set(prefixes) == {str(link), os.path.realpath(real)}
    doc = {"pairs": [{"rgb_path": f"{real}/rgb/a.png", "thermal_path": f"{link}/thermal/a.png"}],
           "meta": {"root": str(real), "other": f"{tmp_path}/store/msrs2/x.png"}, "n": 3}
    out = _rewrite(doc, prefixes)
    assert out == {"pairs": [{"rgb_path": "datasets/msrs/rgb/a.png", "thermal_path": "datasets/msrs/thermal/a.png"}],
                   "meta": {"root": "datasets/msrs", "other": f"{tmp_path}/store/msrs2/x.png"}, "n": 3}
