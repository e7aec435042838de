"""Stage ``infer``: batched inference, per-image cache, incremental runs, corrupt images.

The detector is a real mmdet YOLOX-tiny with random weights, saved as a checkpoint (so its
fingerprint is stable), made to emit a few detections per image (see
``benchmarks.label_transfer_infer.make_tiny_detector``), with a 128 px test pipeline so that it
runs in milliseconds per image on CPU.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
from pydantic import ValidationError

from benchmarks.label_transfer_infer import DET_CLASSES
from core.coco import load_dataset
from core.errors import InputError
from tasks.infer import InferParams, run_infer
from tasks.pseudo import PseudoParams, run_pseudo
from core.stage_report import StageReport, report_path


@pytest.fixture(scope="module")
def loaded(tiny_detector):
    """The detector loaded once for the module (loading costs seconds; stages accept a loaded one)."""
    from detection.detector import load_detector

    return load_detector(tiny_detector[0], tiny_detector[1], "cpu")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 4, seed=3, progress=False)
    return root


def _params(det: tuple[Path, Path], **kw) -> InferParams:
    return InferParams(config=str(det[0]), checkpoint=str(det[1]), device="cpu", batch_size=3, **kw)


def _dets(path: Path) -> list[tuple]:
    return [(a["image_id"], a["category_id"], tuple(a["bbox"]), a["score"]) for a in load_dataset(path)["annotations"]]


def test_cache_hits_incremental_and_threshold_change(tmp_path: Path, synth: Path, tiny_detector, loaded) -> None:
    from data.synthetic import generate

    root = tmp_path / "ds"
    shutil.copytree(synth, root)
    coco = root / "labels_rgb" / "coco.json"
    cache = tmp_path / "cache"
    params = _params(tiny_detector)

    def infer(out: str, p: InferParams = params) -> StageReport:
        return run_infer(coco, tmp_path / out, p, cache_dir=cache, image_root=root / "rgb", detector=loaded)

    # the first run loads the detector from config + checkpoint itself (the CLI/DVC path)
    first = run_infer(coco, tmp_path / "a.json", params, cache_dir=cache, image_root=root / "rgb")
    assert (first.cache_misses, first.cache_hits) == (4, 0)
    ds = load_dataset(tmp_path / "a.json")
    assert [c["name"] for c in ds["categories"]] == list(DET_CLASSES)
    assert len(ds["images"]) == 4 and ds["annotations"], "the biased random detector should detect something"
    assert all(a["source"] == "rgb_teacher" and 0.05 <= a["score"] <= 1 for a in ds["annotations"])
    assert all(a["bbox"][0] >= 0 and a["bbox"][0] + a["bbox"][2] <= 320.001 for a in ds["annotations"])
    assert StageReport.load(report_path(tmp_path / "a.json")).cache_misses == 4
    assert "tiny_random.pth" in first.models["detector"] and not first.fallbacks

    # re-run with the same model loaded elsewhere (same fingerprint) and another batch size: all hits
    again = infer("b.json", params.replace(batch_size=1))
    assert (again.cache_misses, again.cache_hits) == (0, 4)
    assert _dets(tmp_path / "b.json") == _dets(tmp_path / "a.json")

    # adding frames infers only the new ones
    generate(root, 2, seed=3, start_index=4, progress=False)
    more = infer("c.json")
    assert (more.cache_misses, more.cache_hits) == (2, 4)
    assert len(load_dataset(tmp_path / "c.json")["images"]) == 6

    # a pseudo-label threshold change re-runs pseudo only; the chain's inference is all cache hits
    p3 = run_pseudo(tmp_path / "c.json", tmp_path / "p3.json", PseudoParams(score_threshold=0.06, histogram=False))
    p6 = run_pseudo(tmp_path / "c.json", tmp_path / "p6.json", PseudoParams(score_threshold=0.1, histogram=False))
    assert p3.counts["boxes_out"] > p6.counts["boxes_out"]
    assert (infer("d.json").cache_misses, p3.cache_misses, p6.cache_misses) == (0, 0, 0)

    # an inference parameter that changes results is part of the key
    stricter = infer("e.json", _params(tiny_detector, min_score=0.1))
    assert stricter.cache_misses == 6
    assert all(a["score"] >= 0.1 for a in load_dataset(tmp_path / "e.json")["annotations"])

    # editing an image in place invalidates its entry (content, not path/mtime, is the key) ...
    img0 = root / "rgb" / "syn_000000.png"
    cv2.imwrite(str(img0), cv2.flip(cv2.imread(str(img0)), 1))
    # ... while two files swapping contents are both hits, and results follow the content
    (root / "rgb" / "syn_000002.png").write_bytes((synth / "rgb" / "syn_000003.png").read_bytes())
    (root / "rgb" / "syn_000003.png").write_bytes((synth / "rgb" / "syn_000002.png").read_bytes())
    edited = infer("f.json")
    assert (edited.cache_misses, edited.cache_hits) == (1, 5)
    ids = {im["file_name"]: im["id"] for im in load_dataset(coco)["images"]}

    def of(path: str, name: str) -> list[tuple]:
        return [d[1:] for d in _dets(tmp_path / path) if d[0] == ids[name]]

    assert of("f.json", "syn_000002.png") == of("a.json", "syn_000003.png") != []
    assert of("f.json", "syn_000000.png") != of("a.json", "syn_000000.png")


def test_corrupt_and_missing_images_are_skipped(tmp_path: Path, synth: Path, tiny_detector, loaded) -> None:
    root = tmp_path / "ds"
    shutil.copytree(synth, root)
    (root / "rgb" / "syn_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "rgb" / "syn_000003.png").unlink()
    out = tmp_path / "o.json"
    rep = run_infer(root / "labels_rgb" / "coco.json", out, _params(tiny_detector), cache_dir=tmp_path / "c",
                    image_root=root / "rgb", detector=loaded)
    reasons = {Path(s["image"]).name: s["reason"] for s in rep.skipped_images}
    assert set(reasons) == {"syn_000001.png", "syn_000003.png"}
    assert "decode" in reasons["syn_000001.png"] and "cannot read" in reasons["syn_000003.png"]
    ds = load_dataset(out)
    assert sorted(Path(im["file_name"]).name for im in ds["images"]) == ["syn_000000.png", "syn_000002.png"]
    assert rep.cache_misses == 2 and rep.counts["images_skipped"] == 2
    assert StageReport.load(report_path(out)).skipped_images == rep.skipped_images

    with pytest.raises(InputError, match="none of the"):
        run_infer(root / "labels_rgb" / "coco.json", tmp_path / "x.json", _params(tiny_detector),
                  cache_dir=tmp_path / "c", image_root=tmp_path / "nowhere", detector=loaded)


def test_thermal_frames_and_bad_params(tmp_path: Path, synth: Path, tiny_detector, loaded) -> None:
    rep = run_infer(synth / "labels_thermal" / "coco.json", tmp_path / "t.json",
                    _params(tiny_detector, source="thermal_teacher"), cache_dir=tmp_path / "c",
                    image_root=synth / "thermal", detector=loaded)
    ds = load_dataset(tmp_path / "t.json")
    assert rep.cache_misses == 4 and not rep.skipped_images
    assert all(a["source"] == "thermal_teacher" for a in ds["annotations"])
    assert {(im["width"], im["height"]) for im in ds["images"]} == {(256, 208)}

    with pytest.raises(ValidationError, match="batch_size"):
        InferParams(config="x.py", batch_size=0)
    with pytest.raises(ValidationError, match="source"):
        InferParams(config="x.py", source="lidar_teacher")
    with pytest.raises(ValidationError, match="does not exist"):
        InferParams(config="x.py", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValidationError, match="no detector config"):
        InferParams(config=" ")
    with pytest.raises(InputError, match=r"stage infer: batch_size: .*got 0; allowed: >= 1"):
        InferParams.validated({"config": "x.py", "batch_size": 0}, "stage infer")


def test_16bit_thermal_frames_are_stretched_like_core_images(tmp_path: Path, synth: Path, tiny_detector,
                                                             loaded) -> None:
    """A 16-bit radiometric frame is fed to the detector as ``core.images.to_bgr_u8`` makes it (stretched
    between its 0.5/99.5 percentiles), not shifted to its high byte: the detections equal those on the
    8-bit frames written from that stretch."""
    import numpy as np

    from core.images import to_gray_u8

    coco = synth / "labels_thermal" / "coco.json"
    for depth in ("16", "8"):
        (tmp_path / depth).mkdir()
    for im in load_dataset(coco)["images"]:
        raw = cv2.imread(str(synth / "thermal" / im["file_name"]), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 7 + 21_000
        assert cv2.imwrite(str(tmp_path / "16" / im["file_name"]), raw)
        assert cv2.imwrite(str(tmp_path / "8" / im["file_name"]), to_gray_u8(raw))
    reps = [run_infer(coco, tmp_path / f"t{d}.json", _params(tiny_detector, source="thermal_teacher"),
                      cache_dir=tmp_path / "c", image_root=tmp_path / d, detector=loaded) for d in ("16", "8")]
    assert [(r.cache_misses, len(r.skipped_images)) for r in reps] == [(4, 0), (4, 0)]
    assert _dets(tmp_path / "t16.json") == _dets(tmp_path / "t8.json") != []


def test_cli_infer(tmp_path: Path, synth: Path, tiny_detector, capsys) -> None:
    """``rgb2thermal stage infer`` runs alone on a COCO file and writes COCO + report."""
    from rgb2thermal_cli.main import main

    args = ["stage", "infer", "--in", str(synth / "labels_rgb" / "coco.json"), "--out", str(tmp_path / "o.json"),
            "--config", str(tiny_detector[0]), "--checkpoint", str(tiny_detector[1]), "--device", "cpu",
            "--image-root", str(synth / "rgb"), "--cache-dir", str(tmp_path / "c"), "--batch-size", "2"]
    assert main(args) == 0
    assert "cache hits/misses 0/4" in capsys.readouterr().out
    assert len(load_dataset(tmp_path / "o.json")["images"]) == 4 and report_path(tmp_path / "o.json").is_file()
    assert main(args[:-2] + ["--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err


from conftest import NANO_TEACHER as TEACHER  # noqa: E402


@pytest.mark.shared_data
def test_real_teacher_on_msrs20_chain(tmp_path: Path, msrs20: Path) -> None:
    """The real COCO YOLOX-nano teacher on the 20 real RGB frames -> pseudo -> warp (identity H).

    Not a metric benchmark: it checks that the whole chain works on real data and that the
    person/car pseudo-labels it keeps on real frames do land on real RGB ground-truth objects.
    """
    if not (TEACHER / "yolox_nano_coco.pth").is_file():
        pytest.skip(f"shared teacher not found at {TEACHER}")
    import numpy as np

    from data.adapters.folder import build_index
    from registration.registry import HomographyEntry, save_entry
    from core.boxes import iou_matrix
    from core.coco import boxes_by_image
    from tasks.warp import WarpParams, run_warp

    idx = build_index(msrs20, "msrs", tmp_path / "index", progress=False)
    p0 = idx.pairs[0]
    save_entry(tmp_path / "reg", "msrs", HomographyEntry(H=np.eye(3), rgb_size=p0.rgb_size, thermal_size=p0.thermal_size,
                                                         method="identity (pixel-aligned dataset)", error_px=0.0))
    params = InferParams(config=str(TEACHER / "yolox_nano_coco.py"), checkpoint=str(TEACHER / "yolox_nano_coco.pth"),
                         device="cpu", batch_size=10, min_score=0.1)
    rep = run_infer(idx.rgb_images, tmp_path / "infer.json", params, cache_dir=tmp_path / "cache")
    assert rep.counts["images_out"] == 20 and not rep.skipped_images and not rep.fallbacks
    ps = run_pseudo(tmp_path / "infer.json", tmp_path / "pseudo.json", PseudoParams(vehicles_as_car=True))
    wp = run_warp(tmp_path / "pseudo.json", tmp_path / "thermal.json", WarpParams(registry_dir=tmp_path / "reg"),
                  index=idx.path)
    assert wp.counts["boxes_out"] == ps.counts["boxes_out"] > 0  # identity H: nothing moves, nothing is dropped

    pred = boxes_by_image(load_dataset(tmp_path / "thermal.json"))
    gt = boxes_by_image(idx.load_labels("rgb"))
    hits = 0
    for image_id, p in pred.items():
        g = gt[image_id]
        for c in (1, 2):
            m = iou_matrix(p.boxes[p.category_ids == c], g.boxes[g.category_ids == c])
            hits += int((m.max(axis=1) >= 0.5).sum()) if m.size else 0
    assert hits >= ps.counts["boxes_out"] // 3, (hits, ps.counts)


def test_hash_memo_skips_reading_unchanged_images_and_notices_edits(tmp_path: Path, synth: Path, tiny_detector,
                                                                    loaded) -> None:
    """With the pipeline's stat memo, a cached image whose file is unchanged is not read; an image
    edited in place (new mtime) is hashed again and re-inferred."""
    import os
    import time

    from core.hashing import HashMemo

    root = tmp_path / "ds"
    shutil.copytree(synth, root)
    old = time.time() - 3600
    for f in (root / "rgb").iterdir():
        os.utime(f, (old, old))            # settled files: memoised (fresh ones would be "racy")
    coco = root / "labels_rgb" / "coco.json"
    memo = HashMemo()

    def infer(out: str) -> StageReport:
        return run_infer(coco, tmp_path / out, _params(tiny_detector), cache_dir=tmp_path / "cache",
                         image_root=root / "rgb", detector=loaded, hash_memo=memo)

    assert (infer("a.json").cache_misses, memo.hits) == (4, 0)
    again = infer("b.json")
    assert (again.cache_misses, again.cache_hits, memo.hits) == (0, 4, 4)
    assert _dets(tmp_path / "b.json") == _dets(tmp_path / "a.json")
    img0 = root / "rgb" / "syn_000000.png"
    cv2.imwrite(str(img0), cv2.flip(cv2.imread(str(img0)), 1))
    os.utime(img0, (old + 60, old + 60))
    edited = infer("c.json")
    assert (edited.cache_misses, edited.cache_hits) == (1, 3)


def test_repeated_frames_are_hits_once_inferred_as_one_frame_at_a_time(tmp_path: Path, synth: Path, tiny_detector,
                                                                        loaded) -> None:
    """The prefetch thread looks frames up ahead of the forward pass; the loop still counts a frame
    whose content an earlier batch of the same run inferred as a cache hit (as a sequential loop
    reading the cache entry just written would), and one whose twin is still pending as a miss."""
    from core.coco import new_dataset, save_dataset

    size = {im["file_name"]: (im["width"], im["height"]) for im in load_dataset(synth / "labels_rgb" / "coco.json")["images"]}
    names = ["syn_000000.png", "syn_000001.png", "syn_000000.png", "syn_000002.png", "syn_000002.png",
             "syn_000001.png", "syn_000003.png"]
    images = [{"id": i + 1, "file_name": str(synth / "rgb" / n), "width": size[n][0], "height": size[n][1]}
              for i, n in enumerate(names)]
    coco = save_dataset(tmp_path / "rep.json", new_dataset(images, [], [{"id": 1, "name": "person"}]))
    # batch 2: ids 1, 2 inferred; 3 (= 1) a hit; 4 pending; 5 (= 4) arrives while its twin is pending: a miss,
    # inferred with it; 6 (= 2) a hit; 7 inferred alone at the end
    rep = run_infer(coco, tmp_path / "o.json", _params(tiny_detector).replace(batch_size=2), cache_dir=tmp_path / "c",
                    detector=loaded)
    assert (rep.cache_misses, rep.cache_hits) == (5, 2)
    by_id: dict[int, list] = {}
    for d in _dets(tmp_path / "o.json"):
        by_id.setdefault(d[0], []).append(d[1:])
    assert by_id[3] == by_id[1] and by_id[6] == by_id[2] and by_id[5] == by_id[4] and by_id[1] != by_id[2]


def test_prefetch_keeps_order_runs_a_bounded_distance_ahead_and_stops_on_error() -> None:
    """The prefetch thread (used when a core is free for it; inline otherwise: ``threads=0``)."""
    import contextlib
    import threading

    from tasks.infer import _prefetched

    started: list[int] = []
    consumed: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
            assert len(started) - len(consumed) <= 4, "more than ahead + 1 items in flight"
        return x * x

    for got in _prefetched(work, range(20), ahead=3, threads=1):
        with lock:
            consumed.append(got)
    assert consumed == [x * x for x in range(20)] and sorted(started) == list(range(20))
    assert list(_prefetched(lambda x: -x, range(5), ahead=3, threads=0)) == [0, -1, -2, -3, -4]

    def fail_at_5(x: int) -> int:
        if x == 5:
            raise ValueError("frame 5")
        return x

    seen = []
    with pytest.raises(ValueError, match="frame 5"), contextlib.closing(_prefetched(fail_at_5, range(100), 2, 1)) as it:
        for got in it:
            seen.append(got)
    assert seen == [0, 1, 2, 3, 4]
