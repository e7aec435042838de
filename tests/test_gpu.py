"""GPU tests (marker ``gpu``): skipped without a visible CUDA device (tests/conftest.py).

The test session hides GPUs by default (``CUDA_VISIBLE_DEVICES=""`` in conftest, so CPU results are the
same on every machine); run these with a device named: ``CUDA_VISIBLE_DEVICES=0 pytest -m gpu``
(``scripts/gpu_check.sh`` does). What they prove on a CUDA machine:

- mmcv's CUDA ops are compiled (NMS on a CUDA tensor), so detectors run on the GPU at all;
- ``run_infer`` on ``cuda`` finds the detections it finds on the CPU (real COCO YOLOX-nano teacher,
  real MSRS frames), to float tolerance: cuDNN/TF32 convolutions differ in the last bits;
- ``warp.device: auto`` warps with kornia on the GPU, to 1e-3 px of the numpy path;
- a YOLOX training on ``cuda`` runs with mixed precision (``AmpOptimWrapper``) and gives finite losses.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmdet")

from conftest import NANO_TEACHER as NANO  # noqa: E402

pytestmark = pytest.mark.gpu
needs_nano = pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared teacher absent at {NANO}")


def test_mmcv_nms_runs_on_cuda() -> None:
    from rgb2thermal_cli.doctor_checks import check_device

    line = check_device()
    assert line.startswith("cuda:0 ") and "mmcv CUDA ops compiled" in line


@needs_nano
@pytest.mark.shared_data
def test_infer_on_cuda_matches_cpu(tmp_path: Path, msrs20: Path) -> None:
    from core.boxes import iou_matrix
    from core.coco import boxes_by_image, load_dataset
    from data.adapters.folder import build_index
    from tasks.infer import InferParams, run_infer

    idx = build_index(msrs20, "msrs", tmp_path / "index", progress=False)
    out = {}
    for device in ("cpu", "cuda"):
        params = InferParams(config=str(NANO / "yolox_nano_coco.py"), checkpoint=str(NANO / "yolox_nano_coco.pth"),
                             device=device, batch_size=8, min_score=0.05)
        rep = run_infer(idx.rgb_images, tmp_path / f"{device}.json", params, cache_dir=tmp_path / f"cache-{device}")
        assert rep.counts["images_inferred"] == 20
        out[device] = boxes_by_image(load_dataset(tmp_path / f"{device}.json"))
    assert out["cpu"].keys() == out["cuda"].keys()
    confident = 0
    for image_id, cpu in out["cpu"].items():
        gpu = out["cuda"][image_id]
        for k in np.flatnonzero(cpu.scores >= 0.3):        # every confident CPU box has its twin on the GPU
            same = gpu.category_ids == cpu.category_ids[k]
            ious = iou_matrix(cpu.boxes[k:k + 1], gpu.boxes[same])
            assert ious.size and ious.max() >= 0.98, (image_id, cpu.boxes[k])
            assert abs(gpu.scores[same][ious.argmax()] - cpu.scores[k]) <= 0.01
            confident += 1
    assert confident >= 10         # the comparison compared something (20 real road frames)


def test_warp_auto_uses_kornia_on_cuda() -> None:
    from registration.warp import warp_boxes
    from tasks.warp import _box_warper

    fn, device = _box_warper("auto")
    assert device == "cuda"
    H = np.array([[1.02, 0.01, -3.0], [-0.005, 0.98, 4.5], [1e-5, -2e-5, 1.0]])
    boxes = np.array([[10.0, 20.0, 50.0, 80.0], [100.5, 30.25, 140.0, 90.0]])
    np.testing.assert_allclose(np.asarray(fn(boxes, H, (640, 480))), warp_boxes(boxes, H, (640, 480)), atol=1e-3)


def test_training_on_cuda_uses_amp(tmp_path: Path) -> None:
    from data.synthetic import generate
    from detection.train_spec import spec_from_dict
    from tasks.train import train

    generate(tmp_path / "syn", 6, seed=3, rgb_size=(160, 128), thermal_size=(128, 96), progress=False)
    data = {"ann_file": str(tmp_path / "syn" / "labels_rgb" / "coco.json"), "img_root": str(tmp_path / "syn" / "rgb")}
    spec = spec_from_dict({"base_model": "yolox_tiny_8xb8-300e_coco", "train": data, "val": data,
                           "work_dir": str(tmp_path / "run"), "device": "auto", "input_size": (128, 128),
                           "batch_size": 2, "epochs": 1, "num_workers": 0, "progress": False, "ema": False,
                           "warmup_epochs": 0, "seed": 0})
    result = train(spec)        # NonFiniteLossGuardHook raises at the first non-finite (fp16 overflow) loss
    cfg = result.config_path.read_text()
    assert "AmpOptimWrapper" in cfg and "device='cuda'" in "".join(cfg.split()).replace('"', "'")
    assert result.epochs_run == 1 and not result.stopped_early and result.slim_checkpoint is not None
