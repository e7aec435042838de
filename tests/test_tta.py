"""Test-time augmentation for pseudo-labelling: mirrored views fused with WBF, inside the infer stage."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.tta import fuse_views, hflip, unflip_boxes


def test_unflip_maps_mirrored_boxes_back() -> None:
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    assert np.allclose(unflip_boxes(boxes, 100), [[70, 5, 90, 25], [0, 0, 100, 50]])
    assert np.allclose(unflip_boxes(unflip_boxes(boxes, 100), 100), boxes)
    img = np.arange(12, dtype=np.uint8).reshape(2, 6)
    assert hflip(img)[0, 0] == 5 and hflip(img).flags["C_CONTIGUOUS"]


def test_fuse_views_rewards_agreement() -> None:
    a = (np.array([[10.0, 10.0, 50.0, 90.0]]), np.array([0.8]), np.array([0]))
    lone = (np.array([[60.0, 10.0, 90.0, 40.0]]), np.array([0.6]), np.array([1]))
    both = (np.vstack([a[0], lone[0]]), np.array([0.8, 0.6]), np.array([0, 1]))
    b, s, lab = fuse_views([a, both], 100, 100)
    order = np.argsort(lab)
    assert np.allclose(b[order], both[0], atol=1e-3)
    assert np.allclose(s[order], [0.8, 0.3])           # seen in both views: kept; in one view of two: halved
    assert fuse_views([(np.zeros((0, 4)), np.zeros(0), np.zeros(0))] * 2, 100, 100)[0].shape == (0, 4)


def test_infer_with_flip_tta_is_mirror_consistent(tmp_path: Path) -> None:
    """TTA(mirror(I)) == mirror(TTA(I)): both fuse the detector's views of I and of its mirror."""
    from benchmarks.label_transfer_infer import make_tiny_detector
    from core.coco import load_dataset, save_dataset
    from data.synthetic import generate
    from tasks.infer import InferParams, run_infer

    cfg, ck = make_tiny_detector(tmp_path / "det", scale=128)
    generate(tmp_path / "syn", 3, seed=5, progress=False)
    ds = load_dataset(tmp_path / "syn" / "labels_thermal" / "coco.json")
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    for im in ds["images"]:
        src = tmp_path / "syn" / "thermal" / im["file_name"]
        cv2.imwrite(str(mirrored / im["file_name"]), cv2.imread(str(src), cv2.IMREAD_UNCHANGED)[:, ::-1])
    save_dataset(mirrored / "coco.json", ds)
    shutil.copy(tmp_path / "syn" / "labels_thermal" / "coco.json", tmp_path / "syn" / "thermal" / "coco.json")

    params = InferParams(config=str(cfg), checkpoint=str(ck), device="cpu", batch_size=2, min_score=0.0, tta=["flip"])
    plain = run_infer(tmp_path / "syn" / "thermal" / "coco.json", tmp_path / "plain.json",
                      params.model_copy(update={"tta": []}), cache_dir=tmp_path / "cache")
    rep = run_infer(tmp_path / "syn" / "thermal" / "coco.json", tmp_path / "tta.json", params, cache_dir=tmp_path / "cache")
    assert plain.cache_misses == 3 and rep.cache_misses == 3       # TTA is part of the cache key
    run_infer(mirrored / "coco.json", tmp_path / "tta_m.json", params, cache_dir=tmp_path / "cache")
    a, m = load_dataset(tmp_path / "tta.json"), load_dataset(tmp_path / "tta_m.json")
    assert a["annotations"], "the tiny detector emits detections"
    width = {im["id"]: im["width"] for im in ds["images"]}
    for iid in width:
        boxes = sorted(tuple(round(v, 1) for v in x["bbox"]) + (x["category_id"],)
                       for x in a["annotations"] if x["image_id"] == iid)
        back = []
        for x in m["annotations"]:
            if x["image_id"] == iid:
                bx, by, bw, bh = x["bbox"]
                back.append((round(width[iid] - bx - bw, 1), round(by, 1), round(bw, 1), round(bh, 1), x["category_id"]))
        assert len(boxes) == len(back)
        assert np.allclose(np.array(boxes, float), np.array(sorted(back), float), atol=0.15)


