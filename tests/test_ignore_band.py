"""``benchmarks/ignore_band.py``: what a student's boxes below its threshold would put in ignore regions."""
from __future__ import annotations

from benchmarks.ignore_band import band_counts, by_image_class


def _ds(boxes: list[tuple[int, str, list[float], float]], crowd: int = -1) -> dict:
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    ids = {c["name"]: c["id"] for c in cats}
    anns = [{"id": i, "image_id": im, "category_id": ids[c], "bbox": b, "score": s, **({"iscrowd": 1} if i == crowd else {})}
            for i, (im, c, b, s) in enumerate(boxes)]
    return {"images": [{"id": 1}, {"id": 2}], "annotations": anns, "categories": cats}


def test_band_counts_the_uncovered_low_boxes_the_real_ones_and_the_missed_objects_they_reach():
    gt = by_image_class(_ds([(1, "person", [0, 0, 10, 20], 1.0), (1, "person", [50, 50, 10, 20], 1.0),
                             (2, "person", [100, 0, 10, 20], 1.0), (1, "car", [0, 100, 40, 20], 1.0)]))
    fused = by_image_class(_ds([(1, "person", [0, 0, 10, 20], 0.9)]))      # the first person only
    student = by_image_class(_ds([
        (1, "person", [0, 0, 10, 20], 0.15),      # in the band but covered by a fused label: not a region
        (1, "person", [51, 50, 10, 20], 0.10),    # in the band, uncovered, a missed person: real, reaches it
        (1, "person", [200, 200, 10, 20], 0.06),  # in the band, uncovered, nobody there
        (2, "person", [100, 0, 10, 20], 0.30),    # a missed person, but above the band (a kept label's score)
        (2, "person", [300, 0, 10, 20], 0.04),    # below the band's floor
        (1, "car", [0, 100, 40, 20], 0.10),       # another class
    ]))
    assert band_counts(gt, student, fused, "person", 0.05, 0.2) == {"band": 2, "true": 1, "missed": 2, "reached": 1}
    assert band_counts(gt, student, fused, "car", 0.05, 0.35) == {"band": 1, "true": 1, "missed": 1, "reached": 1}
    # the band's top is exclusive: a box at the threshold is a label, not an ignore region
    assert band_counts(gt, student, fused, "person", 0.05, 0.10)["band"] == 1


def test_ignore_regions_already_in_a_file_are_not_boxes():
    ds = _ds([(1, "person", [0, 0, 10, 20], 0.9), (1, "person", [50, 0, 10, 20], 0.1)], crowd=1)
    assert by_image_class(ds) == {(1, "person"): [([0, 0, 10, 20], 0.9)]}
