"""Training in several processes (torchrun, mmengine ``launcher='pytorch'``, DDP), on CPU with gloo.

The slow tests train the shared COCO YOLOX-nano teacher, fine-tuned (it detects from the start), on
6 generated 160x128 images with 2 processes of batch 2 (2 iterations per epoch): the model it
produces loads and predicts in the one-process inference path, and a torchrun training SIGKILLed
with its whole process tree resumes from its last epoch checkpoint. The fast tests check the
resolved config (launcher, DDP wrapper, backend, schedule length, lr rule), AMP by device, the
torchrun command and that process counts of 1 leave the pipeline's step keys as they were.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmdet")

from conftest import NANO_TEACHER as NANO  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(),
                                reason=f"shared nano teacher absent at {NANO}")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from data.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, 6, seed=3, rgb_size=(160, 128), thermal_size=(128, 96), progress=False)
    return out


def _values(synthetic: Path, work_dir: Path, **kw) -> dict:
    data = {"ann_file": str(synthetic / "labels_rgb" / "coco.json"), "img_root": str(synthetic / "rgb")}
    base = {"base_model": str(NANO / "yolox_nano_coco.py"), "load_from": str(NANO / "yolox_nano_coco.pth"),
            "train": data, "val": data, "work_dir": str(work_dir), "device": "cpu", "input_size": (160, 128),
            "batch_size": 2, "epochs": 1, "num_workers": 0, "progress": False, "ema": False, "freeze_bn": True,
            "frozen_stages": 0, "warmup_epochs": 0, "seed": 0, "gpus": 2}
    return {**base, **kw}


def _spec(synthetic: Path, work_dir: Path, **kw):
    from detection.train_spec import spec_from_dict

    return spec_from_dict(_values(synthetic, work_dir, **kw))


@pytest.fixture()
def one_thread_per_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")       # 2 ranks on a shared 2-core box


# ------------------------------------------------------------------------------------------ fast
@needs_nano
def test_two_processes_resolve_to_ddp_on_gloo_with_the_total_batch(synthetic, tmp_path):
    from detection.train_config import build_config

    one = build_config(_spec(synthetic, tmp_path, gpus=1))
    two = build_config(_spec(synthetic, tmp_path, gpus=2))
    assert "launcher" not in one and "model_wrapper_cfg" not in one and "collect_device" not in one.val_evaluator
    assert two.val_evaluator.collect_device == "gpu"     # through the process group, not a folder under cwd
    assert two.launcher == "pytorch" and two.env_cfg.dist_cfg.backend == "gloo"
    # frozen_stages=0: the stem's parameters get no gradient (mmdet freezes them after DDP wrapped the model)
    assert two.model_wrapper_cfg.to_dict() == {"type": "MMDistributedDataParallel", "broadcast_buffers": False,
                                               "find_unused_parameters": True, "device_ids": None}
    unfrozen = build_config(_spec(synthetic, tmp_path, gpus=2, frozen_stages=-1))
    assert unfrozen.model_wrapper_cfg.find_unused_parameters is False
    assert "sync_bn" not in two
    # 6 images: one process, batches of 2 -> 3 iterations; two processes of 3 images each -> 2
    assert one.rgb2thermal.iters_per_epoch == 3 and two.rgb2thermal.iters_per_epoch == 2
    assert one.optim_wrapper.optimizer.lr == 0.01 * 2 / 64 and two.optim_wrapper.optimizer.lr == 0.01 * 4 / 64
    assert (two.rgb2thermal.processes, two.rgb2thermal.backend) == (2, "gloo")


def test_amp_on_cuda_by_default_and_never_on_cpu(synthetic, tmp_path):
    from core.errors import InputError
    from detection.train_config import dist_backend, optim_wrapper_config
    from detection.train_spec import spec_from_dict

    data = {"ann_file": str(synthetic / "labels_rgb" / "coco.json"), "img_root": str(synthetic / "rgb")}
    spec = spec_from_dict({"base_model": "yolox_tiny_8xb8-300e_coco", "train": data, "work_dir": str(tmp_path),
                           "lr": 0.001, "grad_clip": None})
    assert optim_wrapper_config(spec, "cuda")[0]["type"] == "AmpOptimWrapper"
    assert optim_wrapper_config(spec, "cuda:1") == ({"type": "AmpOptimWrapper", "optimizer": {
        "type": "SGD", "lr": 0.001, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
        "paramwise_cfg": {"norm_decay_mult": 0.0, "bias_decay_mult": 0.0}}, True)
    assert optim_wrapper_config(spec, "cpu")[0]["type"] == "OptimWrapper"
    off = spec.model_copy(update={"amp": False})
    assert optim_wrapper_config(off, "cuda")[0]["type"] == "OptimWrapper"
    with pytest.raises(InputError, match="amp=True needs CUDA"):
        optim_wrapper_config(spec.model_copy(update={"amp": True}), "cpu")
    assert (dist_backend("cuda"), dist_backend("cuda:0"), dist_backend("cpu")) == ("nccl", "nccl", "gloo")


def test_auto_device_trains_on_the_gpu_when_there_is_one(monkeypatch):
    import torch

    from detection.detector import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


@needs_nano
def test_torchrun_command_one_node_and_several(synthetic, tmp_path):
    from core.errors import InputError
    from tasks.train_dist import torchrun_command

    cfg = tmp_path / "config.py"
    one = torchrun_command(_spec(synthetic, tmp_path, gpus=3), cfg)
    assert one == [sys.executable, "-m", "tasks.train_dist", "torchrun", "--standalone", "--nproc_per_node", "3",
                   "-m", "tasks.train_dist", "rank", str(cfg.resolve()), "--log-level", "WARNING"]
    many = torchrun_command(_spec(synthetic, tmp_path, gpus=8, nnodes=2, master_addr="10.0.0.1"), cfg, node_rank=1)
    assert many[4:14] == ["--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29500",
                          "--nproc_per_node", "8"]
    with pytest.raises(InputError, match="needs master_addr"):
        _spec(synthetic, tmp_path, nnodes=2)


def test_process_counts_of_one_and_the_rendezvous_stay_out_of_step_keys():
    from pipeline.params import PipelineParams

    base = {"data": {"roots": [{"path": "/nowhere", "version": "v1"}]},
            "teacher": {"config": "yolox_tiny_8xb8-300e_coco"}}
    plain = PipelineParams.model_validate(base).section("student")
    assert not {"gpus", "nnodes", "master_addr", "master_port"} & set(plain["train"])
    ones = PipelineParams.model_validate({**base, "student": {"train": {"gpus": 1, "nnodes": 1}}}).section("student")
    assert ones == plain
    two = {**base, "student": {"train": {"gpus": 2}}}
    keyed = PipelineParams.model_validate(two).section("student")
    assert keyed["train"] == {**plain["train"], "gpus": 2}
    nodes = {**base, "student": {"train": {"gpus": 2, "nnodes": 2, "master_addr": "10.0.0.1", "master_port": 4000}}}
    assert PipelineParams.model_validate(nodes).section("student")["train"] == {**plain["train"], "gpus": 2,
                                                                                "nnodes": 2}
    # the student's fields keep the rendezvous for the training itself
    fields = PipelineParams.model_validate(nodes).train_fields("student")
    assert (fields.master_addr, fields.master_port, fields.world_size) == ("10.0.0.1", 4000, 4)


# ------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
@needs_nano
def test_two_gloo_processes_train_a_model_the_one_process_path_loads(synthetic, tmp_path, one_thread_per_rank):
    import torch

    from core.coco import load_results
    from tasks.train import train

    data = {"ann_file": str(synthetic / "labels_rgb" / "coco.json"), "img_root": str(synthetic / "rgb")}
    result = train(_spec(synthetic, tmp_path / "run", test=data))
    assert (result.processes, result.backend, result.epochs_run) == (2, "gloo", 1)
    saved = json.loads((result.run_dir / "train_result.json").read_text())
    assert (saved["processes"], saved["backend"]) == (2, "gloo")
    assert result.timings["iterations"] == 2          # rank 0's: 3 of the 6 images, batches of 2
    assert "\nlauncher = 'pytorch'\n" in result.config_path.read_text()
    for ck in (result.slim_checkpoint, result.last_checkpoint):
        state = torch.load(ck, map_location="cpu", weights_only=ck == result.slim_checkpoint)["state_dict"]
        assert state and not [k for k in state if k.startswith("module.")], ck
    # the one-process inference path (tasks.infer through infer_results) predicts with it
    preds = load_results(result.test_predictions)
    assert preds and {p["category_id"] for p in preds} <= {1, 2}
    assert [h["epoch"] for h in result.metrics["history"]] == [1]


def _alive_with(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (the run's config path)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
@needs_nano
def test_sigkilled_torchrun_training_resumes_from_its_last_epoch(synthetic, tmp_path, one_thread_per_rank):
    from tasks.train import train

    work = tmp_path / "run"
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(yaml.safe_dump({**_values(synthetic, work, epochs=4), "input_size": [160, 128]}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rgb2thermal_cli.main", "train", "--spec", str(spec_yaml)],
                                cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    end = time.monotonic() + 240
    # mmengine's last_checkpoint marker, not epoch_1.pth: a kill between the two leaves nothing to resume from
    # (the resume then starts over, with a warning: tasks.train._find_last)
    while proc.poll() is None and not (work / "last_checkpoint").is_file() and time.monotonic() < end:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)          # the CLI and torchrun; the ranks die with torchrun
    proc.wait()
    config = str(work / "config.py")
    deadline = time.monotonic() + 10
    while _alive_with(config) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive_with(config), "ranks survived the kill of their torchrun"
    killed_at = sorted(p.name for p in work.glob("epoch_*.pth"))
    assert killed_at and "epoch_4.pth" not in killed_at
    resumed = train(_spec(synthetic, work, epochs=4, resume=True))
    k = int(Path(resumed.weights["resumed_from"]).stem.split("_")[1])
    assert 1 <= k < 4 and resumed.weights["resumed_from"].endswith(f"epoch_{k}.pth")
    assert (resumed.epochs_run, resumed.processes) == (4, 2)
    assert resumed.timings["iterations"] == (4 - k) * math.ceil(3 / 2)
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2, 3, 4]
    assert resumed.slim_checkpoint is not None and resumed.slim_checkpoint.is_file()


@pytest.mark.slow
@needs_nano
def test_the_pipeline_trains_a_two_process_student_and_evaluates_it(tmp_path, one_thread_per_rank):
    """``student.train.gpus: 2`` through the pipeline: the student step trains under torchrun, its
    marker says so (the baseline, trained with the student's section, too), and ``eval`` scores it."""
    from core import atomic
    from pipeline.executor import run_pipeline
    from pipeline.params import params_from_dict
    from tests.test_pipeline import _folder, _params

    _folder(tmp_path, 8)
    raw = _params(tmp_path)
    raw["student"]["train"]["gpus"] = 2
    rec = run_pipeline(params_from_dict(raw), tmp_path / "ws")
    assert rec.status == "succeeded"
    info = atomic.read_json(tmp_path / "ws" / "stages" / "student" / "stage.json")["info"]["train"]
    assert (info["processes"], info["backend"]) == (2, "gloo")
    baseline = atomic.read_json(tmp_path / "ws" / "stages" / "baseline" / "stage.json")["info"]["train"]
    assert (baseline["processes"], baseline["backend"]) == (2, "gloo")
    assert "adapted" in rec.metrics["eval"] and rec.metrics["eval"]["adapted"]["all"]["mAP_50"] >= 0.0
    assert atomic.read_json(tmp_path / "ws" / "stages" / "eval" / "predictions_adapted.json")
