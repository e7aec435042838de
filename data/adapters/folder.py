"""Generic paired-folder adapter.

Layout (``../shared/data/msrs-aligned-20`` and :mod:`data.synthetic` output are examples)::

    root/rgb/<stem>.<ext>            RGB images
    root/thermal/<stem>.<ext>        thermal images (paired with RGB by file stem ...)
    root/pairs.json                  (... or explicitly: [{"rgb": rel, "thermal": rel, "id"?, "rgb_time"?, "thermal_time"?}])
    root/labels_rgb/                 optional: COCO JSON (*.json) or YOLO txt (<stem>.txt)
    root/labels_thermal/             optional: same
    root/classes.txt                 YOLO class names: lines "id name" or just "name" (line number = id)
    root/split.csv                   optional: name,split[,daynight,...]

YOLO rows are ``class cx cy w h`` normalised to the image size; COCO ``file_name`` is the
image's path relative to its modality folder (or just its file name). An image without a
YOLO file has no objects (YOLO's convention); a label file or COCO entry without an image is
reported (``labels_missing_image``), never silently ignored. A COCO ``file_name`` or a
``pairs.json`` path that leaves the dataset root (absolute elsewhere, or ``..``) is refused
with an ``InputError`` naming the file and the entry (:func:`refuse_outside_root`).
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.index import DEFAULT_CLASSES, IMAGE_EXTENSIONS, PairedIndex
from data.index_build import BuildOptions, Candidate, RawLabels, build_index as _build
from core.errors import InputError

#: The COCO file of thermal labels a person corrected (``rgb2thermal label import``): read after every
#: other label file of its folder, so a person's boxes win over any other label of the same frame.
HUMAN_LABELS_FILE = "human_labels.json"
#: ``split.csv`` column saying who labelled a frame (``human``: ``label import``); kept in ``Pair.extra``.
LABEL_SOURCE_COLUMN = "label_source"


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    with os.scandir(folder) as it:           # scandir: file type without a stat per entry
        entries = sorted((e.name, e.is_file()) for e in it)
    for name, is_file in entries:
        stem, ext = os.path.splitext(name)
        if is_file and ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            out.setdefault(stem, folder / name)
    return out


def read_yolo_classes(path: Path) -> dict[int, str]:
    """``classes.txt``: ``id name`` per line, or just ``name`` (id = line number, 0-based)."""
    names: dict[int, str] = {}
    for n, line in enumerate(s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0].lstrip("-").isdigit():
            names[int(parts[0])] = parts[1].strip()
        else:
            names[n] = line.strip()
    return names


def read_yolo_file(path: Path, names: Mapping[int, str], issues: list[dict]) -> RawLabels:
    rows_names: list[str] = []
    rows: list[list[float]] = []
    for ln, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            cid, vals = int(float(parts[0])), [float(v) for v in parts[1:5]]
            if len(vals) != 4:
                raise ValueError("need 5 numbers")
        except (ValueError, IndexError):
            issues.append({"kind": "label_file_unreadable", "item": str(path), "source": str(path),
                           "detail": f"line {ln} is not 'class cx cy w h': {line.strip()!r}; line skipped"})
            continue
        rows_names.append(names.get(cid, f"class_{cid}"))
        rows.append(vals)
    return RawLabels(names=rows_names, boxes=np.asarray(rows, dtype=np.float64).reshape(-1, 4), fmt="cxcywh_norm",
                     source=str(path))


def escape_checker(base: str | os.PathLike[str], root: str | os.PathLike[str]) -> Callable[[str | os.PathLike[str]], bool]:
    """A test ``path -> bool``: whether ``path`` (absolute, or relative to ``base``) lies outside the
    dataset ``root``. The root's forms are resolved once (per file name, resolving them was most of
    reading a 10k-image label file).

    Judged on the path's text (``..`` collapsed, symlinks *not* followed): the question is what the
    label or pairs file says, and a dataset's own files may legitimately be links into a DVC cache or
    a shared store. ``root`` counts as given and as resolved, so a root reached through a link works.
    """
    base_abs = os.path.abspath(base)
    roots = {os.path.normpath(os.path.abspath(root)), os.path.realpath(root)}
    prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)

    def escapes(path: str | os.PathLike[str]) -> bool:
        target = os.path.normpath(os.path.join(base_abs, os.fspath(path)))
        return target not in roots and not target.startswith(prefixes)

    return escapes


def escapes_root(path: str | os.PathLike[str], base: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (absolute, or relative to ``base``) lies outside the dataset ``root`` (see
    :func:`escape_checker`, which is cheaper for many paths)."""
    return escape_checker(base, root)(path)


