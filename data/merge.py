"""Merging indexes of several dataset versions (e.g. FLIR v1 + v2) into one.

Why: merged v1+v2 data once could no longer tell its images apart, so each image got the
wrong homography and the wrong exclusions. Here every pair keeps its ``version`` and
``original_id`` (and so its globally unique ``pair_id = "<version>:<original_id>"``); only the
integer COCO image ids are renumbered (1..N, shared by the RGB and thermal files as always);
annotations are renumbered and re-pointed; excluded items and issues keep their version. The
same pair id appearing twice (the same version merged twice) is an error, not a silent
de-duplication.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data.index import PairedIndex, Pair, coco_image, load_index, save_index, summarize
from core.coco import categories_from_names, new_dataset
from core.errors import InputError


def merge_indexes(indexes: Sequence[PairedIndex | str | Path], out_path: str | Path) -> PairedIndex:
    """Merge indexes (objects or paths) into one index written at ``out_path``."""
    loaded = [load_index(i) if isinstance(i, (str, Path)) else i for i in indexes]
    if len(loaded) < 2:
        raise InputError(f"need at least 2 indexes to merge, got {len(loaded)}", "data merge", "pass two or more index files")
    classes = loaded[0].classes
    for ix in loaded[1:]:
        if ix.classes != classes:
            raise InputError(f"target classes differ: {classes} vs {ix.classes} ({ix.path})", "data merge",
                             "rebuild the indexes with the same --classes (same order)")
    seen: dict[str, str] = {}
    pairs: list[Pair] = []
    anns: dict[str, list[dict]] = {"rgb": [], "thermal": []}
    has = {"rgb": any(ix.load_labels("rgb") is not None for ix in loaded),
           "thermal": any(ix.load_labels("thermal") is not None for ix in loaded)}
    versions: list[str] = []
    excluded, issues = [], []
    labelled: dict[str, list[Pair]] = {"rgb": [], "thermal": []}
    for ix in loaded:
        src = str(ix.path) if ix.path else "(in memory)"
        for v in ix.versions:
            if v not in versions:
                versions.append(v)
        remap = _append_pairs(ix, src, pairs, seen)
        for mod in ("rgb", "thermal"):
            _append_labels(ix, mod, src, classes, remap, pairs, labelled[mod], anns[mod])
        excluded.extend(ix.excluded)
        issues.extend(ix.issues)
    cats = categories_from_names(classes)
    merged = PairedIndex(versions=versions, classes=list(classes), pairs=pairs, excluded=excluded, issues=issues,
                         meta={"merged_from": [str(ix.path) if ix.path else None for ix in loaded]},
                         # a label file lists only the images of versions labelled in that modality, so an
                         # unlabelled version can never look like "labelled, no objects"
                         rgb_coco=new_dataset([coco_image(p, "rgb") for p in labelled["rgb"]], anns["rgb"], cats)
                         if has["rgb"] else None,
                         thermal_coco=new_dataset([coco_image(p, "thermal") for p in labelled["thermal"]],
                                                  anns["thermal"], cats) if has["thermal"] else None)
    if not all(has.values()):
        missing = [m for m in ("rgb", "thermal") if not has[m]]
        merged.meta["labels_absent"] = missing
    partial = [m for m in ("rgb", "thermal") if has[m] and not all(ix.load_labels(m) is not None for ix in loaded)]
    if partial:
        merged.meta["labels_partial"] = {m: [v for ix in loaded if ix.load_labels(m) is None for v in ix.versions]
                                         for m in partial}
    merged.stats = summarize(merged)
    save_index(merged, out_path)
    return merged


def _append_pairs(ix: PairedIndex, src: str, pairs: list[Pair], seen: dict[str, str]) -> dict[int, int]:
    """Append ``ix``'s pairs with image ids renumbered after ``pairs``; returns old id -> new id.
    A pair id already merged (from ``seen[pair_id]``) is refused."""
    remap: dict[int, int] = {}
    for p in ix.pairs:
        if p.pair_id in seen:
            raise InputError(f"pair id {p.pair_id} is in both {seen[p.pair_id]} and {src}", "data merge",
                             "merge each dataset version once (ids are '<version>:<original id>')")
        seen[p.pair_id] = src
        new_id = len(pairs) + 1
        remap[p.image_id] = new_id
        pairs.append(Pair(**{**p.__dict__, "image_id": new_id}))
    return remap


def _append_labels(ix: PairedIndex, mod: str, src: str, classes: list[str], remap: dict[int, int], pairs: list[Pair],
                   labelled: list[Pair], anns: list[dict]) -> None:
    """Append ``ix``'s ``mod`` labels (if it has any): its pairs to ``labelled``, its boxes to ``anns``
    with annotation ids continued and image ids remapped; categories must be ``classes``."""
    ds = ix.load_labels(mod)
    if ds is None:
        return
    labelled.extend(pairs[remap[p.image_id] - 1] for p in ix.pairs)
    names = {c["id"]: c["name"] for c in ds["categories"]}
    if [names[k] for k in sorted(names)] != classes:
        raise InputError(f"{mod} label categories {names} do not match the index classes {classes}", src,
                         "rebuild the index")
    for a in ds["annotations"]:
        anns.append({**a, "id": len(anns) + 1, "image_id": remap[a["image_id"]]})
