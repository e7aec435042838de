"""Reliability catalogue (``docs/RELIABILITY.md``): faults and bad inputs the product already handles
and that no other test proved. Each test names its catalogue row in its docstring.

Everything is small and CPU-only: generated paired scenes (``data.synthetic.generate``), a random-weight
YOLOX-tiny at 128 px (``benchmarks.label_transfer_infer.make_tiny_detector``), the classical refiner,
and pipeline runs that stop after the ``index`` step. Failed writes reach the product's own writers
(``core.atomic``, ``torch.save``, the stages), which always run for real: either the kernel really
refuses the write (a child process under a file size limit, ``RLIMIT_FSIZE``: ``write`` fails with
``EFBIG`` part-way through the file, as it fails with ``ENOSPC`` on a full disk), or, where the test
needs the errno of a full disk or a read-only mount, the OS call (``os.fsync``, ``os.mkdir``, ``open``)
raises the ``OSError`` the kernel would.
"""
from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from core import atomic, coco
from core.errors import InputError
from core.images import UNDECODABLE, to_gray_u8
from core.stage_report import StageReport, report_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"rgb_size": (160, 128), "thermal_size": (128, 96)}


def _leftover_temporaries(folder: Path) -> list[Path]:
    """Temporary folders of :func:`core.atomic.atomic_path` (``.<name>.<random>.tmp``) left under ``folder``."""
    return sorted(p for p in folder.rglob(".*.tmp"))


