"""Deterministic synthetic paired RGB/thermal street scenes with a known homography.

Why: tests, benchmarks (10k frames) and the embedded demo need paired data whose answer is
known exactly — the RGB->thermal homography and the boxes in *both* frames — and that can be
regenerated anywhere from a seed (no third-party images in the product). The two modalities
deliberately look different, so that a detector trained on RGB and applied to thermal
("source-only") does clearly worse than one trained on thermal pseudo-labels:

- RGB: textured, coloured street (sky, buildings with windows, road with lane marks), people
  with coloured clothes and skin-coloured heads, coloured cars with windows and wheels. At
  night it is dark, low-contrast and noisy, people wear darker clothes, so small people are
  barely visible; cars show headlights. A share of night people (``night_hidden_people``,
  default 0; the demo uses 1.0, so only thermal shows night people) is not in the RGB frame at all — below the RGB
  noise, as most night people on real pairs (MSRS) are — and not in the RGB labels, while hot in
  thermal and in the thermal labels.
  That is the real problem the pipeline has to solve: RGB-only pseudo-labels miss them.
- Thermal (second camera, different field of view and resolution): cool sky, mid-temperature
  background, hot bodies (heads hottest), cars with hot wheels/engine/exhaust and cold glass.
  At night the background cools down, so the thermal contrast is *higher*.

Geometry: the scene is drawn once in RGB pixel coordinates (on a canvas large enough to hold
the thermal view too) and the thermal radiance map is warped into the thermal camera with
``H`` (RGB -> thermal, continuous pixel coordinates, see :mod:`registration.warp`). RGB
ground-truth boxes are the objects' geometry boxes (``xyxy`` pixels) clipped to the RGB image;
thermal boxes are the same geometry boxes passed through :func:`registration.warp.warp_boxes`
(4 corners -> enclosing box -> clip -> drop mostly-outside/too-small), i.e. exactly what the
pipeline's box warp produces for a perfect RGB detector.

Determinism: frame ``i`` depends only on ``(seed, i)`` and the generation parameters, never on
which call produced it, so a dataset can be extended with ``start_index`` (incremental tests).

Output layout (the generic paired folder layout, read by ``data.adapters.folder``)::

    out_dir/rgb/<stem>.png              BGR colour, rgb_size (w, h)
    out_dir/thermal/<stem>.png          8-bit single channel, thermal_size (w, h)
    out_dir/labels_rgb/coco.json        COCO, file_name relative to rgb/, categories 1-based in `classes` order
    out_dir/labels_thermal/coco.json    COCO, same image ids as the RGB file
    out_dir/homography.json             {"H_rgb_to_thermal", "rgb_size", "thermal_size", ...}
    out_dir/split.csv                   name,split,daynight  (splits adapt/test ~70/30)
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import atomic
from core.coco import annotation, categories_from_names, new_dataset, save_dataset
from core.errors import InputError
from data.synthetic_render import Renderer

log = logging.getLogger(__name__)

SUPPORTED_CLASSES = ("person", "car")
SCHEMA = "rgb2thermal.synthetic/2"  # 2: night people hidden in RGB (night_hidden_people)
#: Thermal view corners as fractions of the RGB image (tl, tr, br, bl): the thermal camera sees a
#: slightly narrower field of view, at a different scale, with a mild perspective tilt.
_DEFAULT_VIEW_FRACTIONS = np.array([[0.13, 0.12], [0.86, 0.13], [0.85, 0.90], [0.14, 0.89]])


@dataclass(frozen=True)
class SyntheticInfo:
    """What :func:`generate` produced.

    ``n_pairs`` and ``stems`` cover *all* frames now in ``out_dir`` (after an extension call);
    ``generated`` lists the stems written by this call. ``homography``: 3x3 RGB->thermal,
    continuous pixel coordinates. Sizes are ``(width, height)``.
    """

    out_dir: Path
    n_pairs: int
    homography: np.ndarray
    rgb_size: tuple[int, int]
    thermal_size: tuple[int, int]
    stems: list[str]
    generated: list[str] = field(default_factory=list)
    seconds: float = 0.0


def stem_for(index: int) -> str:
    return f"syn_{index:06d}"


def default_homography(rgb_size: tuple[int, int] = (320, 256), thermal_size: tuple[int, int] = (256, 208)) -> np.ndarray:
    """The default RGB->thermal homography: the thermal view is a tilted quad inside the RGB image."""
    import cv2

    src = (_DEFAULT_VIEW_FRACTIONS * np.array(rgb_size, dtype=np.float64)).astype(np.float32)
    tw, th = thermal_size
    dst = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], dtype=np.float32)
    H = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    return H / H[2, 2]


_CHUNK = 64
#: PNG settings (lossless all the same): noisy images barely compress, so zlib effort is wasted;
#: Huffman-only on Sub-filtered rows is the fastest setting measured with OpenCV here.
_PNG_PARAMS = ("IMWRITE_PNG_COMPRESSION", 1, "IMWRITE_PNG_FILTER", "IMWRITE_PNG_FILTER_SUB",
               "IMWRITE_PNG_STRATEGY", "IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY")


@dataclass(frozen=True)
class _Job:
    """Everything a (possibly separate) process needs to render and write frames."""

    out: str
    seed: int
    rgb_size: tuple[int, int]
    thermal_size: tuple[int, int]
    H: np.ndarray
    night_fraction: float
    classes: tuple[str, ...]
    objects_per_image: tuple[int, int]
    night_hidden_people: float


def _render_chunk(job: _Job, indices: list[int]) -> list[tuple[int, np.ndarray, list[str], list[bool], bool, str]]:
    """Render and write frames ``indices``; return per frame (index, geometry boxes xyxy, class names,
    visible in RGB per box, night, split)."""
    import cv2

    renderer = Renderer(job.seed, job.rgb_size, job.thermal_size, job.H, job.night_fraction, job.classes,
                         job.objects_per_image, job.night_hidden_people)
    png = [getattr(cv2, v) if isinstance(v, str) else v for v in _PNG_PARAMS]
    out = Path(job.out)
    res = []
    for i in indices:
        stem = stem_for(i)
        rgb_img, th_img, objs, night, sp = renderer.render(i)
        for sub, img in (("rgb", rgb_img), ("thermal", th_img)):
            ok, buf = cv2.imencode(".png", img, png)
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {stem}")
            atomic.write_bytes(out / sub / f"{stem}.png", buf.tobytes(), fsync=False)
        geo = np.array([o.box for o in objs], dtype=np.float64).reshape(-1, 4)
        res.append((i, geo, [o.cls for o in objs], [o.rgb_visible for o in objs], night, sp))
    return res


def _run_chunks(job: _Job, chunks: list[list[int]], workers: int):
    """Yield each chunk's frames in order; in ``workers`` processes when > 1 (spawned: no fork of torch threads)."""
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield _render_chunk(job, c)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        yield from ex.map(_render_chunk, [job] * len(chunks), chunks)


