"""A thermal pseudo-label source fused with the RGB one, and two self-training rounds, as steps of
the pipeline: the plain run and the Prefect flow write the same outputs, a re-run reuses every
step, and the evaluation has the rounds, the classic recipe and the oracle side by side.

Real components: the shared YOLOX-nano teacher, classical refiner, 1-epoch students (128x128).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_pipeline import _folder, _params, needs_nano

pytest.importorskip("mmdet")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
ROUNDS_STEPS = ["data", "index", "teacher", "infer", "pseudo", "warp", "refine", "infer@thermal", "pseudo@thermal",
                "fuse", "student", "infer@round2", "pseudo@round2", "fuse@round2", "student@round2", "classic", "oracle",
                "quality", "eval"]


def _rounds_params(root: Path) -> dict:
    p = _params(root)
    p["thermal_source"] = {"enabled": True, "pseudo": {"score_threshold": 0.02}}
    p["fuse"] = {"method": "agreement", "iou": 0.5}
    p["self_training"] = {"rounds": 2, "init": "teacher"}
    p["eval"] = {"baselines": ["source_only", "classic", "oracle"]}
    return p


@needs_nano
def test_thermal_source_fusion_and_two_rounds(tmp_path: Path, prefect_harness, quick_prefect) -> None:
    from core import atomic
    from flows.adapt import adapt_flow
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    _folder(tmp_path, 8)
    raw = _rounds_params(tmp_path)
    p = params_from_dict(raw)
    assert [s.name for s in plan(p)] == ROUNDS_STEPS
    steps = {s.name: s for s in plan(p)}
    assert steps["infer@round2"].needs["model"].step == "student"           # round 2's teacher is student 1
    assert steps["student@round2"].needs["labels"].step == "fuse@round2"
    assert steps["classic"].needs["labels"].step == "refine"

    rec = run_pipeline(p, tmp_path / "ws")
    assert [s.name for s in rec.stages] == ROUNDS_STEPS and rec.status == "succeeded"
    stages = tmp_path / "ws" / "stages"
    fused = atomic.read_json(stages / "fuse" / "fused.json")
    assert fused["annotations"] and all("provenance" in a and a["provenance"]["sources"] for a in fused["annotations"])
    srcs = {s for a in fused["annotations"] for s in a["provenance"]["sources"]}
    assert "thermal" in srcs
    thermal_pseudo = atomic.read_json(stages / "infer@round2" / "infer.json")
    assert {a["source"] for a in thermal_pseudo["annotations"]} <= {"thermal_student"}
    metrics = rec.metrics["eval"]
    assert set(metrics) - {"table_markdown"} == {"adapted", "round1", "classic", "oracle", "source_only"}
    comparison = atomic.read_json(stages / "eval" / "comparison.json")
    assert set(comparison["gap_closed"]) == {"adapted", "round1", "classic"}          # not the two references
    groups = set(comparison["by_group"]["adapted"])
    assert "all" in groups and groups <= {"all", "day", "night"}
    assert comparison["by_group"]["adapted"]["all"]["all"]["mAP_50"] == pytest.approx(metrics["adapted"]["all"]["mAP_50"])
    assert (stages / "eval" / "rounds.png").read_bytes()[:4] == b"\x89PNG"
    quality = atomic.read_json(stages / "quality" / "quality" / "quality.json")["stages"]
    assert list(quality) == ["pseudo", "warped", "refined", "teacher on thermal", "fused, round 1",
                             "student on thermal", "fused, round 2"]                     # each source, each fusion
    assert set(quality["fused, round 1"]["table"]["person"]) >= {"all"}
    assert "gap closed person" in metrics["table_markdown"] and "round 2: RGB predictions ≥ " in metrics["table_markdown"]

    again = run_pipeline(p, tmp_path / "ws")
    assert all(s.reused for s in again.stages)

    flow = adapt_flow(params_path=None, workspace=str(tmp_path / "ws_flow"), params=raw)
    assert [s["name"] for s in flow["stages"]] == ROUNDS_STEPS
    for rel in ("fuse/fused.json", "fuse@round2/fused.json", "pseudo@round2/pseudo.json", "eval/metrics.json",
                "eval/comparison.json"):
        assert (stages / rel).read_bytes() == (tmp_path / "ws_flow" / "stages" / rel).read_bytes(), rel


@needs_nano
def test_oracle_column_only_with_thermal_adapt_labels(tmp_path: Path) -> None:
    """Without thermal labels on the adapt split the oracle step trains nothing and eval leaves it out."""
    import shutil

    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)
    import csv

    with open(tmp_path / "data" / "split.csv") as fh:
        adapt = {Path(r["name"]).stem for r in csv.DictReader(fh) if r["split"] == "adapt"}
    labels = tmp_path / "data" / "labels_thermal" / "coco.json"
    ds = atomic.read_json(labels)                     # drop the thermal labels of the adapt frames
    keep = {im["id"] for im in ds["images"] if Path(im["file_name"]).stem not in adapt}
    ds["annotations"] = [a for a in ds["annotations"] if a["image_id"] in keep]
    atomic.write_json(labels, ds)
    raw = _params(tmp_path)
    raw["eval"] = {"baselines": ["source_only", "oracle"]}
    rec = run_pipeline(params_from_dict(raw), tmp_path / "ws")
    assert "oracle" not in rec.metrics["eval"] and "adapted" in rec.metrics["eval"]
    marker = atomic.read_json(tmp_path / "ws" / "stages" / "eval" / "stage.json")
    assert any("oracle" in n for n in marker["info"]["notes"])
    shutil.rmtree(tmp_path / "ws")


@needs_nano
def test_mixed_training_adds_the_rgb_frames_with_their_ground_truth(tmp_path: Path) -> None:
    """``student.mix_rgb``: each adapted student trains on the thermal pseudo-labelled frames plus
    the RGB adapt frames with their RGB labels (categories mapped by name); the classic row does not.
    With ``fuse.ignore_from`` the uncertain fused boxes are ignore regions, erased in training."""
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    _folder(tmp_path, 8)
    raw = _rounds_params(tmp_path)
    raw["self_training"]["rounds"] = 1
    raw["student"]["mix_rgb"] = True
    raw["fuse"]["ignore_from"] = 0.0                  # every box below its class threshold: an ignore region
    raw["fuse"]["score_threshold"] = 0.5
    p = params_from_dict(raw)
    steps = {s.name: s for s in plan(p)}
    assert steps["student"].needs["rgb_labels"].step == "index" and "rgb_labels" not in steps["classic"].needs
    describe = steps["eval"].options["describe"]          # the table says which rows saw the RGB frames
    assert "mixed training" in describe["adapted"] and "mixed" not in describe["classic"]
    rec = run_pipeline(p, tmp_path / "ws", until="student")
    assert rec.status == "succeeded"
    stages = tmp_path / "ws" / "stages"
    mixed = atomic.read_json(stages / "student" / "train_labels.json")
    fused, rgb = atomic.read_json(stages / "fuse" / "fused.json"), atomic.read_json(stages / "index" / "rgb_adapt.json")
    assert len(mixed["images"]) == len(fused["images"]) + len(rgb["images"])
    assert len(mixed["annotations"]) == len(fused["annotations"]) + len(rgb["annotations"])
    assert {im["part"] for im in mixed["images"]} == {"thermal", "rgb"}
    assert sorted(im["id"] for im in mixed["images"]) == list(range(1, len(mixed["images"]) + 1))
    assert any(a.get("iscrowd") and a["uncertain"] for a in fused["annotations"])
    cfg_text = "".join(f.read_text() for f in (stages / "student" / "train").rglob("*.py"))
    assert "train_labels.json" in cfg_text and "EraseIgnoredBoxes" in cfg_text       # uncertain boxes erased


def test_the_students_rounds_take_their_own_pseudo_label_parameters(tmp_path: Path) -> None:
    """``self_training.pseudo`` applies to the students' predictions (rounds >= 2) only; the
    teacher's round keeps ``thermal_source.pseudo``; a bad value fails before any work."""
    from core.errors import InputError
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    (tmp_path / "data").mkdir()
    d = _rounds_params(tmp_path)
    d["thermal_source"]["pseudo"] = {"thresholds": {"person": 0.15, "car": 0.7}, "min_size": 3.0}
    d["self_training"] = {"rounds": 3, "pseudo": {"thresholds": {"person": 0.35, "car": 0.7}}}
    steps = {s.name: s for s in plan(params_from_dict(d))}
    assert steps["pseudo@thermal"].options["params"] == {"thresholds": {"person": 0.15, "car": 0.7}, "min_size": 3.0}
    for k in (2, 3):
        assert steps[f"pseudo@round{k}"].options["params"] == {"thresholds": {"person": 0.35, "car": 0.7},
                                                                "min_size": 3.0}
    # a student's pseudo step is keyed (and in DVC, depends) on self_training.pseudo, not on rounds or init;
    # the teacher's does not read it
    assert "self_training.pseudo" in steps["pseudo@round2"].sections
    assert not any(s.startswith("self_training") for s in steps["pseudo@thermal"].sections)
    more = {s.name: s for s in plan(params_from_dict({**d, "self_training": {**d["self_training"], "rounds": 4}}))}
    assert more["pseudo@round2"].sections == steps["pseudo@round2"].sections
    unset = {s.name: s for s in plan(params_from_dict({**d, "self_training": {"rounds": 2}}))}
    assert unset["pseudo@round2"].options == steps["pseudo@thermal"].options     # default: the teacher's
    d["self_training"]["pseudo"] = {"thresholds": {"person": 1.5}}
    with pytest.raises(InputError, match="threshold"):
        params_from_dict(d).validate_stages()


