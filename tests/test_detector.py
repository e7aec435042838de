"""Detector: save (a few real training iterations) -> load -> predict; batching and conventions."""
from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest

from core.coco import load_dataset
from core.errors import InputError

pytest.importorskip("mmdet")

from conftest import NANO_TEACHER as NANO  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from data.synthetic import generate
    from tasks.train import train
    from detection.train_spec import spec_from_dict

    syn = tmp_path_factory.mktemp("syn")
    generate(syn, 4, seed=7, rgb_size=(160, 128), thermal_size=(128, 96), progress=False)
    data = {"ann_file": str(syn / "labels_rgb" / "coco.json"), "img_root": str(syn / "rgb")}
    spec = spec_from_dict({"base_model": "yolox_tiny_8xb8-300e_coco", "train": data, "val": data,
                           "work_dir": str(tmp_path_factory.mktemp("run")), "device": "cpu", "input_size": (128, 128),
                           "batch_size": 2, "epochs": 1, "num_workers": 0, "progress": False, "ema": False})
    return syn, train(spec)


def test_save_load_predict(trained_run):
    import cv2

    from core.coco import load_dataset
    from detection.detector import label_map_by_name, load_detector, predict_batch

    import torch

    syn, result = trained_run
    det = load_detector(result.config_path, result.slim_checkpoint, device="cpu")
    saved = torch.load(result.slim_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    loaded = det.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    det.model.bbox_head.test_cfg["score_thr"] = 0.0  # 1 epoch from random init: keep its low-score boxes
    assert det.classes == ("person", "car")
    assert not det.fingerprint.startswith("random-init") and len(det.fingerprint) == 64
    assert "best_slim.pth" in det.description
    ds = load_dataset(syn / "labels_rgb" / "coco.json")
    images = [cv2.imread(str(syn / "rgb" / im["file_name"])) for im in ds["images"]]
    thermal = cv2.imread(str(next((syn / "thermal").glob("*.png"))), cv2.IMREAD_GRAYSCALE)
    dets = predict_batch(det, images + [thermal])
    assert len(dets) == len(images) + 1
    for d, img in zip(dets, images + [thermal]):
        h, w = img.shape[:2]
        assert d.boxes.shape == (len(d), 4) and d.scores.shape == (len(d),)
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= w).all() and (d.boxes[:, 3] <= h).all()
        assert ((d.labels >= 0) & (d.labels < 2)).all()
    assert all(len(d) > 0 for d in dets)
    assert label_map_by_name(det.classes, ds["categories"]) == {0: 1, 1: 2}
    # same weights, same config -> same fingerprint; a different checkpoint file -> a different one
    assert load_detector(result.config_path, result.slim_checkpoint, device="cpu").fingerprint == det.fingerprint
    if result.best_checkpoint is not None and result.best_checkpoint != result.last_checkpoint:
        assert load_detector(result.config_path, result.last_checkpoint, device="cpu").fingerprint != det.fingerprint


