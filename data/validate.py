"""Pair validation: find every defect of a paired dataset, exclude bad items with a reason, report.

Why: pairs that did not exist used to crash runs hours in, and defects were "handled" by
silently skipping. Here an adapter builds the index with full image decoding, every problem
is either an *exclusion* (the pair leaves the index, with a reason) or an *issue* (a label
repaired or dropped, with a reason), and a report (Markdown for people, JSON for tools) lists
them all. The exclusions are also written as this version's exclusion list
(``<version>.exclusions.json``), which later builds of the *same* version can apply and which
other versions refuse (the v1 list once leaked into v2).

Defects covered: RGB without thermal (``missing_thermal``) and vice versa (``missing_rgb``),
unreadable/corrupt images, size mismatches (labels vs image, odd thermal frame size),
duplicate ids, labels pointing at missing images, boxes outside images (dropped) or crossing
the border (clipped), degenerate boxes, unmapped classes, and — where timestamps exist —
RGB/thermal sync offsets.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data.index import DEFAULT_CLASSES, PairedIndex, load_index, summarize
from data.index_build import BuildOptions, read_size, save_exclusions
from core import atomic

_REASON_TEXT = {
    "missing_thermal": "RGB frame without a thermal frame",
    "missing_rgb": "thermal frame without an RGB frame",
    "unreadable_rgb": "RGB image unreadable or corrupt",
    "unreadable_thermal": "thermal image unreadable or corrupt",
    "size_mismatch": "image size mismatch",
    "duplicate_id": "duplicate id",
    "sync_offset": "RGB/thermal timestamps too far apart",
    "excluded_by_list": "excluded by this version's exclusion list",
    "labels_missing_image": "labels pointing at a missing image",
    "unlabelled_image": "image the labels do not mention (no boxes)",
    "box_outside_image": "box outside the image (dropped)",
    "box_clipped": "box crossing the image border (clipped)",
    "box_degenerate": "box without area (dropped)",
    "class_dropped": "class not mapped to a target class (dropped)",
    "label_file_unreadable": "unreadable label line (skipped)",
    "unpaired_frames": "frames the dataset does not pair",
    "file_changed": "file changed or vanished since the index was built",
}


@dataclass(frozen=True)
class ValidationReport:
    """Where the outputs went and the headline counts."""

    index_path: Path
    report_json: Path
    report_md: Path
    exclusions: dict[str, Path]
    pairs: int
    excluded_by_reason: dict[str, int]
    issues_by_kind: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.excluded_by_reason and not self.issues_by_kind


def _sync_stats(index: PairedIndex) -> dict[str, Any]:
    offs = [p.extra["sync_offset_s"] for p in index.pairs if "sync_offset_s" in p.extra]
    offs += [e["sync_offset_s"] for e in index.excluded if "sync_offset_s" in e]
    if not offs:
        return {"pairs_with_timestamps": 0}
    a = np.abs(np.asarray(offs, dtype=np.float64))
    return {"pairs_with_timestamps": len(offs), "abs_offset_s_median": float(np.median(a)),
            "abs_offset_s_max": float(a.max()), "abs_offset_s_mean": float(a.mean())}


def write_report(index: PairedIndex, out_dir: str | Path, *, name: str = "validation", max_examples: int = 20,
                 extra_issues: Sequence[dict] = ()) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` and ``.md`` for an index (exclusions + issues + counts)."""
    out_dir = Path(out_dir)
    issues = list(index.issues) + list(extra_issues)
    stats = summarize(index)
    stats["issues_by_kind"] = dict(sorted(Counter(i["kind"] for i in issues).items()))
    sync = _sync_stats(index)
    doc = {"schema": "rgb2thermal.validation/1", "index": str(index.path) if index.path else None,
           "versions": index.versions, "summary": stats, "sync": sync,
           "excluded": index.excluded, "issues": issues}
    jpath = atomic.write_json(out_dir / f"{name}.json", doc)
    lines = [f"# Pair validation: {', '.join(index.versions)}", "",
             f"Index: `{index.path}`" if index.path else "", "",
             "| what | count |", "|---|---|", f"| pairs kept | {stats['pairs']} |",
             f"| items excluded | {stats['excluded']} |"]
    for k, v in stats["excluded_by_reason"].items():
        lines.append(f"| excluded: {_REASON_TEXT.get(k, k)} (`{k}`) | {v} |")
    for k, v in stats["issues_by_kind"].items():
        n = sum(int(i.get("count", 1)) for i in issues if i["kind"] == k)
        lines.append(f"| issue: {_REASON_TEXT.get(k, k)} (`{k}`) | {v} entries ({n} items) |")
    lines += ["", "Pairs by version / split / day-night / RGB resolution:", "",
              f"- version: {stats['by_version']}", f"- split: {stats['by_split']}",
              f"- day/night: {stats['by_daynight']}", f"- RGB size: {stats['by_rgb_size']}",
              f"- thermal size: {stats['by_thermal_size']}", f"- labels: {stats['labels']}", ""]
    if sync.get("pairs_with_timestamps"):
        lines += [f"Sync offsets (thermal - RGB) over {sync['pairs_with_timestamps']} timestamped pairs: median |offset| "
                  f"{sync['abs_offset_s_median'] * 1000:.1f} ms, max {sync['abs_offset_s_max'] * 1000:.1f} ms.", ""]
    else:
        lines += ["Sync offsets: no timestamps in this dataset.", ""]
    lines += _sections("Excluded", index.excluded, "reason", lambda e: f"{e.get('version')}:{e.get('original_id')}",
                       max_examples, jpath.name)
    lines += _sections("Issue", issues, "kind", lambda i: f"{i.get('item')}", max_examples, jpath.name)
    mpath = atomic.write_text(out_dir / f"{name}.md", "\n".join(lines) + "\n")
    return jpath, mpath