def _fsync_fails(monkeypatch, code: int = errno.ENOSPC, under: Path | None = None) -> list[str]:
    """Make ``os.fsync`` of files under ``under`` (all when None) fail with ``code``, as a disk that fills
    up when the written data is flushed (ext4/XFS delayed allocation, NFS report ``ENOSPC`` at fsync).
    The product's writers run for real up to that call. Returns the paths whose flush failed (the
    atomic temporaries)."""
    real_fsync = os.fsync
    failed: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if under is not None and not path.startswith(str(under)):
            return real_fsync(fd)
        failed.append(path)
        raise OSError(code, os.strerror(code))            # like the kernel's: no file name

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def _under_file_size_limit(setup: str, calls: dict[str, str], limit_bytes: int) -> dict[str, dict]:
    """Run each of ``calls`` (name -> Python expression) in a child Python after ``setup`` (imports, done
    before the limit: they may write caches), with files limited to ``limit_bytes`` (``RLIMIT_FSIZE``).

    The kernel then refuses every write past that size (``EFBIG``, with ``SIGXFSZ`` ignored so the
    write fails instead of killing the process): a real write failure inside the product's writer.
    Returns, per call, ``{"errno": int | None, "filename": str | None}`` (None: no OSError).
    """
    code = "\n".join([
        "import errno, json, resource, signal, sys",
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)",
        setup,
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))",
        "out = {}",
        *(f"try:\n    {expr}\n    out[{name!r}] = {{'errno': None, 'filename': None}}\n"
          f"except OSError as exc:\n    out[{name!r}] = {{'errno': exc.errno, 'filename': exc.filename}}"
          for name, expr in calls.items()),
        "print(json.dumps(out))",
    ])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, object]:
    """5 generated pairs (RGB 320x256, thermal 256x208) with labels in both frames and their homography."""
    from data.synthetic import generate

    root = tmp_path_factory.mktemp("rel_synth")
    info = generate(root, 5, seed=3, progress=False)
    return root, info


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config, checkpoint, loaded detector): random-weight YOLOX-tiny that emits a few boxes per image."""
    from benchmarks.label_transfer_infer import make_tiny_detector
    from detection.detector import load_detector

    cfg, ckpt = make_tiny_detector(tmp_path_factory.mktemp("rel_det"), scale=128)
    return cfg, ckpt, load_detector(cfg, ckpt, "cpu")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _registry(folder: Path, version: str, entries: list[dict]) -> Path:
    """A hand-written registry file (what a user might edit), bypassing ``save_entry``'s checks."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema": "rgb2thermal.homographies/1", "version": version, "entries": entries}
    (folder / f"{version}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def _entry(H, rgb_size, thermal_size) -> dict:
    return {"rgb_size": list(rgb_size), "thermal_size": list(thermal_size),
            "H_rgb_to_thermal": np.asarray(H, dtype=np.float64).tolist(), "method": "hand_written", "error_px": None}


def _index(root: Path, out: Path, version: str = "v"):
    from data.adapters.folder import build_index

    return build_index(root, version, out, progress=False)


# ------------------------------------------------------------- corrupt / truncated / zero-byte images
def test_zero_byte_and_truncated_images_in_the_middle_are_excluded_from_the_index(synth, tmp_path: Path) -> None:
    """Row: corrupt / truncated / zero-byte image in the middle of a data set (indexing).

    Zero-byte files are excluded even by the fast header-only build; a truncated file (intact header)
    is excluded by the decoding build (``data validate``). The other pairs keep consecutive ids."""
    from data.validate import validate_source

    src, info = synth
    root = _copy(src, tmp_path / "ds")
    s = info.stems
    (root / "rgb" / f"{s[1]}.png").write_bytes(b"")
    (root / "thermal" / f"{s[2]}.png").write_bytes(b"")
    png = (root / "thermal" / f"{s[3]}.png").read_bytes()
    (root / "thermal" / f"{s[3]}.png").write_bytes(png[: len(png) // 2])

    fast = _index(root, tmp_path / "fast")
    why = {e["original_id"]: e["reason"] for e in fast.excluded}
    assert why == {s[1]: "unreadable_rgb", s[2]: "unreadable_thermal"}
    assert [p.original_id for p in fast.pairs] == [s[0], s[3], s[4]]
    assert [p.image_id for p in fast.pairs] == [1, 2, 3]
    assert len(coco.load_dataset(fast.rgb_labels)["images"]) == 3

    rep = validate_source("folder", root, "v", tmp_path / "full", progress=False)
    doc = json.loads(rep.report_json.read_text())
    why = {e["original_id"]: (e["reason"], e["detail"]) for e in doc["excluded"]}
    assert set(why) == {s[1], s[2], s[3]} and rep.pairs == 2
    assert why[s[3]][0] == "unreadable_thermal" and f"{s[3]}.png" in why[s[3]][1]


def test_infer_skips_bad_and_resized_images_and_caches_none_of_them(synth, tiny, tmp_path: Path) -> None:
    """Rows: corrupt / truncated / zero-byte image (inference); a data file changed after it was listed.

    A zero-byte, a truncated and a resized image in the middle of the COCO file are skipped with their
    reason; the run goes on; nothing is cached for them, so once the files are repaired only they are
    inferred and the good images are cache hits with unchanged detections."""
    from tasks.infer import InferParams, run_infer

    src, info = synth
    cfg, ckpt, det = tiny
    root = _copy(src, tmp_path / "ds")
    s = info.stems
    rgb = root / "rgb"
    (rgb / f"{s[1]}.png").write_bytes(b"")
    png = (rgb / f"{s[2]}.png").read_bytes()
    (rgb / f"{s[2]}.png").write_bytes(png[: len(png) // 2])
    assert cv2.imwrite(str(rgb / f"{s[3]}.png"), np.full((128, 160, 3), 90, np.uint8))    # replaced: other size
    coco_in = root / "labels_rgb" / "coco.json"
    params = InferParams(config=str(cfg), checkpoint=str(ckpt), device="cpu", batch_size=2)
    cache = tmp_path / "cache"

    bad = run_infer(coco_in, tmp_path / "bad.json", params, cache_dir=cache, image_root=rgb, detector=det)
    reasons = {Path(x["image"]).stem: x["reason"] for x in bad.skipped_images}
    assert reasons == {s[1]: UNDECODABLE, s[2]: UNDECODABLE,
                       s[3]: "image is 160x128 but the COCO file says 320x256"}
    out = coco.load_dataset(tmp_path / "bad.json")
    assert sorted(Path(im["file_name"]).stem for im in out["images"]) == [s[0], s[4]]
    assert (bad.cache_misses, bad.cache_hits, bad.counts["images_skipped"]) == (2, 0, 3)
    assert StageReport.load(report_path(tmp_path / "bad.json")).skipped_images == bad.skipped_images

    for k in (1, 2, 3):
        shutil.copyfile(src / "rgb" / f"{s[k]}.png", rgb / f"{s[k]}.png")
    good = run_infer(coco_in, tmp_path / "good.json", params, cache_dir=cache, image_root=rgb, detector=det)
    assert (good.cache_misses, good.cache_hits, good.skipped_images) == (3, 2, [])
    fixed = coco.load_dataset(tmp_path / "good.json")
    kept_ids = {im["id"] for im in out["images"]}

    def dets(ds: dict) -> list:
        return [(a["image_id"], a["category_id"], a["bbox"], a["score"]) for a in ds["annotations"]
                if a["image_id"] in kept_ids]

    assert dets(fixed) == dets(out)


def test_torn_infer_cache_entries_are_recomputed_to_the_same_output(synth, tiny, tmp_path: Path, caplog) -> None:
    """Row: a truncated or corrupted cache entry (``infer``'s per-image cache)."""
    from tasks.infer import InferParams, run_infer

    src, _ = synth
    cfg, ckpt, det = tiny
    params = InferParams(config=str(cfg), checkpoint=str(ckpt), device="cpu", batch_size=1)
    cache = tmp_path / "cache"
    args = dict(cache_dir=cache, image_root=src / "rgb", detector=det)
    first = run_infer(src / "labels_rgb" / "coco.json", tmp_path / "a.json", params, **args)
    entries = sorted(cache.glob("*/*.json"))
    assert len(entries) == first.cache_misses == 5
    entries[0].write_bytes(entries[0].read_bytes()[:30])                       # torn by a crash
    entries[1].write_bytes(b"\x00\xff garbage")                                # corrupted on disk
    with caplog.at_level(logging.WARNING, logger="core.image_cache"):
        again = run_infer(src / "labels_rgb" / "coco.json", tmp_path / "b.json", params, **args)
    assert (again.cache_misses, again.cache_hits) == (2, 3)
    assert sum("recomputing" in r.getMessage() for r in caplog.records if r.name == "core.image_cache") == 2
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert run_infer(src / "labels_rgb" / "coco.json", tmp_path / "c.json", params, **args).cache_hits == 5


# ------------------------------------------------------------------ paths outside the dataset root
def _rewrite_coco(path: Path, k: int, file_name: str) -> None:
    ds = json.loads(path.read_text())
    ds["images"][k]["file_name"] = file_name
    path.write_text(json.dumps(ds))


def test_label_and_pairs_paths_outside_the_dataset_root_are_refused(synth, tmp_path: Path) -> None:
    """Row: path traversal / a path outside the data root (dataset adapters).

    A COCO ``file_name`` that leaves the root (``..`` or absolute elsewhere) is an InputError naming
    the label file and ``images[i]``, even when its stem matches a frame of the data set (before, its
    boxes were silently attached to that frame); so is a ``pairs.json`` path outside the root, naming
    ``pairs[k].rgb``. Paths that stay inside (``..`` within, absolute inside) still index."""
    from data.adapters import flir_v1

    src, info = synth
    s = info.stems
    root = _copy(src, tmp_path / "ds")
    labels = root / "labels_rgb" / "coco.json"
    original = labels.read_text()
    for escaping in (f"../../../etc/{s[2]}.png", f"{tmp_path / 'elsewhere'}/{s[2]}.png"):
        _rewrite_coco(labels, 2, escaping)
        with pytest.raises(InputError, match="points outside the dataset root") as ei:
            _index(root, tmp_path / "o")
        assert f"{labels}: images[2]" in str(ei.value) and escaping in str(ei.value) and "Fix:" in str(ei.value)
    assert not (tmp_path / "o").exists()
    for inside in (f"sub/../{s[2]}.png", str(root / "rgb" / f"{s[2]}.png")):
        _rewrite_coco(labels, 2, inside)
        assert len(_index(root, tmp_path / f"ok{len(inside)}").pairs) == 5
    labels.write_text(original)

    pairs = [{"rgb": f"rgb/{t}.png", "thermal": f"thermal/{t}.png"} for t in s]
    for escaping in (f"../{root.name}_other/rgb/{s[1]}.png", str(src / "rgb" / f"{s[1]}.png")):
        pairs[1]["rgb"] = escaping
        (root / "pairs.json").write_text(json.dumps(pairs))
        with pytest.raises(InputError, match="points outside the dataset root") as ei:
            _index(root, tmp_path / "p")
        assert f"{root / 'pairs.json'}: pairs[1].rgb" in str(ei.value)
    pairs[1]["rgb"] = str(root / "rgb" / f"{s[1]}.png")                  # absolute, inside the root
    (root / "pairs.json").write_text(json.dumps(pairs))
    assert len(_index(root, tmp_path / "p_ok").pairs) == 5

    # the FLIR adapters read their COCO files through the same check
    flir = tmp_path / "FLIR_ADAS_1_3" / "train"
    shutil.copytree(src / "rgb", flir / "RGB")
    shutil.copytree(src / "thermal", flir / "thermal_8_bit")
    th = json.loads((src / "labels_thermal" / "coco.json").read_text())
    th["images"][0]["file_name"] = f"../../../{th['images'][0]['file_name']}"
    (flir / "thermal_annotations.json").write_text(json.dumps(th))
    with pytest.raises(InputError, match="points outside the dataset root") as ei:
        flir_v1.build_index(flir.parent, "f", tmp_path / "f", progress=False)
    assert "thermal_annotations.json: images[0]" in str(ei.value)


# ------------------------------------------------------------------------ 16-bit and 3-channel thermal
def test_16bit_and_3channel_thermal_frames_refine_like_their_8bit_gray(synth, tmp_path: Path) -> None:
    """Row: 16-bit and 3-channel thermal frames (refinement and indexing).

    The classical refiner sees a 16-bit radiometric frame as its 0.5/99.5-percentile stretch and a
    3-channel frame as its gray: the refined boxes equal those on the 8-bit gray file with the same
    pixels. The index reads both frame kinds' sizes from their headers."""
    from tasks.refine import RefineParams, run_refine

    src, info = synth
    gt = coco.load_dataset(src / "labels_thermal" / "coco.json")
    folders = {k: tmp_path / k for k in ("u16", "u8", "c3")}
    for f in folders.values():
        f.mkdir()
    for im in gt["images"]:
        gray = cv2.imread(str(src / "thermal" / im["file_name"]), cv2.IMREAD_GRAYSCALE)
        raw = gray.astype(np.uint16) * 7 + 21_000
        stretched = to_gray_u8(raw)
        assert cv2.imwrite(str(folders["u16"] / im["file_name"]), raw)
        assert cv2.imwrite(str(folders["u8"] / im["file_name"]), stretched)
        assert cv2.imwrite(str(folders["c3"] / im["file_name"]), np.repeat(stretched[:, :, None], 3, axis=2))
    assert cv2.imread(str(folders["u16"] / gt["images"][0]["file_name"]), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    loose = {**gt, "annotations": []}
    for a in gt["annotations"]:                      # every box 1.4x larger about its centre
        x, y, w, h = a["bbox"]
        loose["annotations"].append({**a, "bbox": [x - 0.2 * w, y - 0.2 * h, 1.4 * w, 1.4 * h]})
    inp = tmp_path / "warped.json"
    coco.save_dataset(inp, loose)
    results = {}
    for k, folder in folders.items():
        rep = run_refine(inp, tmp_path / f"{k}.json", RefineParams(method="classical", min_iou=0.3,
                                                                   image_root=str(folder)),
                         cache_dir=tmp_path / f"cache_{k}")
        assert rep.skipped_images == [] and rep.counts["boxes_out"] == len(gt["annotations"]) > 0
        refined = coco.load_dataset(tmp_path / f"{k}.json")["annotations"]
        results[k] = [(a["id"], a["bbox"], a["refine"]["decision"]) for a in refined]
    assert any(d == "replace" for _, _, d in results["u8"])
    assert results["u16"] == results["u8"] == results["c3"]

    # the index takes 16-bit and 3-channel thermal frames with their sizes
    for k in ("u16", "c3"):
        root = tmp_path / f"ds_{k}"
        shutil.copytree(src / "rgb", root / "rgb")
        shutil.copytree(folders[k], root / "thermal")
        ix = _index(root, tmp_path / f"ix_{k}")
        assert len(ix.pairs) == 5 and not ix.excluded
        assert {p.thermal_size for p in ix.pairs} == {info.thermal_size}


# ----------------------------------------------------------------------------------------- homographies
def test_warp_refuses_an_rgb_resolution_without_a_homography_and_writes_nothing(synth, tmp_path: Path, capsys) -> None:
    """Row: an image whose size has no homography entry (stage ``warp`` and ``register check --index``)."""
    from rgb2thermal_cli.main import main
    from tasks.warp import WarpParams, run_warp

    src, info = synth
    idx = _index(src, tmp_path / "index")
    # the version is registered, but only for 640x512 RGB frames (the data set's are 320x256)
    H640 = np.asarray(info.homography) @ np.diag([0.5, 0.5, 1.0])
    reg = _registry(tmp_path / "registry", "v", [_entry(H640, (640, 512), info.thermal_size)])
    out = tmp_path / "warped.json"
    with pytest.raises(InputError,
                       match=r"no homography for RGB resolution 320x256 in version 'v' \(registered: 640x512\)"):
        run_warp(idx.rgb_labels, out, WarpParams(registry_dir=reg), index=idx.path)
    assert not out.exists() and not report_path(out).exists()

    assert main(["register", "check", "--index", str(idx.path), "--registry", str(reg)]) == 2
    err = capsys.readouterr().err
    assert "no homography for RGB resolution 320x256" in err and "register estimate --version v" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("H, words", [
    ([[1, 2, 0], [2, 4, 0], [0, 0, 1]], "singular"),
    ([[30, 0, 0], [0, 30, 0], [0, 0, 1]], "scales wildly"),
    ([[-0.8, 0, 256], [0, 0.8, 0], [0, 0, 1]], "flips"),
    ([[0.8, 0, 5000], [0, 0.8, 0], [0, 0, 1]], "covers only"),
])
def test_a_bad_homography_in_the_registry_stops_warp_before_any_output(synth, tmp_path: Path, H, words) -> None:
    """Row: a singular or wildly wrong homography (hand-edited registry file)."""
    from tasks.warp import WarpParams, run_warp

    src, info = synth
    idx = _index(src, tmp_path / "index")
    reg = _registry(tmp_path / "registry", "v", [_entry(H, info.rgb_size, info.thermal_size)])
    out = tmp_path / "warped.json"
    with pytest.raises(InputError, match=words) as ei:
        run_warp(idx.rgb_labels, out, WarpParams(registry_dir=reg), index=idx.path)
    assert "v.yaml: entries[0]" in str(ei.value) and "Fix:" in str(ei.value)
    assert not out.exists() and not report_path(out).exists()


def test_image_whose_boxes_all_warp_off_frame_stays_without_boxes(synth, tmp_path: Path) -> None:
    """Row: all boxes of an image warped off-frame: they are dropped as ``outside`` (counted), the
    thermal image stays in the output with no boxes (its view holds none of those objects), and the
    other images are unaffected."""
    from core.coco import annotation, new_dataset, save_dataset
    from tasks.warp import WarpParams, run_warp

    src, info = synth
    idx = _index(src, tmp_path / "index")
    reg = _registry(tmp_path / "registry", "v", [_entry(info.homography, info.rgb_size, info.thermal_size)])
    p0, p1 = idx.pairs[0], idx.pairs[1]
    w, h = info.rgb_size
    images = [{"id": p.image_id, "file_name": p.rgb_path, "width": w, "height": h, "pair_id": p.pair_id}
              for p in (p0, p1)]
    corners = [[0, 0, 16, 16], [w - 16, 0, w, 16], [0, h - 16, 16, h]]        # outside the thermal view
    anns = [annotation(i + 1, p0.image_id, 1, b, score=0.9) for i, b in enumerate(corners)]
    anns.append(annotation(4, p1.image_id, 1, [150, 100, 180, 160], score=0.9))
    save_dataset(tmp_path / "pseudo.json", new_dataset(images, anns, [{"id": 1, "name": "person"}]))
    rep = run_warp(tmp_path / "pseudo.json", tmp_path / "warped.json", WarpParams(registry_dir=reg), index=idx.path)
    assert rep.dropped == {"outside": 3} and rep.counts["boxes_out"] == 1 and rep.skipped_images == []
    ds = coco.load_dataset(tmp_path / "warped.json")
    assert [(im["id"], im["file_name"]) for im in ds["images"]] == [(p0.image_id, p0.thermal_path),
                                                                   (p1.image_id, p1.thermal_path)]
    assert [a["image_id"] for a in ds["annotations"]] == [p1.image_id]


# ---------------------------------------------------------------------------------- empty label sets
def test_empty_pseudo_label_set_flows_through_and_training_refuses_it(synth, tmp_path: Path) -> None:
    """Row: an empty pseudo-label set: pseudo, warp and refine write valid empty sets (no image is
    read), and the pipeline's student step refuses to train on it with an InputError before any training."""
    from pipeline.params import params_from_dict
    from pipeline.plan import plan
    from pipeline.runs import RunRecord
    from pipeline.stages import run_kind
    from pipeline.step import PipelineContext, Ref, StepOutput
    from tasks.pseudo import PseudoParams, run_pseudo
    from tasks.refine import RefineParams, run_refine
    from tasks.warp import WarpParams, run_warp

    src, info = synth
    idx = _index(src, tmp_path / "index")
    reg = _registry(tmp_path / "registry", "v", [_entry(info.homography, info.rgb_size, info.thermal_size)])
    dets = coco.load_dataset(idx.rgb_labels)
    for a in dets["annotations"]:
        a["score"] = 0.4                                   # every detection below the threshold
    coco.save_dataset(tmp_path / "dets.json", dets)
    pr = run_pseudo(tmp_path / "dets.json", tmp_path / "pseudo.json",
                    PseudoParams(score_threshold=0.9, histogram=False))
    assert pr.counts["boxes_out"] == 0 and pr.dropped == {"below_threshold": len(dets["annotations"])}
    wr = run_warp(tmp_path / "pseudo.json", tmp_path / "warped.json", WarpParams(registry_dir=reg), index=idx.path)
    rr = run_refine(tmp_path / "warped.json", tmp_path / "refined.json", RefineParams(method="classical"),
                    index=idx.path, cache_dir=tmp_path / "cache")
    assert wr.counts["boxes_out"] == rr.counts["boxes_out"] == 0
    assert rr.cache_misses == rr.cache_hits == 0 and rr.counts["images_refined"] == 0
    refined = coco.load_dataset(tmp_path / "refined.json")
    assert len(refined["images"]) == 5 and refined["annotations"] == []

    p = params_from_dict({"data": {"synthetic": {"n_pairs": 4}},
                          "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}})
    student = next(s for s in plan(p) if s.name == "student")
    assert student.needs["labels"] == Ref("refine", "coco")
    ctx = PipelineContext(params=p, workspace=tmp_path / "ws", record=RunRecord(run_id="t", flow="test"))
    ctx.outputs["refine"] = StepOutput(files={"coco": tmp_path / "refined.json"})
    out = tmp_path / "ws" / "stages" / "student"
    out.mkdir(parents=True)
    with pytest.raises(InputError, match="no labels survived to train 'student' on"):
        run_kind(ctx, student, out)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------- NaN / inf input
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_boxes_are_refused_at_the_coco_boundary(tmp_path: Path, bad: float) -> None:
    """Row: NaN/inf (in a label or detection file; NaN/inf *loss* is ``test_train_run``'s guard)."""
    ds = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, bad, 2]}],
          "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(ds))                         # Python writes NaN / Infinity, and reads them back
    with pytest.raises(InputError, match="non-finite") as ei:
        coco.load_dataset(path)
    assert "annotations[0]" in str(ei.value) and "Fix:" in str(ei.value)
    with pytest.raises(InputError, match="non-finite"):
        coco.validate_results([{"image_id": 1, "category_id": 1, "bbox": [bad, 1, 2, 2], "score": 0.5}], "pred.json")
    with pytest.raises(InputError, match="non-finite"):
        coco.save_dataset(tmp_path / "out.json", ds)
    assert not (tmp_path / "out.json").exists()


def test_non_finite_or_out_of_range_scores_are_refused_in_stage_datasets(tmp_path: Path) -> None:
    """Row: scores in a COCO *dataset* (stage outputs such as ``infer.json`` that ``pseudo`` reads):
    a NaN, inf, string or out-of-range ``score`` is an InputError naming the file and
    ``annotations[i]``, when read and when written (nothing written); annotations without a score
    (ground truth) and scores in [0, 1] pass."""
    ds = {"images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
          "categories": [{"id": 1, "name": "person"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0}]}
    path = tmp_path / "infer.json"
    coco.save_dataset(path, ds)                                   # no score: ground truth
    for good in (0.0, 0.42, 1.0):
        ds["annotations"][0]["score"] = good
        coco.save_dataset(path, ds)
    for bad in (float("nan"), float("inf"), "0.9", 1.5, -0.1, None):
        ds["annotations"][0]["score"] = bad
        with pytest.raises(InputError, match="score") as ei:
            coco.save_dataset(tmp_path / "out.json", ds)
        assert "annotations[0]" in str(ei.value)
        path.write_text(json.dumps(ds))                     # Python writes NaN / Infinity, and reads them back
        with pytest.raises(InputError, match="score"):
            coco.load_dataset(path)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("score, words", [
    (float("nan"), "score is not a finite number"), (float("inf"), "score is not a finite number"),
    (float("-inf"), "score is not a finite number"), ("0.9", "score is not a finite number"),
    (None, "score is not a finite number"), (True, "score is not a finite number"),
    (-0.01, r"score -0.01 is outside \[0, 1\]"), (1.5, r"score 1.5 is outside \[0, 1\]"),
    (87, r"score 87 is outside \[0, 1\]"),
])
def test_non_finite_or_out_of_range_scores_are_refused_in_results(tmp_path: Path, score, words) -> None:
    """Row: NaN/inf scores (and scores outside [0, 1]) in a COCO results list: InputError naming the
    file and ``results[i]``, read from a file (Python writes NaN / Infinity) or checked in memory."""
    ok = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5}
    res = [ok, {**ok, "score": 0.0}, {**ok, "score": 1}, {**ok, "score": score}]
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(res))
    with pytest.raises(InputError, match=words) as ei:
        coco.load_results(path)
    assert f"{path}: results[3]" in str(ei.value) and "Fix:" in str(ei.value)
    with pytest.raises(InputError, match=words):
        coco.validate_results(res, "pred.json")
    assert coco.validate_results(res[:3], "pred.json") == res[:3]          # 0, 0.5 and 1 are confidences


# ------------------------------------------------------------------------------ classes, checkpoints, configs
def test_detector_classes_matching_no_dataset_category_are_refused() -> None:
    """Row: class names that match nothing (detector classes vs the ground truth's categories, ``eval``)."""
    from detection.detector import label_map_by_name

    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    with pytest.raises(InputError, match=r"none of the detector's classes \['dog', 'cat'\] is a category"):
        label_map_by_name(("dog", "cat"), cats)
    assert label_map_by_name(("dog", "car", "person"), cats) == {1: 2, 2: 1}   # partial overlap: the rest dropped


def test_checkpoint_lacking_weights_of_the_config_is_refused(tiny, tmp_path: Path) -> None:
    """Row: a checkpoint that does not match the config (weights missing; wrong shapes and wrong
    classes are ``test_detector``'s)."""
    import torch

    from detection.detector import load_detector

    cfg, ckpt, _ = tiny
    full = torch.load(ckpt, map_location="cpu", weights_only=True)
    partial = {k: v for k, v in full["state_dict"].items() if not k.startswith("bbox_head.")}
    torch.save({"state_dict": partial, "meta": full["meta"]}, tmp_path / "partial.pth")
    with pytest.raises(InputError, match=r"checkpoint lacks \d+ weights of the model, e\.g\. \['bbox_head\."):
        load_detector(cfg, tmp_path / "partial.pth", "cpu")


def test_a_corrupt_checkpoint_file_is_an_input_error_naming_it(synth, tiny, tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """Row: a corrupt checkpoint file (zero bytes, truncated download, not a pickle, a broken zip):
    InputError naming the file and saying to re-download / re-export it, through the API and the CLI
    (exit 2, no traceback). A valid checkpoint loads exactly as before, and a RuntimeError that is not
    torch's archive reader failing is not reworded."""
    import torch

    from detection.detector import load_detector, read_checkpoint
    from rgb2thermal_cli.main import main

    src, _ = synth
    cfg, ckpt, _ = tiny
    good = Path(ckpt).read_bytes()
    damaged = {"empty": b"", "truncated": good[: len(good) // 2], "first_bytes": good[:10],
               "text": b"this is not a checkpoint\n", "bad_zip": b"PK\x03\x04" + bytes(200),
               "torn_pickle": b"\x80\x02}q\x00(X"}
    for name, data in damaged.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        with pytest.raises(InputError, match="not a readable checkpoint") as ei:
            read_checkpoint(path)
        assert str(path) in str(ei.value) and "re-download" in str(ei.value), name
        assert f"file is {len(data)} bytes" in str(ei.value)
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_detector(cfg, tmp_path / "truncated.pth", "cpu")

    out = tmp_path / "dets.json"
    assert main(["stage", "infer", "--in", str(src / "labels_rgb" / "coco.json"), "--out", str(out),
                 "--config", str(cfg), "--checkpoint", str(tmp_path / "truncated.pth"), "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "truncated.pth" in err and "not a readable checkpoint" in err and "Traceback" not in err
    assert not out.exists()

    loaded = read_checkpoint(ckpt)
    direct = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert loaded["meta"] == direct["meta"] and loaded["state_dict"].keys() == direct["state_dict"].keys()
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in direct["state_dict"].items())

    def other_failure(*args, **kwargs):
        raise RuntimeError("a bug elsewhere")

    monkeypatch.setattr(torch, "load", other_failure)
    with pytest.raises(RuntimeError, match="a bug elsewhere"):
        read_checkpoint(ckpt)


def test_cuda_requested_without_cuda_is_an_input_error() -> None:
    """Extra row: a device that is not there (``--device cuda`` on a CPU-only machine) or not a device."""
    import torch

    from detection.detector import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="device 'cuda:0' requested but CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("auto") == "cpu"


def test_a_config_that_does_not_exist_is_an_input_error_at_each_door(synth, tmp_path: Path, capsys) -> None:
    """Row: a config that does not exist (detector config, params.yaml), through the API and the CLI."""
    from detection.detector import load_detector
    from rgb2thermal_cli.main import main

    src, _ = synth
    with pytest.raises(InputError, match="neither a config file nor a config bundled with mmdet"):
        load_detector(tmp_path / "nope.py", None, "cpu", classes=["person"])

    out = tmp_path / "dets.json"
    assert main(["stage", "infer", "--in", str(src / "labels_rgb" / "coco.json"), "--out", str(out),
                 "--config", str(tmp_path / "nope.py"), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "nope.py" in err and "neither a config file" in err and "Traceback" not in err
    assert not out.exists()

    ws = tmp_path / "ws"
    assert main(["run", "--params", str(tmp_path / "nope.yaml"), "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "parameter file not found" in err and "nope.yaml" in err and "Traceback" not in err
    assert not ws.exists()


# ------------------------------------------------------------------------------- corrupt input files
def test_a_missing_teacher_config_is_refused_before_any_step(tmp_path: Path, capsys) -> None:
    """Row: a config that does not exist, detected early: ``teacher.config`` naming a missing ``.py``
    is refused when the parameters are validated (``rgb2thermal run --check`` and ``run``: exit 2,
    no workspace), not at the first model step; a bundled mmdet name still passes validation."""
    import yaml

    from pipeline.params import params_from_dict
    from rgb2thermal_cli.main import main

    ck = tmp_path / "w.pth"
    ck.write_bytes(b"x")
    (tmp_path / "data").mkdir()
    doc = {"data": {"roots": [{"path": str(tmp_path / "data"), "version": "v"}]},
           "teacher": {"config": "configs/missing_yolox.py", "checkpoint": str(ck)}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    for extra in (["--check"], []):
        assert main(["run", "--params", str(tmp_path / "params.yaml"), "--workspace", str(tmp_path / "ws"), *extra]) == 2
        err = capsys.readouterr().err
        assert "missing_yolox.py does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "ws").exists()
    doc["teacher"]["config"] = "yolox_tiny_8xb8-300e_coco"
    assert params_from_dict(doc).teacher.config == "yolox_tiny_8xb8-300e_coco"


def test_truncated_or_garbage_index_registry_and_params_files_are_input_errors(synth, tmp_path: Path) -> None:
    """Row: a truncated or corrupted file the product reads (index, COCO, registry, params): an InputError
    naming the file, never a traceback."""
    from data.index import load_index
    from pipeline.params import load_params
    from registration.registry import load_registry
    from tasks.warp import WarpParams, run_warp

    src, info = synth
    idx = _index(src, tmp_path / "index")
    torn = tmp_path / "torn.json"
    torn.write_bytes(Path(idx.path).read_bytes()[:100])
    with pytest.raises(InputError, match="index is not valid JSON") as ei:
        load_index(torn)
    assert str(torn) in str(ei.value)
    reg = _registry(tmp_path / "registry", "v", [_entry(info.homography, info.rgb_size, info.thermal_size)])
    with pytest.raises(InputError, match="index is not valid JSON"):
        run_warp(idx.rgb_labels, tmp_path / "w.json", WarpParams(registry_dir=reg), index=torn)
    (tmp_path / "empty.json").write_bytes(b"")
    with pytest.raises(InputError, match="not valid JSON"):
        coco.load_dataset(tmp_path / "empty.json")
    (reg / "v.yaml").write_text("schema: rgb2thermal.homographies/1\nentries: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_registry(reg, "v")
    (tmp_path / "params.yaml").write_text("data: {synthetic: {n_pairs: 4}\nteacher: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


# --------------------------------------------------------------------------------------- disk full
def test_a_write_the_kernel_refuses_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Row: disk full while writing an output, at the writer itself: ``core.atomic.write_bytes`` /
    ``write_json`` / ``write_text`` whose ``write`` the kernel refuses part-way (file size limit, EFBIG)
    raise the OSError naming the target (not the temporary, and not no file at all as the kernel's
    error does); the previous file stays byte-identical, a new file never appears, no temporary is
    left, and a write that fits still succeeds in the same process."""
    out = tmp_path / "out"
    atomic.write_bytes(out / "a.bin", b"previous a\n")
    atomic.write_json(out / "b.json", {"previous": "b"})
    before = {name: (out / name).read_bytes() for name in ("a.bin", "b.json")}
    results = _under_file_size_limit("from core import atomic", {
        "bytes": f"atomic.write_bytes({str(out / 'a.bin')!r}, b'x' * 65536)",
        "json": f"atomic.write_json({str(out / 'b.json')!r}, {{'values': list(range(20000))}})",
        "text": f"atomic.write_text({str(out / 'c.txt')!r}, 'y' * 65536)",
        "fits": f"atomic.write_text({str(out / 'd.txt')!r}, 'fits under the limit')",
    }, limit_bytes=4096)
    assert results == {"bytes": {"errno": errno.EFBIG, "filename": str(out / "a.bin")},
                       "json": {"errno": errno.EFBIG, "filename": str(out / "b.json")},
                       "text": {"errno": errno.EFBIG, "filename": str(out / "c.txt")},
                       "fits": {"errno": None, "filename": None}}
    assert {name: (out / name).read_bytes() for name in ("a.bin", "b.json")} == before
    assert sorted(os.listdir(out)) == ["a.bin", "b.json", "d.txt"]          # no c.txt, no .*.tmp folder
    assert (out / "d.txt").read_text() == "fits under the limit"


def test_a_failed_write_of_a_stage_output_keeps_the_previous_output_whole(synth, tmp_path: Path) -> None:
    """Row: disk full while writing a stage output: ``run_pseudo`` in a process whose writes the kernel
    refuses past 1 KiB fails with the OSError naming its output (the first file it writes); the previous
    output and its report stay byte-identical, no temporary is left behind."""
    from tasks.pseudo import PseudoParams, run_pseudo

    src, _ = synth
    out = tmp_path / "out" / "pseudo.json"
    run_pseudo(src / "labels_rgb" / "coco.json", out, PseudoParams(score_threshold=0.5, histogram=False))
    before = out.read_bytes(), report_path(out).read_bytes()
    results = _under_file_size_limit(
        "from tasks.pseudo import PseudoParams, run_pseudo",
        {"pseudo": f"run_pseudo({str(src / 'labels_rgb' / 'coco.json')!r}, {str(out)!r}, "
                   "PseudoParams(score_threshold=0.9, histogram=False))"}, limit_bytes=1024)
    assert results == {"pseudo": {"errno": errno.EFBIG, "filename": str(out)}}
    assert (out.read_bytes(), report_path(out).read_bytes()) == before
    assert sorted(os.listdir(out.parent)) == sorted([out.name, report_path(out).name])


def test_disk_full_while_writing_a_checkpoint_leaves_no_partial_file(tiny, tmp_path: Path, monkeypatch) -> None:
    """Row: disk full (ENOSPC) while writing a checkpoint: ``torch.save`` writes into the atomic temporary,
    the flush fails, the previous checkpoint stays loadable and byte-identical, and a new one never
    appears half-written."""
    import torch

    from tasks.train import write_slim

    _, ckpt, _ = tiny
    slim = write_slim(ckpt, tmp_path / "run" / "best_slim.pth", {"note": "first"})
    before = slim.read_bytes()

    _fsync_fails(monkeypatch)
    with pytest.raises(OSError) as ei:
        write_slim(ckpt, slim, {"note": "second"})
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(slim)
    with pytest.raises(OSError):
        write_slim(ckpt, tmp_path / "run" / "other_slim.pth", {})
    monkeypatch.undo()
    assert slim.read_bytes() == before and not (tmp_path / "run" / "other_slim.pth").exists()
    assert torch.load(slim, map_location="cpu", weights_only=True)["meta"]["rgb2thermal"] == {"note": "first"}
    assert _leftover_temporaries(tmp_path) == []


def _pipeline_params(n_pairs: int = 6):
    from pipeline.params import params_from_dict

    return params_from_dict({"data": {"synthetic": {"n_pairs": n_pairs, "seed": 2, **SMALL}},
                             "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}})


def test_an_input_changed_during_a_step_leaves_the_step_unmarked_so_the_next_run_redoes_it(
        tmp_path: Path, monkeypatch) -> None:
    """Row: a data file changed during a pipeline step: the step's key is computed again after it
    ran; when it differs (here a frame is added to the data root while ``data`` runs) the step gets
    no marker, a WARNING and a fallback line in the run record, and the next run redoes it and marks
    it done. A file that vanishes while a dataset is fingerprinted is an InputError, not a traceback."""
    import pipeline.executor as executor
    from data.synthetic import generate
    from pipeline.params import params_from_dict
    from data.fingerprint import content_fingerprint

    root = tmp_path / "data"
    generate(root, 3, seed=2, progress=False, **SMALL)
    params = params_from_dict({"data": {"roots": [{"path": str(root), "version": "syn"}]},
                               "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}})
    real = executor.run_kind

    def edit_during_data(ctx, step, sdir, resume=False):
        out = real(ctx, step, sdir, resume=resume)
        if step.name == "data":
            (root / "rgb" / "late_arrival.txt").write_text("a file synced in while the step ran\n")
        return out

    monkeypatch.setattr(executor, "run_kind", edit_during_data)
    first = executor.run_pipeline(params, tmp_path / "ws", until="data")
    assert not (tmp_path / "ws" / "stages" / "data" / "stage.json").exists()
    assert any("changed while it ran" in f for f in first.fallbacks), first.fallbacks
    monkeypatch.setattr(executor, "run_kind", real)
    second = executor.run_pipeline(params, tmp_path / "ws", until="data")
    assert not second.stage("data").reused and (tmp_path / "ws" / "stages" / "data" / "stage.json").is_file()
    assert executor.run_pipeline(params, tmp_path / "ws", until="data").stage("data").reused

    def vanishing(f):
        raise FileNotFoundError(2, "No such file or directory", f)

    with pytest.raises(InputError, match="the dataset changed while being read"):
        content_fingerprint(root, type("Memo", (), {"sha256": staticmethod(vanishing)})())


def test_disk_full_in_a_pipeline_step_fails_the_run_and_the_next_run_redoes_only_that_step(
        tmp_path: Path, monkeypatch) -> None:
    """Row: disk full (ENOSPC) during a pipeline step: the run record says which step failed and why, the
    step has no marker (not done) and no half-written file; the next run reuses the steps before it."""
    from pipeline.executor import MARKER, run_pipeline
    from pipeline.runs import list_records

    p = _pipeline_params()
    ws = tmp_path / "ws"
    versions = ws.resolve() / "stages" / "index" / "versions"
    failed = _fsync_fails(monkeypatch, under=versions)
    with pytest.raises(OSError) as ei:
        run_pipeline(p, ws, until="index")
    assert ei.value.errno == errno.ENOSPC and len(failed) == 1
    target = versions / Path(failed[0]).name          # the temporary holds the target's name
    assert ei.value.filename == str(target)
    (rec,) = list_records(ws)
    assert rec.status == "failed" and rec.error.startswith("step index: OSError") and "No space left" in rec.error
    assert str(target) in rec.error
    assert [s.name for s in rec.stages] == ["data"]
    assert (ws / "stages" / "data" / MARKER).is_file() and not (ws / "stages" / "index" / MARKER).exists()
    assert not Path(failed[0]).exists() and not target.exists() and _leftover_temporaries(ws) == []

    monkeypatch.undo()
    again = run_pipeline(p, ws, until="index")
    assert again.status == "succeeded"
    assert [(s.name, s.reused) for s in again.stages] == [("data", True), ("index", False)]
    assert (ws / "stages" / "index" / MARKER).is_file()


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full (ENOSPC)"),
                                         (errno.EROFS, "read-only file system (EROFS)")])
def test_disk_full_or_read_only_during_a_cli_command_is_one_line_and_exit_1(synth, tmp_path: Path, monkeypatch,
                                                                            capsys, code, words) -> None:
    """Row: disk full / read-only file system during a CLI command: one line saying what, the errno
    name, the output path (the target, not the atomic temporary) and how to fix it (free space,
    another --workspace); exit 1 (the machine's state), not 2 (bad input); the traceback only with
    -v. Other OSErrors are bugs and keep their traceback. The full disk fails the output's flush
    (``os.fsync``, whose error names no file), the read-only folder the writer's temporary folder
    (``os.mkdir``): the product's writer runs up to the failing OS call."""
    from rgb2thermal_cli.main import main

    src, _ = synth
    out = tmp_path / "out" / "pseudo.json"
    out.parent.mkdir()
    argv = ["stage", "pseudo", "--in", str(src / "labels_rgb" / "coco.json"), "--out", str(out), "--no-histogram"]
    for verbose in ([], ["-v"]):
        if code == errno.ENOSPC:
            _fsync_fails(monkeypatch, code)
        else:
            _refuse_writes_under(monkeypatch, out.parent, code)
        capsys.readouterr()
        assert main([*verbose, *argv]) == 1
        monkeypatch.undo()
        err = capsys.readouterr().err
        if verbose:
            assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(f"error: {words}")
            continue
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith(f"error: {words} on {out}. Fix: ") and "--workspace" in lines[0]
        assert ".tmp" not in lines[0] and "-v shows the traceback" in lines[0]
    assert os.listdir(out.parent) == []

    _fsync_fails(monkeypatch, errno.EIO)                         # not the environment's state: a bug to see
    with pytest.raises(OSError) as ei:
        main(argv)
    monkeypatch.undo()
    assert ei.value.errno == errno.EIO and ei.value.filename == str(out) and os.listdir(out.parent) == []


def test_torn_stage_marker_means_the_step_runs_again(tmp_path: Path) -> None:
    """Row: a truncated or corrupted cache entry (the whole-step marker ``stage.json``)."""
    from pipeline.executor import MARKER, run_pipeline

    p = _pipeline_params()
    ws = tmp_path / "ws"
    assert run_pipeline(p, ws, until="index").status == "succeeded"
    marker = ws / "stages" / "index" / MARKER
    marker.write_bytes(marker.read_bytes()[:25])
    rerun = run_pipeline(p, ws, until="index")
    assert [(s.name, s.reused) for s in rerun.stages] == [("data", True), ("index", False)]
    assert json.loads(marker.read_text())["files"]["index"]
    assert [(s.name, s.reused) for s in run_pipeline(p, ws, until="index").stages] == [("data", True), ("index", True)]


def test_a_torn_run_record_is_skipped_by_runs_list_with_a_warning(tmp_path: Path, caplog, capsys) -> None:
    """Row: a torn run record (``runs/<id>/record.json`` damaged outside rgb2thermal): ``runs list``
    lists the readable runs and logs a WARNING naming each damaged file; ``runs show`` of the latest
    run takes the latest readable one; ``runs show <damaged id>`` is an InputError naming the file."""
    from pipeline.runs import RunRecord, list_records, runs_dir, save_record
    from rgb2thermal_cli.main import main

    ws = tmp_path / "ws"
    ids = ["20260101T000000-adapt-aaaaaa", "20260102T000000-adapt-bbbbbb", "20260103T000000-adapt-cccccc",
           "20260104T000000-adapt-dddddd"]
    for run_id in ids:
        save_record(ws, RunRecord(run_id=run_id, flow="adapt", status="succeeded", started=run_id[:8]))
    torn = runs_dir(ws) / ids[1] / "record.json"
    torn.write_bytes(torn.read_bytes()[:40])                                # cut by outside damage
    (runs_dir(ws) / ids[2] / "record.json").write_text('["not", "a record"]')
    (runs_dir(ws) / ids[3] / "record.json").write_text('{"run_id": "x", "flow": "adapt", "surprise": 1}')
    with caplog.at_level(logging.WARNING, logger="pipeline.runs"):
        assert [r.run_id for r in list_records(ws)] == [ids[0]]
    warned = [r.getMessage() for r in caplog.records if r.name == "pipeline.runs" and r.levelno == logging.WARNING]
    assert len(warned) == 3 and all("skipping unreadable run record" in w for w in warned)
    assert str(torn) in warned[0]

    capsys.readouterr()
    assert main(["runs", "--workspace", str(ws), "list"]) == 0
    out, err = capsys.readouterr()
    assert ids[0] in out and ids[1] not in out and "Traceback" not in err
    assert main(["runs", "--workspace", str(ws), "show"]) == 0
    assert f"# run {ids[0]}" in capsys.readouterr().out
    assert main(["runs", "--workspace", str(ws), "show", ids[1]]) == 2
    err = capsys.readouterr().err
    assert "run record is unreadable" in err and str(torn) in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- read-only workspace
def _refuse_writes_under(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make every write-opening ``os.open``/``open`` and every ``os.mkdir`` under ``folder`` fail with
    ``code``, as a read-only mount (EROFS) or a folder without write permission (EACCES) would.
    (Simulated: the tests run as root, where chmod does not stop writes.)"""
    inside = str(folder.resolve())

    def refuse(path) -> None:
        if os.path.abspath(os.fspath(path)).startswith(inside):
            raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_mkdir, real_builtin_open = os.open, os.mkdir, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if os.path.exists(path):                 # as the kernel does: EEXIST wins over EROFS
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def builtin_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", builtin_open)


def test_read_only_workspace_fails_before_any_step_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    """Row: a read-only workspace: the run fails at its first write (the workspace lock), before any step,
    with an InputError naming the workspace, the errno and the fix, and nothing appears in the workspace.
    A workspace to be created in a folder this user cannot write (EACCES) is refused the same way."""
    from pipeline.executor import run_pipeline
    from pipeline.lock import LOCK_NAME, workspace_lock

    p = _pipeline_params()
    ws = tmp_path / "ws"
    ws.mkdir()
    _refuse_writes_under(monkeypatch, ws)
    with pytest.raises(InputError, match=r"the workspace is on a read-only file system \(EROFS creating") as ei:
        run_pipeline(p, ws, until="index")
    assert str(ws.resolve()) in str(ei.value) and LOCK_NAME in str(ei.value)
    assert "Fix: choose a writable --workspace" in str(ei.value)
    monkeypatch.undo()
    assert list(ws.iterdir()) == []

    parent = tmp_path / "not_mine"
    parent.mkdir()
    _refuse_writes_under(monkeypatch, parent, errno.EACCES)
    with pytest.raises(InputError, match=r"is not writable \(permission denied\) \(EACCES creating") as ei:
        with workspace_lock(parent / "new_ws", "r1"):
            pass
    monkeypatch.undo()
    assert str(parent / "new_ws") in str(ei.value) and not (parent / "new_ws").exists()


def test_read_only_shared_cache_fails_before_any_step_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    """Row: a read-only shared cache: a run given a ``--cache-dir`` it cannot write stops at once with an
    InputError naming the cache, the errno and the fix, before the workspace lock or any step."""
    from pipeline.executor import run_pipeline

    cache = tmp_path / "shared_cache"
    cache.mkdir()
    _refuse_writes_under(monkeypatch, cache)
    with pytest.raises(InputError, match=r"the shared cache is on a read-only file system \(EROFS creating") as ei:
        run_pipeline(_pipeline_params(), tmp_path / "ws", until="index", cache_root=cache)
    assert str(cache.resolve()) in str(ei.value) and "Fix: choose a writable --cache-dir" in str(ei.value)
    monkeypatch.undo()
    assert list(cache.iterdir()) == [] and not (tmp_path / "ws").exists()


# ------------------------------------------------------------------------------- overlapping nightly run
def test_overlapping_nightly_run_gives_up_without_touching_the_champion(tmp_path: Path, prefect_harness,
                                                                        quick_prefect) -> None:
    """Row: an overlapping nightly run: while another run holds the workspace, the nightly waits its
    ``lock_wait_seconds``, then fails with WorkspaceBusy naming the holder; no adapt run starts and the
    champion pointer and history stay byte-identical; the night's report says "skipped: workspace busy"."""
    from flows.nightly import nightly_flow
    from pipeline.champion import DEFAULT_METRIC, Champion, champion_path, history_path, promote
    from pipeline.lock import WorkspaceBusy, workspace_lock
    from pipeline.runs import list_records

    params = {"data": {"synthetic": {"n_pairs": 4, "seed": 2, **{k: list(v) for k, v in SMALL.items()}}},
              "teacher": {"train": {"base_model": "yolox_tiny_8xb8-300e_coco"}}}
    ws = tmp_path / "ws"
    promote(ws, Champion(run_id="r0", metric=DEFAULT_METRIC, value=0.5, datasets={"synthetic": "synthetic:older"}))
    pointer, history = champion_path(ws).read_bytes(), history_path(ws).read_bytes()
    with workspace_lock(ws, "nightly-earlier"):
        t0 = time.monotonic()
        with pytest.raises(WorkspaceBusy, match="in use by run nightly-earlier"):
            nightly_flow(params_path=None, workspace=str(ws), params=params, lock_wait_seconds=1.0,
                         decide_on="test")
        assert time.monotonic() - t0 >= 1.0
    assert (champion_path(ws).read_bytes(), history_path(ws).read_bytes()) == (pointer, history)
    assert list_records(ws) == [] and not (ws / "stages").exists()
    # the refused night still reports why (nightly/<id>.md, also published as the nightly-decision artifact)
    reports = list((ws / "nightly").glob("*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "skipped: workspace busy" in text and "nightly-earlier" in text and "champion is untouched" in text