def refuse_outside_root(path: str | os.PathLike[str], base: Path, root: Path, source: str | os.PathLike[str],
                        entry: str, *, escapes: Callable[[str | os.PathLike[str]], bool] | None = None) -> None:
    """Raise :class:`InputError` when an image path named by a label or pairs file escapes the dataset root.

    Why refuse (not exclude): an absolute path or a ``..`` that leaves the dataset is never a defect
    of one frame but a file written for another place (or a traversal attempt); indexing it would pull
    frames from outside the data version that DVC and the run records fingerprint."""
    if (escapes or escape_checker(base, root))(path):
        raise InputError(f"image path {os.fspath(path)!r} points outside the dataset root {root} "
                         "(an absolute path or '..')", f"{source}: {entry}",
                         "write paths inside the dataset (COCO file_name relative to its image folder, pairs.json "
                         "paths relative to the root), or copy / link the outside frames into the dataset")


def read_coco_labels(path: Path, issues: list[dict], *, root: Path | None = None,
                     base: Path | None = None) -> dict[str, RawLabels]:
    """COCO file -> labels keyed by image file name (as written in ``file_name``), boxes ``xyxy``.

    With ``root``, every ``file_name`` (absolute, or relative to ``base``, default ``root``) must lie
    inside ``root``: one that escapes it is an :class:`InputError` naming the file and ``images[i]``.
    """
    from core.boxes import xywh_to_xyxy
    from core.coco import load_dataset

    ds = load_dataset(path)
    if root is not None:
        escapes = escape_checker(base or root, root)
        for i, im in enumerate(ds["images"]):
            refuse_outside_root(str(im["file_name"]), base or root, root, path, f"images[{i}] (id {im['id']})",
                                escapes=escapes)
    names = {c["id"]: c["name"] for c in ds["categories"]}
    per: dict[int, list[dict]] = {im["id"]: [] for im in ds["images"]}
    for a in ds["annotations"]:
        per[a["image_id"]].append(a)
    out: dict[str, RawLabels] = {}
    for im in ds["images"]:
        anns = per[im["id"]]
        out[str(im["file_name"])] = RawLabels(
            names=[names[a["category_id"]] for a in anns], boxes=xywh_to_xyxy([a["bbox"] for a in anns]),
            fmt="xyxy", source=str(path), size=(int(im["width"]), int(im["height"])))
    return out


def _modality_labels(folder: Path, images: Mapping[str, Path], names: Mapping[int, str] | None, modality: str,
                     issues: list[dict]) -> dict[str, RawLabels] | None:
    """Labels of one modality keyed by stem (``None`` when the folder is absent)."""
    if not folder.is_dir():
        return None
    jsons = sorted(folder.glob("*.json"), key=lambda p: (p.name == HUMAN_LABELS_FILE, p.name))  # human labels last
    txts = sorted(p for p in folder.glob("*.txt") if p.name != "classes.txt")
    out: dict[str, RawLabels] = {}
    if jsons:
        _add_coco_labels(out, jsons, folder, images, modality, issues)
    if txts:
        _add_yolo_labels(out, txts, folder, images, names, modality, issues)
    return out


def _add_coco_labels(out: dict[str, RawLabels], jsons: list[Path], folder: Path, images: Mapping[str, Path],
                     modality: str, issues: list[dict]) -> None:
    """Labels from COCO files (``xyxy`` pixels) into ``out`` by image stem; entries for absent images are issues."""
    by_name: dict[str, Path] = {p.name: p for p in images.values()}
    for j in jsons:
        for fname, lab in read_coco_labels(j, issues, root=folder.parent, base=folder.parent / modality).items():
            stem = Path(fname).stem
            if Path(fname).name not in by_name and stem not in images:
                issues.append({"kind": "labels_missing_image", "item": fname, "source": str(j),
                               "detail": f"{modality} COCO labels list {fname!r}, which is not in {folder.parent / modality}"})
                continue
            out[stem] = lab


def _add_yolo_labels(out: dict[str, RawLabels], txts: list[Path], folder: Path, images: Mapping[str, Path],
                     names: Mapping[int, str] | None, modality: str, issues: list[dict]) -> None:
    """YOLO files (normalised ``cxcywh``) into ``out`` where COCO gave none; an image without a file has no objects."""
    if names is None:
        raise InputError("YOLO label files found but no classes.txt", str(folder),
                         "add classes.txt (lines 'id name' or one name per line) to the dataset root or label folder")
    for t in txts:
        if t.stem not in images:
            issues.append({"kind": "labels_missing_image", "item": t.name, "source": str(t),
                           "detail": f"{modality} label file {t.name} has no image in {folder.parent / modality}"})
            continue
        if t.stem in out:
            continue
        out[t.stem] = read_yolo_file(t, names, issues)
    for stem in images:  # YOLO convention: no file = no objects
        out.setdefault(stem, RawLabels(names=[], boxes=np.zeros((0, 4)), fmt="cxcywh_norm", source="(no file)"))