def _sections(title: str, entries: list[dict], key: str, name: Callable[[dict], str], max_examples: int,
              json_name: str) -> list[str]:
    """Markdown: one section per value of ``entries``' ``key`` (sorted), listing up to ``max_examples``
    entries by ``name`` with their detail; the rest are counted and left to the JSON report."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        groups[e[key]].append(e)
    lines: list[str] = []
    for value, items in sorted(groups.items()):
        lines += [f"## {title}: {_REASON_TEXT.get(value, value)} ({len(items)})", ""]
        lines += [f"- `{name(e)}` — {e.get('detail', '')}" for e in items[:max_examples]]
        if len(items) > max_examples:
            lines.append(f"- ... and {len(items) - max_examples} more (see {json_name})")
        lines.append("")
    return lines


def validate_source(fmt: str, root: str | Path, version: str, out_dir: str | Path, *,
                    classes: Sequence[str] = DEFAULT_CLASSES, class_map: Mapping[str, str | None] | str | Path | None = None,
                    pairs_file: str | Path | None = None, exclusions: str | Path | None = None,
                    options: BuildOptions | None = None, progress: bool = True) -> ValidationReport:
    """Build ``out_dir/<version>.json`` with full decoding, then write the report and the exclusion list."""
    from data.adapters import get_adapter

    opts = replace(options or BuildOptions(), decode_images=True)
    index = get_adapter(fmt).build_index(root, version, out_dir, classes=classes, class_map=class_map,
                                         pairs_file=pairs_file, exclusions=exclusions, options=opts, progress=progress)
    jpath, mpath = write_report(index, out_dir, name=f"{version}.validation")
    excl = {version: save_exclusions(Path(out_dir) / f"{version}.exclusions.json", version, index.excluded)}
    return ValidationReport(index_path=index.path, report_json=jpath, report_md=mpath, exclusions=excl,
                            pairs=len(index.pairs), excluded_by_reason=index.stats["excluded_by_reason"],
                            issues_by_kind=index.stats["issues_by_kind"])


def validate_index(index_path: str | Path, out_dir: str | Path, *, decode: bool = True,
                   progress: bool = True) -> ValidationReport:
    """Re-check an existing index: every pair's files still exist, decode, and have the recorded sizes.

    Problems found now are reported as ``file_changed`` issues (the index itself is not
    rewritten: rebuild it with the adapter to exclude them).
    """
    from tqdm import tqdm

    index = load_index(index_path)
    extra: list[dict] = []
    for p in tqdm(index.pairs, desc="re-checking pairs", unit="pair", disable=not progress or len(index.pairs) < 200):
        for mod, path, size in (("rgb", p.rgb_path, p.rgb_size), ("thermal", p.thermal_path, p.thermal_size)):
            got, why = read_size(Path(path), decode)
            if got is None:
                extra.append({"kind": "file_changed", "item": p.pair_id, "version": p.version,
                              "detail": f"{mod} image {path}: {why or 'missing'}"})
            elif got != tuple(size):
                extra.append({"kind": "file_changed", "item": p.pair_id, "version": p.version,
                              "detail": f"{mod} image {path} is {got[0]}x{got[1]}, the index says {size[0]}x{size[1]}"})
    name = Path(index_path).name.removesuffix(".json") + ".validation"
    jpath, mpath = write_report(index, out_dir, name=name, extra_issues=extra)
    excl = {v: save_exclusions(Path(out_dir) / f"{v}.exclusions.json", v, index.excluded) for v in index.versions}
    issues = Counter(i["kind"] for i in list(index.issues) + extra)
    return ValidationReport(index_path=Path(index_path), report_json=jpath, report_md=mpath, exclusions=excl,
                            pairs=len(index.pairs), excluded_by_reason=summarize(index)["excluded_by_reason"],
                            issues_by_kind=dict(sorted(issues.items())))
