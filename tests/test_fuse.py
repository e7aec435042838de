"""Fusion of pseudo-label sources (tasks/fuse.py) on hand-made COCO files with known answers."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import atomic
from core.coco import categories_from_names, new_dataset, save_dataset
from core.errors import InputError
from tasks.fuse import FuseParams, run_fuse

IMAGES = [{"id": 1, "file_name": "/x/n.png", "width": 200, "height": 100, "daynight": "night"},
          {"id": 2, "file_name": "/x/d.png", "width": 200, "height": 100, "daynight": "day"}]


def _ann(i: int, image: int, cat: int, xywh: list[float], score: float) -> dict:
    return {"id": i, "image_id": image, "category_id": cat, "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0,
            "score": score}


def _sources(tmp_path: Path) -> dict[str, Path]:
    cats = categories_from_names(["person", "car"])
    rgb = [_ann(1, 1, 1, [10, 10, 20, 40], 0.5),          # person, both sources agree
           _ann(2, 1, 2, [100, 50, 60, 30], 0.8),         # car, RGB only
           _ann(3, 2, 1, [150, 20, 10, 30], 0.4)]         # day person, RGB only
    thermal = [_ann(7, 1, 1, [11, 11, 20, 40], 0.5),      # the same person
               _ann(8, 1, 1, [60, 10, 15, 35], 0.35)]     # night person RGB missed
    out = {}
    for name, anns in (("rgb", rgb), ("thermal", thermal)):
        out[name] = save_dataset(tmp_path / f"{name}.json", new_dataset(IMAGES, anns, cats))
    return out


def _boxes(path: Path) -> list[dict]:
    return atomic.read_json(path)["annotations"]


def test_agreement_trusts_boxes_two_sources_agree_on(tmp_path: Path) -> None:
    rep = run_fuse(_sources(tmp_path), tmp_path / "f.json", FuseParams(method="agreement", iou=0.5))
    anns = _boxes(tmp_path / "f.json")
    assert rep.counts["boxes_out"] == 4 and rep.counts["boxes_agreed"] == 1
    agreed = next(a for a in anns if len(a["provenance"]["sources"]) == 2)
    assert agreed["score"] == pytest.approx(0.75)                       # noisy-OR of 0.5 and 0.5
    assert agreed["provenance"]["ann_ids"] == {"rgb": 1, "thermal": 7}
    assert agreed["bbox"] == pytest.approx([10.5, 10.5, 20, 40])          # score-weighted mean box
    night_person = next(a for a in anns if a["provenance"]["ann_ids"] == {"thermal": 8})
    assert night_person["score"] == pytest.approx(0.35) and night_person["source"] == "fused"


def test_per_class_and_day_night_thresholds(tmp_path: Path) -> None:
    p = FuseParams(method="agreement", iou=0.5, thresholds={"person": {"day": 0.45, "night": 0.3}, "car": 0.9})
    rep = run_fuse(_sources(tmp_path), tmp_path / "f.json", p)
    kept = {(a["image_id"], a["category_id"]) for a in _boxes(tmp_path / "f.json")}
    assert kept == {(1, 1)}                      # both night persons kept; car (0.8 < 0.9), day person (0.4 < 0.45) not
    assert len(_boxes(tmp_path / "f.json")) == 2
    assert rep.dropped == {"below_threshold_car": 1, "below_threshold_person": 1}
    assert p.threshold("person", None) == 0.45                         # unknown day/night: the stricter one


def test_single_source_factor_and_weights(tmp_path: Path) -> None:
    run_fuse(_sources(tmp_path), tmp_path / "f.json", FuseParams(single_source_factor=0.5, score_threshold=0.3))
    scores = sorted(a["score"] for a in _boxes(tmp_path / "f.json"))
    assert scores == pytest.approx([0.4, 0.75])          # car 0.8 -> 0.4 kept; 0.4 -> 0.2 and 0.35 -> 0.175 dropped


@pytest.mark.parametrize("method", ["wbf", "nms_union"])
def test_ensemble_boxes_methods_keep_provenance(tmp_path: Path, method: str) -> None:
    rep = run_fuse(_sources(tmp_path), tmp_path / "f.json", FuseParams(method=method, iou=0.5))
    anns = _boxes(tmp_path / "f.json")
    assert rep.counts["boxes_out"] == 4
    agreed = [a for a in anns if a["provenance"]["sources"] == ["rgb", "thermal"]]
    assert len(agreed) == 1
    if method == "wbf":                            # WBF averages over the 2 sources: a lone box keeps half its score
        car = next(a for a in anns if a["category_id"] == 2)
        assert car["score"] == pytest.approx(0.4, abs=1e-6)
        assert agreed[0]["score"] == pytest.approx(0.5, abs=1e-6)
    else:                                          # NMS keeps the best box of the group as it is
        assert agreed[0]["score"] == pytest.approx(0.5)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    src = _sources(tmp_path)
    other = save_dataset(tmp_path / "dog.json", new_dataset(IMAGES, [], categories_from_names(["dog"])))
    with pytest.raises(InputError, match="categories"):
        run_fuse({"rgb": src["rgb"], "dog": other}, tmp_path / "f.json", FuseParams())
    with pytest.raises(InputError, match=r"fuse.thresholds"):
        FuseParams.validated({"thresholds": {"person": 1.5}}, "params fuse", prefix="fuse")


def test_uncertain_boxes_become_ignore_regions_not_background(tmp_path: Path) -> None:
    """``ignore_from``: a fused box between it and the class threshold is kept as iscrowd, and the
    label-quality scoring does not count it as a prediction."""
    from tasks.quality import evaluate

    sources = _sources(tmp_path)
    sure = run_fuse(sources, tmp_path / "a.json", FuseParams(method="nms_union", score_threshold=0.5))
    unsure = run_fuse(sources, tmp_path / "b.json", FuseParams(method="nms_union", score_threshold=0.5, ignore_from=0.3))
    a, b = atomic.read_json(tmp_path / "a.json"), atomic.read_json(tmp_path / "b.json")
    crowd = [x for x in b["annotations"] if x.get("iscrowd")]
    assert len(crowd) == 2 and all(x["uncertain"] and 0.3 <= x["score"] < 0.5 for x in crowd)   # 0.4 and 0.35
    assert len(b["annotations"]) - len(crowd) == len(a["annotations"]) == sure.counts["boxes_out"]
    assert unsure.counts["boxes_uncertain"] == len(crowd)
    res_a, _ = evaluate(a, a, classes=["person", "car"])
    res_b, _ = evaluate(a, b, classes=["person", "car"])
    assert res_b.table["all"]["all"] == res_a.table["all"]["all"]