def test_the_students_label_with_their_own_inference_parameters(tmp_path: Path) -> None:
    """``self_training.infer`` applies when a student labels the thermal frames (rounds >= 2) only: the
    teacher's round keeps ``thermal_source.infer``, the eval scores every model without it, and a bad
    value fails before any work."""
    from core.errors import InputError
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    (tmp_path / "data").mkdir()
    d = _rounds_params(tmp_path)
    d["thermal_source"]["infer"] = {"input_size": [640, 640]}
    d["self_training"] = {"rounds": 3, "infer": {"tta_sizes": [[960, 960]]}}
    steps = {s.name: s for s in plan(params_from_dict(d))}
    assert steps["infer@thermal"].options["params"] == {"input_size": [640, 640]}
    for k in (2, 3):
        assert steps[f"infer@round{k}"].options["params"] == {"input_size": [640, 640], "tta_sizes": [[960, 960]]}
    assert "self_training.infer" in steps["infer@round2"].sections
    assert not any(s.startswith("self_training") for s in steps["infer@thermal"].sections)
    # the student's pseudo step does not read it (its predictions file carries the change), nor does eval
    assert "self_training.infer" not in steps["pseudo@round2"].sections
    assert not any(s.startswith("self_training") for s in steps["eval"].sections)
    unset = {s.name: s for s in plan(params_from_dict({**d, "self_training": {"rounds": 3}}))}
    assert unset["infer@round2"].options == {**steps["infer@thermal"].options, "source": "thermal_student"}
    assert unset["infer@round2"].sections == ("infer", "thermal_source")
    d["self_training"]["infer"] = {"tta_sizes": [[10, 10]]}
    with pytest.raises(InputError, match="tta_sizes"):
        params_from_dict(d).validate_stages()
