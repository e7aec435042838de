"""Refine stage, SAM2 path: the real SAM2.1 hiera-tiny with RANDOM weights (no download).

Random weights make the masks meaningless, so these tests check what does not depend on the
weights: one image embedding per image, all boxes of an image in one decoder call, output
shapes, the replace/keep/drop decisions, the batched-image path, and checkpoint loading.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core import coco
from tasks.refine import RefineParams, run_refine
from tasks.refine_sam2 import Sam2Config, Sam2Refiner, masks_to_boxes


@pytest.fixture(scope="module")
def refiner() -> Sam2Refiner:
    return Sam2Refiner.load(Sam2Config(random_weights=True))


@pytest.fixture(scope="module")
def thermal_coco(tmp_path_factory) -> Path:
    """3 synthetic thermal frames: 2 with 2-5 boxes each, 1 without boxes."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("syn_sam2")
    generate(root, 3, seed=5, objects_per_image=(2, 5), progress=False)
    ds = coco.load_dataset(root / "labels_thermal" / "coco.json")
    keep = [im["id"] for im in ds["images"]][:2]
    ds["annotations"] = [a for a in ds["annotations"] if a["image_id"] in keep]
    for im in ds["images"]:
        im["file_name"] = str(root / "thermal" / im["file_name"])
    path = root / "warped.json"
    coco.save_dataset(path, ds)
    return path


class CallCounter:
    """Counts calls to the predictor's real methods (the methods still run)."""

    def __init__(self, predictor, names):
        self.calls = Counter()
        self.boxes_per_predict = []
        for name in names:
            orig = getattr(predictor, name)

            def wrapped(*args, _orig=orig, _name=name, **kwargs):
                self.calls[_name] += 1
                if _name == "predict":
                    self.boxes_per_predict.append(len(kwargs["box"]))
                return _orig(*args, **kwargs)

            setattr(predictor, name, wrapped)
        self._predictor, self._names = predictor, names

    def restore(self):
        for name in self._names:
            delattr(self._predictor, name)


@pytest.fixture(scope="module")
def first_run(refiner, thermal_coco, tmp_path_factory):
    """One SAM2 run of the stage (thresholds 0: replace whatever SAM2 finds), with call counts.

    The other tests reuse its per-image cache, so SAM2 encodes each image once per session
    here (the image encoder costs ~2 s per frame on 2 CPU cores)."""
    tmp = tmp_path_factory.mktemp("sam2_run")
    counter = CallCounter(refiner.predictor, ["set_image", "predict"])
    try:
        rep = run_refine(thermal_coco, tmp / "r.json",
                         RefineParams(sam2_random_weights=True, min_iou=0.0, sam2_score_threshold=0.0, min_size=0),
                         sam2_refiner=refiner, cache_dir=tmp / "cache")
    finally:
        counter.restore()
    return {"report": rep, "out": tmp / "r.json", "cache": tmp / "cache", "calls": counter}


def raw_results(ds: dict, cache: Path, fingerprint: str) -> dict:
    """The refiner's raw (new boxes, scores) per image, read back from the stage's cache."""
    from core.boxes import clip
    from core.hashing import file_sha256
    from core.image_cache import ImageCache
    from tasks.refine import CACHE_SCHEMA, raw_get, raw_key, resolve_image_path

    out = {}
    by_img = coco.boxes_by_image(ds)
    store = ImageCache(cache, CACHE_SCHEMA)
    for im in ds["images"]:
        b = by_img[im["id"]].boxes
        if len(b):
            sha = file_sha256(resolve_image_path(im, Path("."), None, None))
            key = raw_key(store, sha, fingerprint, clip(b, im["width"], im["height"]))
            out[im["id"]] = raw_get(store, key, len(b))[:2]
    return out


def test_masks_to_boxes():
    m = np.zeros((3, 6, 8), dtype=bool)
    m[0, 1:3, 2:5] = True
    m[1, 5, 7] = True
    boxes, empty = masks_to_boxes(m)
    np.testing.assert_array_equal(boxes[0], [2, 1, 5, 3])
    np.testing.assert_array_equal(boxes[1], [7, 5, 8, 6])
    assert empty.tolist() == [False, False, True] and np.isnan(boxes[2]).all()


def test_one_embedding_and_one_prompt_call_per_image(first_run, thermal_coco):
    ds = coco.load_dataset(thermal_coco)
    per_image = Counter(a["image_id"] for a in ds["annotations"])
    calls = first_run["calls"]
    rep = first_run["report"]
    assert calls.calls["set_image"] == len(per_image)  # the box-less image is never encoded
    assert calls.calls["predict"] == len(per_image)
    assert sorted(calls.boxes_per_predict) == sorted(per_image.values())
    out = coco.load_dataset(first_run["out"])
    assert len(out["images"]) == len(ds["images"]) and len(out["annotations"]) == len(ds["annotations"])
    assert rep.models["refiner"].startswith("SAM2") and "RANDOM" in rep.models["refiner"]
    assert any("RANDOM" in f for f in rep.fallbacks)
    assert rep.cache_misses == len(per_image) and rep.cache_hits == 0
    for a in out["annotations"]:
        r = a["refine"]
        assert r["method"] == "sam2" and 0.0 <= r["score"] <= 1.0
        # thresholds at 0: every box with a non-empty mask is replaced by its mask's box
        assert r["decision"] == ("keep" if r["reason"] == "empty_mask" else "replace")
    assert rep.counts["replace"] + rep.counts["keep"] == len(ds["annotations"])


