"""Registration: homography checks, box warping (numpy == torch/kornia), image warping, registry, estimation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from registration.homography import (check_homography, estimate_auto, estimate_from_points, grid_error, initial_guess,
                                     project_points, save_overlay)
from registration.registry import HomographyEntry, load_registry, lookup, save_entry
from registration.warp import INVALID, KEPT, OUTSIDE, TOO_SMALL, warp_boxes, warp_boxes_torch, warp_image
from core.errors import InputError

RGB, TH = (320, 256), (256, 208)


def _h(scale=0.8, tx=5.0, ty=-3.0, px=2e-4, py=-1e-4, rot=0.02) -> np.ndarray:
    c, s = np.cos(rot), np.sin(rot)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [px, py, 1.0]])


# -- checks ------------------------------------------------------------------------------------
def test_check_accepts_plausible_and_rejects_each_bad_kind() -> None:
    c = check_homography(_h(), RGB, TH)
    assert 0.5 < c.scale_min <= c.scale_max < 2 and c.overlap > 0.5
    cases = {
        "non-finite": np.array([[1, 0, np.nan], [0, 1, 0], [0, 0, 1.0]]),
        "singular": np.array([[1, 2, 0], [2, 4, 0], [0, 0, 1.0]]),
        "flips": np.array([[-0.8, 0, 256], [0, 0.8, 0], [0, 0, 1.0]]),
        "infinity": np.array([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1.0]]),
        "scales wildly": np.diag([30.0, 30.0, 1.0]),
        "stretches": np.diag([0.8, 0.1, 1.0]),
        "covers only": np.array([[0.8, 0, 5000], [0, 0.8, 0], [0, 0, 1.0]]),
        "3x3": np.eye(2),
    }
    for what, H in cases.items():
        with pytest.raises(InputError, match=what):
            check_homography(H, RGB, TH)


# -- box warp ----------------------------------------------------------------------------------
def test_warp_boxes_known_values_and_reasons() -> None:
    H = np.array([[0.5, 0, 10], [0, 0.5, 20], [0, 0, 1.0]])
    boxes = np.array([[0, 0, 100, 60],          # -> [10, 20, 60, 50] kept
                      [500, 400, 560, 440],     # -> [260, 220, 290, 240]: outside the 256x208 image
                      [40, 40, 42, 41],         # -> 1 x 0.5 px: too small
                      [480, 0, 560, 100],       # -> [250, 20, 290, 70]: 15% inside -> outside
                      [440, 0, 500, 100],       # -> [230, 20, 260, 70]: clipped to 256, 87% inside: kept
                      [np.nan, 0, 10, 10]])     # invalid
    r = warp_boxes(boxes, H, TH)
    assert r.keep.tolist() == [0, 4]
    np.testing.assert_allclose(r.boxes, [[10, 20, 60, 50], [230, 20, 256, 70]])
    assert r.reason_code.tolist() == [KEPT, OUTSIDE, TOO_SMALL, OUTSIDE, KEPT, INVALID]
    assert r.reason.tolist() == ["", "outside", "too_small", "outside", "", "invalid"]
    assert r.counts == {"kept": 2, "invalid": 1, "outside": 2, "too_small": 1}
    assert r.dropped == {"invalid": 1, "outside": 2, "too_small": 1}
    # thresholds are configurable
    assert warp_boxes(boxes[:5], H, TH, min_visible_fraction=0.1, min_size=0.4).keep.tolist() == [0, 2, 3, 4]
    # a point behind the camera (w <= 0) is invalid, not a garbage box
    Hb = np.array([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1.0]])
    assert warp_boxes([[50, 10, 150, 60]], Hb, TH).reason.tolist() == ["invalid"]
    empty = warp_boxes(np.zeros((0, 4)), H, TH)
    assert empty.boxes.shape == (0, 4) and empty.counts["kept"] == 0


def test_warp_boxes_corners_contain_rotated_and_midpoints_tighter() -> None:
    H = _h(rot=0.1)
    b = np.array([[100.0, 80.0, 140.0, 200.0]])
    corners = warp_boxes(b, H, TH).boxes[0]
    mid = warp_boxes(b, H, TH, mode="midpoints").boxes[0]
    pts = project_points(H, [[100, 80], [140, 80], [140, 200], [100, 200]])
    np.testing.assert_allclose(corners, [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    assert mid[0] > corners[0] and mid[2] < corners[2]
    # no rotation/perspective: both modes agree
    S = np.diag([0.7, 0.8, 1.0])
    np.testing.assert_allclose(warp_boxes(b, S, TH).boxes, warp_boxes(b, S, TH, mode="midpoints").boxes)


@pytest.mark.parametrize("mode", ["corners", "midpoints"])
def test_numpy_and_torch_paths_agree(mode: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    xy = rng.uniform(-60, 360, (5000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 90, (5000, 2))], axis=1)
    for H in (_h(), _h(scale=1.2, px=-8e-4, py=6e-4, rot=-0.05), np.eye(3)):
        a = warp_boxes(boxes, H, TH, mode=mode)
        b = warp_boxes_torch(torch.as_tensor(boxes), torch.as_tensor(H), TH, mode=mode)
        np.testing.assert_array_equal(a.reason_code, b.reason_code)
        np.testing.assert_array_equal(a.keep, b.keep)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-9)
        assert a.counts == b.counts and 0 < a.counts["kept"] < len(boxes)


def test_image_warp_and_box_warp_agree() -> None:
    H = _h(scale=0.85, rot=0.03)
    img = np.zeros((RGB[1], RGB[0]), dtype=np.uint8)
    img[60:140, 100:150] = 255  # object occupying continuous box [100, 60, 150, 140]
    w_cv = warp_image(img, H, TH)
    ys, xs = np.nonzero(w_cv > 127)
    box = warp_boxes([[100, 60, 150, 140]], H, TH).boxes[0]
    # the warped object's pixels lie inside the warped box, and fill it up to the rotation slack
    assert xs.min() >= box[0] - 1 and xs.max() + 1 <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() + 1 <= box[3] + 1
    assert xs.min() - box[0] < 4 and box[3] - (ys.max() + 1) < 4


# -- registry ----------------------------------------------------------------------------------
def test_registry_roundtrip_lookup_by_resolution(tmp_path: Path) -> None:
    e1 = HomographyEntry(H=_h(), rgb_size=(320, 256), thermal_size=TH, method="points_ransac", error_px=0.4,
                         error_kind="holdout", notes="test")
    e2 = HomographyEntry(H=_h(scale=0.5), rgb_size=(640, 512), thermal_size=TH, method="auto_ecc_gradient", error_px=2.0)
    save_entry(tmp_path, "flir_v1", e1)
    path = save_entry(tmp_path, "flir_v1", e2)
    text = path.read_text()
    assert "rgb_size: [320, 256]" in text and "H_rgb_to_thermal" in text and "method: points_ransac" in text
    got = lookup(tmp_path, "flir_v1", (640, 512))
    np.testing.assert_allclose(got.H, _h(scale=0.5), rtol=1e-9)
    assert got.method == "auto_ecc_gradient" and got.error_px == 2.0 and got.version == "flir_v1"
    save_entry(tmp_path, "flir_v1", HomographyEntry(H=_h(scale=0.9), rgb_size=(320, 256), thermal_size=TH, method="x"))
    assert len(load_registry(tmp_path, "flir_v1")) == 2 and lookup(tmp_path, "flir_v1", (320, 256)).method == "x"
    with pytest.raises(InputError, match="no homography for RGB resolution 1800x1600"):
        lookup(tmp_path, "flir_v1", (1800, 1600))
    with pytest.raises(InputError, match="no homography registered for dataset version 'flir_v2'"):
        lookup(tmp_path, "flir_v2", (320, 256))
    bad = tmp_path / "broken.yaml"
    bad.write_text(text.replace("flir_v1", "broken").replace("- [", "- [-", 1))
    with pytest.raises(InputError):
        load_registry(tmp_path, "broken")
    with pytest.raises(InputError, match="singular"):
        save_entry(tmp_path, "v", HomographyEntry(H=np.zeros((3, 3)) + 1, rgb_size=RGB, thermal_size=TH, method="x"))


# -- estimation --------------------------------------------------------------------------------
def test_points_estimation_and_holdout_error() -> None:
    rng = np.random.default_rng(1)
    H = _h()
    src = rng.uniform([0, 0], RGB, (20, 2))
    dst = project_points(H, src) + rng.normal(0, 0.2, (20, 2))
    dst[3] += 40  # one outlier click: RANSAC drops it
    est = estimate_from_points(src, dst, rgb_size=RGB, thermal_size=TH, holdout_fraction=0.0)
    assert est.n_inliers == 19 and grid_error(est.H, H, RGB, TH) < 0.5
    est2 = estimate_from_points(src[4:], dst[4:], rgb_size=RGB, thermal_size=TH, holdout_fraction=0.25, seed=0)
    assert est2.error_kind == "holdout" and est2.holdout_error_px < 1.0
    with pytest.raises(InputError, match="at least 4"):
        estimate_from_points(src[:3], dst[:3], rgb_size=RGB, thermal_size=TH)
    with pytest.raises(InputError, match="flips"):
        estimate_from_points(src, np.c_[256 - dst[:, 0], dst[:, 1]], rgb_size=RGB, thermal_size=TH)


def test_points_estimation_on_msrs_recovers_known_homography(msrs20: Path, tmp_path: Path) -> None:
    """Real pairs, RGB re-projected by a known wide-FOV homography: < 1 px, and labels transfer as well."""
    from benchmarks.registration_msrs import run_registration

    r = run_registration(msrs20, auto=False, n_clicks=16, click_sigma=0.3)
    assert r["points_holdout_error_px"] < 1.0 and r["points_map_error_px"] < 1.0
    assert r["matched_est"] == r["matched_orig"] and r["boxes_lost"]["est"] == 0
    # the estimate costs < 0.01 IoU vs the true matrix; most of the gap to the aligned pair is the
    # corner rule's growth under rotation (two warps here), which the midpoint rule removes
    assert r["mean_iou_true"] - r["mean_iou_est"] < 0.01
    assert r["mean_iou_est_midpoints"] > r["mean_iou_orig"] - 0.01


def test_auto_estimation_on_synthetic_pairs(tmp_path: Path) -> None:
    import cv2

    from data.synthetic import generate

    info = generate(tmp_path / "s", 6, seed=1, progress=False)
    pairs = [(cv2.imread(str(tmp_path / "s" / "rgb" / f"{s}.png")),
              cv2.imread(str(tmp_path / "s" / "thermal" / f"{s}.png"), cv2.IMREAD_GRAYSCALE)) for s in info.stems]
    est = estimate_auto(pairs, progress=False)
    start = grid_error(initial_guess(RGB, TH), info.homography, RGB, TH)
    err = grid_error(est.H, info.homography, RGB, TH)
    assert start > 15 and err < 3.0, (start, err, est.per_pair)
    assert est.method == "auto_ecc_gradient" and len(est.per_pair) == 6 and est.n_inliers >= 1
    ov = save_overlay(tmp_path / "overlay.png", pairs[0][0], pairs[0][1], est.H)
    assert cv2.imread(str(ov)).shape == (208, 256, 3)
