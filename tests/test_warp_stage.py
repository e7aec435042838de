"""Stage ``warp``: boxes reach the thermal frame through each image's own homography, within 1 px."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.boxes import xywh_to_xyxy
from core.coco import annotation, load_dataset, new_dataset, save_dataset
from core.errors import InputError
from core.stage_report import StageReport, report_path
from tasks.warp import WarpParams, run_warp

RGB, THERMAL = (320, 256), (256, 208)


def _expected(boxes_xyxy: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Independent reference: OpenCV moves the 4 corners, then enclosing box, then clip."""
    import cv2

    b = np.asarray(boxes_xyxy, dtype=np.float64)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
    pts = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), H).reshape(-1, 4, 2)
    enc = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
    return np.clip(enc, 0, [size[0], size[1], size[0], size[1]])


def _dataset(root: Path, version: str, n: int, H: np.ndarray | None = None, seed: int = 0):
    from data.adapters.folder import build_index
    from data.synthetic import generate
    from registration.registry import HomographyEntry, save_entry

    info = generate(root / version, n, seed=seed, homography=H, version=version, progress=False)
    save_entry(root / "registry", version, HomographyEntry(H=info.homography, rgb_size=info.rgb_size,
                                                           thermal_size=info.thermal_size, method="synthetic_known",
                                                           error_px=0.0))
    return info, build_index(root / version, version, root / "index", progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("warp")
    info, idx = _dataset(root, "synthetic", 8, seed=5)
    return root, info, idx


def test_ground_truth_boxes_land_on_thermal_ground_truth(tmp_path: Path, synth) -> None:
    """RGB GT boxes as a perfect teacher: warped boxes equal the thermal GT (interior boxes) within 1 px."""
    root, info, idx = synth
    out = tmp_path / "thermal.json"
    rep = run_warp(idx.rgb_labels, out, WarpParams(registry_dir=root / "registry"), index=idx.path)
    ds = load_dataset(out)
    th_gt = load_dataset(idx.thermal_labels)
    assert [im["id"] for im in ds["images"]] == [im["id"] for im in th_gt["images"]]
    assert all(im["file_name"] == p.thermal_path and (im["width"], im["height"]) == THERMAL
               for im, p in zip(ds["images"], idx.pairs))
    assert rep.counts["boxes_in"] == rep.counts["boxes_out"] + sum(rep.dropped.values())

    rgb_gt = load_dataset(idx.rgb_labels)
    gt_by_img: dict[int, np.ndarray] = {}
    for a in th_gt["annotations"]:
        gt_by_img.setdefault(a["image_id"], []).append(xywh_to_xyxy([a["bbox"]])[0])
    n_checked = 0
    for a in ds["annotations"]:
        src = xywh_to_xyxy([a["rgb_bbox"]])[0]
        got = xywh_to_xyxy([a["bbox"]])[0]
        np.testing.assert_allclose(got, _expected(src[None], info.homography, THERMAL)[0], atol=0.01)
        interior = src[0] > 0.5 and src[1] > 0.5 and src[2] < RGB[0] - 0.5 and src[3] < RGB[1] - 0.5
        if interior:  # RGB GT of objects cut by the RGB border is itself clipped, so it cannot match exactly
            err = np.abs(np.asarray(gt_by_img[a["image_id"]]) - got).max(axis=1).min()
            assert err < 1.0, (a, err)
            n_checked += 1
        assert a["warp"]["version"] == "synthetic" and a["warp"]["method"] == "synthetic_known"
    assert n_checked >= 10, n_checked
    assert len(rgb_gt["annotations"]) == rep.counts["boxes_in"]


def test_each_version_uses_its_own_homography(tmp_path: Path) -> None:
    """Two versions with different homographies in one (hand-merged) index; known boxes, known answers."""
    from data.index import PairedIndex, save_index

    Ha = np.array([[0.75, 0.0, 10.0], [0.0, 0.75, 5.0], [0.0, 0.0, 1.0]])
    Hb = np.array([[0.8, 0.0, -20.0], [0.0, 0.8, -10.0], [0.0, 0.0, 1.0]])
    _, ia = _dataset(tmp_path, "va", 2, Ha, seed=1)
    _, ib = _dataset(tmp_path, "vb", 2, Hb, seed=2)
    pairs = list(ia.pairs) + [replace(p, image_id=p.image_id + 100) for p in ib.pairs]
    merged = tmp_path / "index" / "merged.json"
    save_index(PairedIndex(versions=["va", "vb"], classes=["person", "car"], pairs=pairs), merged)

    box = [40.0, 40.0, 80.0, 120.0]
    images = [{"id": p.image_id, "file_name": p.rgb_path, "width": RGB[0], "height": RGB[1], "pair_id": p.pair_id}
              for p in pairs]
    anns = [annotation(i + 1, im["id"], 1, box, score=0.9, source="rgb_teacher") for i, im in enumerate(images)]
    anns.append(annotation(len(anns) + 1, images[0]["id"], 2, [1.0, 1.0, 21.0, 21.0], score=0.8, source="rgb_teacher"))
    anns.append(annotation(len(anns) + 1, images[0]["id"], 2, [100.0, 100.0, 102.0, 110.0], score=0.8, source="rgb_teacher"))
    save_dataset(tmp_path / "pseudo.json", new_dataset(images, anns, [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]))

    rep = run_warp(tmp_path / "pseudo.json", tmp_path / "out.json", WarpParams(registry_dir=tmp_path / "registry"),
                   index=merged)
    ds = load_dataset(tmp_path / "out.json")
    person = {a["image_id"]: xywh_to_xyxy([a["bbox"]])[0] for a in ds["annotations"] if a["category_id"] == 1}
    for p in pairs:
        want = [40.0, 35.0, 70.0, 95.0] if p.version == "va" else [12.0, 22.0, 44.0, 86.0]
        np.testing.assert_allclose(person[p.image_id], want, atol=1e-3)
    # the va corner box [1,1,21,21] -> [10.75,5.75,25.75,20.75] stays; the 2 px wide box -> 1.5 px: too_small
    assert rep.dropped == {"too_small": 1}
    assert rep.counts["homographies"] == 2 and rep.counts["boxes_out"] == 5
    kept_prov = next(a for a in ds["annotations"] if a["category_id"] == 2)
    assert kept_prov["rgb_bbox"] == [1.0, 1.0, 20.0, 20.0] and kept_prov["score"] == 0.8
    assert kept_prov["source"] == "rgb_teacher" and kept_prov["warp"]["version"] == "va"
    assert StageReport.load(report_path(tmp_path / "out.json")).dropped == rep.dropped


def test_outside_unknown_images_and_errors(tmp_path: Path, synth) -> None:
    root, info, idx = synth
    p0 = idx.pairs[0]
    images = [{"id": p0.image_id, "file_name": p0.rgb_path, "width": RGB[0], "height": RGB[1], "pair_id": p0.pair_id},
              {"id": 999, "file_name": "/elsewhere/x.png", "width": RGB[0], "height": RGB[1]}]
    anns = [annotation(1, p0.image_id, 1, [0.0, 0.0, 20.0, 20.0], score=0.9),   # RGB corner: outside the thermal view
            annotation(2, p0.image_id, 1, [150.0, 100.0, 180.0, 160.0], score=0.9),
            annotation(3, 999, 1, [150.0, 100.0, 180.0, 160.0], score=0.9)]
    save_dataset(tmp_path / "in.json", new_dataset(images, anns, [{"id": 1, "name": "person"}]))
    rep = run_warp(tmp_path / "in.json", tmp_path / "out.json", WarpParams(registry_dir=root / "registry"), index=idx.path)
    assert rep.dropped == {"outside": 1, "image_not_in_index": 1}
    assert rep.counts["boxes_out"] == 1 and [s["image"] for s in rep.skipped_images] == ["/elsewhere/x.png"]
    assert [im["id"] for im in load_dataset(tmp_path / "out.json")["images"]] == [p0.image_id]

    with pytest.raises(InputError, match="index"):
        run_warp(tmp_path / "in.json", tmp_path / "o2.json", WarpParams(registry_dir=root / "registry"))
    with pytest.raises(InputError, match="no homography registered"):
        run_warp(tmp_path / "in.json", tmp_path / "o3.json", WarpParams(registry_dir=tmp_path / "empty"), index=idx.path)
    with pytest.raises(ValidationError, match="min_visible_fraction"):
        WarpParams(min_visible_fraction=2.0)
    with pytest.raises(InputError, match=r"min_visible_fraction: .*got 2\.0; allowed: \[0, 1\]"):
        WarpParams.validated({"min_visible_fraction": 2.0}, "warp parameters")
    assert WarpParams(registry_dir=str(root)).to_dict()["registry_dir"] == str(root)      # JSON form: str paths


def test_cli_pseudo_then_warp(tmp_path: Path, synth, capsys) -> None:
    """``rgb2thermal stage pseudo`` and ``stage warp`` run alone on COCO/index inputs."""
    from rgb2thermal_cli.main import main

    root, info, idx = synth
    assert main(["stage", "pseudo", "--in", str(idx.rgb_labels), "--out", str(tmp_path / "p.json"),
                 "--threshold", "person=0.7", "--no-histogram"]) == 0
    assert main(["stage", "warp", "--in", str(tmp_path / "p.json"), "--out", str(tmp_path / "w.json"),
                 "--index", str(idx.path), "--registry", str(root / "registry")]) == 0
    printed = capsys.readouterr().out
    assert "pseudo:" in printed and "warp:" in printed
    assert len(load_dataset(tmp_path / "w.json")["images"]) == len(idx.pairs)
    assert main(["stage", "warp", "--in", str(tmp_path / "p.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "needs the paired index" in capsys.readouterr().err


def test_box_warper_depends_on_the_parameter_and_the_machine_only() -> None:
    """``cpu`` is numpy; ``auto`` is numpy here (no usable GPU in the tests: CUDA_VISIBLE_DEVICES is
    empty) whether or not torch was imported before: in a fresh interpreter without torch, and in
    this one, which has it; ``cuda`` is kornia."""
    import subprocess
    import sys

    import torch

    from registration.warp import warp_boxes
    from tasks.warp import _box_warper

    code = ("import sys; from tasks.warp import _box_warper; from registration.warp import warp_boxes; "
            "assert 'torch' not in sys.modules; fn, dev = _box_warper('auto'); "
            "print(dev, fn is warp_boxes); fn, dev = _box_warper('cpu'); print(dev, fn is warp_boxes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "True", "cpu", "True", "True"]
    assert "torch" in sys.modules and not torch.cuda.is_available()
    for device in ("cpu", "auto"):
        fn, dev = _box_warper(device)
        assert fn is warp_boxes and dev == "cpu"
    fn, dev = _box_warper("cuda")
    assert dev == "cuda" and fn.func.__name__ == "warp_boxes_torch" and fn.keywords == {"device": "cuda"}


def test_untrusted_homography_stops_before_warp(tmp_path: Path, synth) -> None:
    """An entry whose held-out error is above the threshold: InputError naming version, RGB size and the fix."""
    from registration.registry import HomographyEntry, save_entry

    root, info, idx = synth
    reg = tmp_path / "registry"
    save_entry(reg, "synthetic", HomographyEntry(H=info.homography, rgb_size=info.rgb_size, thermal_size=info.thermal_size,
                                                 method="auto_search_joint_ecc", error_px=9.5, error_kind="heldout_pairs",
                                                 heldout_error_px=9.5))
    out = tmp_path / "thermal.json"
    with pytest.raises(InputError) as exc:
        run_warp(idx.rgb_labels, out, WarpParams(registry_dir=reg), index=idx.path)
    msg = str(exc.value)
    assert "version 'synthetic' at RGB 320x256" in msg and "9.50 px" in msg and "median box size" in msg
    assert "register estimate --version synthetic --rgb-size 320 256 --points" in msg
    assert not out.exists() and not report_path(out).exists()
    # a knowing user may let it through; the report records it
    rep = run_warp(idx.rgb_labels, out, WarpParams(registry_dir=reg, on_untrusted_homography="warn"), index=idx.path)
    assert out.exists() and any("refused" in f and "used anyway" in f for f in rep.fallbacks)
    # or raise the threshold
    rep = run_warp(idx.rgb_labels, out, WarpParams(registry_dir=reg, max_homography_error_px=10), index=idx.path)
    assert not rep.fallbacks
