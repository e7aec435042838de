"""No path enters a stage key: a dataset folder (with its homography registry and the teacher's
config and checkpoint) and a workspace moved with the same content reuse every step, the
student's training and the evaluation included."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_pipeline import NANO, _folder, _params, needs_nano

pytest.importorskip("mmdet")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@needs_nano
def test_moved_dataset_and_workspace_recompute_nothing(tmp_path: Path) -> None:
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path / "a", 8)
    (tmp_path / "a" / "models").mkdir()
    for f in ("yolox_nano_coco.py", "yolox_nano_coco.pth"):
        shutil.copyfile(NANO / f, tmp_path / "a" / "models" / f)

    def params(root: Path, **sets: object):
        d = _params(root, **sets)
        d["teacher"] = {"config": str(root / "models" / "yolox_nano_coco.py"),
                        "checkpoint": str(root / "models" / "yolox_nano_coco.pth")}
        return params_from_dict({**d, "eval": {"baselines": ["source_only"]}})

    first = run_pipeline(params(tmp_path / "a"), tmp_path / "ws")
    names = [s.name for s in first.stages]
    assert names == ["data", "index", "teacher", "infer", "pseudo", "warp", "refine", "student", "quality", "eval"]
    assert not any(s.reused for s in first.stages)
    # what later steps read holds no outside path: the index names images relative to the workspace
    for f in ("index/versions/syn.json", "index/rgb_adapt.json", "index/thermal_test.json", "data/datasets.json",
              "teacher/model.json", "pseudo/pseudo.json", "refine/refined.json"):
        text = (tmp_path / "ws" / "stages" / f).read_text()
        assert str(tmp_path) not in text, f
    assert atomic.read_json(tmp_path / "ws" / "stages" / "index" / "rgb_adapt.json")["images"][0][
        "file_name"].startswith("datasets/syn/rgb/")

    shutil.move(tmp_path / "a", tmp_path / "b")                          # data/, registry/, models/
    shutil.move(tmp_path / "ws", tmp_path / "elsewhere")
    moved = run_pipeline(params(tmp_path / "b"), tmp_path / "elsewhere")
    assert [s.name for s in moved.stages] == names
    assert [s.name for s in moved.stages if not s.reused] == []
    assert moved.metrics == first.metrics
    assert (tmp_path / "elsewhere" / "datasets" / "syn").resolve() == (tmp_path / "b" / "data").resolve()

    # the moved outputs are usable, not only reused: a changed refine threshold re-runs refine,
    # which reads the thermal images through the new place
    changed = run_pipeline(params(tmp_path / "b", refine__classical_score_threshold=0.9), tmp_path / "elsewhere",
                           until="refine")
    assert [s.name for s in changed.stages if not s.reused] == ["refine"]
    rep = atomic.read_json(tmp_path / "elsewhere" / "stages" / "refine" / "refined.json.report.json")
    assert rep["skipped_images"] == [] and rep["counts"]["images_refined"] > 0
