"""The adaptation table: every model side by side per class and day/night, the gap closed, a plot per round.

Why: "the student got 0.5 mAP" says nothing on its own. What a user decides on is how far
adaptation went between *not adapting* (the teacher run on thermal: ``source_only``) and the
best that the adapt frames allow (a student trained on their thermal labels: ``oracle``, an
upper bound that exists only when those labels do), and whether it holds at night, where RGB
sees least. So each model is scored on the thermal test split as a whole and on its ``day`` and
``night`` images (the ``daynight`` key of each COCO image, from ``split.csv`` or the index), and

    gap closed = (model − source_only) / (oracle − source_only)      per class and group

(0 = no better than not adapting, 1 = as good as the oracle, negative = worse than not
adapting; undefined — ``None``, shown as ``—`` — when a term is missing or the oracle is not
above source-only, because then there is no gap to close).

Scores come from :func:`tasks.evaluate.evaluate` (pycocotools COCOeval), so the ``all`` group
equals the main evaluation table. Predictions are COCO results (``xywh`` pixels of the thermal
frame, with ``score``); boxes are not converted here.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core import atomic
from tasks.evaluate import DASH, evaluate
from tasks.evaluate import _fmt as _fmt_digits

ALL = "all"
SOURCE_ONLY = "source_only"
ORACLE = "oracle"
#: grouped[model][group][category or "all"][metric] -> value in [0, 1] or None
Grouped = dict[str, dict[str, dict[str, dict[str, float | None]]]]


def split_groups(gt: dict, key: str = "daynight") -> dict[str, dict]:
    """``{group: COCO subset}`` for each value of ``images[*][key]`` present (``day``, ``night``),
    plus ``all`` (the whole set). Images without the key are only in ``all``."""
    groups: dict[str, list[dict]] = {}
    for im in gt["images"]:
        value = im.get(key)
        if value:
            groups.setdefault(str(value), []).append(im)
    out = {ALL: gt}
    for name in sorted(groups):
        ids = {im["id"] for im in groups[name]}
        out[name] = {**gt, "images": groups[name], "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    return out


def evaluate_grouped(gt: dict, predictions: Mapping[str, list[dict]]) -> Grouped:
    """Score each model's results on every group of :func:`split_groups` (per category + ``all``)."""
    groups = split_groups(gt)
    out: Grouped = {}
    for name, results in predictions.items():
        out[name] = {}
        for g, subset in groups.items():
            ids = {im["id"] for im in subset["images"]}
            r = evaluate(subset, [d for d in results if d["image_id"] in ids], name=name)
            out[name][g] = {**r.per_category, ALL: r.overall}
    return out


def gap_closed(value: float | None, source_only: float | None, oracle: float | None) -> float | None:
    """``(value − source_only) / (oracle − source_only)``; None when undefined (see module docstring)."""
    if value is None or source_only is None or oracle is None:
        return None
    if any(math.isnan(x) for x in (value, source_only, oracle)) or oracle - source_only <= 1e-9:
        return None
    return round((value - source_only) / (oracle - source_only), 4)


def gap_table(grouped: Grouped, metric: str = "mAP_50") -> dict[str, dict[str, dict[str, float | None]]]:
    """``{model: {group: {category: gap closed}}}`` for every model but the two references;
    empty when the run has no source-only or no oracle column."""
    if SOURCE_ONLY not in grouped or ORACLE not in grouped:
        return {}
    src, orc = grouped[SOURCE_ONLY], grouped[ORACLE]
    return {name: {g: {c: gap_closed(vals[metric], src[g][c][metric], orc[g][c][metric]) for c, vals in per.items()}
                   for g, per in groups.items()}
            for name, groups in grouped.items() if name not in (SOURCE_ONLY, ORACLE)}


def _fmt(v: float | None) -> str:
    return _fmt_digits(v, 3)           # the main table's formatting, so both tables read the same


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.0f} %"


def comparison_markdown(grouped: Grouped, metric: str = "mAP_50", order: Sequence[str] | None = None,
                        describe: Mapping[str, str] | None = None, sizes: Mapping[str, int] | None = None) -> str:
    """One row per model: ``metric`` per class x (day, night, all), then the gap closed per class (all images).

    ``describe``: optional words per model name (what it was trained on), shown in the row label;
    ``sizes``: images per group, for the caption.
    """
    names = list(order or grouped)
    first = grouped[names[0]]
    groups = [g for g in first if g != ALL] + [ALL]
    cats = [c for c in first[ALL] if c != ALL] + [ALL]
    gaps = gap_table(grouped, metric)
    head = ["model"] + [f"{c} {g}" for c in cats for g in groups]
    if gaps:
        head += [f"gap closed {c}" for c in cats if c != ALL]
    caption = f"{metric} on the thermal test split, per class and day/night"
    if sizes:
        caption += " (images: " + ", ".join(f"{g} {sizes[g]}" for g in groups if g in sizes) + ")"
    lines = [caption + ".", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in names:
        label = name + (" (upper bound)" if name == ORACLE else "")
        if describe and describe.get(name):
            label += f": {describe[name]}"
        cells = [_fmt(grouped[name][g][c][metric]) for c in cats for g in groups]
        if gaps:
            cells += [_pct(gaps.get(name, {}).get(ALL, {}).get(c)) if name in gaps else ""
                      for c in cats if c != ALL]
        lines.append("| " + " | ".join([label] + cells) + " |")
    if gaps:
        lines += ["", "gap closed = (model − source_only) / (oracle − source_only) on all test images: 0 % = no better "
                  "than not adapting, 100 % = as good as training on the adapt frames' thermal labels."]
    elif SOURCE_ONLY in grouped:
        lines += ["", "No oracle column (not in eval.baselines, or the adapt split has no thermal labels): "
                  "the gap closed cannot be computed."]
    return "\n".join(lines) + "\n"


def plot_rounds(grouped: Grouped, rounds: Sequence[str], out: Path, metric: str = "mAP_50") -> Path:
    """PNG: ``metric`` (all test images) per self-training round and class, with the source-only
    (dashed) and oracle (dotted) levels of each class as horizontal lines. ``rounds``: the model
    names in round order (e.g. ``["round1", "adapted"]``)."""
    import matplotlib

    matplotlib.use("Agg")                      # no display; never a GUI backend in a pipeline
    import matplotlib.pyplot as plt

    cats = [c for c in grouped[rounds[0]][ALL] if c != ALL]
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    xs = list(range(1, len(rounds) + 1))
    for i, c in enumerate(cats):
        colour = f"C{i}"
        ys = [grouped[r][ALL][c][metric] for r in rounds]
        ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", color=colour, label=c)
        for ref, style in ((SOURCE_ONLY, "--"), (ORACLE, ":")):
            v = grouped.get(ref, {}).get(ALL, {}).get(c, {}).get(metric)
            if v is not None:
                ax.axhline(v, color=colour, linestyle=style, linewidth=1, label=f"{c} {ref.replace('_', '-')}")
    ax.set_xticks(xs, [f"{k}\n({r})" for k, r in zip(xs, rounds)])
    ax.set_xlabel("self-training round")
    ax.set_ylabel(f"{metric} (thermal test)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)


def comparison_json(grouped: Grouped, metric: str = "mAP_50") -> dict[str, Any]:
    return {"metric_for_gap": metric, "by_group": grouped, "gap_closed": gap_table(grouped, metric)}
