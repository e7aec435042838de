"""FLIR ADAS v2 adapter.

Layout::

    root/images_rgb_train/{data/*.jpg, coco.json}      root/images_thermal_train/{data/*.jpg, coco.json}
    root/images_rgb_val/...                            root/images_thermal_val/...
    root/video_rgb_test/...                            root/video_thermal_test/...
    root/rgb_to_thermal_vid_map.json                   {"<rgb file name>": "<thermal file name>", ...}

Only the video split is paired frame by frame, by ``rgb_to_thermal_vid_map.json``; the
train/val RGB and thermal frames are *not* paired, so they enter the index only through a
user pairs file (JSON list of ``{"rgb": path, "thermal": path}``, relative to ``root``, with
optional ``"split"``, ``"rgb_time"``/``"thermal_time"`` seconds). Unpaired frames are counted
in the index stats and issues (``unpaired_frames``), not silently ignored.
``original_id`` is ``"<split>/<rgb stem>"``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from data.adapters.folder import IMAGE_EXTENSIONS, _read_pairs_file, read_coco_labels
from data.index import DEFAULT_CLASSES, PairedIndex
from data.index_build import BuildOptions, Candidate, RawLabels, build_index as _build
from core.errors import InputError

FOLDERS = {"train": ("images_rgb_train", "images_thermal_train"), "val": ("images_rgb_val", "images_thermal_val"),
           "test": ("video_rgb_test", "video_thermal_test")}
MAP_FILE = "rgb_to_thermal_vid_map.json"
FLIR_CLASS_MAP: dict[str, str | None] = {"person": "person", "car": "car"}


def _folder_images(d: Path) -> dict[str, Path]:
    data = d / "data"
    if not data.is_dir():
        return {}
    return {p.name: p for p in sorted(data.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _folder_labels(d: Path, images: Mapping[str, Path], issues: list[dict]) -> dict[str, RawLabels] | None:
    coco = d / "coco.json"
    if not coco.exists():
        return None
    out = {}
    for fname, lab in read_coco_labels(coco, issues, root=d.parent, base=d).items():
        name = Path(fname).name
        if name not in images:
            issues.append({"kind": "labels_missing_image", "item": fname, "source": str(coco),
                           "detail": f"{coco} lists {fname!r}, which is not in {d / 'data'}"})
            continue
        out[name] = lab
    return out


def _load_map(path: Path) -> list[tuple[str, str]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the video frame map ({exc})", str(path), "restore the file from the dataset") from None
    if isinstance(doc, dict):
        return [(Path(str(k)).name, Path(str(v)).name) for k, v in doc.items()]
    if isinstance(doc, list) and all(isinstance(i, dict) and "rgb" in i and "thermal" in i for i in doc):
        return [(Path(i["rgb"]).name, Path(i["thermal"]).name) for i in doc]
    raise InputError("frame map must be {rgb_file: thermal_file} or a list of {rgb, thermal}", str(path),
                     "restore the file from the dataset")


def candidates(root: str | Path, pairs_file: str | Path | None = None) -> tuple[list[Candidate], list[dict], dict]:
    """The frames of a FLIR v2 root as candidates (video split by the map, others by ``pairs_file``),
    the issues found, and the index's ``meta``."""
    root = Path(root)
    present = {s: f for s, f in FOLDERS.items() if (root / f[0]).is_dir() or (root / f[1]).is_dir()}
    if not present:
        raise InputError("no FLIR v2 folders (images_rgb_train, ..., video_thermal_test) found", str(root),
                         "pass the FLIR ADAS v2 root folder")
    frames = _Frames(root, present)
    map_path = root / MAP_FILE
    if "test" in present:
        if not map_path.exists():
            frames.issues.append({"kind": "unpaired_frames", "item": "test", "source": str(map_path),
                                  "detail": f"{MAP_FILE} is missing: the video split cannot be paired"})
        else:
            for rgb_name, th_name in _load_map(map_path):
                frames.add("test", rgb_name, th_name, {"paired_by": MAP_FILE})
    if pairs_file is not None:
        frames.add_pairs_file(Path(pairs_file))
    frames.add_unpaired(paired_test=map_path.exists())
    labs = frames.labs
    return frames.out, frames.issues, {"adapter": "flir_v2", "root": str(root.resolve()), "splits": sorted(present),
                                       "pairs_file": str(pairs_file) if pairs_file else None,
                                       "has_labels": [any(labs[s][0] is not None for s in present),
                                                      any(labs[s][1] is not None for s in present)]}