def test_decisions_follow_thresholds(refiner, first_run, thermal_coco, tmp_path):
    ds = coco.load_dataset(thermal_coco)
    n_img = first_run["report"].cache_misses
    params = dict(sam2_random_weights=True, sam2_score_threshold=1.0)
    drop = run_refine(thermal_coco, tmp_path / "drop.json", RefineParams(**params, on_reject="drop"),
                      sam2_refiner=refiner, cache_dir=first_run["cache"])
    assert drop.cache_hits == n_img and drop.cache_misses == 0  # policy change: SAM2 does not run again
    out = coco.load_dataset(tmp_path / "drop.json")
    assert drop.counts["drop"] + drop.counts["replace"] == len(ds["annotations"])
    assert len(out["annotations"]) == drop.counts["replace"]
    assert sum(drop.dropped.values()) == drop.counts["drop"] > 0
    keep = run_refine(thermal_coco, tmp_path / "keep.json", RefineParams(**params, on_reject="keep"),
                      sam2_refiner=refiner, cache_dir=first_run["cache"])
    kept = coco.load_dataset(tmp_path / "keep.json")["annotations"]
    assert len(kept) == len(ds["annotations"]) and keep.counts["keep"] == drop.counts["drop"]
    for a, orig in zip(kept, ds["annotations"]):
        if a["refine"]["decision"] == "keep":
            assert a["bbox"] == pytest.approx(orig["bbox"], abs=1e-3)
            assert a["refine"]["prompt_bbox"] == orig["bbox"]


def test_image_batched_path_agrees(refiner, first_run, thermal_coco):
    """``set_image_batch`` + ``predict_batch`` over 2 images = the per-image results."""
    from core.boxes import clip
    from core.images import read_image, to_rgb_u8
    from tasks.refine import resolve_image_path

    ds = coco.load_dataset(thermal_coco)
    ref = raw_results(ds, first_run["cache"], refiner.fingerprint)
    by_img = coco.boxes_by_image(ds)
    ids = sorted(ref)
    images = {im["id"]: im for im in ds["images"]}
    imgs = [to_rgb_u8(read_image(resolve_image_path(images[i], thermal_coco, None, None))[0]) for i in ids]
    boxes = [clip(by_img[i].boxes, images[i]["width"], images[i]["height"]) for i in ids]
    counter = CallCounter(refiner.predictor, ["set_image_batch", "predict_batch"])
    try:
        batched = refiner.refine_images(imgs, boxes)
    finally:
        counter.restore()
    assert counter.calls == Counter({"set_image_batch": 1, "predict_batch": 1})
    for i, (bb, bs) in zip(ids, batched):
        sb, ss = ref[i]
        assert bb.shape == sb.shape == (len(boxes[ids.index(i)]), 4)
        np.testing.assert_allclose(bs, ss, atol=2e-3)


def test_user_checkpoint_loads_and_chunked_prompts_agree(refiner, first_run, thermal_coco, tmp_path):
    """A saved SAM2 checkpoint loads (strict weights_only) into the same model; prompting one
    box per decoder call (``max_boxes_per_call=1``) gives the same scores as one batched call."""
    import torch

    ckpt = tmp_path / "sam2_random.pt"
    torch.save({"model": refiner.predictor.model.state_dict()}, ckpt)
    loaded = Sam2Refiner.load(Sam2Config(checkpoint=str(ckpt), max_boxes_per_call=1))
    assert "sam2_random.pt" in loaded.description and "weights_only" in loaded.description
    assert "RANDOM" not in loaded.description and loaded.fingerprint != refiner.fingerprint
    ds = coco.load_dataset(thermal_coco)
    ref = raw_results(ds, first_run["cache"], refiner.fingerprint)
    iid = max(ref, key=lambda i: len(ref[i][1]))
    im = next(x for x in ds["images"] if x["id"] == iid)
    from core.boxes import clip
    from core.images import read_image, to_rgb_u8
    from tasks.refine import resolve_image_path

    img = to_rgb_u8(read_image(resolve_image_path(im, thermal_coco, None, None))[0])
    boxes = clip(coco.boxes_by_image(ds)[iid].boxes, im["width"], im["height"])
    counter = CallCounter(loaded.predictor, ["predict"])
    try:
        new, scores = loaded.refine_images([img], [boxes])[0]
    finally:
        counter.restore()
    assert counter.calls["predict"] == len(boxes) > 1
    np.testing.assert_allclose(scores, ref[iid][1], atol=2e-3)
    assert new.shape == (len(boxes), 4)


def test_wrong_config_for_checkpoint_is_an_input_error(refiner, tmp_path):
    import torch

    from core.errors import InputError

    ckpt = tmp_path / "partial.pt"
    sd = refiner.predictor.model.state_dict()
    torch.save({"model": {k: v for k, v in list(sd.items())[:5]}}, ckpt)
    with pytest.raises(InputError, match="does not fit config"):
        Sam2Refiner.load(Sam2Config(checkpoint=str(ckpt)))
