"""Steps are values: one kind twice with its own parameters, metrics per step, a moved workspace
that reuses everything, and a training killed with SIGKILL that resumes from its last epoch."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline import SIZES, TRAIN, _folder, _params, needs_nano

pytest.importorskip("mmdet")
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@needs_nano
def test_a_kind_twice_with_its_own_parameters_and_metrics_per_step(tmp_path: Path) -> None:
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.step import Ref, Step
    from pipeline.params import params_from_dict
    from pipeline.plan import plan

    _folder(tmp_path, 8)
    p = params_from_dict(_params(tmp_path))
    steps = [s for s in plan(p) if s.name in ("data", "index", "teacher", "infer", "pseudo")]
    steps.append(Step("pseudo@strict", "pseudo", ("pseudo", "data"), needs={"predictions": Ref("infer", "coco")},
                      options={"params": {"score_threshold": 0.3}}))
    for name in ("eval@a", "eval@b"):        # the same evaluation twice: two records, not one overwritten
        steps.append(Step(name, "eval", ("eval",), needs={"gt": Ref("index", "thermal_test"),
                                                          "model:source_only": Ref("teacher", "model")},
                          options={"columns": ["source_only"]}))
    rec = run_pipeline(p, tmp_path / "ws", steps=steps)
    assert [s.name for s in rec.stages] == ["data", "index", "teacher", "infer", "pseudo", "pseudo@strict",
                                            "eval@a", "eval@b"]
    loose = atomic.read_json(tmp_path / "ws" / "stages" / "pseudo" / "pseudo.json")["annotations"]
    strict = atomic.read_json(tmp_path / "ws" / "stages" / "pseudo@strict" / "pseudo.json")["annotations"]
    assert len(strict) < len(loose) and strict and min(a["score"] for a in strict) >= 0.3
    assert min(a["score"] for a in loose) < 0.3
    assert set(rec.metrics) == {"eval@a", "eval@b"}
    assert rec.metrics["eval@a"]["source_only"] == rec.metrics["eval@b"]["source_only"]
    again = run_pipeline(p, tmp_path / "ws", steps=steps)
    assert all(s.reused for s in again.stages)


@needs_nano
def test_copied_workspace_reuses_every_step(tmp_path: Path) -> None:
    """Keys hold content and parameters, never paths: a copy of a finished workspace recomputes nothing."""
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    _folder(tmp_path, 8)
    params = _params(tmp_path)
    params["eval"] = {"baselines": ["source_only"]}
    p = params_from_dict(params)
    first = run_pipeline(p, tmp_path / "ws")
    assert not any(s.reused for s in first.stages)
    shutil.copytree(tmp_path / "ws", tmp_path / "elsewhere" / "ws_copy", symlinks=True)
    moved = run_pipeline(p, tmp_path / "elsewhere" / "ws_copy")
    assert [s.name for s in moved.stages if not s.reused] == []
    assert moved.metrics == first.metrics
    # the per-image cache may live outside the workspace and be shared: a fresh workspace with the
    # first one's cache root infers and refines nothing again
    shared = run_pipeline(p, tmp_path / "ws_fresh", cache_root=tmp_path / "ws" / "cache")
    st = {s.name: s for s in shared.stages}
    assert st["infer"].cache_misses == 0 and st["infer"].cache_hits > 0
    assert st["refine"].cache_misses == 0


def _teacher_params(root: Path, epochs: int) -> dict:
    return {"data": {"synthetic": {"n_pairs": 8, "seed": 3, **{k: list(v) for k, v in SIZES.items()}}},
            "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco", **TRAIN, "epochs": epochs,
                                  "batch_size": 2}}}


def test_training_killed_mid_way_resumes_from_its_last_epoch(tmp_path: Path) -> None:
    """SIGKILL during the teacher's training: the next run continues from the last epoch checkpoint
    (not epoch 0) and ends with the same weights as an uninterrupted run of the same seed."""
    import torch

    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict

    if not (BIN / "rgb2thermal").exists():
        pytest.skip("rgb2thermal is not installed beside this python")
    epochs = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_teacher_params(tmp_path, epochs)))
    ws = tmp_path / "ws"
    train_dir = ws / "stages" / "teacher" / "train"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([str(BIN / "rgb2thermal"), "run", "--params", str(tmp_path / "params.yaml"),
                             "--workspace", str(ws), "--until", "teacher"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            last = train_dir / "last_checkpoint"
            if last.is_file() and last.read_text().strip().endswith("epoch_2.pth"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed mid-training"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (ws / "stages" / "teacher" / "stage.json").exists()       # not done
    assert (ws / "stages" / "teacher" / "attempt.json").is_file()

    p = params_from_dict(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    resumed = run_pipeline(p, ws, until="teacher")
    marker = yaml.safe_load((ws / "stages" / "teacher" / "stage.json").read_text())
    assert marker["info"]["resumed"] is True and marker["info"]["train"]["resumed_from_epoch_checkpoint"] is True
    assert not any("starting from scratch" in f for f in resumed.fallbacks), resumed.fallbacks
    log = "\n".join(f.read_text() for f in train_dir.rglob("*.log"))
    assert "resumed" in log.lower() or "resume" in log.lower()

    straight = run_pipeline(p, tmp_path / "ws_straight", until="teacher")
    assert straight.status == "succeeded"

    def weights(w: Path) -> dict:
        return torch.load(w / "stages" / "teacher" / "train" / "best_slim.pth", map_location="cpu",
                          weights_only=True)["state_dict"]

    a, b = weights(ws), weights(tmp_path / "ws_straight")
    assert a.keys() == b.keys()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff == 0.0, f"resumed weights differ from an uninterrupted run by up to {diff}"


def test_a_plan_must_name_steps_once_and_read_only_earlier_steps() -> None:
    from core.errors import InputError
    from pipeline.executor import check_plan
    from pipeline.step import Ref, Step

    a, b = Step("a", "data"), Step("b", "index", needs={"x": Ref("a", "datasets")})
    check_plan([a, b])
    with pytest.raises(InputError, match="occurs twice"):
        check_plan([a, a])
    with pytest.raises(InputError, match="do not run before it"):
        check_plan([b, a])