def read_split_csv(path: Path) -> dict[str, tuple[str, str | None, dict[str, str]]]:
    out: dict[str, tuple[str, str | None, dict[str, str]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "name" not in reader.fieldnames:
            raise InputError("split.csv needs a header with at least 'name' (and 'split', 'daynight')", str(path),
                             "write name,split,daynight")
        for row in reader:
            dn = (row.get("daynight") or "").strip().lower() or None
            if dn not in (None, "day", "night"):
                raise InputError(f"daynight must be day/night/empty, got {dn!r} for {row['name']}", str(path),
                                 "fix the row")
            out[row["name"].strip()] = ((row.get("split") or "").strip(), dn,
                                        {k: v for k, v in row.items() if k not in ("name", "split", "daynight") and v})
    return out


def _read_pairs_file(path: Path, root: Path) -> list[dict[str, Any]]:
    """The pair objects of a pairs file; a path outside ``root`` is an :class:`InputError` naming ``pairs[k]``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read pairs file ({exc})", str(path), "give a JSON list of {rgb, thermal} objects") from None
    items = doc.get("pairs") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not all(isinstance(i, dict) and "rgb" in i and "thermal" in i for i in items):
        raise InputError("pairs file must be a list (or {'pairs': list}) of {\"rgb\": path, \"thermal\": path} objects",
                         str(path), "paths are relative to the dataset root (or absolute, inside it)")
    escapes = escape_checker(root, root)
    for k, item in enumerate(items):
        for key in ("rgb", "thermal"):
            refuse_outside_root(str(item[key]), root, root, path, f"pairs[{k}].{key}", escapes=escapes)
    return items


def candidates(root: str | Path, *, pairs_file: str | Path | None = None) -> tuple[list[Candidate], list[dict], dict]:
    """Find the frames of a paired folder: ``(candidates, issues, meta)``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset root is not a folder", str(root), "pass the folder that holds rgb/ and thermal/")
    rgb, th = _images(root / "rgb"), _images(root / "thermal")
    pf = Path(pairs_file) if pairs_file else (root / "pairs.json" if (root / "pairs.json").exists() else None)
    if not rgb and not th and pf is None:
        raise InputError("no images in rgb/ or thermal/", str(root),
                         "use the layout rgb/, thermal/ (see data/adapters/folder.py)")
    issues: list[dict] = []
    classes_txt = next((p for p in (root / "classes.txt", root / "labels_rgb" / "classes.txt",
                                    root / "labels_thermal" / "classes.txt") if p.exists()), None)
    names = read_yolo_classes(classes_txt) if classes_txt else None
    labels = {m: _modality_labels(root / f"labels_{m}", imgs, names, m, issues) for m, imgs in (("rgb", rgb), ("thermal", th))}
    split = read_split_csv(root / "split.csv") if (root / "split.csv").exists() else {}
    out: list[Candidate] = []
    if pf is not None:
        for item in _read_pairs_file(pf, root):
            rp = Path(item["rgb"]) if Path(item["rgb"]).is_absolute() else root / item["rgb"]
            tp = Path(item["thermal"]) if Path(item["thermal"]).is_absolute() else root / item["thermal"]
            oid = str(item.get("id") or rp.stem)
            sp, dn, more = split.get(oid, (item.get("split", ""), item.get("daynight"), {}))
            extra = {**more, **{k2: item[k1] for k1, k2 in (("rgb_time", "rgb_timestamp"),
                                                             ("thermal_time", "thermal_timestamp")) if k1 in item}}
            out.append(Candidate(oid, rp, tp, sp, dn,
                                 (labels["rgb"] or {}).get(rp.stem) if labels["rgb"] is not None else None,
                                 (labels["thermal"] or {}).get(tp.stem) if labels["thermal"] is not None else None, extra))
    else:
        for stem in sorted(set(rgb) | set(th)):
            sp, dn, extra = split.get(stem, ("", None, {}))
            out.append(Candidate(stem, rgb.get(stem), th.get(stem), sp, dn,
                                 labels["rgb"].get(stem) if labels["rgb"] is not None else None,
                                 labels["thermal"].get(stem) if labels["thermal"] is not None else None, dict(extra)))
    meta: dict[str, Any] = {"adapter": "folder", "root": str(root.resolve()), "pairs_file": str(pf) if pf else None,
                            "has_labels": [labels["rgb"] is not None, labels["thermal"] is not None]}
    if (root / "homography.json").exists():
        meta["homography"] = json.loads((root / "homography.json").read_text(encoding="utf-8"))
    return out, issues, meta


def build_index(root: str | Path, version: str, out_dir: str | Path, classes: Sequence[str] = DEFAULT_CLASSES,
                class_map: Mapping[str, str | None] | str | Path | None = None, pairs_file: str | Path | None = None, *,
                exclusions: str | Path | None = None, options: BuildOptions | None = None,
                progress: bool = True) -> PairedIndex:
    """Index a generic paired folder into ``out_dir/<version>.json`` (+ COCO side files)."""
    cands, issues, meta = candidates(root, pairs_file=pairs_file)
    return _build(cands, version, Path(out_dir) / f"{version}.json", classes=classes, class_map=class_map,
                  issues=issues, exclusions=exclusions, options=options, meta=meta,
                  has_labels=(meta["has_labels"][0], meta["has_labels"][1]), progress=progress)
