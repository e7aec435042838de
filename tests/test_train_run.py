"""Real (tiny) MMDetection training on generated data: outputs, resume, NaN guard, CLI.

One short training run is shared by the module (CPU: 128x128 input, batch 2, 6 images).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from core.errors import InputError

pytest.importorskip("mmdet")

from conftest import NANO_TEACHER as NANO  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from data.synthetic import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, 6, seed=3, rgb_size=(160, 128), thermal_size=(128, 96), progress=False)
    return out


def _spec(synthetic, work_dir, **kw):
    from detection.train_spec import spec_from_dict

    data = {"ann_file": str(synthetic / "labels_rgb" / "coco.json"), "img_root": str(synthetic / "rgb")}
    base = {"base_model": "yolox_tiny_8xb8-300e_coco", "train": data, "val": data, "work_dir": str(work_dir),
            "device": "cpu", "input_size": (128, 128), "batch_size": 2, "epochs": 2, "num_workers": 0,
            "progress": False, "ema": False, "warmup_epochs": 0.5, "seed": 0}
    base.update(kw)
    return spec_from_dict(base)


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    from tasks.train import train

    run = tmp_path_factory.mktemp("run")
    return _spec(synthetic, run), train(_spec(synthetic, run))


def test_training_writes_config_checkpoints_and_result(trained):
    import torch
    from mmengine.config import Config

    spec, result = trained
    assert result.epochs_run == 2 and not result.stopped_early
    assert "NonFiniteLossGuardHook" in result.config_path.read_text()
    cfg = Config.fromfile(str(result.config_path))
    assert cfg.model.bbox_head.num_classes == 2 and cfg.train_cfg.max_epochs == 2
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "epoch_2.pth"
    slim = torch.load(result.slim_checkpoint, map_location="cpu", weights_only=True)  # strict default loader
    assert slim["meta"]["dataset_meta"]["classes"] == ["person", "car"]
    assert len(result.metrics["history"]) == 2
    assert result.timings["iterations"] == 6 and result.timings["train_iter_median_s"] > 0
    saved = json.loads((result.run_dir / "train_result.json").read_text())
    assert saved["weights"]["init"].startswith("random")


@pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared nano teacher absent at {NANO}")
def test_resume_after_a_kill_between_checkpoint_and_validation_validates_that_epoch(synthetic, tmp_path):
    """mmengine saves ``epoch_N.pth`` *before* validating epoch N and, resumed, skips that
    validation: a kill in between lost the best checkpoint, and the slim checkpoint came from the
    last one. Now the resumed training validates epoch N first, so its best checkpoint, slim
    checkpoint and history are those of the uninterrupted training."""
    from tasks.train import train

    work = tmp_path / "run"
    # the COCO nano teacher fine-tuned: detects from the start, so validation has a best checkpoint
    nano = dict(base_model=str(NANO / "yolox_nano_coco.py"), load_from=str(NANO / "yolox_nano_coco.pth"),
                freeze_bn=True, frozen_stages=0, warmup_epochs=0, epochs=1, input_size=(160, 128))
    done = train(_spec(synthetic, work, **nano))
    slim, history = done.slim_checkpoint.read_bytes(), done.metrics["history"]
    assert [h["epoch"] for h in history] == [1] and done.best_checkpoint is not None
    # the state a kill during epoch 1's validation leaves: the epoch checkpoint as saved before the
    # validation (mmengine saves it again after a new best, with the best score), nothing after it
    import torch

    ckpt = torch.load(work / "epoch_1.pth", map_location="cpu", weights_only=False)
    for key in ("best_score", "best_ckpt"):
        ckpt["message_hub"]["runtime_info"].pop(key)
    torch.save(ckpt, work / "epoch_1.pth")
    for f in [done.best_checkpoint, done.slim_checkpoint, work / "val_history.json", work / "train_result.json"]:
        f.unlink()
    resumed = train(_spec(synthetic, work, **nano, resume=True))
    assert resumed.weights["resumed_from"].endswith("epoch_1.pth") and resumed.timings["iterations"] == 0
    assert resumed.best_checkpoint is not None and resumed.best_checkpoint.name == done.best_checkpoint.name
    assert resumed.metrics["history"] == history
    assert resumed.slim_checkpoint.read_bytes() == slim


@pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared nano teacher absent at {NANO}")
def test_resume_in_a_copied_workspace_leaves_the_original_alone(synthetic, tmp_path):
    """mmengine keeps the best checkpoint's absolute path in the epoch checkpoint; resumed in a copy
    of the training folder, a new best used to delete the ORIGINAL folder's best checkpoint."""
    import shutil

    import torch

    from tasks.train import train

    nano = dict(base_model=str(NANO / "yolox_nano_coco.py"), load_from=str(NANO / "yolox_nano_coco.pth"),
                freeze_bn=True, frozen_stages=0, warmup_epochs=0, epochs=1, input_size=(160, 128))
    original = tmp_path / "original"
    done = train(_spec(synthetic, original, **nano))
    best = done.best_checkpoint
    assert best is not None and best.is_file()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    # the copy as a kill during its validation left it, with any new score counting as a new best
    ckpt = torch.load(copy / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert ckpt["message_hub"]["runtime_info"]["best_ckpt"] == str(best)          # absolute, into the original
    ckpt["message_hub"]["runtime_info"]["best_score"] = -1.0
    torch.save(ckpt, copy / "epoch_1.pth")
    (copy / "val_history.json").unlink()
    resumed = train(_spec(synthetic, copy, **nano, resume=True))
    assert best.is_file(), "resuming the copy deleted the original's best checkpoint"
    assert resumed.best_checkpoint is not None and resumed.best_checkpoint.parent == copy


def test_resume_continues_from_last_checkpoint(trained, synthetic):
    from tasks.train import train

    spec, first = trained
    more = train(_spec(synthetic, first.run_dir, epochs=3, resume=True))
    assert more.weights["resumed_from"].endswith("epoch_2.pth")
    assert more.epochs_run == 3
    assert more.timings["iterations"] == 3  # only the third epoch was trained


def test_nan_guard_stops_with_iteration_loss_and_lr(synthetic, tmp_path):
    from tasks.train import train
    from tasks.train_hooks import NonFiniteLossError

    spec = _spec(synthetic, tmp_path / "nan", lr=1e12, grad_clip=None, warmup_epochs=0, epochs=3, schedule="constant")
    with pytest.raises(NonFiniteLossError) as info:
        train(spec)
    err = info.value
    assert err.iteration >= 2 and err.lr == pytest.approx(1e12, rel=1e-6)
    assert err.loss_name.startswith("loss") or err.loss_name in ("backbone output", "neck output", "bbox_head output")
    assert f"at iteration {err.iteration} (epoch" in str(err) and "lr=1e+12" in str(err)
    assert not list((tmp_path / "nan").glob("best_*.pth"))


def test_refuses_set_without_boxes(synthetic, tmp_path):
    from core.coco import load_dataset, save_dataset
    from tasks.train import train

    ds = load_dataset(synthetic / "labels_rgb" / "coco.json")
    ds["annotations"] = []
    save_dataset(tmp_path / "empty.json", ds)
    spec = _spec(synthetic, tmp_path / "run", train={"ann_file": str(tmp_path / "empty.json"),
                                                     "img_root": str(synthetic / "rgb")})
    with pytest.raises(InputError, match="no boxes of"):
        train(spec)
    assert not (tmp_path / "run" / "config.py").exists()


def test_cli_help_and_spec_errors(tmp_path, synthetic):
    cmd = [sys.executable, "-m", "rgb2thermal_cli.main"]
    helptext = subprocess.run(cmd + ["train", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--spec" in helptext and "0.01 x batch / 64" in helptext
    spec = {"base_model": "yolox_tiny_8xb8-300e_coco", "work_dir": "run", "input_size": [100, 96],
            "train": {"ann_file": str(synthetic / "labels_rgb" / "coco.json"), "img_root": str(synthetic / "rgb")}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    bad = subprocess.run(cmd + ["train", "--spec", str(tmp_path / "spec.yaml")], capture_output=True, text=True)
    assert bad.returncode == 2 and "multiples of 32" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared nano teacher absent at {NANO}")
def test_finetune_from_coco_with_head_transfer_and_early_stop(synthetic, tmp_path):
    """COCO nano -> person/car head; lr ~0 keeps mAP_50 flat, so patience 1 stops after epoch 2 of 4."""
    from tasks.train import train

    spec = _spec(synthetic, tmp_path / "ft", base_model=str(NANO / "yolox_nano_coco.py"),
                 load_from=str(NANO / "yolox_nano_coco.pth"), freeze_bn=True, frozen_stages=0, lr=1e-12,
                 schedule="constant", warmup_epochs=0, epochs=4, early_stop_patience=1, input_size=(160, 128))
    result = train(spec)
    assert result.weights["head"]["mapping"] == {"person": ["person"], "car": ["car"]}
    assert result.weights["head"]["mode"] == "transfer"
    history = [h["coco/bbox_mAP_50"] for h in result.metrics["history"]]
    assert history[0] > 0  # the transferred COCO rows detect from the start
    assert result.stopped_early and result.epochs_run == 2 and history[0] == history[1]
    assert result.best_checkpoint is not None and result.best_checkpoint.name.endswith("epoch_1.pth")
