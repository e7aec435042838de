"""Class-head transfer: mapped COCO rows land bit-for-bit, everything else is copied, errors are clear."""
from __future__ import annotations


import pytest

from core.errors import InputError
from detection.head_transfer import class_mapping, transfer_state_dict

pytest.importorskip("mmdet")

from conftest import NANO_TEACHER as NANO  # noqa: E402
CLS = "bbox_head.multi_level_conv_cls"


def _models():
    import torch
    from mmdet.datasets import CocoDataset

    from detection.mmdet_utils import build_model, load_config

    cfg = load_config("yolox_tiny_8xb8-300e_coco")
    torch.manual_seed(0)
    cfg.model.bbox_head.num_classes = 80
    src = build_model(cfg.model).state_dict()
    for v in src.values():  # make every row distinguishable
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
    cfg.model.bbox_head.num_classes = 2
    tgt = build_model(cfg.model).state_dict()
    return src, tgt, tuple(CocoDataset.METAINFO["classes"])


def test_mapped_rows_are_copied_bit_for_bit():
    import torch

    src, tgt, coco = _models()
    out, report = transfer_state_dict(src, tgt, coco, ["person", "car"])
    assert report.mode == "transfer" and len(report.transferred_keys) == 6  # 3 levels x (weight, bias)
    for lvl in range(3):
        for kind in ("weight", "bias"):
            k = f"{CLS}.{lvl}.{kind}"
            assert out[k].shape[0] == 2
            assert torch.equal(out[k][0], src[k][0])  # person is COCO row 0
            assert torch.equal(out[k][1], src[k][2])  # car is COCO row 2
    other = [k for k in tgt if CLS not in k]
    assert all(torch.equal(out[k], src[k]) for k in other)
    assert report.copied_keys == len(other)


def test_reinit_keeps_fresh_head_and_multi_source_averages():
    import torch

    src, tgt, coco = _models()
    out, report = transfer_state_dict(src, tgt, coco, ["person", "car"], mode="reinit")
    k = f"{CLS}.0.bias"
    assert torch.equal(out[k], tgt[k]) and report.reinitialised_keys
    out, report = transfer_state_dict(src, tgt, coco, ["person", "car"], class_map={"car": ["car", "truck", "bus"]})
    w = f"{CLS}.1.weight"
    assert torch.allclose(out[w][1], (src[w][2] + src[w][7] + src[w][5]) / 3)
    assert torch.equal(out[w][0], src[w][0])
    assert report.averaged_rows == ["car <- mean(car, truck, bus)"]


def test_unknown_class_lists_the_checkpoint_classes():
    with pytest.raises(InputError, match=r"\['lorry'\].*it has: person, bicycle, car"):
        class_mapping(["person", "lorry"], ["person", "bicycle", "car"])
    with pytest.raises(InputError, match="it has: person, bicycle, car"):
        class_mapping(["car"], ["person", "bicycle", "car"], {"car": ["automobile"]})


def test_wrong_architecture_is_refused():
    import torch

    src, tgt, coco = _models()
    src = dict(src)
    src["backbone.stem.conv.conv.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(InputError, match="same architecture"):
        transfer_state_dict(src, tgt, coco, ["person", "car"])


@pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared nano teacher absent at {NANO}")
def test_real_coco_checkpoint_rows_transfer(tmp_path):
    """With the real COCO nano checkpoint: the prepared init weights carry its person/car rows."""
    import torch

    from detection.detector import read_checkpoint
    from tasks.train import prepare_init_weights
    from detection.train_config import build_config
    import cv2
    import numpy as np

    from core.coco import annotation, categories_from_names, new_dataset, save_dataset
    from detection.train_spec import spec_from_dict

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "1.png"), np.full((80, 96, 3), 90, np.uint8))
    save_dataset(tmp_path / "coco.json", new_dataset([{"id": 1, "file_name": "1.png", "width": 96, "height": 80}],
                                                     [annotation(1, 1, 1, [10, 10, 31, 61])],
                                                     categories_from_names(["person", "car"])))
    data = {"ann_file": str(tmp_path / "coco.json"), "img_root": str(tmp_path / "img")}

    spec = spec_from_dict({"base_model": str(NANO / "yolox_nano_coco.py"), "train": data, "device": "cpu",
                           "work_dir": str(tmp_path / "run"), "load_from": str(NANO / "yolox_nano_coco.pth"),
                           "input_size": (128, 96)})
    (tmp_path / "run").mkdir()
    info = prepare_init_weights(spec, build_config(spec))
    init = torch.load(info["init_weights"], map_location="cpu", weights_only=True)["state_dict"]
    teacher = read_checkpoint(NANO / "yolox_nano_coco.pth")["state_dict"]
    for lvl in range(3):
        k = f"{CLS}.{lvl}.weight"
        assert torch.equal(init[k][0], teacher[k][0]) and torch.equal(init[k][1], teacher[k][2])
    assert info["head"]["mapping"] == {"person": ["person"], "car": ["car"]}
