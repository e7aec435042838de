"""Stage ``pseudo``: thresholds, class mapping, class-wise NMS, min size, cap, histograms, reasons."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.coco import annotation, categories_from_names, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from tasks.pseudo import PseudoParams, histogram_path, run_pseudo
from core.stage_report import StageReport, report_path

DET_CLASSES = ("person", "bicycle", "car", "truck", "bus")  # detector class order -> ids 1..5
PERSON, BICYCLE, CAR, TRUCK, BUS = 1, 2, 3, 4, 5


def _write_dets(path: Path, dets_per_image: list[list[tuple[int, list[float], float | None]]]) -> Path:
    """An infer-style COCO file: (detector category id, xyxy box, score or None) per detection."""
    images, anns = [], []
    for i, dets in enumerate(dets_per_image, start=1):
        images.append({"id": i, "file_name": f"/data/rgb/{i:03d}.png", "width": 320, "height": 256, "pair_id": f"v:{i}"})
        for cat, box, score in dets:
            extra = {"source": "rgb_teacher"}
            if score is not None:
                extra["score"] = score
            anns.append(annotation(len(anns) + 1, i, cat, box, **extra))
    save_dataset(path, new_dataset(images, anns, categories_from_names(DET_CLASSES)))
    return path


def _boxes(ds: dict, image_id: int) -> list[tuple[str, list[float], float]]:
    names = {c["id"]: c["name"] for c in ds["categories"]}
    return [(names[a["category_id"]], a["bbox"], a["score"]) for a in ds["annotations"] if a["image_id"] == image_id]


def test_thresholds_per_class_and_class_map(tmp_path: Path) -> None:
    inp = _write_dets(tmp_path / "dets.json", [[
        (PERSON, [10, 10, 30, 60], 0.71),    # person >= 0.7: kept
        (PERSON, [100, 10, 120, 60], 0.69),  # person < 0.7: below_threshold
        (CAR, [10, 100, 80, 140], 0.55),     # car >= 0.5: kept
        (CAR, [100, 100, 170, 140], 0.45),   # car < 0.5: below_threshold
        (TRUCK, [200, 100, 280, 160], 0.9),  # truck: unmapped by default
        (BICYCLE, [200, 10, 230, 40], 0.95),  # bicycle: never mapped
    ]])
    out = tmp_path / "pseudo.json"
    rep = run_pseudo(inp, out, PseudoParams(thresholds={"person": 0.7, "car": 0.5}))
    ds = load_dataset(out)
    assert [c["name"] for c in ds["categories"]] == ["person", "car"]
    got = _boxes(ds, 1)
    assert [(n, s) for n, _, s in got] == [("person", 0.71), ("car", 0.55)]
    assert rep.dropped == {"below_threshold": 2, "unmapped_class": 2}
    assert rep.counts["boxes_out"] == 2 and rep.counts["kept_person"] == 1 and rep.counts["kept_car"] == 1
    a = ds["annotations"][0]
    assert a["source"] == "rgb_teacher" and a["detector_class"] == "person" and a["infer_ann_id"] == 1
    assert StageReport.load(report_path(out)).dropped == rep.dropped

    # the same detections at 0.5 for person: one more person, nothing else changes
    rep2 = run_pseudo(inp, tmp_path / "p05.json", PseudoParams(thresholds={"person": 0.5, "car": 0.5}))
    assert rep2.counts["kept_person"] == 2 and rep2.dropped["below_threshold"] == 1

    # truck/bus -> car on request
    rep3 = run_pseudo(inp, tmp_path / "veh.json", PseudoParams(vehicles_as_car=True))
    assert rep3.counts["kept_car"] == 2 and rep3.dropped["unmapped_class"] == 1
    anns = load_dataset(tmp_path / "veh.json")["annotations"]
    assert any(a["detector_class"] == "truck" and a["category_id"] == 2 for a in anns)


def test_classwise_nms_after_mapping(tmp_path: Path) -> None:
    inp = _write_dets(tmp_path / "dets.json", [[
        (PERSON, [10, 10, 40, 90], 0.9),
        (PERSON, [12, 12, 41, 92], 0.8),      # IoU ~0.9 with the first person: suppressed
        (CAR, [10, 10, 40, 90], 0.85),        # same box, other class: kept (class-wise NMS)
        (CAR, [100, 100, 200, 160], 0.6),
        (TRUCK, [102, 101, 201, 161], 0.8),   # truck on the same vehicle: wins after truck->car
    ]])
    rep = run_pseudo(inp, tmp_path / "a.json", PseudoParams(nms_iou=0.5, vehicles_as_car=True))
    got = _boxes(load_dataset(tmp_path / "a.json"), 1)
    assert sorted((n, s) for n, _, s in got) == [("car", 0.8), ("car", 0.85), ("person", 0.9)]
    assert rep.dropped == {"nms": 2}
    # without NMS everything above threshold stays
    rep = run_pseudo(inp, tmp_path / "b.json", PseudoParams(nms_iou=1.0, vehicles_as_car=True))
    assert rep.counts["boxes_out"] == 5 and "nms" not in rep.dropped


def test_min_size_and_max_per_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dets = [(PERSON, [10 + 30 * k, 10, 30 + 30 * k, 50], float(s)) for k, s in enumerate(rng.uniform(0.6, 0.99, 8))]
    dets += [(CAR, [10, 200, 13, 240], 0.99), (CAR, [50, 200, 90, 203.5], 0.99)]  # 3 px wide / 3.5 px high
    inp = _write_dets(tmp_path / "dets.json", [dets, []])
    rep = run_pseudo(inp, tmp_path / "o.json", PseudoParams(min_size=4, max_per_image=5))
    ds = load_dataset(tmp_path / "o.json")
    scores = [a["score"] for a in ds["annotations"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert min(scores) == pytest.approx(sorted((d[2] for d in dets[:8]), reverse=True)[4], abs=1e-6)
    assert rep.dropped == {"too_small": 2, "max_per_image": 3}
    assert [im["id"] for im in ds["images"]] == [1, 2]  # images without boxes stay (they are negatives)


def test_histograms_and_gt_without_scores(tmp_path: Path) -> None:
    inp = _write_dets(tmp_path / "gt.json", [[(PERSON, [10, 10, 40, 90], None), (CAR, [50, 50, 120, 100], None)]])
    out = tmp_path / "p.json"
    rep = run_pseudo(inp, out, PseudoParams(thresholds={"person": 0.99}))
    assert rep.counts["boxes_out"] == 2  # no score = a perfect teacher (score 1.0)
    for cls in ("person", "car"):
        png = histogram_path(out, cls)
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert rep.outputs[f"score_hist_{cls}"] == str(png)
    assert rep.counts["mapped_person"] == 1 and rep.counts["mapped_car"] == 1
    json.loads(report_path(out).read_text())


def test_bad_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a target class"):
        PseudoParams(thresholds={"truck": 0.5})
    with pytest.raises(ValidationError, match="not a target class"):
        PseudoParams(class_map={"truck": "lorry"})
    with pytest.raises(ValidationError, match="score_threshold"):
        PseudoParams(score_threshold=1.5)
    with pytest.raises(ValidationError, match="nms_iou"):
        PseudoParams(nms_iou=0.0)
    with pytest.raises(ValidationError, match="unique"):
        PseudoParams(target_classes=("car", "car"))
    with pytest.raises(ValidationError, match="default_threshold"):      # renamed to score_threshold
        PseudoParams(default_threshold=0.5)
    # the form users see: one InputError naming the key, the value and the allowed range
    with pytest.raises(InputError, match=r"thresholds\.person: .*got 1\.5; allowed: \[0, 1\]"):
        PseudoParams.validated({"thresholds": {"person": 1.5}}, "pseudo parameters")
    with pytest.raises(InputError, match=r"nms_iou: .*got 0\.0; allowed: \(0, 1\]"):
        PseudoParams.validated({"nms_iou": 0.0}, "pseudo parameters")
    inp = _write_dets(tmp_path / "dets.json", [[(PERSON, [1, 1, 20, 20], 0.9)]])
    with pytest.raises(InputError, match="no class-map entry"):
        run_pseudo(inp, tmp_path / "o.json", PseudoParams(target_classes=("dog",)))


def test_cli_bad_option_value_is_an_input_error(tmp_path: Path, capsys) -> None:
    """A bad option value exits 2 with the key, the value and the range (no pydantic traceback)."""
    from rgb2thermal_cli.main import main

    inp = _write_dets(tmp_path / "dets.json", [[(PERSON, [1, 1, 20, 20], 0.9)]])
    assert main(["stage", "pseudo", "--in", str(inp), "--out", str(tmp_path / "o.json"),
                 "--score-threshold", "1.7", "--threshold", "car=-1"]) == 2
    err = capsys.readouterr().err
    assert "rgb2thermal stage pseudo" in err and "Traceback" not in err
    assert "score_threshold: " in err and "got 1.7; allowed: [0, 1]" in err
    assert "thresholds.car: " in err and "got -1.0" in err
    assert main(["stage", "pseudo", "--in", str(inp), "--out", str(tmp_path / "o.json"), "--score-threshold", "0.5",
                 "--no-histogram"]) == 0