def test_gray_is_replicated_and_batch_equals_single(trained_run):
    import cv2

    from detection.detector import load_detector, predict_batch

    syn, result = trained_run
    det = load_detector(result.config_path, result.last_checkpoint, device="cpu")
    det.model.bbox_head.test_cfg["score_thr"] = 0.0
    gray = cv2.imread(str(next((syn / "thermal").glob("*.png"))), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.imread(str(next((syn / "rgb").glob("*.png"))))
    a = predict_batch(det, [gray])[0]
    assert len(a) > 0
    b = predict_batch(det, [np.repeat(gray[:, :, None], 3, axis=2)])[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    single = predict_batch(det, [rgb])[0]
    both = predict_batch(det, [gray, rgb])[1]
    # Same detections, compared as a set: boxes with tied scores (common with near-random
    # weights at score_thr 0) may come out in either order from a batch of one or of two.
    assert len(both) == len(single)
    # tolerances as before: boxes 1e-3 px, scores 1e-5, labels exact; every row matched both ways
    tol = np.array([1e-3] * 4 + [1e-5, 0.5])
    rows_single = np.column_stack([single.boxes, single.scores, single.labels])
    rows_both = np.column_stack([both.boxes, both.scores, both.labels])
    within = (np.abs(rows_single[:, None, :] - rows_both[None, :, :]) <= tol).all(axis=2)
    assert within.any(axis=1).all(), "a detection of the single-image batch has no match in the batch of two"
    assert within.any(axis=0).all(), "a detection of the batch of two has no match in the single-image batch"
    with pytest.raises(InputError, match="uint8"):
        predict_batch(det, [rgb.astype(np.float32)])


def test_evaluation_decodes_16bit_and_gray_through_core_images(trained_run, tmp_path):
    """Evaluation predictions (``tasks.infer.infer_results``, the infer stage) read 16-bit and gray
    frames exactly as ``core.images.to_bgr_u8`` converts them: same results as on the 8-bit
    stretched copies; an unreadable frame is skipped and listed in the report, the others scored."""
    import cv2

    from core.images import to_gray_u8
    from detection.detector import load_detector
    from tasks.infer import InferParams, infer_results

    syn, result = trained_run
    det = load_detector(result.config_path, result.last_checkpoint, device="cpu")
    det.model.bbox_head.test_cfg["score_thr"] = 0.0
    params = InferParams(config=str(result.config_path), checkpoint=str(result.last_checkpoint), device="cpu",
                         min_score=0.0)
    ann = syn / "labels_thermal" / "coco.json"
    for depth in ("16", "8"):
        (tmp_path / depth).mkdir()
    for png in sorted((syn / "thermal").glob("*.png")):
        raw = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 5 + 9_000
        assert cv2.imwrite(str(tmp_path / "16" / png.name), raw)
        assert cv2.imwrite(str(tmp_path / "8" / png.name), to_gray_u8(raw))

    def run(depth: str, name: str):
        return infer_results(ann, tmp_path / f"{name}.json", params, cache_dir=tmp_path / "cache",
                             image_root=tmp_path / depth, detector=det)

    wide, rep = run("16", "wide")
    assert wide and wide == run("8", "narrow")[0] and rep.cache_misses == 4
    (tmp_path / "16" / png.name).write_bytes(b"")
    rest, rep = run("16", "broken")
    assert [(Path(s["image"]).name, s["reason"].startswith("corrupt")) for s in rep.skipped_images] == [(png.name, True)]
    gone = next(im["id"] for im in load_dataset(ann)["images"] if im["file_name"].endswith(png.name))
    assert rest == [r for r in wide if r["image_id"] != gone] and rep.cache_hits == 3


def test_random_init_is_marked_and_mismatch_refused(trained_run):
    from detection.detector import load_detector

    syn, result = trained_run
    rnd = load_detector("yolox_tiny_8xb8-300e_coco", None, device="cpu", classes=["person", "car"])
    assert rnd.fingerprint.startswith("random-init:") and "RANDOM WEIGHTS" in rnd.description
    with pytest.raises(InputError, match="differ from the checkpoint's classes"):
        load_detector(result.config_path, result.slim_checkpoint, device="cpu", classes=["car", "person"])
    with pytest.raises(InputError, match="does not fit the config"):
        load_detector("yolox_s_8xb8-300e_coco", result.slim_checkpoint, device="cpu")


@pytest.mark.skipif(not (NANO / "yolox_nano_coco.pth").is_file(), reason=f"shared nano teacher absent at {NANO}")
def test_real_coco_teacher_matches_mmdet_inference_detector(trained_run):
    """Our batched path gives mmdet's own ``inference_detector`` result for the real COCO nano."""
    import cv2
    from mmdet.apis import inference_detector

    from detection.detector import load_detector, predict_batch

    syn, _ = trained_run
    det = load_detector(NANO / "yolox_nano_coco.py", NANO / "yolox_nano_coco.pth", device="cpu")
    assert len(det.classes) == 80 and det.classes[2] == "car"
    img = cv2.imread(str(next((syn / "rgb").glob("*.png"))))
    ours = predict_batch(det, [img])[0]
    assert len(ours) > 0
    ref = inference_detector(det.model, img).pred_instances
    keep = ref.scores.numpy() > 0
    np.testing.assert_allclose(ours.scores, ref.scores.numpy()[keep], atol=1e-6)
    from core.boxes import clip

    np.testing.assert_allclose(ours.boxes, clip(ref.bboxes.numpy()[keep].astype(np.float64), 160, 128), atol=1e-3)