class _Frames:
    """The image files and labels of each present split, and the candidates made of them so far
    (with which file names each split has used)."""

    def __init__(self, root: Path, present: Mapping[str, tuple[str, str]]) -> None:
        self.root, self.present = root, present
        self.issues: list[dict] = []
        self.imgs: dict[str, tuple[dict[str, Path], dict[str, Path]]] = {}
        self.labs: dict[str, tuple[dict | None, dict | None]] = {}
        for split, (rf, tf) in present.items():
            r, t = _folder_images(root / rf), _folder_images(root / tf)
            self.imgs[split] = (r, t)
            self.labs[split] = (_folder_labels(root / rf, r, self.issues), _folder_labels(root / tf, t, self.issues))
        self.out: list[Candidate] = []
        self.used: dict[str, tuple[set[str], set[str]]] = {s: (set(), set()) for s in present}

    def add(self, split: str, rgb_name: str | None, th_name: str | None, extra: dict) -> None:
        """One candidate of ``split`` from file names (either may be None: excluded later as missing)."""
        r, t = self.imgs[split]
        rl, tl = self.labs[split]
        rp = r.get(rgb_name) if rgb_name else None
        tp = t.get(th_name) if th_name else None
        if rgb_name and rp is None:
            rp = self.root / FOLDERS[split][0] / "data" / rgb_name  # named but absent: excluded as missing_rgb
        if th_name and tp is None:
            tp = self.root / FOLDERS[split][1] / "data" / th_name
        oid = f"{split}/{Path(rgb_name or th_name or '').stem}"
        self.out.append(Candidate(oid, rp, tp, split=split,
                                  rgb_labels=(rl.get(rgb_name) if rl is not None and rgb_name else None),
                                  thermal_labels=(tl.get(th_name) if tl is not None and th_name else None), extra=extra))
        if rgb_name:
            self.used[split][0].add(rgb_name)
        if th_name:
            self.used[split][1].add(th_name)

    def add_pairs_file(self, pairs_file: Path) -> None:
        """The user's pairs (split given, or told by the RGB path's folder; optional clock times, s)."""
        for item in _read_pairs_file(pairs_file, self.root):
            rp, tp = Path(item["rgb"]), Path(item["thermal"])
            split = item.get("split") or next((s for s, (rf, _) in FOLDERS.items() if rf in rp.parts), None)
            if split not in self.present:
                raise InputError(f"cannot tell the split of pair {item} (folder not one of {sorted(FOLDERS)})",
                                 str(pairs_file), "give a 'split' (train/val/test) per pair or paths inside the dataset folders")
            extra = {"paired_by": str(pairs_file)}
            extra.update({k2: item[k1] for k1, k2 in (("rgb_time", "rgb_timestamp"), ("thermal_time", "thermal_timestamp"))
                          if k1 in item})
            self.add(split, rp.name, tp.name, extra)

    def add_unpaired(self, paired_test: bool) -> None:
        """Frames of a paired split that nothing paired: listed per frame (they are the "RGB without
        thermal" cases); those of an unpaired split are counted in one issue."""
        for split in self.present:
            r, t = self.imgs[split]
            used_r, used_t = self.used[split]
            paired_split = (split == "test" and paired_test) or bool(used_r or used_t)
            n_unpaired = len(set(r) - used_r) + len(set(t) - used_t)
            if not n_unpaired:
                continue
            if paired_split:
                for name in sorted(set(r) - used_r):
                    self.add(split, name, None, {})
                for name in sorted(set(t) - used_t):
                    self.add(split, None, name, {})
            else:
                self.issues.append({"kind": "unpaired_frames", "item": split, "count": n_unpaired, "source": str(self.root),
                                    "detail": f"{n_unpaired} {split} frames are not paired frame-by-frame in FLIR v2; "
                                              "give a pairs file (--pairs-file) to use them"})


def build_index(root: str | Path, version: str, out_dir: str | Path, classes: Sequence[str] = DEFAULT_CLASSES,
                class_map: Mapping[str, str | None] | str | Path | None = None, pairs_file: str | Path | None = None, *,
                exclusions: str | Path | None = None, options: BuildOptions | None = None,
                progress: bool = True) -> PairedIndex:
    """Index FLIR ADAS v2 into ``out_dir/<version>.json`` (video split by the map; others by ``pairs_file``)."""
    cands, issues, meta = candidates(root, pairs_file)
    cmap = {**FLIR_CLASS_MAP, **(class_map if isinstance(class_map, Mapping) else {})} \
        if not isinstance(class_map, (str, Path)) else class_map
    return _build(cands, version, Path(out_dir) / f"{version}.json", classes=classes, class_map=cmap, issues=issues,
                  exclusions=exclusions, options=options, meta=meta,
                  has_labels=(meta["has_labels"][0], meta["has_labels"][1]), progress=progress)