def _check_args(n_pairs: int, rgb_size: Any, thermal_size: Any, night_fraction: float, night_hidden_people: float,
                classes: Sequence[str], objects_per_image: Any, start_index: int) -> None:
    where = "data.synthetic.generate"
    if n_pairs < 0:
        raise InputError(f"n_pairs must be >= 0, got {n_pairs}", where, "ask for a non-negative number of pairs")
    for name, size in (("rgb_size", rgb_size), ("thermal_size", thermal_size)):
        if len(size) != 2 or min(size) < 32:
            raise InputError(f"{name} must be (width, height) >= 32 px, got {size}", where, "pass e.g. (320, 256)")
    if not 0.0 <= night_fraction <= 1.0:
        raise InputError(f"night_fraction must be in [0, 1], got {night_fraction}", where, "use e.g. 0.5")
    if not 0.0 <= night_hidden_people <= 1.0:
        raise InputError(f"night_hidden_people must be in [0, 1], got {night_hidden_people}", where,
                         "use e.g. 0.8 (0: every night person is drawn in RGB too)")
    unknown = [c for c in classes if c not in SUPPORTED_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise InputError(f"classes must be distinct names from {SUPPORTED_CLASSES}, got {list(classes)}", where,
                         "the generator can draw person and car only")
    lo, hi = objects_per_image
    if lo < 0 or hi < lo:
        raise InputError(f"objects_per_image must be (min, max) with 0 <= min <= max, got {objects_per_image}", where,
                         "pass e.g. (1, 5)")
    if start_index < 0 or start_index + n_pairs > 999_999:
        raise InputError(f"frame indices must lie in [0, 999999], got start {start_index} + {n_pairs}", where,
                         "use fewer frames")


def _meta(H: np.ndarray, rgb_size: tuple[int, int], thermal_size: tuple[int, int], seed: int, version: str,
          classes: Sequence[str], night_fraction: float, objects_per_image: tuple[int, int],
          night_hidden_people: float) -> dict:
    return {"schema": SCHEMA, "H_rgb_to_thermal": [[float(v) for v in row] for row in H],
            "rgb_size": list(rgb_size), "thermal_size": list(thermal_size),
            "convention": "continuous pixel coordinates, (0,0) = top-left corner of the top-left pixel",
            "generator": {"seed": seed, "version": version, "classes": list(classes), "night_fraction": night_fraction,
                          "objects_per_image": list(objects_per_image), "night_hidden_people": night_hidden_people}}


def _same_generation(old: dict, meta: dict) -> bool:
    """Whether a folder's ``homography.json`` (``old``) was written with the parameters of ``meta``."""
    return old.get("schema") == meta["schema"] and old.get("generator") == meta["generator"] \
        and old.get("rgb_size") == meta["rgb_size"] and old.get("thermal_size") == meta["thermal_size"] \
        and np.allclose(np.asarray(old.get("H_rgb_to_thermal")), np.asarray(meta["H_rgb_to_thermal"]))


def _load_existing(out: Path, meta: dict) -> tuple[dict | None, dict | None, dict[str, tuple[str, str]]]:
    """Existing labels and split of a dataset being extended (after checking it was made alike)."""
    hpath = out / "homography.json"
    if not hpath.exists():
        return None, None, {}
    old = atomic.read_json(hpath)
    if old.get("schema") != SCHEMA:
        raise InputError(f"the folder holds a synthetic set made by another generator version ({old.get('schema')}, "
                         f"this one writes {SCHEMA})", str(hpath), "generate into a new folder (or delete this one)")
    if not _same_generation(old, meta):
        raise InputError("the folder holds a synthetic set made with different parameters (seed/sizes/homography/classes)",
                         str(hpath), "extend it with the same parameters, or generate into a new folder")
    from core.coco import load_dataset

    rgb = load_dataset(out / "labels_rgb" / "coco.json")
    therm = load_dataset(out / "labels_thermal" / "coco.json")
    split: dict[str, tuple[str, str]] = {}
    with open(out / "split.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            split[row["name"]] = (row["split"], row["daynight"])
    return rgb, therm, split


def _checked_homography(homography: np.ndarray | None, rgb_size: tuple[int, int],
                        thermal_size: tuple[int, int]) -> np.ndarray:
    """The 3x3 RGB->thermal homography to use (default if ``None``), checked and normalised to ``H[2, 2] = 1``."""
    from registration.homography import check_homography

    H = default_homography(rgb_size, thermal_size) if homography is None else np.asarray(homography, dtype=np.float64)
    check_homography(H, rgb_size, thermal_size)
    return H / H[2, 2]


@dataclass
class _Labels:
    """COCO image and annotation records of the newly rendered frames, RGB and thermal side."""

    images_rgb: list[dict] = field(default_factory=list)
    images_th: list[dict] = field(default_factory=list)
    anns_rgb: list[dict] = field(default_factory=list)
    anns_th: list[dict] = field(default_factory=list)


def _add_frame(labels: _Labels, job: _Job, cat_id: dict[str, int], i: int, geo: np.ndarray, names: list[str],
               seen: list[bool], night: bool) -> None:
    """Append frame ``i``'s image records and its boxes (geometry xyxy RGB px, clipped per camera) to ``labels``."""
    from registration.warp import warp_boxes

    stem, image_id, dn = stem_for(i), i + 1, "night" if night else "day"
    for images, (w, h) in ((labels.images_rgb, job.rgb_size), (labels.images_th, job.thermal_size)):
        images.append({"id": image_id, "file_name": f"{stem}.png", "width": w, "height": h, "daynight": dn})
    cls = [cat_id[n] for n in names]
    r_rgb = warp_boxes(geo, np.eye(3), job.rgb_size, min_size=2.0, min_visible_fraction=0.5)
    for k, box in zip(r_rgb.keep, r_rgb.boxes):
        if not seen[k]:
            continue  # hidden in RGB: no RGB annotator could have labelled it
        labels.anns_rgb.append(annotation(0, image_id, cls[k], box))
    r_th = warp_boxes(geo, job.H, job.thermal_size, min_size=2.0, min_visible_fraction=0.5)
    for k, box in zip(r_th.keep, r_th.boxes):
        labels.anns_th.append(annotation(0, image_id, cls[k], box))


def _render_all(job: _Job, indices: list[int], workers: int, progress: bool,
                split: dict[str, tuple[str, str]]) -> tuple[_Labels, list[str]]:
    """Render and write frames ``indices``; return their labels and stems, recording each in ``split``."""
    from tqdm import tqdm

    cat_id = {c: i + 1 for i, c in enumerate(job.classes)}
    chunks = [indices[k:k + _CHUNK] for k in range(0, len(indices), _CHUNK)]
    labels, generated = _Labels(), []
    bar = tqdm(total=len(indices), desc="synthetic pairs", unit="pair", disable=not progress or len(indices) < 50)
    for frames in _run_chunks(job, chunks, workers):
        for i, geo, names, seen, night, sp in frames:
            _add_frame(labels, job, cat_id, i, geo, names, seen, night)
            split[stem_for(i)] = (sp, "night" if night else "day")
            generated.append(stem_for(i))
        bar.update(len(frames))
    bar.close()
    return labels, generated


def _merged(old: dict | None, images: list[dict], anns: list[dict], classes: Sequence[str], version: str,
            seed: int) -> dict:
    """A COCO dataset of ``old``'s frames with the new frames replacing any of the same id; ids renumbered."""
    new_ids = {im["id"] for im in images}
    keep_imgs = [im for im in (old["images"] if old else []) if im["id"] not in new_ids]
    keep_anns = [a for a in (old["annotations"] if old else []) if a["image_id"] not in new_ids]
    all_imgs = sorted(keep_imgs + images, key=lambda im: im["id"])
    all_anns = sorted(keep_anns + anns, key=lambda a: a["image_id"])  # stable: per-image order kept
    for j, a in enumerate(all_anns):
        a["id"] = j + 1
    return new_dataset(all_imgs, all_anns, categories_from_names(classes),
                       info={"description": f"rgb2thermal synthetic paired scenes ({version})", "seed": seed})


def _write_split(path: Path, split: dict[str, tuple[str, str]]) -> list[str]:
    """Write ``split.csv`` (name, split, daynight; sorted by name); return the sorted stems."""
    buf_csv = io.StringIO()
    w = csv.writer(buf_csv, lineterminator="\n")
    w.writerow(["name", "split", "daynight"])
    stems = sorted(split)
    for stem in stems:
        w.writerow([stem, *split[stem]])
    atomic.write_text(path, buf_csv.getvalue())
    return stems


def generate(out_dir: str | Path, n_pairs: int, seed: int = 0, *,
             rgb_size: tuple[int, int] = (320, 256),
             thermal_size: tuple[int, int] = (256, 208),
             homography: np.ndarray | None = None,
             night_fraction: float = 0.5,
             night_hidden_people: float = 0.0,
             classes: Sequence[str] = ("person", "car"),
             objects_per_image: tuple[int, int] = (1, 5),
             version: str = "synthetic",
             start_index: int = 0,
             progress: bool = True,
             workers: int = 1) -> SyntheticInfo:
    """Write ``n_pairs`` synthetic pairs (frames ``start_index ..``) into ``out_dir``; see module doc.

    ``homography``: 3x3 RGB->thermal in continuous pixel coordinates (``None`` = the default
    mild one, :func:`default_homography`); it is checked with
    :func:`registration.homography.check_homography`. Sizes are ``(width, height)``.
    Label files and ``split.csv`` are rewritten to cover every frame in the folder, so an
    extension call (``start_index = previous count``) leaves the same files as one big call.
    ``night_hidden_people``: the share of night people drawn in thermal only (absent from the RGB
    frame and its labels; see the module doc).
    ``workers > 1`` renders chunks of frames in that many processes; the output is identical
    (every frame depends only on its index), only faster on several cores.
    """
    import time

    t0 = time.perf_counter()
    rgb_size = (int(rgb_size[0]), int(rgb_size[1]))
    thermal_size = (int(thermal_size[0]), int(thermal_size[1]))
    objects_per_image = (int(objects_per_image[0]), int(objects_per_image[1]))
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}", "data.synthetic.generate", "use 1 (or the core count)")
    _check_args(n_pairs, rgb_size, thermal_size, night_fraction, night_hidden_people, classes, objects_per_image,
                start_index)
    H = _checked_homography(homography, rgb_size, thermal_size)
    out = Path(out_dir)
    meta = _meta(H, rgb_size, thermal_size, seed, version, classes, night_fraction, objects_per_image,
                 night_hidden_people)
    old_rgb, old_therm, split = _load_existing(out, meta)
    job = _Job(str(out), seed, rgb_size, thermal_size, H, night_fraction, tuple(classes), objects_per_image,
               night_hidden_people)
    labels, generated = _render_all(job, list(range(start_index, start_index + n_pairs)), workers, progress, split)
    save_dataset(out / "labels_rgb" / "coco.json",
                 _merged(old_rgb, labels.images_rgb, labels.anns_rgb, classes, version, seed))
    save_dataset(out / "labels_thermal" / "coco.json",
                 _merged(old_therm, labels.images_th, labels.anns_th, classes, version, seed))
    stems = _write_split(out / "split.csv", split)
    atomic.write_json(out / "homography.json", meta)
    seconds = time.perf_counter() - t0
    log.info("generated %d synthetic pairs in %.2fs (%.0f pairs/s) into %s", n_pairs, seconds,
             n_pairs / max(seconds, 1e-9), out)
    return SyntheticInfo(out_dir=out, n_pairs=len(stems), homography=H, rgb_size=rgb_size, thermal_size=thermal_size,
                         stems=stems, generated=generated, seconds=seconds)
