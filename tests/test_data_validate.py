"""Pair validation catches each listed defect with a clear message; the CLI commands exist and behave."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.validate import validate_index, validate_source
from rgb2thermal_cli.main import main


def _img(path: Path, w: int, h: int, channels: int = 3) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, channels) if channels > 1 else (h, w), 80, dtype=np.uint8))


@pytest.fixture()
def defective(tmp_path: Path) -> Path:
    """A folder dataset with one of each defect."""
    root = tmp_path / "bad"
    for s in ("a", "b", "c", "d", "e"):
        _img(root / "rgb" / f"{s}.png", 64, 48)
    for s in ("a", "b", "d", "f", "g"):
        _img(root / "thermal" / f"{s}.png", 64, 48, channels=1)
    _img(root / "thermal" / "d.png", 32, 24, channels=1)                  # odd thermal size
    (root / "thermal" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    _img(root / "rgb" / "g.png", 64, 48)
    png = (root / "rgb" / "g.png").read_bytes()
    (root / "rgb" / "g.png").write_bytes(png[: len(png) // 2])             # truncated: header fine, decode fails
    (root / "classes.txt").write_text("0 person\n1 car\n")
    (root / "labels_thermal").mkdir()
    (root / "labels_thermal" / "a.txt").write_text(
        "0 1.3 0.5 0.2 0.2\n"      # entirely outside the image
        "1 0.98 0.5 0.2 0.2\n"     # crosses the right border: clipped
        "0 0.5 0.5 0.0 0.3\n")     # no area
    (root / "labels_thermal" / "zz.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # no such image
    (root / "labels_rgb").mkdir()
    (root / "labels_rgb" / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "b.png", "width": 640, "height": 480},   # wrong size for b
                   {"id": 2, "file_name": "gone.png", "width": 64, "height": 48}],  # no such image
        "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    return root


def test_validation_catches_each_defect(defective: Path, tmp_path: Path) -> None:
    rep = validate_source("folder", defective, "bad", tmp_path / "out", progress=False)
    doc = json.loads(rep.report_json.read_text())
    why = {e["original_id"]: (e["reason"], e["detail"]) for e in doc["excluded"]}
    assert why["e"][0] == "missing_thermal" and "no thermal image" in why["e"][1]
    assert why["f"][0] == "missing_rgb" and "no RGB image" in why["f"][1]
    assert why["c"][0] == "unreadable_thermal" and "c.png" in why["c"][1]
    assert why["g"][0] == "unreadable_rgb"  # truncated: caught by full decoding
    assert why["b"][0] == "size_mismatch" and "RGB labels say 640x480 but the image is 64x48" in why["b"][1]
    assert why["d"][0] == "size_mismatch" and "32x24" in why["d"][1]
    assert rep.pairs == 1 and set(why) == {"b", "c", "d", "e", "f", "g"}
    kinds = {}
    for i in doc["issues"]:
        kinds.setdefault(i["kind"], []).append(i["detail"])
    assert any("zz.txt has no image" in d for d in kinds["labels_missing_image"])
    assert any("'gone.png'" in d for d in kinds["labels_missing_image"])
    assert len(kinds["box_outside_image"]) == 1 and "0% inside" in kinds["box_outside_image"][0]
    assert len(kinds["box_clipped"]) == 1 and len(kinds["box_degenerate"]) == 1
    # the RGB COCO file does not mention a.png: flagged, not silently "no objects"
    assert [i["item"] for i in doc["issues"] if i["kind"] == "unlabelled_image"] == ["bad:a"]
    md = rep.report_md.read_text()
    for text in ("RGB frame without a thermal frame", "thermal frame without an RGB frame", "unreadable or corrupt",
                 "image size mismatch", "labels pointing at a missing image", "box outside the image"):
        assert text in md, text
    excl = json.loads(rep.exclusions["bad"].read_text())
    assert excl["version"] == "bad" and {i["original_id"] for i in excl["items"]} == set(why)
    # without decoding, the truncated RGB passes the header check: --decode matters
    from data.adapters.folder import build_index
    assert "g" in {p.original_id for p in build_index(defective, "bad", tmp_path / "fast", progress=False).pairs}


def test_duplicate_ids_and_sync_offsets(tmp_path: Path) -> None:
    root = tmp_path / "sync"
    for s in ("a", "b", "c"):
        _img(root / "rgb" / f"{s}.png", 32, 32)
        _img(root / "thermal" / f"{s}.png", 32, 32, channels=1)
    (root / "pairs.json").write_text(json.dumps([
        {"rgb": "rgb/a.png", "thermal": "thermal/a.png", "id": "a", "rgb_time": 10.0, "thermal_time": 10.02},
        {"rgb": "rgb/b.png", "thermal": "thermal/b.png", "id": "a"},
        {"rgb": "rgb/c.png", "thermal": "thermal/c.png", "id": "c", "rgb_time": 11.0, "thermal_time": 11.5}]))
    rep = validate_source("folder", root, "sync", tmp_path / "out", progress=False)
    doc = json.loads(rep.report_json.read_text())
    reasons = sorted((e["original_id"], e["reason"]) for e in doc["excluded"])
    assert reasons == [("a", "duplicate_id"), ("c", "sync_offset")]
    assert doc["sync"]["pairs_with_timestamps"] == 2 and abs(doc["sync"]["abs_offset_s_max"] - 0.5) < 1e-9
    assert "+0.500s" in next(e["detail"] for e in doc["excluded"] if e["reason"] == "sync_offset")
    assert "Sync offsets (thermal - RGB) over 2 timestamped pairs" in rep.report_md.read_text()
    ix = json.loads(rep.index_path.read_text())
    assert abs(ix["pairs"][0]["extra"]["sync_offset_s"] - 0.02) < 1e-9


def test_validate_existing_index_notices_changed_files(tmp_path: Path, msrs20: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(msrs20, root, ignore=shutil.ignore_patterns("thermal_misregistered"))
    rep = validate_source("folder", root, "msrs", tmp_path / "out", progress=False)
    assert rep.pairs == 20 and not rep.excluded_by_reason
    (root / "thermal" / "00008N.png").unlink()
    _img(root / "rgb" / "00012N.png", 10, 10)
    rep2 = validate_index(rep.index_path, tmp_path / "out2", progress=False)
    changed = [i["detail"] for i in json.loads(rep2.report_json.read_text())["issues"] if i["kind"] == "file_changed"]
    assert len(changed) == 2 and any("00008N" in c for c in changed) and any("is 10x10" in c for c in changed)


def test_cli_validate_and_register(defective: Path, tmp_path: Path, capsys) -> None:
    for argv in (["data", "validate", "--help"], ["register", "estimate", "--help"], ["register", "check", "--help"],
                 ["data", "index", "--help"], ["data", "merge", "--help"], ["data", "synth", "--help"]):
        with pytest.raises(SystemExit) as ex:
            main(argv)
        assert ex.value.code == 0
    out = capsys.readouterr().out
    assert "--exclusions" in out and "--points" in out and "--holdout-fraction" in out
    assert main(["data", "validate", "--root", str(defective), "--version", "bad", "--out", str(tmp_path / "v")]) == 1
    assert (tmp_path / "v" / "bad.validation.md").exists()
    # register estimate from points, then check
    rng = np.random.default_rng(0)
    H = np.array([[0.8, 0.01, 4.0], [-0.01, 0.8, -2.0], [1e-5, 2e-5, 1.0]])
    src = rng.uniform([0, 0], [320, 256], (12, 2))
    q = np.c_[src, np.ones(12)] @ H.T
    dst = q[:, :2] / q[:, 2:]
    pts = tmp_path / "pts.csv"
    pts.write_text("x_rgb,y_rgb,x_thermal,y_thermal\n" + "".join(f"{a},{b},{c},{d}\n" for (a, b), (c, d) in zip(src, dst)))
    reg = tmp_path / "reg"
    assert main(["register", "estimate", "--version", "rig1", "--points", str(pts), "--rgb-size", "320", "256",
                 "--thermal-size", "256", "208", "--registry", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "method points_ransac" in out and "px (holdout)" in out and "registered in" in out
    assert main(["register", "check", "--version", "rig1", "--registry", str(reg)]) == 0
    assert "OK rig1 320x256 -> 256x208: points_ransac" in capsys.readouterr().out
    assert main(["register", "check", "--version", "rig2", "--registry", str(reg)]) == 2
    assert "no homography registered for dataset version 'rig2'" in capsys.readouterr().err
