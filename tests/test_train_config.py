"""Config generation from the spec: tiny and s variants, every loss override, dataset refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.coco import annotation, categories_from_names, new_dataset, save_dataset
from core.errors import InputError
from detection.train_spec import LOSS_SLOTS, spec_from_dict

pytest.importorskip("mmdet")


def _write_set(root, n_images=3, categories=("person", "car"), boxes=True):
    import cv2

    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        img = np.full((80, 96, 3), 90, np.uint8)
        cv2.rectangle(img, (10, 10), (30, 60), (20, 200, 240), -1)
        cv2.imwrite(str(root / "img" / f"{i}.png"), img)
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 80})
        if boxes:
            anns.append(annotation(len(anns) + 1, i, 1, [10, 10, 31, 61]))
            anns.append(annotation(len(anns) + 1, i, 2, [40, 40, 90, 70]))
    save_dataset(root / "coco.json", new_dataset(images, anns, categories_from_names(list(categories))))
    return {"ann_file": str(root / "coco.json"), "img_root": str(root / "img")}


@pytest.fixture()
def tiny_set(tmp_path):
    return _write_set(tmp_path / "set")


def _spec(tmp_path, train, **kw):
    return spec_from_dict({"base_model": "yolox_tiny_8xb8-300e_coco", "train": train, "work_dir": str(tmp_path / "run"),
                           "device": "cpu", "input_size": (128, 96), **kw})


def _loss_is_finite(cfg):
    """Build the configured model and compute its training loss on one small labelled batch."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from detection.mmdet_utils import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), batch_input_shape=(64, 64),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[8.0, 6.0, 30.0, 50.0], [30.0, 30.0, 60.0, 50.0]]),
                                       labels=torch.tensor([0, 1]))
    losses = model.loss(torch.rand(1, 3, 64, 64) * 255, [sample])
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    return {k: float(v) for k, v in losses.items()}


OVERRIDES = [
    {},
    {"loss_cls": {"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25}},
    {"loss_obj": {"type": "FocalLoss", "gamma": 1.5, "alpha": 0.25}},
    {"loss_cls": {"type": "QualityFocalLoss", "beta": 2.0}},
    {"loss_cls": {"type": "VarifocalLoss"}},
    {"loss_bbox": {"type": "GIoULoss"}},
    {"loss_bbox": {"type": "CIoULoss"}},
    {"loss_bbox": {"type": "DIoULoss"}},
    {"loss_bbox": {"type": "EIoULoss"}},
    {"loss_bbox": {"type": "SIoULoss"}},
    {"loss_l1": {"type": "SmoothL1Loss", "beta": 1.0}},
]


@pytest.mark.parametrize("losses", OVERRIDES, ids=lambda o: "-".join(f"{k}={v['type']}" for k, v in o.items()) or "default")
def test_tiny_config_with_each_loss_override(tmp_path, tiny_set, losses):
    from detection.train_config import build_config

    spec = _spec(tmp_path, tiny_set, losses=losses, batch_size=2, epochs=3)
    cfg = build_config(spec)
    head = cfg.model.bbox_head
    assert head.num_classes == 2
    for slot, o in losses.items():
        assert head[slot]["type"] == o["type"] and head[slot]["reduction"] == "sum"
        for k, v in o.items():
            assert head[slot][k] == v
    values = _loss_is_finite(cfg)
    assert all(math.isfinite(v) for v in values.values()), values


def test_s_config_with_combined_overrides_and_resolved_fields(tmp_path, tiny_set):
    from mmengine.config import Config

    from core import atomic
    from detection.train_config import build_config

    losses = {"loss_cls": {"type": "FocalLoss", "gamma": 2.0, "alpha": 0.25}, "loss_bbox": {"type": "CIoULoss"},
              "loss_obj": {"type": "QualityFocalLoss"}}
    spec = spec_from_dict({"base_model": "yolox_s_8xb8-300e_coco", "train": tiny_set, "val": tiny_set,
                           "work_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 16, "epochs": 4,
                           "losses": losses, "early_stop_patience": 2, "freeze_bn": True, "frozen_stages": 0})
    assert spec.effective_lr == pytest.approx(0.01 * 16 / 64)  # YOLOX linear scaling rule
    cfg = build_config(spec)
    assert cfg.model.backbone.widen_factor == 0.5  # the s variant
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(0.0025)
    assert cfg.optim_wrapper.clip_grad.max_norm == 10.0
    assert cfg.train_dataloader.dataset.metainfo == dict(classes=("person", "car"))
    assert cfg.default_hooks.checkpoint.save_best == "coco/bbox_mAP_50"
    hooks = [h["type"] for h in cfg.custom_hooks]
    assert next(h for h in cfg.custom_hooks if h["type"] == "EarlyStoppingHook")["min_delta"] == 0.001
    assert "YOLOXModeSwitchHook" not in hooks and "EarlyStoppingHook" in hooks and "FrozenBatchNormHook" in hooks
    assert not any("Mosaic" in str(t) or "MixUp" in str(t) for t in cfg.train_dataloader.dataset.pipeline)
    assert cfg.model.data_preprocessor.get("batch_augments") is None
    assert cfg.param_scheduler[-1]["end"] == 4 * 1  # 3 images, batch 16 -> 1 iteration per epoch
    path = atomic.write_text(tmp_path / "config.py", cfg.pretty_text)
    again = Config.fromfile(str(path))  # the written file is a loadable, self-contained mmdet config
    assert again.model.bbox_head.loss_cls.type == "FocalLoss"
    values = _loss_is_finite(cfg)
    assert all(math.isfinite(v) for v in values.values())


def test_bad_loss_specs_are_input_errors(tmp_path, tiny_set):
    from detection.train_config import build_config

    with pytest.raises(InputError, match="does not fit this slot"):
        _spec(tmp_path, tiny_set, losses={"loss_bbox": {"type": "FocalLoss"}})
    with pytest.raises(InputError, match="unknown loss slot"):
        _spec(tmp_path, tiny_set, losses={"loss_foo": {"type": "FocalLoss"}})
    with pytest.raises(InputError, match="invalid arguments for FocalLoss"):
        build_config(_spec(tmp_path, tiny_set, losses={"loss_cls": {"type": "FocalLoss", "gama": 2.0}}))


def test_empty_and_unlabelled_sets_are_refused(tmp_path):
    from detection.train_config import build_config

    unlabelled = _write_set(tmp_path / "nolabels", boxes=False)
    with pytest.raises(InputError, match="no boxes of"):
        build_config(_spec(tmp_path, unlabelled))
    empty = _write_set(tmp_path / "empty", n_images=0)
    with pytest.raises(InputError, match="has no images"):
        build_config(_spec(tmp_path, empty))


def test_swapped_category_order_is_refused(tmp_path):
    from detection.train_config import build_config

    swapped = _write_set(tmp_path / "swapped", categories=("car", "person"))
    with pytest.raises(InputError, match="swap classes"):
        build_config(_spec(tmp_path, swapped))
    with pytest.raises(InputError, match=r"target classes \['bicycle'\] are not categories"):
        build_config(_spec(tmp_path, swapped, classes=["bicycle"]))


def test_spec_validation_messages(tmp_path, tiny_set):
    with pytest.raises(InputError, match="multiples of 32"):
        _spec(tmp_path, tiny_set, input_size=(100, 96))
    with pytest.raises(InputError, match="does not exist"):
        _spec(tmp_path, {"ann_file": str(tmp_path / "nope.json"), "img_root": str(tmp_path)})
    assert set(LOSS_SLOTS) == {"loss_cls", "loss_obj", "loss_bbox", "loss_l1"}