def test_tta_view_names_are_validated() -> None:
    from pydantic import ValidationError

    from tasks.infer import InferParams

    with pytest.raises(ValidationError):
        InferParams(config="x.py", tta=["rotate"])


def test_input_size_replaces_the_test_scale() -> None:
    """A second test scale edits the Resize scale and a fixed Pad size (YOLOX-nano's form), nothing else."""
    from mmengine.config import Config

    from detection.detector import test_pipeline_cfg

    steps = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=(416, 416), keep_ratio=True),
             dict(type="Pad", size=(416, 416), pad_val=dict(img=(114.0, 114.0, 114.0))),
             dict(type="Pad", pad_to_square=True), dict(type="PackDetInputs")]
    cfg = Config(dict(test_dataloader=dict(dataset=dict(pipeline=steps))))
    plain, big = test_pipeline_cfg(cfg), test_pipeline_cfg(cfg, (640, 512))
    assert [s["type"] for s in big] == [s["type"] for s in plain]
    assert tuple(big[1]["scale"]) == (640, 512) and tuple(big[2]["size"]) == (640, 512)
    assert big[1]["keep_ratio"] is True and "size" not in big[3] and big[4] == plain[4]
    assert tuple(plain[1]["scale"]) == (416, 416) and test_pipeline_cfg(cfg) == plain    # the config is untouched


def test_infer_at_a_second_scale(tmp_path: Path) -> None:
    """``input_size`` runs the detector at that size; ``tta_sizes`` fuses that view with the plain one
    (WBF, as the flip view); both are part of the cache key."""
    from benchmarks.label_transfer_infer import make_tiny_detector
    from core.boxes import xywh_to_xyxy
    from core.coco import load_dataset
    from core.images import read_image, to_bgr_u8
    from data.synthetic import generate
    from detection.detector import load_detector, predict_batch
    from tasks.infer import InferParams, _filter, run_infer

    cfg, ck = make_tiny_detector(tmp_path / "det", scale=128)
    generate(tmp_path / "syn", 2, seed=5, progress=False)
    coco = tmp_path / "syn" / "thermal" / "coco.json"
    shutil.copy(tmp_path / "syn" / "labels_thermal" / "coco.json", coco)
    params = InferParams(config=str(cfg), checkpoint=str(ck), device="cpu", batch_size=2, min_score=0.0)
    cache = tmp_path / "cache"
    plain = run_infer(coco, tmp_path / "plain.json", params, cache_dir=cache)
    big = run_infer(coco, tmp_path / "big.json", params.model_copy(update={"input_size": (192, 192)}), cache_dir=cache)
    both = run_infer(coco, tmp_path / "both.json", params.model_copy(update={"tta_sizes": [(192, 192)]}), cache_dir=cache)
    assert (plain.cache_misses, big.cache_misses, both.cache_misses) == (2, 2, 2)

    det = load_detector(cfg, ck, "cpu")
    ds = load_dataset(coco)
    imgs = [to_bgr_u8(read_image(coco.parent / im["file_name"])[0]) for im in ds["images"]]
    direct_plain, direct_big = predict_batch(det, imgs), predict_batch(det, imgs, (192, 192))
    assert any(len(a.boxes) != len(b.boxes) or not np.allclose(a.boxes, b.boxes)
               for a, b in zip(direct_plain, direct_big)), "the size must change what the detector sees"
    for name, views in (("big.json", [[d] for d in direct_big]),
                        ("both.json", [[a, b] for a, b in zip(direct_plain, direct_big)])):
        out = load_dataset(tmp_path / name)
        for im, v, img in zip(ds["images"], views, imgs):
            tuples = [(d.boxes, d.scores, d.labels) for d in v]
            b, s, lab = tuples[0] if len(v) == 1 else fuse_views(tuples, img.shape[1], img.shape[0])
            b, s, _ = _filter(b, s, lab, params)
            got = [a for a in out["annotations"] if a["image_id"] == im["id"]]
            assert len(got) == len(b), name
            assert np.allclose(xywh_to_xyxy([a["bbox"] for a in got]), b, atol=2e-3), name
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        InferParams(config="x.py", input_size=(8, 8))
