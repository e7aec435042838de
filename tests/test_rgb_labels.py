"""``rgb_source.boxes: labels``: the RGB adapt frames' own labels are the RGB pseudo-labels, and
``refine.classes``: refine some classes only.

Why these exist: on msrs-bench the RGB frames are labelled, and their labels fused with the
thermal source make far better car labels than the teacher's RGB predictions (F1 0.60 -> 0.76 on
the adapt frames), while the classical refiner helps people and hurts cars
(``benchmarks/RESULTS.md``, msrs adaptation).
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core import atomic, coco
from core.errors import InputError
from tests.test_pipeline import _folder, _params, needs_nano

pytest.importorskip("mmdet")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _labels_params(root: Path, **refine: object) -> dict:
    p = _params(root)
    p["rgb_source"] = {"boxes": "labels"}
    p["refine"] = {**p["refine"], **refine}
    return p


def test_the_plan_warps_the_rgb_labels_and_runs_no_rgb_inference(tmp_path: Path) -> None:
    from pipeline.params import params_from_dict
    from pipeline.plan import plan
    from pipeline.step import Ref

    (tmp_path / "data").mkdir()         # the plan reads no data: an empty folder passes validation
    default = {s.name: s for s in plan(params_from_dict(_params(tmp_path)))}
    assert {"infer", "pseudo"} <= set(default) and default["warp"].needs["labels"] == Ref("pseudo", "coco")
    assert "pseudo" in default["quality"].needs
    # the rows say plainly that the RGB side was predicted, and at which threshold (never "RGB labels")
    assert default["eval"].options["describe"]["adapted"] == "RGB predictions ≥ 0.02 warped + refined (classical)"
    per_class = params_from_dict({**_params(tmp_path), "pseudo": {"thresholds": {"person": 0.35}}})
    assert next(s for s in plan(per_class) if s.name == "eval").options["describe"]["adapted"].startswith(
        "RGB predictions ≥ person 0.35 / car 0.5 warped")

    steps = {s.name: s for s in plan(params_from_dict(_labels_params(tmp_path)))}
    assert "infer" not in steps and "pseudo" not in steps
    assert steps["warp"].needs["labels"] == Ref("index", "rgb_adapt")
    assert "rgb_source" in steps["warp"].sections           # DVC re-runs warp when the choice changes
    assert "pseudo" not in steps["quality"].needs
    assert "RGB ground-truth labels warped + refined" in steps["eval"].options["describe"]["adapted"]
    people = plan(params_from_dict(_labels_params(tmp_path, classes=["person"])))
    assert "refined (classical, person only)" in people[-1].options["describe"]["adapted"]


@needs_nano
def test_the_rgb_labels_are_warped_and_refined_per_class(tmp_path: Path) -> None:
    """The warp step's input is the index's RGB adapt labels (score 1 in fusion); with
    ``refine.classes: [person]`` cars pass the refiner unchanged and people are refined."""
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)
    rec = run_pipeline(params_from_dict(_labels_params(tmp_path, classes=["person"])), tmp_path / "ws", until="refine")
    assert rec.status == "succeeded"
    assert [s.name for s in rec.stages] == ["data", "index", "teacher", "warp", "refine"]
    st = tmp_path / "ws" / "stages"
    rgb = coco.load_dataset(st / "index" / "rgb_adapt.json")
    warped = coco.load_dataset(st / "warp" / "warped.json")
    refined = coco.load_dataset(st / "refine" / "refined.json")
    assert rgb["annotations"] and warped["annotations"]
    # every warped box comes from one RGB label (warp keeps the RGB box as provenance)
    labelled = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in rgb["annotations"]}
    assert all((a["image_id"], a["category_id"], tuple(a["rgb_bbox"])) in labelled for a in warped["annotations"])
    assert len(warped["annotations"]) >= 0.8 * len(rgb["annotations"])
    names = {c["id"]: c["name"] for c in refined["categories"]}
    cars = [a for a in refined["annotations"] if names[a["category_id"]] == "car"]
    people = [a for a in refined["annotations"] if names[a["category_id"]] == "person"]
    assert cars and people and len(refined["annotations"]) == len(warped["annotations"])
    w = {a["id"]: a["bbox"] for a in warped["annotations"]}
    assert all(a["refine"]["reason"] == "class_not_refined" and a["bbox"] == w[a["id"]] for a in cars)
    assert all(a["refine"]["method"] == "classical" for a in people)
    assert any(a["refine"]["decision"] == "replace" for a in people)


@needs_nano
def test_rgb_labels_without_labels_on_the_adapt_frames_stop_with_an_error(tmp_path: Path) -> None:
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)
    data = tmp_path / "data"
    with open(data / "split.csv") as f:
        adapt = {r["name"] for r in csv.DictReader(f) if r["split"] == "adapt"}
    labels = atomic.read_json(data / "labels_rgb" / "coco.json")
    ids = {im["id"] for im in labels["images"] if Path(im["file_name"]).stem in adapt}
    assert ids
    labels["annotations"] = [a for a in labels["annotations"] if a["image_id"] not in ids]
    atomic.write_json(data / "labels_rgb" / "coco.json", labels)
    with pytest.raises(InputError, match="rgb_source.boxes is 'labels' but the RGB adapt frames have no labels"):
        run_pipeline(params_from_dict(_labels_params(tmp_path)), tmp_path / "ws", until="refine")
    assert not (tmp_path / "ws" / "stages" / "warp" / "stage.json").exists()     # not marked done
