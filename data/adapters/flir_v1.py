"""FLIR ADAS v1 (``FLIR_ADAS_1_3``) adapter.

Layout::

    FLIR_ADAS_1_3/{train,val,video}/RGB/FLIR_xxxxx.jpg
    FLIR_ADAS_1_3/{train,val,video}/thermal_8_bit/FLIR_xxxxx.jpeg
    FLIR_ADAS_1_3/{train,val,video}/thermal_annotations.json     (COCO, thermal only)

Frames pair by frame name (file stem) within a split folder. The RGB camera's frames come in
several resolutions (1800x1600 mostly, also 1280x1024, 720x480, 2048x1536) — the index keeps
each pair's RGB size so the warp picks the homography registered for that resolution — and
some RGB frames are missing (those thermal frames are excluded as ``missing_rgb``, listed).
``original_id`` is ``"<split>/<stem>"`` (e.g. ``train/FLIR_00001``), unique across splits.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from data.adapters.folder import _images, read_coco_labels
from data.index import DEFAULT_CLASSES, PairedIndex
from data.index_build import BuildOptions, Candidate, build_index as _build
from core.errors import InputError

SPLITS = ("train", "val", "video")
#: FLIR's own class names -> target classes (FLIR v1 uses "bicycle", "dog", ... which are dropped).
FLIR_CLASS_MAP: dict[str, str | None] = {"person": "person", "car": "car"}


def candidates(root: str | Path) -> tuple[list[Candidate], list[dict], dict]:
    root = Path(root)
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise InputError(f"no FLIR v1 split folders ({', '.join(SPLITS)}) found", str(root),
                         "pass the FLIR_ADAS_1_3 folder (it holds train/, val/, video/)")
    out: list[Candidate] = []
    issues: list[dict] = []
    for split in splits:
        d = root / split
        rgb, th = _images(d / "RGB"), _images(d / "thermal_8_bit")
        ann_path = d / "thermal_annotations.json"
        labels: dict[str, object] = {}
        if ann_path.exists():
            for fname, lab in read_coco_labels(ann_path, issues, root=root, base=d).items():
                stem = Path(fname).stem
                if stem not in th:
                    issues.append({"kind": "labels_missing_image", "item": f"{split}/{fname}", "source": str(ann_path),
                                   "detail": f"thermal annotations list {fname!r}, which is not in {d / 'thermal_8_bit'}"})
                    continue
                labels[stem] = lab
        for stem in sorted(set(rgb) | set(th)):
            out.append(Candidate(original_id=f"{split}/{stem}", rgb_path=rgb.get(stem), thermal_path=th.get(stem),
                                 split=split, thermal_labels=labels.get(stem) if ann_path.exists() else None,
                                 extra={"frame": stem}))
    return out, issues, {"adapter": "flir_v1", "root": str(root.resolve()), "splits": splits}


def build_index(root: str | Path, version: str, out_dir: str | Path, classes: Sequence[str] = DEFAULT_CLASSES,
                class_map: Mapping[str, str | None] | str | Path | None = None, pairs_file: str | Path | None = None, *,
                exclusions: str | Path | None = None, options: BuildOptions | None = None,
                progress: bool = True) -> PairedIndex:
    """Index FLIR ADAS v1 into ``out_dir/<version>.json``. ``pairs_file`` is not used by v1 (pairs by frame name)."""
    if pairs_file is not None:
        raise InputError("FLIR v1 pairs frames by name; a pairs file is not used", "flir_v1", "drop --pairs-file")
    cands, issues, meta = candidates(root)
    cmap = {**FLIR_CLASS_MAP, **(class_map if isinstance(class_map, Mapping) else {})} \
        if not isinstance(class_map, (str, Path)) else class_map
    return _build(cands, version, Path(out_dir) / f"{version}.json", classes=classes, class_map=cmap, issues=issues,
                  exclusions=exclusions, options=options, meta=meta,
                  has_labels=(False, any(c.thermal_labels is not None for c in cands)), progress=progress)
