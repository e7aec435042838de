"""The adaptation table: day/night columns, the gap closed on hand-made numbers, the per-round plot."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from tasks.compare import (comparison_markdown, evaluate_grouped, gap_closed, gap_table, plot_rounds,
                           split_groups)


def _gt() -> dict:
    """Four 100x100 images (two day, two night, one with no day/night key), one person and one car each."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100, **({"daynight": dn} if dn else {})}
              for i, dn in enumerate(["day", "day", "night", "night", None], start=1)]
    anns = []
    for im in images:
        anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1, "bbox": [10, 10, 20, 40],
                     "area": 800.0, "iscrowd": 0})
        anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 2, "bbox": [50, 50, 40, 30],
                     "area": 1200.0, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]}


def _perfect(gt: dict, image_ids: set[int], category: int | None = None) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if a["image_id"] in image_ids and category in (None, a["category_id"])]


def test_gap_closed_on_hand_made_numbers() -> None:
    assert gap_closed(0.6, 0.4, 0.8) == 0.5
    assert gap_closed(0.8, 0.4, 0.8) == 1.0
    assert gap_closed(0.4, 0.4, 0.8) == 0.0
    assert gap_closed(0.3, 0.4, 0.8) == -0.25            # worse than not adapting
    assert gap_closed(0.5, 0.5, 0.5) is None             # no gap to close
    assert gap_closed(0.5, 0.6, 0.4) is None             # the oracle below source-only: undefined
    assert gap_closed(None, 0.4, 0.8) is None
    assert gap_closed(0.5, math.nan, 0.8) is None


def test_gap_table_per_class_and_group() -> None:
    grouped = {"source_only": {"all": {"person": {"mAP_50": 0.4}, "car": {"mAP_50": 0.2}}},
               "oracle": {"all": {"person": {"mAP_50": 0.8}, "car": {"mAP_50": 0.6}}},
               "adapted": {"all": {"person": {"mAP_50": 0.7}, "car": {"mAP_50": 0.2}}}}
    assert gap_table(grouped) == {"adapted": {"all": {"person": 0.75, "car": 0.0}}}
    assert gap_table({k: v for k, v in grouped.items() if k != "oracle"}) == {}


def test_split_groups_by_daynight() -> None:
    groups = split_groups(_gt())
    assert list(groups) == ["all", "day", "night"]
    assert [im["id"] for im in groups["day"]["images"]] == [1, 2]
    assert {a["image_id"] for a in groups["night"]["annotations"]} == {3, 4}
    assert len(groups["all"]["images"]) == 5              # the image without a key counts in "all" only


def test_evaluate_grouped_day_night_columns() -> None:
    gt = _gt()
    grouped = evaluate_grouped(gt, {"source_only": _perfect(gt, {1, 2}),           # sees nothing at night
                                    "oracle": _perfect(gt, {1, 2, 3, 4, 5}),
                                    "adapted": _perfect(gt, {1, 2, 3, 4, 5}, category=1)})
    so, ad = grouped["source_only"], grouped["adapted"]
    assert so["day"]["person"]["mAP_50"] == pytest.approx(1.0) and so["night"]["person"]["mAP_50"] == pytest.approx(0.0)
    assert ad["night"]["person"]["mAP_50"] == pytest.approx(1.0) and ad["night"]["car"]["mAP_50"] == pytest.approx(0.0)
    assert grouped["oracle"]["all"]["all"]["mAP_50"] == pytest.approx(1.0)
    gaps = gap_table(grouped)["adapted"]
    assert gaps["night"]["person"] == pytest.approx(1.0) and gaps["night"]["car"] == pytest.approx(0.0)
    md = comparison_markdown(grouped, order=["source_only", "adapted", "oracle"],
                             describe={"adapted": "RGB + thermal, fused"}, sizes={"day": 2, "night": 2, "all": 5})
    lines = md.splitlines()
    assert "| model | person day | person night | person all | car day |" in md
    adapted = next(x for x in lines if x.startswith("| adapted: RGB + thermal, fused"))
    # person night 1.000; gap closed person 100 %, car (0 - 41/101) / (1 - 41/101) = -68 % (COCO's 101 recall points)
    assert adapted.split(" | ")[2] == "1.000" and adapted.endswith("| 100 % | -68 % |")
    assert any(x.startswith("| oracle (upper bound)") for x in lines)
    assert "images: day 2, night 2, all 5" in md


def test_comparison_without_oracle_says_why() -> None:
    gt = _gt()
    grouped = evaluate_grouped(gt, {"source_only": _perfect(gt, {1}), "adapted": _perfect(gt, {1, 2})})
    md = comparison_markdown(grouped)
    assert "gap closed" not in md.splitlines()[2] and "No oracle column" in md


def test_plot_rounds_writes_a_png(tmp_path: Path) -> None:
    gt = _gt()
    grouped = evaluate_grouped(gt, {"source_only": _perfect(gt, {1}), "oracle": _perfect(gt, {1, 2, 3, 4, 5}),
                                    "round1": _perfect(gt, {1, 2}), "adapted": _perfect(gt, {1, 2, 3})})
    out = plot_rounds(grouped, ["round1", "adapted"], tmp_path / "plot" / "rounds.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert not list(out.parent.glob("*.tmp*"))
