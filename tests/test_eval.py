"""COCO evaluation: the classic traps must show, tables must have the promised shape."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.coco import annotation, categories_from_names, new_dataset, save_dataset
from core.errors import InputError
from tasks.evaluate import (DASH, FOOTNOTE, METRICS, cross_dataset_matrix, evaluate, evaluate_runs,
                            format_markdown, format_matrix_markdown, write_report)


def _gt(n_images: int = 12, seed: int = 0) -> dict:
    """Non-square boxes of medium/large size at varied positions; person taller than wide, car wider."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 640, "height": 480})
        for _ in range(3):
            x, y = rng.uniform(10, 400), rng.uniform(10, 200)
            anns.append(annotation(len(anns) + 1, i, 1, [x, y, x + rng.uniform(30, 50), y + rng.uniform(90, 140)]))
            x, y = rng.uniform(10, 400), rng.uniform(200, 300)
            anns.append(annotation(len(anns) + 1, i, 2, [x, y, x + rng.uniform(120, 200), y + rng.uniform(50, 80)]))
    return new_dataset(images, anns, categories_from_names(["person", "car"]))


def _as_results(gt: dict, transform=lambda b: b) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": transform(list(a["bbox"])),
             "score": 0.9} for a in gt["annotations"]]


def test_gt_against_itself_is_perfect():
    gt = _gt()
    r = evaluate(gt, _as_results(gt))
    for cat in ("person", "car"):
        assert r.per_category[cat]["mAP"] == pytest.approx(1.0)
        assert r.per_category[cat]["mAP_50"] == pytest.approx(1.0)
        assert r.per_category[cat]["AR_100"] == pytest.approx(1.0)
        assert r.per_category[cat]["mAP_s"] is None  # no small GT boxes: undefined, not nan/0
    assert r.overall["mAP"] == pytest.approx(1.0)


def test_xyxy_written_as_xywh_fails_visibly():
    gt = _gt()
    # the classic bug: a converter writes [x1, y1, x2, y2] where COCO expects [x, y, w, h]
    r = evaluate(gt, _as_results(gt, lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]))
    assert r.overall["mAP"] < 0.3
    assert r.overall["mAP_50"] < 0.5


def test_swapped_x_and_y_fails_visibly():
    gt = _gt()
    r = evaluate(gt, _as_results(gt, lambda b: [b[1], b[0], b[3], b[2]]))
    assert r.overall["mAP_50"] < 0.2


def test_mismatched_image_ids_are_a_clear_error():
    gt = _gt()
    res = _as_results(gt)
    for d in res:
        d["image_id"] += 1000  # e.g. predictions made on another COCO file
    with pytest.raises(InputError, match="image_id 1001 is not an image of the ground truth"):
        evaluate(gt, res)


def test_mismatched_category_ids_are_a_clear_error():
    gt = _gt()
    res = _as_results(gt)
    for d in res:
        d["category_id"] -= 1  # 0-based labels written as category ids
    with pytest.raises(InputError, match=r"category_id 0 is not a ground-truth category \[1, 2\]"):
        evaluate(gt, res)


def test_partial_detections_and_empty_results():
    gt = _gt()
    only_person = [d for d in _as_results(gt) if d["category_id"] == 1]
    r = evaluate(gt, only_person)
    assert r.per_category["person"]["mAP"] == pytest.approx(1.0)
    assert r.per_category["car"]["mAP"] == 0.0
    assert r.overall["mAP"] == pytest.approx(0.5)
    empty = evaluate(gt, [])
    assert empty.overall["mAP"] == 0.0 and empty.n_predictions == 0


def test_markdown_table_multi_run_shape_and_json(tmp_path):
    gt = _gt()
    gt_path = tmp_path / "gt.json"
    save_dataset(gt_path, gt)
    (tmp_path / "good.json").write_text(json.dumps(_as_results(gt)))
    (tmp_path / "bad.json").write_text(json.dumps(_as_results(gt, lambda b: [b[1], b[0], b[3], b[2]])))
    report = evaluate_runs(gt_path, {"baseline": tmp_path / "bad.json", "adapted": tmp_path / "good.json"})
    md = format_markdown(report)
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[0] == "category"
    assert header[1:] == [f"baseline {m}" for m in METRICS] + [f"adapted {m}" for m in METRICS]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["person", "car", "**all**"]
    all_row = [c.strip() for c in table[-1].strip("|").split("|")]
    assert all_row[1 + len(METRICS)] == "1.000"  # adapted mAP
    assert DASH in md and FOOTNOTE in md and "nan" not in md.lower()
    md_path, js_path = write_report(report, tmp_path / "out" / "table")
    data = json.loads(js_path.read_text())
    assert data["runs"][1]["per_category"]["car"]["mAP_s"] is None
    assert md_path.read_text() == md


def test_cross_dataset_matrix(tmp_path):
    a, b = _gt(6, seed=1), _gt(6, seed=2)
    save_dataset(tmp_path / "a.json", a)
    save_dataset(tmp_path / "b.json", b)
    (tmp_path / "m_a.json").write_text(json.dumps(_as_results(a)))
    (tmp_path / "m_b.json").write_text(json.dumps(_as_results(b)[: len(b["annotations"]) // 2]))
    m = cross_dataset_matrix({"A": tmp_path / "a.json", "B": tmp_path / "b.json"},
                             [("model", "A", tmp_path / "m_a.json"), ("model", "B", tmp_path / "m_b.json")])
    assert m.cells["model"]["A"].overall["mAP"] == pytest.approx(1.0)
    assert m.cells["model"]["B"].overall["mAP"] < 0.9
    md = format_matrix_markdown(m)
    assert "| model | 1.000 / 1.000 |" in md
    with pytest.raises(InputError, match="unknown test set"):
        cross_dataset_matrix({"A": tmp_path / "a.json"}, [("model", "C", tmp_path / "m_a.json")])


def test_eval_cli_prints_table_and_errors_cleanly(tmp_path):
    gt = _gt(4)
    save_dataset(tmp_path / "gt.json", gt)
    (tmp_path / "p.json").write_text(json.dumps(_as_results(gt)))
    bad = _as_results(gt)
    bad[0]["image_id"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    cmd = [sys.executable, "-m", "rgb2thermal_cli.main", "eval", "--gt", str(tmp_path / "gt.json")]
    ok = subprocess.run(cmd + ["--pred", str(tmp_path / "p.json"), "--out", str(tmp_path / "t")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "| person | 1.000 | 1.000 |" in ok.stdout and (tmp_path / "t.json").is_file()
    err = subprocess.run(cmd + ["--pred", str(tmp_path / "bad.json")], capture_output=True, text=True, check=False)
    assert err.returncode == 2
    assert "image_id 99 is not an image of the ground truth" in err.stderr and "Traceback" not in err.stderr
